//! End-to-end sessions: Noise IK from source to destination over the switch, keyed by the
//! destination's address. The key comes from a lookup and must hash to the address; the
//! receiver only accepts inner IPv6 packets whose source is the hash of the session's key.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crypto::noise::{Handshake, Pattern, TAG_LEN};
use crypto::{Address, PublicKey};
use switch::{Director, FrameKind, Route};

use crate::icmp::{self, IcmpError};
use crate::node::{Node, SessionHs};
use crate::tunnel::{KeyPair, Keys, Pending};
use crate::wire::{self, msg_type, TunnelMsg, DATA_HEADER_LEN};

/// A failed lookup's back-off is forgotten this long after it ended.
const UNREACHABLE_FORGET: Duration = Duration::from_secs(30);
/// Most destinations remembered as unreachable (a scan of made-up addresses can't grow it).
const UNREACHABLE_MAX: usize = 1024;
/// Packets held per destination while its lookup or handshake runs.
pub const QUEUE_LIMIT: usize = 64;
/// A session handshake is retried after 250 ms, 500 ms, then every second (one lost packet
/// must not stall a new flow for a whole second)...
fn handshake_retry(attempts: u32) -> Duration {
    Duration::from_millis(250 << attempts.saturating_sub(1).min(2))
}
/// ...this many times (about 4.75 s) before the destination counts as unreachable.
const HANDSHAKE_ATTEMPTS: u32 = 6;
/// Packets queued for a destination whose lookup failed wait this long for a later one,
/// while the mesh is forming: our place in the tree moved less than `MESH_FORMING` ago.
const QUEUE_HOLD: Duration = Duration::from_millis(1000);
const MESH_FORMING: Duration = Duration::from_secs(2);
/// A reply path learned from incoming packets is preferred while this fresh.
const RX_PATH_FRESH: Duration = Duration::from_millis(1500);
/// Sessions idle this long are dropped.
const SESSION_IDLE: Duration = Duration::from_secs(300);
/// How often paths of a busy session are probed.
const PROBE_EVERY: Duration = Duration::from_millis(1000);
/// Most handshake tries held at once while their initiators are looked up.
const HELD_TRIES_MAX: usize = 32;
/// A held try is dropped this long after it came (the initiator has given up by then).
const HELD_TRY_TTL: Duration = Duration::from_secs(5);

/// An initiator's handshake try that we could not answer yet: the way back overflowed and
/// no route to the initiator was known. Answered as soon as one is.
#[derive(Debug)]
pub(crate) struct HeldTry {
    /// The responder's handshake, the initiator's message read.
    hs: Handshake,
    /// The initiator's index for this try.
    sender: u32,
    /// The initiator's key (authenticated by the message).
    key: PublicKey,
    /// When the try came.
    since: Instant,
}

/// Per-session counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// IPv6 bytes received.
    pub rx_bytes: u64,
    /// IPv6 bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

/// State of one end-to-end session.
#[derive(Debug)]
pub struct Session {
    pub(crate) key: Option<PublicKey>,
    pub(crate) addr: Address,
    pub(crate) keys: KeyPair,
    /// Reverse route of the last authenticated packet, and when it came.
    pub(crate) rx_path: Option<(Route, Instant)>,
    pub(crate) queue: VecDeque<Vec<u8>>,
    /// When the queue last went from empty to holding a packet.
    pub(crate) queued_since: Option<Instant>,
    pub(crate) hs_started: Option<Instant>,
    pub(crate) hs_attempts: u32,
    pub(crate) last_rx: Instant,
    pub(crate) last_tx: Instant,
    pub(crate) last_probe: Instant,
    pub(crate) current_path: Option<Route>,
    pub(crate) stats: SessionStats,
    /// Last lookup run to find more paths (failover needs a second one ready).
    pub(crate) last_discovery: Instant,
}

/// Session information for the admin interface.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// Remote address.
    pub address: Address,
    /// Remote key, once known.
    pub key: Option<PublicKey>,
    /// Whether keys are established.
    pub established: bool,
    /// Path in use.
    pub path: Option<Route>,
    /// Traffic.
    pub stats: SessionStats,
    /// Packets waiting.
    pub queued: usize,
    /// Whether a direct link to the node was tried, and how it went.
    pub direct: Option<crate::routing::DirectState>,
}

