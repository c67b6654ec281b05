//! Request-head parsing (RFC 9112 §2–§7), strict and bounded.
//!
//! Two steps:
//!
//! 1. [`HeadScanner`] finds the end of the head (the empty line) in a growing
//!    buffer, incrementally (each byte is looked at once, however the bytes
//!    trickle in), and enforces the size limits while the head is still
//!    incomplete, so a client cannot make the server buffer more than
//!    [`Limits::max_head`] bytes.
//! 2. [`parse_head`] parses a complete head into a [`Request`] borrowing the
//!    buffer, with the header lines in caller-provided storage (no allocation).
//!
//! Both `CRLF` and a bare `LF` end a line (RFC 9112 §2.2); a `CR` anywhere else,
//! obsolete line folding, whitespace before a field's colon, and control bytes
//! in field values are rejected with 400.

/// Hard limits on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line, terminator included. Longer → 414.
    pub max_request_line: usize,
    /// Most bytes of header lines (terminators and the final empty line
    /// included). More → 431.
    pub max_header_bytes: usize,
    /// Most header lines. More → 431. At most [`MAX_HEADERS`].
    pub max_headers: usize,
    /// Largest `Content-Length` accepted. Larger → 413.
    pub max_body: u64,
}

/// The most header lines any [`Limits`] can allow (the parser's fixed storage).
pub const MAX_HEADERS: usize = 64;

impl Limits {
    /// Request line ≤ 8 KiB, header section ≤ 8 KiB, ≤ 64 headers, body ≤ 64 KiB.
    pub const DEFAULT: Limits = Limits {
        max_request_line: 8 * 1024,
        max_header_bytes: 8 * 1024,
        max_headers: MAX_HEADERS,
        max_body: 64 * 1024,
    };

    /// The most bytes a complete head can take (request line + header section).
    pub fn max_head(&self) -> usize {
        self.max_request_line.saturating_add(self.max_header_bytes)
    }

    fn header_cap(&self) -> usize {
        self.max_headers.min(MAX_HEADERS)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a request was refused. Each maps to one status code
/// ([`HttpError::status`]); after any of them the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed syntax (400).
    BadRequest,
    /// Request line longer than [`Limits::max_request_line`] (414).
    UriTooLong,
    /// Header section over [`Limits::max_header_bytes`] or
    /// [`Limits::max_headers`] (431).
    HeadersTooLarge,
    /// `Content-Length` over [`Limits::max_body`] (413).
    PayloadTooLarge,
    /// A `Transfer-Encoding` (chunked or other) request body (501).
    UnsupportedTransferEncoding,
    /// An HTTP major version other than 1 (505).
    VersionNotSupported,
}

impl HttpError {
    /// The response status for this error.
    pub fn status(self) -> super::Status {
        use super::Status;
        match self {
            HttpError::BadRequest => Status::BadRequest,
            HttpError::UriTooLong => Status::UriTooLong,
            HttpError::HeadersTooLarge => Status::HeaderFieldsTooLarge,
            HttpError::PayloadTooLarge => Status::ContentTooLarge,
            HttpError::UnsupportedTransferEncoding => Status::NotImplemented,
            HttpError::VersionNotSupported => Status::VersionNotSupported,
        }
    }
}

/// The request method. Only `GET` and `HEAD` are served; anything else that is
/// a syntactically valid method gets 405.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method<'a> {
    /// `GET`.
    Get,
    /// `HEAD`: like `GET`, without the body.
    Head,
    /// Any other method token (case-sensitive, RFC 9110 §9.1).
    Other(&'a str),
}

/// The protocol version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: connections close unless `Connection: keep-alive`.
    Http10,
    /// HTTP/1.1 (or a later 1.x, answered as 1.1): persistent by default.
    Http11,
}

/// The request target's form (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `/path?query` (also what an absolute-form target is reduced to).
    Origin,
    /// `http://host/path`: the path part is in [`Request::path`].
    Absolute,
    /// `*` (only meaningful with `OPTIONS`).
    Asterisk,
}

/// One header line, name and value (whitespace trimmed), borrowed from the
/// input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header<'a> {
    /// The field name as sent (compare case-insensitively).
    pub name: &'a str,
    /// The field value, without leading/trailing whitespace; may hold obs-text.
    pub value: &'a [u8],
}

/// A parsed request head.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method.
    pub method: Method<'a>,
    /// The request target exactly as sent.
    pub target: &'a str,
    /// The target's form.
    pub target_form: Target,
    /// The path (no query), `"*"` for the asterisk form, `"/"` for an
    /// absolute-form target without a path.
    pub path: &'a str,
    /// The query (after `?`), if any.
    pub query: Option<&'a str>,
    /// The version.
    pub version: Version,
    /// Every header line, in order.
    pub headers: &'a [Header<'a>],
    /// The body length (`Content-Length`, 0 if absent), already checked
    /// against [`Limits::max_body`].
    pub content_length: u64,
    /// Whether the client asked for, or defaults to, a persistent connection.
    pub keep_alive: bool,
    /// The request arrived over TLS (set by the session, not parsed).
    pub secure: bool,
}

