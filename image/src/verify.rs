//! `image verify`: remote attestation of a running Vellum guest.
//!
//! Connects to the guest's HTTPS service, keeps the certificate presented in
//! the TLS handshake, asks `GET /attestation?nonce=<hex>` on that connection,
//! and checks the SEV-SNP report it gets back (`docs/snp-reference.md` §2 "Guest
//! policy", §5.4 "Attestation report layout", §5.6 "RA-TLS"):
//!
//! 1. `certificate`: the certificate in the response is the handshake's;
//! 2. `report_data`: REPORT_DATA = SHA-512("vellum-ratls-v1" || SHA-256(SPKI)
//!    || nonce), with the SPKI taken from the handshake certificate and our
//!    own nonce (the response's `report_data`/`spki_sha256` fields are only
//!    compared, never trusted);
//! 3. `measurement`: MEASUREMENT = the expected launch digest;
//! 4. `policy`: DEBUG (bit 19) clear unless allowed, reserved bit 17 set;
//! 5. `vmpl`: the report was requested at VMPL 0;
//! 6. `version`: report version ≥ 2, signature algorithm 1 (ECDSA P-384);
//! 7. with AMD's certificates: `chain` ARK → ASK → VCEK, `vcek` (the VCEK is
//!    the one for this chip and REPORTED_TCB), `signature` (the report is
//!    signed by the VCEK). Without them the signature is not checked and the
//!    result is not a full attestation.
//!
//! `image verify --report FILE` runs the same checks on a saved report,
//! offline, except the two that need the connection (`certificate`, and
//! `report_data`, which is compared with `--report-data` when given).
#![forbid(unsafe_code)]

pub mod amd;
pub mod fetch;
pub mod report;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha512};

use crate::snp::cli::{
    Args, LAUNCH_OPTIONS, launch_args, measure_image, parse_measurement, parse_words,
};
use amd::{Cert, CertDir, TrustedArk};
use report::{POLICY_DEBUG, POLICY_RESERVED_ONE, REPORT_LEN, Report, SIG_ALGO_ECDSA_P384_SHA384};

/// Domain-separation label of the RA-TLS binding (as `vellum_crypto::identity`).
pub const REPORT_DATA_LABEL: &[u8] = b"vellum-ratls-v1";
/// Largest nonce the guest accepts.
pub const MAX_NONCE_LEN: usize = 32;
/// Response format this verifier understands.
pub const FORMAT: &str = "vellum-attestation-v1";
/// Default network timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// `image verify --help`.
pub const VERIFY_USAGE: &str = "\
Usage: image verify --url https://HOST:PORT (--measurement HEX | --image PATH) [OPTIONS]
       image verify --report FILE (--measurement HEX | --image PATH) [--report-data HEX]
                    [--certs DIR [--trust-ark SHA256]] [--allow-debug] [--format text|json]

Remote attestation of a running Vellum guest. Connects over TLS (the guest's
certificate is self-signed and is not checked against any CA: the attestation
binds it), requests GET /attestation?nonce=<hex> on the same connection and
checks the SEV-SNP report: that the certificate in the response is the one of
the TLS handshake, that REPORT_DATA = SHA-512(\"vellum-ratls-v1\" || SHA-256(SPKI)
|| nonce), the launch MEASUREMENT, the policy (no DEBUG), VMPL 0, the report
version and signature algorithm and, with --certs, AMD's certificate chain
ARK -> ASK -> VCEK and the report's signature. Without --certs the signature
is NOT checked and the result is not a full attestation. Exits non-zero if any
check fails.

With --report FILE instead of --url, checks a saved 1184-byte report offline:
the same checks except the TLS certificate binding; REPORT_DATA is compared
with --report-data when given (otherwise it is not checked).

