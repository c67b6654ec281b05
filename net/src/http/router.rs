//! The application: `handle(&Request) -> Response`, and `/metrics` rendering.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use super::response::push_decimal;
use super::{Body, INDEX_CONTENT_TYPE, INDEX_HTML, Method, Request, Response, Status};
use crate::metrics::METRICS;

/// Turns a request into a response. Implemented by [`Router`]; a TLS front end
/// (or a test) can run an [`super::HttpSession`] with any handler.
pub trait Handler {
    /// Answers one request. Called once per request, in order.
    fn handle(&self, request: &Request<'_>) -> Response;
}

/// Extra metrics the kernel adds to `/metrics` (heap bytes, pool size,
/// uptime, ...). Any `Fn(&mut MetricsWriter<'_>)` is one.
pub trait MetricsExtra {
    /// Writes the extra metrics.
    fn write_metrics(&self, out: &mut MetricsWriter<'_>);
}

impl<F: Fn(&mut MetricsWriter<'_>)> MetricsExtra for F {
    fn write_metrics(&self, out: &mut MetricsWriter<'_>) {
        self(out)
    }
}

/// Writes Prometheus text exposition (format 0.0.4) lines. Names get the
/// `vellum_` prefix (counters also the `_total` suffix); characters outside
/// `[a-zA-Z0-9_]` become `_`, and newlines in help texts become spaces, so a
/// caller cannot break the format.
#[derive(Debug)]
pub struct MetricsWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> MetricsWriter<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        MetricsWriter { out }
    }

    /// A counter `vellum_<name>_total`.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.metric(name, "_total", "counter", help, value);
    }

    /// A gauge `vellum_<name>`.
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.metric(name, "", "gauge", help, value);
    }

    /// A counter family: one `# HELP`/`# TYPE` for `vellum_<name>_total`,
    /// then one sample `vellum_<name>_total{<label>="<value>"} <n>` per entry
    /// of `samples`. Label name and values are sanitized like metric names.
    pub fn counter_family(&mut self, name: &str, help: &str, label: &str, samples: &[(&str, u64)]) {
        self.header(name, "_total", "counter", help);
        for &(value, n) in samples {
            self.name(name, "_total");
            self.out.push(b'{');
            self.sanitized(label);
            self.out.extend_from_slice(b"=\"");
            self.sanitized(value);
            self.out.extend_from_slice(b"\"} ");
            push_decimal(self.out, n);
            self.out.push(b'\n');
        }
    }

    fn sanitized(&mut self, s: &str) {
        self.out.extend(s.bytes().map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' {
                b
            } else {
                b'_'
            }
        }));
    }

    fn name(&mut self, name: &str, suffix: &str) {
        self.out.extend_from_slice(b"vellum_");
        self.sanitized(name);
        self.out.extend_from_slice(suffix.as_bytes());
    }

    fn header(&mut self, name: &str, suffix: &str, kind: &str, help: &str) {
        self.out.extend_from_slice(b"# HELP ");
        self.name(name, suffix);
        self.out.push(b' ');
        self.out.extend(help.bytes().map(|b| match b {
            b'\n' | b'\r' => b' ',
            b'\\' => b'/',
            b => b,
        }));
        self.out.extend_from_slice(b"\n# TYPE ");
        self.name(name, suffix);
        self.out.push(b' ');
        self.out.extend_from_slice(kind.as_bytes());
        self.out.push(b'\n');
    }

    fn metric(&mut self, name: &str, suffix: &str, kind: &str, help: &str, value: u64) {
        self.header(name, suffix, kind, help);
        self.name(name, suffix);
        self.out.push(b' ');
        push_decimal(self.out, value);
        self.out.push(b'\n');
    }
}

/// Gauges the network stack itself reports, refreshed by
/// [`crate::services::Services`] on every poll.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackGauges {
    /// HTTP connections being served.
    pub http_connections: u64,
    /// HTTP sockets listening (free for new connections).
    pub http_listeners: u64,
    /// Echo connections being served.
    pub echo_connections: u64,
    /// Bytes of TCP socket buffers (rx + tx, all sockets).
    pub socket_buffer_bytes: u64,
    /// 1 if the address came from DHCP, 0 for the static one.
    pub dhcp_configured: u64,
}

