//! Keys shared by links and sessions: the established transports of one peer (current and
//! previous, so packets in flight across a rekey still decrypt), the rule that settles
//! simultaneous handshakes, and the table of handshakes in progress.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crypto::noise::{Handshake, Transport};
use crypto::PublicKey;

/// Start a new handshake once the current keys are this old.
pub const REKEY_AFTER: Duration = Duration::from_secs(120);
/// Never use keys older than this.
pub const REJECT_AFTER: Duration = Duration::from_secs(180);
/// Two handshakes finishing within this window count as simultaneous.
pub const SIMULTANEOUS: Duration = Duration::from_secs(3);

/// One established transport.
#[derive(Debug)]
pub struct Keys {
    /// The transport.
    pub transport: Transport,
    /// Our index: incoming data names it.
    pub local_idx: u32,
    /// The peer's index: outgoing data names it.
    pub remote_idx: u32,
    /// When the handshake finished.
    pub since: Instant,
    /// Whether we initiated it.
    pub we_initiated: bool,
}

/// A peer's established transports.
#[derive(Debug, Default)]
pub struct KeyPair {
    /// Used for sending.
    pub current: Option<Keys>,
    /// Still accepted for receiving.
    pub previous: Option<Keys>,
}

impl KeyPair {
    /// Installs freshly finished keys. When both sides dialed at once, each ends up with two
    /// sessions; both keep the one initiated by the lower public key for sending (and accept
    /// both), so the two ends agree without a further message. Returns the local indices of
    /// keys that are no longer reachable.
    pub fn install(
        &mut self,
        new: Keys,
        local: &PublicKey,
        remote: &PublicKey,
        now: Instant,
    ) -> Vec<u32> {
        let initiator = |k: &Keys| if k.we_initiated { *local } else { *remote };
        let mut gone = Vec::new();
        let keep_current = match &self.current {
            Some(cur) => {
                now.saturating_duration_since(cur.since) < SIMULTANEOUS
                    && cur.we_initiated != new.we_initiated
                    && initiator(cur) < initiator(&new)
            }
            None => false,
        };
        if keep_current {
            if let Some(p) = self.previous.replace(new) {
                gone.push(p.local_idx);
            }
        } else {
            if let Some(p) = self.previous.take() {
                gone.push(p.local_idx);
            }
            self.previous = self.current.replace(new);
        }
        gone
    }

    /// [`KeyPair::install`], keeping `index` (local index → owner) in step with the keys held.
    pub fn install_indexed<V>(
        &mut self,
        new: Keys,
        local: &PublicKey,
        remote: &PublicKey,
        now: Instant,
        index: &mut BTreeMap<u32, V>,
        owner: V,
    ) {
        let idx = new.local_idx;
        for gone in self.install(new, local, remote, now) {
            index.remove(&gone);
        }
        index.insert(idx, owner);
    }

    /// The peer just sent with the keys at local index `idx`, which it therefore holds: if
    /// they are our `previous` keys and both our sets come from handshakes the peer started
    /// (it completed an earlier try than the one we answered last, or still sends on the old
    /// keys during its rekey), send with the keys it uses. Keys we initiated are left alone.
    pub fn confirm(&mut self, idx: u32) {
        let swap = matches!(
            (&self.previous, &self.current),
            (Some(p), Some(c)) if p.local_idx == idx && !p.we_initiated && !c.we_initiated
        );
        if swap {
            std::mem::swap(&mut self.previous, &mut self.current);
        }
    }

    /// The keys whose local index is `idx`.
    pub fn by_index(&mut self, idx: u32) -> Option<&mut Keys> {
        [self.current.as_mut(), self.previous.as_mut()]
            .into_iter()
            .flatten()
            .find(|k| k.local_idx == idx)
    }

    /// The keys to send with, unless expired.
    pub fn sending(&mut self, now: Instant) -> Option<&mut Keys> {
        self.current
            .as_mut()
            .filter(|k| now.saturating_duration_since(k.since) < REJECT_AFTER)
    }

    /// Whether a new handshake is due: we have no usable keys, or ours are old.
    pub fn needs_handshake(&self, now: Instant) -> bool {
        match &self.current {
            None => true,
            Some(k) => {
                let age = now.saturating_duration_since(k.since);
                // The initiator rekeys on time; the responder steps in a little later in case
                // the initiator went quiet.
                (age >= REKEY_AFTER && k.we_initiated)
                    || age >= REKEY_AFTER + Duration::from_secs(15)
                    || k.transport.needs_rekey()
            }
        }
    }

    /// All local indices held.
    pub fn indices(&self) -> Vec<u32> {
        [self.current.as_ref(), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .map(|k| k.local_idx)
            .collect()
    }

    /// Forgets all keys, returning their indices.
    pub fn clear(&mut self) -> Vec<u32> {
        let v = self.indices();
        self.current = None;
        self.previous = None;
        v
    }
}

/// A handshake in progress, with what the owner needs to resume it.
#[derive(Debug)]
pub struct Pending<C> {
    /// The Noise state.
    pub hs: Handshake,
    /// The peer's index, once known.
    pub remote_idx: Option<u32>,
    /// When it started.
    pub started: Instant,
    /// Owner's context (where to send, what to do on completion).
    pub ctx: C,
}

/// Handshakes in progress by local index, bounded: when full, the oldest is dropped, so a
/// flood of handshakes can't grow memory.
#[derive(Debug)]
pub struct HandshakeTable<C> {
    map: BTreeMap<u32, Pending<C>>,
    cap: usize,
    timeout: Duration,
}

impl<C> HandshakeTable<C> {
    /// A table holding at most `cap` handshakes, each for at most `timeout`.
    pub fn new(cap: usize, timeout: Duration) -> Self {
        HandshakeTable {
            map: BTreeMap::new(),
            cap,
            timeout,
        }
    }
    /// Adds one, evicting the oldest if full.
    pub fn insert(&mut self, idx: u32, p: Pending<C>) {
        if self.map.len() >= self.cap {
            if let Some(&old) = self
                .map
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k)
            {
                self.map.remove(&old);
            }
        }
        self.map.insert(idx, p);
    }
    /// Takes the handshake with this index.
    pub fn take(&mut self, idx: u32) -> Option<Pending<C>> {
        self.map.remove(&idx)
    }
    /// Whether the index is in use.
    pub fn contains(&self, idx: u32) -> bool {
        self.map.contains_key(&idx)
    }
    /// Drops handshakes older than the timeout.
    pub fn expire(&mut self, now: Instant) {
        let t = self.timeout;
        self.map
            .retain(|_, p| now.saturating_duration_since(p.started) < t);
    }
    /// Number in progress.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Whether none are in progress.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// Removes those matching `f`.
    pub fn retain(&mut self, mut f: impl FnMut(&Pending<C>) -> bool) {
        self.map.retain(|_, p| f(p));
    }
    /// Iterates over those in progress.
    pub fn iter(&self) -> impl Iterator<Item = (&u32, &Pending<C>)> {
        self.map.iter()
    }
}

/// A token bucket for rate limits.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// `rate` tokens per second, holding up to `burst`.
    pub fn new(rate: f64, burst: f64) -> Self {
        TokenBucket {
            tokens: burst,
            rate,
            burst,
            last: None,
        }
    }
    /// Takes a token if one is there.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(l) = self.last {
            self.tokens = (self.tokens
                + now.saturating_duration_since(l).as_secs_f64() * self.rate)
                .min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