Options:
  --url https://HOST[:PORT]  the guest's HTTPS service [port default: 443]
  --measurement DIGEST       expected launch digest, 96 hex digits or base64
                             (as `image measure` prints it)
  --image PATH               compute the expected digest from this image instead,
  --vcpus N, --vcpu-type NAME, --vcpu-sig SIG, --guest-features BITS
                             with these launch options (see `image measure --help`)
  --nonce HEX                nonce, 1 to 32 bytes [default: 32 random bytes]
  --certs DIR                AMD certificates: ark, ask and vcek as .pem or .der, as
                             `snpguest fetch ca pem DIR <milan|genoa|turin>` and
                             `snpguest fetch vcek pem DIR report.bin` store them
                             (write the report with --save-report first)
  --trust-ark SHA256         also trust this ARK: SHA-256 of its SubjectPublicKeyInfo
                             DER, 64 hex digits [default: AMD's Milan, Genoa and
                             Turin roots only]
  --allow-debug              accept a guest whose policy allows debugging
  --save-report FILE         write the raw 1184-byte report to FILE
  --report FILE              check this saved report instead of connecting
                             (excludes --url, --nonce, --save-report, --timeout)
  --report-data HEX          with --report: the expected REPORT_DATA, 128 hex digits
  --timeout SECS             connect/read timeout [default: 30]
  --format text|json         output [default: text]
  -h, --help                 print this help
";

/// Lower-case hex helpers.
pub mod hex {
    /// Lower-case hex of `bytes`.
    pub fn encode(bytes: &[u8]) -> String {
        crate::snp::cli::to_hex(bytes)
    }

    /// Decodes hex (either case, even length, no prefix).
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(2) || !s.is_ascii() {
            return None;
        }
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
            .collect()
    }

    /// Decodes exactly `N` bytes of hex.
    pub fn decode_array<const N: usize>(s: &str) -> Option<[u8; N]> {
        decode(s)?.try_into().ok()
    }
}

/// SHA-512("vellum-ratls-v1" || SHA-256(spki_der) || nonce): the REPORT_DATA
/// a Vellum guest puts in the report (`vellum_crypto::identity::report_data`).
pub fn expected_report_data(spki_der: &[u8], nonce: &[u8]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(REPORT_DATA_LABEL);
    h.update(Sha256::digest(spki_der));
    h.update(nonce);
    h.finalize().into()
}

/// Parses a `--nonce`: 1 to 32 bytes of hex.
pub fn parse_nonce(s: &str) -> Result<Vec<u8>, String> {
    let t = s.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    let bytes = hex::decode(t).ok_or_else(|| format!("--nonce: '{s}' is not hex"))?;
    if bytes.is_empty() {
        return Err("--nonce: empty (give 1 to 32 bytes)".into());
    }
    if bytes.len() > MAX_NONCE_LEN {
        return Err(format!(
            "--nonce: {} bytes, at most {MAX_NONCE_LEN} (the guest hashes at most 32)",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// What to verify against.
#[derive(Clone, Debug)]
pub struct Options {
    /// `https://HOST:PORT`.
    pub url: String,
    /// Expected launch digest.
    pub measurement: [u8; 48],
    /// Our nonce (1..=32 bytes).
    pub nonce: Vec<u8>,
    /// AMD certificates, if given.
    pub certs: Option<CertDir>,
    /// Trusted ARKs (AMD's, plus `--trust-ark`).
    pub trusted_arks: Vec<TrustedArk>,
    /// Accept DEBUG policy.
    pub allow_debug: bool,
    /// Network timeout.
    pub timeout: Duration,
    /// The time certificates must be valid at.
    pub now: SystemTime,
}

/// Result of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Passed.
    Ok,
    /// Failed: the guest is not attested.
    Fail,
    /// Not checked; the result is then not a full attestation.
    Warn,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Fail => "FAIL",
            Status::Warn => "WARN",
        }
    }
}

/// One check line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Short name (`certificate`, `report_data`, …).
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// What was compared, or why it failed.
    pub detail: String,
}

fn check(name: &'static str, r: Result<String, String>) -> Check {
    match r {
        Ok(detail) => Check {
            name,
            status: Status::Ok,
            detail,
        },
        Err(detail) => Check {
            name,
            status: Status::Fail,
            detail,
        },
    }
}

/// The `/attestation` response (version 1), decoded.
#[derive(Clone, Debug)]
pub struct Attestation {
    /// The certificate the guest says it serves (DER).
    pub certificate: Vec<u8>,
    /// The report.
    pub report: Report,
    /// The nonce the guest says it used.
    pub nonce: Option<Vec<u8>>,
    /// The guest's `spki_sha256` field (consistency information only).
    pub spki_sha256: Option<Vec<u8>>,
    /// The guest's `report_data` field (consistency information only).
    pub report_data: Option<Vec<u8>>,
}

