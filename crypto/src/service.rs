//! TLS services over the network stack's session seam: [`TlsOver`] wraps any
//! plaintext `vellum_net` session (HTTP, echo) in a [`TlsSession`], and
//! [`Attestation`] is the `/attestation` route the HTTP router serves on
//! requests that came over TLS.
//!
//! ```text
//!  TCP socket ─ciphertext─▶ TlsSession ─plaintext─▶ inner session (HTTP / echo)
//!  TCP socket ◀ciphertext── TlsSession ◀plaintext── inner session
//! ```
//!
//! Only ciphertext leaves this module: the socket buffers (and so the shared
//! pool) never see plaintext, keys or session secrets.
//!
//! # `GET /attestation?nonce=HEX` (HTTPS only)
//!
//! Returns `application/json`, format `vellum-attestation-v1`:
//!
//! ```json
//! {"version":1,"format":"vellum-attestation-v1","nonce":"<hex>",
//!  "report_data_formula":"SHA-512(\"vellum-ratls-v1\" || SHA-256(SPKI) || nonce)",
//!  "spki_sha256":"<hex>","report_data":"<hex>",
//!  "certificate":"<base64 DER>","report":"<base64, 1184 bytes>"}
//! ```
//!
//! The nonce is 0 to 32 bytes of hex. Requests are rate-limited (the host
//! throttles SNP guest requests anyway): `429` when too frequent. When there is
//! no report the answer is `503` with `{"error":"...","detail":"..."}`
//! ([`AttestError`]): without SEV-SNP (`not running under SEV-SNP`); when the
//! SNP guest request fails (`the SNP guest request failed`, `the host stayed
//! busy`: VMPCK0 is then wiped, see `vellum_boot::snp::guest_msg`); and on
//! every request after that (`attestation is disabled`).

use alloc::{boxed::Box, format, string::String, sync::Arc, vec::Vec};
use core::{
    fmt,
    sync::atomic::{AtomicI64, Ordering},
};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use vellum_net::{
    http::{AttestationRoute, Body, Handler, Response, Status},
    services::{DynSession, Session},
    smoltcp::time::Instant,
};

use crate::{TlsSession, identity::report_data, rustls::ServerConfig};

/// The longest nonce accepted, in bytes.
pub const MAX_NONCE: usize = 32;
/// Bytes of an SNP attestation report (SNP firmware ABI, `ATTESTATION_REPORT`).
pub const REPORT_LEN: usize = 1184;

/// Why no report could be produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttestError {
    /// The guest does not run under SEV-SNP (no VMPCK, no guest requests).
    NotSnp,
    /// This SNP guest request failed (a host or firmware error, or a response
    /// that did not check out); the key is now burnt.
    Failed,
    /// The host answered BUSY for longer than the guest waits; the key is now
    /// burnt.
    Busy,
    /// An earlier request failed and burnt the key (or the secrets page had
    /// none): no reports for the rest of this boot.
    Disabled,
}

impl AttestError {
    /// One sentence for the client: what happened and what it means.
    pub fn detail(&self) -> &'static str {
        match self {
            AttestError::NotSnp => {
                "this Vellum runs without SEV-SNP (e.g. plain QEMU/TCG): it has no attestation \
                 report to give"
            }
            AttestError::Failed => {
                "the host or the SNP firmware answered the guest request wrongly, so the guest \
                 wiped its message key (VMPCK0) and gives no more reports until it is restarted"
            }
            AttestError::Busy => {
                "the host answered busy for too long, so the guest wiped its message key \
                 (VMPCK0) and gives no more reports until it is restarted"
            }
            AttestError::Disabled => {
                "an earlier SNP guest request failed and the guest wiped its message key \
                 (VMPCK0), because a message sequence number must never be used twice; restart \
                 the guest to get reports again"
            }
        }
    }
}

impl fmt::Display for AttestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttestError::NotSnp => "not running under SEV-SNP",
            AttestError::Failed => "the SNP guest request failed",
            AttestError::Busy => "the host stayed busy",
            AttestError::Disabled => "attestation is disabled",
        })
    }
}

