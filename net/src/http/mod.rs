//! HTTP/1.1 (RFC 9110 semantics, RFC 9112 message syntax), independent of any
//! socket.
//!
//! The module is split along the seam that lets the same engine run over plain
//! TCP and behind TLS (`vellum_crypto::TlsOver`):
//!
//! - [`parse`]: a request-head parser over a byte slice, with hard limits
//!   ([`Limits`]). Pure functions, no allocation.
//! - [`Handler`] / [`Router`]: `handle(&Request) -> Response`, the application.
//!   [`Router`] serves `/`, `/health` and `/metrics`.
//! - [`HttpSession`]: the per-connection state machine. It works on byte
//!   buffers only: bytes in ([`Session::feed`]), bytes out
//!   ([`Session::output`] / [`Session::consume_output`]). It implements
//!   [`crate::services::Session`], the trait the socket driver in
//!   [`crate::services`] runs; a TLS record layer implements the same trait by
//!   wrapping an `HttpSession` (decrypt into `feed`, encrypt from `output`).
//!
//! [`Session::feed`]: crate::services::Session::feed
//! [`Session::output`]: crate::services::Session::output
//! [`Session::consume_output`]: crate::services::Session::consume_output
//!
//! Request bodies (`Content-Length`, at most [`Limits::max_body`]) are read and
//! discarded: no route consumes one, and not buffering them keeps the
//! per-connection memory at the header limit.

pub mod parse;
mod response;
mod router;
mod session;

pub use parse::{Header, HttpError, Limits, Method, Request, Target, Version};
pub use response::{Body, Response, Status};
pub use router::{
    AttestationRoute, Handler, MetricsExtra, MetricsWriter, Router, StackGauges, render_metrics,
};
pub use session::{HttpConfig, HttpSession};

/// The page served on `GET /`: the same 115 bytes as the Linux baseline guest
/// (`shared/bench/linux-baseline/guest/index.html`), for a fair benchmark.
pub const INDEX_HTML: &[u8] = b"<!DOCTYPE html>\n<html><head><title>hello</title></head><body><h1>Hello from the benchmark guest</h1></body></html>\n";

/// `Content-Type` of [`INDEX_HTML`].
pub const INDEX_CONTENT_TYPE: &str = "text/html; charset=utf-8";

#[cfg(test)]
pub(crate) mod tests;
