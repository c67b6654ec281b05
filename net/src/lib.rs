//! Vellum's network data path. `#![forbid(unsafe_code)]`: everything that touches
//! hardware or the shared pool goes through the traits in [`shared`], implemented
//! by `kernel/` (and by fakes in the tests).
//!
//! - [`virtio`]: the legacy virtio-net driver over the shared pool, with the
//!   one-time trusted read of every device-written field, and its smoltcp
//!   `phy::Device`.
//! - [`http`], [`services`]: HTTP/1.1 on 80 and TCP echo on 7 over smoltcp.
//! - [`metrics`]: the counters behind `/metrics`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

#[allow(unused_extern_crates)] // used as the crates fill in
extern crate alloc;

pub mod http;
pub mod metrics;
pub mod services;
pub mod shared;
pub mod virtio;

/// The smoltcp version the services are built on (for `Instant` and friends).
pub use smoltcp;
