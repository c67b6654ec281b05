//! Vellum's cryptography: the rustls TLS stack for the SEV-SNP guest.
//!
//! - [`provider()`]: a rustls [`CryptoProvider`](rustls::crypto::CryptoProvider)
//!   (ring AEADs, our X25519/P-256 key exchange, kernel randomness).
//! - [`Identity`]: the boot-time P-256 key and self-signed certificate, and
//!   [`report_data`] for the RA-TLS binding.
//! - [`TlsSession`]: a `std::io`-free TLS server session over rustls'
//!   unbuffered API, with bounded buffers; [`server_config`] builds its config.
//! - [`TlsOver`]: a `vellum_net` session behind TLS (HTTPS, TLS echo), and the
//!   `/attestation` endpoint ([`Attestation`]).
//!
//! `no_std` + `alloc`, `#![forbid(unsafe_code)]`. See `README.md` for the
//! bare-metal build.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod identity;
pub mod provider;
pub mod rng;
pub mod service;
pub mod session;
pub mod snp;
pub mod ticket;

pub use identity::{CertParams, Identity, IdentityError, report_data};
pub use provider::{BulkSpeed, KernelClock, measure_bulk_ciphers, provider, provider_for};
pub use rng::{EntropySource, RngError, SharedEntropy};
pub use rustls;
pub use service::{AttestError, Attestation, ReportSource, TlsOver};
pub use session::{TlsError, TlsSession, server_config};
pub use ticket::Ticketer;
