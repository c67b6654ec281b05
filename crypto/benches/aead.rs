//! AEAD bulk-throughput benchmark (host): `cargo bench -p vellum-crypto --bench aead`.
//!
//! Seals and opens one buffer per iteration, in place, with a fresh nonce each
//! time, at TLS-record sizes: 16 KiB (bulk) and 1.4 KiB (one MSS-sized record).
//! Prints MB/s (10^6 bytes per second) for ring 0.17 and RustCrypto
//! (aes-gcm 0.11, chacha20poly1305 0.11).

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

const SIZES: [usize; 2] = [16 * 1024, 1400];
const RUN_FOR: Duration = Duration::from_millis(400);

fn nonce_bytes(i: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    n
}

/// Runs `f` repeatedly for about `RUN_FOR` and returns MB/s for `len` bytes per call.
fn measure(len: usize, mut f: impl FnMut(u64)) -> f64 {
    // Warm-up.
    for i in 0..64 {
        f(i);
    }
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < RUN_FOR {
        for _ in 0..64 {
            f(i);
            i += 1;
        }
    }
    (i as f64 * len as f64) / start.elapsed().as_secs_f64() / 1e6
}

fn ring_bench(name: &str, alg: &'static ring::aead::Algorithm, len: usize) {
    let key = LessSafeKey::new(UnboundKey::new(alg, &[7u8; 32]).expect("key"));
    let mut buf = vec![0x5au8; len];
    let seal = measure(len, |i| {
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes(i)),
                Aad::from(&[0u8; 5]),
                &mut buf,
            )
            .expect("seal");
        let _ = black_box(tag);
    });
    // Open needs a valid tag: seal once, then open a copy each time.
    let plain = vec![0x5au8; len];
    let mut sealed = plain.clone();
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce_bytes(0)),
            Aad::from(&[0u8; 5]),
            &mut sealed,
        )
        .expect("seal");
    let mut work = sealed.clone();
    let open = measure(len, |_| {
        work.copy_from_slice(&sealed);
        let p = key
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes(0)),
                Aad::from(&[0u8; 5]),
                tag,
                &mut work,
                0..,
            )
            .expect("open");
        black_box(p);
    });
    report(name, len, seal, open);
}

fn rustcrypto_bench<A: AeadInOut + KeyInit>(name: &str, len: usize) {
    let key = A::new_from_slice(&[7u8; 32]).expect("key");
    let mut buf = vec![0x5au8; len];
    let seal = measure(len, |i| {
        let n = nonce_bytes(i);
        let tag = key
            .encrypt_inout_detached(
                n.as_slice().try_into().expect("nonce"),
                &[0u8; 5],
                buf.as_mut_slice().into(),
            )
            .expect("seal");
        black_box(tag);
    });
    let mut sealed = vec![0x5au8; len];
    let n0 = nonce_bytes(0);
    let tag = key
        .encrypt_inout_detached(
            n0.as_slice().try_into().expect("nonce"),
            &[0u8; 5],
            sealed.as_mut_slice().into(),
        )
        .expect("seal");
    let mut work = sealed.clone();
    let open = measure(len, |_| {
        work.copy_from_slice(&sealed);
        key.decrypt_inout_detached(
            n0.as_slice().try_into().expect("nonce"),
            &[0u8; 5],
            work.as_mut_slice().into(),
            &tag,
        )
        .expect("open");
        black_box(&work);
    });
    report(name, len, seal, open);
}

fn report(name: &str, len: usize, seal: f64, open: f64) {
    println!("{name:<34} {len:>6} B   seal {seal:>8.0} MB/s   open {open:>8.0} MB/s");
}

fn main() {
    println!("AEAD throughput, one core, in place (open includes a memcpy of the record)");
    for len in SIZES {
        ring_bench("ring 0.17 AES-256-GCM", &AES_256_GCM, len);
        rustcrypto_bench::<Aes256Gcm>("aes-gcm 0.11 AES-256-GCM", len);
        ring_bench("ring 0.17 ChaCha20-Poly1305", &CHACHA20_POLY1305, len);
        rustcrypto_bench::<ChaCha20Poly1305>("chacha20poly1305 0.11", len);
    }
}
