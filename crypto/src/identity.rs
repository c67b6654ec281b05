//! The guest's TLS identity: a boot-time ECDSA P-256 key and its self-signed
//! X.509 v3 certificate, plus the RA-TLS binding (`REPORT_DATA`).
//!
//! The key is generated inside the guest from the kernel's [`EntropySource`]
//! and lives only in private (encrypted) guest memory; `p256`'s signing key
//! zeroizes itself on drop. Signatures use RFC 6979 deterministic nonces, so
//! signing needs no randomness at all.
//!
//! RA-TLS flow (`docs/snp-reference.md` §5.6): generate the identity, compute
//! [`Identity::report_data`], ask the PSP for a report with it, then
//! [`Identity::reissue`] the certificate with the report in the
//! [`ATTESTATION_REPORT_OID`] extension. The key (hence the SPKI) stays the same.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;
use core::time::Duration;

use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use sha2::{Digest, Sha256, Sha512};
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::TbsCertificate;
use x509_cert::der::Encode;
use x509_cert::der::asn1::{GeneralizedTime, Ia5String, OctetString};
use x509_cert::der::oid::{AssociatedOid, ObjectIdentifier};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};
use x509_cert::time::{Time, Validity};

use crate::rng::EntropySource;

/// OID of the (non-critical) certificate extension carrying the raw 1184-byte
/// SNP attestation report as an OCTET STRING.
///
/// **Placeholder**: `1.3.6.1.4.1.58270.1.1` is the arc used by an existing SNP
/// RA-TLS crate (a3s-box-runtime; `docs/snp-reference.md` §5.6), chosen so that
/// its verifiers can read our certificates. Replace it if Vellum registers its
/// own enterprise arc; the verifier must use the same value.
pub const ATTESTATION_REPORT_OID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.58270.1.1");

/// Domain-separation label hashed first into [`report_data`].
pub const REPORT_DATA_LABEL: &[u8] = b"vellum-ratls-v1";

/// Largest nonce accepted by [`report_data`].
pub const MAX_NONCE_LEN: usize = 32;

/// `id-kp-serverAuth`.
const ID_KP_SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");

/// 2026-01-01T00:00:00Z, the default `notBefore` when there is no clock.
pub const DEFAULT_NOT_BEFORE: u64 = 1_767_225_600;
/// 2036-01-01T00:00:00Z, the default `notAfter` when there is no clock.
pub const DEFAULT_NOT_AFTER: u64 = 2_082_758_400;

/// Errors from identity generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// The entropy source failed.
    Rng,
    /// A nonce longer than [`MAX_NONCE_LEN`].
    NonceTooLong,
    /// Certificate encoding or signing failed (bad name, SAN, time …).
    Certificate(String),
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rng => f.write_str("entropy source failed"),
            Self::NonceTooLong => f.write_str("nonce longer than 32 bytes"),
            Self::Certificate(e) => write!(f, "certificate: {e}"),
        }
    }
}

fn cert_err(e: impl fmt::Display) -> IdentityError {
    IdentityError::Certificate(alloc::format!("{e}"))
}

/// What goes into the self-signed certificate.
#[derive(Debug, Clone)]
pub struct CertParams {
    /// Subject (and issuer) common name.
    pub common_name: String,
    /// IPv4 subject alternative names.
    pub ip_sans: Vec<[u8; 4]>,
    /// DNS subject alternative names.
    pub dns_sans: Vec<String>,
    /// `notBefore` in UNIX seconds.
    pub not_before: u64,
    /// `notAfter` in UNIX seconds.
    pub not_after: u64,
    /// Raw SNP attestation report to embed under [`ATTESTATION_REPORT_OID`].
    pub attestation_report: Option<Vec<u8>>,
}

