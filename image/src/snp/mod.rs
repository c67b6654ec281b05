//! SEV-SNP launch measurement and ID block for Vellum images.
//!
//! - [`launch_digest`] / [`measure()`]: the digest the AMD-SP computes when QEMU 10
//!   launches `-bios <image>` as an SNP guest (SNP FW ABI 56860 §8.17
//!   SNP_LAUNCH_UPDATE / §8.18 SNP_LAUNCH_FINISH; `docs/snp-reference.md` §1.4, §3);
//! - [`id_block`]: the ID block and ID authentication structure for
//!   SNP_LAUNCH_FINISH (56860 §8.18);
//! - [`cli_measure`] / [`cli_id_block`]: the `image measure` and `image id-block`
//!   subcommands.
//!
//! The image's GUIDed table and ASEV metadata are read with
//! [`vellum_boot::fwtable`], the same code that writes them.
#![forbid(unsafe_code)]

pub mod cli;
pub mod cpu;
pub mod id_block;
pub mod measure;
pub mod page_info;
pub mod vmsa;

pub use cli::{cli_id_block, cli_measure, id_block_command, measure_command};
pub use measure::{LaunchOptions, MeasureError, Measurement, launch_digest, measure};