impl Session {
    fn new(addr: Address, now: Instant) -> Session {
        let past = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
        Session {
            key: None,
            addr,
            keys: KeyPair::default(),
            rx_path: None,
            queue: VecDeque::new(),
            queued_since: None,
            hs_started: None,
            hs_attempts: 0,
            last_rx: past,
            last_tx: past,
            last_probe: past,
            current_path: None,
            stats: SessionStats::default(),
            last_discovery: past,
        }
    }
}

impl Node {
    /// End-to-end sessions, for the admin interface.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions
            .values()
            .map(|s| SessionInfo {
                address: s.addr,
                key: s.key,
                established: s.keys.current.is_some(),
                path: s.current_path,
                stats: s.stats,
                queued: s.queue.len(),
                direct: self.direct.get(&s.addr).map(|d| d.state),
            })
            .collect()
    }

    /// Handles an IPv6 packet read from the TUN device.
    pub fn handle_tun_packet(&mut self, now: Instant, packet: &[u8]) {
        let Some((src, dst)) = icmp::addresses(packet) else {
            self.counters.drop_tun_invalid += 1;
            return;
        };
        let me = self.id.address().ip();
        if src != me || dst.octets()[0] != 0xfc || dst == me {
            // Router solicitations from fe80::, multicast, anything not ours to carry.
            self.counters.drop_tun_invalid += 1;
            return;
        }
        if packet.len() > self.cfg.mtu {
            if let Some(e) = icmp::error(me, packet, IcmpError::TooBig(self.cfg.mtu as u32)) {
                let p = self.tun_packet(&e);
                self.tun_out.push_back(p);
            }
            self.counters.drop_too_big += 1;
            return;
        }
        let addr = Address::from(dst);
        // A direct peer: the link's encryption is enough.
        if let Some(&d) = self.link_by_addr.get(&addr) {
            if self.links[d as usize].as_ref().is_some_and(|l| l.up)
                && self.send_on_link(now, d, crate::node::link_kind::PEER_IP, packet)
            {
                return;
            }
        }
        self.send_to_address(now, addr, packet);
    }

    fn send_to_address(&mut self, now: Instant, addr: Address, packet: &[u8]) {
        // Its lookup just failed: answer at once instead of looking it up for every packet
        // (a stream of packets to a missing address made a stream of lookups).
        let backing_off = self
            .unreachable_until
            .get(&addr)
            .is_some_and(|&(until, _)| now < until);
        if backing_off
            && self
                .sessions
                .get(&addr)
                .is_none_or(|s| s.keys.current.is_none())
        {
            let me = self.id.address().ip();
            if let Some(e) = icmp::error(me, packet, IcmpError::NoRoute) {
                let p = self.tun_packet(&e);
                self.tun_out.push_back(p);
            }
            self.counters.drop_unreachable += 1;
            return;
        }
        self.sessions
            .entry(addr)
            .or_insert_with(|| Session::new(addr, now));
        if self.try_send_session(now, addr, packet) {
            return;
        }
        let s = self.sessions.get_mut(&addr).expect("session exists");
        if s.queue.len() >= QUEUE_LIMIT {
            s.queue.pop_front();
            self.counters.drop_queue_full += 1;
        }
        if s.queue.is_empty() {
            s.queued_since = Some(now);
        }
        s.queue.push_back(packet.to_vec());
        self.ensure_session_handshake(now, addr);
    }

    /// The route to use for `addr`: a fresh reply path, else the table's best, else any
    /// reply path we have.
    pub(crate) fn session_route(&self, now: Instant, addr: &Address) -> Option<Route> {
        let s = self.sessions.get(addr);
        let rx = s.and_then(|s| s.rx_path);
        let best = self.table.get(addr).and_then(|e| e.best()).map(|p| p.route);
        if let Some((l, t)) = rx {
            // A fresh reply path follows the sender's choice, unless we know a shorter one
            // (a direct link just opened, say).
            if now.saturating_duration_since(t) < RX_PATH_FRESH
                && best.is_none_or(|b| b.hops() >= l.hops())
            {
                return Some(l);
            }
        }
        best.or(rx.map(|(l, _)| l))
    }

    /// Encrypts and sends `packet` if the session has keys and a route.
    fn try_send_session(&mut self, now: Instant, addr: Address, packet: &[u8]) -> bool {
        let Some(route) = self.session_route(now, &addr) else {
            return false;
        };
        let mut body = self.buffer();
        let s = self.sessions.get_mut(&addr).expect("session exists");
        let Some(keys) = s.keys.sending(now) else {
            return false;
        };
        body.resize(DATA_HEADER_LEN + packet.len() + TAG_LEN, 0);
        let Ok((counter, n)) = keys.transport.encrypt(packet, &mut body[DATA_HEADER_LEN..]) else {
            return false;
        };
        wire::write_data_header(&mut body, keys.remote_idx, counter);
        body.truncate(DATA_HEADER_LEN + n);
        s.last_tx = now;
        s.stats.tx_packets += 1;
        s.stats.tx_bytes += packet.len() as u64;
        if s.current_path != Some(route) {
            if let Some(old) = s.current_path {
                self.counters.path_switches += 1;
                tracing::debug!(
                    me = %self.id.address(),
                    peer = %addr,
                    from_hops = old.hops(),
                    to_hops = route.hops(),
                    reply_path = s.rx_path.is_some_and(|(l, _)| l == route),
                    rx = ?s.rx_path.map(|(l, t)| (l.hops(), now.saturating_duration_since(t))),
                    // (hops, rtt, failed how long ago) of each path the table holds.
                    table = ?self.table.get(&addr).map(|e| {
                        e.paths
                            .iter()
                            .map(|p| {
                                let failed = p.failed_at.map(|f| now.saturating_duration_since(f));
                                (p.route.hops(), p.rtt, failed)
                            })
                            .collect::<Vec<_>>()
                    }),
                    "session path switched"
                );
            }
            s.current_path = Some(route);
        }
        let mut sent = self.send_frame(now, route, FrameKind::Session, &body);
        if !sent {
            // First hop down: the link-down handler has marked the path; try the next once.
            if let Some(next) = self.session_route(now, &addr).filter(|&n| n != route) {
                self.sessions.get_mut(&addr).expect("session").current_path = Some(next);
                self.counters.path_switches += 1;
                sent = self.send_frame(now, next, FrameKind::Session, &body);
            }
        }
        self.recycle(body);
        sent
    }

    /// Starts (or retries) the IK handshake to `addr`, or the lookup it needs first.
    pub(crate) fn ensure_session_handshake(&mut self, now: Instant, addr: Address) {
        let Some(s) = self.sessions.get(&addr) else {
            return;
        };
        if s.hs_started
            .is_some_and(|t| now.saturating_duration_since(t) < handshake_retry(s.hs_attempts))
        {
            return;
        }
        let key = s.key.or_else(|| self.table.get(&addr).map(|e| e.key));
        let route = self.session_route(now, &addr);
        let (Some(key), Some(route)) = (key, route) else {
            self.start_lookup(now, addr, None);
            return;
        };
        let Ok(hs) = Handshake::initiator(&self.id, Pattern::IK, Some(&key), None) else {
            return;
        };
        // An older node silently refuses an AES offer: every other try goes without one.
        let attempts = self.sessions.get(&addr).map_or(0, |s| s.hs_attempts);
        let mut hs = hs.with_aes_offer(crypto::noise::aes_offered() && attempts & 1 == 0);
        let idx = self.new_index();
        let Some(msg) = wire::handshake_message(msg_type::INIT_IK, idx, None, &mut hs) else {
            return;
        };
        // The two newest earlier tries stay answerable: over long paths an answer can take
        // longer than the first retry gaps (250, 500 ms), and then it answers an older try.
        let mut older: Vec<(Instant, u32)> = self
            .session_hs
            .iter()
            .filter(|(_, p)| p.ctx.addr == addr)
            .map(|(&i, p)| (p.started, i))
            .collect();
        older.sort_unstable();
        for &(_, i) in older.iter().rev().skip(2) {
            self.session_hs.take(i);
        }
        self.session_hs.insert(
            idx,
            Pending {
                hs,
                remote_idx: None,
                started: now,
                ctx: SessionHs { addr },
            },
        );
        let s = self.sessions.get_mut(&addr).expect("session exists");
        s.key = Some(key);
        s.hs_started = Some(now);
        s.hs_attempts += 1;
        tracing::debug!(
            me = %self.id.address(),
            peer = %addr,
            idx,
            attempt = s.hs_attempts,
            hops = route.hops(),
            "session handshake: try sent"
        );
        self.counters.session_handshakes_sent += 1;
        self.send_frame(now, route, FrameKind::Session, &msg);
    }

    /// A session message delivered to us; `reverse` is the route back to its sender.
    pub(crate) fn on_session_message(
        &mut self,
        now: Instant,
        reverse: Route,
        came_in: Option<Director>,
        body: &[u8],
    ) {
        let Ok(msg) = TunnelMsg::parse(body) else {
            self.counters.drop_malformed += 1;
            return;
        };
        match msg {
            TunnelMsg::InitIK { sender, noise } => {
                self.on_session_init(now, reverse, came_in, sender, noise)
            }
            TunnelMsg::Response {
                sender,
                receiver,
                noise,
            } => {
                let Some(mut p) = self.session_hs.take(receiver) else {
                    self.counters.drop_unknown_index += 1;
                    tracing::debug!(
                        me = %self.id.address(),
                        receiver,
                        "session handshake: answer to a try no longer held"
                    );
                    return;
                };
                if p.hs.read_message(noise).is_err() || !p.hs.is_finished() {
                    self.counters.drop_handshake_failed += 1;
                    return;
                }
                let addr = p.ctx.addr;
                // One answered try is enough: earlier ones for this destination are done. Later
                // ones stay answerable: the responder may have answered them too, and then holds
                // only the two newest tries' keys; finishing a later try moves us onto them.
                let started = p.started;
                self.session_hs
                    .retain(|q| q.ctx.addr != addr || q.started > started);
                self.finish_session(now, addr, p.hs, receiver, sender, reverse);
            }
            TunnelMsg::Data {
                receiver,
                counter,
                ciphertext,
            } => self.on_session_data(now, reverse, receiver, counter, ciphertext),
            TunnelMsg::InitXX { .. } | TunnelMsg::Final { .. } => self.counters.drop_malformed += 1,
        }
    }

    fn on_session_init(
        &mut self,
        now: Instant,
        reverse: Route,
        came_in: Option<Director>,
        sender: u32,
        noise: &[u8],
    ) {
        // Session handshakes come through an authenticated neighbour: charge its budget, so
        // a flood from strangers on the UDP port can't delay sessions, nor one peer all others.
        let Some(link) = came_in
            .and_then(|d| self.links.get_mut(d as usize))
            .and_then(Option::as_mut)
        else {
            return;
        };
        if !link.session_hs_bucket.take(now) {
            self.counters.drop_handshake_rate += 1;
            return;
        }
        let Ok(mut hs) = Handshake::responder(&self.id, Pattern::IK, None) else {
            return;
        };
        if hs.read_message(noise).is_err() {
            self.counters.drop_handshake_failed += 1;
            return;
        }
        let Some(remote) = hs.remote() else { return };
        let addr = remote.address();
        if addr == self.id.address() {
            return;
        }
        // The way back did not fit in a label (the directors back through hubs are longer
        // than those forward): answer over a route we know to the initiator. Without one,
        // hold the try and look the initiator up: the answer goes out the moment a route is
        // known ([`Node::answer_held_tries`]), not at a retry. (Waiting for the retry failed
        // at 10,000 nodes: the route the lookup found was a long one, the first to be evicted
        // from a full bucket, and gone again by the time each retry came.)
        let Some(route) = self.reply_route(reverse, &remote, None) else {
            tracing::debug!(
                me = %self.id.address(),
                initiator = %addr,
                lookups = self.lookups.len(),
                "session handshake: the way back overflowed and no route is known; looking the initiator up"
            );
            // Bounded: made-up handshakes with overflowed routes can't start lookups, nor
            // hold handshake state, at will. A newer try replaces the one held.
            if self.held_tries.len() < HELD_TRIES_MAX || self.held_tries.contains_key(&addr) {
                self.held_tries.insert(
                    addr,
                    HeldTry {
                        hs,
                        sender,
                        key: remote,
                        since: now,
                    },
                );
                if self.lookups.len() < 32 {
                    self.start_lookup(now, addr, None);
                }
            }
            return;
        };
        self.held_tries.remove(&addr);
        self.answer_try(now, addr, hs, sender, route);
    }

    /// Answers the initiator's try `hs` (its index `sender`) over `route` and installs the
    /// session.
    fn answer_try(
        &mut self,
        now: Instant,
        addr: Address,
        mut hs: Handshake,
        sender: u32,
        route: Route,
    ) {
        let idx = self.new_index();
        let Some(msg) = wire::handshake_message(msg_type::RESPONSE, idx, Some(sender), &mut hs)
        else {
            return;
        };
        tracing::debug!(
            me = %self.id.address(),
            peer = %addr,
            idx,
            sender,
            hops = route.hops(),
            "session handshake: try answered"
        );
        self.send_frame(now, route, FrameKind::Session, &msg);
        self.finish_session(now, addr, hs, idx, sender, route);
    }

    fn finish_session(
        &mut self,
        now: Instant,
        addr: Address,
        hs: Handshake,
        local_idx: u32,
        remote_idx: u32,
        reverse: Route,
    ) {
        let we_initiated = hs.is_initiator();
        let Ok((transport, key)) = hs.into_transport() else {
            return;
        };
        if key.address() != addr {
            self.counters.drop_handshake_failed += 1;
            return;
        }
        self.counters.sessions_established += 1;
        let me = self.id.public_key();
        let s = self
            .sessions
            .entry(addr)
            .or_insert_with(|| Session::new(addr, now));
        s.key = Some(key);
        s.hs_started = None;
        s.hs_attempts = 0;
        if reverse.is_valid() {
            s.rx_path = Some((reverse, now));
        }
        s.last_rx = now;
        s.keys.install_indexed(
            Keys {
                transport,
                local_idx,
                remote_idx,
                since: now,
                we_initiated,
                // Sessions send with new keys at once, the responder too (its answer goes
                // with its first data): holding back its data until the initiator uses the
                // new keys, as links do, slowed recovery after failures (fail BA-1,000
                // seed 4: 1.5 s -> 3.5 s, measured with docs/sims.md's quieter links).
                confirmed: true,
                heard: None,
            },
            &me,
            &key,
            now,
            &mut self.session_idx,
            addr,
        );
        let held = |k: &Option<Keys>| k.as_ref().map(|k| (k.local_idx, k.remote_idx));
        tracing::debug!(
            me = %self.id.address(),
            peer = %addr,
            current = ?held(&s.keys.current),
            previous = ?held(&s.keys.previous),
            "session keys installed (local, remote index)"
        );
        self.flush_session(now, addr);
    }

    fn flush_session(&mut self, now: Instant, addr: Address) {
        while let Some(p) = self
            .sessions
            .get_mut(&addr)
            .and_then(|s| s.queue.pop_front())
        {
            if !self.try_send_session(now, addr, &p) {
                self.sessions
                    .get_mut(&addr)
                    .expect("session")
                    .queue
                    .push_front(p);
                break;
            }
        }
    }

    fn on_session_data(
        &mut self,
        now: Instant,
        reverse: Route,
        receiver: u32,
        counter: u64,
        ct: &[u8],
    ) {
        let Some(&addr) = self.session_idx.get(&receiver) else {
            self.counters.drop_unknown_index += 1;
            tracing::debug!(me = %self.id.address(), receiver, "session data for unknown keys");
            return;
        };
        let me = self.id.address().ip();
        // Decrypt straight into the buffer that goes to the TUN (behind its headroom): no
        // copy, and no allocation when the driver recycles its buffers.
        let head = self.cfg.tun_headroom;
        let mut plain = self.buffer();
        plain.resize(head + ct.len().saturating_sub(TAG_LEN), 0);
        let s = self
            .sessions
            .get_mut(&addr)
            .expect("indexed session exists");
        let Some(keys) = s.keys.by_index(receiver) else {
            return;
        };
        let n = match keys.transport.decrypt(counter, ct, &mut plain[head..]) {
            Ok(n) => n,
            Err(crypto::noise::NoiseError::Replay) => {
                self.counters.drop_replay += 1;
                return;
            }
            Err(_) => {
                self.counters.drop_decrypt += 1;
                return;
            }
        };
        // The peer sends with the keys it holds: if it answered an earlier handshake try than
        // the one we installed last, send with those keys too (key confirmation).
        s.keys.confirm(receiver, now);
        // It may no longer hold the keys we send with: send with the ones it uses.
        s.keys.follow(receiver, now);
        s.last_rx = now;
        if reverse.is_valid() {
            s.rx_path = Some((reverse, now));
        }
        if n == 0 {
            return; // keepalive
        }
        plain.truncate(head + n);
        // Nobody can send as another node: the inner source must be the session's key.
        match icmp::addresses(&plain[head..]) {
            Some((src, dst)) if src == addr.ip() && dst == me => {
                s.stats.rx_packets += 1;
                s.stats.rx_bytes += n as u64;
                self.tun_out.push_back(plain);
            }
            _ => self.counters.drop_spoofed += 1,
        }
    }

    /// Paths matching `broken` died: stop using them as reply paths.
    pub(crate) fn on_path_broken(&mut self, _now: Instant, broken: impl Fn(Route) -> bool) {
        for s in self.sessions.values_mut() {
            if s.rx_path.is_some_and(|(l, _)| broken(l)) {
                s.rx_path = None;
            }
        }
        self.fail_queries_on(&broken);
    }

    /// Routes to `addrs` changed: sessions waiting for them may go ahead, and tries held for
    /// want of a route back may be answered.
    pub(crate) fn on_routes_changed(&mut self, now: Instant, addrs: &[Address]) {
        self.answer_held_tries(now, addrs);
        for a in addrs {
            let Some(s) = self.sessions.get(a) else {
                continue;
            };
            if s.queue.is_empty() {
                continue;
            }
            if s.keys.current.is_some() {
                self.flush_session(now, *a);
            } else {
                self.ensure_session_handshake(now, *a);
            }
        }
    }

    /// Answers the tries held for any of `addrs` to which a route is now known.
    fn answer_held_tries(&mut self, now: Instant, addrs: &[Address]) {
        if self.held_tries.is_empty() {
            return;
        }
        for a in addrs {
            let Some(held) = self.held_tries.get(a) else {
                continue;
            };
            let Some(route) = self.reply_route(Route::INVALID, &held.key, None) else {
                continue;
            };
            let held = self.held_tries.remove(a).expect("held try");
            tracing::debug!(
                me = %self.id.address(),
                initiator = %a,
                hops = route.hops(),
                waited = ?now.saturating_duration_since(held.since),
                "session handshake: answering the held try over the route just found"
            );
            self.answer_try(now, *a, held.hs, held.sender, route);
        }
    }

    /// The lookup for `addr` finished.
    pub(crate) fn on_lookup_done(&mut self, now: Instant, addr: Address, found: bool) {
        let pings: Vec<u64> = self
            .pending_pings
            .iter()
            .filter(|(a, _)| *a == addr)
            .map(|&(_, id)| id)
            .collect();
        self.pending_pings.retain(|(a, _)| *a != addr);
        for id in pings {
            if found {
                self.ping(now, addr, id);
            } else {
                self.events
                    .push_back(crate::node::Event::Ping { id, result: None });
            }
        }
        if found {
            self.unreachable_until.remove(&addr);
            self.on_routes_changed(now, &[addr]);
            return;
        }
        // No route is coming for a try held for it; the initiator's next try starts afresh.
        self.held_tries.remove(&addr);
        // While the mesh around us is still forming (our place in the tree moved lately),
        // packets queued a moment ago wait for the next lookup (the session tick starts it)
        // instead of being refused: a lookup that fails then often succeeds a few hundred ms
        // later. A settled node answers a missing destination at once.
        let forming = self
            .last_tree_move
            .is_some_and(|t| now.saturating_duration_since(t) < MESH_FORMING);
        let hold = forming
            && self.sessions.get(&addr).is_some_and(|s| {
                !s.queue.is_empty()
                    && s.queued_since
                        .is_some_and(|t| now.saturating_duration_since(t) < QUEUE_HOLD)
            });
        if hold {
            return;
        }
        // Back off: 50 ms doubling up to 4 s (short at first: at a cold start lookups fail
        // until the mesh has settled, and a node that comes back should be found soon).
        let strikes = match self.unreachable_until.get(&addr) {
            Some(&(until, n)) if now.saturating_duration_since(until) < UNREACHABLE_FORGET => n + 1,
            _ => 1,
        };
        let wait = Duration::from_millis(50 << (strikes - 1).min(7)).min(Duration::from_secs(4));
        if self.unreachable_until.len() >= UNREACHABLE_MAX {
            self.unreachable_until
                .retain(|_, (until, _)| now.saturating_duration_since(*until) < UNREACHABLE_FORGET);
        }
        if self.unreachable_until.len() < UNREACHABLE_MAX {
            self.unreachable_until.insert(addr, (now + wait, strikes));
        }
        self.unreachable(addr);
    }

    /// Answers every packet queued for `addr` with ICMPv6 unreachable and drops the session
    /// if it has no keys.
    fn unreachable(&mut self, addr: Address) {
        let me = self.id.address().ip();
        let Some(s) = self.sessions.get_mut(&addr) else {
            return;
        };
        let errors: Vec<Vec<u8>> = s
            .queue
            .drain(..)
            .filter_map(|p| icmp::error(me, &p, IcmpError::NoRoute))
            .collect();
        if s.keys.current.is_none() {
            self.sessions.remove(&addr);
        } else {
            s.hs_attempts = 0;
            s.hs_started = None;
        }
        self.counters.drop_unreachable += errors.len() as u64;
        for e in errors {
            let p = self.tun_packet(&e);
            self.tun_out.push_back(p);
        }
    }

    pub(crate) fn tick_sessions(&mut self, now: Instant) {
        self.held_tries
            .retain(|_, h| now.saturating_duration_since(h.since) < HELD_TRY_TTL);
        let addrs: Vec<Address> = self.sessions.keys().copied().collect();
        for addr in addrs {
            let Some(s) = self.sessions.get(&addr) else {
                continue;
            };
            let idle = now.saturating_duration_since(s.last_rx.max(s.last_tx));
            if idle > SESSION_IDLE && s.queue.is_empty() {
                let s = self.sessions.remove(&addr).expect("session");
                for i in s.keys.indices() {
                    self.session_idx.remove(&i);
                }
                continue;
            }
            // Handshake retries, then give up.
            if let Some(t) = s.hs_started {
                if now.saturating_duration_since(t) >= handshake_retry(s.hs_attempts) {
                    if s.hs_attempts >= HANDSHAKE_ATTEMPTS {
                        tracing::debug!(
                            me = %self.id.address(),
                            peer = %addr,
                            route = ?self.session_route(now, &addr),
                            "session handshake got no answer: unreachable"
                        );
                        self.unreachable(addr);
                    } else {
                        self.ensure_session_handshake(now, addr);
                    }
                }
                continue;
            }
            let has_keys = s.keys.current.is_some();
            let busy = now.saturating_duration_since(s.last_tx) < Duration::from_secs(5);
            // We keep sending but hear nothing: the far end may have restarted and lost the
            // session, or every path we know is dead. Handshake again (it also re-resolves).
            let stale = has_keys
                && busy
                && now.saturating_duration_since(s.last_rx) > Duration::from_secs(2);
            if (has_keys && busy && s.keys.needs_handshake(now))
                || stale
                || (!has_keys && !s.queue.is_empty())
            {
                if stale && s.hs_attempts == 0 {
                    self.start_lookup(now, addr, None);
                }
                self.ensure_session_handshake(now, addr);
                continue;
            }
            // Passive keepalive so one-way flows still prove the session alive.
            if has_keys
                && now.saturating_duration_since(s.last_rx) < Duration::from_secs(1)
                && now.saturating_duration_since(s.last_tx) > Duration::from_secs(1)
            {
                self.try_send_session(now, addr, &[]);
            }
            // Probe the paths of destinations in use, so a silently dead one is noticed.
            let s = self.sessions.get(&addr).expect("session");
            let active = now.saturating_duration_since(s.last_tx) < Duration::from_secs(3);
            let discovery_due =
                now.saturating_duration_since(s.last_discovery) >= Duration::from_secs(5);
            if active && now.saturating_duration_since(s.last_probe) >= PROBE_EVERY {
                self.sessions.get_mut(&addr).expect("session").last_probe = now;
                self.probe_paths(now, addr);
            }
            // Keep a second path ready for busy destinations: look them up again now and
            // then while only one path is known (the lookup verifies every path it hears of).
            if active && discovery_due {
                let working = self.table.get(&addr).map_or(0, |e| {
                    e.paths.iter().filter(|p| p.failed_at.is_none()).count()
                });
                if working < 2 && !self.link_by_addr.contains_key(&addr) {
                    self.sessions
                        .get_mut(&addr)
                        .expect("session")
                        .last_discovery = now;
                    self.start_lookup(now, addr, None);
                }
            }
            // A busy destination that isn't a peer: try to open a direct link to it.
            if active && has_keys {
                self.maybe_rendezvous(now, addr);
            }
        }
    }
}
