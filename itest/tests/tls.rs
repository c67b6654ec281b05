//! HTTPS, TLS echo and the attestation endpoint of the booted image, with real
//! clients: curl, openssl s_client, and Python's ssl module (OpenSSL).

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};
use vellum_itest::{
    Guest, free_ports,
    http::{connects_for_two_transfers, curl},
    platform,
};
use vellum_net::http::INDEX_HTML;

fn s_client(port: u16, extra: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-brief",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl (apt-get install openssl)");
    // Close stdin: s_client shuts the connection down after the handshake.
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("openssl output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn curl_gets_the_page_over_https() {
    let g = Guest::boot();
    assert!(
        g.log().contains("https :443, tls echo :7443"),
        "{}",
        g.log()
    );
    let url = format!("https://127.0.0.1:{}/", g.https);
    let (rc, body) = curl(&["-k", &url]);
    assert_eq!(rc, 0);
    assert_eq!(body, INDEX_HTML);
    // Keep-alive over TLS: two transfers, one connection.
    assert_eq!(connects_for_two_transfers(&["-k"], &url), "1 0");
}

#[test]
fn openssl_negotiates_tls13_with_aes_gcm() {
    let g = Guest::boot();
    for port in [g.https, g.tls_echo] {
        let out = s_client(port, &["-ciphersuites", "TLS_AES_256_GCM_SHA384"]);
        assert!(out.contains("Protocol version: TLSv1.3"), "{out}");
        assert!(out.contains("Ciphersuite: TLS_AES_256_GCM_SHA384"), "{out}");
        assert!(
            out.contains("CN=vellum") || out.contains("CN = vellum"),
            "{out}"
        );
    }
    // Offered everything, the client gets the suite the server measured as
    // the faster on this machine (ChaCha20 where AES-NI is emulated, as here).
    let out = s_client(g.https, &[]);
    let preferred = if g.log().contains("prefer ChaCha20-Poly1305") {
        "Ciphersuite: TLS_CHACHA20_POLY1305_SHA256"
    } else {
        "Ciphersuite: TLS_AES_256_GCM_SHA384"
    };
    assert!(out.contains(preferred), "{out}\n{}", g.log());
    // AES-128-GCM and ChaCha20 when the client asks only for those.
    let out = s_client(g.https, &["-ciphersuites", "TLS_AES_128_GCM_SHA256"]);
    assert!(out.contains("Ciphersuite: TLS_AES_128_GCM_SHA256"), "{out}");
    let out = s_client(g.https, &["-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"]);
    assert!(
        out.contains("Ciphersuite: TLS_CHACHA20_POLY1305_SHA256"),
        "{out}"
    );
    // TLS 1.2 with ECDHE-ECDSA-AES256-GCM.
    let out = s_client(
        g.https,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"],
    );
    assert!(out.contains("Protocol version: TLSv1.2"), "{out}");
}

/// Python's ssl module (OpenSSL) as the TLS echo client: 4 MiB, byte-exact,
/// sent and received at once. One thread (asyncio): OpenSSL's connection
/// object must not be read and written from two threads at once, and a
/// client that did so failed now and then with "[SSL] internal error".
const PY_TLS_ECHO: &str = r#"
import asyncio, ssl, sys
port = int(sys.argv[1]); n = 4 << 20
data = bytes((i * 2654435761 >> 13) & 0xff for i in range(n))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
async def main():
    r, w = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx), 60)
    got = bytearray()
    async def send():
        for i in range(0, n, 65536):
            w.write(data[i:i + 65536])
            await w.drain()
    async def receive():
        while len(got) < n:
            b = await r.read(65536)
            if not b:
                return "end of stream"
            got.extend(b)
        return "complete"
    try:
        _, why = await asyncio.wait_for(asyncio.gather(send(), receive()), 120)
    except Exception as e:
        why = repr(e)
    t = w.get_extra_info("ssl_object")
    print(t.version(), t.cipher()[0], len(got), got == data)
    print("reader stopped:", why, file=sys.stderr)
    w.close()
