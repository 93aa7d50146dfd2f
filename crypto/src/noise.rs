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
//! # Transport suites
//!
//! The identity payload is the 32-byte key followed by a flags byte; bit 0 ([`FLAG_AES`])
//! says "I have AES instructions and accept AES-256-GCM" ([`aes_offered`]). Older nodes accept
//! only the 32-byte key (and an empty XX first message), so flags go only where they are
//! understood: an initiator that offers says so from its first message (XX: the flags byte
//! alone; IK: key and flags), and a responder sends flags only to an initiator that sent
//! some. An older responder refuses an offer, so the router alternates offering and plain
//! tries. A 32-byte payload reads as flags 0. When both sides set bit 0 the transport runs
//! AES-256-GCM, else ChaCha20-Poly1305 ([`Suite`]); the handshake itself is always
//! ChaChaPoly, as the pattern names say. Either way the transport keys are Noise's `Split()`
//! of the finished handshake, and nonces are Noise's: 4 zero bytes then the counter,
//! little-endian for ChaChaPoly and big-endian for AESGCM, with empty associated data, so a
//! ChaCha transport is byte for byte what snow's stateless transport produced.
//!
//! No one can downgrade the suite: the flags travel inside the handshake payloads, which
//! Noise encrypts and authenticates under keys from the DH results, with the whole handshake
//! transcript as associated data. Changing or removing a flags byte in flight makes the
//! receiver's payload decryption fail, so it refuses the handshake; an attacker who could
//! downgrade would have to have broken the handshake itself. (And if the two sides ever disagreed on the
//! suite, no packet would decrypt: it fails closed.)
//!
//! After the handshake, [`Transport`] is *stateless* in Noise's sense: every packet carries
//! its counter explicitly and a [`ReplayWindow`] accepts reordering, so losing a UDP packet
//! never desynchronises the two ends.
//!
//! [`Address`]: crate::Address

use std::sync::OnceLock;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use snow::{Builder, HandshakeState};

use crate::{Identity, KeyError, PublicKey, ReplayWindow};

/// Bytes the AEAD tag adds to each transport message.
pub const TAG_LEN: usize = 16;
/// Largest handshake message we produce (IK msg1 with payload: 32 + 48 + (33 + 16) = 129;
/// XX msg2 is as long, XX msg3 48 + 49 = 97, IK msg2 32 + 49 = 81).
pub const MAX_HANDSHAKE_LEN: usize = 256;
/// After this many messages a transport must be replaced by a new handshake.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// A transport refuses to send past this counter.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// Bit of the handshake flags byte: "I have AES instructions and accept AES-256-GCM".
pub const FLAG_AES: u8 = 1;
/// Longest transport message, tag included (Noise's limit, which snow enforced before).
const MAX_MESSAGE_LEN: usize = 65535;

/// Which Noise handshake pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Mutual key exchange with no prior knowledge (3 messages).
    XX,
    /// Initiator knows the responder's key (2 messages).
    IK,
}

/// The AEAD a [`Transport`] runs on, agreed during the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Suite {
    /// ChaCha20-Poly1305: the default, and what nodes without AES instructions use.
    ChaCha20Poly1305,
    /// AES-256-GCM: when both ends have AES instructions (and carry-less multiply).
    Aes256Gcm,
}

impl Suite {
    /// Lower-case name for APIs and logs: `chacha20-poly1305` or `aes-256-gcm`.
    pub fn id(self) -> &'static str {
        match self {
            Suite::ChaCha20Poly1305 => "chacha20-poly1305",
            Suite::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// The suite's name as Noise spells its cipher (`ChaChaPoly`, `AESGCM`).
    pub fn noise_name(self) -> &'static str {
        match self {
            Suite::ChaCha20Poly1305 => "ChaChaPoly",
            Suite::Aes256Gcm => "AESGCM",
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Suite::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
        }
    }

    /// Noise's nonce for `counter`: 4 zero bytes, then the counter little-endian for
    /// ChaChaPoly and big-endian for AESGCM.
    fn nonce(self, counter: u64) -> Nonce {
        let mut n = [0u8; aead::NONCE_LEN];
        n[4..].copy_from_slice(&match self {
            Suite::ChaCha20Poly1305 => counter.to_le_bytes(),
            Suite::Aes256Gcm => counter.to_be_bytes(),
        });
        Nonce::assume_unique_for_key(n)
    }
}

impl std::fmt::Display for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Suite::ChaCha20Poly1305 => "ChaCha20-Poly1305",
            Suite::Aes256Gcm => "AES-256-GCM",
        })
    }
}

/// Whether this process offers AES-256-GCM in its handshakes: the CPU has AES and
/// carry-less multiply instructions (x86/x86_64: `aes` and `pclmulqdq`; aarch64: `aes` and
/// `pmull`; other architectures: never), unless the environment variable `MESHD_CIPHER` is
/// `chacha`. `MESHD_CIPHER` unset or `auto` means detect; any other value also means
/// detect. Read once per process.
pub fn aes_offered() -> bool {
    static OFFERED: OnceLock<bool> = OnceLock::new();
    *OFFERED.get_or_init(|| {
        offer_from(
            std::env::var("MESHD_CIPHER").ok().as_deref(),
            aes_hardware(),
        )
    })
}

