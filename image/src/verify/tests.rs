//! Tests of `image verify`: AMD's real Milan chain and report, and a test PKI
//! (RSA-4096 "ARK"/"ASK" with fixed keys from `tests/data/test-keys`, a fresh
//! P-384 "VCEK") with an in-process HTTPS guest that serves `/attestation`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use p384::ecdsa::SigningKey as P384SigningKey;
use p384::elliptic_curve::Generate;
use p384::pkcs8::EncodePrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::Sha384;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::TbsCertificate;
use x509_cert::der::asn1::{Ia5String, OctetString};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Encode, EncodePem};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};
use x509_cert::time::Validity;

use super::report::off;
use super::*;
use crate::snp::id_block;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

// ---------------------------------------------------------------------------
// Report layout, checked against the repository's SEV-SNP reference

/// Where the report layout is documented (`docs/snp-reference.md` §5.4).
fn snp_reference_path() -> PathBuf {
    manifest_dir().join("../docs/snp-reference.md")
}

/// The text of `docs/snp-reference.md`; a missing file fails the test.
fn snp_reference() -> String {
    let path = snp_reference_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} cannot be read ({e}): the report layout is checked against the table in \
             docs/snp-reference.md, which must be in the repository",
            path.display()
        )
    })
}

/// The cells of a markdown table row, trimmed and without backticks.
fn table_cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().trim_matches('`').to_string())
        .collect()
}

/// The rows of the first table in the section whose heading ends with
/// `heading` and whose first header cells are `columns`. Fails the test with
/// a sentence naming what is missing.
fn doc_table(doc: &str, heading: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let lines: Vec<&str> = doc.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with('#') && l.trim_end().ends_with(heading))
        .unwrap_or_else(|| panic!("docs/snp-reference.md has no section headed \"{heading}\""));
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with('#'))
        .map_or(lines.len(), |n| start + 1 + n);
    let is_header = |l: &str| {
        let cells = table_cells(l);
        l.trim_start().starts_with('|')
            && cells.len() >= columns.len()
            && cells
                .iter()
                .zip(columns)
                .all(|(c, want)| c.eq_ignore_ascii_case(want))
    };
    let header = (start + 1..end)
        .find(|&i| is_header(lines[i]))
        .unwrap_or_else(|| {
            panic!(
                "section \"{heading}\" of docs/snp-reference.md has no table with the columns \
                 {columns:?}"
            )
        });
    assert!(
        lines
            .get(header + 1)
            .is_some_and(|l| l.trim_start().starts_with("|-")),
        "the table in section \"{heading}\" of docs/snp-reference.md has no separator row \
         under its header"
    );
    let rows: Vec<Vec<String>> = lines[header + 2..end]
        .iter()
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| table_cells(l))
        .collect();
    assert!(
        !rows.is_empty(),
        "the table in section \"{heading}\" of docs/snp-reference.md has no rows"
    );
    for row in &rows {
        assert!(
            row.len() >= columns.len(),
            "a row of the table in section \"{heading}\" of docs/snp-reference.md has fewer \
             cells than the header: {row:?}"
        );
    }
    rows
}

/// A hexadecimal (`0x..`) or decimal cell of the documented tables.
fn doc_number(cell: &str, what: &str) -> usize {
    let cell = cell.replace('_', "");
    let parsed = match cell.strip_prefix("0x") {
        Some(hex) => usize::from_str_radix(hex, 16),
        None => cell.parse(),
    };
    parsed.unwrap_or_else(|_| {
        panic!("docs/snp-reference.md: {what} is \"{cell}\", which is not a number")
    })
}