fn json_hex_field(v: &Value, name: &str) -> Result<Option<Vec<u8>>, String> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => hex::decode(s)
            .map(Some)
            .ok_or_else(|| format!("malformed response: \"{name}\" is not hex")),
        Some(_) => Err(format!("malformed response: \"{name}\" is not a string")),
    }
}

fn json_b64_field(v: &Value, name: &str) -> Result<Vec<u8>, String> {
    let s = v
        .get(name)
        .ok_or_else(|| format!("malformed response: no \"{name}\""))?
        .as_str()
        .ok_or_else(|| format!("malformed response: \"{name}\" is not a string"))?;
    BASE64
        .decode(s.trim())
        .map_err(|e| format!("malformed response: \"{name}\" is not base64 ({e})"))
}

/// Interprets the HTTP status and body of `/attestation`.
pub fn parse_response(status: u16, body: &[u8]) -> Result<Attestation, String> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| -> String {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    match status {
        200 => {}
        503 => {
            let (err, detail) = (field("error"), field("detail"));
            let err = if err.is_empty() {
                "service unavailable".to_string()
            } else {
                err
            };
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            };
            return Err(format!(
                "the guest cannot be attested: it answered 503 \"{err}\"{detail}. It is NOT \
                 running under SEV-SNP, or cannot get a report; nothing was verified"
            ));
        }
        429 => {
            return Err(
                "the guest is rate-limiting attestation requests (429); try again shortly".into(),
            );
        }
        s => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("/attestation answered HTTP {s}: {text}"));
        }
    }
    let v = parsed.ok_or("malformed response: the body is not JSON")?;
    if !v.is_object() {
        return Err("malformed response: the body is not a JSON object".into());
    }
    match v.get("version").and_then(Value::as_u64) {
        Some(1) => {}
        Some(n) => {
            return Err(format!(
                "unsupported response version {n} (this tool knows 1)"
            ));
        }
        None => return Err("malformed response: no numeric \"version\"".into()),
    }
    if let Some(f) = v.get("format")
        && f.as_str() != Some(FORMAT)
    {
        return Err(format!(
            "unsupported response format {f} (expected \"{FORMAT}\")"
        ));
    }
    let certificate = json_b64_field(&v, "certificate")?;
    let report_bytes = json_b64_field(&v, "report")?;
    let report = Report::from_bytes(&report_bytes).ok_or_else(|| {
        format!(
            "malformed response: the report is {} bytes, expected {REPORT_LEN}",
            report_bytes.len()
        )
    })?;
    Ok(Attestation {
        certificate,
        report,
        nonce: json_hex_field(&v, "nonce")?,
        spki_sha256: json_hex_field(&v, "spki_sha256")?,
        report_data: json_hex_field(&v, "report_data")?,
    })
}

fn short(bytes: &[u8]) -> String {
    let h = hex::encode(bytes);
    if h.len() > 24 {
        format!("{}…", &h[..24])
    } else {
        h
    }
}

fn check_certificate(peer_cert: &[u8], att: &Attestation) -> Result<String, String> {
    let fp = Sha256::digest(peer_cert);
    if att.certificate == peer_cert {
        Ok(format!(
            "the response's certificate is the TLS handshake's (SHA-256 {})",
            short(&fp)
        ))
    } else {
        Err(format!(
            "the response's certificate (SHA-256 {}) is not the one presented in the TLS \
             handshake (SHA-256 {}): the report does not vouch for this connection",
            short(&Sha256::digest(&att.certificate)),
            short(&fp)
        ))
    }
}