/// Renders every counter of [`METRICS`], the stack gauges and the extras.
pub fn render_metrics(
    out: &mut Vec<u8>,
    gauges: Option<&StackGauges>,
    extra: Option<&dyn MetricsExtra>,
) {
    let m = &METRICS;
    let mut w = MetricsWriter::new(out);
    let counters: [(&str, &str, u64); 15] = [
        (
            "rx_packets",
            "Frames received from the device.",
            m.rx_packets.get(),
        ),
        ("rx_bytes", "Bytes of received frames.", m.rx_bytes.get()),
        (
            "tx_packets",
            "Frames handed to the device.",
            m.tx_packets.get(),
        ),
        ("tx_bytes", "Bytes of transmitted frames.", m.tx_bytes.get()),
        (
            "rx_copy_bytes",
            "Payload bytes copied out of the shared pool.",
            m.rx_copy_bytes.get(),
        ),
        (
            "tx_copy_bytes",
            "Payload bytes written into the shared pool.",
            m.tx_copy_bytes.get(),
        ),
        (
            "ring_violations",
            "Device completions refused by validation.",
            m.ring_violations.get(),
        ),
        (
            "register_exits",
            "Register accesses that left the guest.",
            m.register_exits.get(),
        ),
        (
            "tx_ring_full",
            "Transmit attempts that found the ring full.",
            m.tx_ring_full.get(),
        ),
        (
            "tx_tso_frames",
            "TCP segments of up to 64 KiB handed to the device to cut (TSO).",
            m.tx_tso_frames.get(),
        ),
        (
            "rx_merged_frames",
            "Frames of up to 64 KiB gathered from several receive buffers.",
            m.rx_merged_frames.get(),
        ),
        (
            "http_requests",
            "HTTP requests answered.",
            m.http_requests.get(),
        ),
        (
            "http_client_errors",
            "HTTP requests answered with a 4xx status.",
            m.http_client_errors.get(),
        ),
        (
            "tcp_accepted",
            "TCP connections accepted.",
            m.tcp_accepted.get(),
        ),
        ("echo_bytes", "Bytes echoed on port 7.", m.echo_bytes.get()),
    ];
    for (name, help, value) in counters {
        w.counter(name, help, value);
    }
    if let Some(g) = gauges {
        w.gauge(
            "http_connections",
            "HTTP connections open.",
            g.http_connections,
        );
        w.gauge(
            "http_listeners",
            "HTTP sockets free for new connections.",
            g.http_listeners,
        );
        w.gauge(
            "echo_connections",
            "Echo connections open.",
            g.echo_connections,
        );
        w.gauge(
            "socket_buffer_bytes",
            "Bytes of TCP socket buffers.",
            g.socket_buffer_bytes,
        );
        w.gauge(
            "dhcp_configured",
            "1 if the IPv4 address came from DHCP.",
            g.dhcp_configured,
        );
    }
    if let Some(extra) = extra {
        extra.write_metrics(&mut w);
    }
}

/// The `/attestation` endpoint, served over TLS only (implemented by
/// `vellum_crypto::Attestation`, which binds the report to the TLS key).
pub trait AttestationRoute {
    /// Answers `GET /attestation?<query>`.
    fn respond(&self, query: Option<&str>) -> Response;
}

/// The routes: `GET|HEAD /` ([`INDEX_HTML`] or a replacement), `/health`,
/// `/metrics`, and `GET /attestation` over TLS; 404 elsewhere; 405 for other
/// methods.
pub struct Router {
    index: &'static [u8],
    extra: Option<Box<dyn MetricsExtra>>,
    gauges: Option<StackGauges>,
    attestation: Option<Box<dyn AttestationRoute>>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("index_len", &self.index.len())
            .field("extra", &self.extra.is_some())
            .field("gauges", &self.gauges)
            .field("attestation", &self.attestation.is_some())
            .finish()
    }
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl Router {
    /// Routes serving [`INDEX_HTML`] on `/`.
    pub fn new() -> Self {
        Router {
            index: INDEX_HTML,
            extra: None,
            gauges: None,
            attestation: None,
        }
    }

    /// Sets the `/attestation` endpoint (HTTPS only).
    pub fn set_attestation(&mut self, route: Option<Box<dyn AttestationRoute>>) {
        self.attestation = route;
    }

    /// Replaces the page served on `/` (`text/html`).
    pub fn set_index(&mut self, page: &'static [u8]) {
        self.index = page;
    }

    /// Sets the extra metrics appended to `/metrics`.
    pub fn set_metrics_extra(&mut self, extra: Option<Box<dyn MetricsExtra>>) {
        self.extra = extra;
    }

    /// Sets the stack gauges shown on `/metrics`.
    pub fn set_gauges(&mut self, gauges: StackGauges) {
        self.gauges = Some(gauges);
    }
}

impl Handler for Router {
    fn handle(&self, request: &Request<'_>) -> Response {
        if !matches!(request.method, Method::Get | Method::Head) {
            return Response::error(Status::MethodNotAllowed);
        }
        match request.path {
            "/" | "/index.html" => Response::ok(INDEX_CONTENT_TYPE, Body::Static(self.index)),
            "/health" => Response::ok("text/plain; charset=utf-8", Body::Static(b"ok\n")),
            "/metrics" => {
                let mut out = Vec::with_capacity(4096);
                render_metrics(&mut out, self.gauges.as_ref(), self.extra.as_deref());
                Response::ok("text/plain; version=0.0.4; charset=utf-8", Body::Owned(out))
            }
            "/attestation" if request.secure && request.method == Method::Get => {
                match &self.attestation {
                    Some(a) => a.respond(request.query),
                    None => Response::error(Status::ServiceUnavailable),
                }
            }
            _ => Response::error(Status::NotFound),
        }
    }
}
