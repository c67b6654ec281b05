//! The per-connection HTTP/1.1 state machine, over byte buffers.

use alloc::vec::Vec;

use smoltcp::time::{Duration, Instant};

use super::parse::{self, HeadScanner, MAX_HEADERS, Scan};
use super::{Handler, Header, HttpError, Limits, Method, Response};
use crate::metrics::METRICS;
use crate::services::Session;

/// Per-connection HTTP settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpConfig {
    /// Request size limits.
    pub limits: Limits,
    /// Close a connection that has not moved a byte for this long (no
    /// request in progress, or a client that stopped reading).
    pub idle_timeout: Duration,
    /// Close a connection whose started request (head and body) is not
    /// complete this long after its first byte (slow-loris guard).
    pub request_timeout: Duration,
    /// Stop answering pipelined requests while this many response bytes are
    /// waiting to be sent (bounds the output buffer).
    pub output_high_water: usize,
}

impl HttpConfig {
    /// 30 s idle, 10 s per request, 8 KiB output high-water mark.
    pub const DEFAULT: HttpConfig = HttpConfig {
        limits: Limits::DEFAULT,
        idle_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(10),
        output_high_water: 8 * 1024,
    };
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Buffers larger than this are freed when they empty, so an idle connection
/// holds almost nothing.
const KEEP_CAPACITY: usize = 4096;

/// One HTTP/1.1 connection: feed it request bytes, take response bytes.
///
/// Requests are answered strictly in order (pipelining); each complete head is
/// handed to the [`Handler`] as soon as it is parsed and its body (if any) is
/// then read and discarded. Memory: the input buffer never exceeds
/// [`Limits::max_head`]; the output buffer stays below
/// [`HttpConfig::output_high_water`] plus one response.
#[derive(Debug)]
pub struct HttpSession {
    config: HttpConfig,
    /// Received, unprocessed bytes.
    input: Vec<u8>,
    scanner: HeadScanner,
    /// Body bytes of the last request still to be read and dropped.
    body_remaining: u64,
    /// Response bytes; `output[out_pos..]` is pending.
    output: Vec<u8>,
    out_pos: usize,
    /// No more requests will be answered.
    closing: bool,
    /// The peer finished sending.
    input_done: bool,
    last_activity: Instant,
    /// First byte of the request being received.
    request_started: Option<Instant>,
    /// Requests answered on this connection.
    requests: u64,
    /// The connection runs over TLS (requests are marked `secure`).
    secure: bool,
}

impl HttpSession {
    /// A new connection at `now`.
    pub fn new(config: HttpConfig, now: Instant) -> Self {
        HttpSession {
            config,
            input: Vec::new(),
            scanner: HeadScanner::new(),
            body_remaining: 0,
            output: Vec::new(),
            out_pos: 0,
            closing: false,
            input_done: false,
            last_activity: now,
            request_started: None,
            requests: 0,
            secure: false,
        }
    }