fn check_report_data(peer_cert: &[u8], att: &Attestation, nonce: &[u8]) -> Result<String, String> {
    let cert =
        Cert::parse(peer_cert).map_err(|e| format!("cannot parse the TLS certificate: {e}"))?;
    let spki = cert.spki_der()?;
    let spki_hash = Sha256::digest(&spki);
    let want = expected_report_data(&spki, nonce);
    let have = att.report.report_data();
    // Consistency notes on what the guest claims (never used for the verdict).
    let mut notes = Vec::new();
    if let Some(n) = &att.nonce
        && n.as_slice() != nonce
    {
        notes.push(format!(
            "the response names nonce {} instead of ours",
            short(n)
        ));
    }
    if let Some(s) = &att.spki_sha256
        && s.as_slice() != spki_hash.as_slice()
    {
        notes.push("its spki_sha256 field is not the certificate's".to_string());
    }
    if let Some(r) = &att.report_data
        && r.as_slice() != have
    {
        notes.push("its report_data field is not the report's".to_string());
    }
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!(" [{}]", notes.join("; "))
    };
    if have == want {
        Ok(format!(
            "REPORT_DATA = SHA-512(\"vellum-ratls-v1\" || SHA-256(SPKI) {} || nonce {}){notes}",
            short(&spki_hash),
            short(nonce)
        ))
    } else {
        Err(format!(
            "REPORT_DATA {} is not SHA-512(\"vellum-ratls-v1\" || SHA-256(SPKI) || nonce) = {} \
             for the TLS certificate's key and our nonce {}: the report is not bound to this \
             key, or is not fresh{notes}",
            short(have),
            short(&want),
            short(nonce)
        ))
    }
}

fn check_measurement(report: &Report, expected: &[u8; 48]) -> Result<String, String> {
    if report.measurement() == expected {
        Ok(format!("MEASUREMENT {}", hex::encode(expected)))
    } else {
        Err(format!(
            "MEASUREMENT {} is not the expected {}: another image or other launch options",
            hex::encode(report.measurement()),
            hex::encode(expected)
        ))
    }
}

fn check_policy(report: &Report, allow_debug: bool) -> Result<String, String> {
    let p = report.policy();
    let names = report::policy_names(p);
    if p & POLICY_RESERVED_ONE == 0 {
        return Err(format!(
            "policy {p:#x}: reserved bit 17 is not set ({names})"
        ));
    }
    if p & POLICY_DEBUG != 0 {
        if allow_debug {
            return Ok(format!(
                "policy {p:#x} ({names}); DEBUG allowed by --allow-debug: the host can read \
                 and change guest memory"
            ));
        }
        return Err(format!(
            "policy {p:#x} allows DEBUG (bit 19): the host can read and change guest memory \
             ({names}; --allow-debug to accept)"
        ));
    }
    Ok(format!("policy {p:#x} ({names}); DEBUG not allowed"))
}

fn check_vmpl(report: &Report) -> Result<String, String> {
    match report.vmpl() {
        0 => Ok("VMPL 0".into()),
        v => Err(format!(
            "VMPL {v}: the report was requested at VMPL {v}, not 0"
        )),
    }
}

fn check_version(report: &Report) -> Result<String, String> {
    let (v, a) = (report.version(), report.signature_algo());
    if v < 2 {
        return Err(format!("report version {v} (at least 2 expected)"));
    }
    if a != SIG_ALGO_ECDSA_P384_SHA384 {
        return Err(format!(
            "report version {v}, signature algorithm {a} (1 = ECDSA P-384 SHA-384 expected)"
        ));
    }
    Ok(format!(
        "report version {v}, signature algorithm 1 (ECDSA P-384 SHA-384)"
    ))
}

/// The checks of the report's contents: `measurement`, `policy`, `vmpl`,
/// `version`.
fn content_checks(r: &Report, measurement: &[u8; 48], allow_debug: bool) -> Vec<Check> {
    vec![
        check("measurement", check_measurement(r, measurement)),
        check("policy", check_policy(r, allow_debug)),
        check("vmpl", check_vmpl(r)),
        check("version", check_version(r)),
    ]
}

/// With AMD's certificates `chain`, `vcek` and `signature`; without them a
/// `signature` warning.
fn amd_checks(
    r: &Report,
    certs: Option<&CertDir>,
    trusted_arks: &[TrustedArk],
    now: SystemTime,
) -> Vec<Check> {
    match certs {
        Some(certs) => vec![
            check("chain", amd::verify_chain(certs, trusted_arks, now)),
            check("vcek", amd::verify_vcek_binding(&certs.vcek, r)),
            check("signature", amd::verify_report_signature(&certs.vcek, r)),
        ],
        None => vec![Check {
            name: "signature",
            status: Status::Warn,
            detail: "NOT checked (no --certs): nothing shows the report comes from an AMD \
                     processor, so this is NOT a full attestation"
                .into(),
        }],
    }
}

