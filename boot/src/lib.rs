//! Vellum's launch ABI: the pure, host-tested half of `boot/`.
//!
//! The bare-metal firmware stage (`src/main.rs`) and the host tools (`image/`) and
//! `kernel/` all use these definitions, so there is one source for every address,
//! table format and check. Nothing here touches hardware.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

pub mod abi;
pub mod e820;
pub mod fwcfg;
pub mod fwtable;
pub mod layout;
pub mod paging;
pub mod payload;
pub mod regions;
pub mod snp;