    /// Marks the connection as running over TLS: its requests carry
    /// `secure = true`, which HTTPS-only routes (`/attestation`) require.
    pub fn secure(mut self) -> Self {
        self.secure = true;
        self
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Whether the connection sits between requests with nothing to send (it
    /// can be closed without cutting anything short).
    pub fn is_idle(&self) -> bool {
        !self.closing
            && self.input.is_empty()
            && self.body_remaining == 0
            && self.out_pos == self.output.len()
    }

    /// When the connection last moved a byte.
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// Stops answering: the transport closes once the output is flushed.
    pub fn close(&mut self) {
        self.closing = true;
    }

    fn pending_output(&self) -> usize {
        self.output.len() - self.out_pos
    }

    fn drain_input(&mut self, n: usize) {
        self.input.drain(..n);
        if self.input.is_empty() && self.input.capacity() > KEEP_CAPACITY {
            self.input = Vec::new();
        }
    }

    /// Appends a response; counts it.
    fn respond(&mut self, response: &Response, head_only: bool, keep_alive: bool) {
        response.write_to(&mut self.output, head_only, keep_alive);
        self.requests += 1;
        METRICS.http_requests.inc();
        if response.status.is_client_error() {
            METRICS.http_client_errors.inc();
        }
        if !keep_alive {
            self.closing = true;
        }
    }

    fn respond_error(&mut self, error: HttpError) {
        self.respond(&Response::error(error.status()), false, false);
    }

    /// Answers every complete request in the input, while the output is below
    /// the high-water mark.
    fn process(&mut self, handler: &dyn Handler) {
        let limits = self.config.limits;
        while !self.closing && self.pending_output() < self.config.output_high_water {
            if self.body_remaining > 0 {
                let n = self
                    .input
                    .len()
                    .min(usize::try_from(self.body_remaining).unwrap_or(usize::MAX));
                self.drain_input(n);
                self.body_remaining -= n as u64;
                if self.body_remaining > 0 {
                    break;
                }
            }
            if self.scanner.is_fresh() {
                let skip = parse::leading_empty_lines(&self.input);
                self.drain_input(skip);
            }
            if self.input.is_empty() {
                break;
            }
            let head_len = match self.scanner.scan(&self.input, &limits) {
                Ok(Scan::Incomplete) => break,
                Ok(Scan::Complete(len)) => len,
                Err(e) => {
                    self.respond_error(e);
                    break;
                }
            };
            let mut storage = [Header::default(); MAX_HEADERS];
            let answer = match parse::parse_head(&self.input[..head_len], &mut storage, &limits) {
                Ok(mut request) => {
                    request.secure = self.secure;
                    let response = handler.handle(&request);
                    let keep_alive = request.keep_alive && !response.close;
                    Ok((
                        response,
                        request.method == Method::Head,
                        keep_alive,
                        request.content_length,
                    ))
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok((response, head_only, keep_alive, body)) => {
                    self.respond(&response, head_only, keep_alive);
                    self.body_remaining = body;
                }
                Err(e) => {
                    self.respond_error(e);
                    break;
                }
            }
            self.drain_input(head_len);
            self.scanner.reset();
            self.request_started = None;
        }
    }
}

impl Session for HttpSession {
    type Env = dyn Handler;

    fn recv_window(&self) -> usize {
        if self.closing || self.input_done {
            0
        } else {
            self.config
                .limits
                .max_head()
                .saturating_sub(self.input.len())
        }
    }

    fn feed(&mut self, data: &[u8], now: Instant) -> usize {
        let n = data.len().min(self.recv_window());
        if n == 0 {
            return 0;
        }
        let needed = self.input.len() + n;
        if needed > self.input.capacity() {
            // Grow geometrically, but never past the head limit.
            let target = needed
                .max(self.input.capacity() * 2)
                .max(512)
                .min(self.config.limits.max_head().max(needed));
            self.input.reserve_exact(target - self.input.len());
        }
        self.input.extend_from_slice(&data[..n]);
        self.last_activity = now;
        n
    }

    fn finish_input(&mut self) {
        self.input_done = true;
    }

    fn advance(&mut self, now: Instant, handler: &dyn Handler) {
        if !self.closing {
            self.process(handler);
        }
        if self.closing {
            // A client that stopped reading our last response: give up on it.
            if self.deadline().is_some_and(|d| now >= d) {
                self.output = Vec::new();
                self.out_pos = 0;
            }
            return;
        }
        if self.closing {
            return;
        }
        if !self.input.is_empty() || self.body_remaining > 0 {
            self.request_started.get_or_insert(now);
        } else {
            self.request_started = None;
        }
        // The peer is done sending and every complete request has been
        // answered (a partial one never will be).
        if self.input_done && self.pending_output() < self.config.output_high_water {
            self.closing = true;
            return;
        }
        if self.deadline().is_some_and(|d| now >= d) {
            // Timed out: drop whatever was not sent and close.
            self.closing = true;
            self.output = Vec::new();
            self.out_pos = 0;
        }
    }

    fn output(&self) -> &[u8] {
        &self.output[self.out_pos..]
    }

    fn consume_output(&mut self, n: usize, now: Instant) {
        self.out_pos = (self.out_pos + n).min(self.output.len());
        if n > 0 {
            self.last_activity = now;
        }
        if self.out_pos == self.output.len() {
            self.out_pos = 0;
            if self.output.capacity() > KEEP_CAPACITY {
                self.output = Vec::new();
            } else {
                self.output.clear();
            }
        }
    }

    fn wants_close(&self) -> bool {
        self.closing
    }

    fn deadline(&self) -> Option<Instant> {
        if self.closing {
            return (self.pending_output() > 0)
                .then(|| self.last_activity + self.config.idle_timeout);
        }
        let idle = self.last_activity + self.config.idle_timeout;
        Some(match self.request_started {
            Some(start) => idle.min(start + self.config.request_timeout),
            None => idle,
        })
    }
}