impl<'a> Request<'a> {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// What [`HeadScanner::scan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// No complete head yet; keep reading.
    Incomplete,
    /// The head is `buf[..len]` (empty line included).
    Complete(usize),
}

/// Incremental end-of-head finder with the size limits.
///
/// Feed it the same buffer, grown at the end, on each call; [`reset`](Self::reset)
/// it after the head has been consumed from the front of the buffer.
#[derive(Debug, Clone, Default)]
pub struct HeadScanner {
    /// Next byte to look at.
    pos: usize,
    /// Start of the current line.
    line_start: usize,
    /// End (after the LF) of the request line, once seen.
    request_line_end: Option<usize>,
    /// Header lines seen.
    headers: usize,
}

impl HeadScanner {
    /// A scanner at the start of a buffer.
    pub const fn new() -> Self {
        HeadScanner {
            pos: 0,
            line_start: 0,
            request_line_end: None,
            headers: 0,
        }
    }

    /// Forgets everything (the buffer has been drained).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Whether the scanner has seen no byte yet.
    pub fn is_fresh(&self) -> bool {
        self.pos == 0
    }

    /// Looks at the bytes of `buf` not seen before. `buf` must not start with
    /// empty lines (the caller strips them, RFC 9112 §2.2).
    pub fn scan(&mut self, buf: &[u8], limits: &Limits) -> Result<Scan, HttpError> {
        while self.pos < buf.len() {
            let rest = &buf[self.pos..];
            let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                self.pos = buf.len();
                break;
            };
            let end = self.pos + lf + 1;
            self.pos = end;
            match self.request_line_end {
                None => {
                    if end > limits.max_request_line {
                        return Err(HttpError::UriTooLong);
                    }
                    self.request_line_end = Some(end);
                }
                Some(rl_end) => {
                    if end - rl_end > limits.max_header_bytes {
                        return Err(HttpError::HeadersTooLarge);
                    }
                    let line = &buf[self.line_start..end];
                    if line == b"\n" || line == b"\r\n" {
                        return Ok(Scan::Complete(end));
                    }
                    self.headers += 1;
                    if self.headers > limits.header_cap() {
                        return Err(HttpError::HeadersTooLarge);
                    }
                }
            }
            self.line_start = end;
        }
        // Incomplete: check the limit the unfinished line already breaks.
        match self.request_line_end {
            None if buf.len() > limits.max_request_line => Err(HttpError::UriTooLong),
            Some(rl_end) if buf.len() - rl_end > limits.max_header_bytes => {
                Err(HttpError::HeadersTooLarge)
            }
            _ => Ok(Scan::Incomplete),
        }
    }
}

/// Number of leading empty lines (`CRLF` or `LF`) in `buf`, in bytes. A lone
/// trailing `CR` is kept (it may start a `CRLF`).
pub fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut i = 0;
    loop {
        match buf.get(i..) {
            Some([b'\n', ..]) => i += 1,
            Some([b'\r', b'\n', ..]) => i += 2,
            _ => return i,
        }
    }
}

/// `tchar` (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Splits a complete head into lines without their terminators. Rejects a CR
/// that is not part of a line's final CRLF.
fn lines(head: &[u8]) -> impl Iterator<Item = Result<&[u8], HttpError>> {
    head.split(|&b| b == b'\n').map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.contains(&b'\r') {
            Err(HttpError::BadRequest)
        } else {
            Ok(line)
        }
    })
}

fn parse_version(v: &[u8]) -> Result<Version, HttpError> {
    match v {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            match (major, minor) {
                (b'1', b'0') => Ok(Version::Http10),
                (b'1', _) => Ok(Version::Http11),
                _ => Err(HttpError::VersionNotSupported),
            }
        }
        // `HTTP/2`, `HTTP/3` without a minor digit: a version, just not ours.
        [b'H', b'T', b'T', b'P', b'/', major] if major.is_ascii_digit() => {
            Err(HttpError::VersionNotSupported)
        }
        _ => Err(HttpError::BadRequest),
    }
}

/// Splits a target into (form, path, query).
fn parse_target(t: &str) -> Result<(Target, &str, Option<&str>), HttpError> {
    if t.is_empty() || !t.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(HttpError::BadRequest);
    }
    if t == "*" {
        return Ok((Target::Asterisk, "*", None));
    }
    let (form, rest) = if t.starts_with('/') {
        (Target::Origin, t)
    } else {
        let lower_prefix = |p: &str| t.len() >= p.len() && t[..p.len()].eq_ignore_ascii_case(p);
        let after = if lower_prefix("http://") {
            &t[7..]
        } else if lower_prefix("https://") {
            &t[8..]
        } else {
            return Err(HttpError::BadRequest);
        };
        let path_start = after.find(['/', '?']).unwrap_or(after.len());
        if path_start == 0 {
            return Err(HttpError::BadRequest); // no authority
        }
        let rest = &after[path_start..];
        (Target::Absolute, if rest.is_empty() { "/" } else { rest })
    };
    let rest = rest.split('#').next().unwrap_or(rest);
    match rest.split_once('?') {
        Some((path, query)) => Ok((form, if path.is_empty() { "/" } else { path }, Some(query))),
        None => Ok((form, rest, None)),
    }
}

