//! AMD's certificate chain (ARK → ASK → VCEK) and the report signature.
//!
//! The chain as AMD's Key Distribution Service issues it (and `snpguest fetch
//! ca` / `snpguest fetch vcek` store it; `docs/snp-reference.md` §5.5 "AMD's
//! certificate chain"):
//! - ARK: AMD Root Key, self-signed, RSA-4096, RSASSA-PSS with SHA-384;
//! - ASK: AMD SEV Key, RSA-4096, signed by the ARK (RSASSA-PSS SHA-384);
//! - VCEK: the chip- and TCB-specific P-384 key, signed by the ASK
//!   (RSASSA-PSS SHA-384); extensions 1.3.6.1.4.1.3704.1.3.x carry the TCB it
//!   was derived for, 1.3.6.1.4.1.3704.1.4 the chip ID.
//!
//! A self-signed ARK proves nothing by itself, so the ARK's key must also be
//! one we trust: AMD's Milan, Genoa or Turin root ([`AMD_ARKS`]), or one given
//! explicitly (`--trust-ark`).
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use p384::ecdsa::VerifyingKey as P384Key;
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use rsa::RsaPublicKey;
use rsa::pkcs1::RsaPssParamsOwned;
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256, Sha384};
use x509_cert::Certificate;
use x509_cert::der::asn1::OctetString;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, DecodePem, Encode};

use super::hex;
use super::report::{FLAG_MASK_CHIP_ID, Report, SIG_ALGO_ECDSA_P384_SHA384};

const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
/// VCEK extension: product name (IA5String, e.g. "Milan-B0").
const EXT_PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
/// VCEK extension: hardware (chip) ID, 64 bytes.
const EXT_HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
/// VCEK TCB extensions (INTEGER each).
const EXT_BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
const EXT_TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
const EXT_SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
const EXT_UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");

/// RSA modulus size AMD uses for the ARK and the ASK.
pub const AMD_RSA_BITS: usize = 4096;
/// PSS salt length (bytes) in AMD's certificates: the SHA-384 output size.
pub const PSS_SALT_LEN: u8 = 48;

/// A trusted root: SHA-256 of the ARK's SubjectPublicKeyInfo (DER) and a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedArk {
    /// SHA-256 of the SPKI DER.
    pub spki_sha256: [u8; 32],
    /// What to call it in the output.
    pub name: String,
}

/// AMD's SEV-SNP roots: SHA-256 of the ARK SPKI (DER) for Milan, Genoa and
/// Turin, from the ARK certificates AMD's KDS serves (`/vcek/v1/<product>/cert_chain`,
/// also built into the `sev` crate); the Milan one is checked against AMD's
/// real chain and a real report in the tests.
pub const AMD_ARKS: [(&str, &str); 3] = [
    (
        "AMD ARK-Milan",
        "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9",
    ),
    (
        "AMD ARK-Genoa",
        "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831",
    ),
    (
        "AMD ARK-Turin",
        "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08",
    ),
];

/// [`AMD_ARKS`] as [`TrustedArk`]s.
pub fn amd_arks() -> Vec<TrustedArk> {
    AMD_ARKS
        .iter()
        .map(|(name, h)| TrustedArk {
            spki_sha256: hex::decode_array(h).unwrap_or([0; 32]),
            name: (*name).to_string(),
        })
        .collect()
}

/// A parsed certificate and its DER.
#[derive(Clone, Debug)]
pub struct Cert {
    /// The DER bytes.
    pub der: Vec<u8>,
    /// The parsed certificate.
    pub cert: Certificate,
}

