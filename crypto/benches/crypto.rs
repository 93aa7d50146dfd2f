//! Per-packet cost of the Noise transport that links (hop to hop) and sessions (end to end)
//! both use: one ChaCha20-Poly1305 pass plus snow's bookkeeping and the replay window.
//!
//! `cargo bench -p meshd-crypto`; under `cargo test` each benchmark runs once.

use divan::counter::BytesCount;
use divan::Bencher;
use meshd_crypto::noise::{Handshake, Pattern, Transport, MAX_HANDSHAKE_LEN, TAG_LEN};
use meshd_crypto::Identity;
use rand::SeedableRng;

fn main() {
    divan::main();
}

/// An established pair, built the way the unit tests in `crypto/src/noise.rs` do.
fn pair() -> (Transport, Transport) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (a, b) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
    let mut i = Handshake::initiator(&a, Pattern::XX, None, None).unwrap();
    let mut r = Handshake::responder(&b, Pattern::XX, None).unwrap();
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
    (i.into_transport().unwrap().0, r.into_transport().unwrap().0)
}

const SIZES: [usize; 3] = [64, 1400, 16384];

/// Encrypt one packet.
#[divan::bench(args = SIZES)]
fn encrypt(b: Bencher, len: usize) {
    let (mut tx, _) = pair();
    let plain = vec![0xabu8; len];
    let mut out = vec![0u8; len + TAG_LEN];
    b.counter(BytesCount::new(len))
        .bench_local(|| tx.encrypt(divan::black_box(&plain), &mut out).unwrap());
}

/// Encrypt on one side and decrypt (with the replay check) on the other: one packet across
/// one Noise hop.
#[divan::bench(args = SIZES)]
fn encrypt_decrypt(b: Bencher, len: usize) {
    let (mut tx, mut rx) = pair();
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
