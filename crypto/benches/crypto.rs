//! Per-packet cost of the Noise transport that links (hop to hop) and sessions (end to end)
//! both use: one AEAD pass (ChaCha20-Poly1305, or AES-256-GCM where both ends have AES
//! instructions) plus the counter and the replay window. The `aes_*` benchmarks force
//! AES-256-GCM whatever the CPU: on one without AES instructions they measure ring's
//! software fallback, which meshd would never negotiate.
//!
//! `cargo bench -p meshd-crypto`; under `cargo test` each benchmark runs once.

use divan::counter::BytesCount;
use divan::Bencher;
use meshd_crypto::noise::{Handshake, Pattern, Suite, Transport, MAX_HANDSHAKE_LEN, TAG_LEN};
use meshd_crypto::Identity;
use rand::SeedableRng;

fn main() {
    divan::main();
}

/// An established pair on `suite`, built the way the unit tests in `crypto/src/noise.rs` do.
fn pair(suite: Suite) -> (Transport, Transport) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (a, b) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
    let aes = suite == Suite::Aes256Gcm;
    let mut i = Handshake::initiator(&a, Pattern::XX, None, None)
        .unwrap()
        .with_aes_offer(aes);
    let mut r = Handshake::responder(&b, Pattern::XX, None)
        .unwrap()
        .with_aes_offer(aes);
    let mut buf = [0u8; MAX_HANDSHAKE_LEN];
    let mut initiator_turn = true;
    while !(i.is_finished() && r.is_finished()) {
        if initiator_turn {
            let n = i.write_message(&mut buf).unwrap();
            r.read_message(&buf[..n]).unwrap();
        } else {
            let n = r.write_message(&mut buf).unwrap();
            i.read_message(&buf[..n]).unwrap();
        }
        initiator_turn = !initiator_turn;
    }
    let (tx, rx) = (i.into_transport().unwrap().0, r.into_transport().unwrap().0);
    assert_eq!((tx.suite(), rx.suite()), (suite, suite));
    (tx, rx)
}

const SIZES: [usize; 3] = [64, 1400, 16384];

/// Encrypt one packet (ChaCha20-Poly1305).
#[divan::bench(args = SIZES)]
fn encrypt(b: Bencher, len: usize) {
    bench_encrypt(b, len, Suite::ChaCha20Poly1305);
}

/// Encrypt on one side and decrypt (with the replay check) on the other: one packet across
/// one Noise hop (ChaCha20-Poly1305).
#[divan::bench(args = SIZES)]
fn encrypt_decrypt(b: Bencher, len: usize) {
    bench_encrypt_decrypt(b, len, Suite::ChaCha20Poly1305);
}

/// Encrypt one packet (AES-256-GCM).
#[divan::bench(args = SIZES)]
fn aes_encrypt(b: Bencher, len: usize) {
    bench_encrypt(b, len, Suite::Aes256Gcm);
}

/// One packet across one Noise hop (AES-256-GCM).
#[divan::bench(args = SIZES)]
fn aes_encrypt_decrypt(b: Bencher, len: usize) {
    bench_encrypt_decrypt(b, len, Suite::Aes256Gcm);
}

fn bench_encrypt(b: Bencher, len: usize, suite: Suite) {
    let (mut tx, _) = pair(suite);
    let plain = vec![0xabu8; len];
    let mut out = vec![0u8; len + TAG_LEN];
    b.counter(BytesCount::new(len))
        .bench_local(|| tx.encrypt(divan::black_box(&plain), &mut out).unwrap());
}

fn bench_encrypt_decrypt(b: Bencher, len: usize, suite: Suite) {
    let (mut tx, mut rx) = pair(suite);
    let plain = vec![0xabu8; len];
    let mut ct = vec![0u8; len + TAG_LEN];
    let mut pt = vec![0u8; len];
    b.counter(BytesCount::new(len)).bench_local(|| {
        let (c, n) = tx.encrypt(divan::black_box(&plain), &mut ct).unwrap();
        rx.decrypt(c, &ct[..n], &mut pt).unwrap()
    });
}

/// The fc00::/8 address of a key (BLAKE2b-128), computed on every key learned.
#[divan::bench]
fn address_of_key(b: Bencher) {
    let key = Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(1)).public_key();
    b.bench_local(|| divan::black_box(&key).address());
}