/// The report fields the verifier uses: the name in the documented table,
/// the offset from `report::off`, and the size `report.rs` reads there.
fn verifier_report_fields() -> [(&'static str, usize, usize); 22] {
    [
        ("version", off::VERSION, 4),
        ("guest_svn", off::GUEST_SVN, 4),
        ("policy", off::POLICY, 8),
        ("family_id", off::FAMILY_ID, 16),
        ("image_id", off::IMAGE_ID, 16),
        ("vmpl", off::VMPL, 4),
        ("signature_algo", off::SIGNATURE_ALGO, 4),
        ("current_tcb", off::CURRENT_TCB, 8),
        ("platform_info", off::PLATFORM_INFO, 8),
        ("flags", off::FLAGS, 4),
        ("report_data", off::REPORT_DATA, off::REPORT_DATA_LEN),
        ("measurement", off::MEASUREMENT, off::MEASUREMENT_LEN),
        ("host_data", off::HOST_DATA, 32),
        ("id_key_digest", off::ID_KEY_DIGEST, 48),
        ("author_key_digest", off::AUTHOR_KEY_DIGEST, 48),
        ("report_id", off::REPORT_ID, 32),
        ("reported_tcb", off::REPORTED_TCB, 8),
        ("chip_id", off::CHIP_ID, off::CHIP_ID_LEN),
        ("committed_tcb", off::COMMITTED_TCB, 8),
        ("launch_tcb", off::LAUNCH_TCB, 8),
        ("signature_r", off::SIG_R, off::SIG_PARAM_LEN),
        ("signature_s", off::SIG_S, off::SIG_PARAM_LEN),
    ]
}

#[test]
fn report_layout_matches_docs_snp_reference() {
    let doc = snp_reference();

    // §5.4: `field | offset | size | contents`, covering the whole report.
    let rows: Vec<(String, usize, usize)> = doc_table(
        &doc,
        "Attestation report layout",
        &["field", "offset", "size"],
    )
    .into_iter()
    .map(|r| {
        let offset = doc_number(&r[1], &format!("the offset of report field {}", r[0]));
        let size = doc_number(&r[2], &format!("the size of report field {}", r[0]));
        (r[0].clone(), offset, size)
    })
    .collect();
    let mut next = 0;
    for (name, offset, size) in &rows {
        assert_eq!(
            *offset, next,
            "docs/snp-reference.md §5.4: report field {name} is at {offset:#x}, but the field \
             before it ends at {next:#x} (the table must cover the report without gaps or \
             overlaps)"
        );
        next = offset + size;
    }
    assert_eq!(
        next, REPORT_LEN,
        "docs/snp-reference.md §5.4 ends at {next:#x}, but the verifier's report is \
         {REPORT_LEN:#x} bytes"
    );
    for (name, offset, size) in verifier_report_fields() {
        let documented: Vec<_> = rows.iter().filter(|(n, _, _)| n == name).collect();
        assert!(
            !documented.is_empty(),
            "docs/snp-reference.md §5.4 has no row for report field {name}, which the verifier \
             reads at {offset:#x}"
        );
        assert_eq!(
            documented.len(),
            1,
            "docs/snp-reference.md §5.4 has more than one row for report field {name}"
        );
        let (_, doc_offset, doc_size) = documented[0];
        assert_eq!(
            (*doc_offset, *doc_size),
            (offset, size),
            "report field {name}: docs/snp-reference.md §5.4 says offset {doc_offset:#x}, size \
             {doc_size}; the verifier uses offset {offset:#x}, size {size}"
        );
    }
    // The signed bytes end where the signature starts.
    assert_eq!(off::SIGNATURE, off::SIG_R);

    // The same facts as literals, so that a change to both the code and the
    // doc still has to be deliberate.
    assert_eq!(
        (off::SIG_R, off::SIG_S, off::SIG_PARAM_LEN),
        (0x2A0, 0x2E8, 72)
    );
    assert_eq!(REPORT_LEN, 0x4A0);
    assert_eq!(REPORT_LEN, 1184);
    assert_eq!(off::REPORT_DATA_LEN, 64);
    assert_eq!(off::MEASUREMENT_LEN, 48);
    assert_eq!(off::CHIP_ID_LEN, 64);
    assert_eq!(off::REPORT_DATA + off::REPORT_DATA_LEN, off::MEASUREMENT);
    assert_eq!(report::POLICY_DEBUG, 1 << 19);
    assert_eq!(report::POLICY_RESERVED_ONE, 1 << 17);

    // §2: the policy bits the verifier tests.
    let policy = doc_table(&doc, "Guest policy", &["bit", "name", "meaning"]);
    for (name, mask) in [
        ("SMT", report::POLICY_SMT),
        ("RESERVED", report::POLICY_RESERVED_ONE),
        ("MIGRATE_MA", report::POLICY_MIGRATE_MA),
        ("DEBUG", report::POLICY_DEBUG),
        ("SINGLE_SOCKET", report::POLICY_SINGLE_SOCKET),
    ] {
        let row = policy
            .iter()
            .find(|r| r[1] == name)
            .unwrap_or_else(|| panic!("docs/snp-reference.md §2 lacks policy bit {name}"));
        let bit = doc_number(&row[0], &format!("the bit of policy flag {name}"));
        assert_eq!(
            1u64 << bit,
            mask,
            "policy bit {name}: docs/snp-reference.md §2 says bit {bit}; the verifier uses \
             {mask:#x}"
        );
    }
    let reserved = policy
        .iter()
        .find(|r| r[1] == "RESERVED")
        .expect("checked above");
    assert!(
        reserved[2].contains("must be 1"),
        "docs/snp-reference.md §2 does not say that the reserved policy bit must be 1"
    );
    assert_eq!(
        id_block::DEFAULT_POLICY,
        report::POLICY_SMT | report::POLICY_RESERVED_ONE
    );
}

// ---------------------------------------------------------------------------
// AMD's real Milan chain and a real report (from the `sev` crate's test data).

fn milan_dir() -> PathBuf {
    manifest_dir().join("tests/data/amd-milan")
}

fn milan_report() -> Report {
    let bytes = std::fs::read(milan_dir().join("report.bin")).unwrap();
    Report::from_bytes(&bytes).unwrap()
}

/// 2025-01-01, inside every certificate's validity.
fn fixed_now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600)
}

#[test]
fn real_amd_milan_chain_and_report() {
    let certs = amd::load_dir(&milan_dir()).unwrap();
    let chain = amd::verify_chain(&certs, &amd::amd_arks(), fixed_now()).unwrap();
    assert!(
        chain.contains("ARK-Milan") && chain.contains("AMD ARK-Milan"),
        "{chain}"
    );
    let r = milan_report();
    assert_eq!(r.version(), 2);
    assert_eq!(r.signature_algo(), 1);
    assert_eq!(r.vmpl(), 0);
    assert_eq!(r.policy(), 0x30000);
    let binding = amd::verify_vcek_binding(&certs.vcek, &r).unwrap();
    assert!(binding.contains("hardware ID = CHIP_ID"), "{binding}");
    assert!(binding.contains("TCB = REPORTED_TCB"), "{binding}");
    amd::verify_report_signature(&certs.vcek, &r).unwrap();

    // Any signed byte changed: the signature fails.
    let mut bytes = *r.bytes();
    bytes[0x90] ^= 1;
    let bad = Report::from_bytes(&bytes).unwrap();
    assert!(amd::verify_report_signature(&certs.vcek, &bad).is_err());
    // Non-zero bytes above the low 48 of R.
    let mut bytes = *r.bytes();
    bytes[off::SIG_R + 60] = 1;
    let e = amd::verify_report_signature(&certs.vcek, &Report::from_bytes(&bytes).unwrap())
        .unwrap_err();
    assert!(e.contains("above the low 48"), "{e}");
    // Another TCB: the VCEK is not the one for it.
    let mut bytes = *r.bytes();
    bytes[off::REPORTED_TCB + 7] += 1;
    let e =
        amd::verify_vcek_binding(&certs.vcek, &Report::from_bytes(&bytes).unwrap()).unwrap_err();
    assert!(e.contains("microcode"), "{e}");
    // Another chip.
    let mut bytes = *r.bytes();
    bytes[off::CHIP_ID] ^= 1;
    let e =
        amd::verify_vcek_binding(&certs.vcek, &Report::from_bytes(&bytes).unwrap()).unwrap_err();
    assert!(e.contains("CHIP_ID"), "{e}");
    // Out of the validity period (the VCEK expires in 2030).
    let late = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let e = amd::verify_chain(&certs, &amd::amd_arks(), late).unwrap_err();
    assert!(e.contains("VCEK: not valid now"), "{e}");
    // The ARK is pinned: not trusted without AMD's roots.
    let e = amd::verify_chain(&certs, &[], fixed_now()).unwrap_err();
    assert!(e.contains("not a trusted root"), "{e}");
}

