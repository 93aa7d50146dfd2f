//! meshd's cryptographic building blocks.
//!
//! - [`Identity`]: a node's ed25519 key pair, the x25519 key Noise uses (derived from it), and
//!   the node's [`Address`] in `fc00::/8`, which is the BLAKE2b-128 hash of the public key.
//! - [`noise`]: Noise handshakes (XX when the peer's key is unknown, IK when it is pinned,
//!   optional PSK as a network secret) and a stateless transport with explicit counters.
//! - [`ReplayWindow`]: a sliding window that accepts reordered packets and drops replays.
#![deny(unsafe_code)]

mod identity;
pub mod noise;
mod replay;

pub use identity::{Address, Identity, KeyError, PublicKey, Signature};
pub use replay::ReplayWindow;