/// The checks of an attestation, given the handshake certificate.
pub fn check_attestation(peer_cert: &[u8], att: &Attestation, opts: &Options) -> Vec<Check> {
    let r = &att.report;
    let mut checks = vec![
        check("certificate", check_certificate(peer_cert, att)),
        check(
            "report_data",
            check_report_data(peer_cert, att, &opts.nonce),
        ),
    ];
    checks.extend(content_checks(r, &opts.measurement, opts.allow_debug));
    checks.extend(amd_checks(
        r,
        opts.certs.as_ref(),
        &opts.trusted_arks,
        opts.now,
    ));
    checks
}

/// What `image verify --report` checks a saved report against.
#[derive(Clone, Debug)]
pub struct ReportOptions {
    /// The report file (1184 bytes).
    pub path: PathBuf,
    /// Expected launch digest.
    pub measurement: [u8; 48],
    /// Expected REPORT_DATA (`--report-data`), if given.
    pub report_data: Option<[u8; 64]>,
    /// AMD certificates, if given.
    pub certs: Option<CertDir>,
    /// Trusted ARKs (AMD's, plus `--trust-ark`).
    pub trusted_arks: Vec<TrustedArk>,
    /// Accept DEBUG policy.
    pub allow_debug: bool,
    /// The time certificates must be valid at.
    pub now: SystemTime,
}

fn check_expected_report_data(report: &Report, expected: Option<&[u8; 64]>) -> Check {
    let have = report.report_data();
    match expected {
        Some(want) if have == want => Check {
            name: "report_data",
            status: Status::Ok,
            detail: format!("REPORT_DATA = --report-data {}", short(want)),
        },
        Some(want) => Check {
            name: "report_data",
            status: Status::Fail,
            detail: format!(
                "REPORT_DATA {} is not the expected {}: the report was made for other data \
                 (another key or nonce)",
                short(have),
                short(want)
            ),
        },
        None => Check {
            name: "report_data",
            status: Status::Warn,
            detail: format!(
                "REPORT_DATA {} NOT checked (no --report-data): nothing binds this report to \
                 a key or a nonce",
                short(have)
            ),
        },
    }
}

/// The checks of a saved report (`image verify --report`): those of
/// [`check_attestation`] but the TLS binding; REPORT_DATA only against
/// `--report-data`.
pub fn check_report(report: &Report, opts: &ReportOptions) -> Vec<Check> {
    let mut checks = vec![check_expected_report_data(
        report,
        opts.report_data.as_ref(),
    )];
    checks.extend(content_checks(report, &opts.measurement, opts.allow_debug));
    checks.extend(amd_checks(
        report,
        opts.certs.as_ref(),
        &opts.trusted_arks,
        opts.now,
    ));
    checks
}

/// Reads and checks a saved report. `Err` when there is nothing to check.
pub fn verify_report_file(opts: &ReportOptions) -> Result<Outcome, String> {
    let bytes = std::fs::read(&opts.path)
        .map_err(|e| format!("--report: cannot read {}: {e}", opts.path.display()))?;
    let report = Report::from_bytes(&bytes).ok_or_else(|| {
        format!(
            "--report: {} is {} bytes, not a {REPORT_LEN}-byte SEV-SNP attestation report \
             (as --save-report writes it)",
            opts.path.display(),
            bytes.len()
        )
    })?;
    let checks = check_report(&report, opts);
    Ok(Outcome {
        url: String::new(),
        nonce: Vec::new(),
        tls_version: String::new(),
        peer_cert: Vec::new(),
        report_file: Some(opts.path.clone()),
        report,
        checks,
    })
}

/// Everything `image verify` found.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The URL (empty for `--report`).
    pub url: String,
    /// Our nonce.
    pub nonce: Vec<u8>,
    /// The TLS version used.
    pub tls_version: String,
    /// The handshake certificate (DER).
    pub peer_cert: Vec<u8>,
    /// `--report`: the saved report checked offline (`url`, `nonce`,
    /// `tls_version` and `peer_cert` are then empty).
    pub report_file: Option<PathBuf>,
    /// The report.
    pub report: Report,
    /// The checks, in order.
    pub checks: Vec<Check>,
}