#[test]
fn amd_arks_are_the_real_roots() {
    let certs = amd::load_dir(&milan_dir()).unwrap();
    let h: [u8; 32] = Sha256::digest(certs.ark.spki_der().unwrap()).into();
    assert_eq!(amd::amd_arks()[0].spki_sha256, h);
    assert!(amd::amd_arks().iter().all(|a| a.spki_sha256 != [0; 32]));
}

// ---------------------------------------------------------------------------
// Test PKI

const CHIP_ID: [u8; 64] = [0xC1; 64];
/// Milan layout: bootloader 3, TEE 0, SNP 8, microcode 0x73.
const REPORTED_TCB: u64 = u64::from_le_bytes([3, 0, 0, 0, 0, 0, 8, 0x73]);
const MEASUREMENT: [u8; 48] = [0x4d; 48];

struct Profile {
    issuer: Name,
    subject: Name,
    extensions: Vec<Extension>,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }
    fn get_subject(&self) -> Name {
        self.subject.clone()
    }
    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        _tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(self.extensions.clone())
    }
}

fn name(cn: &str) -> Name {
    Name::from_str(&format!("CN={cn},O=Vellum test,C=US")).unwrap()
}

fn validity() -> Validity {
    Validity::from_now(Duration::from_secs(3600 * 24 * 365 * 5)).unwrap()
}

type PssKey = rsa::pss::SigningKey<Sha384>;

fn rsa_key(file: &str) -> PssKey {
    let pem =
        std::fs::read_to_string(manifest_dir().join("tests/data/test-keys").join(file)).unwrap();
    PssKey::new(rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap())
}

fn rsa_cert(
    signer: &PssKey,
    issuer: &str,
    subject: &str,
    spki: SubjectPublicKeyInfoOwned,
    extensions: Vec<Extension>,
) -> Cert {
    let profile = Profile {
        issuer: name(issuer),
        subject: name(subject),
        extensions,
    };
    let b = CertificateBuilder::new(profile, SerialNumber::from(1u32), validity(), spki).unwrap();
    let cert = b.build::<_, rsa::pss::Signature>(signer).unwrap();
    Cert::parse(&cert.to_der().unwrap()).unwrap()
}

fn ext(oid: &str, value: &impl Encode) -> Extension {
    Extension {
        extn_id: ObjectIdentifier::new_unwrap(oid),
        critical: false,
        extn_value: OctetString::new(value.to_der().unwrap()).unwrap(),
    }
}

fn vcek_extensions() -> Vec<Extension> {
    let tcb = REPORTED_TCB.to_le_bytes();
    vec![
        ext("1.3.6.1.4.1.3704.1.2", &Ia5String::new("Milan-B0").unwrap()),
        ext("1.3.6.1.4.1.3704.1.3.1", &u32::from(tcb[0])),
        ext("1.3.6.1.4.1.3704.1.3.2", &u32::from(tcb[1])),
        ext("1.3.6.1.4.1.3704.1.3.3", &u32::from(tcb[6])),
        ext("1.3.6.1.4.1.3704.1.3.8", &u32::from(tcb[7])),
        ext(
            "1.3.6.1.4.1.3704.1.4",
            &OctetString::new(CHIP_ID.to_vec()).unwrap(),
        ),
    ]
}

struct Pki {
    ark: Cert,
    ask: Cert,
    vcek: Cert,
    vcek_key: P384SigningKey,
    /// A VCEK for another key, correctly signed by the ASK.
    other_vcek: Cert,
    /// The right VCEK key, but signed by the ARK's key in the ASK's name.
    forged_vcek: Cert,
    ark_trust: TrustedArk,
}

fn p384_key() -> P384SigningKey {
    P384SigningKey::from(p384::SecretKey::try_generate().unwrap())
}

fn p384_spki(k: &P384SigningKey) -> SubjectPublicKeyInfoOwned {
    SubjectPublicKeyInfoOwned::from_key(k.verifying_key()).unwrap()
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ark_key = rsa_key("ark.key.pem");
        let ask_key = rsa_key("ask.key.pem");
        let rsa_spki = |k: &PssKey| {
            SubjectPublicKeyInfoOwned::from_key(&rsa::RsaPublicKey::from(k.as_ref())).unwrap()
        };
        let ark = rsa_cert(&ark_key, "ARK-Test", "ARK-Test", rsa_spki(&ark_key), vec![]);
        let ask = rsa_cert(&ark_key, "ARK-Test", "SEV-Test", rsa_spki(&ask_key), vec![]);
        let vcek_key = p384_key();
        let vcek = rsa_cert(
            &ask_key,
            "SEV-Test",
            "SEV-VCEK",
            p384_spki(&vcek_key),
            vcek_extensions(),
        );
        let other_vcek = rsa_cert(
            &ask_key,
            "SEV-Test",
            "SEV-VCEK",
            p384_spki(&p384_key()),
            vcek_extensions(),
        );
        let forged_vcek = rsa_cert(
            &ark_key,
            "SEV-Test",
            "SEV-VCEK",
            p384_spki(&vcek_key),
            vcek_extensions(),
        );
        let ark_trust = TrustedArk {
            spki_sha256: Sha256::digest(ark.spki_der().unwrap()).into(),
            name: "test ARK".into(),
        };
        Pki {
            ark,
            ask,
            vcek,
            vcek_key,
            other_vcek,
            forged_vcek,
            ark_trust,
        }
    })
}

