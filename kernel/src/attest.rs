//! SNP attestation reports through the guest-request protocol (MSG_REPORT_REQ).
//!
//! Not wired yet: the GHCB guest-request path lands with the SNP integration;
//! until then a report request under SNP fails cleanly (503 on /attestation).

use vellum_crypto::AttestError;

/// A report whose REPORT_DATA is `report_data`.
pub fn report(_report_data: &[u8; 64]) -> Result<[u8; 1184], AttestError> {
    log::warn!("attestation: SNP guest requests are not wired into this build yet");
    Err(AttestError::Failed)
}
