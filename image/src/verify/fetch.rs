//! Fetching `/attestation` over TLS, keeping the certificate the server
//! presented in the handshake.
//!
//! The server's certificate is self-signed, so it is not checked against any
//! root: trust comes from the attestation report, which binds its public key.
//! The handshake signature *is* checked (with the certificate's key), so the
//! peer proved it holds the private key of the certificate we capture; the
//! request then goes over that same connection.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

/// Largest response accepted.
pub const MAX_RESPONSE: usize = 1 << 20;

/// Where to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Parses `https://HOST[:PORT][/]` (port 443 by default; IPv6 in brackets).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("--url '{url}': must start with https://"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "--url '{url}': give only https://HOST:PORT (the path is always /attestation)"
        ));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("--url '{url}': unclosed '['"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("--url '{url}': junk after ']'"))?,
            ),
        };
        (h, port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(format!("--url '{url}': no host"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("--url '{url}': bad port '{p}'"))?,
        None => 443,
    };
    Ok(Target {
        host: host.to_string(),
        port,
    })
}

/// Accepts any server certificate (trust comes from the attestation), but
/// checks the handshake signatures with the certificate's key.
#[derive(Debug)]
struct AttestedServer {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AttestedServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What came back.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The end-entity certificate from the TLS handshake (DER).
    pub peer_cert: Vec<u8>,
    /// The negotiated TLS version, for display.
    pub tls_version: String,
    /// HTTP status code.
    pub status: u16,
    /// Response body.
    pub body: Vec<u8>,
}

fn client_config() -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AttestedServer { provider }))
        .with_no_client_auth())
}

/// Connects, does the TLS handshake, sends `GET /attestation?nonce=<hex>`
/// on that connection and reads the response.
pub fn fetch_attestation(
    target: &Target,
    nonce_hex: &str,
    timeout: Duration,
) -> Result<Fetched, String> {
    let where_ = format!("{}:{}", target.host, target.port);
    let addrs: Vec<_> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .collect();
    let mut last_err = format!("{} resolves to no address", target.host);
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last_err = format!("cannot connect to {addr}: {e}"),
        }
    }
    let tcp = tcp.ok_or(last_err)?;
    tcp.set_read_timeout(Some(timeout))
        .and_then(|()| tcp.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("socket: {e}"))?;
    let name = ServerName::try_from(target.host.clone())
        .map_err(|e| format!("'{}' is not a valid server name: {e}", target.host))?;
    let conn =
        ClientConnection::new(Arc::new(client_config()?), name).map_err(|e| format!("TLS: {e}"))?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("TLS handshake with {where_} failed: {e}"))?;
    }
    let peer_cert = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| format!("{where_} presented no certificate"))?
        .to_vec();
    let tls_version = tls
        .conn
        .protocol_version()
        .map_or_else(|| "?".into(), |v| format!("{v:?}"));
    let host_header = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let request = format!(
        "GET /attestation?nonce={nonce_hex} HTTP/1.1\r\nHost: {host_header}\r\n\
         Accept: application/json\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes())
        .and_then(|()| tls.flush())
        .map_err(|e| format!("sending the request to {where_}: {e}"))?;
    let (status, body) = read_response(&mut tls).map_err(|e| format!("{where_}: {e}"))?;
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
    Ok(Fetched {
        peer_cert,
        tls_version,
        status,
        body,
    })
}

/// Reads one HTTP/1.1 response (Content-Length, or until close).
fn read_response(r: &mut impl Read) -> Result<(u16, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut head: Option<(u16, usize, Option<usize>)> = None;
    loop {
        if let Some((status, start, Some(len))) = head
            && buf.len() >= start + len
        {
            return Ok((status, buf[start..start + len].to_vec()));
        }
        let n = match r.read(&mut chunk) {
            Ok(n) => n,
            // A peer that closes without close_notify: fine once framed.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(format!("reading the response: {e}")),
        };
        if n == 0 {
            return match head {
                Some((status, start, None)) => Ok((status, buf[start..].to_vec())),
                Some((_, start, Some(len))) => Err(format!(
                    "connection closed after {} of {len} body bytes",
                    buf.len() - start
                )),
                None => Err("connection closed before a complete HTTP response".into()),
            };
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err(format!("response larger than {MAX_RESPONSE} bytes"));
        }
        if head.is_none()
            && let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let (status, len) = parse_head(&buf[..end])?;
            head = Some((status, end + 4, len));
        }
    }
}

/// Status line and headers: (status, content length).
fn parse_head(head: &[u8]) -> Result<(u16, Option<usize>), String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (Some(proto), Some(code)) = (parts.next(), parts.next()) else {
        return Err(format!("bad HTTP status line '{status_line}'"));
    };
    if !proto.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: '{status_line}'"));
    }
    let status = code
        .parse::<u16>()
        .map_err(|_| format!("bad HTTP status line '{status_line}'"))?;
    let mut len = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            let v = value
                .trim()
                .parse::<usize>()
                .map_err(|_| format!("bad Content-Length '{}'", value.trim()))?;
            if v > MAX_RESPONSE {
                return Err(format!("Content-Length {v} is too large"));
            }
            len = Some(v);
        } else if name.trim().eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked responses are not supported".into());
        }
    }
    Ok((status, len))
}
