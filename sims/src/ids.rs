//! Node identities for a run. Node `i` of a run with seed `s` always gets the identity ground
//! from a ChaCha RNG seeded by `(s, i)`, so a run is the same whatever the cache holds.
//! Grinding a key whose address starts with 0xfc costs ~256 ed25519 key generations
//! (~4 ms in release); the optional on-disk cache keeps the 32-byte seeds found, per sim seed,
//! so a 10,000-node run pays that once.

use std::io::Write;
use std::path::{Path, PathBuf};

use crypto::Identity;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// The identity of node `i` in a run seeded `seed` (slow: grinds keys).
pub fn generate(seed: u64, i: usize) -> Identity {
    let mut rng = ChaCha20Rng::seed_from_u64(
        seed.rotate_left(32) ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    Identity::generate(&mut rng)
}

/// Identities of nodes `0..n` for `seed`, read from and added to `cache` (a directory) if given.
pub fn identities(seed: u64, n: usize, cache: Option<&Path>) -> Vec<Identity> {
    let file: Option<PathBuf> = cache.map(|d| d.join(format!("ids-seed{seed}.bin")));
    let mut out: Vec<Identity> = Vec::with_capacity(n);
    if let Some(bytes) = file.as_ref().and_then(|f| std::fs::read(f).ok()) {
        for (i, chunk) in bytes.chunks_exact(32).take(n).enumerate() {
            let s: [u8; 32] = chunk.try_into().expect("32 bytes");
            match Identity::from_seed(&s) {
                Ok(id) => out.push(id),
                Err(_) => {
                    // A damaged cache: regenerate from here.
                    out.truncate(i);
                    break;
                }
            }
        }
    }
    let cached = out.len();
    for i in cached..n {
        out.push(generate(seed, i));
    }
    if let Some(f) = file {
        if n > cached {
            let _ = std::fs::create_dir_all(f.parent().unwrap_or(Path::new(".")));
            let tmp = f.with_extension("tmp");
            if let Ok(mut w) = std::fs::File::create(&tmp) {
                let mut ok = true;
                for id in &out {
                    ok &= w.write_all(&id.seed()).is_ok();
                }
                if ok {
                    let _ = std::fs::rename(&tmp, &f);
                }
            }
        }
    }
    out
}
