//! Host tests: the Vellum provider and `TlsSession` against a std rustls
//! client over in-memory pipes; identity certificate fields; `report_data`.

use std::sync::Arc;

use rustls::client::ClientConnection;
use rustls::crypto::ring as ring_provider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, NamedGroup, ProtocolVersion, RootCertStore, SupportedCipherSuite};
use vellum_crypto::identity::{ATTESTATION_REPORT_OID, DEFAULT_NOT_AFTER, DEFAULT_NOT_BEFORE};
use vellum_crypto::session::{
    INCOMING_CAPACITY, MAX_RECORD_PLAINTEXT, OUTGOING_CAPACITY, PLAINTEXT_CAPACITY,
};
use vellum_crypto::{
    CertParams, EntropySource, Identity, IdentityError, KernelClock, RngError, TlsError,
    TlsSession, provider, report_data, server_config,
};

/// The host OS RNG, standing in for the kernel's RDRAND/RDSEED source.
struct OsEntropy;

impl EntropySource for OsEntropy {
    fn fill(&self, dest: &mut [u8]) -> Result<(), RngError> {
        use ring::rand::SecureRandom;
        ring::rand::SystemRandom::new()
            .fill(dest)
            .map_err(|_| RngError)
    }
}

fn rng() -> Arc<dyn EntropySource> {
    Arc::new(OsEntropy)
}

struct Server {
    identity: Identity,
    config: Arc<rustls::ServerConfig>,
}

fn server() -> Server {
    let rng = rng();
    let identity = Identity::generate(rng.as_ref(), &CertParams::vellum(None)).expect("identity");
    let config = server_config(
        &identity,
        provider(rng),
        KernelClock::new(|| Some(1_780_000_000)),
        None,
    )
    .expect("config");
    Server { identity, config }
}

/// A std rustls client trusting exactly `cert`, offering only `suites` and
/// `groups` (all of ring's when empty).
fn client_config(
    cert: &CertificateDer<'static>,
    suites: &[SupportedCipherSuite],
    groups: &[NamedGroup],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut p = ring_provider::default_provider();
    if !suites.is_empty() {
        p.cipher_suites.retain(|s| suites.contains(s));
    }
    if !groups.is_empty() {
        p.kx_groups.retain(|g| groups.contains(&g.name()));
    }
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).expect("root");
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(p))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn client(s: &Server, name: &str) -> ClientConnection {
    let cfg = client_config(s.identity.cert_der(), &[], &[], rustls::DEFAULT_VERSIONS);
    ClientConnection::new(cfg, ServerName::try_from(name.to_string()).expect("name"))
        .expect("client")
}

/// In-memory TCP between a std client and a `TlsSession`. `mss` caps each
/// socket write, to exercise partial sends/receives.
struct Pipe {
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    mss: usize,
}

impl Pipe {
    fn new(mss: usize) -> Self {
        Self {
            c2s: Vec::new(),
            s2c: Vec::new(),
            mss,
        }
    }

    /// Moves bytes both ways once. Returns whether anything moved.
    fn step(&mut self, c: &mut ClientConnection, s: &mut TlsSession) -> Result<bool, TlsError> {
        let mut moved = false;
        while c.wants_write() {
            c.write_tls(&mut self.c2s).expect("client write_tls");
        }
        if !self.c2s.is_empty() {
            let take = self.c2s.len().min(self.mss);
            let n = s.feed_ciphertext(&self.c2s[..take])?;
            self.c2s.drain(..n);
            moved |= n > 0;
        }
        let mss = self.mss;
        let n = s.take_ciphertext(|b| {
            let n = b.len().min(mss);
            self.s2c.extend_from_slice(&b[..n]);
            n
        });
        moved |= n > 0;
        if !self.s2c.is_empty() {
            let mut rd = &self.s2c[..];
            let n = c.read_tls(&mut rd).expect("client read_tls");
            self.s2c.drain(..n);
            c.process_new_packets().expect("client process");
            moved |= n > 0;
        }
        Ok(moved)
    }

