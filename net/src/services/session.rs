//! The transport-independent connection seam.
//!
//! A [`Session`] is a connection's protocol state machine over byte buffers:
//! the transport feeds it the bytes it received, lets it advance, and writes
//! out what it produced. It never sees a socket. Today the transport is a
//! smoltcp TCP socket ([`drive_tcp`]); later a TLS record layer sits in
//! between, itself a `Session` wrapping the plaintext one:
//!
//! ```text
//!  TCP socket ──bytes──▶ TlsSession::feed ──decrypt──▶ HttpSession::feed
//!  TCP socket ◀─bytes── TlsSession::output ◀─encrypt── HttpSession::output
//! ```
//!
//! Flow control is explicit: [`Session::recv_window`] says how many bytes the
//! session accepts now (the transport leaves the rest in the socket, so the TCP
//! window closes), and output is only produced while the pending output is
//! small, so neither side buffers without bound.

use smoltcp::socket::tcp;
use smoltcp::time::Instant;

use crate::http::Handler;
use crate::metrics::METRICS;

/// A connection's protocol engine over byte buffers.
pub trait Session {
    /// What [`advance`](Self::advance) needs from the outside (the HTTP
    /// handler, for example). `()` when nothing.
    type Env: ?Sized;

    /// How many bytes [`feed`](Self::feed) accepts now.
    fn recv_window(&self) -> usize;

    /// Hands over received bytes; returns how many were taken (at most
    /// [`recv_window`](Self::recv_window)).
    fn feed(&mut self, data: &[u8], now: Instant) -> usize;

    /// The peer closed its sending side: no more input will come.
    fn finish_input(&mut self);

    /// Processes buffered input, produces output, checks timers.
    fn advance(&mut self, now: Instant, env: &Self::Env);

    /// Bytes waiting to be sent.
    fn output(&self) -> &[u8];

    /// `n` bytes of [`output`](Self::output) were sent.
    fn consume_output(&mut self, n: usize, now: Instant);

    /// The session is finished: once [`output`](Self::output) is empty the
    /// transport closes the connection.
    fn wants_close(&self) -> bool;

    /// When [`advance`](Self::advance) must run next at the latest (a timer).
    fn deadline(&self) -> Option<Instant>;
}

/// What [`drive_tcp`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DriveOutcome {
    /// Bytes moved in either direction.
    pub moved: usize,
    /// The session is done and all its output is in the socket: close it.
    pub close: bool,
}

/// Moves bytes between an established TCP socket and a session, once: socket
/// receive buffer → session, advance, session output → socket send buffer.
/// One copy each way (the session's own buffer is the only private one).
pub fn drive_tcp<S: Session + ?Sized>(
    socket: &mut tcp::Socket<'_>,
    session: &mut S,
    env: &S::Env,
    now: Instant,
) -> DriveOutcome {
    let mut moved = flush(socket, session, now);
    // Input: at most two contiguous pieces (the ring buffer may wrap).
    for _ in 0..2 {
        let window = session.recv_window();
        if window == 0 || !socket.can_recv() {
            break;
        }
        let taken = socket
            .recv(|buf| {
                let n = session.feed(&buf[..buf.len().min(window)], now);
                (n, n)
            })
            .unwrap_or(0);
        moved += taken;
        if taken == 0 {
            break;
        }
    }
    if !socket.may_recv() {
        session.finish_input();
    }
    session.advance(now, env);
    moved += flush(socket, session, now);
    DriveOutcome {
        moved,
        close: session.wants_close() && session.output().is_empty(),
    }
}

/// Writes as much pending output as the socket takes.
fn flush<S: Session + ?Sized>(
    socket: &mut tcp::Socket<'_>,
    session: &mut S,
    now: Instant,
) -> usize {
    let mut moved = 0;
    while !session.output().is_empty() && socket.can_send() {
        let n = socket.send_slice(session.output()).unwrap_or(0);
        if n == 0 {
            break;
        }
        session.consume_output(n, now);
        moved += n;
    }
    moved
}

/// An echo engine over byte buffers (for echo behind TLS; plain TCP echo on
/// port 7 moves bytes socket to socket without it). Holds at most `capacity`
/// bytes. Its environment is unused; it is `dyn Handler` so that the session
/// fits [`super::DynSession`].
#[derive(Debug)]
pub struct EchoSession {
    buf: alloc::vec::Vec<u8>,
    capacity: usize,
    input_done: bool,
}

impl EchoSession {
    /// An echo session buffering at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        EchoSession {
            buf: alloc::vec::Vec::new(),
            capacity,
            input_done: false,
        }
    }

    /// A session that takes nothing and closes at once (for a connection that
    /// cannot be served, e.g. a TLS session that failed to start).
    pub fn closed() -> Self {
        EchoSession {
            buf: alloc::vec::Vec::new(),
            capacity: 0,
            input_done: true,
        }
    }
}

impl Session for EchoSession {
    type Env = dyn Handler;

    fn recv_window(&self) -> usize {
        if self.input_done {
            0
        } else {
            self.capacity - self.buf.len()
        }
    }

    fn feed(&mut self, data: &[u8], _now: Instant) -> usize {
        let n = data.len().min(self.recv_window());
        self.buf.extend_from_slice(&data[..n]);
        n
    }

    fn finish_input(&mut self) {
        self.input_done = true;
    }

    fn advance(&mut self, _now: Instant, _env: &dyn Handler) {}

    fn output(&self) -> &[u8] {
        &self.buf
    }

    fn consume_output(&mut self, n: usize, _now: Instant) {
        let n = n.min(self.buf.len());
        self.buf.drain(..n);
        METRICS.echo_bytes.add(n as u64);
    }

    fn wants_close(&self) -> bool {
        self.input_done
    }

    fn deadline(&self) -> Option<Instant> {
        None
    }
}
