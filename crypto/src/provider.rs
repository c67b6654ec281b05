//! The rustls [`CryptoProvider`] for Vellum.
//!
//! # Choice of primitives (measured)
//!
//! Host, one core, `cargo bench -p vellum-crypto --bench aead`, in-place
//! seal/open, MB/s (10^6 B/s):
//!
//! | AEAD                          | 16 KiB seal | 16 KiB open | 1400 B seal | 1400 B open |
//! |-------------------------------|-------------|-------------|-------------|-------------|
//! | ring 0.17 AES-256-GCM         |       9132  |       8485  |       3858  |       4862  |
//! | aes-gcm 0.11 AES-256-GCM      |       4054  |       3744  |       2752  |       2746  |
//! | ring 0.17 ChaCha20-Poly1305   |       1601  |       1954  |       1319  |       1351  |
//! | chacha20poly1305 0.11         |        880  |        923  |        351  |        312  |
//!
//! ring is the fastest by a wide margin (BoringSSL's AES-NI/PCLMUL/AVX
//! assembly, with CPU dispatch at run time) and is `no_std`. So the bulk path
//! (AEAD, HKDF/HMAC, hashes) is rustls' `ring` cipher suites. One catch:
//! upstream ring 0.17 compiles its assembly only for known OSes, so for
//! `target_os = "none"` the library builds but the *link* fails (undefined
//! `ring_core_0_17_14__aes_gcm_*`, `gcm_ghash_clmul`, …; ring issue #1793).
//! The build uses ring 0.17.14 with `"none"` added to its ELF-ABI OS list,
//! made at set-up time by `scripts/patch-ring.py` and wired in by the root
//! `[patch.crates-io]`; see `crypto/README.md`.
//!
//! What is *not* ring: ring's key exchange and ECDSA signing draw randomness
//! from its sealed `SystemRandom` (getrandom), which we cannot point at the
//! kernel's RNG. So:
//! - key exchange: X25519 (`x25519-dalek`) and P-256 ECDH (`p256`), with
//!   ephemeral secrets drawn from the kernel [`EntropySource`](crate::EntropySource);
//! - signing: P-256 ECDSA (`p256`, RFC 6979 deterministic nonces), see
//!   [`crate::identity`];
//! - `secure_random` (hello randoms, etc.): the kernel [`EntropySource`](crate::EntropySource).
//!
//! All three zeroize their secrets on drop.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use p256::elliptic_curve::sec1::ToSec1Point;
use rustls::crypto::ring::cipher_suite;
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, KeyProvider, SharedSecret, SupportedKxGroup,
};
use rustls::pki_types::{PrivateKeyDer, UnixTime};
use rustls::sign::SigningKey;
use rustls::time_provider::TimeProvider;
use rustls::{Error, NamedGroup, PeerMisbehaved, SupportedCipherSuite};
use zeroize::Zeroize;

use crate::identity::P256SigningKey;
use crate::rng::{ProviderRandom, SharedEntropy};

/// Cipher suites, in server preference order: AES-256-GCM first (the one we
/// accelerate and the one the tests pin), then AES-128-GCM, then ChaCha20.
/// TLS 1.2 ECDHE-ECDSA suites follow for old clients (our key is ECDSA P-256).
pub static CIPHER_SUITES: &[SupportedCipherSuite] = &[
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// Builds Vellum's [`CryptoProvider`]: ring cipher suites, X25519 and P-256
/// key exchange and randomness from `rng`, P-256 PKCS#8 key loading.
///
/// rustls wants `&'static` key-exchange groups and RNG, so each call leaks
/// four small objects (a few dozen bytes) that hold `rng`. Call it once at boot
/// and share the `Arc` (tests call it a handful of times).
pub fn provider(rng: SharedEntropy) -> Arc<CryptoProvider> {
    let secure_random: &'static ProviderRandom = Box::leak(Box::new(ProviderRandom(rng.clone())));
    let x25519: &'static X25519Group = Box::leak(Box::new(X25519Group { rng: rng.clone() }));
    let p256: &'static P256Group = Box::leak(Box::new(P256Group { rng }));
    let key_provider: &'static P256KeyProvider = Box::leak(Box::new(P256KeyProvider));
    Arc::new(CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        kx_groups: vec![
            x25519 as &dyn SupportedKxGroup,
            p256 as &dyn SupportedKxGroup,
        ],
        signature_verification_algorithms: rustls::crypto::ring::default_provider()
            .signature_verification_algorithms,
        secure_random,
        key_provider,
    })
}

