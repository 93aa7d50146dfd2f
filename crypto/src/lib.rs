//! meshd's cryptographic building blocks.
//!
//! - [`Identity`]: a node's ed25519 key pair, the x25519 key Noise uses (derived from it), and
//!   the node's [`Address`] in `fc00::/8`, which is the BLAKE2b-128 hash of the public key.
//! - [`noise`]: Noise handshakes (XX when the peer's key is unknown, IK when it is pinned,
//!   optional PSK as a network secret) and a stateless transport with explicit counters, on
//!   ChaCha20-Poly1305 or, when both ends have AES instructions, AES-256-GCM.
//! - [`ReplayWindow`]: a sliding window that accepts reordered packets and drops replays.
#![deny(unsafe_code)]

mod identity;
pub mod noise;
mod replay;
pub mod simulated;

pub use identity::{Address, Identity, KeyError, PublicKey, Signature};
pub use replay::ReplayWindow;

/// The 32-byte Noise PSK for a network secret (any string): BLAKE2b-256 over a context
/// string and the secret, so the same secret gives the same PSK on every node.
pub fn network_psk(secret: &str) -> [u8; 32] {
    use blake2::{digest::consts::U32, Blake2b, Digest};
    let mut h = Blake2b::<U32>::new();
    h.update(b"meshd network secret v1\0");
    h.update(secret.as_bytes());
    h.finalize().into()
}