/// The AES offer for a `MESHD_CIPHER` value and the hardware's answer.
fn offer_from(env: Option<&str>, hardware: bool) -> bool {
    match env.map(str::trim) {
        Some(v) if v.eq_ignore_ascii_case("chacha") => false,
        _ => hardware,
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn aes_hardware() -> bool {
    std::is_x86_feature_detected!("aes") && std::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn aes_hardware() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull")
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
fn aes_hardware() -> bool {
    false
}

/// The suite two sides agree on from the flags each sent.
fn choose_suite(ours: u8, theirs: u8) -> Suite {
    if ours & theirs & FLAG_AES != 0 {
        Suite::Aes256Gcm
    } else {
        Suite::ChaCha20Poly1305
    }
}

/// Errors of the Noise layer.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    /// snow refused (bad message, failed decryption, wrong PSK, ...); the transport reports
    /// a failed decryption as `snow::Error::Decrypt` and a bad length as `snow::Error::Input`,
    /// as snow's own transport did.
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

/// A handshake builder: snow's own, or in a simulator ([`crate::simulated`]) one whose
/// Diffie-Hellman is the stand-in.
fn builder<'a>(pattern: Pattern, psk: bool) -> Builder<'a> {
    if crate::simulated::signatures() {
        Builder::with_resolver(
            params(pattern, psk),
            Box::new(crate::simulated::Resolver::new()),
        )
    } else {
        Builder::new(params(pattern, psk))
    }
}

/// The X25519 form of `key` (remembered, in a simulator).
fn x25519_of(key: &PublicKey) -> Result<[u8; 32], KeyError> {
    if crate::simulated::signatures() {
        return crate::simulated::x25519_of(key).ok_or(KeyError::BadPoint);
    }
    key.to_x25519()
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
    /// Whether our identity payload will offer AES-256-GCM.
    offer_aes: bool,
    /// The flags byte our identity payload carried, once sent.
    sent_flags: u8,
    /// The flags byte the peer's payload carried (0 if it sent none).
    remote_flags: u8,
    /// Whether the peer sent a flags byte at all (it understands them).
    remote_flagged: bool,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("pattern", &self.pattern)
            .field("initiator", &self.hs.is_initiator())
            .field("remote", &self.remote)
            .field("offer_aes", &self.offer_aes)
            .field("remote_flags", &self.remote_flags)
            .finish()
    }
}

impl Handshake {
    /// Starts a handshake as initiator. `remote` must be given for [`Pattern::IK`].
    /// Offers AES-256-GCM if [`aes_offered`].
    pub fn initiator(
        id: &Identity,
        pattern: Pattern,
        remote: Option<&PublicKey>,
        psk: Option<&[u8; 32]>,
    ) -> Result<Self, NoiseError> {
        Self::initiator_offering(id, pattern, remote, psk, aes_offered())
    }

    fn initiator_offering(
        id: &Identity,
        pattern: Pattern,
        remote: Option<&PublicKey>,
        psk: Option<&[u8; 32]>,
        offer_aes: bool,
    ) -> Result<Self, NoiseError> {
        let secret = id.x25519_secret();
        let mut b = builder(pattern, psk.is_some()).local_private_key(&secret)?;
        let rs;
        if pattern == Pattern::IK {
            let r = remote.ok_or(NoiseError::NoIdentity)?;
            r.validate()?;
            rs = x25519_of(r)?;
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
            offer_aes,
            sent_flags: 0,
            remote_flags: 0,
            remote_flagged: false,
        })
    }

    /// Starts a handshake as responder. Offers AES-256-GCM if [`aes_offered`].
    pub fn responder(
        id: &Identity,
        pattern: Pattern,
        psk: Option<&[u8; 32]>,
    ) -> Result<Self, NoiseError> {
        Self::responder_offering(id, pattern, psk, aes_offered())
    }

    fn responder_offering(
        id: &Identity,
        pattern: Pattern,
        psk: Option<&[u8; 32]>,
        offer_aes: bool,
    ) -> Result<Self, NoiseError> {
        let secret = id.x25519_secret();
        let mut b = builder(pattern, psk.is_some()).local_private_key(&secret)?;
        if let Some(k) = psk {
            b = b.psk(if pattern == Pattern::XX { 0 } else { 1 }, k)?;
        }
        Ok(Handshake {
            hs: b.build_responder()?,
            pattern,
            local: id.public_key(),
            remote: None,
            messages: 0,
            offer_aes,
            sent_flags: 0,
            remote_flags: 0,
            remote_flagged: false,
        })
    }

    /// Overrides whether this side offers AES-256-GCM (by default [`aes_offered`]), for
    /// benchmarks and tests that need a given suite whatever the CPU. Takes effect for the
    /// identity payload not yet written: each side sends exactly one, and the suite follows
    /// the flags actually sent. Offering AES without AES instructions is correct but slow.
    pub fn with_aes_offer(mut self, offer: bool) -> Self {
        self.offer_aes = offer;
        self
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
    ///
    /// An initiator that offers AES says so from its first message: XX's first message (in
    /// the clear, but part of the transcript) carries the flags byte alone, IK's first
    /// message the key and flags. A responder sends a flags byte only to an initiator that
    /// sent one: older nodes accept exactly the 32-byte key (and an empty XX first message),
    /// so an older initiator never sees a payload it would refuse, and an older responder
    /// refuses an offering initiator, which then tries again without the offer
    /// ([`Handshake::with_aes_offer`]).
    pub fn write_message(&mut self, out: &mut [u8]) -> Result<usize, NoiseError> {
        // XX's first message goes in the clear: it carries no identity.
        let first_xx = self.pattern == Pattern::XX && self.messages == 0;
        let may_flag = self.hs.is_initiator() || self.remote_flagged;
        let flags = if self.offer_aes && may_flag {
            FLAG_AES
        } else {
            0
        };
        let mut payload = [0u8; 33];
        payload[..32].copy_from_slice(&self.local.0);
        payload[32] = flags;
        let n = match (first_xx, flags) {
            (true, 0) => self.hs.write_message(&[], out)?,
            (true, f) => self.hs.write_message(&[f], out)?,
            (false, 0) => self.hs.write_message(&payload[..32], out)?,
            (false, _) => self.hs.write_message(&payload, out)?,
        };
        self.messages += 1;
        if !first_xx {
            self.sent_flags = flags;
        }
        Ok(n)
    }

    /// Reads the peer's next handshake message, checking the identity it carries: its
    /// 32-byte ed25519 key, then optionally a flags byte (unknown bits are ignored); or, as
    /// XX's first message, nothing or the flags byte alone.
    pub fn read_message(&mut self, msg: &[u8]) -> Result<(), NoiseError> {
        let mut payload = [0u8; MAX_HANDSHAKE_LEN];
        let n = self.hs.read_message(msg, &mut payload)?;
        self.messages += 1;
        if let Some(rs) = self.hs.get_remote_static() {
            if n == 32 || n == 33 {
                let key = PublicKey(payload[..32].try_into().expect("32 bytes"));
                key.validate()?;
                if x25519_of(&key)?[..] != *rs {
                    return Err(KeyError::BadPoint.into());
                }
                if let Some(pinned) = self.remote {
                    if pinned != key {
                        return Err(KeyError::BadPoint.into());
                    }
                }
                self.remote = Some(key);
                if n == 33 {
                    self.remote_flagged = true;
                    self.remote_flags = payload[32];
                }
            } else if n != 0 || self.remote.is_none() {
                return Err(NoiseError::NoIdentity);
            }
        } else if n == 1 && self.pattern == Pattern::XX && !self.hs.is_initiator() {
            self.remote_flagged = true;
            self.remote_flags = payload[0];
        } else if n != 0 {
            return Err(NoiseError::NoIdentity);
        }
        Ok(())
    }

    /// The suite the transport will use, from the flags sent and received so far.
    fn suite(&self) -> Suite {
        choose_suite(self.sent_flags, self.remote_flags)
    }

    /// Turns a finished handshake into a transport, with the peer's verified key.
    pub fn into_transport(mut self) -> Result<(Transport, PublicKey), NoiseError> {
        self.make_transport()
    }

    /// [`Self::into_transport`] without giving up the handshake state (the tests compare
    /// the result with snow's own transport from the same state).
    fn make_transport(&mut self) -> Result<(Transport, PublicKey), NoiseError> {
        let remote = self.remote.ok_or(NoiseError::NoIdentity)?;
        if !self.hs.is_handshake_finished() {
            return Err(snow::Error::State(snow::error::StateProblem::HandshakeNotFinished).into());
        }
        let initiator = self.hs.is_initiator();
        let suite = self.suite();
        // Noise's Split(): the first key encrypts initiator -> responder, the second
        // responder -> initiator (snow's stateless transport: the initiator sends with
        // cipherstates.0, the responder with cipherstates.1).
        let (k1, k2) = self.hs.dangerously_get_raw_split();
        let (send, recv) = if initiator { (k1, k2) } else { (k2, k1) };
        Ok((Transport::new(suite, &send, &recv, initiator), remote))
    }
}

/// An established Noise transport with explicit counters and a replay window, on ring's
/// AEADs.
pub struct Transport {
    suite: Suite,
    send: LessSafeKey,
    recv: LessSafeKey,
    next_send: u64,
    replay: ReplayWindow,
    initiator: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("suite", &self.suite)
            .field("sent", &self.next_send)
            .finish()
    }
}

fn input_error() -> NoiseError {
    snow::Error::Input.into()
}
fn decrypt_error() -> NoiseError {
    snow::Error::Decrypt.into()
}

impl Transport {
    fn new(suite: Suite, send: &[u8; 32], recv: &[u8; 32], initiator: bool) -> Transport {
        let key = |k: &[u8; 32]| {
            LessSafeKey::new(
                UnboundKey::new(suite.algorithm(), k).expect("32-byte keys fit both AEADs"),
            )
        };
        Transport {
            suite,
            send: key(send),
            recv: key(recv),
            next_send: 0,
            replay: ReplayWindow::new(),
            initiator,
        }
    }

    /// Encrypts `plaintext` into `out` (which needs `plaintext.len() + TAG_LEN` bytes).
    /// Returns the counter to send alongside and the ciphertext length.
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<(u64, usize), NoiseError> {
        if self.next_send >= REJECT_AFTER_MESSAGES {
            return Err(NoiseError::Exhausted);
        }
        let len = plaintext.len();
        if len > MAX_MESSAGE_LEN - TAG_LEN || len + TAG_LEN > out.len() {
            return Err(input_error());
        }
        out[..len].copy_from_slice(plaintext);
        self.seal(&mut out[..len + TAG_LEN], len)
    }

    /// Encrypts the plaintext in `buf[..len]` where it lies, the tag going to
    /// `buf[len..len + TAG_LEN]` (so `buf` needs `len + TAG_LEN` bytes). Returns the counter
    /// to send alongside and the ciphertext length, `len + TAG_LEN`. Same bytes as
    /// [`Self::encrypt`], without the copy.
    pub fn encrypt_in_place(
        &mut self,
        buf: &mut [u8],
        len: usize,
    ) -> Result<(u64, usize), NoiseError> {
        if self.next_send >= REJECT_AFTER_MESSAGES {
            return Err(NoiseError::Exhausted);
        }
        if len > MAX_MESSAGE_LEN - TAG_LEN || len + TAG_LEN > buf.len() {
            return Err(input_error());
        }
        self.seal(&mut buf[..len + TAG_LEN], len)
    }

    /// Seals `buf[..len]` and puts the tag after it; `buf` is `len + TAG_LEN` long.
    fn seal(&mut self, buf: &mut [u8], len: usize) -> Result<(u64, usize), NoiseError> {
        let c = self.next_send;
        let (data, tag_out) = buf.split_at_mut(len);
        let tag = self
            .send
            .seal_in_place_separate_tag(self.suite.nonce(c), Aad::empty(), data)
            .map_err(|_| input_error())?;
        tag_out.copy_from_slice(tag.as_ref());
        self.next_send += 1;
        Ok((c, len + TAG_LEN))
    }

    /// Decrypts a message sent with `counter` into `out` (which needs
    /// `ciphertext.len() - TAG_LEN` bytes). Replays and forgeries leave no trace in the
    /// transport's state.
    pub fn decrypt(
        &mut self,
        counter: u64,
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, NoiseError> {
        if !self.replay.check(counter) {
            return Err(NoiseError::Replay);
        }
        if ciphertext.len() > MAX_MESSAGE_LEN {
            return Err(input_error());
        }
        let n = ciphertext
            .len()
            .checked_sub(TAG_LEN)
            .ok_or_else(decrypt_error)?;
        if out.len() < n {
            return Err(decrypt_error());
        }
        let (ct, tag) = ciphertext.split_at(n);
        out[..n].copy_from_slice(ct);
        self.open(counter, tag, &mut out[..n])?;
        self.replay.commit(counter);
        Ok(n)
    }

    /// Decrypts the message (ciphertext and tag) in `buf`, sent with `counter`, where it
    /// lies: the plaintext ends up in `buf[..n]`, `n = buf.len() - TAG_LEN`, which is
    /// returned. Replays and forgeries leave no trace in the transport's state, but on any
    /// error other than [`NoiseError::Replay`] `buf`'s contents are unspecified.
    pub fn decrypt_in_place(&mut self, counter: u64, buf: &mut [u8]) -> Result<usize, NoiseError> {
        if !self.replay.check(counter) {
            return Err(NoiseError::Replay);
        }
        if buf.len() > MAX_MESSAGE_LEN {
            return Err(input_error());
        }
        let n = buf.len().checked_sub(TAG_LEN).ok_or_else(decrypt_error)?;
        let (data, tag) = buf.split_at_mut(n);
        self.open(counter, tag, data)?;
        self.replay.commit(counter);
        Ok(n)
    }

    /// Authenticates and decrypts `data` in place against `tag`.
    fn open(&self, counter: u64, tag: &[u8], data: &mut [u8]) -> Result<(), NoiseError> {
        let tag = aead::Tag::try_from(tag).map_err(|_| decrypt_error())?;
        self.recv
            .open_in_place_separate_tag(self.suite.nonce(counter), Aad::empty(), tag, data, 0..)
            .map_err(|_| decrypt_error())?;
        Ok(())
    }

    /// The AEAD this transport runs on.
    pub fn suite(&self) -> Suite {
        self.suite
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

    /// Passes messages between the two sides until both are done; the messages' lengths.
    fn pump(i: &mut Handshake, r: &mut Handshake) -> Result<Vec<usize>, NoiseError> {
        let mut buf = [0u8; MAX_HANDSHAKE_LEN];
        let mut lens = Vec::new();
        let mut initiator_turn = true;
        while !(i.is_finished() && r.is_finished()) {
            let (w, rd) = if initiator_turn {
                (&mut *i, &mut *r)
            } else {
                (&mut *r, &mut *i)
            };
            let n = w.write_message(&mut buf)?;
            rd.read_message(&buf[..n])?;
            lens.push(n);
            initiator_turn = !initiator_turn;
        }
        Ok(lens)
    }

    fn run(mut i: Handshake, mut r: Handshake) -> Result<Pair, NoiseError> {
        pump(&mut i, &mut r)?;
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

    // ---- Suites, negotiation, compatibility with snow's transport and older nodes ----

    use proptest::prelude::*;
    use snow::resolvers::CryptoResolver;
    use snow::StatelessTransportState;

    /// A finished handshake between `a` (initiator) and `b`, each offering AES or not.
    fn handshake(
        pattern: Pattern,
        psk: Option<&[u8; 32]>,
        offer_i: bool,
        offer_r: bool,
    ) -> (Handshake, Handshake) {
        let (a, b) = ids();
        let mut i = Handshake::initiator_offering(&a, pattern, Some(&b.public_key()), psk, offer_i)
            .unwrap();
        let mut r = Handshake::responder_offering(&b, pattern, psk, offer_r).unwrap();
        pump(&mut i, &mut r).unwrap();
        (i, r)
    }

    /// Initiator's and responder's transports for a given suite.
    fn transports(suite: Suite) -> (Transport, Transport) {
        let aes = suite == Suite::Aes256Gcm;
        let (mut i, mut r) = handshake(Pattern::XX, None, aes, aes);
        let (ti, _) = i.make_transport().unwrap();
        let (tr, _) = r.make_transport().unwrap();
        assert_eq!((ti.suite(), tr.suite()), (suite, suite));
        (ti, tr)
    }

    const SUITES: [Suite; 2] = [Suite::ChaCha20Poly1305, Suite::Aes256Gcm];

    #[test]
    fn suite_selection_table() {
        use Suite::*;
        for pattern in [Pattern::XX, Pattern::IK] {
            for psk in [None, Some([5u8; 32])] {
                for (offer_i, offer_r, want) in [
                    (false, false, ChaCha20Poly1305),
                    (true, false, ChaCha20Poly1305),
                    (false, true, ChaCha20Poly1305),
                    (true, true, Aes256Gcm),
                ] {
                    let (i, r) = handshake(pattern, psk.as_ref(), offer_i, offer_r);
                    let (mut ti, _) = i.into_transport().unwrap();
                    let (mut tr, _) = r.into_transport().unwrap();
                    assert_eq!(ti.suite(), want, "{pattern:?} {offer_i} {offer_r}");
                    assert_eq!(tr.suite(), want, "{pattern:?} {offer_i} {offer_r}");
                    // And they talk, both ways.
                    let mut ct = [0u8; 64];
                    let mut pt = [0u8; 64];
                    let (c, n) = ti.encrypt(b"to responder", &mut ct).unwrap();
                    let m = tr.decrypt(c, &ct[..n], &mut pt).unwrap();
                    assert_eq!(&pt[..m], b"to responder");
                    let (c, n) = tr.encrypt(b"to initiator", &mut ct).unwrap();
                    let m = ti.decrypt(c, &ct[..n], &mut pt).unwrap();
                    assert_eq!(&pt[..m], b"to initiator");
                }
            }
        }
        // Unknown flag bits change nothing.
        assert_eq!(choose_suite(0xff, 0xfe), ChaCha20Poly1305);
        assert_eq!(choose_suite(0xfe, 0xff), ChaCha20Poly1305);
        assert_eq!(choose_suite(0x81, 0x03), Aes256Gcm);
    }

    #[test]
    fn cipher_env_values() {
        for hw in [false, true] {
            assert_eq!(offer_from(None, hw), hw);
            assert_eq!(offer_from(Some("auto"), hw), hw);
            assert_eq!(offer_from(Some(""), hw), hw);
            assert!(!offer_from(Some("chacha"), hw));
            assert!(!offer_from(Some(" ChaCha\n"), hw));
        }
    }

    #[test]
    fn handshake_messages_fit_and_have_the_expected_sizes() {
        // (pattern, offer) -> lengths of the Noise messages in order.
        for psk in [None, Some([7u8; 32])] {
            for (pattern, offer, want) in [
                (Pattern::XX, false, vec![32, 128, 96]),
                (Pattern::XX, true, vec![33, 129, 97]),
                (Pattern::IK, false, vec![128, 80]),
                (Pattern::IK, true, vec![129, 81]),
            ] {
                let (a, b) = ids();
                let mut i = Handshake::initiator_offering(
                    &a,
                    pattern,
                    Some(&b.public_key()),
                    psk.as_ref(),
                    offer,
                )
                .unwrap();
                let mut r =
                    Handshake::responder_offering(&b, pattern, psk.as_ref(), offer).unwrap();
                let lens = pump(&mut i, &mut r).unwrap();
                // XXpsk0's first message has an (empty) encrypted payload: +16.
                let mut want = want;
                if psk.is_some() && pattern == Pattern::XX {
                    want[0] += TAG_LEN;
                }
                assert_eq!(
                    lens,
                    want,
                    "{pattern:?} offer {offer} psk {}",
                    psk.is_some()
                );
                assert!(lens.iter().all(|&n| n <= MAX_HANDSHAKE_LEN));
            }
        }
    }

    #[test]
    fn both_suites_round_trip() {
        for suite in SUITES {
            let (mut ti, mut tr) = transports(suite);
            for len in [
                0usize,
                1,
                15,
                16,
                17,
                64,
                1400,
                16384,
                MAX_MESSAGE_LEN - TAG_LEN,
            ] {
                let plain: Vec<u8> = (0..len).map(|k| (k * 7) as u8).collect();
                for initiator_sends in [true, false] {
                    let (tx, rx) = if initiator_sends {
                        (&mut ti, &mut tr)
                    } else {
                        (&mut tr, &mut ti)
                    };
                    let mut ct = vec![0u8; len + TAG_LEN];
                    let (c, n) = tx.encrypt(&plain, &mut ct).unwrap();
                    assert_eq!(n, len + TAG_LEN);
                    // (Long enough that equal bytes by chance are out of the question.)
                    if len >= 16 {
                        assert_ne!(&ct[..len], &plain[..], "{suite}: not encrypted");
                    }
                    let mut pt = vec![0u8; len];
                    let m = rx.decrypt(c, &ct[..n], &mut pt).unwrap();
                    assert_eq!(pt[..m], plain[..], "{suite} len {len}");
                }
            }
            // Too long for Noise, or no room for the tag: refused, counter unused.
            let sent = ti.sent();
            let big = vec![0u8; MAX_MESSAGE_LEN];
            let mut out = vec![0u8; MAX_MESSAGE_LEN + TAG_LEN];
            assert!(matches!(
                ti.encrypt(&big[..MAX_MESSAGE_LEN - TAG_LEN + 1], &mut out),
                Err(NoiseError::Snow(snow::Error::Input))
            ));
            assert!(matches!(
                ti.encrypt(b"abc", &mut out[..3 + TAG_LEN - 1]),
                Err(NoiseError::Snow(snow::Error::Input))
            ));
            assert_eq!(ti.sent(), sent);
        }
    }

    #[test]
    fn the_two_suites_encrypt_differently() {
        // Same handshake keys, same counter: the suites must not produce the same bytes
        // (a guard against an accidental fallback).
        let (mut i, _) = handshake(Pattern::XX, None, false, false);
        let (mut chacha, _) = i.make_transport().unwrap();
        i.sent_flags = FLAG_AES;
        i.remote_flags = FLAG_AES;
        let (mut aes, _) = i.make_transport().unwrap();
        assert_eq!(aes.suite(), Suite::Aes256Gcm);
        let (mut a, mut b) = ([0u8; 48], [0u8; 48]);
        chacha.encrypt(&[0u8; 32], &mut a).unwrap();
        aes.encrypt(&[0u8; 32], &mut b).unwrap();
        assert_ne!(a, b);
    }

    /// Encrypts `msgs` with our transport and with snow's, checking the bytes agree and
    /// that each side's receiver opens the other's packets.
    fn compare_with_snow(
        ours_tx: &mut Transport,
        ours_rx: &mut Transport,
        snow_tx: &StatelessTransportState,
        snow_rx: &StatelessTransportState,
    ) {
        for (k, msg) in [&b""[..], b"x", &[0xa5; 1400], &[3; 16384]]
            .iter()
            .enumerate()
        {
            let mut ct = vec![0u8; msg.len() + TAG_LEN];
            let (c, n) = ours_tx.encrypt(msg, &mut ct).unwrap();
            assert_eq!(c, k as u64);
            let mut snow_ct = vec![0u8; msg.len() + TAG_LEN];
            let sn = snow_tx.write_message(c, msg, &mut snow_ct).unwrap();
            assert_eq!((n, &ct[..n]), (sn, &snow_ct[..sn]), "counter {c}");
            // snow opens ours, we open snow's.
            let mut pt = vec![0u8; msg.len()];
            assert_eq!(
                snow_rx.read_message(c, &ct[..n], &mut pt).unwrap(),
                msg.len()
            );
            assert_eq!(&pt[..], *msg);
            pt.fill(0);
            assert_eq!(
                ours_rx.decrypt(c, &snow_ct[..sn], &mut pt).unwrap(),
                msg.len()
            );
            assert_eq!(&pt[..], *msg);
        }
    }

    #[test]
    fn chacha_transport_is_byte_identical_to_snows() {
        for pattern in [Pattern::XX, Pattern::IK] {
            for psk in [None, Some([6u8; 32])] {
                // Mixed offers end in ChaCha too.
                for (offer_i, offer_r) in [(false, false), (true, false), (false, true)] {
                    let (mut i, mut r) = handshake(pattern, psk.as_ref(), offer_i, offer_r);
                    let (mut ti, _) = i.make_transport().unwrap();
                    let (mut tr, _) = r.make_transport().unwrap();
                    assert_eq!(ti.suite(), Suite::ChaCha20Poly1305);
                    // snow's own stateless transport from the very same handshake states.
                    let si = i.hs.into_stateless_transport_mode().unwrap();
                    let sr = r.hs.into_stateless_transport_mode().unwrap();
                    compare_with_snow(&mut ti, &mut tr, &si, &sr);
                    compare_with_snow(&mut tr, &mut ti, &sr, &si);
                }
            }
        }
    }

    #[test]
    fn aes_transport_matches_snows_aesgcm_cipher() {
        // snow's ring AESGCM cipher (Noise's big-endian nonce, empty AD in transport) under
        // the same Split() keys.
        let (mut i, mut r) = handshake(Pattern::IK, None, true, true);
        let (mut ti, _) = i.make_transport().unwrap();
        let (mut tr, _) = r.make_transport().unwrap();
        assert_eq!(ti.suite(), Suite::Aes256Gcm);
        let (k1, k2) = i.hs.dangerously_get_raw_split();
        let cipher = |k: &[u8; 32]| {
            let mut c = snow::resolvers::RingResolver
                .resolve_cipher(&snow::params::CipherChoice::AESGCM)
                .unwrap();
            c.set(k);
            c
        };
        let (c1, c2) = (cipher(&k1), cipher(&k2));
        for initiator_sends in [true, false] {
            let (tx, rx, snow_c) = if initiator_sends {
                (&mut ti, &mut tr, &c1)
            } else {
                (&mut tr, &mut ti, &c2)
            };
            // Skip ahead so the counter's bytes are all different (endianness shows).
            tx.next_send = 0x0102_0304_0506_0708;
            for msg in [&b""[..], b"x", &[0x5a; 1400]] {
                let mut ct = vec![0u8; msg.len() + TAG_LEN];
                let (c, n) = tx.encrypt(msg, &mut ct).unwrap();
                let mut want = vec![0u8; msg.len() + TAG_LEN];
                assert_eq!(snow_c.encrypt(c, &[], msg, &mut want), n);
                assert_eq!(ct, want);
                let mut pt = vec![0u8; msg.len()];
                assert_eq!(rx.decrypt(c, &ct, &mut pt).unwrap(), msg.len());
                assert_eq!(&pt[..], msg);
            }
        }
    }

    /// A node of the previous version: raw snow, a 32-byte identity payload, and its check
    /// that a payload is exactly 32 bytes (or empty where allowed).
    struct OldNode {
        hs: HandshakeState,
        pattern: Pattern,
        local: PublicKey,
        messages: u8,
    }

    impl OldNode {
        /// An IK initiator when `remote` is given, else a responder.
        fn new(id: &Identity, pattern: Pattern, remote: Option<&PublicKey>) -> OldNode {
            let secret = id.x25519_secret();
            let mut b = Builder::new(params(pattern, false))
                .local_private_key(&secret)
                .unwrap();
            let rs;
            let hs = if let Some(r) = remote {
                rs = r.to_x25519().unwrap();
                b = b.remote_public_key(&rs).unwrap();
                b.build_initiator().unwrap()
            } else {
                b.build_responder().unwrap()
            };
            OldNode {
                hs,
                pattern,
                local: id.public_key(),
                messages: 0,
            }
        }
        fn initiator_xx(id: &Identity) -> OldNode {
            let secret = id.x25519_secret();
            let hs = Builder::new(params(Pattern::XX, false))
                .local_private_key(&secret)
                .unwrap()
                .build_initiator()
                .unwrap();
            OldNode {
                hs,
                pattern: Pattern::XX,
                local: id.public_key(),
                messages: 0,
            }
        }
        fn write(&mut self, out: &mut [u8]) -> usize {
            let first_xx = self.pattern == Pattern::XX && self.messages == 0;
            let payload: &[u8] = if first_xx { &[] } else { &self.local.0 };
            self.messages += 1;
            self.hs.write_message(payload, out).unwrap()
        }
        /// The old `read_message`'s payload rule.
        fn read(&mut self, msg: &[u8]) -> Result<(), NoiseError> {
            let mut payload = [0u8; MAX_HANDSHAKE_LEN];
            let n = self.hs.read_message(msg, &mut payload)?;
            self.messages += 1;
            match (self.hs.get_remote_static().is_some(), n) {
                (true, 32) | (_, 0) => Ok(()),
                _ => Err(NoiseError::NoIdentity),
            }
        }
    }

    /// Runs a handshake between a new node and an old one; `new_first` says who initiates.
    /// On success returns the new node's transport and the old node's snow transport.
    fn with_old_node(
        pattern: Pattern,
        new_first: bool,
        offer: bool,
    ) -> Result<(Transport, StatelessTransportState), NoiseError> {
        let (a, b) = ids();
        let (mut new, mut old) = if new_first {
            let new =
                Handshake::initiator_offering(&a, pattern, Some(&b.public_key()), None, offer)?;
            (new, OldNode::new(&b, pattern, None))
        } else {
            let new = Handshake::responder_offering(&b, pattern, None, offer)?;
            let old = match pattern {
                Pattern::XX => OldNode::initiator_xx(&a),
                Pattern::IK => OldNode::new(&a, pattern, Some(&b.public_key())),
            };
            (new, old)
        };
        let mut buf = [0u8; MAX_HANDSHAKE_LEN];
        let mut new_turn = new_first;
        while !(new.is_finished() && old.hs.is_handshake_finished()) {
            if new_turn {
                let n = new.write_message(&mut buf)?;
                old.read(&buf[..n])?;
            } else {
                let n = old.write(&mut buf);
                new.read_message(&buf[..n])?;
            }
            new_turn = !new_turn;
        }
        let (t, _) = new.into_transport()?;
        Ok((t, old.hs.into_stateless_transport_mode()?))
    }

    #[test]
    fn old_nodes_link_with_new_nodes_that_offer_nothing() {
        for pattern in [Pattern::XX, Pattern::IK] {
            for new_first in [true, false] {
                let (mut t, old) = with_old_node(pattern, new_first, false).unwrap();
                assert_eq!(t.suite(), Suite::ChaCha20Poly1305);
                for (k, msg) in [&b"new to old"[..], &[1; 1400]].iter().enumerate() {
                    let mut ct = vec![0u8; msg.len() + TAG_LEN];
                    let (c, n) = t.encrypt(msg, &mut ct).unwrap();
                    let mut pt = vec![0u8; msg.len()];
                    assert_eq!(old.read_message(c, &ct[..n], &mut pt).unwrap(), msg.len());
                    assert_eq!(&pt[..], *msg);
                    let n = old.write_message(k as u64, msg, &mut ct).unwrap();
                    assert_eq!(t.decrypt(k as u64, &ct[..n], &mut pt).unwrap(), msg.len());
                    assert_eq!(&pt[..], *msg);
                }
            }
        }
    }

    #[test]
    fn a_new_responder_answers_an_old_initiator_without_flags() {
        // An old initiator sends no flags, so a new responder that offers AES sends none
        // back (the old node would refuse them) and the suite is ChaCha.
        let (a, b) = ids();
        let mut buf = [0u8; MAX_HANDSHAKE_LEN];
        for pattern in [Pattern::XX, Pattern::IK] {
            let mut old = match pattern {
                Pattern::XX => OldNode::initiator_xx(&a),
                Pattern::IK => OldNode::new(&a, pattern, Some(&b.public_key())),
            };
            let mut new = Handshake::responder_offering(&b, pattern, None, true).unwrap();
            let n = old.write(&mut buf);
            new.read_message(&buf[..n]).unwrap();
            assert!(!new.remote_flagged);
            let n = new.write_message(&mut buf).unwrap();
            assert_eq!(new.sent_flags, 0);
            old.read(&buf[..n]).unwrap();
            assert_eq!(new.suite(), Suite::ChaCha20Poly1305);
        }
        // Every mix of old and new links when the new side offers nothing or responds.
        for pattern in [Pattern::XX, Pattern::IK] {
            let (t, _) = with_old_node(pattern, false, true).unwrap();
            assert_eq!(t.suite(), Suite::ChaCha20Poly1305);
        }
    }

    #[test]
    fn old_nodes_refuse_an_offering_initiator() {
        // An old node insists on an empty XX first message and a 32-byte key, so it refuses
        // a new initiator's offer (silently, as any bad handshake): the router tries again
        // without it.
        for pattern in [Pattern::XX, Pattern::IK] {
            assert!(matches!(
                with_old_node(pattern, true, true),
                Err(NoiseError::NoIdentity)
            ));
            assert!(with_old_node(pattern, true, false).is_ok());
        }
    }

    #[test]
    fn an_offer_stripped_in_flight_breaks_the_handshake() {
        // XX's offer rides in the clear first message; it is part of the transcript, so a
        // middlebox that strips it (to force ChaCha) breaks the responder's next message.
        let (a, b) = ids();
        let mut buf = [0u8; MAX_HANDSHAKE_LEN];
        let mut i = Handshake::initiator_offering(&a, Pattern::XX, None, None, true).unwrap();
        let mut r = Handshake::responder_offering(&b, Pattern::XX, None, true).unwrap();
        let n = i.write_message(&mut buf).unwrap();
        assert_eq!(n, 33);
        r.read_message(&buf[..32]).unwrap();
        let n = r.write_message(&mut buf).unwrap();
        assert!(i.read_message(&buf[..n]).is_err());
    }

    #[test]
    fn replays_and_forgeries_fail_for_both_suites() {
        for suite in SUITES {
            let (mut ti, mut tr) = transports(suite);
            let mut ct = [0u8; 64 + TAG_LEN];
            let mut pt = [0u8; 64];
            let (c0, n0) = ti.encrypt(&[9u8; 64], &mut ct).unwrap();
            let good = ct[..n0].to_vec();
            // Flipped bits in body and tag, a wrong counter, truncations: all Decrypt.
            for flip in [0, 63, 64, 64 + TAG_LEN - 1] {
                let mut bad = good.clone();
                bad[flip] ^= 0x80;
                assert!(matches!(
                    tr.decrypt(c0, &bad, &mut pt),
                    Err(NoiseError::Snow(snow::Error::Decrypt))
                ));
                assert!(matches!(
                    tr.decrypt_in_place(c0, &mut bad),
                    Err(NoiseError::Snow(snow::Error::Decrypt))
                ));
            }
            assert!(tr.decrypt(c0 + 1, &good, &mut pt).is_err());
            assert!(tr.decrypt(c0, &good[..TAG_LEN - 1], &mut pt).is_err());
            assert!(tr.decrypt(c0, &good[..n0 - 1], &mut pt).is_err());
            assert!(tr.decrypt(c0, &[], &mut pt).is_err());
            assert!(tr.decrypt_in_place(c0, &mut []).is_err());
            // Output too small: refused without committing the counter.
            assert!(tr.decrypt(c0, &good, &mut pt[..63]).is_err());
            // A packet from the other direction's key doesn't open here either.
            let (c1, n1) = tr.encrypt(&[9u8; 64], &mut ct).unwrap();
            assert_eq!(c1, c0);
            assert!(tr.decrypt(c0, &ct[..n1], &mut pt).is_err());
            // None of that moved the window: the real packet opens once, then is a replay.
            assert_eq!(tr.decrypt(c0, &good, &mut pt).unwrap(), 64);
            assert_eq!(pt, [9u8; 64]);
            assert!(matches!(
                tr.decrypt(c0, &good, &mut pt),
                Err(NoiseError::Replay)
            ));
            let mut again = good.clone();
            assert!(matches!(
                tr.decrypt_in_place(c0, &mut again),
                Err(NoiseError::Replay)
            ));
            assert!(matches!(
                tr.decrypt(u64::MAX, &good, &mut pt),
                Err(NoiseError::Replay)
            ));
            // Stale: older than the window.
            ti.next_send = 1 << 20;
            let (c, n) = ti.encrypt(b"new", &mut ct).unwrap();
            assert!(tr.decrypt(c, &ct[..n], &mut pt).is_ok());
            let mut old_ct = [0u8; 3 + TAG_LEN];
            ti.next_send = 5;
            let (c, n) = ti.encrypt(b"old", &mut old_ct).unwrap();
            assert!(matches!(
                tr.decrypt(c, &old_ct[..n], &mut pt),
                Err(NoiseError::Replay)
            ));
        }
    }

    #[test]
    fn in_place_variants_match_and_interoperate() {
        for suite in SUITES {
            let aes = suite == Suite::Aes256Gcm;
            let (mut i, mut r) = handshake(Pattern::IK, None, aes, aes);
            // Two identical transports per side, from the same handshake.
            let (mut a1, _) = i.make_transport().unwrap();
            let (mut a2, _) = i.make_transport().unwrap();
            let (mut b1, _) = r.make_transport().unwrap();
            for len in [0usize, 1, 100, 1400] {
                let plain: Vec<u8> = (0..len).map(|k| k as u8 ^ 0x3c).collect();
                let mut ct = vec![0u8; len + TAG_LEN];
                let (c, n) = a1.encrypt(&plain, &mut ct).unwrap();
                // In place, with spare room after the tag.
                let mut buf = plain.clone();
                buf.resize(len + TAG_LEN + 7, 0xee);
                let (c2, n2) = a2.encrypt_in_place(&mut buf, len).unwrap();
                assert_eq!((c, n), (c2, n2));
                assert_eq!(ct, buf[..n2], "{suite} len {len}");
                assert_eq!(buf[n2..], [0xee; 7]);
                // Open in place.
                let m = b1.decrypt_in_place(c, &mut buf[..n2]).unwrap();
                assert_eq!(buf[..m], plain[..]);
            }
            // No room for the tag: refused, counter unused.
            let sent = a2.sent();
            let mut small = [0u8; 20];
            assert!(matches!(
                a2.encrypt_in_place(&mut small, 5),
                Err(NoiseError::Snow(snow::Error::Input))
            ));
            assert!(a2.encrypt_in_place(&mut small, usize::MAX).is_err());
            assert_eq!(a2.sent(), sent);
        }
    }

    #[test]
    fn exhausted_transports_refuse_to_send() {
        for suite in SUITES {
            let (mut ti, _) = transports(suite);
            ti.next_send = REJECT_AFTER_MESSAGES;
            let mut buf = [0u8; 32];
            assert!(matches!(
                ti.encrypt(b"x", &mut buf),
                Err(NoiseError::Exhausted)
            ));
            assert!(matches!(
                ti.encrypt_in_place(&mut buf, 1),
                Err(NoiseError::Exhausted)
            ));
            assert!(ti.needs_rekey());
        }
    }

    proptest! {
        #[test]
        fn decrypt_never_panics(
            aes in any::<bool>(),
            counter in any::<u64>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            out_len in 0usize..300,
        ) {
            let suite = if aes { Suite::Aes256Gcm } else { Suite::ChaCha20Poly1305 };
            let (_, mut tr) = transports(suite);
            let mut out = vec![0u8; out_len];
            prop_assert!(tr.decrypt(counter, &bytes, &mut out).is_err());
            let mut buf = bytes.clone();
            prop_assert!(tr.decrypt_in_place(counter, &mut buf).is_err());
        }
    }
}
