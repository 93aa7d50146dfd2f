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
/// Current keys the peer hasn't used for this long, while it uses the previous ones, are
/// taken for keys it doesn't hold ([`KeyPair::follow`]).
pub const FOLLOW_AFTER: Duration = Duration::from_secs(1);
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
    /// Whether the peer is known to hold these keys: we read the handshake's last message,
    /// or the peer has sent with them. The side that sends the last message can't know
    /// whether it arrived, so it keeps sending with older keys the peer is known to hold
    /// until then (as WireGuard's responder waits for the initiator's first data). Links
    /// work this way; sessions set it at once (their responder's answer goes with data).
    pub confirmed: bool,
    /// When the peer last sent us data with these keys ([`KeyPair::confirm`]).
    pub heard: Option<Instant>,
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
            // Our own try lost the tie: its keys only matter if the peer ends on them. When
            // `previous` is another fresh set of the winning side (the peer's retry we also
            // answered, which `confirm` put behind the first), the peer sends with one of its
            // own two sets: keep both and drop ours. Dropping the peer's newer set instead
            // left it sending on keys we no longer held until `follow` gave up on them a
            // second later (fail BA-1,000 seed 1, docs/sims.md "thirteenth session").
            let winners_both = self.previous.as_ref().is_some_and(|p| {
                p.we_initiated != new.we_initiated
                    && now.saturating_duration_since(p.since) < SIMULTANEOUS
            });
            if winners_both {
                gone.push(new.local_idx);
            } else if let Some(p) = self.previous.replace(new) {
                gone.push(p.local_idx);
            }
        } else {
            // Of the two older sets the newer stays receivable. `confirm` may have put the
            // peer's older keys back in front (it still sent on them while our answer to its
            // new try was on the way): the peer may be about to use the newer set, and
            // dropping it left the two ends on keys the other no longer held.
            let (keep, drop) = match (self.current.replace(new), self.previous.take()) {
                (Some(a), Some(b)) if a.since >= b.since => (Some(a), Some(b)),
                (Some(a), Some(b)) => (Some(b), Some(a)),
                (a, b) => (a.or(b), None),
            };
            if let Some(d) = drop {
                gone.push(d.local_idx);
            }
            self.previous = keep;
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
        index.insert(idx, owner);
        for gone in self.install(new, local, remote, now) {
            index.remove(&gone);
        }
    }

    /// The peer just sent with the keys at local index `idx`, which it therefore holds: if
    /// they are our `previous` keys and both our sets come from handshakes the peer started
    /// (it completed an earlier try than the one we answered last, or still sends on the old
    /// keys during its rekey), send with the keys it uses. Keys we initiated are left alone.
    pub fn confirm(&mut self, idx: u32, now: Instant) {
        if let Some(k) = self.by_index(idx) {
            k.confirmed = true;
            k.heard = Some(now);
        }
        let swap = matches!(
            (&self.previous, &self.current),
            (Some(p), Some(c)) if p.local_idx == idx && !p.we_initiated && !c.we_initiated
        );
        if swap {
            std::mem::swap(&mut self.previous, &mut self.current);
        }
    }

    /// The peer just sent with the keys at index `idx` (after [`KeyPair::confirm`]). If those
    /// are our `previous` keys and it hasn't sent with our current ones for [`FOLLOW_AFTER`],
    /// it may no longer hold them (a later try it answered can push them out on its side,
    /// after it used them once), so send with the keys it uses. For sessions, whose keys both
    /// ends use at once. (Within `FOLLOW_AFTER` of new keys the old ones may just be in
    /// flight, as after every rekey.)
    pub fn follow(&mut self, idx: u32, now: Instant) {
        let quiet = |k: &Keys| {
            now.saturating_duration_since(k.heard.unwrap_or(k.since)) >= FOLLOW_AFTER
                && now.saturating_duration_since(k.since) >= FOLLOW_AFTER
        };
        let swap = matches!(
            (&self.previous, &self.current),
            (Some(p), Some(c)) if p.local_idx == idx && quiet(c)
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

    /// The keys to send with, unless expired: the current ones, or while the peer isn't
    /// known to hold those, the previous ones if it is.
    pub fn sending(&mut self, now: Instant) -> Option<&mut Keys> {
        let fresh = |k: &Keys| now.saturating_duration_since(k.since) < REJECT_AFTER;
        let use_previous = matches!(
            (&self.current, &self.previous),
            (Some(c), Some(p)) if !c.confirmed && p.confirmed && fresh(p)
        );
        if use_previous {
            self.previous.as_mut()
        } else {
            self.current.as_mut().filter(|k| fresh(k))
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crypto::noise::Pattern;
    use crypto::Identity;
    use rand::SeedableRng;

    /// A finished IK handshake's transports: (initiator's, responder's).
    fn transports(seed: u64) -> (Transport, Transport) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (a, b) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
        let mut init = Handshake::initiator(&a, Pattern::IK, Some(&b.public_key()), None).unwrap();
        let mut resp = Handshake::responder(&b, Pattern::IK, None).unwrap();
        let mut buf = [0u8; 512];
        let n = init.write_message(&mut buf).unwrap();
        resp.read_message(&buf[..n]).unwrap();
        let n = resp.write_message(&mut buf).unwrap();
        init.read_message(&buf[..n]).unwrap();
        (
            init.into_transport().unwrap().0,
            resp.into_transport().unwrap().0,
        )
    }

    fn keys(transport: Transport, idx: u32, now: Instant, we_initiated: bool) -> Keys {
        Keys {
            transport,
            local_idx: idx,
            remote_idx: idx + 100,
            since: now,
            we_initiated,
            confirmed: we_initiated,
            heard: None,
        }
    }

    /// The peer retries a handshake while its data on the old keys is still arriving: after
    /// answering two tries we hold both tries' keys, whichever one the peer completes.
    #[test]
    fn a_retry_answered_keeps_the_earlier_tries_keys() {
        let now = Instant::now();
        let (me, peer) = (PublicKey([1; 32]), PublicKey([2; 32]));
        let mut kp = KeyPair::default();
        // The old session (the peer's), then its first try answered.
        kp.install(keys(transports(1).1, 1, now, false), &me, &peer, now);
        let t1 = now + Duration::from_secs(30);
        kp.install(keys(transports(2).1, 2, t1, false), &me, &peer, t1);
        // Data on the old keys, sent before our answer reached the peer.
        kp.confirm(1, t1);
        assert_eq!(kp.current.as_ref().unwrap().local_idx, 1);
        // Its second try answered: the first try's keys stay.
        let t2 = t1 + Duration::from_millis(250);
        let gone = kp.install(keys(transports(3).1, 3, t2, false), &me, &peer, t2);
        assert_eq!(gone, vec![1]);
        assert_eq!(kp.current.as_ref().unwrap().local_idx, 3);
        assert!(
            kp.by_index(2).is_some(),
            "the first try's keys are still held"
        );
        // The peer completed the first try and sends with it: we follow.
        kp.confirm(2, t2);
        assert_eq!(kp.sending(t2).unwrap().local_idx, 2);
    }

    /// Both ends' sessions went stale at once and both handshook, the peer (the lower key,
    /// whose tries win the tie) twice: we answered its two tries, its data on the first put
    /// that one back in front, then our own try finished. The peer sends with one of its
    /// own tries' keys: ours are the ones to drop, not its second try's.
    #[test]
    fn crossed_tries_keep_both_of_the_winners_keys() {
        let now = Instant::now();
        // The peer's key is the lower: its tries win.
        let (me, peer) = (PublicKey([2; 32]), PublicKey([1; 32]));
        let mut kp = KeyPair::default();
        kp.install(keys(transports(1).1, 1, now, false), &me, &peer, now);
        let t = now + Duration::from_secs(30);
        kp.install(keys(transports(2).1, 2, t, false), &me, &peer, t);
        let t1 = t + Duration::from_millis(170);
        kp.install(keys(transports(3).1, 3, t1, false), &me, &peer, t1);
        kp.confirm(2, t1);
        assert_eq!(kp.current.as_ref().unwrap().local_idx, 2);
        let t2 = t1 + Duration::from_millis(110);
        let gone = kp.install(keys(transports(4).0, 4, t2, true), &me, &peer, t2);
        assert_eq!(gone, vec![4], "our losing try's keys go");
        assert!(kp.by_index(3).is_some(), "the peer's second try stays");
        kp.confirm(3, t2);
        assert_eq!(kp.sending(t2).unwrap().local_idx, 3);
        // Without a second set of the peer's, our try's keys replace the old ones as before.
        let mut kp = KeyPair::default();
        kp.install(keys(transports(5).1, 5, now, false), &me, &peer, now);
        kp.install(keys(transports(6).1, 6, t, false), &me, &peer, t);
        let gone = kp.install(keys(transports(7).0, 7, t1, true), &me, &peer, t1);
        assert_eq!(gone, vec![5]);
        assert_eq!(kp.current.as_ref().unwrap().local_idx, 6);
        assert!(kp.by_index(7).is_some());
    }

    /// Sessions: the peer goes on sending with our previous keys and never with the current
    /// ones: after `FOLLOW_AFTER` we send with the ones it uses (before, they may just have
    /// been in flight). Current keys it keeps using stay.
    #[test]
    fn sessions_follow_the_keys_the_peer_uses() {
        let now = Instant::now();
        let (me, peer) = (PublicKey([1; 32]), PublicKey([2; 32]));
        let mut kp = KeyPair::default();
        kp.install(keys(transports(1).0, 1, now, true), &me, &peer, now);
        let t = now + Duration::from_secs(10);
        kp.install(keys(transports(2).0, 2, t, true), &me, &peer, t);
        let heard = |kp: &mut KeyPair, idx, at| {
            kp.confirm(idx, at);
            kp.follow(idx, at);
        };
        heard(&mut kp, 1, t + Duration::from_millis(200));
        assert_eq!(kp.current.as_ref().unwrap().local_idx, 2, "in flight: stay");
        heard(&mut kp, 1, t + FOLLOW_AFTER);
        assert_eq!(kp.current.as_ref().unwrap().local_idx, 1, "follow the peer");
        // Current keys the peer keeps using stay; once it stops (and uses the previous
        // ones) for FOLLOW_AFTER, we follow.
        let mut kp = KeyPair::default();
        kp.install(keys(transports(3).0, 3, now, true), &me, &peer, now);
        kp.install(keys(transports(4).0, 4, t, true), &me, &peer, t);
        let t2 = t + FOLLOW_AFTER * 2;
        heard(&mut kp, 4, t2);
        heard(&mut kp, 3, t2 + Duration::from_millis(500));
        assert_eq!(kp.current.as_ref().unwrap().local_idx, 4);
        heard(&mut kp, 3, t2 + FOLLOW_AFTER);
        assert_eq!(kp.current.as_ref().unwrap().local_idx, 3);
    }

    /// The side that sent a handshake's last message (here the IK responder) goes on sending
    /// with the keys the peer is known to hold until the peer uses the new ones: if the
    /// response was lost, the peer can still read us.
    #[test]
    fn unconfirmed_keys_wait_for_the_peer() {
        let now = Instant::now();
        let (me, peer) = (PublicKey([1; 32]), PublicKey([2; 32]));
        let mut kp = KeyPair::default();
        kp.install(keys(transports(1).0, 1, now, true), &me, &peer, now);
        assert_eq!(kp.sending(now).unwrap().local_idx, 1);
        // The peer rekeys; we answer (our response may be lost).
        let later = now + Duration::from_secs(10);
        kp.install(keys(transports(2).1, 2, later, false), &me, &peer, later);
        assert_eq!(kp.current.as_ref().unwrap().local_idx, 2);
        assert_eq!(
            kp.sending(later).unwrap().local_idx,
            1,
            "old keys until confirmed"
        );
        // The old keys still arriving confirm nothing new.
        kp.confirm(1, later);
        assert_eq!(kp.sending(later).unwrap().local_idx, 1);
        // The peer sends with the new keys: it holds them.
        kp.confirm(2, later);
        assert_eq!(kp.sending(later).unwrap().local_idx, 2);
        // Without confirmed keys to fall back on, the new ones go at once.
        let mut fresh = KeyPair::default();
        fresh.install(keys(transports(3).1, 3, now, false), &me, &peer, now);
        assert_eq!(fresh.sending(now).unwrap().local_idx, 3);
        // Nor does an expired confirmed key hold sending back.
        let mut old = KeyPair::default();
        old.install(keys(transports(4).0, 4, now, true), &me, &peer, now);
        let late = now + REJECT_AFTER;
        old.install(keys(transports(5).1, 5, late, false), &me, &peer, late);
        assert_eq!(old.sending(late).unwrap().local_idx, 5);
    }
}
