//! The guest on a tap device, the path the benchmarks take: QEMU offers
//! checksum offload, TSO and large receive there (not on user networking),
//! so this is where the driver's TSO buffers, GSO headers and merged receive
//! buffers meet QEMU and the host kernel, which cuts our segments and hands
//! us its own whole. Needs root and `/dev/net/tun` (CI runs as root);
//! elsewhere the test says why it did not run.

use std::time::Duration;

use vellum_itest::{Guest, TapNs, http::parse_metrics};

/// A byte-exact echo of `bytes`, client inside the namespace (Python: in
/// the test set-up already).
const ECHO_CLIENT: &str = r#"
import socket, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = bytes((i * 2654435761 >> 13) & 0xff for i in range(n))
s = socket.create_connection((host, port), timeout=60)
def send():
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send)
t.start()
got = bytearray()
while True:
    b = s.recv(1 << 16)
    if not b:
        break
    got += b
t.join()
print("ok" if bytes(got) == data else "differ", len(got))
"#;

#[test]
fn echo_over_tap_moves_whole_tcp_segments_both_ways() {
    let ns = match TapNs::create("tap") {
        Ok(ns) => ns,
        Err(why) => {
            // test.sh sets VELLUM_REQUIRE_TAP=1 under CI: a skip there would be
            // a green run that never checked the offloads.
            assert!(
                std::env::var("VELLUM_REQUIRE_TAP").as_deref() != Ok("1"),
                "no tap device ({why}), and VELLUM_REQUIRE_TAP=1: run as root with /dev/net/tun"
            );
            eprintln!(
                "SKIPPED echo_over_tap_moves_whole_tcp_segments_both_ways: no tap device ({why})"
            );
            return;
        }
    };
    let g = Guest::start_on_tap(&ns, &[]);
    g.wait_for("vellum ready", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        g.log().contains("tso true, large receive true"),
        "QEMU's tap backend offers TSO and large receive; the driver should use both:\n{}",
        g.log()
    );
    let n = 8 << 20;
    let out = ns
        .command("python3")
        .args(["-c", ECHO_CLIENT, TapNs::GUEST, "7", &n.to_string()])
        .output()
        .expect("python3 in the namespace");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.trim(),
        format!("ok {n}"),
        "echo over tap: {}\nguest log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        g.log()
    );
    let metrics = ns
        .command("curl")
        .args(["-sS", "--max-time", "20"])
        .arg(format!("http://{}/metrics", TapNs::GUEST))
        .output()
        .expect("curl in the namespace");
    let m = parse_metrics(&String::from_utf8_lossy(&metrics.stdout));
    let value = |name: &str| -> u64 {
        *m.get(name)
            .unwrap_or_else(|| panic!("{name} missing from /metrics: {m:?}"))
    };
    let (tso, tx_packets) = (
        value("vellum_tx_tso_frames_total"),
        value("vellum_tx_packets_total"),
    );
    // 8 MiB echoed in segments of up to 64 KiB: far fewer frames than the
    // ~5,700 MSS-sized ones it would take, most of the bytes in TSO frames.
    assert!(tso >= 64, "TSO frames: {tso}");
    assert!(tx_packets < 4_000, "TX frames: {tx_packets} (TSO {tso})");
    // The host's segments to us come whole too (the host kernel's TSO/GRO
    // through the tap), gathered from several receive buffers.
    let merged = value("vellum_rx_merged_frames_total");
    assert!(merged >= 64, "merged RX frames: {merged}");
    assert!(
        value("vellum_rx_packets_total") < 4_000,
        "RX frames: {} (merged {merged})",
        value("vellum_rx_packets_total")
    );
    assert_eq!(value("vellum_ring_violations_total"), 0);
    assert_eq!(
        value("vellum_rx_copy_bytes_total"),
        value("vellum_rx_bytes_total")
    );
    assert_eq!(
        value("vellum_tx_copy_bytes_total"),
        value("vellum_tx_bytes_total")
    );
}