/// Writes ark.pem, ask.pem and vcek.der (mixed, as a user may have them).
fn cert_dir(vcek: &Cert) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vellum-verify-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = pki();
    let pem = |c: &Cert| c.cert.to_pem(x509_cert::der::pem::LineEnding::LF).unwrap();
    std::fs::write(dir.join("ark.pem"), pem(&p.ark)).unwrap();
    std::fs::write(dir.join("ask.pem"), pem(&p.ask)).unwrap();
    std::fs::write(dir.join("vcek.der"), &vcek.der).unwrap();
    dir
}

#[test]
fn test_chain_verifies_and_rejects_forgeries() {
    let p = pki();
    let trusted = [p.ark_trust.clone()];
    let dir = |vcek: &Cert| CertDir {
        ark: p.ark.clone(),
        ask: p.ask.clone(),
        vcek: vcek.clone(),
    };
    amd::verify_chain(&dir(&p.vcek), &trusted, SystemTime::now()).unwrap();
    amd::verify_chain(&dir(&p.other_vcek), &trusted, SystemTime::now()).unwrap();
    let e = amd::verify_chain(&dir(&p.forged_vcek), &trusted, SystemTime::now()).unwrap_err();
    assert!(e.contains("VCEK: signature does not verify"), "{e}");
    // ASK and ARK swapped.
    let swapped = CertDir {
        ark: p.ask.clone(),
        ask: p.ark.clone(),
        vcek: p.vcek.clone(),
    };
    let t2 = [TrustedArk {
        spki_sha256: Sha256::digest(p.ask.spki_der().unwrap()).into(),
        name: "x".into(),
    }];
    assert!(amd::verify_chain(&swapped, &t2, SystemTime::now()).is_err());
}

// ---------------------------------------------------------------------------
// In-process HTTPS guest

/// What the fake guest does wrong.
#[derive(Clone, Default)]
struct Tamper {
    measurement: bool,
    other_nonce: bool,
    other_cert_binding: bool,
    debug: bool,
    vmpl1: bool,
    bad_signature_byte: bool,
    json_cert_differs: bool,
    version1: bool,
    status_503: bool,
    malformed_json: bool,
    json_fields_lie: bool,
}

fn self_signed(cn: &str) -> (Vec<u8>, Vec<u8>) {
    let key = p384_key();
    let profile = Profile {
        issuer: name(cn),
        subject: name(cn),
        // An extension makes it X.509 v3, which webpki requires.
        extensions: vec![ext(
            "2.5.29.19",
            &x509_cert::ext::pkix::BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        )],
    };
    let b = CertificateBuilder::new(
        profile,
        SerialNumber::from(7u32),
        validity(),
        p384_spki(&key),
    )
    .unwrap();
    let cert = b.build::<_, p384::ecdsa::DerSignature>(&key).unwrap();
    let pkcs8 = key.to_pkcs8_der().unwrap().as_bytes().to_vec();
    (cert.to_der().unwrap(), pkcs8)
}

fn spki_of(cert: &[u8]) -> Vec<u8> {
    Cert::parse(cert).unwrap().spki_der().unwrap()
}

fn guest_report(served_cert: &[u8], nonce: &[u8], t: &Tamper) -> [u8; REPORT_LEN] {
    let mut r = [0u8; REPORT_LEN];
    let version: u32 = if t.version1 { 1 } else { 2 };
    r[off::VERSION..off::VERSION + 4].copy_from_slice(&version.to_le_bytes());
    let mut policy: u64 = 0x30000;
    if t.debug {
        policy |= report::POLICY_DEBUG;
    }
    r[off::POLICY..off::POLICY + 8].copy_from_slice(&policy.to_le_bytes());
    let vmpl: u32 = u32::from(t.vmpl1);
    r[off::VMPL..off::VMPL + 4].copy_from_slice(&vmpl.to_le_bytes());
    r[off::SIGNATURE_ALGO..off::SIGNATURE_ALGO + 4].copy_from_slice(&1u32.to_le_bytes());
    r[off::REPORTED_TCB..off::REPORTED_TCB + 8].copy_from_slice(&REPORTED_TCB.to_le_bytes());
    r[off::CHIP_ID..off::CHIP_ID + 64].copy_from_slice(&CHIP_ID);
    let spki = if t.other_cert_binding {
        spki_of(&self_signed("other").0)
    } else {
        spki_of(served_cert)
    };
    let nonce_used: &[u8] = if t.other_nonce {
        b"an older nonce"
    } else {
        nonce
    };
    r[off::REPORT_DATA..off::REPORT_DATA + 64]
        .copy_from_slice(&expected_report_data(&spki, nonce_used));
    let m = if t.measurement {
        [0x11; 48]
    } else {
        MEASUREMENT
    };
    r[off::MEASUREMENT..off::MEASUREMENT + 48].copy_from_slice(&m);
    let sig = id_block::sign(&pki().vcek_key, &r[..off::SIGNATURE]).unwrap();
    r[off::SIGNATURE..].copy_from_slice(&sig);
    if t.bad_signature_byte {
        r[off::SIG_S + 5] ^= 0x40;
    }
    r
}