asyncio.run(main())
"#;

#[test]
fn tls_echo_round_trips_four_mebibytes_byte_exact() {
    let g = Guest::boot();
    let out = Command::new("python3")
        .args(["-c", PY_TLS_ECHO, &g.tls_echo.to_string()])
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{text}");
    assert_eq!(fields[0], "TLSv1.3");
    assert!(
        ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"].contains(&fields[1]),
        "{text}"
    );
    assert_eq!(
        fields[2],
        (4u32 << 20).to_string(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        g.log()
    );
    assert_eq!(fields[3], "True", "echoed bytes differ");
}

#[test]
fn attestation_answers_as_the_platform_allows() {
    // Under SEV-SNP the platform writes its certificate chain (ark, ask,
    // vcek) where we ask, for the full check below.
    let certs = std::env::temp_dir().join(format!(
        "vellum-itest-certs-{}-{}",
        std::process::id(),
        free_ports::<1>()[0]
    ));
    let certs_arg = certs.display().to_string();
    let extra: &[&str] = if platform().is_snp() {
        &["--snp-certs", &certs_arg]
    } else {
        &[]
    };
    let g = Guest::boot_with(extra);
    let base = format!("https://127.0.0.1:{}", g.https);
    // Bad nonces are refused before anything else.
    for q in [
        "nonce=abc",
        "nonce=zz",
        "foo=1",
        &format!("nonce={}", "00".repeat(33)),
    ] {
        let (rc, out) = curl(&[
            "-k",
            "-w",
            "\n%{http_code}",
            &format!("{base}/attestation?{q}"),
        ]);
        assert_eq!(rc, 0);
        assert!(
            String::from_utf8_lossy(&out).ends_with("\n400"),
            "{q}: {}",
            String::from_utf8_lossy(&out)
        );
    }
    // Not over plain HTTP: the binding only means something over TLS.
    let (rc, out) = curl(&[
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{}/attestation", g.http),
    ]);
    assert_eq!((rc, String::from_utf8_lossy(&out).trim()), (0, "404"));

    let (rc, out) = curl(&[
        "-k",
        "-w",
        "\n%{http_code}",
        &format!("{base}/attestation?nonce=00ff"),
    ]);
    assert_eq!(rc, 0);
    let text = String::from_utf8_lossy(&out);
    if !platform().is_snp() {
        assert!(text.ends_with("\n503"), "{text}");
        assert!(
            text.contains(r#""error":"not running under SEV-SNP""#),
            "{text}"
        );
        return;
    }
    assert!(text.ends_with("\n200"), "{text}\n{}", g.log());
    for field in [
        r#""format":"vellum-attestation-v1""#,
        r#""nonce":"00ff""#,
        r#""report":""#,
        r#""certificate":""#,
    ] {
        assert!(text.contains(field), "{field} missing: {text}");
    }
    // The full check, as a relying party makes it: `image verify` against the
    // measurement of the image we booted and the platform's chain, its ARK
    // trusted by the SHA-256 of its public key (it is not AMD's).
    let ark = certs.join("ark.pem");
    for name in ["ark.pem", "ask.pem", "vcek.pem"] {
        assert!(
            certs.join(name).is_file(),
            "the platform did not write {name} to {} (--snp-certs)",
            certs.display()
        );
    }
    let spki = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl x509 -in \"$1\" -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum",
        )
        .arg("sh")
        .arg(&ark)
        .output()
        .expect("openssl");
    let ark_sha = String::from_utf8_lossy(&spki.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    assert_eq!(ark_sha.len(), 64, "SPKI SHA-256 of {}", ark.display());
    // One report per second: the request above was the last one.
    std::thread::sleep(Duration::from_millis(1100));
    let image = vellum_itest::image().display().to_string();
    let out = Command::new("cargo")
        .current_dir(vellum_itest::root())
        .args(["run", "-q", "-p", "vellum-image", "--", "verify"])
        .args(["--url", &base, "--image", &image, "--certs", &certs_arg])
        .args(["--trust-ark", &ark_sha])
        .output()
        .expect("cargo run -p vellum-image -- verify");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("result: VERIFIED") && !said.contains("WARN"),
        "image verify:\n{said}{}\nguest log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        g.log()
    );
    // The same guest against a wrong expected measurement: refused, and the
    // measurement is what is named (a flipped last digit of the real one).
    let mut wrong = said
        .lines()
        .find_map(|l| l.trim().strip_prefix("ok    measurement  MEASUREMENT "))
        .expect("image verify names the measurement")
        .trim()
        .to_string();
    let last = if wrong.ends_with('0') { "1" } else { "0" };
    wrong.replace_range(wrong.len() - 1.., last);
    let mut refused = None;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(1100));
        let out = Command::new("cargo")
            .current_dir(vellum_itest::root())
            .args(["run", "-q", "-p", "vellum-image", "--", "verify"])
            .args([
                "--url",
                &base,
                "--measurement",
                &wrong,
                "--certs",
                &certs_arg,
            ])
            .args(["--trust-ark", &ark_sha])
            .output()
            .expect("cargo run -p vellum-image -- verify");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if err.contains("rate-limiting") {
            continue;
        }
        refused = Some((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            err,
        ));
        break;
    }
    let (ok, said, err) = refused.expect("the guest kept rate-limiting image verify");
    assert!(!ok, "a wrong measurement must fail:\n{said}{err}");
    assert!(
        said.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("measurement")),
        "{said}{err}"
    );
    let _ = std::fs::remove_dir_all(&certs);
}

