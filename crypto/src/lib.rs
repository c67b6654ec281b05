//! Vellum's cryptography. `#![forbid(unsafe_code)]`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