fn guest_response(served_cert: &[u8], nonce: &[u8], t: &Tamper) -> (u16, String) {
    if t.status_503 {
        return (
            503,
            r#"{"error":"not running under SEV-SNP","detail":"no SEV-SNP (CPUID 0x8000001F)"}"#
                .into(),
        );
    }
    if t.malformed_json {
        return (200, r#"{"version":1,"report":"#.into());
    }
    let report = guest_report(served_cert, nonce, t);
    let cert = if t.json_cert_differs {
        self_signed("imposter").0
    } else {
        served_cert.to_vec()
    };
    let spki_hash = Sha256::digest(spki_of(served_cert));
    let (spki_field, rd_field) = if t.json_fields_lie {
        (hex::encode(&[0u8; 32]), hex::encode(&[0u8; 64]))
    } else {
        (
            hex::encode(&spki_hash),
            hex::encode(&report[off::REPORT_DATA..off::REPORT_DATA + 64]),
        )
    };
    let body = json!({
        "version": 1,
        "format": "vellum-attestation-v1",
        "nonce": hex::encode(nonce),
        "report_data_formula": "SHA-512(\"vellum-ratls-v1\" || SHA-256(SPKI) || nonce)",
        "spki_sha256": spki_field,
        "report_data": rd_field,
        "certificate": BASE64.encode(&cert),
        "report": BASE64.encode(report),
    });
    (200, body.to_string())
}

/// Serves one HTTPS connection on 127.0.0.1; returns the URL.
fn serve_once(t: Tamper) -> (String, JoinHandle<()>) {
    let (cert, key) = self_signed("vellum");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert.clone())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let handle = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tls.read(&mut buf).unwrap();
            assert!(n > 0, "client closed early");
            req.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&req)
            .lines()
            .next()
            .unwrap()
            .to_string();
        let nonce_hex = line
            .strip_prefix("GET /attestation?nonce=")
            .and_then(|r| r.strip_suffix(" HTTP/1.1"))
            .unwrap_or_else(|| panic!("unexpected request line {line}"));
        let nonce = hex::decode(nonce_hex).unwrap();
        let (status, body) = guest_response(&cert, &nonce, &t);
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(resp.as_bytes()).unwrap();
        tls.conn.send_close_notify();
        let _ = tls.flush();
    });
    (url, handle)
}

const NONCE: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn options(url: &str, certs: Option<&Cert>) -> Options {
    let p = pki();
    let mut trusted_arks = amd::amd_arks();
    trusted_arks.push(p.ark_trust.clone());
    Options {
        url: url.to_string(),
        measurement: MEASUREMENT,
        nonce: hex::decode(NONCE).unwrap(),
        certs: certs.map(|v| CertDir {
            ark: p.ark.clone(),
            ask: p.ask.clone(),
            vcek: v.clone(),
        }),
        trusted_arks,
        allow_debug: false,
        timeout: Duration::from_secs(10),
        now: SystemTime::now(),
    }
}

fn run(t: Tamper, opts: impl FnOnce(&str) -> Options) -> Result<Outcome, String> {
    let (url, h) = serve_once(t);
    let out = verify(&opts(&url));
    h.join().unwrap();
    out
}

fn status_of(o: &Outcome, name: &str) -> Status {
    o.checks.iter().find(|c| c.name == name).unwrap().status
}

/// Every check but `except` passed.
fn only_failed(o: &Outcome, failed: &[&str]) {
    for c in &o.checks {
        let want = if failed.contains(&c.name) {
            Status::Fail
        } else {
            Status::Ok
        };
        assert_eq!(c.status, want, "{}: {}\n{}", c.name, c.detail, o.text());
    }
    assert_eq!(o.passed(), failed.is_empty());
}

#[test]
fn full_attestation_passes() {
    let p = pki();
    let o = run(Tamper::default(), |u| options(u, Some(&p.vcek))).unwrap();
    only_failed(&o, &[]);
    assert!(o.full());
    let text = o.text();
    assert!(
        text.contains("result: VERIFIED: full attestation"),
        "{text}"
    );
    let names: Vec<_> = o.checks.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "certificate",
            "report_data",
            "measurement",
            "policy",
            "vmpl",
            "version",
            "chain",
            "vcek",
            "signature"
        ]
    );
    let j = o.json();
    assert_eq!(j["verified"], true);
    assert_eq!(j["full_attestation"], true);
    assert_eq!(j["report"]["measurement"], hex::encode(&MEASUREMENT));
}

#[test]
fn without_certs_passes_but_is_not_a_full_attestation() {
    let o = run(Tamper::default(), |u| options(u, None)).unwrap();
    assert!(o.passed());
    assert!(!o.full());
    assert_eq!(status_of(&o, "signature"), Status::Warn);
    let text = o.text();
    assert!(text.contains("WARN  signature"), "{text}");
    assert!(text.contains("NOT a full attestation"), "{text}");
    assert_eq!(o.json()["full_attestation"], false);
}

#[test]
fn wrong_measurement_fails() {
    let p = pki();
    let o = run(
        Tamper {
            measurement: true,
            ..Tamper::default()
        },
        |u| options(u, Some(&p.vcek)),
    )
    .unwrap();
    only_failed(&o, &["measurement"]);
    assert!(o.text().contains("result: FAILED (measurement)"));
}

#[test]
fn report_data_for_another_nonce_fails() {
    let o = run(
        Tamper {
            other_nonce: true,
            ..Tamper::default()
        },
        |u| options(u, Some(&pki().vcek)),
    )
    .unwrap();
    only_failed(&o, &["report_data"]);
}

#[test]
fn report_data_for_another_certificate_fails() {
    let o = run(
        Tamper {
            other_cert_binding: true,
            ..Tamper::default()
        },
        |u| options(u, Some(&pki().vcek)),
    )
    .unwrap();
    only_failed(&o, &["report_data"]);
}

#[test]
fn our_nonce_differs_from_the_guests_fails() {
    // The guest answered for NONCE; check that response against another nonce.
    let (url, h) = serve_once(Tamper::default());
    let target = fetch::parse_url(&url).unwrap();
    let f = fetch::fetch_attestation(&target, NONCE, Duration::from_secs(10)).unwrap();
    h.join().unwrap();
    let att = parse_response(f.status, &f.body).unwrap();
    let mut opts = options(&url, None);
    opts.nonce = vec![0xee; 32];
    let checks = check_attestation(&f.peer_cert, &att, &opts);
    let c = checks.iter().find(|c| c.name == "report_data").unwrap();
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("instead of ours"), "{}", c.detail);
}