/// A provider restricted to some key-exchange groups and cipher suites
/// (filtering `base`); handy for tests and for pinning a deployment.
pub fn restricted(
    base: &CryptoProvider,
    suites: &[SupportedCipherSuite],
    groups: &[NamedGroup],
) -> Arc<CryptoProvider> {
    let mut p = base.clone();
    p.cipher_suites.retain(|s| suites.contains(s));
    p.kx_groups.retain(|g| groups.contains(&g.name()));
    Arc::new(p)
}

/// rustls' [`TimeProvider`] fed by a kernel clock closure returning seconds
/// since the UNIX epoch (`None` when there is no clock yet).
///
/// The server only uses the time for session-ticket bookkeeping (we issue no
/// tickets) and never checks a client certificate, so a coarse or absent
/// clock is harmless.
pub struct KernelClock(Box<dyn Fn() -> Option<u64> + Send + Sync>);

impl KernelClock {
    /// Wraps a UNIX-time source.
    pub fn new(now: impl Fn() -> Option<u64> + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self(Box::new(now)))
    }

    /// A clock that always answers `None` (no RTC available).
    pub fn none() -> Arc<Self> {
        Self::new(|| None)
    }
}

impl fmt::Debug for KernelClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KernelClock").field(&(self.0)()).finish()
    }
}

impl TimeProvider for KernelClock {
    fn current_time(&self) -> Option<UnixTime> {
        (self.0)().map(|s| UnixTime::since_unix_epoch(core::time::Duration::from_secs(s)))
    }
}

/// Draws 32 random bytes from `rng` into a buffer that is wiped on drop.
fn random32(rng: &SharedEntropy) -> Result<zeroize::Zeroizing<[u8; 32]>, Error> {
    let mut b = zeroize::Zeroizing::new([0u8; 32]);
    rng.fill(&mut b[..])
        .map_err(|_| Error::FailedToGetRandomBytes)?;
    Ok(b)
}

// ---------------------------------------------------------------- X25519 --

struct X25519Group {
    rng: SharedEntropy,
}

impl fmt::Debug for X25519Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("X25519")
    }
}