/// Produces SNP attestation reports (the kernel's SNP guest-request code).
pub trait ReportSource: Send + Sync {
    /// A report whose REPORT_DATA is `report_data`.
    fn report(&self, report_data: &[u8; 64]) -> Result<[u8; REPORT_LEN], AttestError>;
}

/// What the attestation endpoint binds: the TLS certificate and its SPKI.
pub struct Attestation {
    cert_der: Vec<u8>,
    spki_der: Vec<u8>,
    source: Box<dyn ReportSource>,
    /// Monotonic microseconds (for the rate limit).
    clock: Box<dyn Fn() -> i64 + Send + Sync>,
    /// Earliest time (µs) the next report may be requested.
    next_allowed_us: AtomicI64,
    /// Minimum spacing between reports.
    interval_us: i64,
}

impl fmt::Debug for Attestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attestation")
            .field("cert_len", &self.cert_der.len())
            .field("interval_us", &self.interval_us)
            .finish()
    }
}

impl Attestation {
    /// Binds reports from `source` to the certificate `cert_der` (SPKI
    /// `spki_der`), at most one report per `interval_ms` by `clock`
    /// (monotonic microseconds).
    pub fn new(
        cert_der: Vec<u8>,
        spki_der: Vec<u8>,
        source: Box<dyn ReportSource>,
        clock: Box<dyn Fn() -> i64 + Send + Sync>,
        interval_ms: u32,
    ) -> Self {
        Attestation {
            cert_der,
            spki_der,
            source,
            clock,
            next_allowed_us: AtomicI64::new(i64::MIN),
            interval_us: i64::from(interval_ms) * 1000,
        }
    }

    /// Answers `GET /attestation?<query>`.
    pub fn answer(&self, query: Option<&str>) -> Response {
        let nonce = match parse_nonce(query) {
            Ok(n) => n,
            Err(msg) => return json(Status::BadRequest, error_json(msg, "")),
        };
        let t = (self.clock)();
        let next = self.next_allowed_us.load(Ordering::Relaxed);
        if t < next {
            return json(
                Status::TooManyRequests,
                error_json(
                    "rate limited",
                    "one attestation report per second; retry later",
                ),
            );
        }
        self.next_allowed_us
            .store(t.saturating_add(self.interval_us), Ordering::Relaxed);
        let Ok(rd) = report_data(&self.spki_der, &nonce) else {
            return json(Status::BadRequest, error_json("nonce too long", ""));
        };
        let report = match self.source.report(&rd) {
            Ok(r) => r,
            Err(e) => {
                return json(
                    Status::ServiceUnavailable,
                    error_json(&format!("{e}"), e.detail()),
                );
            }
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = format!(
            "{{\"version\":1,\"format\":\"vellum-attestation-v1\",\"nonce\":\"{}\",\
             \"report_data_formula\":\"SHA-512(\\\"vellum-ratls-v1\\\" || SHA-256(SPKI) || nonce)\",\
             \"spki_sha256\":\"{}\",\"report_data\":\"{}\",\"certificate\":\"{}\",\"report\":\"{}\"}}\n",
            hex(&nonce),
            hex(&Sha256::digest(&self.spki_der)),
            hex(&rd),
            b64.encode(&self.cert_der),
            b64.encode(report),
        );
        json(Status::Ok, body)
    }
}

impl AttestationRoute for Attestation {
    fn respond(&self, query: Option<&str>) -> Response {
        self.answer(query)
    }
}

fn json(status: Status, body: String) -> Response {
    Response {
        status,
        content_type: "application/json",
        body: Body::Owned(body.into_bytes()),
        close: false,
    }
}

fn error_json(error: &str, detail: &str) -> String {
    // Both strings are ours (no quotes or backslashes), so no escaping needed.
    format!("{{\"error\":\"{error}\",\"detail\":\"{detail}\"}}\n")
}

fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[usize::from(b >> 4)] as char);
        s.push(D[usize::from(b & 15)] as char);
    }
    s
}

