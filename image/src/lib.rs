//! The Vellum image tool as a library: building and laying out the firmware
//! image (`build`, `elf`, `firmware`) and its SEV-SNP launch measurement and ID
//! block (`snp`), and the remote attestation check (`verify`). No unsafe code.
#![forbid(unsafe_code)]

pub mod build;
pub mod elf;
pub mod firmware;
pub mod snp;
pub mod verify;
