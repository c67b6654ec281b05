//! The booted image over the network, with real clients: curl, plain TCP.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    thread,
    time::Duration,
};
use vellum_itest::{
    Guest,
    http::{Conn, connects_for_two_transfers, curl, metric, metrics},
};
use vellum_net::http::INDEX_HTML;

#[test]
fn curl_gets_the_index_page() {
    let g = Guest::boot();
    assert!(g.log().contains("vellum ready at 10.0.2.15"), "{}", g.log());
    let url = format!("http://127.0.0.1:{}/", g.http);
    let (rc, body) = curl(&[&url]);
    assert_eq!(rc, 0);
    assert_eq!(body, INDEX_HTML);
    let (rc, head) = curl(&["-D", "-", "-o", "/dev/null", &url]);
    assert_eq!(rc, 0);
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", INDEX_HTML.len())),
        "{head}"
    );
    let (rc, body) = curl(&[&format!("http://127.0.0.1:{}/health", g.http)]);
    assert_eq!((rc, body.as_slice()), (0, &b"ok\n"[..]));
    let (rc, _) = curl(&["-f", &format!("http://127.0.0.1:{}/nope", g.http)]);
    assert_eq!(rc, 22, "curl -f exits 22 on the 404");
}

#[test]
fn two_hundred_keep_alive_requests_on_one_connection() {
    let g = Guest::boot();
    let mut c = Conn::open(g.http);
    for i in 0..200 {
        let r = c.get(if i % 2 == 0 { "/" } else { "/health" });
        assert_eq!(r.status, 200, "request {i}");
        let want: &[u8] = if i % 2 == 0 { INDEX_HTML } else { b"ok\n" };
        assert_eq!(r.body, want, "request {i}");
    }
    // curl agrees that one connection served several requests.
    let url = format!("http://127.0.0.1:{}/", g.http);
    assert_eq!(
        connects_for_two_transfers(&[], &url),
        "1 0",
        "second transfer reused the connection"
    );
}

#[test]
fn thirty_two_concurrent_connections() {
    let g = Guest::boot();
    // Open all 32 first so they are concurrent, then use each.
    let mut conns: Vec<Conn> = (0..32).map(|_| Conn::open(g.http)).collect();
    for c in conns.iter_mut() {
        c.send(b"GET / HTTP/1.1\r\nHost: vellum\r\n\r\n");
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let r = c
            .read_response()
            .unwrap_or_else(|| panic!("connection {i} got no answer"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, INDEX_HTML);
    }
    // And 32 curl processes at once.
    let url = format!("http://127.0.0.1:{}/", g.http);
    let handles: Vec<_> = (0..32)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || curl(&[&url]))
        })
        .collect();
    for h in handles {
        let (rc, body) = h.join().unwrap();
        assert_eq!((rc, body.as_slice()), (0, INDEX_HTML));
    }
}

#[test]
fn echo_round_trips_four_mebibytes_byte_exact() {
    let g = Guest::boot();
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut s = TcpStream::connect(("127.0.0.1", g.echo)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::with_capacity(data.len());
    s.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(
        got.len(),
        data.len(),
        "echoed length; guest log:\n{}",
        g.log()
    );
    assert!(got == data, "echoed bytes differ");
    // One copy out of the pool per received byte, one copy in per sent byte
    // (one snapshot, so the counters are consistent with each other).
    let m = metrics(g.http);
    let (rx, tx) = (m["vellum_rx_bytes_total"], m["vellum_tx_bytes_total"]);
    assert!(rx > 4 << 20 && tx > 4 << 20, "rx {rx} tx {tx}");
    assert_eq!(m["vellum_rx_copy_bytes_total"], rx);
    assert_eq!(m["vellum_tx_copy_bytes_total"], tx);
    assert_eq!(m["vellum_ring_violations_total"], 0);
}

#[test]
fn bad_requests_get_4xx_while_others_are_served() {
    let g = Guest::boot();
    let mut good = Conn::open(g.http);
    assert_eq!(good.get("/").status, 200);

    let mut c = Conn::open(g.http);
    c.send(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n");
    assert_eq!(c.read_response().expect("an answer to garbage").status, 400);
    assert!(c.closed_by_peer(), "closed after a 400");

    let mut c = Conn::open(g.http);
    c.send(b"BREW / HTTP/1.1\r\nHost: vellum\r\n\r\n");
    let r = c.read_response().expect("an answer to BREW");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));

    let mut c = Conn::open(g.http);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: vellum\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    c.send(big.as_bytes());
    assert_eq!(
        c.read_response().expect("an answer to huge headers").status,
        431
    );

    let mut c = Conn::open(g.http);
    c.send(b"POST / HTTP/1.1\r\nHost: vellum\r\nContent-Length: 1000000\r\n\r\n");
    assert_eq!(
        c.read_response().expect("an answer to a huge body").status,
        413
    );

    let (rc, _) = curl(&[
        "-f",
        "-X",
        "DELETE",
        &format!("http://127.0.0.1:{}/", g.http),
    ]);
    assert_eq!(rc, 22, "curl sees the 405 as an HTTP error");

    // The first connection was never disturbed.
    for _ in 0..5 {
        let r = good.get("/");
        assert_eq!((r.status, r.body.as_slice()), (200, INDEX_HTML));
    }
    assert!(metric(g.http, "vellum_http_client_errors_total") >= 5);
}

#[test]
fn metrics_count_the_data_path() {
    let g = Guest::boot();
    let (rc, body) = curl(&[&format!("http://127.0.0.1:{}/metrics", g.http)]);
    assert_eq!(rc, 0);
    let text = String::from_utf8(body).unwrap();
    for name in [
        "# TYPE vellum_rx_packets_total counter",
        "vellum_tx_packets_total",
        "vellum_rx_copy_bytes_total",
        "vellum_tx_copy_bytes_total",
        "vellum_ring_violations_total 0",
        "vellum_register_exits_total",
        "vellum_shared_pool_bytes 1048576",
        "vellum_heap_used_bytes",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(metric(g.http, "vellum_register_exits_total") > 0);
    assert!(metric(g.http, "vellum_http_requests_total") >= 1);
}
