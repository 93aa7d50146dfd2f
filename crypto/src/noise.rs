//! Noise handshakes and transport for links (hop to hop) and sessions (end to end).
//!
//! Patterns: `XX` when the remote key is unknown, `IK` when it is pinned; both over
//! 25519 / ChaChaPoly / BLAKE2s, with the network secret mixed in as a PSK when configured
//! (`XXpsk0`, `IKpsk1`): the PSK is mixed in before the first message's payload, so each
//! side rejects a wrong secret at the first message it reads and never holds half-made keys.
//!
//! The Noise static key is the x25519 form of the node's ed25519 key. Each handshake message
//! that carries our static key also carries our ed25519 public key as payload; the receiver
//! checks that the two agree ([`PublicKey::to_x25519`]) and that the key hashes into fc00::/8,
//! so a finished handshake always names a verified [`PublicKey`] (and hence [`Address`]).
//!
//! After the handshake, [`Transport`] is snow's *stateless* transport: every packet carries
//! its counter explicitly and a [`ReplayWindow`] accepts reordering, so losing a UDP packet
//! never desynchronises the two ends.
//!
//! [`Address`]: crate::Address

use snow::{Builder, HandshakeState, StatelessTransportState};

use crate::{Identity, KeyError, PublicKey, ReplayWindow};

/// Bytes the AEAD tag adds to each transport message.
pub const TAG_LEN: usize = 16;
/// Largest handshake message we produce (IK msg1 with payload: 32+48+48+16 = 144).
pub const MAX_HANDSHAKE_LEN: usize = 256;
/// After this many messages a transport must be replaced by a new handshake.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// A transport refuses to send past this counter.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// Which Noise handshake pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Mutual key exchange with no prior knowledge (3 messages).
    XX,
    /// Initiator knows the responder's key (2 messages).
    IK,
}

/// Errors of the Noise layer.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    /// snow refused (bad message, failed decryption, wrong PSK, ...).
    #[error("noise: {0}")]
    Snow(#[from] snow::Error),
    /// The peer's ed25519 key doesn't match its Noise static key or isn't a mesh key.
    #[error("peer identity: {0}")]
    Identity(#[from] KeyError),
    /// A handshake message arrived without the peer's identity payload.
    #[error("handshake finished without the peer's identity")]
    NoIdentity,
    /// A packet counter was already seen or is older than the replay window.
    #[error("replayed or stale counter")]
    Replay,
    /// This transport has sent as many messages as it safely may.
    #[error("transport exhausted: rekey")]
    Exhausted,
}

fn params(pattern: Pattern, psk: bool) -> snow::params::NoiseParams {
    let name = match (pattern, psk) {
        (Pattern::XX, false) => "Noise_XX_25519_ChaChaPoly_BLAKE2s",
        (Pattern::XX, true) => "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s",
        (Pattern::IK, false) => "Noise_IK_25519_ChaChaPoly_BLAKE2s",
        (Pattern::IK, true) => "Noise_IKpsk1_25519_ChaChaPoly_BLAKE2s",
    };
    name.parse().expect("static pattern names parse")
}

/// One side of a Noise handshake that binds the peer's ed25519 identity.
pub struct Handshake {
    hs: HandshakeState,
    pattern: Pattern,
    local: PublicKey,
    remote: Option<PublicKey>,
    messages: u8,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("pattern", &self.pattern)
            .field("initiator", &self.hs.is_initiator())
            .field("remote", &self.remote)
            .finish()
    }
}

impl Handshake {
    /// Starts a handshake as initiator. `remote` must be given for [`Pattern::IK`].
    pub fn initiator(
        id: &Identity,
        pattern: Pattern,
        remote: Option<&PublicKey>,
        psk: Option<&[u8; 32]>,
    ) -> Result<Self, NoiseError> {
        let secret = id.x25519_secret();
        let mut b = Builder::new(params(pattern, psk.is_some())).local_private_key(&secret)?;
        let rs;
        if pattern == Pattern::IK {
            let r = remote.ok_or(NoiseError::NoIdentity)?;
            r.validate()?;
            rs = r.to_x25519()?;
            b = b.remote_public_key(&rs)?;
        }
        if let Some(k) = psk {
            b = b.psk(if pattern == Pattern::XX { 0 } else { 1 }, k)?;
        }
        Ok(Handshake {
            hs: b.build_initiator()?,
            pattern,
            local: id.public_key(),
            remote: if pattern == Pattern::IK {
                remote.copied()
            } else {
                None
            },
            messages: 0,
        })
    }

