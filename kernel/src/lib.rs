//! The Vellum kernel library: the parts of the kernel that only compute, tested
//! on the host. The hardware half lives in the `vellum-kernel` binary
//! (`src/main.rs` and its modules), where every `unsafe` block is.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

pub mod memory;
pub mod time;