impl Outcome {
    /// No check failed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// Passed, and the signature and chain were checked.
    pub fn full(&self) -> bool {
        self.checks.iter().all(|c| c.status == Status::Ok)
    }

    fn verdict(&self) -> String {
        let named = |status: Status| -> Vec<&str> {
            self.checks
                .iter()
                .filter(|c| c.status == status)
                .map(|c| c.name)
                .collect()
        };
        let failed = named(Status::Fail);
        if !failed.is_empty() {
            format!("FAILED ({})", failed.join(", "))
        } else if self.report_file.is_some() {
            if self.full() {
                "VERIFIED: the saved report is signed by a VCEK of a trusted ARK and has the \
                 expected contents (offline: not bound to a TLS connection)"
                    .into()
            } else {
                format!(
                    "PASSED the report checks, but {} NOT checked: NOT a full attestation",
                    named(Status::Warn).join(", ")
                )
            }
        } else if self.full() {
            "VERIFIED: full attestation (AMD chain and signature checked)".into()
        } else {
            "PASSED the report checks, but the AMD signature was NOT checked (no --certs): \
             NOT a full attestation"
                .into()
        }
    }

    /// The text output.
    pub fn text(&self) -> String {
        let r = &self.report;
        let mut s = match &self.report_file {
            Some(path) => format!(
                "saved report {} (offline: no TLS connection to bind it to)\n",
                path.display()
            ),
            None => format!(
                "attestation of {} ({}, nonce {})\n",
                self.url,
                self.tls_version,
                hex::encode(&self.nonce)
            ),
        };
        s.push_str(&format!(
            "  report: version {}, policy {:#x}, VMPL {}, guest SVN {}, reported TCB {:#018x}, \
             chip ID {}\n",
            r.version(),
            r.policy(),
            r.vmpl(),
            r.guest_svn(),
            r.reported_tcb(),
            short(r.chip_id())
        ));
        for c in &self.checks {
            s.push_str(&format!(
                "{:<5} {:<12} {}\n",
                c.status.label(),
                c.name,
                c.detail
            ));
        }
        s.push_str(&format!("result: {}\n", self.verdict()));
        s
    }

    /// The JSON output.
    pub fn json(&self) -> Value {
        let r = &self.report;
        let online = self.report_file.is_none();
        json!({
            "url": online.then(|| self.url.clone()),
            "report_file": self.report_file.as_ref().map(|p| p.display().to_string()),
            "nonce": online.then(|| hex::encode(&self.nonce)),
            "tls_version": online.then(|| self.tls_version.clone()),
            "certificate_sha256": online.then(|| hex::encode(&Sha256::digest(&self.peer_cert))),
            "verified": self.passed(),
            "full_attestation": self.full(),
            "result": self.verdict(),
            "checks": self.checks.iter().map(|c| json!({
                "name": c.name,
                "status": c.status.label().to_ascii_lowercase(),
                "detail": c.detail,
            })).collect::<Vec<_>>(),
            "report": {
                "version": r.version(),
                "guest_svn": r.guest_svn(),
                "policy": format!("{:#x}", r.policy()),
                "vmpl": r.vmpl(),
                "signature_algo": r.signature_algo(),
                "current_tcb": format!("{:#018x}", r.current_tcb()),
                "reported_tcb": format!("{:#018x}", r.reported_tcb()),
                "measurement": hex::encode(r.measurement()),
                "report_data": hex::encode(r.report_data()),
                "host_data": hex::encode(r.host_data()),
                "chip_id": hex::encode(r.chip_id()),
                "raw": BASE64.encode(r.bytes()),
            },
        })
    }
}

/// Fetches and checks. `Err` when there is nothing to check (connection,
/// HTTP or format errors, a guest not under SNP).
pub fn verify(opts: &Options) -> Result<Outcome, String> {
    if opts.nonce.is_empty() || opts.nonce.len() > MAX_NONCE_LEN {
        return Err(format!("the nonce must be 1 to {MAX_NONCE_LEN} bytes"));
    }
    let target = fetch::parse_url(&opts.url)?;
    let fetched = fetch::fetch_attestation(&target, &hex::encode(&opts.nonce), opts.timeout)?;
    let att = parse_response(fetched.status, &fetched.body)?;
    let checks = check_attestation(&fetched.peer_cert, &att, opts);
    Ok(Outcome {
        url: opts.url.clone(),
        nonce: opts.nonce.clone(),
        tls_version: fetched.tls_version,
        peer_cert: fetched.peer_cert,
        report_file: None,
        report: att.report,
        checks,
    })
}

