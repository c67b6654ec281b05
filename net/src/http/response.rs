//! Responses and their serialization.

use alloc::vec::Vec;

/// The status codes Vellum sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200.
    Ok,
    /// 400.
    BadRequest,
    /// 404.
    NotFound,
    /// 405 (with `Allow: GET, HEAD`).
    MethodNotAllowed,
    /// 413.
    ContentTooLarge,
    /// 414.
    UriTooLong,
    /// 429 (attestation rate limit).
    TooManyRequests,
    /// 431.
    HeaderFieldsTooLarge,
    /// 501.
    NotImplemented,
    /// 503 (e.g. attestation without SEV-SNP).
    ServiceUnavailable,
    /// 505.
    VersionNotSupported,
}

impl Status {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::ContentTooLarge => 413,
            Status::UriTooLong => 414,
            Status::TooManyRequests => 429,
            Status::HeaderFieldsTooLarge => 431,
            Status::NotImplemented => 501,
            Status::ServiceUnavailable => 503,
            Status::VersionNotSupported => 505,
        }
    }

    /// The reason phrase (RFC 9110 §15).
    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::ContentTooLarge => "Content Too Large",
            Status::UriTooLong => "URI Too Long",
            Status::TooManyRequests => "Too Many Requests",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::NotImplemented => "Not Implemented",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }

    /// Whether this is a 4xx.
    pub fn is_client_error(self) -> bool {
        (400..500).contains(&self.code())
    }

    /// A short `text/plain` body for an error status, e.g. `"404 Not Found\n"`.
    fn error_body(self) -> &'static [u8] {
        match self {
            Status::Ok => b"",
            Status::BadRequest => b"400 Bad Request\n",
            Status::NotFound => b"404 Not Found\n",
            Status::MethodNotAllowed => b"405 Method Not Allowed\n",
            Status::ContentTooLarge => b"413 Content Too Large\n",
            Status::UriTooLong => b"414 URI Too Long\n",
            Status::TooManyRequests => b"429 Too Many Requests\n",
            Status::HeaderFieldsTooLarge => b"431 Request Header Fields Too Large\n",
            Status::NotImplemented => b"501 Not Implemented\n",
            Status::ServiceUnavailable => b"503 Service Unavailable\n",
            Status::VersionNotSupported => b"505 HTTP Version Not Supported\n",
        }
    }
}

/// A response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Bytes with a static lifetime (pages, error texts).
    Static(&'static [u8]),
    /// Bytes built for this response (`/metrics`).
    Owned(Vec<u8>),
}

impl Body {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Static(b) => b,
            Body::Owned(v) => v,
        }
    }
}

/// A response, before the connection decides on `Connection` and on whether a
/// body is sent (`HEAD`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status.
    pub status: Status,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body (its length is the `Content-Length`, also for `HEAD`).
    pub body: Body,
    /// Close the connection after this response, whatever the request asked.
    pub close: bool,
}

impl Response {
    /// A 200 response.
    pub fn ok(content_type: &'static str, body: Body) -> Self {
        Response {
            status: Status::Ok,
            content_type,
            body,
            close: false,
        }
    }

    /// An error response with a short text body. Errors from the parser
    /// (400, 413, 414, 431, 501, 505) close the connection; 404 and 405 do not.
    pub fn error(status: Status) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Body::Static(status.error_body()),
            close: !matches!(
                status,
                Status::NotFound
                    | Status::MethodNotAllowed
                    | Status::TooManyRequests
                    | Status::ServiceUnavailable
            ),
        }
    }

    /// Serializes the response onto `out`: status line, `Content-Type`,
    /// `Content-Length`, `Connection`, `Allow` for 405, then the body unless
    /// `head_only`.
    pub fn write_to(&self, out: &mut Vec<u8>, head_only: bool, keep_alive: bool) {
        let body = self.body.as_bytes();
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, u64::from(self.status.code()));
        out.push(b' ');
        out.extend_from_slice(self.status.reason().as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        push_decimal(out, body.len() as u64);
        if self.status == Status::MethodNotAllowed {
            out.extend_from_slice(b"\r\nAllow: GET, HEAD");
        }
        out.extend_from_slice(if keep_alive {
            b"\r\nConnection: keep-alive\r\n\r\n".as_slice()
        } else {
            b"\r\nConnection: close\r\n\r\n".as_slice()
        });
        if !head_only {
            out.extend_from_slice(body);
        }
    }
}

/// Appends the decimal digits of `v`.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}
