//! A TLS server session that network services drive without `std::io`.
//!
//! [`TlsSession`] wraps rustls' [`UnbufferedServerConnection`]. The service
//! moves bytes between its TCP socket and the session:
//!
//! ```text
//!   socket.recv  ──feed_ciphertext──▶ ┌────────────┐ ──read_plaintext──▶  app
//!   socket.send ◀──take_ciphertext─── │ TlsSession │ ◀─write_plaintext──  app
//!                                      └────────────┘
//! ```
//!
//! Only ciphertext (TLS records) ever leaves through `take_ciphertext`/
//! `pending_ciphertext`; plaintext and session secrets stay inside the session,
//! in private guest memory, and its buffers are zeroized on drop.
//!
//! # Bounded buffers and backpressure
//!
//! - Incoming ciphertext: at most [`INCOMING_CAPACITY`] bytes are held;
//!   `feed_ciphertext` accepts only what fits (leave the rest in the socket).
//! - Decrypted plaintext: at most [`PLAINTEXT_CAPACITY`] bytes; records are not
//!   decrypted while the application has not read enough, so a full plaintext
//!   buffer stops ciphertext intake too.
//! - Outgoing ciphertext: `write_plaintext` encrypts only while fewer than
//!   [`OUTGOING_CAPACITY`] bytes wait for the socket, and incoming records are
//!   not processed while the peer does not drain our output (a peer that sends
//!   but never reads stalls instead of growing our buffers).

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, ServerConfig, UnbufferedServerConnection};
use rustls::time_provider::TimeProvider;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::version::{TLS12, TLS13};
use zeroize::Zeroize;

use crate::identity::Identity;

/// Largest plaintext in one TLS record.
pub const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// Largest TLS ciphertext record on the wire (TLS 1.2 bound: 2^14 + 2048 + header).
pub const MAX_RECORD_CIPHERTEXT: usize = MAX_RECORD_PLAINTEXT + 2048 + 5;
/// Incoming ciphertext buffer: two maximal records.
pub const INCOMING_CAPACITY: usize = 2 * MAX_RECORD_CIPHERTEXT;
/// Decrypted plaintext waiting for the application.
pub const PLAINTEXT_CAPACITY: usize = 4 * MAX_RECORD_PLAINTEXT;
/// Outgoing ciphertext waiting for the socket, above which application writes
/// and incoming-record processing pause.
pub const OUTGOING_CAPACITY: usize = 4 * MAX_RECORD_CIPHERTEXT;
/// Per-record expansion reserved when encrypting (header, tag, content type,
/// TLS 1.2 explicit nonce), rounded up.
const RECORD_OVERHEAD: usize = 64;
/// Bound on state-machine steps per call (each step makes progress; this only
/// guards against a livelock bug turning into a hang).
const MAX_STEPS: usize = 256;

/// Session errors.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsError {
    /// The TLS protocol failed: bad input from the peer, handshake failure,
    /// or a fatal alert received. A fatal alert for the peer, if any, is in
    /// the outgoing ciphertext; the session is closed.
    Protocol(rustls::Error),
    /// The session is closed (after close_notify or an earlier error).
    Closed,
    /// rustls produced a handshake message larger than our buffers allow.
    BufferLimit,
    /// Building the session or config failed.
    Config(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Protocol(e) => write!(f, "TLS protocol error: {e}"),
            Self::Closed => f.write_str("TLS session closed"),
            Self::BufferLimit => f.write_str("TLS buffer limit exceeded"),
            Self::Config(e) => write!(f, "TLS configuration error: {e}"),
        }
    }
}

