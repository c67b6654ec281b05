//! HTTPS on 443 and TLS echo on 7443: the boot-time identity, the rustls
//! provider, and the two TLS services on the network stack. Plaintext, keys and
//! session secrets stay in private memory (heap); only ciphertext reaches the
//! TCP sockets and from there the shared pool.

use crate::{arch::cpu, clock};
use alloc::{boxed::Box, sync::Arc};
use vellum_crypto::{
    AttestError, Attestation, CertParams, EntropySource, Identity, KernelClock, ReportSource,
    RngError, Ticketer, TlsOver, measure_bulk_ciphers, provider_for, server_config,
};
use vellum_net::{
    http::HttpSession,
    services::{DynSession, EchoSession, PoolConfig, Services},
    smoltcp::time::Instant,
};

/// HTTPS port.
pub const HTTPS_PORT: u16 = 443;
/// TLS echo port.
pub const TLS_ECHO_PORT: u16 = 7443;

/// RDRAND as the entropy source (retries per Intel's guidance; fails cleanly).
#[derive(Debug)]
struct Rdrand;

impl EntropySource for Rdrand {
    fn fill(&self, dest: &mut [u8]) -> Result<(), RngError> {
        for chunk in dest.chunks_mut(8) {
            let v = cpu::rdrand64().ok_or(RngError)?;
            chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}

/// CPUID.1:ECX[30] (RDRAND). Under SEV-SNP this CPUID is answered by the #VC
/// handler from the CPUID page.
fn has_rdrand() -> bool {
    core::arch::x86_64::__cpuid(1).ecx & (1 << 30) != 0
}

/// Reports from the SNP firmware, when there is one.
struct Reports {
    snp: bool,
}

impl ReportSource for Reports {
    fn report(&self, report_data: &[u8; 64]) -> Result<[u8; 1184], AttestError> {
        if !self.snp {
            return Err(AttestError::NotSnp);
        }
        crate::attest::report(report_data)
    }
}

/// The "UNIX time" of boot for rustls' ticket clock (2026-01-01): only
/// differences matter (ticket age), see [`start`].
const TICKET_CLOCK_BASE: u64 = 1_767_225_600;

/// Generates the identity and adds HTTPS and TLS echo to `svc`.
pub fn start(svc: &mut Services, snp: bool) -> Result<(), &'static str> {
    if !has_rdrand() {
        return Err("the CPU has no RDRAND: no entropy for TLS keys");
    }
    let rng: Arc<dyn EntropySource> = Arc::new(Rdrand);
    let t0 = clock::micros();
    let identity = Identity::generate(rng.as_ref(), &CertParams::vellum(None))
        .map_err(|_| "could not generate the TLS identity")?;
    // Cipher preference by measurement on this machine (AES-GCM wins where
    // AES-NI/PCLMULQDQ are real; ChaCha20 wins where they are emulated).
    let speed = measure_bulk_ciphers(&cpu::rdtsc);
    log::info!(
        "tls: 16 KiB seal+open: AES-256-GCM {} cycles, ChaCha20-Poly1305 {} cycles: prefer {}",
        speed.aes_256_gcm,
        speed.chacha20_poly1305,
        if speed.prefer_chacha() {
            "ChaCha20-Poly1305"
        } else {
            "AES-GCM"
        }
    );
    // Session resumption by stateless tickets under a per-boot key. rustls
    // stamps tickets with the time and checks their age on return: the clock
    // is time since boot on a fixed base (there is no trusted wall clock
    // here, and tickets die with the boot anyway), never shown to anyone.
    let ticketer = Ticketer::new(rng.clone()).ok_or("no entropy for the ticket key")?;
    let uptime = KernelClock::new(|| Some(TICKET_CLOCK_BASE + clock::micros() / 1_000_000));
    let config = server_config(
        &identity,
        provider_for(rng, speed),
        uptime,
        Some(Arc::new(ticketer)),
    )
    .map_err(|_| "could not build the TLS configuration")?;
    log::info!(
        "tls: fresh P-256 identity in {} us; certificate {} bytes",
        clock::micros() - t0,
        identity.cert_der().len()
    );
    let attestation = Attestation::new(
        identity.cert_der().to_vec(),
        identity.spki_der().to_vec(),
        Box::new(Reports { snp }),
        Box::new(|| clock::micros() as i64),
        1000,
    );
    svc.set_attestation(Box::new(attestation));

    let https = {
        let config = config.clone();
        move |now: Instant| -> Box<DynSession> {
            let inner: Box<DynSession> =
                Box::new(HttpSession::new(vellum_net::http::HttpConfig::DEFAULT, now).secure());
            match TlsOver::new(config.clone(), inner) {
                Ok(s) => Box::new(s),
                Err(_) => Box::new(EchoSession::closed()),
            }
        }
    };
    let echo = move |_: Instant| -> Box<DynSession> {
        match TlsOver::new(config.clone(), Box::new(EchoSession::new(64 * 1024))) {
            Ok(s) => Box::new(s),
            Err(_) => Box::new(EchoSession::closed()),
        }
    };
    let small = PoolConfig {
        sockets: 16,
        rx_buffer: 16 * 1024,
        tx_buffer: 16 * 1024,
    };
    let bulk = PoolConfig {
        sockets: 4,
        rx_buffer: 64 * 1024,
        tx_buffer: 64 * 1024,
    };
    svc.add_service(HTTPS_PORT, small, Box::new(https))
        .map_err(|_| "port 443 in use")?;
    svc.add_service(TLS_ECHO_PORT, bulk, Box::new(echo))
        .map_err(|_| "port 7443 in use")?;
    Ok(())
}