/// Parses `nonce=HEX` (the only parameter; absent means an empty nonce).
fn parse_nonce(query: Option<&str>) -> Result<Vec<u8>, &'static str> {
    let mut nonce = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "nonce" {
            return Err("unknown query parameter (only nonce=HEX)");
        }
        if v.len() % 2 != 0 || v.len() > 2 * MAX_NONCE {
            return Err("nonce must be 0 to 32 bytes of hex");
        }
        nonce = (0..v.len() / 2)
            .map(|i| u8::from_str_radix(&v[2 * i..2 * i + 2], 16))
            .collect::<Result<_, _>>()
            .map_err(|_| "nonce must be hex")?;
    }
    Ok(nonce)
}

/// A plaintext session behind TLS.
pub struct TlsOver {
    tls: TlsSession,
    inner: Box<DynSession>,
    input_done: bool,
    inner_input_done: bool,
    failed: bool,
}

impl fmt::Debug for TlsOver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOver")
            .field("handshaking", &self.tls.is_handshaking())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Ciphertext offered per feed: about one full TLS record.
const RECV_WINDOW: usize = 16 * 1024 + 512;

impl TlsOver {
    /// A TLS server session around `inner` (for HTTP, make it with
    /// `HttpSession::secure()` so TLS-only routes are served).
    pub fn new(config: Arc<ServerConfig>, inner: Box<DynSession>) -> Result<Self, crate::TlsError> {
        Ok(TlsOver {
            tls: TlsSession::new(config)?,
            inner,
            input_done: false,
            inner_input_done: false,
            failed: false,
        })
    }

    /// The TLS session (negotiated parameters, state).
    pub fn tls(&self) -> &TlsSession {
        &self.tls
    }

    /// Hands decrypted bytes to the inner session straight from the TLS
    /// session's buffer (no intermediate copy).
    fn pump_plaintext(&mut self, now: Instant) {
        loop {
            let avail = self.tls.plaintext();
            let n = avail.len().min(self.inner.recv_window());
            if n == 0 {
                break;
            }
            let taken = self.inner.feed(&avail[..n], now);
            self.tls.consume_plaintext(taken);
            // recv_window promised room for n bytes; a session that takes less
            // is broken: drop the connection rather than lose bytes silently.
            if taken != n {
                self.failed = true;
                break;
            }
        }
    }
}

impl Session for TlsOver {
    type Env = dyn Handler;

    fn recv_window(&self) -> usize {
        if self.failed || self.input_done {
            0
        } else {
            // TlsSession bounds its own intake; offer a record's worth and let
            // `feed` report what it took.
            RECV_WINDOW
        }
    }

    fn feed(&mut self, data: &[u8], _now: Instant) -> usize {
        if self.failed {
            return data.len();
        }
        match self.tls.feed_ciphertext(data) {
            Ok(n) => n,
            Err(_) => {
                // The fatal alert is already queued; discard the rest.
                self.failed = true;
                data.len()
            }
        }
    }

    fn finish_input(&mut self) {
        self.input_done = true;
    }

    fn advance(&mut self, now: Instant, env: &Self::Env) {
        if self.failed {
            return;
        }
        self.pump_plaintext(now);
        if (self.input_done || self.tls.is_peer_closed())
            && self.tls.plaintext_available() == 0
            && !self.inner_input_done
        {
            self.inner.finish_input();
            self.inner_input_done = true;
        }
        self.inner.advance(now, env);
        while !self.inner.output().is_empty() {
            match self.tls.write_plaintext(self.inner.output()) {
                Ok(0) => break,
                Ok(n) => self.inner.consume_output(n, now),
                Err(_) => {
                    self.failed = true;
                    break;
                }
            }
        }
        if self.inner.wants_close() && self.inner.output().is_empty() {
            self.tls.close();
        }
        // More plaintext may have become acceptable after output drained.
        self.pump_plaintext(now);
    }

    fn output(&self) -> &[u8] {
        self.tls.pending_ciphertext()
    }