/// Field-value bytes: VCHAR, obs-text, SP, HTAB (RFC 9110 §5.5).
fn valid_value(v: &[u8]) -> bool {
    v.iter()
        .all(|&b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Comma-separated list elements, trimmed, empty ones skipped.
fn list_items(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(trim_ows)
        .filter(|s| !s.is_empty())
}

/// Parses a `Content-Length` value (possibly a list of equal values).
fn parse_content_length(v: &[u8], max: u64) -> Result<u64, HttpError> {
    let mut value: Option<u64> = None;
    for item in list_items(v) {
        if !item.iter().all(u8::is_ascii_digit) {
            return Err(HttpError::BadRequest);
        }
        // Saturate on overflow: such a length is over any limit anyway.
        let n = item.iter().fold(0u64, |acc, &d| {
            acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        });
        match value {
            Some(prev) if prev != n => return Err(HttpError::BadRequest),
            _ => value = Some(n),
        }
    }
    let n = value.ok_or(HttpError::BadRequest)?;
    if n > max {
        return Err(HttpError::PayloadTooLarge);
    }
    Ok(n)
}

/// Parses a complete head (`buf[..len]` for `Scan::Complete(len)`) into a
/// [`Request`] whose headers live in `storage`.
pub fn parse_head<'a>(
    head: &'a [u8],
    storage: &'a mut [Header<'a>; MAX_HEADERS],
    limits: &Limits,
) -> Result<Request<'a>, HttpError> {
    let mut lines = lines(head);
    let request_line = lines.next().ok_or(HttpError::BadRequest)??;

    // request-line = method SP request-target SP HTTP-version
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequest);
    };
    if !is_token(method) {
        return Err(HttpError::BadRequest);
    }
    let version = parse_version(version)?;
    let target = core::str::from_utf8(target).map_err(|_| HttpError::BadRequest)?;
    let (target_form, path, query) = parse_target(target)?;
    let method = match method {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        // A token is ASCII, hence UTF-8.
        other => Method::Other(core::str::from_utf8(other).map_err(|_| HttpError::BadRequest)?),
    };

    let mut count = 0;
    let mut hosts = 0;
    let mut content_length: Option<u64> = None;
    let mut chunked_or_other_te = false;
    let mut close = false;
    let mut keep_alive_token = false;
    for line in lines {
        let line = line?;
        if line.is_empty() {
            break; // the final empty line
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(HttpError::BadRequest); // obs-fold
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(HttpError::BadRequest)?;
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if !is_token(name) || !valid_value(value) {
            return Err(HttpError::BadRequest);
        }
        if count >= limits.header_cap() {
            return Err(HttpError::HeadersTooLarge);
        }
        let name = core::str::from_utf8(name).map_err(|_| HttpError::BadRequest)?;
        storage[count] = Header { name, value };
        count += 1;

        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(value, limits.max_body)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HttpError::BadRequest);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked_or_other_te = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in list_items(value) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }

    // RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one ever.
    if hosts > 1 || (version == Version::Http11 && hosts == 0) {
        return Err(HttpError::BadRequest);
    }
    if chunked_or_other_te {
        // RFC 9112 §6.1: Transfer-Encoding in a 1.0 request means a broken
        // framing; otherwise we do not implement request transfer codings.
        return Err(if version == Version::Http10 {
            HttpError::BadRequest
        } else {
            HttpError::UnsupportedTransferEncoding
        });
    }

    let keep_alive = match version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive_token && !close,
    };
    Ok(Request {
        method,
        target,
        target_form,
        path,
        query,
        version,
        headers: &storage[..count],
        content_length: content_length.unwrap_or(0),
        keep_alive,
        secure: false,
    })
}

/// Scans and parses a whole head at once (tests and simple callers). Returns
/// the request and the head length, or `Ok(None)` if `buf` holds no complete
/// head yet.
pub fn parse_request<'a>(
    buf: &'a [u8],
    storage: &'a mut [Header<'a>; MAX_HEADERS],
    limits: &Limits,
) -> Result<Option<(Request<'a>, usize)>, HttpError> {
    let skip = leading_empty_lines(buf);
    let mut scanner = HeadScanner::new();
    match scanner.scan(&buf[skip..], limits)? {
        Scan::Incomplete => Ok(None),
        Scan::Complete(len) => {
            let req = parse_head(&buf[skip..skip + len], storage, limits)?;
            Ok(Some((req, skip + len)))
        }
    }
}