    /// Starts a handshake as responder.
    pub fn responder(
        id: &Identity,
        pattern: Pattern,
        psk: Option<&[u8; 32]>,
    ) -> Result<Self, NoiseError> {
        let secret = id.x25519_secret();
        let mut b = Builder::new(params(pattern, psk.is_some())).local_private_key(&secret)?;
        if let Some(k) = psk {
            b = b.psk(if pattern == Pattern::XX { 0 } else { 1 }, k)?;
        }
        Ok(Handshake {
            hs: b.build_responder()?,
            pattern,
            local: id.public_key(),
            remote: None,
            messages: 0,
        })
    }

    /// The handshake pattern.
    pub fn pattern(&self) -> Pattern {
        self.pattern
    }
    /// Whether we started this handshake.
    pub fn is_initiator(&self) -> bool {
        self.hs.is_initiator()
    }
    /// Whether all messages have been exchanged.
    pub fn is_finished(&self) -> bool {
        self.hs.is_handshake_finished()
    }
    /// The peer's verified identity, once its static key has arrived.
    pub fn remote(&self) -> Option<PublicKey> {
        self.remote
    }

    /// Writes the next handshake message into `out` (at least [`MAX_HANDSHAKE_LEN`] bytes).
    pub fn write_message(&mut self, out: &mut [u8]) -> Result<usize, NoiseError> {
        // XX's first message goes in the clear: it carries no identity.
        let first_xx = self.pattern == Pattern::XX && self.messages == 0;
        let payload: &[u8] = if first_xx { &[] } else { &self.local.0 };
        let n = self.hs.write_message(payload, out)?;
        self.messages += 1;
        Ok(n)
    }

    /// Reads the peer's next handshake message, checking the identity it carries.
    pub fn read_message(&mut self, msg: &[u8]) -> Result<(), NoiseError> {
        let mut payload = [0u8; MAX_HANDSHAKE_LEN];
        let n = self.hs.read_message(msg, &mut payload)?;
        self.messages += 1;
        if let Some(rs) = self.hs.get_remote_static() {
            if n == 32 {
                let key = PublicKey(payload[..32].try_into().expect("32 bytes"));
                key.validate()?;
                if key.to_x25519()?[..] != *rs {
                    return Err(KeyError::BadPoint.into());
                }
                if let Some(pinned) = self.remote {
                    if pinned != key {
                        return Err(KeyError::BadPoint.into());
                    }
                }
                self.remote = Some(key);
            } else if n != 0 || self.remote.is_none() {
                return Err(NoiseError::NoIdentity);
            }
        } else if n != 0 {
            return Err(NoiseError::NoIdentity);
        }
        Ok(())
    }

    /// Turns a finished handshake into a transport, with the peer's verified key.
    pub fn into_transport(self) -> Result<(Transport, PublicKey), NoiseError> {
        let remote = self.remote.ok_or(NoiseError::NoIdentity)?;
        let initiator = self.hs.is_initiator();
        let st = self.hs.into_stateless_transport_mode()?;
        Ok((
            Transport {
                st,
                next_send: 0,
                replay: ReplayWindow::new(),
                initiator,
            },
            remote,
        ))
    }
}

/// An established Noise transport with explicit counters and a replay window.
pub struct Transport {
    st: StatelessTransportState,
    next_send: u64,
    replay: ReplayWindow,
    initiator: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("sent", &self.next_send)
            .finish()
    }
}

impl Transport {
    /// Encrypts `plaintext` into `out` (which needs `plaintext.len() + TAG_LEN` bytes).
    /// Returns the counter to send alongside and the ciphertext length.
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<(u64, usize), NoiseError> {
        let c = self.next_send;
        if c >= REJECT_AFTER_MESSAGES {
            return Err(NoiseError::Exhausted);
        }
        let n = self.st.write_message(c, plaintext, out)?;
        self.next_send += 1;
        Ok((c, n))
    }