#[test]
fn garbage_on_tls_ports_closes_only_that_connection() {
    let g = Guest::boot();
    let url = format!("https://127.0.0.1:{}/", g.https);
    for port in [g.https, g.tls_echo] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        // The server answers with a fatal alert (or nothing) and closes.
        let _ = s.read_to_end(&mut buf);
        assert!(buf.len() < 64, "no application data on garbage: {buf:?}");
        if let Some(&first) = buf.first() {
            assert_eq!(first, 0x15, "a TLS alert record");
        }
        let (rc, body) = curl(&["-k", &url]);
        assert_eq!(
            (rc, body.as_slice()),
            (0, INDEX_HTML),
            "still serving after garbage on {port}"
        );
    }
}

/// Python's ssl (OpenSSL) comes back with the session ticket of its first
/// connection: resumed, over TLS 1.3 and 1.2; a fresh context is not.
const PY_RESUME: &str = r#"
import socket, ssl, sys
port, version = int(sys.argv[1]), sys.argv[2]
def ctx():
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    if version == "1.2":
        c.maximum_version = ssl.TLSVersion.TLSv1_2
    return c
def get(c, session=None):
    s = c.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60), session=session)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    body = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        body += b
    out = (s.session, s.session_reused, s.version(), body.startswith(b"HTTP/1.1 200"))
    s.close()
    return out
c = ctx()
sess, reused1, v1, ok1 = get(c)
_, reused2, v2, ok2 = get(c, sess)
_, reused3, _, ok3 = get(ctx())
print(v1, v2, reused1, reused2, reused3, ok1 and ok2 and ok3)
"#;

#[test]
fn sessions_resume_with_tickets() {
    let g = Guest::boot();
    for (version, name) in [("1.3", "TLSv1.3"), ("1.2", "TLSv1.2")] {
        let out = Command::new("python3")
            .args(["-c", PY_RESUME, &g.https.to_string(), version])
            .output()
            .expect("python3");
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            said.trim(),
            format!("{name} {name} False True False True"),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            g.log()
        );
    }
}