#[test]
fn json_fields_are_not_trusted() {
    // Lying consistency fields do not change the verdict, but are reported.
    let o = run(
        Tamper {
            json_fields_lie: true,
            ..Tamper::default()
        },
        |u| options(u, Some(&pki().vcek)),
    )
    .unwrap();
    only_failed(&o, &[]);
    let c = o.checks.iter().find(|c| c.name == "report_data").unwrap();
    assert!(
        c.detail.contains("spki_sha256 field is not"),
        "{}",
        c.detail
    );
    assert!(
        c.detail.contains("report_data field is not"),
        "{}",
        c.detail
    );
}

#[test]
fn debug_policy_fails_unless_allowed() {
    let t = Tamper {
        debug: true,
        ..Tamper::default()
    };
    let o = run(t.clone(), |u| options(u, Some(&pki().vcek))).unwrap();
    only_failed(&o, &["policy"]);
    assert!(
        o.checks[3].detail.contains("DEBUG"),
        "{}",
        o.checks[3].detail
    );
    let o = run(t, |u| {
        let mut opts = options(u, Some(&pki().vcek));
        opts.allow_debug = true;
        opts
    })
    .unwrap();
    only_failed(&o, &[]);
}

#[test]
fn vmpl_1_fails() {
    let o = run(
        Tamper {
            vmpl1: true,
            ..Tamper::default()
        },
        |u| options(u, Some(&pki().vcek)),
    )
    .unwrap();
    only_failed(&o, &["vmpl"]);
}

#[test]
fn version_1_fails() {
    let o = run(
        Tamper {
            version1: true,
            ..Tamper::default()
        },
        |u| options(u, Some(&pki().vcek)),
    )
    .unwrap();
    only_failed(&o, &["version"]);
}

#[test]
fn bad_signature_byte_fails() {
    let o = run(
        Tamper {
            bad_signature_byte: true,
            ..Tamper::default()
        },
        |u| options(u, Some(&pki().vcek)),
    )
    .unwrap();
    only_failed(&o, &["signature"]);
}

#[test]
fn wrong_vcek_fails() {
    // A genuine-looking VCEK (signed by the ASK) for another key.
    let o = run(Tamper::default(), |u| options(u, Some(&pki().other_vcek))).unwrap();
    only_failed(&o, &["signature"]);
    // The right key, but not signed by the ASK.
    let o = run(Tamper::default(), |u| options(u, Some(&pki().forged_vcek))).unwrap();
    only_failed(&o, &["chain"]);
}

#[test]
fn untrusted_ark_fails() {
    let o = run(Tamper::default(), |u| {
        let mut opts = options(u, Some(&pki().vcek));
        opts.trusted_arks = amd::amd_arks();
        opts
    })
    .unwrap();
    only_failed(&o, &["chain"]);
    assert!(o.checks[6].detail.contains("not a trusted root"));
}

#[test]
fn certificate_in_json_differs_from_handshake_fails() {
    let o = run(
        Tamper {
            json_cert_differs: true,
            ..Tamper::default()
        },
        |u| options(u, Some(&pki().vcek)),
    )
    .unwrap();
    only_failed(&o, &["certificate"]);
}

#[test]
fn not_under_snp_503_is_an_error() {
    let e = run(
        Tamper {
            status_503: true,
            ..Tamper::default()
        },
        |u| options(u, None),
    )
    .unwrap_err();
    assert!(e.contains("NOT running under SEV-SNP"), "{e}");
    assert!(e.contains("not running under SEV-SNP"), "{e}");
    assert!(e.contains("CPUID 0x8000001F"), "{e}");
}