    fn handshake(&mut self, c: &mut ClientConnection, s: &mut TlsSession) {
        for _ in 0..100 {
            self.step(c, s).expect("handshake");
            if !c.is_handshaking() && !s.is_handshaking() {
                return;
            }
        }
        panic!("handshake did not complete: {s:?}");
    }
}

fn spki_of(cert: &[u8]) -> Vec<u8> {
    let (_, x) = x509_parser::parse_x509_certificate(cert).expect("parse");
    x.public_key().raw.to_vec()
}

#[test]
fn tls13_aes256_handshake_verifies_cert_and_spki() {
    let s = server();
    // The client verifies the chain and the name against each SAN.
    for name in ["localhost", "10.0.2.15", "127.0.0.1"] {
        let mut c = client(&s, name);
        let mut sess = TlsSession::new(s.config.clone()).expect("session");
        let mut pipe = Pipe::new(1 << 20);
        pipe.handshake(&mut c, &mut sess);
        assert_eq!(sess.protocol_version(), Some(ProtocolVersion::TLSv1_3));
        let suite = sess.negotiated_cipher_suite().expect("suite");
        assert_eq!(suite.suite(), rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
        assert_eq!(
            c.negotiated_cipher_suite().expect("suite").suite(),
            suite.suite()
        );
        assert_eq!(sess.negotiated_kx_group(), Some(NamedGroup::X25519));
        let peer = c.peer_certificates().expect("certs");
        assert_eq!(peer.len(), 1);
        assert_eq!(spki_of(&peer[0]), s.identity.spki_der());
    }
    // A name not in the SANs is rejected by the client.
    let mut c = client(&s, "example.com");
    let mut sess = TlsSession::new(s.config.clone()).expect("session");
    let mut pipe = Pipe::new(1 << 20);
    let mut failed = false;
    for _ in 0..10 {
        while c.wants_write() {
            c.write_tls(&mut pipe.c2s).expect("write");
        }
        if sess.feed_ciphertext(&pipe.c2s).is_err() {
            failed = true;
            break;
        }
        pipe.c2s.clear();
        sess.take_ciphertext(|b| {
            pipe.s2c.extend_from_slice(b);
            b.len()
        });
        let mut rd = &pipe.s2c[..];
        c.read_tls(&mut rd).expect("read");
        pipe.s2c.clear();
        if c.process_new_packets().is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "client accepted a certificate without the name");
}

fn negotiate(
    suites: &[SupportedCipherSuite],
    groups: &[NamedGroup],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (TlsSession, ClientConnection) {
    let s = server();
    let cfg = client_config(s.identity.cert_der(), suites, groups, versions);
    let mut c = ClientConnection::new(cfg, ServerName::try_from("localhost").expect("name"))
        .expect("client");
    let mut sess = TlsSession::new(s.config.clone()).expect("session");
    Pipe::new(1 << 20).handshake(&mut c, &mut sess);
    (sess, c)
}

#[test]
fn chacha20_negotiated_when_only_offer() {
    let (sess, _c) = negotiate(
        &[ring_provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256],
        &[],
        &[&rustls::version::TLS13],
    );
    assert_eq!(
        sess.negotiated_cipher_suite().expect("suite").suite(),
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    );
}

#[test]
fn aes128_negotiated_when_only_offer() {
    let (sess, _c) = negotiate(
        &[ring_provider::cipher_suite::TLS13_AES_128_GCM_SHA256],
        &[],
        &[&rustls::version::TLS13],
    );
    assert_eq!(
        sess.negotiated_cipher_suite().expect("suite").suite(),
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    );
}

#[test]
fn p256_kx_negotiated_when_only_offer() {
    let (sess, _c) = negotiate(&[], &[NamedGroup::secp256r1], &[&rustls::version::TLS13]);
    assert_eq!(sess.negotiated_kx_group(), Some(NamedGroup::secp256r1));
}

#[test]
fn tls12_ecdhe_ecdsa_aes_gcm() {
    for group in [NamedGroup::X25519, NamedGroup::secp256r1] {
        let (sess, _c) = negotiate(&[], &[group], &[&rustls::version::TLS12]);
        assert_eq!(sess.protocol_version(), Some(ProtocolVersion::TLSv1_2));
        assert_eq!(
            sess.negotiated_cipher_suite().expect("suite").suite(),
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        );
        assert_eq!(sess.negotiated_kx_group(), Some(group));
    }
}

/// Deterministic pseudo-random test data (xorshift).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Echoes 4 MiB through each of two concurrent sessions (interleaved), with
/// small socket writes, checking the bytes come back exactly and that the
/// session's buffers stay within their bounds throughout.
#[test]
fn echo_4mib_two_sessions_byte_exact() {
    use std::io::{Read, Write};
    const LEN: usize = 4 << 20;
    let s = server();
    struct Conn {
        c: ClientConnection,
        s: TlsSession,
        pipe: Pipe,
        data: Vec<u8>,
        sent: usize,
        echoed: Vec<u8>,
        pending_echo: Vec<u8>,
    }
    let mut conns: Vec<Conn> = (0..2)
        .map(|i| {
            let mut c = client(&s, "localhost");
            let mut sess = TlsSession::new(s.config.clone()).expect("session");
            let mut pipe = Pipe::new(1460 * (i + 3));
            pipe.handshake(&mut c, &mut sess);
            Conn {
                c,
                s: sess,
                pipe,
                data: pattern(LEN, 0x1234 + i as u64),
                sent: 0,
                echoed: Vec::new(),
                pending_echo: Vec::new(),
            }
        })
        .collect();
    let mut buf = vec![0u8; 10_000];
    for _round in 0..200_000 {
        if conns.iter().all(|k| k.echoed.len() == LEN) {
            break;
        }
        for k in conns.iter_mut() {
            // Client writes up to 64 KiB ahead of what came back.
            if k.sent < LEN && k.sent - k.echoed.len() < 64 * 1024 {
                let end = (k.sent + 24 * 1024).min(LEN);
                let n =
                    k.c.writer()
                        .write(&k.data[k.sent..end])
                        .expect("client write");
                k.sent += n;
            }
            k.pipe.step(&mut k.c, &mut k.s).expect("step");
            // Server echo service: plaintext in, plaintext out.
            loop {
                if k.pending_echo.is_empty() {
                    let n = k.s.read_plaintext(&mut buf);
                    if n == 0 {
                        break;
                    }
                    k.pending_echo.extend_from_slice(&buf[..n]);
                }
                let n = k.s.write_plaintext(&k.pending_echo).expect("server write");
                k.pending_echo.drain(..n);
                if n == 0 {
                    break;
                }
            }
            assert!(k.s.pending_ciphertext().len() <= OUTGOING_CAPACITY + 20_000);
            assert!(k.s.plaintext_available() <= PLAINTEXT_CAPACITY);
            k.pipe.step(&mut k.c, &mut k.s).expect("step");
            loop {
                match k.c.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => k.echoed.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client read: {e}"),
                }
            }
        }
    }
    for k in &conns {
        assert_eq!(k.echoed.len(), LEN, "incomplete echo");
        assert!(k.echoed == k.data, "echo mismatch");
    }
    // Graceful close both ways.
    for k in conns.iter_mut() {
        k.c.send_close_notify();
        k.pipe.step(&mut k.c, &mut k.s).expect("step");
        assert!(k.s.is_peer_closed());
        k.s.close();
        assert!(k.s.is_closed());
        assert_eq!(k.s.write_plaintext(b"x"), Err(TlsError::Closed));
        k.pipe.step(&mut k.c, &mut k.s).expect("step");
        assert!(k.s.pending_ciphertext().is_empty());
        let mut b = [0u8; 8];
        assert_eq!(
            k.c.reader().read(&mut b).expect("eof"),
            0,
            "client sees clean EOF"
        );
    }
}

/// A client that writes but whose server application never reads: the
/// session stops accepting ciphertext instead of buffering without bound.
#[test]
fn backpressure_on_unread_plaintext_and_unsent_ciphertext() {
    use std::io::Write;
    let s = server();
    let mut c = client(&s, "localhost");
    let mut sess = TlsSession::new(s.config.clone()).expect("session");
    let mut pipe = Pipe::new(1 << 20);
    pipe.handshake(&mut c, &mut sess);
    let data = pattern(1 << 20, 7);
    let mut off = 0;
    let mut wire = Vec::new();
    while off < data.len() {
        off += c.writer().write(&data[off..]).expect("write");
        while c.wants_write() {
            c.write_tls(&mut wire).expect("write_tls");
        }
    }
    let mut fed = 0;
    loop {
        let n = sess.feed_ciphertext(&wire[fed..]).expect("feed");
        if n == 0 {
            break;
        }
        fed += n;
    }
    assert!(fed < wire.len() / 4, "accepted {fed} of {}", wire.len());
    assert!(sess.plaintext_available() <= PLAINTEXT_CAPACITY);
    // Our ciphertext buffer, plus the records behind our plaintext buffer and
    // the one decrypted record rustls holds until we have room for it (22
    // bytes of TLS 1.3 overhead per 16 KiB record).
    let records = (PLAINTEXT_CAPACITY + MAX_RECORD_PLAINTEXT) / MAX_RECORD_PLAINTEXT;
    assert!(
        fed <= INCOMING_CAPACITY + records * (MAX_RECORD_PLAINTEXT + 22),
        "{fed}"
    );
    // Reading resumes the flow, byte-exact.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while got.len() < data.len() {
        let n = sess.read_plaintext(&mut buf);
        got.extend_from_slice(&buf[..n]);
        if fed < wire.len() {
            fed += sess.feed_ciphertext(&wire[fed..]).expect("feed");
        } else if n == 0 {
            break;
        }
    }
    assert!(got == data);

    // Output side: nobody drains the socket.
    let mut accepted = 0;
    loop {
        let n = sess.write_plaintext(&data).expect("write");
        if n == 0 {
            break;
        }
        accepted += n;
    }
    assert!(accepted <= OUTGOING_CAPACITY);
    assert!(sess.pending_ciphertext().len() <= OUTGOING_CAPACITY);
    // Draining lets writes continue.
    let drained = sess.take_ciphertext(|b| b.len());
    assert!(drained > 0);
    assert!(sess.write_plaintext(&data).expect("write") > 0);
}

