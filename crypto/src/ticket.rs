//! TLS session resumption without server state: a ticket is the session,
//! sealed with AES-256-GCM under a key drawn at boot (never leaves the guest;
//! a reboot invalidates every ticket, and the panic path wipes the heap it
//! lives in). rustls' own ticketer needs `std`; this is the `no_std` one.
//!
//! A ticket is `nonce (12 random bytes) ‖ ciphertext ‖ tag (16)`. The host
//! sees tickets only as ciphertext inside TLS records it cannot read; a client
//! that alters one just gets a full handshake.

use alloc::vec::Vec;
use core::fmt;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rustls::server::ProducesTickets;

use crate::rng::SharedEntropy;

/// How long a ticket is good for, seconds (within one boot).
pub const TICKET_LIFETIME_SECS: u32 = 6 * 60 * 60;

const TAG_LEN: usize = 16;
/// Domain separation for the ticket AEAD.
const AAD: &[u8] = b"vellum-tls-ticket-v1";

/// Seals and opens session tickets.
pub struct Ticketer {
    key: LessSafeKey,
    rng: SharedEntropy,
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ticketer")
    }
}

impl Ticketer {
    /// A ticketer with a fresh random key; `None` if the entropy source fails.
    pub fn new(rng: SharedEntropy) -> Option<Ticketer> {
        let mut k = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill(&mut k[..]).ok()?;
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k[..]).ok()?);
        Some(Ticketer { key, rng })
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut out[NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, sealed) = ticket.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(AAD), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use alloc::sync::Arc;

    use super::*;
    use crate::rng::{EntropySource, RngError};

    struct Counter(core::sync::atomic::AtomicU8);
    impl EntropySource for Counter {
        fn fill(&self, dest: &mut [u8]) -> Result<(), RngError> {
            for b in dest {
                *b = self.0.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        }
    }
    struct Broken;
    impl EntropySource for Broken {
        fn fill(&self, _: &mut [u8]) -> Result<(), RngError> {
            Err(RngError)
        }
    }

    fn ticketer() -> Ticketer {
        Ticketer::new(Arc::new(Counter(0.into()))).expect("ticketer")
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let t = ticketer();
        let plain = b"session state".to_vec();
        let a = t.encrypt(&plain).unwrap();
        let b = t.encrypt(&plain).unwrap();
        assert_eq!(a.len(), NONCE_LEN + plain.len() + TAG_LEN);
        assert_ne!(a, b, "a fresh nonce per ticket");
        assert!(!a.windows(plain.len()).any(|w| w == plain), "sealed");
        assert_eq!(t.decrypt(&a).as_deref(), Some(&plain[..]));
        assert_eq!(t.decrypt(&b).as_deref(), Some(&plain[..]));
        assert_eq!(t.lifetime(), TICKET_LIFETIME_SECS);
        assert!(t.enabled());
    }

    #[test]
    fn altered_short_or_foreign_tickets_are_refused() {
        let t = ticketer();
        let good = t.encrypt(b"state").unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 1;
            assert!(t.decrypt(&bad).is_none(), "byte {i} flipped");
        }
        assert!(t.decrypt(&good[..NONCE_LEN + TAG_LEN - 1]).is_none());
        assert!(t.decrypt(&[]).is_none());
        assert!(t.decrypt(&[0u8; 64]).is_none());
        // Another boot's key (another ticketer) cannot open it.
        let other = Ticketer::new(Arc::new(Counter(100.into()))).unwrap();
        assert!(other.decrypt(&good).is_none());
        assert!(Ticketer::new(Arc::new(Broken)).is_none());
    }
}