impl CertParams {
    /// Vellum's defaults: CN=vellum, SANs IP 10.0.2.15, IP 127.0.0.1, DNS
    /// localhost. Valid for one year from `now` (UNIX seconds), or from
    /// 2026-01-01 to 2036-01-01 when there is no clock.
    pub fn vellum(now: Option<u64>) -> Self {
        let (not_before, not_after) = match now {
            Some(t) => (t, t.saturating_add(365 * 24 * 3600)),
            None => (DEFAULT_NOT_BEFORE, DEFAULT_NOT_AFTER),
        };
        Self {
            common_name: "vellum".into(),
            ip_sans: vec![[10, 0, 2, 15], [127, 0, 0, 1]],
            dns_sans: vec!["localhost".into()],
            not_before,
            not_after,
            attestation_report: None,
        }
    }
}

/// The TLS server identity: private key, certificate, SPKI.
pub struct Identity {
    key: Arc<P256SigningKey>,
    cert: CertificateDer<'static>,
    spki: Vec<u8>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("key", &"<P-256 private key>")
            .field("cert_len", &self.cert.len())
            .field("spki_len", &self.spki.len())
            .finish()
    }
}

impl Identity {
    /// Generates a fresh P-256 key from `rng` and a self-signed certificate
    /// for it. The serial number is 16 random bytes.
    pub fn generate(rng: &dyn EntropySource, params: &CertParams) -> Result<Self, IdentityError> {
        let mut key = None;
        for _ in 0..8 {
            let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
            rng.fill(&mut bytes[..]).map_err(|_| IdentityError::Rng)?;
            if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&bytes[..]) {
                key = Some(k);
                break;
            }
        }
        let key = key.ok_or(IdentityError::Rng)?;
        let key = Arc::new(P256SigningKey::new(key));
        let spki = key
            .key
            .verifying_key()
            .to_public_key_der()
            .map_err(cert_err)?
            .into_vec();
        let cert = build_cert(&key.key, rng, params)?;
        Ok(Self { key, cert, spki })
    }

    /// Issues a new self-signed certificate for the *same* key (e.g. once the
    /// attestation report is known). The old certificate is not revoked;
    /// build a new `ServerConfig` with the result.
    pub fn reissue(
        &self,
        rng: &dyn EntropySource,
        params: &CertParams,
    ) -> Result<Self, IdentityError> {
        Ok(Self {
            key: self.key.clone(),
            cert: build_cert(&self.key.key, rng, params)?,
            spki: self.spki.clone(),
        })
    }

    /// The DER `SubjectPublicKeyInfo` of the key (what the attestation binds).
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// The DER certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// `REPORT_DATA` binding this identity's key to `nonce`; see [`report_data`].
    pub fn report_data(&self, nonce: &[u8]) -> Result<[u8; 64], IdentityError> {
        report_data(&self.spki, nonce)
    }

    /// The certificate and signing key as rustls wants them.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::new(CertifiedKey::new(
            vec![self.cert.clone()],
            self.key.clone() as Arc<dyn SigningKey>,
        ))
    }
}

/// RA-TLS binding: `SHA-512("vellum-ratls-v1" || SHA-256(spki_der) || nonce)`,
/// the 64 bytes to put in the SNP report's `REPORT_DATA`. `nonce` may be empty
/// (boot-time report) and is at most [`MAX_NONCE_LEN`] bytes.
pub fn report_data(spki_der: &[u8], nonce: &[u8]) -> Result<[u8; 64], IdentityError> {
    if nonce.len() > MAX_NONCE_LEN {
        return Err(IdentityError::NonceTooLong);
    }
    let spki_hash = Sha256::digest(spki_der);
    let mut h = Sha512::new();
    h.update(REPORT_DATA_LABEL);
    h.update(spki_hash);
    h.update(nonce);
    Ok(h.finalize().into())
}

/// Our certificate profile: self-signed end entity for TLS serving.
struct SelfSignedServer<'a> {
    subject: Name,
    params: &'a CertParams,
}