#[test]
fn garbage_input_errors_cleanly() {
    let s = server();
    let cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: vellum\r\n\r\n".to_vec(),
        vec![0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5],
        vec![0x17, 0x03, 0x03, 0x00, 0x20]
            .into_iter()
            .chain([0xaa; 32])
            .collect(),
        vec![0x16, 0x03, 0x03, 0xff, 0xff],
        vec![0xff; 100_000],
    ];
    for (i, input) in cases.iter().enumerate() {
        let mut sess = TlsSession::new(s.config.clone()).expect("session");
        let mut r = Ok(0);
        let mut off = 0;
        while off < input.len() {
            r = sess.feed_ciphertext(&input[off..]);
            match r {
                Ok(0) | Err(_) => break,
                Ok(n) => off += n,
            }
        }
        assert!(matches!(r, Err(TlsError::Protocol(_))), "case {i}: {r:?}");
        assert!(sess.is_closed(), "case {i}");
        assert!(!sess.is_handshaking());
        // Sticky, and nothing but a (fatal alert) record goes out.
        assert!(sess.feed_ciphertext(b"more").is_err());
        assert!(sess.write_plaintext(b"x").is_err());
        assert_eq!(sess.read_plaintext(&mut [0u8; 16]), 0);
        let out = sess.pending_ciphertext();
        if !out.is_empty() {
            assert_eq!(out[0], 0x15, "case {i}: alert record expected");
        }
    }
    // Random inputs of many sizes: never a panic, always a clean error or a
    // request for more bytes.
    let rng = OsEntropy;
    for len in [1usize, 2, 5, 6, 50, 300, 1000, 16_000, 40_000] {
        for _ in 0..20 {
            let mut b = vec![0u8; len];
            rng.fill(&mut b).expect("rng");
            let mut sess = TlsSession::new(s.config.clone()).expect("session");
            let _ = sess.feed_ciphertext(&b);
            let _ = sess.take_ciphertext(|b| b.len());
        }
    }
}

