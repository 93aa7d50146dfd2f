//! Stand-in signatures for the simulator, and only for it.
//!
//! Signing and checking ed25519 signatures was half of the CPU time of a simulated mesh (every
//! lookup answer and path probe is signed). `sims` may switch, for its whole process, to a
//! keyed hash that anyone could forge: [`use_for_simulation`]. Everything else about the node
//! code stays the same. The daemon never calls it, and nothing turns it off again, so a
//! process is either a simulator or a real node from its first line.

use std::sync::atomic::{AtomicBool, Ordering};

use blake2::digest::consts::U64;
use blake2::{Blake2b, Digest};

use crate::{PublicKey, Signature};

static SIMULATED: AtomicBool = AtomicBool::new(false);

/// Makes every signature in this process a forgeable BLAKE2b-512 of key and message, and
/// key validation skip the point check. For the simulator only: with it, nothing a node
/// signs proves anything.
pub fn use_for_simulation() {
    SIMULATED.store(true, Ordering::Relaxed);
}

/// Whether [`use_for_simulation`] was called.
pub fn signatures() -> bool {
    SIMULATED.load(Ordering::Relaxed)
}

pub(crate) fn sign(key: &PublicKey, msg: &[u8]) -> Signature {
    let mut h = Blake2b::<U64>::new();
    h.update(b"meshd simulated signature\0");
    h.update(key.0);
    h.update(msg);
    Signature(h.finalize().into())
}