/// What `image verify` prints, and whether it passed.
#[derive(Clone, Debug)]
pub struct CommandOutput {
    /// Text for stdout.
    pub text: String,
    /// No check failed.
    pub passed: bool,
}

/// Options of both forms of `image verify`.
const COMMON_OPTIONS: &[&str] = &["--measurement", "--certs", "--trust-ark", "--format"];
/// Options of `image verify --url` only.
const URL_OPTIONS: &[&str] = &["--url", "--nonce", "--save-report", "--timeout"];
/// Options of `image verify --report` only.
const REPORT_OPTIONS: &[&str] = &["--report", "--report-data"];

/// `--allow-debug` (a flag), and the other words parsed as `--name value`.
fn parse_verify_words(args: &[String]) -> Result<(bool, Args), String> {
    let allow_debug = args.iter().any(|a| a == "--allow-debug");
    let rest: Vec<String> = args
        .iter()
        .filter(|a| *a != "--allow-debug")
        .cloned()
        .collect();
    let mut names = LAUNCH_OPTIONS.to_vec();
    names.extend_from_slice(COMMON_OPTIONS);
    names.extend_from_slice(URL_OPTIONS);
    names.extend_from_slice(REPORT_OPTIONS);
    Ok((allow_debug, parse_words(&rest, &names, "verify")?))
}

fn parse_format(a: &Args) -> Result<String, String> {
    let format = a.get("--format").unwrap_or("text").to_string();
    if format != "text" && format != "json" {
        return Err(format!("--format: '{format}' is not text or json"));
    }
    Ok(format)
}

/// The expected launch digest: `--measurement`, or computed from `--image`.
fn expected_measurement(a: &Args) -> Result<[u8; 48], String> {
    let launch_given = LAUNCH_OPTIONS.iter().any(|n| a.get(n).is_some());
    match a.get("--measurement") {
        Some(m) => {
            if launch_given {
                return Err(
                    "--measurement excludes --image/--vcpus/--vcpu-type/--vcpu-sig/--guest-features"
                        .into(),
                );
            }
            parse_measurement(m)
        }
        None if a.get("--image").is_some() => Ok(measure_image(&launch_args(a)?)?.digest),
        None => Err(
            "give the expected launch digest: --measurement HEX, or --image PATH to compute it"
                .into(),
        ),
    }
}

/// AMD's ARKs, plus `--trust-ark`.
fn trusted_arks(a: &Args) -> Result<Vec<TrustedArk>, String> {
    let mut trusted_arks = amd::amd_arks();
    if let Some(t) = a.get("--trust-ark") {
        let h = hex::decode_array(t.trim())
            .ok_or_else(|| format!("--trust-ark: '{t}' is not 64 hex digits"))?;
        trusted_arks.push(TrustedArk {
            spki_sha256: h,
            name: "ARK trusted by --trust-ark".into(),
        });
    }
    Ok(trusted_arks)
}

fn cert_dir(a: &Args) -> Result<Option<CertDir>, String> {
    match a.get("--certs") {
        Some(dir) => Ok(Some(
            amd::load_dir(Path::new(dir)).map_err(|e| format!("--certs: {e}"))?,
        )),
        None => Ok(None),
    }
}