/// Builds the server configuration: TLS 1.3 and 1.2, `provider`'s suites and
/// groups, the identity's certificate and key, no client authentication, no
/// ALPN, no 0-RTT. Session resumption only with `tickets` (stateless tickets,
/// e.g. a [`crate::Ticketer`]; no server-side cache either way), which needs a
/// `clock` that answers. `clock` is rustls' time source (see
/// [`crate::KernelClock`]).
///
/// For ALPN or other knobs, build your own with
/// `ServerConfig::builder_with_details` and [`Identity::certified_key`].
pub fn server_config(
    identity: &Identity,
    provider: Arc<CryptoProvider>,
    clock: Arc<dyn TimeProvider>,
    tickets: Option<Arc<dyn ProducesTickets>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(
        identity.certified_key(),
    ));
    let mut config = ServerConfig::builder_with_details(provider, clock)
        .with_protocol_versions(&[&TLS13, &TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // Resumption by stateless tickets when a ticketer is given (the clock
    // then has to answer: tickets carry their issue time); no 0-RTT data.
    match tickets {
        Some(t) => config.ticketer = t,
        None => config.send_tls13_tickets = 0,
    }
    config.max_early_data_size = 0;
    // The provider's order is the machine's fastest first (`provider_for`).
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// One TLS server session (one TCP connection). See the module docs.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Ciphertext from the peer, `incoming[..in_len]` valid. Fixed length.
    /// rustls decrypts in place, so it may hold plaintext: zeroized on drop.
    incoming: Vec<u8>,
    in_len: usize,
    /// Ciphertext for the peer, `outgoing[out_start..]` pending.
    outgoing: Vec<u8>,
    out_start: usize,
    /// Decrypted application data, `plain[plain_start..]` unread.
    plain: Vec<u8>,
    plain_start: usize,
    error: Option<TlsError>,
    /// Peer sent close_notify: no more plaintext will arrive.
    peer_closed: bool,
    /// Application asked to close; close_notify queued once possible.
    close_requested: bool,
    close_sent: bool,
    /// rustls reached `Closed`.
    closed: bool,
}

impl fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.conn.is_handshaking())
            .field("incoming", &self.in_len)
            .field("outgoing", &self.pending_ciphertext().len())
            .field("plaintext", &(self.plain.len() - self.plain_start))
            .field("error", &self.error)
            .field("peer_closed", &self.peer_closed)
            .field("close_sent", &self.close_sent)
            .field("closed", &self.closed)
            .finish()
    }
}

impl Drop for TlsSession {
    fn drop(&mut self) {
        self.incoming.zeroize();
        self.plain.zeroize();
    }
}

