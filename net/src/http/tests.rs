//! Parser, response and session tests (host only).

use std::string::String;
use std::vec::Vec;

use smoltcp::time::Instant;

use super::parse::{Scan, parse_request};
use super::*;
use crate::services::Session;

/// A parsed response, for assertions.
#[derive(Debug)]
pub(crate) struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits a byte stream into responses. `head_only[i]`: response i answers a
/// HEAD (no body despite Content-Length).
pub(crate) fn parse_responses(mut bytes: &[u8], head_only: &[bool]) -> Vec<Resp> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("complete response head");
        let head = std::str::from_utf8(&bytes[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.into(), v.into())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "Content-Length")
            .unwrap()
            .1
            .parse()
            .unwrap();
        bytes = &bytes[end + 4..];
        let body_len = if head_only.get(out.len()).copied().unwrap_or(false) {
            0
        } else {
            len
        };
        out.push(Resp {
            status,
            headers,
            body: bytes[..body_len].to_vec(),
        });
        bytes = &bytes[body_len..];
    }
    out
}

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms as i64)
}

/// Feeds `input` (all of it, as the window allows), advancing in between;
/// returns the output and the session.
fn run(input: &[u8]) -> (Vec<u8>, HttpSession) {
    run_with(HttpConfig::DEFAULT, input, input.len().max(1))
}

fn run_with(config: HttpConfig, mut input: &[u8], chunk: usize) -> (Vec<u8>, HttpSession) {
    let router = Router::new();
    let mut s = HttpSession::new(config, t(0));
    let mut out = Vec::new();
    let mut stalls = 0;
    loop {
        let piece = &input[..input.len().min(chunk)];
        let n = s.feed(piece, t(0));
        input = &input[n..];
        s.advance(t(0), &router);
        let o = s.output().to_vec();
        s.consume_output(o.len(), t(0));
        out.extend_from_slice(&o);
        if s.wants_close() || input.is_empty() && n == 0 && o.is_empty() {
            break;
        }
        if n == 0 && o.is_empty() {
            stalls += 1;
            assert!(stalls < 3, "session stalled");
        }
    }
    (out, s)
}

fn status_of(input: &[u8]) -> u16 {
    let (out, _) = run(input);
    parse_responses(&out, &[])[0].status
}

fn parse_ok(input: &[u8]) -> (Method<'static>, String, Version, u64, bool) {
    let buf: &'static [u8] = Box::leak(input.to_vec().into_boxed_slice());
    let storage = Box::leak(Box::new([Header::default(); parse::MAX_HEADERS]));
    let (r, _) = parse_request(buf, storage, &Limits::DEFAULT)
        .expect("valid")
        .expect("complete");
    (
        r.method,
        r.path.into(),
        r.version,
        r.content_length,
        r.keep_alive,
    )
}

fn parse_err(input: &[u8]) -> HttpError {
    let mut storage = [Header::default(); parse::MAX_HEADERS];
    match parse_request(input, &mut storage, &Limits::DEFAULT) {
        Err(e) => e,
        Ok(r) => panic!("expected an error, got {r:?}"),
    }
}

#[test]
fn parses_a_simple_get() {
    let (m, path, v, len, ka) = parse_ok(b"GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(
        (m, path.as_str(), v, len, ka),
        (Method::Get, "/a/b", Version::Http11, 0, true)
    );
}

#[test]
fn accepts_bare_lf_and_leading_empty_lines() {
    let (m, path, ..) = parse_ok(b"\r\n\nHEAD / HTTP/1.0\nX: y\n\n");
    assert_eq!((m, path.as_str()), (Method::Head, "/"));
}