#[test]
fn tampered_record_after_handshake_closes_session() {
    use std::io::Write;
    let s = server();
    let mut c = client(&s, "localhost");
    let mut sess = TlsSession::new(s.config.clone()).expect("session");
    Pipe::new(1 << 20).handshake(&mut c, &mut sess);
    c.writer().write_all(b"hello vellum").expect("write");
    let mut wire = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut wire).expect("write_tls");
    }
    let last = wire.len() - 1;
    wire[last] ^= 1;
    let r = sess.feed_ciphertext(&wire);
    assert_eq!(r, Err(TlsError::Protocol(rustls::Error::DecryptError)));
    assert!(sess.is_closed());
    assert_eq!(sess.plaintext_available(), 0);
    // bad_record_mac, encrypted: TLS 1.3 alerts after the handshake are
    // records of outer type application_data.
    assert_eq!(
        sess.pending_ciphertext().first(),
        Some(&0x17),
        "encrypted alert record"
    );
}

#[test]
fn report_data_vector() {
    // python3 -c "import hashlib; spki=bytes(range(91)); nonce=bytes(range(0xa0,0xc0));
    //   print(hashlib.sha512(b'vellum-ratls-v1'+hashlib.sha256(spki).digest()+nonce).hexdigest())"
    let spki: Vec<u8> = (0..91).collect();
    let nonce: Vec<u8> = (0xa0..0xc0).collect();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(
        hex(&report_data(&spki, &nonce).expect("rd")),
        "f3fa36605902f5f002a78364044a8fb072d0ee76bd79f18b78eeaddca437b285\
         25adc33e25203dbc544bc9eabfeef6e3f871fcec3c789fd38ff8cb20452281bc"
    );
    assert_eq!(
        hex(&report_data(&spki, &[]).expect("rd")),
        "08ca434bda59dad6dc15d105a3799fe4dc8aca25bf7d9da377b065be673a2a31\
         be9255c22a439772fb8973e3745423573e5088ddfc22b4a40423a6f2cba902b2"
    );
    assert_eq!(
        report_data(&spki, &[0u8; 33]),
        Err(IdentityError::NonceTooLong)
    );
    let s = server();
    assert_eq!(
        s.identity.report_data(b"n").expect("rd"),
        report_data(s.identity.spki_der(), b"n").expect("rd")
    );
}