impl SupportedKxGroup for X25519Group {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let bytes = random32(&self.rng)?;
        // `StaticSecret` zeroizes on drop (x25519-dalek `zeroize` feature); it is
        // used once, for this handshake only.
        let secret = x25519_dalek::StaticSecret::from(*bytes);
        let public = x25519_dalek::PublicKey::from(&secret);
        Ok(Box::new(X25519Active {
            secret,
            public: public.to_bytes(),
        }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

struct X25519Active {
    secret: x25519_dalek::StaticSecret,
    public: [u8; 32],
}

impl ActiveKeyExchange for X25519Active {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, Error> {
        let peer: [u8; 32] = peer_pub_key
            .try_into()
            .map_err(|_| Error::from(PeerMisbehaved::InvalidKeyShare))?;
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        // Reject low-order points (all-zero output), as ring and RFC 8446 §7.4.2 do.
        if !shared.was_contributory() {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

// ----------------------------------------------------------------- P-256 --

struct P256Group {
    rng: SharedEntropy,
}

impl fmt::Debug for P256Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("secp256r1")
    }
}

impl SupportedKxGroup for P256Group {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        // Rejection sampling: a random 256-bit string is a valid scalar
        // (0 < k < n) except with probability ~2^-32.
        for _ in 0..8 {
            let bytes = random32(&self.rng)?;
            if let Ok(secret) = p256::SecretKey::from_slice(&bytes[..]) {
                let public = secret.public_key().to_sec1_point(false).as_bytes().to_vec();
                return Ok(Box::new(P256Active { secret, public }));
            }
        }
        Err(Error::FailedToGetRandomBytes)
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::secp256r1
    }
}

struct P256Active {
    /// Zeroized on drop by `elliptic-curve`.
    secret: p256::SecretKey,
    public: Vec<u8>,
}

impl ActiveKeyExchange for P256Active {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, Error> {
        // TLS 1.3 (RFC 8446 §4.2.8.2) and TLS 1.2 with our point-format
        // offer: uncompressed points only.
        if peer_pub_key.len() != 65 || peer_pub_key[0] != 0x04 {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        // `from_sec1_bytes` checks that the point is on the curve and not identity.
        let peer = p256::PublicKey::from_sec1_bytes(peer_pub_key)
            .map_err(|_| Error::from(PeerMisbehaved::InvalidKeyShare))?;
        let shared = self.secret.diffie_hellman(&peer);
        let mut raw: [u8; 32] = (*shared.raw_secret_bytes()).into();
        let out = SharedSecret::from(&raw[..]);
        raw.zeroize();
        Ok(out)
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::secp256r1
    }
}

// ------------------------------------------------------------ key loading --

/// Loads P-256 ECDSA keys from PKCS#8 DER (the only key type we sign with).
/// Normally unused: [`crate::Identity`] hands its key to rustls directly.
#[derive(Debug)]
struct P256KeyProvider;

impl KeyProvider for P256KeyProvider {
    fn load_private_key(
        &self,
        key_der: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn SigningKey>, Error> {
        match &key_der {
            PrivateKeyDer::Pkcs8(der) => P256SigningKey::from_pkcs8_der(der.secret_pkcs8_der())
                .map(|k| Arc::new(k) as Arc<dyn SigningKey>)
                .ok_or_else(|| Error::General("only P-256 PKCS#8 keys are supported".into())),
            _ => Err(Error::General(
                "only P-256 PKCS#8 keys are supported".into(),
            )),
        }
    }
}

/// Which bulk cipher this machine runs faster (see [`measure_bulk_ciphers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkSpeed {
    /// Cycles (of the caller's clock) to seal and open the probe with
    /// AES-256-GCM (median of the measured rounds).
    pub aes_256_gcm: u64,
    /// The same for ChaCha20-Poly1305.
    pub chacha20_poly1305: u64,
}

impl BulkSpeed {
    /// Whether ChaCha20-Poly1305 was faster.
    pub fn prefer_chacha(&self) -> bool {
        self.chacha20_poly1305 < self.aes_256_gcm
    }
}

/// Times both AEADs on a 16 KiB record with the caller's cycle counter: one
/// seal and one open (what a TLS echo costs per record), five rounds after a
/// warm-up round, median. On CPUs with AES-NI and PCLMULQDQ, AES-GCM wins by
/// a wide margin (the table above); where those instructions are emulated
/// (QEMU's TCG) the result depends on the build: ring's stitched AES-GCM code
/// ran either at about 22 or at about 370 cycles per byte after its first
/// call, from one build to the next (ChaCha20-Poly1305: about 75), and the
/// TLS echo followed (36 against 6 MB/s). A first call can be fast in a build
/// whose steady state is slow, so the warm-up round is not counted and the
/// median, not the best, decides. This is the measurement behind
/// [`provider_for`]'s preference order.
pub fn measure_bulk_ciphers(cycles: &dyn Fn() -> u64) -> BulkSpeed {
    use ring::aead::{
        AES_256_GCM, Aad, Algorithm, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey,
    };
    const ROUNDS: usize = 5;
    let mut buf = alloc::vec![0x5au8; 16 * 1024 + 16];
    let mut time = |alg: &'static Algorithm| -> u64 {
        let key = LessSafeKey::new(UnboundKey::new(alg, &[7u8; 32]).expect("32-byte key"));
        let mut took = [u64::MAX; ROUNDS + 1];
        for (i, slot) in took.iter_mut().enumerate() {
            let nonce = || Nonce::assume_unique_for_key([i as u8; 12]);
            let (record, tag) = buf.split_at_mut(16 * 1024);
            let t0 = cycles();
            let sealed = key.seal_in_place_separate_tag(nonce(), Aad::empty(), record);
            if let Ok(t) = sealed {
                tag.copy_from_slice(t.as_ref());
            }
            let opened = key.open_in_place(nonce(), Aad::empty(), &mut buf).is_ok();
            let t = cycles().wrapping_sub(t0);
            // A failed round trip (cannot happen) must not win the comparison.
            *slot = if sealed.is_ok() && opened {
                t
            } else {
                u64::MAX
            };
        }
        let rounds = &mut took[1..];
        rounds.sort_unstable();
        rounds[ROUNDS / 2]
    };
    BulkSpeed {
        aes_256_gcm: time(&AES_256_GCM),
        chacha20_poly1305: time(&CHACHA20_POLY1305),
    }
}

/// [`provider`] with the cipher suites ordered for this machine: AES-GCM
/// first, or ChaCha20-Poly1305 first when `speed` says it is faster. The
/// server then applies this order ([`crate::server_config`] ignores the
/// client's), so clients get the fastest cipher the machine has.
pub fn provider_for(rng: SharedEntropy, speed: BulkSpeed) -> Arc<CryptoProvider> {
    let base = provider(rng);
    if !speed.prefer_chacha() {
        return base;
    }
    let mut suites = base.cipher_suites.clone();
    // Stable: ChaCha20 suites first, the rest in their usual order.
    suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        )
    });
    Arc::new(CryptoProvider {
        cipher_suites: suites,
        ..(*base).clone()
    })
}