impl TlsSession {
    /// A new server session waiting for a ClientHello.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        let conn = UnbufferedServerConnection::new(config).map_err(TlsError::Config)?;
        Ok(Self {
            conn,
            incoming: vec![0; INCOMING_CAPACITY],
            in_len: 0,
            outgoing: Vec::new(),
            out_start: 0,
            plain: Vec::new(),
            plain_start: 0,
            error: None,
            peer_closed: false,
            close_requested: false,
            close_sent: false,
            closed: false,
        })
    }

    /// Feeds ciphertext received from the socket. Returns how many bytes were
    /// accepted (possibly fewer than `data.len()`, even 0, when buffers are
    /// full: keep the rest in the socket and retry after reading plaintext or
    /// sending ciphertext). Progresses the handshake and decrypts what it can.
    ///
    /// Returns an error once the session has failed; the error is sticky and
    /// any alert for the peer is in the outgoing ciphertext.
    pub fn feed_ciphertext(&mut self, data: &[u8]) -> Result<usize, TlsError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let n = if self.peer_closed || self.closed {
            // Nothing after close_notify is meaningful; swallow it.
            data.len()
        } else {
            let n = data.len().min(self.incoming.len() - self.in_len);
            self.incoming[self.in_len..self.in_len + n].copy_from_slice(&data[..n]);
            self.in_len += n;
            n
        };
        self.pump(&[]);
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(n),
        }
    }

    /// Ciphertext waiting to be written to the socket.
    pub fn pending_ciphertext(&self) -> &[u8] {
        &self.outgoing[self.out_start..]
    }

    /// Marks `n` bytes of [`pending_ciphertext`](Self::pending_ciphertext) as
    /// sent, then resumes any work that was waiting for buffer space.
    pub fn consume_ciphertext(&mut self, n: usize) {
        let n = n.min(self.pending_ciphertext().len());
        self.out_start += n;
        if self.out_start == self.outgoing.len() {
            self.outgoing.clear();
            self.out_start = 0;
        } else if self.out_start >= OUTGOING_CAPACITY {
            self.outgoing.drain(..self.out_start);
            self.out_start = 0;
        }
        if n > 0 {
            self.pump(&[]);
        }
    }

    /// Hands pending ciphertext to `sink` (e.g. a smoltcp `send_slice`), which
    /// returns how many bytes it took; repeats while it takes everything and
    /// more is produced. Returns the total taken.
    pub fn take_ciphertext(&mut self, mut sink: impl FnMut(&[u8]) -> usize) -> usize {
        let mut total = 0;
        loop {
            let pending = self.pending_ciphertext();
            if pending.is_empty() {
                return total;
            }
            let len = pending.len();
            let n = sink(pending).min(len);
            total += n;
            self.consume_ciphertext(n);
            if n < len {
                return total;
            }
        }
    }

    /// Copies decrypted application data into `buf`; returns the count (0 if
    /// none is available yet, or at end of stream: see
    /// [`is_peer_closed`](Self::is_peer_closed)).
    pub fn read_plaintext(&mut self, buf: &mut [u8]) -> usize {
        let avail = self.plaintext();
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume_plaintext(n);
        n
    }

    /// The decrypted application data not consumed yet, in place (no copy).
    pub fn plaintext(&self) -> &[u8] {
        &self.plain[self.plain_start..]
    }

    /// Marks `n` bytes of [`plaintext`](Self::plaintext) as consumed; the
    /// buffer is wiped once all of it is.
    pub fn consume_plaintext(&mut self, n: usize) {
        let n = n.min(self.plaintext_available());
        self.plain_start += n;
        if self.plain_start == self.plain.len() {
            self.plain.zeroize();
            self.plain.clear();
            self.plain_start = 0;
        }
        if n > 0 {
            // Room freed: decrypt records that were waiting.
            self.pump(&[]);
        }
    }

    /// Number of decrypted bytes ready for [`read_plaintext`](Self::read_plaintext).
    pub fn plaintext_available(&self) -> usize {
        self.plain.len() - self.plain_start
    }

    /// Encrypts application data for the peer. Returns how much was accepted:
    /// 0 while handshaking or while [`OUTGOING_CAPACITY`] bytes of ciphertext
    /// are already waiting for the socket (retry after sending).
    pub fn write_plaintext(&mut self, data: &[u8]) -> Result<usize, TlsError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.close_requested || self.closed {
            return Err(TlsError::Closed);
        }
        let n = self.pump(data);
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(n),
        }
    }

    /// Starts a graceful close: queues a close_notify alert (once the
    /// handshake is done). Further writes fail with [`TlsError::Closed`].
    pub fn close(&mut self) {
        self.close_requested = true;
        self.pump(&[]);
    }

    /// Handshake still in progress.
    pub fn is_handshaking(&self) -> bool {
        self.error.is_none() && self.conn.is_handshaking()
    }

    /// The peer sent close_notify: once
    /// [`plaintext_available`](Self::plaintext_available) is 0, the read side
    /// is at end of stream.
    pub fn is_peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// The session is finished: it failed, or both sides sent close_notify,
    /// or we sent ours. Send the remaining
    /// [`pending_ciphertext`](Self::pending_ciphertext), then close the socket.
    pub fn is_closed(&self) -> bool {
        self.error.is_some() || self.closed || self.close_sent
    }

    /// The error that closed the session, if any.
    pub fn error(&self) -> Option<&TlsError> {
        self.error.as_ref()
    }

    /// The negotiated cipher suite, once known.
    pub fn negotiated_cipher_suite(&self) -> Option<rustls::SupportedCipherSuite> {
        self.conn.negotiated_cipher_suite()
    }

    /// The negotiated key-exchange group, once known.
    pub fn negotiated_kx_group(&self) -> Option<rustls::NamedGroup> {
        self.conn.negotiated_key_exchange_group().map(|g| g.name())
    }

    /// The negotiated protocol version, once known.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    fn outgoing_pending(&self) -> usize {
        self.outgoing.len() - self.out_start
    }

    /// Runs the rustls state machine as far as it can go without more input,
    /// encrypting from `to_write` when allowed. Returns plaintext bytes taken
    /// from `to_write`.
    fn pump(&mut self, mut to_write: &[u8]) -> usize {
        let mut written = 0;
        if self.error.is_some() {
            return 0;
        }
        for _ in 0..MAX_STEPS {
            // A peer that does not read our output must not make it grow:
            // pause record processing (and with it new responses) until the
            // socket drains.
            if self.outgoing_pending() >= OUTGOING_CAPACITY {
                break;
            }
            let Self {
                conn,
                incoming,
                in_len,
                outgoing,
                out_start,
                plain,
                plain_start,
                peer_closed,
                close_requested,
                close_sent,
                closed,
                ..
            } = self;
            let UnbufferedStatus { mut discard, state } =
                conn.process_tls_records(&mut incoming[..*in_len]);
            let mut again = false;
            let mut fatal = None;
            match state {
                Err(e) => fatal = Some(TlsError::Protocol(e)),
                Ok(ConnectionState::ReadTraffic(mut rt)) => {
                    while let Some(len) = rt.peek_len() {
                        if plain.len() - *plain_start + len.get() > PLAINTEXT_CAPACITY {
                            break; // Backpressure: the application must read first.
                        }
                        match rt.next_record() {
                            Some(Ok(rec)) => {
                                discard += rec.discard;
                                plain.extend_from_slice(rec.payload);
                                again = true;
                            }
                            Some(Err(e)) => {
                                fatal = Some(TlsError::Protocol(e));
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    // Handshake/alert data: always accepted (dropping it would
                    // lose it); its size is bounded by the handshake.
                    match encode_handshake(outgoing, |b| enc.encode(b)) {
                        Ok(()) => again = true,
                        Err(e) => fatal = Some(e),
                    }
                }
                Ok(ConnectionState::TransmitTlsData(tx)) => {
                    // The bytes are queued in `outgoing`, in order; that is all
                    // rustls needs to move on.
                    tx.done();
                    again = true;
                }
                Ok(ConnectionState::WriteTraffic(mut wt)) => {
                    while !to_write.is_empty() {
                        let room = OUTGOING_CAPACITY.saturating_sub(outgoing.len() - *out_start);
                        if room <= RECORD_OVERHEAD {
                            break;
                        }
                        let n = to_write
                            .len()
                            .min(MAX_RECORD_PLAINTEXT)
                            .min(room - RECORD_OVERHEAD);
                        let r = append_outgoing(outgoing, n + RECORD_OVERHEAD, |b| {
                            wt.encrypt(&to_write[..n], b)
                        });
                        match r {
                            Ok(_) => {
                                to_write = &to_write[n..];
                                written += n;
                            }
                            Err(EncryptError::InsufficientSize(_)) => break,
                            Err(EncryptError::EncryptExhausted) => {
                                fatal = Some(TlsError::Protocol(rustls::Error::EncryptError));
                                break;
                            }
                        }
                    }
                    if *close_requested && !*close_sent && fatal.is_none() {
                        let r = append_outgoing(outgoing, RECORD_OVERHEAD, |b| {
                            wt.queue_close_notify(b)
                        });
                        if r.is_ok() {
                            *close_sent = true;
                        }
                    }
                    // Otherwise idle: nothing more to do without new input.
                }
                Ok(ConnectionState::PeerClosed) => {
                    *peer_closed = true;
                    again = true;
                }
                Ok(ConnectionState::Closed) => *closed = true,
                Ok(ConnectionState::BlockedHandshake) => {}
                Ok(ConnectionState::ReadEarlyData(mut ed)) => {
                    // Early data is disabled (`max_early_data_size = 0`); drop any.
                    while let Some(Ok(rec)) = ed.next_record() {
                        discard += rec.discard;
                        again = true;
                    }
                }
                Ok(_) => {}
            }
            if let Some(e) = fatal {
                self.fail_at(discard, e);
                return written;
            }
            self.discard_incoming(discard);
            if !again && discard == 0 {
                break;
            }
        }
        written
    }

    fn discard_incoming(&mut self, discard: usize) {
        let discard = discard.min(self.in_len);
        if discard > 0 {
            self.incoming.copy_within(discard..self.in_len, 0);
            let old = self.in_len;
            self.in_len -= discard;
            // Wipe the stale tail (it may hold in-place-decrypted plaintext).
            self.incoming[self.in_len..old].zeroize();
        }
    }

    /// Records a fatal error, then flushes any alert rustls queued for the
    /// peer. Buffered plaintext is wiped: a failed session yields nothing more.
    fn fail_at(&mut self, discard: usize, err: TlsError) {
        self.discard_incoming(discard);
        self.error = Some(err);
        self.plain.zeroize();
        self.plain.clear();
        self.plain_start = 0;
        // Flush the fatal alert rustls queued, if any. Only while it has
        // queued output: a further call would re-process the bad input.
        // rustls may keep partially processed bytes in the buffer, so it
        // must see the same (undiscarded) buffer.
        for _ in 0..8 {
            if !self.conn.wants_write() {
                break;
            }
            let in_len = self.in_len;
            let status = self.conn.process_tls_records(&mut self.incoming[..in_len]);
            let discard = status.discard;
            let ok = match status.state {
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    encode_handshake(&mut self.outgoing, |b| enc.encode(b)).is_ok()
                }
                _ => false,
            };
            self.discard_incoming(discard);
            if !ok {
                break;
            }
        }
        let in_len = self.in_len;
        self.incoming[..in_len].zeroize();
        self.in_len = 0;
    }
}

/// Appends up to `max` bytes produced by `f` to `outgoing`.
fn append_outgoing<E>(
    outgoing: &mut Vec<u8>,
    max: usize,
    f: impl FnOnce(&mut [u8]) -> Result<usize, E>,
) -> Result<usize, E> {
    let start = outgoing.len();
    outgoing.resize(start + max, 0);
    let r = f(&mut outgoing[start..]);
    let n = r.as_ref().map_or(0, |n| (*n).min(max));
    outgoing.truncate(start + n);
    r
}

/// Largest handshake chunk we accept from rustls (our flight is ~1-2 KiB).
const MAX_HANDSHAKE_CHUNK: usize = 4 * MAX_RECORD_CIPHERTEXT;

/// Appends an `EncodeTlsData` chunk, growing to its required size if needed.
fn encode_handshake(
    outgoing: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), TlsError> {
    match append_outgoing(outgoing, MAX_RECORD_CIPHERTEXT, &mut encode) {
        Ok(_) => Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size }))
            if required_size <= MAX_HANDSHAKE_CHUNK =>
        {
            append_outgoing(outgoing, required_size, &mut encode)
                .map(|_| ())
                .map_err(|_| TlsError::BufferLimit)
        }
        Err(_) => Err(TlsError::BufferLimit),
    }
}