    fn consume_output(&mut self, n: usize, _now: Instant) {
        self.tls.consume_ciphertext(n);
    }

    fn wants_close(&self) -> bool {
        self.failed
            || self.tls.is_closed()
            || (self.inner.wants_close()
                && self.inner.output().is_empty()
                && !self.tls.is_handshaking())
            || (self.input_done && self.tls.is_handshaking())
    }

    fn deadline(&self) -> Option<Instant> {
        self.inner.deadline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use core::sync::atomic::AtomicU32;

    /// Answers with `results` in turn (the last one repeats), counting calls.
    struct Source {
        results: Vec<Result<(), AttestError>>,
        calls: Arc<AtomicU32>,
    }

    impl ReportSource for Source {
        fn report(&self, report_data: &[u8; 64]) -> Result<[u8; REPORT_LEN], AttestError> {
            let i = self.calls.fetch_add(1, Ordering::Relaxed) as usize;
            let r = self.results[i.min(self.results.len() - 1)];
            r.map(|()| {
                let mut report = [0u8; REPORT_LEN];
                report[0x50..0x90].copy_from_slice(report_data);
                report
            })
        }
    }

    fn attestation(results: Vec<Result<(), AttestError>>) -> (Attestation, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let clock = Arc::new(AtomicI64::new(0));
        let c = clock.clone();
        let a = Attestation::new(
            vec![0x30, 0x00],
            vec![0x30, 0x01, 0x02],
            Box::new(Source {
                results,
                calls: calls.clone(),
            }),
            // Every call is a second later: the rate limit never bites.
            Box::new(move || c.fetch_add(1_000_000, Ordering::Relaxed)),
            1000,
        );
        (a, calls)
    }

    fn body(r: &Response) -> String {
        String::from_utf8(r.body.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn a_report_binds_the_key_and_nonce() {
        let (a, calls) = attestation(vec![Ok(())]);
        let r = a.answer(Some("nonce=00ff"));
        assert_eq!(r.status, Status::Ok);
        let b = body(&r);
        let rd = report_data(&[0x30, 0x01, 0x02], &[0x00, 0xff]).unwrap();
        assert!(
            b.contains(&format!("\"report_data\":\"{}\"", hex(&rd))),
            "{b}"
        );
        assert!(b.contains("\"nonce\":\"00ff\""), "{b}");
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn every_failure_is_a_503_with_a_sentence() {
        for e in [
            AttestError::NotSnp,
            AttestError::Failed,
            AttestError::Busy,
            AttestError::Disabled,
        ] {
            let (a, _) = attestation(vec![Err(e)]);
            let r = a.answer(None);
            assert_eq!(r.status, Status::ServiceUnavailable, "{e:?}");
            let b = body(&r);
            assert!(
                b.starts_with(&format!("{{\"error\":\"{e}\",\"detail\":\"")),
                "{b}"
            );
            assert!(e.detail().len() > 40 && e.detail().is_ascii(), "{e:?}");
            assert!(!e.detail().contains(['"', '\\']), "{e:?}: not JSON-safe");
        }
    }

    /// After the request that burnt the key, the route keeps answering 503
    /// "attestation is disabled" (the kernel's source says so) and the
    /// client can tell it apart from a transient failure.
    #[test]
    fn burnt_key_stays_burnt() {
        let (a, calls) = attestation(vec![
            Ok(()),
            Err(AttestError::Failed),
            Err(AttestError::Disabled),
        ]);
        assert_eq!(a.answer(None).status, Status::Ok);
        let r = a.answer(None);
        assert_eq!(r.status, Status::ServiceUnavailable);
        assert!(body(&r).contains("wiped its message key"));
        for _ in 0..3 {
            let r = a.answer(Some("nonce=01"));
            assert_eq!(r.status, Status::ServiceUnavailable);
            let b = body(&r);
            assert!(b.contains("\"error\":\"attestation is disabled\""), "{b}");
            assert!(b.contains("restart the guest"), "{b}");
        }
        assert_eq!(calls.load(Ordering::Relaxed), 5);
    }
}