/// Parses the command line into [`Options`] (plus `--format`,
/// `--save-report`); `Ok(None)` for `--help`. Reads `--image` and `--certs`,
/// but does not connect.
pub fn parse_args(args: &[String]) -> Result<Option<(Options, String, Option<PathBuf>)>, String> {
    let (allow_debug, a) = parse_verify_words(args)?;
    if a.help {
        return Ok(None);
    }
    if a.get("--report").is_some() {
        return Err("--report checks a saved report offline: give it without --url".into());
    }
    if a.get("--report-data").is_some() {
        return Err(
            "--report-data is for --report: with --url, REPORT_DATA is computed from the TLS \
             certificate and the nonce"
                .into(),
        );
    }
    let format = parse_format(&a)?;
    let url = a
        .get("--url")
        .ok_or("--url https://HOST:PORT is required (or --report FILE for a saved report)")?
        .to_string();
    fetch::parse_url(&url)?;
    let nonce = match a.get("--nonce") {
        Some(n) => parse_nonce(n)?,
        None => {
            let mut n = vec![0u8; MAX_NONCE_LEN];
            getrandom::fill(&mut n).map_err(|e| format!("no randomness for the nonce: {e}"))?;
            n
        }
    };
    let timeout = match a.get("--timeout") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .ok()
                .filter(|&s| s > 0)
                .ok_or_else(|| format!("--timeout: '{t}' is not a positive number of seconds"))?,
        ),
        None => DEFAULT_TIMEOUT,
    };
    let measurement = expected_measurement(&a)?;
    let trusted_arks = trusted_arks(&a)?;
    let certs = cert_dir(&a)?;
    let opts = Options {
        url,
        measurement,
        nonce,
        certs,
        trusted_arks,
        allow_debug,
        timeout,
        now: SystemTime::now(),
    };
    Ok(Some((
        opts,
        format,
        a.get("--save-report").map(PathBuf::from),
    )))
}

/// Parses `image verify --report FILE ...` into [`ReportOptions`] (plus
/// `--format`); `Ok(None)` for `--help`. Reads `--image` and `--certs`, not
/// the report.
pub fn parse_report_args(args: &[String]) -> Result<Option<(ReportOptions, String)>, String> {
    let (allow_debug, a) = parse_verify_words(args)?;
    if a.help {
        return Ok(None);
    }
    let path = a
        .get("--report")
        .ok_or("--report FILE is required")?
        .to_string();
    if a.get("--url").is_some() {
        return Err("give --url (a running guest) or --report (a saved report), not both".into());
    }
    if let Some(n) = URL_OPTIONS.iter().find(|n| a.get(n).is_some()) {
        return Err(format!(
            "{n} is only for a running guest (--url); leave it out with --report"
        ));
    }
    let format = parse_format(&a)?;
    let report_data =
        match a.get("--report-data") {
            Some(d) => {
                let t = d.trim();
                let t = t.strip_prefix("0x").unwrap_or(t);
                Some(hex::decode_array(t).ok_or_else(|| {
                    format!("--report-data: '{d}' is not 128 hex digits (64 bytes)")
                })?)
            }
            None => None,
        };
    let opts = ReportOptions {
        path: PathBuf::from(path),
        measurement: expected_measurement(&a)?,
        report_data,
        certs: cert_dir(&a)?,
        trusted_arks: trusted_arks(&a)?,
        allow_debug,
        now: SystemTime::now(),
    };
    Ok(Some((opts, format)))
}

fn render(outcome: &Outcome, format: &str) -> CommandOutput {
    let text = if format == "json" {
        format!("{:#}\n", outcome.json())
    } else {
        outcome.text()
    };
    CommandOutput {
        text,
        passed: outcome.passed(),
    }
}

/// `image verify`: returns what it would print. `Err` when nothing could be
/// checked.
pub fn verify_command(args: &[String]) -> Result<CommandOutput, String> {
    let offline = args
        .iter()
        .any(|a| a == "--report" || a.starts_with("--report="));
    if offline {
        let Some((opts, format)) = parse_report_args(args)? else {
            return Ok(CommandOutput {
                text: VERIFY_USAGE.to_string(),
                passed: true,
            });
        };
        return Ok(render(&verify_report_file(&opts)?, &format));
    }
    let Some((opts, format, save)) = parse_args(args)? else {
        return Ok(CommandOutput {
            text: VERIFY_USAGE.to_string(),
            passed: true,
        });
    };
    let outcome = verify(&opts)?;
    if let Some(path) = save {
        std::fs::write(&path, outcome.report.bytes())
            .map_err(|e| format!("--save-report: cannot write {}: {e}", path.display()))?;
    }
    Ok(render(&outcome, &format))
}

/// Runs `image verify` with the words after the subcommand.
pub fn cli_verify(args: &[String]) -> Result<(), String> {
    let out = verify_command(args)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write output: {e}"))?;
    if out.passed {
        Ok(())
    } else {
        Err("attestation verification FAILED (see the FAIL lines above)".into())
    }
}

#[cfg(test)]
mod tests;