#[test]
fn certificate_fields() {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    use x509_parser::extensions::GeneralName;

    let rng = OsEntropy;
    let now = 1_780_000_000u64;
    for (params, nb, na) in [
        (
            CertParams::vellum(None),
            DEFAULT_NOT_BEFORE,
            DEFAULT_NOT_AFTER,
        ),
        (CertParams::vellum(Some(now)), now, now + 365 * 86400),
    ] {
        let id = Identity::generate(&rng, &params).expect("identity");
        let der = id.cert_der().as_ref();
        let (rest, x) = x509_parser::parse_x509_certificate(der).expect("parse");
        assert!(rest.is_empty());
        assert_eq!(x.version(), x509_parser::x509::X509Version::V3);
        let cn: Vec<_> = x
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().expect("utf8"))
            .collect();
        assert_eq!(cn, ["vellum"]);
        assert_eq!(x.subject(), x.issuer(), "self-signed");
        assert_eq!(x.validity().not_before.timestamp(), nb as i64);
        assert_eq!(x.validity().not_after.timestamp(), na as i64);
        let san = x.subject_alternative_name().expect("san").expect("has san");
        let mut ips = Vec::new();
        let mut dns = Vec::new();
        for n in &san.value.general_names {
            match n {
                GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        assert_eq!(ips, [vec![10, 0, 2, 15], vec![127, 0, 0, 1]]);
        assert_eq!(dns, ["localhost"]);
        let bc = x.basic_constraints().expect("bc").expect("has bc");
        assert!(!bc.value.ca);
        assert!(
            x.key_usage()
                .expect("ku")
                .expect("has ku")
                .value
                .digital_signature()
        );
        assert!(
            x.extended_key_usage()
                .expect("eku")
                .expect("has eku")
                .value
                .server_auth
        );
        // Serial: 16 random bytes, positive.
        assert_eq!(x.raw_serial().len(), 16);
        // Signature: ecdsa-with-SHA256 by the SPKI's key over the TBS bytes.
        assert_eq!(
            x.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.10045.4.3.2"
        );
        assert_eq!(x.public_key().raw, id.spki_der());
        let vk = p256::ecdsa::VerifyingKey::from_public_key_der(id.spki_der()).expect("spki");
        let sig = p256::ecdsa::Signature::from_der(&x.signature_value.data).expect("sig");
        vk.verify(x.tbs_certificate.as_ref(), &sig)
            .expect("signature verifies");
        // No attestation extension unless asked.
        assert!(
            x.extensions()
                .iter()
                .all(|e| e.oid.to_id_string() != ATTESTATION_REPORT_OID.to_string())
        );
    }
}

#[test]
fn reissue_with_attestation_extension_keeps_key() {
    let rng = OsEntropy;
    let id = Identity::generate(&rng, &CertParams::vellum(None)).expect("identity");
    let report: Vec<u8> = (0..1184u32).map(|i| i as u8).collect();
    let mut params = CertParams::vellum(None);
    params.attestation_report = Some(report.clone());
    let id2 = id.reissue(&rng, &params).expect("reissue");
    assert_eq!(id2.spki_der(), id.spki_der());
    assert_ne!(id2.cert_der(), id.cert_der());
    let (_, x) = x509_parser::parse_x509_certificate(id2.cert_der()).expect("parse");
    let e = x
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == ATTESTATION_REPORT_OID.to_string())
        .expect("attestation extension");
    assert!(!e.critical);
    // extnValue wraps an OCTET STRING holding the report.
    let (_, inner) = x509_parser::der_parser::der::parse_der_octetstring(e.value).expect("octets");
    assert_eq!(inner.as_slice().expect("bytes"), report.as_slice());
    // And a client still accepts it (unknown non-critical extension).
    let config = server_config(
        &id2,
        provider(Arc::new(OsEntropy)),
        KernelClock::none(),
        None,
    )
    .expect("config");
    let s = Server {
        identity: id2,
        config,
    };
    let mut c = client(&s, "localhost");
    let mut sess = TlsSession::new(s.config.clone()).expect("session");
    Pipe::new(1 << 20).handshake(&mut c, &mut sess);
}