impl Cert {
    /// Parses PEM (one CERTIFICATE block) or DER. Only canonical DER is
    /// accepted (the signed bytes are re-encoded from the parsed structure).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).ok();
        let cert = match text.filter(|t| t.trim_start().starts_with("-----BEGIN")) {
            Some(t) => Certificate::from_pem(t.trim()).map_err(|e| format!("bad PEM: {e}"))?,
            None => Certificate::from_der(bytes).map_err(|e| format!("bad DER: {e}"))?,
        };
        let der = cert
            .to_der()
            .map_err(|e| format!("cannot re-encode: {e}"))?;
        if text.is_none() && der != bytes {
            return Err("not canonical DER".into());
        }
        Ok(Self { der, cert })
    }

    /// The SubjectPublicKeyInfo, DER.
    pub fn spki_der(&self) -> Result<Vec<u8>, String> {
        self.cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| format!("cannot encode the SPKI: {e}"))
    }

    /// The subject as a string.
    pub fn subject(&self) -> String {
        self.cert.tbs_certificate().subject().to_string()
    }

    fn common_name(&self) -> String {
        let s = self.subject();
        s.split(',')
            .find_map(|p| p.trim().strip_prefix("CN="))
            .map_or(s.clone(), str::to_string)
    }

    fn extension(&self, oid: ObjectIdentifier) -> Option<&[u8]> {
        self.cert
            .tbs_certificate()
            .extensions()?
            .iter()
            .find(|e| e.extn_id == oid)
            .map(|e| e.extn_value.as_bytes())
    }
}

/// The three certificates from a `--certs` directory.
#[derive(Clone, Debug)]
pub struct CertDir {
    /// AMD Root Key.
    pub ark: Cert,
    /// AMD SEV Key.
    pub ask: Cert,
    /// Versioned Chip Endorsement Key.
    pub vcek: Cert,
}