#[test]
fn absolute_form_target() {
    let (_, path, ..) = parse_ok(b"GET http://example.com/health?q HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(path, "/health");
    let (_, path, ..) = parse_ok(b"GET http://example.com HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(path, "/");
}

#[test]
fn incomplete_head_is_not_an_error() {
    let mut storage = [Header::default(); parse::MAX_HEADERS];
    let r = parse_request(
        b"GET / HTTP/1.1\r\nHost: x\r\n",
        &mut storage,
        &Limits::DEFAULT,
    );
    assert!(matches!(r, Ok(None)));
}

#[test]
fn rejects_malformed_requests() {
    for bad in [
        &b"garbage\r\n\r\n"[..],
        b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1 x\r\nHost: x\r\n\r\n",
        b"GET nopath HTTP/1.1\r\nHost: x\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTX/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1x\r\nHost: x\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\ry\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\x00\r\n\r\n",
        b"GET / HTTP/1.1\r\n: empty-name\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",                       // no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", // two Hosts
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert_eq!(
            parse_err(bad),
            HttpError::BadRequest,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn version_handling() {
    assert_eq!(
        parse_err(b"GET / HTTP/2.0\r\n\r\n"),
        HttpError::VersionNotSupported
    );
    assert_eq!(
        parse_err(b"GET / HTTP/2\r\n\r\n"),
        HttpError::VersionNotSupported
    );
    assert_eq!(
        parse_err(b"GET / HTTP/0.9\r\n\r\n"),
        HttpError::VersionNotSupported
    );
    // A later 1.x is answered as 1.1.
    assert_eq!(
        parse_ok(b"GET / HTTP/1.7\r\nHost: x\r\n\r\n").2,
        Version::Http11
    );
}

#[test]
fn content_length_rules() {
    assert_eq!(
        parse_ok(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 65536\r\n\r\n").3,
        65536
    );
    assert_eq!(
        parse_ok(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 7, 7\r\n\r\n").3,
        7
    );
    assert_eq!(
        parse_err(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n"),
        HttpError::PayloadTooLarge
    );
    assert_eq!(
        parse_err(
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999999\r\n\r\n"
        ),
        HttpError::PayloadTooLarge
    );
    assert_eq!(
        parse_err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
        HttpError::UnsupportedTransferEncoding
    );
}

#[test]
fn keep_alive_rules() {
    let ka = |req: &[u8]| parse_ok(req).4;
    assert!(ka(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(!ka(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    ));
    assert!(!ka(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n"
    ));
    assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
    assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    assert!(!ka(
        b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
    ));
}

fn long_header_request(header_bytes: usize) -> Vec<u8> {
    let mut r = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    // "X: " + value + "\r\n", sized so the header section (with "Host: a\r\n"
    // and the final "\r\n") is exactly `header_bytes`.
    let value = header_bytes - 9 - 2 - 5;
    r.extend_from_slice(b"X: ");
    r.extend(std::iter::repeat_n(b'v', value));
    r.extend_from_slice(b"\r\n\r\n");
    r
}

#[test]
fn header_limits() {
    assert_eq!(parse_ok(&long_header_request(8192)).1, "/");
    assert_eq!(
        parse_err(&long_header_request(8193)),
        HttpError::HeadersTooLarge
    );

    let with_headers = |n: usize| {
        let mut r = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 1..n {
            r.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        r.extend_from_slice(b"\r\n");
        r
    };
    assert_eq!(parse_ok(&with_headers(64)).1, "/");
    assert_eq!(parse_err(&with_headers(65)), HttpError::HeadersTooLarge);
}

#[test]
fn request_line_limit() {
    let line = |len: usize| {
        // "GET /" + path + " HTTP/1.1\r\n" == len
        let mut r = b"GET /".to_vec();
        r.extend(std::iter::repeat_n(b'a', len - 5 - 11));
        r.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        r
    };
    assert_eq!(parse_ok(&line(8192)).2, Version::Http11);
    assert_eq!(parse_err(&line(8193)), HttpError::UriTooLong);
    // Also while the line is still incomplete (no LF yet).
    let mut scanner = parse::HeadScanner::new();
    let partial = vec![b'a'; 8193];
    assert_eq!(
        scanner.scan(&partial, &Limits::DEFAULT),
        Err(HttpError::UriTooLong)
    );
    let mut scanner = parse::HeadScanner::new();
    assert_eq!(
        scanner.scan(&partial[..8192], &Limits::DEFAULT),
        Ok(Scan::Incomplete)
    );
}

#[test]
fn routes_and_statuses() {
    let (out, _) = run(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = &parse_responses(&out, &[])[0];
    assert_eq!(r.status, 200);
    assert_eq!(r.body, INDEX_HTML);
    assert_eq!(r.header("Content-Type"), Some(INDEX_CONTENT_TYPE));
    assert_eq!(
        r.header("Content-Length"),
        Some(INDEX_HTML.len().to_string().as_str())
    );
    assert_eq!(r.header("Connection"), Some("keep-alive"));

    let (out, _) = run(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(parse_responses(&out, &[])[0].body, b"ok\n");

    let (out, s) = run(b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(parse_responses(&out, &[])[0].status, 404);
    assert!(!s.wants_close(), "404 keeps the connection");

    let (out, s) = run(b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = &parse_responses(&out, &[])[0];
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET, HEAD")));
    assert!(!s.wants_close());

    for (req, code) in [
        (&b"garbage\r\n\r\n"[..], 400),
        (b"GET / HTTP/3.0\r\n\r\n", 505),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n",
            413,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            501,
        ),
        (&long_header_request(9000), 431),
    ] {
        let (out, s) = run(req);
        let r = &parse_responses(&out, &[])[0];
        assert_eq!(r.status, code);
        assert_eq!(r.header("Connection"), Some("close"));
        assert!(s.wants_close(), "error {code} closes");
    }
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 9000));
    assert_eq!(status_of(&long), 414);
}

#[test]
fn head_has_length_but_no_body() {
    let (out, _) =
        run(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n");
    let rs = parse_responses(&out, &[true, false]);
    assert_eq!(rs.len(), 2);
    assert_eq!(
        rs[0].header("Content-Length"),
        Some(INDEX_HTML.len().to_string().as_str())
    );
    assert!(rs[0].body.is_empty());
    assert_eq!(rs[1].body, b"ok\n");
}

#[test]
fn pipelined_requests_in_order() {
    let mut input = Vec::new();
    for path in ["/health", "/", "/x", "/health"] {
        input.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    }
    for chunk in [1, 7, 64, input.len()] {
        let (out, s) = run_with(HttpConfig::DEFAULT, &input, chunk);
        let rs = parse_responses(&out, &[]);
        let codes: Vec<u16> = rs.iter().map(|r| r.status).collect();
        assert_eq!(codes, [200, 200, 404, 200], "chunk {chunk}");
        assert_eq!(rs[1].body, INDEX_HTML);
        assert_eq!(s.requests(), 4);
    }
}

#[test]
fn connection_close_and_http10() {
    let (out, s) = run(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    let rs = parse_responses(&out, &[]);
    assert_eq!(rs.len(), 1, "nothing after Connection: close");
    assert_eq!(rs[0].header("Connection"), Some("close"));
    assert!(s.wants_close());

    let (out, s) = run(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(
        parse_responses(&out, &[])[0].header("Connection"),
        Some("close")
    );
    assert!(s.wants_close());

    let (out, s) = run(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n");
    let rs = parse_responses(&out, &[]);
    assert_eq!(rs.len(), 2);
    assert_eq!(rs[0].header("Connection"), Some("keep-alive"));
    assert_eq!(rs[1].header("Connection"), Some("close"));
    assert!(s.wants_close());
}

#[test]
fn error_stops_the_pipeline() {
    let (out, s) =
        run(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBAD\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let codes: Vec<u16> = parse_responses(&out, &[])
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(codes, [200, 400]);
    assert!(s.wants_close());
}

#[test]
fn bodies_are_skipped() {
    let mut input = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 20000\r\n\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'z', 20000));
    input.extend_from_slice(b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /health HTTP/1.1\r\nHost: a\r\n\r\n");
    for chunk in [1000, input.len()] {
        let (out, s) = run_with(HttpConfig::DEFAULT, &input, chunk);
        let codes: Vec<u16> = parse_responses(&out, &[])
            .iter()
            .map(|r| r.status)
            .collect();
        assert_eq!(codes, [200, 405, 200]);
        assert!(!s.wants_close());
    }
}

#[test]
fn output_is_bounded_under_pipelining() {
    let router = Router::new();
    let mut s = HttpSession::new(HttpConfig::DEFAULT, t(0));
    let one = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let input: Vec<u8> = one.iter().copied().cycle().take(one.len() * 2000).collect();
    let mut fed = 0;
    let mut responses = 0;
    while responses < 2000 {
        fed += s.feed(&input[fed..], t(0));
        s.advance(t(0), &router);
        let pending = s.output().len();
        assert!(
            pending < HttpConfig::DEFAULT.output_high_water + 1024,
            "{pending}"
        );
        let o = s.output().to_vec();
        responses += parse_responses(&o, &[]).len();
        s.consume_output(o.len(), t(0));
    }
    assert_eq!(fed, input.len());
}

#[test]
fn timeouts() {
    let router = Router::new();
    // Idle: nothing for 30 s.
    let mut s = HttpSession::new(HttpConfig::DEFAULT, t(0));
    s.advance(t(29_999), &router);
    assert!(!s.wants_close());
    assert_eq!(s.deadline(), Some(t(30_000)));
    s.advance(t(30_000), &router);
    assert!(s.wants_close());

    // Request: a head trickling in keeps the connection busy, but not past 10 s.
    let mut s = HttpSession::new(HttpConfig::DEFAULT, t(0));
    s.feed(b"GET / HT", t(1000));
    s.advance(t(1000), &router);
    for ms in (2000..11_000).step_by(1000) {
        s.feed(b"T", t(ms));
        s.advance(t(ms), &router);
        assert!(!s.wants_close());
    }
    s.advance(t(11_000), &router);
    assert!(s.wants_close());
    assert!(s.output().is_empty(), "no response to a timed-out request");

    // A completed request restarts the clock.
    let mut s = HttpSession::new(HttpConfig::DEFAULT, t(0));
    s.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", t(5000));
    s.advance(t(5000), &router);
    let n = s.output().len();
    s.consume_output(n, t(5000));
    s.advance(t(34_999), &router);
    assert!(!s.wants_close());
}

#[test]
fn peer_close_finishes_after_answering() {
    let router = Router::new();
    let mut s = HttpSession::new(HttpConfig::DEFAULT, t(0));
    s.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HT", t(0));
    s.finish_input();
    s.advance(t(0), &router);
    assert!(s.wants_close());
    assert_eq!(parse_responses(s.output(), &[]).len(), 1);
}

#[test]
fn metrics_exposition() {
    let mut r = Router::new();
    r.set_metrics_extra(Some(Box::new(|w: &mut MetricsWriter<'_>| {
        w.gauge("heap bytes", "Heap\nin use.", 1234);
        w.counter_family(
            "snp_vmgexits",
            "VMGEXITs by kind.",
            "kind",
            &[("io", 7), ("guest_request", 0), ("bad\"} 9\nx", 1)],
        );
    })));
    r.set_gauges(StackGauges {
        http_connections: 3,
        ..Default::default()
    });
    let mut storage = [Header::default(); parse::MAX_HEADERS];
    let (req, _) = parse_request(
        b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
        &mut storage,
        &Limits::DEFAULT,
    )
    .unwrap()
    .unwrap();
    let resp = r.handle(&req);
    assert_eq!(resp.status, Status::Ok);
    let text = String::from_utf8(resp.body.as_bytes().to_vec()).unwrap();
    assert!(
        text.contains("# TYPE vellum_http_requests_total counter\nvellum_http_requests_total ")
    );
    assert!(text.contains("# HELP vellum_echo_bytes_total "));
    assert!(text.contains("# TYPE vellum_http_connections gauge\nvellum_http_connections 3\n"));
    assert!(text.contains("# HELP vellum_heap_bytes Heap in use.\n# TYPE vellum_heap_bytes gauge\nvellum_heap_bytes 1234\n"));
    assert!(text.contains(
        "# HELP vellum_snp_vmgexits_total VMGEXITs by kind.\n\
         # TYPE vellum_snp_vmgexits_total counter\n\
         vellum_snp_vmgexits_total{kind=\"io\"} 7\n\
         vellum_snp_vmgexits_total{kind=\"guest_request\"} 0\n\
         vellum_snp_vmgexits_total{kind=\"bad___9_x\"} 1\n"
    ));
    // Every line is a comment or "name value".
    for line in text.lines() {
        assert!(
            line.starts_with("# ") || line.split(' ').count() == 2,
            "{line}"
        );
    }
}

/// xorshift64*, deterministic.
pub(crate) struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn fuzz_random_input_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let alphabet: &[&[u8]] = &[
        b"GET ",
        b"HEAD ",
        b"POST ",
        b"/",
        b" HTTP/1.1",
        b" HTTP/1.0",
        b"\r\n",
        b"\n",
        b"\r",
        b"Host: a",
        b"Content-Length: ",
        b"12",
        b"99999",
        b"Connection: close",
        b":",
        b" ",
        b"Transfer-Encoding: chunked",
        b"\x00",
        b"\xff",
        b"x",
    ];
    for round in 0..3000 {
        let mut input = Vec::new();
        let len = rng.below(80);
        for _ in 0..len {
            if round % 3 == 0 {
                input.push(rng.next() as u8);
            } else {
                input.extend_from_slice(alphabet[rng.below(alphabet.len())]);
            }
        }
        let chunk = 1 + rng.below(40);
        let (out, s) = run_with(HttpConfig::DEFAULT, &input, chunk);
        // Whatever came out is well-formed responses.
        for r in parse_responses(&out, &[]) {
            assert!([200, 400, 404, 405, 413, 414, 431, 501, 505].contains(&r.status));
        }
        let _ = s.requests();
    }
}

#[test]
fn memory_stays_bounded_under_a_flood() {
    let router = Router::new();
    let mut s = HttpSession::new(HttpConfig::DEFAULT, t(0));
    let junk = vec![b'a'; 100_000];
    let n = s.feed(&junk, t(0));
    assert_eq!(n, Limits::DEFAULT.max_head());
    s.advance(t(0), &router);
    assert!(s.wants_close());
    assert_eq!(s.recv_window(), 0);
}
