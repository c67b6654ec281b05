//! A tiny HTTP/1.1 client for the guest tests (keep-alive aware), plus helpers
//! to run real clients (curl) and read `/metrics`.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::Duration,
};

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header lines (name lower-cased, value trimmed).
    pub headers: Vec<(String, String)>,
    /// The body (by Content-Length).
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive connection.
#[derive(Debug)]
pub struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to 127.0.0.1:`port`.
    pub fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { s, buf: Vec::new() }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, raw: &[u8]) {
        self.s.write_all(raw).expect("send");
    }

    /// Sends `GET path` and reads the response.
    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: vellum\r\n\r\n").as_bytes());
        self.read_response().expect("a response")
    }

    /// Reads one response; `None` if the server closed first.
    pub fn read_response(&mut self) -> Option<Response> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if !self.fill() {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let status = status_line.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        self.buf.drain(..head_end + 4);
        while self.buf.len() < len {
            if !self.fill() {
                return None;
            }
        }
        let body = self.buf.drain(..len).collect();
        Some(Response {
            status,
            headers,
            body,
        })
    }

    /// True when the server has closed the connection (reads EOF).
    pub fn closed_by_peer(&mut self) -> bool {
        !self.fill()
    }

    fn fill(&mut self) -> bool {
        let mut b = [0u8; 16384];
        match self.s.read(&mut b) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
        }
    }
}

/// Runs curl with `args`; returns (exit status, stdout).
pub fn curl(args: &[&str]) -> (i32, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl (apt-get install curl)");
    (out.status.code().unwrap_or(-1), out.stdout)
}

/// Fetches `url` twice in one curl run and returns curl's connection counts
/// (`"1 0"` when the second transfer reused the first connection).
pub fn connects_for_two_transfers(extra: &[&str], url: &str) -> String {
    let mut args = extra.to_vec();
    args.extend([
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-w",
        "%{num_connects} ",
        url,
        url,
    ]);
    let (rc, out) = curl(&args);
    assert_eq!(rc, 0, "curl {args:?}");
    String::from_utf8_lossy(&out).trim().to_string()
}

/// One `/metrics` snapshot: every sample by full name.
pub fn metrics(port: u16) -> std::collections::BTreeMap<String, u64> {
    let r = Conn::open(port).get("/metrics");
    assert_eq!(r.status, 200);
    parse_metrics(&String::from_utf8(r.body).expect("utf-8 metrics"))
}

/// Every sample of a `/metrics` text by full name.
pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (n, v) = l.split_once(' ')?;
            Some((n.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Reads `/metrics` and returns the value of a sample by full name.
pub fn metric(port: u16, name: &str) -> u64 {
    let m = metrics(port);
    *m.get(name)
        .unwrap_or_else(|| panic!("metric {name} missing from {m:?}"))
}