    /// Decrypts a message sent with `counter`. Replays and forgeries leave no trace.
    pub fn decrypt(
        &mut self,
        counter: u64,
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, NoiseError> {
        if !self.replay.check(counter) {
            return Err(NoiseError::Replay);
        }
        let n = self.st.read_message(counter, ciphertext, out)?;
        self.replay.commit(counter);
        Ok(n)
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.next_send
    }
    /// Whether this side initiated the handshake.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }
    /// Whether the counter is close enough to its limit that a new handshake is due.
    pub fn needs_rekey(&self) -> bool {
        self.next_send >= REKEY_AFTER_MESSAGES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ids() -> (Identity, Identity) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        (Identity::generate(&mut rng), Identity::generate(&mut rng))
    }

    /// Both ends' transports and the peer keys they verified.
    type Pair = ((Transport, PublicKey), (Transport, PublicKey));

    fn run(mut i: Handshake, mut r: Handshake) -> Result<Pair, NoiseError> {
        let mut buf = [0u8; MAX_HANDSHAKE_LEN];
        let mut initiator_turn = true;
        while !(i.is_finished() && r.is_finished()) {
            if initiator_turn {
                let n = i.write_message(&mut buf)?;
                r.read_message(&buf[..n])?;
            } else {
                let n = r.write_message(&mut buf)?;
                i.read_message(&buf[..n])?;
            }
            initiator_turn = !initiator_turn;
        }
        Ok((i.into_transport()?, r.into_transport()?))
    }

    #[test]
    fn xx_and_ik_bind_identities() {
        let (a, b) = ids();
        for pattern in [Pattern::XX, Pattern::IK] {
            for psk in [None, Some([9u8; 32])] {
                let i =
                    Handshake::initiator(&a, pattern, Some(&b.public_key()), psk.as_ref()).unwrap();
                let r = Handshake::responder(&b, pattern, psk.as_ref()).unwrap();
                let ((mut ti, ki), (mut tr, kr)) = run(i, r).unwrap();
                assert_eq!(ki, b.public_key());
                assert_eq!(kr, a.public_key());
                let mut ct = [0u8; 64];
                let mut pt = [0u8; 64];
                let (c, n) = ti.encrypt(b"ping", &mut ct).unwrap();
                let m = tr.decrypt(c, &ct[..n], &mut pt).unwrap();
                assert_eq!(&pt[..m], b"ping");
                assert!(matches!(
                    tr.decrypt(c, &ct[..n], &mut pt),
                    Err(NoiseError::Replay)
                ));
            }
        }
    }

    #[test]
    fn wrong_psk_never_completes() {
        let (a, b) = ids();
        for pattern in [Pattern::XX, Pattern::IK] {
            let i =
                Handshake::initiator(&a, pattern, Some(&b.public_key()), Some(&[1; 32])).unwrap();
            let r = Handshake::responder(&b, pattern, Some(&[2; 32])).unwrap();
            assert!(run(i, r).is_err());
            let i = Handshake::initiator(&a, pattern, Some(&b.public_key()), None).unwrap();
            let r = Handshake::responder(&b, pattern, Some(&[2; 32])).unwrap();
            assert!(run(i, r).is_err());
        }
    }

    #[test]
    fn ik_to_wrong_key_fails() {
        let (a, b) = ids();
        let mut rng = rand::rngs::StdRng::seed_from_u64(99);
        let c = Identity::generate(&mut rng);
        let i = Handshake::initiator(&a, Pattern::IK, Some(&c.public_key()), None).unwrap();
        let r = Handshake::responder(&b, Pattern::IK, None).unwrap();
        assert!(run(i, r).is_err());
    }

    #[test]
    fn reordered_and_lost_packets_decrypt() {
        let (a, b) = ids();
        let i = Handshake::initiator(&a, Pattern::XX, None, None).unwrap();
        let r = Handshake::responder(&b, Pattern::XX, None).unwrap();
        let ((mut ti, _), (mut tr, _)) = run(i, r).unwrap();
        let mut msgs = Vec::new();
        for k in 0..10u8 {
            let mut ct = [0u8; 32];
            let (c, n) = ti.encrypt(&[k], &mut ct).unwrap();
            msgs.push((c, ct[..n].to_vec()));
        }
        // Lose 0..3, deliver the rest backwards.
        for (c, ct) in msgs[3..].iter().rev() {
            let mut pt = [0u8; 32];
            let n = tr.decrypt(*c, ct, &mut pt).unwrap();
            assert_eq!(pt[..n], [*c as u8]);
        }
        // A forged packet fails and doesn't poison the window for the real one.
        let (c, ct) = &msgs[1];
        let mut bad = ct.clone();
        bad[0] ^= 1;
        let mut pt = [0u8; 32];
        assert!(tr.decrypt(*c, &bad, &mut pt).is_err());
        assert!(tr.decrypt(*c, ct, &mut pt).is_ok());
    }
}