#[test]
fn malformed_json_is_an_error() {
    let e = run(
        Tamper {
            malformed_json: true,
            ..Tamper::default()
        },
        |u| options(u, None),
    )
    .unwrap_err();
    assert!(e.contains("malformed response"), "{e}");
    for (body, want) in [
        (r#"[1]"#, "not a JSON object"),
        (r#"{"version":2}"#, "unsupported response version 2"),
        (
            r#"{"version":1,"format":"x"}"#,
            "unsupported response format",
        ),
        (r#"{"version":1,"report":"AAAA"}"#, "no \"certificate\""),
        (
            r#"{"version":1,"certificate":"AA==","report":"AAAA"}"#,
            "3 bytes, expected 1184",
        ),
        (
            r#"{"version":1,"certificate":"%%","report":""}"#,
            "not base64",
        ),
    ] {
        let e = parse_response(200, body.as_bytes()).unwrap_err();
        assert!(e.contains(want), "{body}: {e}");
    }
    let e = parse_response(404, b"not found").unwrap_err();
    assert!(e.contains("HTTP 404"), "{e}");
    let e = parse_response(429, b"").unwrap_err();
    assert!(e.contains("rate-limiting"), "{e}");
}

#[test]
fn cli_end_to_end_with_cert_dir() {
    let p = pki();
    let dir = cert_dir(&p.vcek);
    let (url, h) = serve_once(Tamper::default());
    let args = format!(
        "--url {url} --measurement {} --nonce {NONCE} --certs {} --trust-ark {} --format json",
        hex::encode(&MEASUREMENT),
        dir.display(),
        hex::encode(&p.ark_trust.spki_sha256)
    );
    let out = verify_command(&words(&args)).unwrap();
    h.join().unwrap();
    assert!(out.passed, "{}", out.text);
    let j: Value = serde_json::from_str(&out.text).unwrap();
    assert_eq!(j["full_attestation"], true, "{}", out.text);
    assert_eq!(j["nonce"], NONCE);

    // Text output, failing measurement: passed = false (the CLI exits 1).
    let (url, h) = serve_once(Tamper::default());
    let args = format!(
        "--url {url} --measurement {} --allow-debug",
        hex::encode(&[0u8; 48])
    );
    let out = verify_command(&words(&args)).unwrap();
    h.join().unwrap();
    assert!(!out.passed);
    assert!(out.text.contains("FAIL  measurement"), "{}", out.text);
    assert!(out.text.contains("WARN  signature"), "{}", out.text);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn argument_errors_come_before_connecting() {
    // A listener that must never see a connection.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let m = hex::encode(&MEASUREMENT);
    let cases = [
        (
            format!("--url {url} --measurement {m} --nonce {}", "ab".repeat(33)),
            "at most 32",
        ),
        (
            format!("--url {url} --measurement {m} --nonce xyz1"),
            "is not hex",
        ),
        (
            format!("--url {url} --measurement {m} --nonce abc"),
            "is not hex",
        ),
        (format!("--url {url} --measurement {m} --nonce 0x"), "empty"),
        (format!("--url {url}"), "--measurement HEX, or --image PATH"),
        (format!("--url {url} --measurement 1234"), "--measurement"),
        (
            format!("--url {url} --measurement {m} --vcpus 2"),
            "excludes",
        ),
        (
            format!("--url {url} --image /nonexistent/v.bin"),
            "cannot read image",
        ),
        (format!("--measurement {m}"), "--url"),
        (format!("--url http://x:1 --measurement {m}"), "https://"),
        (format!("--url https://x:0 --measurement {m}"), "bad port"),
        (
            format!("--url {url} --measurement {m} --format xml"),
            "text or json",
        ),
        (
            format!("--url {url} --measurement {m} --trust-ark 12"),
            "64 hex digits",
        ),
        (
            format!("--url {url} --measurement {m} --certs /nonexistent"),
            "no ark.pem",
        ),
        (
            format!("--url {url} --measurement {m} --bogus"),
            "unknown argument",
        ),
    ];
    for (args, want) in cases {
        let e = verify_command(&words(&args)).unwrap_err();
        assert!(e.contains(want), "{args}: {e}");
    }
    // The library refuses a too-long nonce too.
    let mut opts = options(&url, None);
    opts.nonce = vec![1; 33];
    assert!(verify(&opts).unwrap_err().contains("1 to 32 bytes"));
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "something connected"
    );
    assert_eq!(verify_command(&words("--help")).unwrap().text, VERIFY_USAGE);
}

#[test]
fn nonce_default_is_32_random_bytes() {
    let m = hex::encode(&MEASUREMENT);
    let a = parse_args(&words(&format!("--url https://h:1 --measurement {m}")))
        .unwrap()
        .unwrap();
    let b = parse_args(&words(&format!("--url https://h:1 --measurement {m}")))
        .unwrap()
        .unwrap();
    assert_eq!(a.0.nonce.len(), 32);
    assert_ne!(a.0.nonce, b.0.nonce);
    assert_eq!(parse_nonce("0xAB").unwrap(), vec![0xab]);
}

#[test]
fn url_parsing() {
    let t = |h: &str, p| fetch::Target {
        host: h.into(),
        port: p,
    };
    assert_eq!(
        fetch::parse_url("https://10.0.2.15:8443").unwrap(),
        t("10.0.2.15", 8443)
    );
    assert_eq!(
        fetch::parse_url("https://vellum.example/").unwrap(),
        t("vellum.example", 443)
    );
    assert_eq!(
        fetch::parse_url("https://[::1]:4433").unwrap(),
        t("::1", 4433)
    );
    assert!(fetch::parse_url("https://h:1/attestation").is_err());
    assert!(fetch::parse_url("https://:1").is_err());
}

#[test]
fn expected_report_data_formula() {
    // SHA-512("vellum-ratls-v1" || SHA-256(spki) || nonce), computed by hand.
    let spki = b"spki";
    let nonce = [7u8; 32];
    let mut m = b"vellum-ratls-v1".to_vec();
    m.extend_from_slice(&Sha256::digest(spki));
    m.extend_from_slice(&nonce);
    let want: [u8; 64] = Sha512::digest(&m).into();
    assert_eq!(expected_report_data(spki, &nonce), want);
}

// ---------------------------------------------------------------------------
// `image verify --report`: a saved report, offline

/// A scratch file path for a report.
fn report_file(bytes: &[u8]) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "vellum-verify-report-{}-{}.bin",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn saved_report_is_checked_offline() {
    let p = pki();
    let dir = cert_dir(&p.vcek);
    let (cert, _) = self_signed("vellum");
    let nonce = hex::decode(NONCE).unwrap();
    let report = guest_report(&cert, &nonce, &Tamper::default());
    let rd = hex::encode(&report[off::REPORT_DATA..off::REPORT_DATA + 64]);
    let good = report_file(&report);
    let base = format!(
        "--measurement {} --certs {} --trust-ark {}",
        hex::encode(&MEASUREMENT),
        dir.display(),
        hex::encode(&p.ark_trust.spki_sha256)
    );
    let run = |file: &PathBuf, extra: &str| {
        verify_command(&words(&format!(
            "--report {} {base} {extra}",
            file.display()
        )))
        .unwrap()
    };

    // Everything checked: verified, with the offline checks in order.
    let out = run(&good, &format!("--report-data {rd} --format json"));
    assert!(out.passed, "{}", out.text);
    let j: Value = serde_json::from_str(&out.text).unwrap();
    assert_eq!(j["full_attestation"], true, "{}", out.text);
    assert_eq!(j["url"], Value::Null);
    assert_eq!(j["report_file"], good.display().to_string());
    let names: Vec<_> = j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "report_data",
            "measurement",
            "policy",
            "vmpl",
            "version",
            "chain",
            "vcek",
            "signature"
        ]
    );
    let out = run(&good, &format!("--report-data {rd}"));
    assert!(
        out.text.contains("result: VERIFIED: the saved report"),
        "{}",
        out.text
    );
    assert!(out.text.contains("offline"), "{}", out.text);

    // Without --report-data: passes, but says what was not checked.
    let out = run(&good, "");
    assert!(out.passed, "{}", out.text);
    assert!(out.text.contains("WARN  report_data"), "{}", out.text);
    assert!(
        out.text
            .contains("but report_data NOT checked: NOT a full attestation"),
        "{}",
        out.text
    );

    // Other REPORT_DATA than expected.
    let out = run(&good, &format!("--report-data {}", "ab".repeat(64)));
    assert!(!out.passed);
    assert!(out.text.contains("FAIL  report_data"), "{}", out.text);
    assert!(
        out.text.contains("result: FAILED (report_data)"),
        "{}",
        out.text
    );

    // A signed byte changed (HOST_DATA, which no other check reads): only the
    // signature fails.
    let mut bytes = report;
    bytes[off::HOST_DATA] ^= 1;
    let flipped = report_file(&bytes);
    let out = run(&flipped, &format!("--report-data {rd}"));
    assert!(!out.passed);
    assert!(
        out.text.contains("result: FAILED (signature)"),
        "{}",
        out.text
    );

    // The same report without trusting the test ARK: the chain fails.
    let out = verify_command(&words(&format!(
        "--report {} --measurement {} --certs {}",
        good.display(),
        hex::encode(&MEASUREMENT),
        dir.display()
    )))
    .unwrap();
    assert!(!out.passed);
    assert!(out.text.contains("result: FAILED (chain)"), "{}", out.text);

    // Another measurement expected.
    let out = verify_command(&words(&format!(
        "--report {} --measurement {} --certs {} --trust-ark {}",
        good.display(),
        hex::encode(&[0u8; 48]),
        dir.display(),
        hex::encode(&p.ark_trust.spki_sha256)
    )))
    .unwrap();
    assert!(
        out.text.contains("result: FAILED (measurement)"),
        "{}",
        out.text
    );

    // A VCEK for another key.
    let other = cert_dir(&p.other_vcek);
    let out = verify_command(&words(&format!(
        "--report {} --measurement {} --certs {} --trust-ark {}",
        good.display(),
        hex::encode(&MEASUREMENT),
        other.display(),
        hex::encode(&p.ark_trust.spki_sha256)
    )))
    .unwrap();
    assert!(
        out.text.contains("result: FAILED (signature)"),
        "{}",
        out.text
    );

    for path in [good, flipped] {
        let _ = std::fs::remove_file(path);
    }
    for d in [dir, other] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn saved_real_amd_report_verifies_offline() {
    let r = milan_report();
    let path = milan_dir().join("report.bin");
    let args = format!(
        "--report {} --measurement {} --report-data {} --certs {}",
        path.display(),
        hex::encode(r.measurement()),
        hex::encode(r.report_data()),
        milan_dir().display()
    );
    let out = verify_command(&words(&args)).unwrap();
    assert!(out.passed, "{}", out.text);
    assert!(out.text.contains("AMD ARK-Milan"), "{}", out.text);
    assert!(
        out.text.contains("result: VERIFIED: the saved report"),
        "{}",
        out.text
    );
}

#[test]
fn saved_report_argument_errors() {
    let m = hex::encode(&MEASUREMENT);
    let short_file = report_file(&[0u8; 100]);
    let f = short_file.display();
    let cases = [
        (
            format!("--report {f} --measurement {m} --url https://h:1"),
            "--url (a running guest) or --report (a saved report), not both",
        ),
        (
            format!("--report {f} --measurement {m} --nonce 00"),
            "--nonce is only for a running guest",
        ),
        (
            format!("--report {f} --measurement {m} --save-report x"),
            "--save-report is only for a running guest",
        ),
        (
            format!("--report {f} --measurement {m} --report-data 12"),
            "not 128 hex digits",
        ),
        (
            format!("--report {f}"),
            "--measurement HEX, or --image PATH",
        ),
        (
            format!("--report /nonexistent/r.bin --measurement {m}"),
            "cannot read /nonexistent/r.bin",
        ),
        (
            format!("--report {f} --measurement {m}"),
            "100 bytes, not a 1184-byte",
        ),
        (
            format!("--url https://h:1 --measurement {m} --report-data 00"),
            "--report-data is for --report",
        ),
    ];
    for (args, want) in cases {
        let e = verify_command(&words(&args)).unwrap_err();
        assert!(e.contains(want), "{args}: {e}");
    }
    assert_eq!(
        verify_command(&words(&format!("--report {f} --help")))
            .unwrap()
            .text,
        VERIFY_USAGE
    );
    let _ = std::fs::remove_file(short_file);
}

#[test]
fn raw_hardware_id_that_parses_as_der_is_taken_as_is() {
    // AMD's VCEKs hold the 64-byte chip ID raw. One that begins 04 3E is
    // also a well-formed DER OCTET STRING of 62 bytes: it must still match.
    let mut chip_id = [0x5a; 64];
    chip_id[0] = 0x04;
    chip_id[1] = 0x3e;
    let p = pki();
    let mut extensions = vcek_extensions();
    let hw = extensions.last_mut().unwrap();
    hw.extn_value = OctetString::new(chip_id.to_vec()).unwrap();
    let vcek = rsa_cert(
        &rsa_key("ask.key.pem"),
        "SEV-Test",
        "SEV-VCEK",
        p384_spki(&p.vcek_key),
        extensions,
    );
    let mut bytes = [0u8; REPORT_LEN];
    bytes[off::REPORTED_TCB..off::REPORTED_TCB + 8].copy_from_slice(&REPORTED_TCB.to_le_bytes());
    bytes[off::CHIP_ID..off::CHIP_ID + 64].copy_from_slice(&chip_id);
    let r = Report::from_bytes(&bytes).unwrap();
    let ok = amd::verify_vcek_binding(&vcek, &r).unwrap();
    assert!(ok.contains("hardware ID = CHIP_ID"), "{ok}");
    bytes[off::CHIP_ID + 63] ^= 1;
    let e = amd::verify_vcek_binding(&vcek, &Report::from_bytes(&bytes).unwrap()).unwrap_err();
    assert!(e.contains("CHIP_ID"), "{e}");
}