#[test]
fn failing_rng_is_an_error_not_a_panic() {
    let bad = |_: &mut [u8]| -> Result<(), RngError> { Err(RngError) };
    assert_eq!(
        Identity::generate(&bad, &CertParams::vellum(None)).err(),
        Some(IdentityError::Rng)
    );
    // A handshake with a failing RNG fails cleanly on the server.
    let s = server();
    let config = server_config(
        &s.identity,
        provider(Arc::new(bad)),
        KernelClock::none(),
        None,
    )
    .expect("config");
    let mut c = client(&s, "localhost");
    let mut sess = TlsSession::new(config).expect("session");
    let mut pipe = Pipe::new(1 << 20);
    let r = (0..5).try_for_each(|_| pipe.step(&mut c, &mut sess).map(|_| ()));
    assert!(r.is_err());
    assert!(sess.is_closed());
}

#[test]
fn restricted_provider_pins_suite_and_group() {
    use rustls::time_provider::TimeProvider;
    let base = provider(rng());
    let p = vellum_crypto::provider::restricted(
        &base,
        &[ring_provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256],
        &[NamedGroup::secp256r1],
    );
    assert_eq!(p.cipher_suites.len(), 1);
    assert_eq!(p.kx_groups.len(), 1);
    let s = server();
    let config = server_config(&s.identity, p, KernelClock::none(), None).expect("config");
    let mut c = client(&s, "localhost");
    let mut sess = TlsSession::new(config).expect("session");
    Pipe::new(1 << 20).handshake(&mut c, &mut sess);
    assert_eq!(sess.negotiated_kx_group(), Some(NamedGroup::secp256r1));
    assert_eq!(
        sess.negotiated_cipher_suite().expect("suite").suite(),
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    );
    // The clock adapter.
    let t = KernelClock::new(|| Some(1_800_000_000))
        .current_time()
        .expect("time");
    assert_eq!(t.as_secs(), 1_800_000_000);
    assert!(KernelClock::none().current_time().is_none());
}

