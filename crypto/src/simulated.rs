//! Stand-in signatures and Diffie-Hellman for the simulator, and only for it.
//!
//! Signing and checking ed25519 signatures was half of the CPU time of a simulated mesh (every
//! lookup answer and path probe is signed), and X25519 most of a handshake's. `sims` may
//! switch, for its whole process, to a keyed hash that anyone could forge and to a
//! Diffie-Hellman whose secret anyone could compute ([`SimulatedDh`]):
//! [`use_for_simulation`]. Everything else about the node code stays the same: the same
//! messages, sizes and checks. The daemon never calls it, and nothing turns it off again, so a
//! process is either a simulator or a real node from its first line.

use std::sync::atomic::{AtomicBool, Ordering};

use blake2::digest::consts::U64;
use blake2::{Blake2b, Digest};

use snow::resolvers::CryptoResolver;

use crate::{PublicKey, Signature};

static SIMULATED: AtomicBool = AtomicBool::new(false);

/// Makes every signature in this process a forgeable BLAKE2b-512 of key and message, key
/// validation skip the point check, and Noise handshakes use [`SimulatedDh`]. For the
/// simulator only: with it, nothing a node signs proves anything and nothing it encrypts
/// is secret.
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

thread_local! {
    /// X25519 public keys of the static keys seen on this thread (each node's, computed
    /// once instead of at every handshake), and the X25519 form of ed25519 keys.
    static STATIC_PUBLIC: std::cell::RefCell<std::collections::HashMap<[u8; 32], [u8; 32]>> =
        Default::default();
    static X25519_OF: std::cell::RefCell<std::collections::HashMap<[u8; 32], [u8; 32]>> =
        Default::default();
}

/// The X25519 form of an ed25519 key, remembered per thread (the simulator's nodes meet
/// the same few keys in handshake after handshake). `None`: not a curve point.
pub(crate) fn x25519_of(key: &PublicKey) -> Option<[u8; 32]> {
    if let Some(x) = X25519_OF.with(|m| m.borrow().get(&key.0).copied()) {
        return Some(x);
    }
    let x = ed25519_dalek::VerifyingKey::from_bytes(&key.0)
        .ok()?
        .to_montgomery()
        .to_bytes();
    X25519_OF.with(|m| m.borrow_mut().insert(key.0, x));
    Some(x)
}

/// A Noise resolver for the simulator: Diffie-Hellman is [`SimulatedDh`], everything else
/// (hash, cipher, RNG) is what [`snow::Builder::new`] would use.
pub(crate) struct Resolver(snow::resolvers::FallbackResolver);

impl Resolver {
    pub(crate) fn new() -> Resolver {
        use snow::resolvers::{DefaultResolver, FallbackResolver, RingResolver};
        Resolver(FallbackResolver::new(
            Box::new(RingResolver),
            Box::new(DefaultResolver),
        ))
    }
}

impl snow::resolvers::CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        self.0.resolve_rng()
    }
    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        match choice {
            snow::params::DHChoice::Curve25519 => Some(Box::new(SimulatedDh::default())),
            other => self.0.resolve_dh(other),
        }
    }
    fn resolve_hash(
        &self,
        choice: &snow::params::HashChoice,
    ) -> Option<Box<dyn snow::types::Hash>> {
        self.0.resolve_hash(choice)
    }
    fn resolve_cipher(
        &self,
        choice: &snow::params::CipherChoice,
    ) -> Option<Box<dyn snow::types::Cipher>> {
        self.0.resolve_cipher(choice)
    }
}

/// Stand-in for X25519 in the simulator's handshakes (three to five curve multiplications
/// per side were a handshake's cost). A static key's public half is the real X25519 one
/// (so it still matches the node's ed25519 identity); an ephemeral key's is a hash of the
/// private half; the shared secret is a hash of the two public keys, in sorted order. Both
/// sides get the same secret, so the handshake, its messages and its checks run unchanged,
/// but anyone who saw the public keys could compute it: nothing it protects is secret.
#[derive(Default)]
pub(crate) struct SimulatedDh {
    private: [u8; 32],
    public: [u8; 32],
}

impl snow::types::Dh for SimulatedDh {
    fn name(&self) -> &'static str {
        "25519"
    }
    fn pub_len(&self) -> usize {
        32
    }
    fn priv_len(&self) -> usize {
        32
    }
    fn set(&mut self, privkey: &[u8]) {
        self.private.copy_from_slice(&privkey[..32]);
        let private = self.private;
        self.public = STATIC_PUBLIC.with(|m| {
            *m.borrow_mut().entry(private).or_insert_with(|| {
                let mut real = snow::resolvers::DefaultResolver
                    .resolve_dh(&snow::params::DHChoice::Curve25519)
                    .expect("X25519");
                real.set(&private);
                real.pubkey().try_into().expect("32 bytes")
            })
        });
    }
    fn generate(&mut self, rng: &mut dyn snow::types::Random) -> Result<(), snow::Error> {
        rng.try_fill_bytes(&mut self.private)?;
        self.public = hash32(&[b"meshd simulated ephemeral", &self.private]);
        Ok(())
    }
    fn pubkey(&self) -> &[u8] {
        &self.public
    }
    fn privkey(&self) -> &[u8] {
        &self.private
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let theirs: &[u8] = pubkey.get(..32).ok_or(snow::Error::Dh)?;
        let (a, b) = if self.public[..] <= *theirs {
            (&self.public[..], theirs)
        } else {
            (theirs, &self.public[..])
        };
        out[..32].copy_from_slice(&hash32(&[b"meshd simulated dh", a, b]));
        Ok(())
    }
}

fn hash32(parts: &[&[u8]]) -> [u8; 32] {
    use blake2::digest::consts::U32;
    let mut h = Blake2b::<U32>::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use snow::types::Dh;

    /// Both sides of the stand-in agree, a third key gets another secret, and a static
    /// key's public half is the real X25519 one.
    #[test]
    fn simulated_dh_agrees_and_keeps_real_static_keys() {
        let mut a = SimulatedDh::default();
        a.set(&[7; 32]);
        let mut real = snow::resolvers::DefaultResolver
            .resolve_dh(&snow::params::DHChoice::Curve25519)
            .unwrap();
        real.set(&[7; 32]);
        assert_eq!(a.pubkey(), real.pubkey());
        let mut b = SimulatedDh::default();
        b.generate(&mut FixedRng(9)).unwrap();
        let mut c = SimulatedDh::default();
        c.generate(&mut FixedRng(10)).unwrap();
        let (mut ab, mut ba, mut ac) = ([0u8; 32], [0u8; 32], [0u8; 32]);
        a.dh(b.pubkey(), &mut ab).unwrap();
        b.dh(a.pubkey(), &mut ba).unwrap();
        a.dh(c.pubkey(), &mut ac).unwrap();
        assert_eq!(ab, ba);
        assert_ne!(ab, ac);
        assert!(a.dh(&[1; 16], &mut ab).is_err());
    }

    struct FixedRng(u8);
    impl snow::types::Random for FixedRng {
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
            dest.fill(self.0);
            Ok(())
        }
    }
}