impl BuilderProfile for SelfSignedServer<'_> {
    fn get_issuer(&self, subject: &Name) -> Name {
        subject.clone()
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
        let mut names = Vec::new();
        for dns in &self.params.dns_sans {
            names.push(GeneralName::DnsName(Ia5String::new(dns)?));
        }
        for ip in &self.params.ip_sans {
            names.push(GeneralName::IpAddress(OctetString::new(ip.to_vec())?));
        }
        let mut exts = vec![
            ext(
                BasicConstraints::OID,
                true,
                &BasicConstraints {
                    ca: false,
                    path_len_constraint: None,
                },
            )?,
            ext(
                KeyUsage::OID,
                true,
                &KeyUsage(KeyUsages::DigitalSignature.into()),
            )?,
            ext(
                ExtendedKeyUsage::OID,
                false,
                &ExtendedKeyUsage(vec![ID_KP_SERVER_AUTH]),
            )?,
        ];
        if !names.is_empty() {
            exts.push(ext(SubjectAltName::OID, false, &SubjectAltName(names))?);
        }
        if let Some(report) = &self.params.attestation_report {
            exts.push(Extension {
                extn_id: ATTESTATION_REPORT_OID,
                critical: false,
                extn_value: OctetString::new(OctetString::new(report.clone())?.to_der()?)?,
            });
        }
        Ok(exts)
    }
}

fn ext(
    oid: ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> x509_cert::der::Result<Extension> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

fn x509_time(unix: u64) -> Result<Time, IdentityError> {
    Ok(Time::GeneralTime(
        GeneralizedTime::from_unix_duration(Duration::from_secs(unix)).map_err(cert_err)?,
    ))
}

fn build_cert(
    key: &p256::ecdsa::SigningKey,
    rng: &dyn EntropySource,
    params: &CertParams,
) -> Result<CertificateDer<'static>, IdentityError> {
    if params.not_after <= params.not_before {
        return Err(IdentityError::Certificate(
            "notAfter must follow notBefore".into(),
        ));
    }
    let mut serial = [0u8; 16];
    rng.fill(&mut serial).map_err(|_| IdentityError::Rng)?;
    // Positive and exactly 16 octets (no sign bit, no leading zero).
    serial[0] = (serial[0] & 0x7f) | 0x40;
    let serial = SerialNumber::new(&serial).map_err(cert_err)?;
    let subject = Name::from_str(&alloc::format!("CN={}", params.common_name)).map_err(cert_err)?;
    let validity = Validity::new(x509_time(params.not_before)?, x509_time(params.not_after)?);
    let spki = SubjectPublicKeyInfoOwned::from_key(key.verifying_key()).map_err(cert_err)?;
    let profile = SelfSignedServer { subject, params };
    let builder = CertificateBuilder::new(profile, serial, validity, spki).map_err(cert_err)?;
    let cert = builder
        .build::<_, p256::ecdsa::DerSignature>(key)
        .map_err(cert_err)?;
    Ok(CertificateDer::from(cert.to_der().map_err(cert_err)?))
}

// ------------------------------------------------------ rustls signing key --

/// rustls [`SigningKey`] over a `p256` ECDSA key (ECDSA_NISTP256_SHA256 only).
pub(crate) struct P256SigningKey {
    key: Arc<p256::ecdsa::SigningKey>,
    spki: Vec<u8>,
}

impl P256SigningKey {
    fn new(key: p256::ecdsa::SigningKey) -> Self {
        let spki = key
            .verifying_key()
            .to_public_key_der()
            .map(|d| d.into_vec())
            .unwrap_or_default();
        Self {
            key: Arc::new(key),
            spki,
        }
    }

    pub(crate) fn from_pkcs8_der(der: &[u8]) -> Option<Self> {
        p256::ecdsa::SigningKey::from_pkcs8_der(der)
            .ok()
            .map(Self::new)
    }
}

impl fmt::Debug for P256SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("P256SigningKey")
    }
}

impl SigningKey for P256SigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(P256Signer(self.key.clone())) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

struct P256Signer(Arc<p256::ecdsa::SigningKey>);

impl fmt::Debug for P256Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("P256Signer")
    }
}

impl Signer for P256Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let sig: p256::ecdsa::Signature = self
            .0
            .try_sign(message)
            .map_err(|_| rustls::Error::General("ECDSA signing failed".into()))?;
        Ok(sig.to_der().as_bytes().to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}