/// Resumption: with a [`Ticketer`], a client that comes back with its ticket
/// resumes (no certificate, no signature), over TLS 1.3 and 1.2; a server
/// with another ticket key (another boot) falls back to a full handshake;
/// without a ticketer nothing is resumed.
#[test]
fn tickets_resume_sessions_within_one_boot() {
    use rustls::HandshakeKind;
    use vellum_crypto::Ticketer;
    let rng = rng();
    let identity = Identity::generate(rng.as_ref(), &CertParams::vellum(None)).expect("identity");
    let clock = KernelClock::new(|| Some(1_780_000_000));
    let with_tickets = |seed: Arc<dyn EntropySource>| {
        let t = Ticketer::new(seed).expect("ticketer");
        server_config(
            &identity,
            provider(rng.clone()),
            clock.clone(),
            Some(Arc::new(t)),
        )
        .expect("config")
    };
    let config = with_tickets(rng.clone());
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let ccfg = client_config(identity.cert_der(), &[], &[], versions);
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let mut c =
                ClientConnection::new(ccfg.clone(), ServerName::try_from("localhost").unwrap())
                    .expect("client");
            let mut s = TlsSession::new(config.clone()).expect("session");
            let mut pipe = Pipe::new(1460);
            pipe.handshake(&mut c, &mut s);
            // TLS 1.3 tickets come after the handshake: let them through.
            for _ in 0..10 {
                if !pipe.step(&mut c, &mut s).expect("step") {
                    break;
                }
            }
            kinds.push(c.handshake_kind());
        }
        assert_eq!(
            kinds,
            [
                Some(HandshakeKind::Full),
                Some(HandshakeKind::Resumed),
                Some(HandshakeKind::Resumed)
            ],
            "{versions:?}"
        );
        // The same client's ticket at a server with another key: full.
        let other = with_tickets(rng.clone());
        let mut c = ClientConnection::new(ccfg.clone(), ServerName::try_from("localhost").unwrap())
            .expect("client");
        let mut s = TlsSession::new(other).expect("session");
        Pipe::new(1460).handshake(&mut c, &mut s);
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
    }
    // No ticketer: never resumed.
    let plain =
        server_config(&identity, provider(rng.clone()), clock.clone(), None).expect("config");
    let ccfg = client_config(identity.cert_der(), &[], &[], rustls::DEFAULT_VERSIONS);
    for _ in 0..2 {
        let mut c = ClientConnection::new(ccfg.clone(), ServerName::try_from("localhost").unwrap())
            .expect("client");
        let mut s = TlsSession::new(plain.clone()).expect("session");
        let mut pipe = Pipe::new(1460);
        pipe.handshake(&mut c, &mut s);
        for _ in 0..10 {
            if !pipe.step(&mut c, &mut s).expect("step") {
                break;
            }
        }
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
    }
}