fn load_one(dir: &Path, name: &str) -> Result<Cert, String> {
    let mut tried = Vec::new();
    for ext in ["pem", "der", "crt", "cert"] {
        let path = dir.join(format!("{name}.{ext}"));
        match std::fs::read(&path) {
            Ok(bytes) => {
                return Cert::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tried.push(format!("{name}.{ext}"));
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
    }
    Err(format!(
        "{}: no {} (as `snpguest fetch ca pem DIR <product>` and `snpguest fetch vcek pem DIR \
         report.bin` store them)",
        dir.display(),
        tried.join(" or ")
    ))
}

/// Reads `ark`, `ask` and `vcek` (`.pem`, or `.der`) from `dir`.
pub fn load_dir(dir: &Path) -> Result<CertDir, String> {
    Ok(CertDir {
        ark: load_one(dir, "ark")?,
        ask: load_one(dir, "ask")?,
        vcek: load_one(dir, "vcek")?,
    })
}

fn rsa_key(cert: &Cert, what: &str) -> Result<RsaPublicKey, String> {
    let spki = cert.spki_der()?;
    RsaPublicKey::from_public_key_der(&spki).map_err(|e| format!("{what}: not an RSA key ({e})"))
}

/// Checks that `cert` is signed by `issuer_key` with RSASSA-PSS, SHA-384,
/// MGF1-SHA-384, 48-byte salt (the only scheme AMD uses).
fn check_pss_signature(cert: &Cert, issuer_key: &RsaPublicKey, what: &str) -> Result<(), String> {
    let c = &cert.cert;
    let alg = c.signature_algorithm();
    if alg != c.tbs_certificate().signature() {
        return Err(format!(
            "{what}: signature algorithm differs inside and outside the TBS"
        ));
    }
    if alg.oid != RSASSA_PSS {
        return Err(format!(
            "{what}: signature algorithm {} is not RSASSA-PSS",
            alg.oid
        ));
    }
    let params = alg
        .parameters
        .as_ref()
        .ok_or_else(|| format!("{what}: RSASSA-PSS without parameters"))?;
    let params_der = params
        .to_der()
        .map_err(|e| format!("{what}: bad RSASSA-PSS parameters: {e}"))?;
    let params = RsaPssParamsOwned::from_der(&params_der)
        .map_err(|e| format!("{what}: bad RSASSA-PSS parameters: {e}"))?;
    let mgf_hash = params.mask_gen.parameters.as_ref().map(|p| p.oid);
    if params.hash.oid != SHA384 || params.mask_gen.oid != MGF1 || mgf_hash != Some(SHA384) {
        return Err(format!(
            "{what}: RSASSA-PSS parameters are not SHA-384 with MGF1-SHA-384"
        ));
    }
    if params.salt_len != PSS_SALT_LEN {
        return Err(format!(
            "{what}: RSASSA-PSS salt length {} (AMD uses {PSS_SALT_LEN})",
            params.salt_len
        ));
    }
    let tbs = c
        .tbs_certificate()
        .to_der()
        .map_err(|e| format!("{what}: cannot encode the TBS: {e}"))?;
    let sig_bytes = c
        .signature()
        .as_bytes()
        .ok_or_else(|| format!("{what}: signature has unused bits"))?;
    let sig = rsa::pss::Signature::try_from(sig_bytes)
        .map_err(|e| format!("{what}: malformed signature: {e}"))?;
    rsa::pss::VerifyingKey::<Sha384>::new_with_salt_len(issuer_key.clone(), PSS_SALT_LEN.into())
        .verify(&tbs, &sig)
        .map_err(|_| format!("{what}: signature does not verify"))
}

fn check_validity(cert: &Cert, what: &str, now: SystemTime) -> Result<(), String> {
    let v = cert.cert.tbs_certificate().validity();
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let (nb, na) = (
        v.not_before.to_unix_duration(),
        v.not_after.to_unix_duration(),
    );
    if now < nb || now > na {
        return Err(format!(
            "{what}: not valid now (valid {} to {})",
            v.not_before, v.not_after
        ));
    }
    Ok(())
}

fn check_issuer(cert: &Cert, issuer: &Cert, what: &str) -> Result<(), String> {
    if cert.cert.tbs_certificate().issuer() != issuer.cert.tbs_certificate().subject() {
        return Err(format!(
            "{what}: issuer '{}' is not '{}'",
            cert.cert.tbs_certificate().issuer(),
            issuer.subject()
        ));
    }
    Ok(())
}

/// Checks ARK (trusted, self-signed, RSA-4096) → ASK (RSA-4096) → VCEK
/// (P-384), each signature RSASSA-PSS SHA-384, each certificate valid at
/// `now`. Returns a one-line description of the chain.
pub fn verify_chain(
    certs: &CertDir,
    trusted: &[TrustedArk],
    now: SystemTime,
) -> Result<String, String> {
    let CertDir { ark, ask, vcek } = certs;
    let ark_spki_hash: [u8; 32] = Sha256::digest(ark.spki_der()?).into();
    let root = trusted
        .iter()
        .find(|t| t.spki_sha256 == ark_spki_hash)
        .ok_or_else(|| {
            format!(
                "ARK '{}' (SPKI SHA-256 {}) is not a trusted root (AMD Milan/Genoa/Turin{})",
                ark.common_name(),
                hex::encode(&ark_spki_hash),
                if trusted.len() > AMD_ARKS.len() {
                    " or --trust-ark"
                } else {
                    ""
                }
            )
        })?;
    let ark_key = rsa_key(ark, "ARK")?;
    let ask_key = rsa_key(ask, "ASK")?;
    for (key, what) in [(&ark_key, "ARK"), (&ask_key, "ASK")] {
        let bits = key.size() * 8;
        if bits != AMD_RSA_BITS {
            return Err(format!(
                "{what}: RSA-{bits} key, AMD's is RSA-{AMD_RSA_BITS}"
            ));
        }
    }
    check_issuer(ark, ark, "ARK (self-signed)")?;
    check_pss_signature(ark, &ark_key, "ARK (self-signed)")?;
    check_issuer(ask, ark, "ASK")?;
    check_pss_signature(ask, &ark_key, "ASK")?;
    check_issuer(vcek, ask, "VCEK")?;
    check_pss_signature(vcek, &ask_key, "VCEK")?;
    vcek_key(vcek)?;
    for (c, what) in [(ark, "ARK"), (ask, "ASK"), (vcek, "VCEK")] {
        check_validity(c, what, now)?;
    }
    Ok(format!(
        "{} ({}, RSA-4096, self-signed) -> {} -> {} (P-384); RSASSA-PSS SHA-384 signatures",
        ark.common_name(),
        root.name,
        ask.common_name(),
        vcek.common_name()
    ))
}

/// The VCEK's P-384 public key.
pub fn vcek_key(vcek: &Cert) -> Result<P384Key, String> {
    P384Key::from_public_key_der(&vcek.spki_der()?)
        .map_err(|e| format!("VCEK: not an ECDSA P-384 key ({e})"))
}

fn ext_int(vcek: &Cert, oid: ObjectIdentifier) -> Option<u64> {
    u64::from_der(vcek.extension(oid)?).ok()
}

/// Checks that the VCEK is the one for this report: its hardware ID equals
/// CHIP_ID (unless the report masks it) and its TCB equals REPORTED_TCB.
pub fn verify_vcek_binding(vcek: &Cert, report: &Report) -> Result<String, String> {
    let mut notes = Vec::new();
    if report.flags() & FLAG_MASK_CHIP_ID != 0 {
        notes.push("CHIP_ID masked by the guest policy, hardware ID not compared".to_string());
    } else {
        let raw = vcek
            .extension(EXT_HW_ID)
            .ok_or("VCEK has no hardware ID extension (is it a VLEK?)")?;
        // AMD's KDS puts the 64 bytes in the extension value as they are;
        // accept a DER OCTET STRING around them too. A raw ID is taken as
        // is: it could happen to parse as DER (04 3E ...).
        let hwid = if raw.len() == report.chip_id().len() {
            raw.to_vec()
        } else {
            OctetString::from_der(raw).map_or_else(|_| raw.to_vec(), |o| o.into_bytes().into_vec())
        };
        if hwid != report.chip_id() {
            return Err(format!(
                "VCEK hardware ID {}… is not the report's CHIP_ID {}…",
                hex::encode(&hwid[..hwid.len().min(8)]),
                hex::encode(&report.chip_id()[..8])
            ));
        }
        notes.push("hardware ID = CHIP_ID".to_string());
    }
    let product = vcek
        .extension(EXT_PRODUCT_NAME)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    // REPORTED_TCB bytes: Milan/Genoa [bl, tee, 0, 0, 0, 0, snp, ucode];
    // Turin [fmc, bl, tee, snp, 0, 0, 0, ucode].
    let tcb = report.reported_tcb().to_le_bytes();
    let layout = if product.contains("Milan") || product.contains("Genoa") {
        Some([tcb[0], tcb[1], tcb[6], tcb[7]])
    } else if product.contains("Turin") {
        Some([tcb[1], tcb[2], tcb[3], tcb[7]])
    } else {
        None
    };
    match layout {
        Some(want) => {
            let names = ["bootloader", "TEE", "SNP", "microcode"];
            let oids = [EXT_BL_SPL, EXT_TEE_SPL, EXT_SNP_SPL, EXT_UCODE_SPL];
            for ((name, oid), want) in names.iter().zip(oids).zip(want) {
                let have = ext_int(vcek, oid)
                    .ok_or_else(|| format!("VCEK has no {name} SPL extension"))?;
                if have != u64::from(want) {
                    return Err(format!(
                        "VCEK {name} SPL {have} is not REPORTED_TCB's {want} (VCEK for another TCB)"
                    ));
                }
            }
            notes.push(format!(
                "TCB = REPORTED_TCB {:#018x}",
                report.reported_tcb()
            ));
        }
        None => notes.push("unknown product, TCB not compared".to_string()),
    }
    Ok(notes.join("; "))
}

/// Checks the report's signature (ECDSA P-384 over SHA-384 of bytes
/// `[0, 0x2A0)`) with the VCEK.
pub fn verify_report_signature(vcek: &Cert, report: &Report) -> Result<String, String> {
    if report.signature_algo() != SIG_ALGO_ECDSA_P384_SHA384 {
        return Err(format!(
            "signature algorithm {} is not ECDSA P-384 SHA-384",
            report.signature_algo()
        ));
    }
    match report.signing_key() {
        0 => {}
        1 => return Err("report signed by a VLEK; only VCEK chains are supported".into()),
        k => return Err(format!("report SIGNING_KEY {k}: not signed by a VCEK")),
    }
    let key = vcek_key(vcek)?;
    let sig = report.signature()?;
    let digest = Sha384::digest(report.signed_bytes());
    key.verify_prehash(&digest, &sig)
        .map_err(|_| "ECDSA P-384 signature does not verify with the VCEK".to_string())?;
    Ok("ECDSA P-384/SHA-384 over report[0..0x2A0] verifies with the VCEK".into())
}
