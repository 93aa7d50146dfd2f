//! The sans-IO [`Node`]: links, switch, routing and sessions of one meshd node.
//!
//! The node never reads a clock, opens a socket or spawns: the caller passes `now` and
//! input (`handle_datagram`, `handle_tun_packet`, `handle_timeout`) and collects output
//! (`poll_transmit`, `poll_tun_packet`, `poll_event`, `poll_timeout`). The daemon drives it
//! with a UDP socket and a TUN device; the simulator drives thousands of them on a virtual
//! clock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crypto::noise::{Handshake, Pattern, TAG_LEN};
use crypto::{Address, Identity, PublicKey};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use switch::{Decision, Director, FrameKind, Label, RelayStep, Route, SwitchHeader};

use crate::control::{ErrorCode, SwitchError};
use crate::routing::{Lookup, Query};
use crate::session::Session;
use crate::table::RoutingTable;
use crate::tunnel::{HandshakeTable, KeyPair, Keys, Pending, TokenBucket};
use crate::wire::{self, msg_type, TunnelMsg, DATA_HEADER_LEN};
use crate::Counters;

/// Bytes meshd adds to an IPv6 packet on the wire, UDP payload only: link data header (13),
/// link kind (1), switch header (17), session data header (13), two AEAD tags (32).
pub const OVERHEAD: usize = DATA_HEADER_LEN + 1 + SwitchHeader::LEN + DATA_HEADER_LEN + 2 * TAG_LEN;
/// The TUN MTU: a 1500-byte underlay minus IPv6 (40) and UDP (8) headers and [`OVERHEAD`]
/// (76) leaves 1376; we keep 16 bytes spare for future header fields.
pub const DEFAULT_MTU: usize = 1500 - 40 - 8 - OVERHEAD - 16;

/// Link payload kinds (the first plaintext byte of a link data message).
pub(crate) mod link_kind {
    pub const FRAME: u8 = 0;
    pub const PING: u8 = 1;
    pub const PONG: u8 = 2;
    pub const CLOSE: u8 = 3;
    /// An IPv6 packet from the peer itself to us: traffic between direct peers is already
    /// authenticated and encrypted by the link, so it skips the end-to-end session (one
    /// cipher pass instead of two). Its source must be the peer's address.
    pub const PEER_IP: u8 = 4;
}

/// Timing of links.
pub(crate) const ACTIVE_WINDOW: Duration = Duration::from_millis(1000);
const ACTIVE_PROBE_AFTER: Duration = Duration::from_millis(150);
const ACTIVE_PROBE_EVERY: Duration = Duration::from_millis(100);
const ACTIVE_DEAD_AFTER: Duration = Duration::from_millis(600);
/// A busy link whose probes went unanswered this long gets a fresh handshake.
const ACTIVE_REKEY_UNANSWERED: Duration = Duration::from_millis(200);
const IDLE_PROBE_AFTER: Duration = Duration::from_millis(1500);
const IDLE_DEAD_AFTER: Duration = Duration::from_secs(5);
/// Recycled buffers a node keeps ([`Node::recycle`]), and the capacities it keeps: up to a
/// packet's worth (jumbo MTUs included), never a driver's 64 KB coalescing buffer, so the
/// pool holds at most ~4 MB and usually 256 x 1.5 KB.
const SPARE_BUFFERS: usize = 256;
const MIN_SPARE: usize = 64;
const MAX_SPARE: usize = 16 * 1024;
/// Most unconfirmed final handshake messages kept for resending, and how often each goes.
const MAX_FINALS: usize = 256;
const FINAL_RESENDS: u8 = 4;
const FINALS_KEPT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(4);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// A configured peer is dialed this many times [`FIRST_BACKOFF`] apart (2 s) before the gaps
/// grow: peers started within a few seconds of each other (a cold start, a reboot) link as
/// soon as the later one runs, not at the dialer's next backed-off try up to 4 s later. A
/// try is one 37-byte datagram.
const DIAL_EAGER: u32 = 8;
/// Most endpoints whose next handshake offer ([`Node::link_offer`]) is remembered.
const MAX_LINK_OFFERS: usize = 1024;
/// A link down this long with nothing configured for it is forgotten.
const FORGET_LINK_AFTER: Duration = Duration::from_secs(600);

/// Node settings.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Network secret as a Noise PSK: only nodes with the same one can link.
    pub network_psk: Option<[u8; 32]>,
    /// If set, only these keys may link to us.
    pub allowed_keys: Option<HashSet<PublicKey>>,
    /// The TUN MTU.
    pub mtu: usize,
    /// Inbound handshakes accepted per second (all sources together).
    pub handshake_rate: f64,
    /// Zero bytes in front of every packet from [`Node::poll_tun_packet`], for a header the
    /// device needs (the daemon's offloading TUN writes a 10-byte virtio header there), so
    /// the packet needn't be copied again.
    pub tun_headroom: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            network_psk: None,
            allowed_keys: None,
            mtu: DEFAULT_MTU,
            handshake_rate: 200.0,
            tun_headroom: 0,
        }
    }
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub dst: SocketAddr,
    /// UDP payload.
    pub payload: Vec<u8>,
}

/// Things that happened, for the admin interface and the simulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A link came up.
    LinkUp(PublicKey),
    /// A link went down.
    LinkDown(PublicKey),
    /// Answer to [`Node::ping`]: the round trip and path, or `None` if unreachable.
    Ping {
        /// Request id.
        id: u64,
        /// Result.
        result: Option<(Duration, Route, PublicKey)>,
    },
    /// Answer to [`Node::lookup`].
    Lookup {
        /// Request id.
        id: u64,
        /// The key and path found, or `None`.
        result: Option<(PublicKey, Route)>,
    },
}

/// A configured peer we dial until it links.
#[derive(Debug)]
pub(crate) struct Dial {
    pub endpoint: SocketAddr,
    pub key: Option<PublicKey>,
    pub next_attempt: Instant,
    /// Attempts since it last linked: the gap after the n-th is [`dial_gap`]`(n)`.
    pub attempts: u32,
    pub linked: Option<PublicKey>,
}

/// Per-link traffic counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bytes received (UDP payload).
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Datagrams received.
    pub rx_packets: u64,
    /// Datagrams sent.
    pub tx_packets: u64,
}

/// A link to a directly connected peer: one interface of the switch.
#[derive(Debug)]
pub(crate) struct Link {
    pub key: PublicKey,
    pub director: Director,
    pub endpoint: SocketAddr,
    /// Endpoint from the config, tried on redials too.
    pub configured: Option<SocketAddr>,
    pub keys: KeyPair,
    pub up: bool,
    pub last_rx: Instant,
    pub last_data_tx: Instant,
    pub last_ping: Option<(Instant, u32)>,
    /// When we first probed without hearing anything since.
    pub unanswered_since: Option<Instant>,
    pub ping_seq: u32,
    pub rtt: Option<Duration>,
    pub stats: LinkStats,
    pub down_since: Option<Instant>,
    pub redial_at: Instant,
    pub backoff: Duration,
    pub control_bucket: TokenBucket,
    pub session_hs_bucket: TokenBucket,
    /// The endpoint the peer says our packets come from.
    pub observed: Option<SocketAddr>,
}

#[derive(Debug)]
pub(crate) struct LinkHs {
    pub dial: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct SessionHs {
    pub addr: Address,
}

/// Peer information for the admin interface.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Peer's key.
    pub key: PublicKey,
    /// Peer's address.
    pub address: Address,
    /// Current UDP endpoint.
    pub endpoint: SocketAddr,
    /// Up or down.
    pub up: bool,
    /// Switch interface index.
    pub director: Director,
    /// Round trip of the last keepalive.
    pub rtt: Option<Duration>,
    /// Traffic.
    pub stats: LinkStats,
    /// Time since the last packet.
    pub last_seen: Duration,
    /// Where the peer sees us.
    pub observed: Option<SocketAddr>,
    /// The cipher of the keys we send with (none before the first handshake).
    pub cipher: Option<crypto::noise::Suite>,
}

/// One meshd node.
///
/// Its maps are ordered (`BTreeMap`), not hashed: iteration order is the same in every run,
/// so a simulation replays bit for bit from its seed, and keys an attacker can choose
/// (addresses are hashes of keys anyone can grind) can't be made to collide.
pub struct Node {
    pub(crate) id: Identity,
    pub(crate) cfg: NodeConfig,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) dials: BTreeMap<u64, Dial>,
    next_dial_id: u64,
    pub(crate) links: Vec<Option<Link>>,
    pub(crate) link_by_key: BTreeMap<PublicKey, Director>,
    pub(crate) link_by_addr: BTreeMap<Address, Director>,
    /// Directors of forgotten links, and when: not reused for a while.
    retired: BTreeMap<Director, Instant>,
    link_idx: BTreeMap<u32, Director>,
    link_hs: HandshakeTable<LinkHs>,
    pub(crate) sessions: BTreeMap<Address, Session>,
    pub(crate) session_idx: BTreeMap<u32, Address>,
    pub(crate) session_hs: HandshakeTable<SessionHs>,
    /// Session handshake tries we could not answer yet for want of a route back, by
    /// initiator ([`crate::session::HeldTry`]).
    pub(crate) held_tries: BTreeMap<Address, crate::session::HeldTry>,
    pub(crate) table: RoutingTable,
    pub(crate) lookups: BTreeMap<Address, Lookup>,
    pub(crate) queries: BTreeMap<u64, Query>,
    pub(crate) hs_bucket: TokenBucket,
    pub(crate) error_bucket: TokenBucket,
    pub(crate) punch_bucket: TokenBucket,
    transmits: VecDeque<Transmit>,
    pub(crate) tun_out: VecDeque<Vec<u8>>,
    pub(crate) events: VecDeque<Event>,
    next_tick: Instant,
    pub(crate) started: Instant,
    pub(crate) self_lookups: u32,
    pub(crate) next_self_lookup: Option<Instant>,
    pub(crate) next_refresh: Instant,
    /// Gap to the next bucket refresh: 10 s after a link change, doubling to 160 s while
    /// nothing changes (refresh lookups were most of an idle node's traffic).
    pub(crate) refresh_gap: Duration,
    /// When the routing table is next aged (once a second is plenty; it walks every entry).
    pub(crate) next_expire: Instant,
    /// When a tree move last brought a self-lookup forward.
    pub(crate) last_tree_lookup: Option<Instant>,
    /// When our place in the spanning tree last moved.
    pub(crate) last_tree_move: Option<Instant>,
    /// Tree announcements owed to peers (to every peer, or only the parent), sent once the
    /// node has handled everything that arrived at this instant ([`Node::handle_timeout`]).
    pub(crate) owed_tree_news: Option<crate::routing::TreeNews>,
    /// The root whose change last started probing entries with coordinates under another.
    pub(crate) stale_coords: crate::routing::StaleCoords,
    /// Destinations whose lookup just failed: until when packets to them are answered with
    /// unreachable at once, and how many lookups in a row failed.
    pub(crate) unreachable_until: BTreeMap<Address, (Instant, u32)>,
    /// Per endpoint we dial: whether our next link handshake offers AES.
    link_offers: HashMap<SocketAddr, bool>,
    /// XX handshakes we finished as initiator whose last message the peer may not have got
    /// (it finishes only on that message): by our local index, where to, the message, and
    /// how many times it went. Sent again with each link probe until the peer sends with the
    /// new keys.
    finals: BTreeMap<u32, (SocketAddr, Vec<u8>, u8, Instant)>,
    pub(crate) counters: Counters,
    pub(crate) scratch: Vec<u8>,
    /// Buffers given back by the driver ([`Node::recycle`]) for the next packets we build.
    spare: Vec<Vec<u8>>,
    pub(crate) pending_lookup_steps: Vec<Address>,
    pub(crate) pending_pings: Vec<(Address, u64)>,
    pub(crate) direct: BTreeMap<Address, crate::routing::Direct>,
    pub(crate) local_endpoints: Vec<SocketAddr>,
    pub(crate) record_seq: u64,
    /// The spanning trees (tree.rs): the main one first, then the hashed ones ("More
    /// trees"), each another way between any two nodes.
    pub(crate) trees: [crate::tree::Tree; crate::tree::TREES],
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node({})", self.id.address())
    }
}

impl Node {
    /// A node with this identity; `seed` makes its choices (indices, lookup targets) repeatable.
    pub fn new(id: Identity, cfg: NodeConfig, seed: u64, now: Instant) -> Node {
        let hs_rate = cfg.handshake_rate;
        let trees = std::array::from_fn(|i| match i {
            0 => crate::tree::Tree::new(id.public_key(), now),
            i => crate::tree::Tree::hashed(id.public_key(), now, i as u8),
        });
        Node {
            table: RoutingTable::new(id.address(), 16),
            id,
            cfg,
            rng: ChaCha8Rng::seed_from_u64(seed),
            dials: BTreeMap::new(),
            next_dial_id: 1,
            links: Vec::new(),
            link_by_key: BTreeMap::new(),
            link_by_addr: BTreeMap::new(),
            retired: BTreeMap::new(),
            link_idx: BTreeMap::new(),
            link_hs: HandshakeTable::new(1024, Duration::from_secs(5)),
            sessions: BTreeMap::new(),
            session_idx: BTreeMap::new(),
            session_hs: HandshakeTable::new(1024, Duration::from_secs(5)),
            held_tries: BTreeMap::new(),
            lookups: BTreeMap::new(),
            queries: BTreeMap::new(),
            hs_bucket: TokenBucket::new(hs_rate, hs_rate),
            error_bucket: TokenBucket::new(200.0, 100.0),
            punch_bucket: TokenBucket::new(5.0, 10.0),
            transmits: VecDeque::new(),
            tun_out: VecDeque::new(),
            events: VecDeque::new(),
            next_tick: now,
            owed_tree_news: None,
            started: now,
            self_lookups: 0,
            next_self_lookup: None,
            next_refresh: now,
            refresh_gap: Duration::from_secs(10),
            next_expire: now,
            last_tree_lookup: None,
            last_tree_move: None,
            stale_coords: crate::routing::StaleCoords {
                root: trees[0].root(),
                until: now,
                next: now,
            },
            unreachable_until: BTreeMap::new(),
            link_offers: HashMap::new(),
            finals: BTreeMap::new(),
            counters: Counters::default(),
            scratch: Vec::new(),
            spare: Vec::new(),
            pending_lookup_steps: Vec::new(),
            pending_pings: Vec::new(),
            direct: BTreeMap::new(),
            local_endpoints: Vec::new(),
            record_seq: 0,
            trees,
        }
    }

    /// This node's identity.
    pub fn identity(&self) -> &Identity {
        &self.id
    }
    /// This node's view of the spanning tree (root, parent, coordinates).
    pub fn tree(&self) -> &crate::tree::Tree {
        &self.trees[0]
    }

    /// Every spanning tree, as this node sees it: the main one first.
    pub fn trees(&self) -> &[crate::tree::Tree; crate::tree::TREES] {
        &self.trees
    }
    /// This node's address.
    pub fn address(&self) -> Address {
        self.id.address()
    }
    /// The node's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// The TUN MTU the node works with.
    pub fn mtu(&self) -> usize {
        self.cfg.mtu
    }

    /// Dials a peer at `endpoint` (XX, or IK when `key` is given) until it links; redials
    /// whenever the link goes down. Returns an id for [`Node::remove_peer`].
    pub fn add_peer(&mut self, now: Instant, endpoint: SocketAddr, key: Option<PublicKey>) -> u64 {
        if let Some((&id, _)) = self
            .dials
            .iter()
            .find(|(_, d)| d.endpoint == endpoint && d.key == key)
        {
            return id;
        }
        let id = self.next_dial_id;
        self.next_dial_id += 1;
        self.dials.insert(
            id,
            Dial {
                endpoint,
                key,
                next_attempt: now,
                attempts: 0,
                linked: None,
            },
        );
        self.next_tick = now;
        id
    }

    /// Stops dialing a configured peer and closes its link. `which` is a key or endpoint.
    pub fn remove_peer(
        &mut self,
        now: Instant,
        key: Option<PublicKey>,
        endpoint: Option<SocketAddr>,
    ) -> bool {
        let mut keys: Vec<PublicKey> = key.into_iter().collect();
        let before = self.dials.len();
        self.dials.retain(|_, d| {
            let hit = endpoint.is_some_and(|e| e == d.endpoint)
                || key.is_some_and(|k| d.key == Some(k) || d.linked == Some(k));
            if hit {
                keys.extend(d.linked);
            }
            !hit
        });
        let mut removed = self.dials.len() != before;
        for k in keys {
            if let Some(&d) = self.link_by_key.get(&k) {
                self.send_on_link(now, d, link_kind::CLOSE, &[]);
                self.forget_link(now, d);
                removed = true;
            }
        }
        removed
    }

    /// Links to peers, for the admin interface.
    pub fn peers(&self, now: Instant) -> Vec<PeerInfo> {
        self.links
            .iter()
            .flatten()
            .map(|l| PeerInfo {
                key: l.key,
                address: l.key.address(),
                endpoint: l.endpoint,
                up: l.up,
                director: l.director,
                rtt: l.rtt,
                stats: l.stats,
                last_seen: now.saturating_duration_since(l.last_rx),
                observed: l.observed,
                cipher: l.keys.current.as_ref().map(|k| k.transport.suite()),
            })
            .collect()
    }

    /// The routing table.
    pub fn routes(&self) -> impl Iterator<Item = &crate::table::Entry> {
        self.table.iter()
    }

    /// Configured peers: endpoint, pinned key, and the key it linked as.
    pub fn configured_peers(&self) -> Vec<(SocketAddr, Option<PublicKey>, Option<PublicKey>)> {
        self.dials
            .values()
            .map(|d| (d.endpoint, d.key, d.linked))
            .collect()
    }

    /// Replaces the allow-list (None: anyone with the network secret may link). Links to keys
    /// no longer allowed are closed.
    pub fn set_allowed_keys(&mut self, now: Instant, allowed: Option<HashSet<PublicKey>>) {
        self.cfg.allowed_keys = allowed;
        let banned: Vec<Director> = self
            .links
            .iter()
            .flatten()
            .filter(|l| !self.allowed(&l.key))
            .map(|l| l.director)
            .collect();
        for d in banned {
            self.send_on_link(now, d, link_kind::CLOSE, &[]);
            self.forget_link(now, d);
        }
    }

    /// Sends a CLOSE to every peer (on shutdown).
    pub fn close_all(&mut self, now: Instant) {
        let ds: Vec<Director> = self
            .links
            .iter()
            .flatten()
            .filter(|l| l.up)
            .map(|l| l.director)
            .collect();
        for d in ds {
            self.send_on_link(now, d, link_kind::CLOSE, &[]);
        }
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }
    /// A packet for the TUN, behind `tun_headroom` zero bytes.
    pub(crate) fn tun_packet(&self, ip: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.cfg.tun_headroom + ip.len());
        v.resize(self.cfg.tun_headroom, 0);
        v.extend_from_slice(ip);
        v
    }

    /// Next packet for the TUN device (behind [`NodeConfig::tun_headroom`] zero bytes).
    pub fn poll_tun_packet(&mut self) -> Option<Vec<u8>> {
        self.tun_out.pop_front()
    }
    /// Next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
    /// When [`Node::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Instant {
        match self.owed_tree_news {
            Some(n) => self.next_tick.min(n.since),
            None => self.next_tick,
        }
    }

    /// Gives back a buffer the driver is done with (a sent [`Transmit`]'s payload), to build
    /// a later packet in without allocating. Optional: a driver that drops its buffers
    /// instead only costs an allocation per packet.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS && (MIN_SPARE..=MAX_SPARE).contains(&buf.capacity()) {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// An empty buffer: a recycled one when there is one.
    pub(crate) fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    pub(crate) fn transmit(&mut self, dst: SocketAddr, payload: Vec<u8>) {
        self.counters.tx_datagrams += 1;
        self.counters.tx_bytes += payload.len() as u64;
        self.transmits.push_back(Transmit { dst, payload });
    }

    /// Whether a handshake's peer, once known, may link (allow-list; never ourselves).
    /// Counts the refusal.
    fn may_link(&mut self, hs: &Handshake) -> bool {
        let ok = hs
            .remote()
            .is_some_and(|k| self.allowed(&k) && k != self.id.public_key());
        if !ok {
            self.counters.drop_not_allowed += 1;
        }
        ok
    }

    pub(crate) fn allowed(&self, k: &PublicKey) -> bool {
        self.cfg.allowed_keys.as_ref().is_none_or(|a| a.contains(k))
    }

    pub(crate) fn new_index(&mut self) -> u32 {
        loop {
            let i: u32 = self.rng.gen();
            if !self.link_idx.contains_key(&i)
                && !self.link_hs.contains(i)
                && !self.session_idx.contains_key(&i)
                && !self.session_hs.contains(i)
            {
                return i;
            }
        }
    }

    // ---------------------------------------------------------------- timers

    /// Runs timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            self.send_tree_news(now);
            return;
        }
        self.link_hs.expire(now);
        self.session_hs.expire(now);
        self.tick_dials(now);
        self.tick_links(now);
        self.tick_routing(now);
        let before = self.trees[0].coord();
        for i in 0..crate::tree::TREES {
            let all = self.tree_at(i).tick(now);
            self.tree_news(now, i, all);
        }
        if self.trees[0].coord() != before {
            self.on_tree_moved(now);
        }
        self.tick_sessions(now);
        let busy = !self.link_hs.is_empty()
            || !self.session_hs.is_empty()
            || !self.lookups.is_empty()
            || !self.queries.is_empty()
            || self
                .links
                .iter()
                .flatten()
                .any(|l| l.up && now.saturating_duration_since(l.last_data_tx) < ACTIVE_WINDOW);
        let mut next = now
            + if busy {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(500)
            };
        for d in self.dials.values().filter(|d| d.linked.is_none()) {
            next = next.min(d.next_attempt.max(now + Duration::from_millis(1)));
        }
        self.next_tick = next;
        self.send_tree_news(now);
    }

    fn tick_dials(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .dials
            .iter()
            .filter(|(_, d)| {
                d.next_attempt <= now && d.linked.is_none_or(|k| !self.link_by_key.contains_key(&k))
            })
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            let Some(d) = self.dials.get_mut(&id) else {
                continue;
            };
            d.linked = None;
            let (endpoint, key) = (d.endpoint, d.key);
            d.attempts += 1;
            d.next_attempt = now + dial_gap(d.attempts);
            self.start_link_handshake(now, endpoint, key, Some(id));
        }
    }

    /// Sends again the last XX message of the handshakes behind `indices` (a link's keys)
    /// that the peer hasn't confirmed: if it was lost, the peer never finished, can't read
    /// what we send with those keys, and the link would die at startup. A few times at most.
    fn resend_finals(&mut self, indices: &[u32]) {
        for i in indices {
            let Some((to, msg, sent, _)) = self.finals.get_mut(i) else {
                continue;
            };
            if *sent >= FINAL_RESENDS {
                self.finals.remove(i);
                continue;
            }
            *sent += 1;
            let (to, msg) = (*to, msg.clone());
            self.transmit(to, msg);
        }
    }

    fn tick_links(&mut self, now: Instant) {
        // Keys replaced before the peer confirmed them: their final messages go too.
        self.finals
            .retain(|_, (.., t)| now.saturating_duration_since(*t) < FINALS_KEPT);
        for d in 0..self.links.len() {
            let Some(l) = self.links[d].as_mut() else {
                continue;
            };
            let d = d as Director;
            if l.up {
                let active = now.saturating_duration_since(l.last_data_tx) < ACTIVE_WINDOW;
                let silent = now.saturating_duration_since(l.last_rx);
                let since_ping = l
                    .last_ping
                    .map_or(Duration::MAX, |(t, _)| now.saturating_duration_since(t));
                // Dead only after our probes went unanswered: a link that sat idle (so heard
                // little) and just started carrying traffic gets a probe round first.
                let probed_for = l
                    .unanswered_since
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                let dead = if active {
                    silent > ACTIVE_DEAD_AFTER
                        && probed_for > ACTIVE_DEAD_AFTER - ACTIVE_PROBE_AFTER
                } else {
                    silent > IDLE_DEAD_AFTER
                };
                if dead {
                    self.link_down(now, d);
                    continue;
                }
                let probe = if active {
                    silent > ACTIVE_PROBE_AFTER && since_ping > ACTIVE_PROBE_EVERY
                } else {
                    silent > IDLE_PROBE_AFTER && since_ping > IDLE_PROBE_AFTER
                };
                if probe {
                    l.ping_seq = l.ping_seq.wrapping_add(1);
                    let seq = l.ping_seq;
                    l.last_ping = Some((now, seq));
                    l.unanswered_since.get_or_insert(now);
                    let indices = l.keys.indices();
                    self.resend_finals(&indices);
                    self.send_on_link(now, d, link_kind::PING, &seq.to_le_bytes());
                }
                let l = self.links[d as usize].as_ref().expect("link");
                // Probes going unanswered may mean the peer no longer holds our keys: when
                // several tries of a handshake cross on a lossy link, the peer answers a later
                // try (and keeps only the last two) while we completed an earlier one, and
                // everything we send is then unreadable to it. A fresh handshake settles that
                // within a round trip, well before the link counts as dead; a dead peer
                // doesn't answer it either.
                let unanswered_for = if active {
                    ACTIVE_REKEY_UNANSWERED
                } else {
                    IDLE_PROBE_AFTER
                };
                let keys_in_doubt = probed_for > unanswered_for;
                if (l.keys.needs_handshake(now) || keys_in_doubt) && now >= l.redial_at {
                    let (ep, key) = (l.endpoint, l.key);
                    let l = self.links[d as usize].as_mut().expect("link");
                    l.redial_at = now + Duration::from_secs(2);
                    self.start_link_handshake(now, ep, Some(key), None);
                }
            } else {
                let down_for = l
                    .down_since
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                let configured = self
                    .dials
                    .values()
                    .any(|x| x.linked == Some(l.key) || x.key == Some(l.key));
                if down_for > FORGET_LINK_AFTER && !configured {
                    self.forget_link(now, d);
                    continue;
                }
                if now >= l.redial_at {
                    // Alternate between the last endpoint we saw and the configured one.
                    let ep = match l.configured {
                        Some(c) if l.backoff.as_millis() / FIRST_BACKOFF.as_millis() % 2 == 1 => c,
                        _ => l.endpoint,
                    };
                    let key = l.key;
                    l.redial_at = now + l.backoff;
                    l.backoff = (l.backoff * 2).min(MAX_BACKOFF);
                    let long_down = down_for > Duration::from_secs(2);
                    self.start_link_handshake(now, ep, Some(key), None);
                    // Both ends may have moved: find the peer through the mesh and exchange
                    // fresh endpoints with it (or look it up first).
                    if long_down {
                        let addr = key.address();
                        if self.table.get(&addr).and_then(|e| e.best()).is_some() {
                            self.maybe_rendezvous(now, addr);
                        } else {
                            self.start_lookup(now, addr, None);
                        }
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- links

    pub(crate) fn start_link_handshake(
        &mut self,
        now: Instant,
        endpoint: SocketAddr,
        key: Option<PublicKey>,
        dial: Option<u64>,
    ) {
        let pattern = if key.is_some() {
            Pattern::IK
        } else {
            Pattern::XX
        };
        let offer = self.link_offer(endpoint);
        let mut hs = match Handshake::initiator(
            &self.id,
            pattern,
            key.as_ref(),
            self.cfg.network_psk.as_ref(),
        ) {
            Ok(h) => h.with_aes_offer(offer),
            Err(e) => {
                tracing::warn!("cannot start handshake to {endpoint}: {e}");
                return;
            }
        };
        let idx = self.new_index();
        let t = if pattern == Pattern::IK {
            msg_type::INIT_IK
        } else {
            msg_type::INIT_XX
        };
        let Some(out) = wire::handshake_message(t, idx, None, &mut hs) else {
            return;
        };
        self.link_hs.insert(
            idx,
            Pending {
                hs,
                remote_idx: None,
                started: now,
                ctx: LinkHs { dial },
            },
        );
        self.counters.handshakes_sent += 1;
        self.transmit(endpoint, out);
    }

    /// Handles one UDP datagram from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.counters.rx_datagrams += 1;
        self.counters.rx_bytes += data.len() as u64;
        let msg = match TunnelMsg::parse(data) {
            Ok(m) => m,
            Err(_) => {
                self.counters.drop_malformed += 1;
                return;
            }
        };
        match msg {
            TunnelMsg::InitXX { sender, noise } => {
                self.on_link_init(now, from, Pattern::XX, sender, noise)
            }
            TunnelMsg::InitIK { sender, noise } => {
                self.on_link_init(now, from, Pattern::IK, sender, noise)
            }
            TunnelMsg::Response {
                sender,
                receiver,
                noise,
            } => self.on_link_response(now, from, sender, receiver, noise),
            TunnelMsg::Final {
                sender,
                receiver,
                noise,
            } => self.on_link_final(now, from, sender, receiver, noise),
            TunnelMsg::Data {
                receiver,
                counter,
                ciphertext,
            } => self.on_link_data(now, from, receiver, counter, ciphertext),
        }
    }

    fn on_link_init(
        &mut self,
        now: Instant,
        from: SocketAddr,
        pattern: Pattern,
        sender: u32,
        noise: &[u8],
    ) {
        if !self.hs_bucket.take(now) {
            self.counters.drop_handshake_rate += 1;
            return;
        }
        let Ok(mut hs) = Handshake::responder(&self.id, pattern, self.cfg.network_psk.as_ref())
        else {
            return;
        };
        if hs.read_message(noise).is_err() {
            self.counters.drop_handshake_failed += 1;
            return;
        }
        // IK names the initiator in its first message: refuse strangers before answering.
        if hs.remote().is_some() && !self.may_link(&hs) {
            return;
        }
        let idx = self.new_index();
        let Some(out) = wire::handshake_message(msg_type::RESPONSE, idx, Some(sender), &mut hs)
        else {
            self.counters.drop_handshake_failed += 1;
            return;
        };
        self.transmit(from, out);
        if hs.is_finished() {
            self.finish_link_handshake(now, from, hs, idx, sender, None);
        } else {
            self.link_hs.insert(
                idx,
                Pending {
                    hs,
                    remote_idx: Some(sender),
                    started: now,
                    ctx: LinkHs { dial: None },
                },
            );
        }
    }

    fn on_link_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender: u32,
        receiver: u32,
        noise: &[u8],
    ) {
        let Some(mut p) = self.link_hs.take(receiver) else {
            self.counters.drop_unknown_index += 1;
            return;
        };
        if p.remote_idx.is_some() || !p.hs.is_initiator() {
            self.counters.drop_malformed += 1;
            return;
        }
        if p.hs.read_message(noise).is_err() {
            self.counters.drop_handshake_failed += 1;
            return;
        }
        if !self.may_link(&p.hs) {
            return;
        }
        if !p.hs.is_finished() {
            let Some(out) =
                wire::handshake_message(msg_type::FINAL, receiver, Some(sender), &mut p.hs)
            else {
                return;
            };
            if self.finals.len() < MAX_FINALS {
                self.finals.insert(receiver, (from, out.clone(), 1, now));
            }
            self.transmit(from, out);
        }
        self.finish_link_handshake(now, from, p.hs, receiver, sender, p.ctx.dial);
    }

    fn on_link_final(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender: u32,
        receiver: u32,
        noise: &[u8],
    ) {
        let Some(mut p) = self.link_hs.take(receiver) else {
            self.counters.drop_unknown_index += 1;
            return;
        };
        if p.remote_idx != Some(sender) || p.hs.read_message(noise).is_err() {
            self.counters.drop_handshake_failed += 1;
            return;
        }
        if !self.may_link(&p.hs) {
            return;
        }
        self.finish_link_handshake(now, from, p.hs, receiver, sender, None);
    }

    /// Whether the next link handshake we start towards `endpoint` offers AES-256-GCM.
    /// An older node silently refuses an offer, so offers and plain tries alternate until
    /// one links; then the kind that linked is kept for the rekeys.
    fn link_offer(&mut self, endpoint: SocketAddr) -> bool {
        if !crypto::noise::aes_offered() {
            return false;
        }
        if self.link_offers.len() >= MAX_LINK_OFFERS {
            self.link_offers.clear();
        }
        let next = self.link_offers.entry(endpoint).or_insert(true);
        let offer = *next;
        *next = !offer;
        offer
    }

    fn finish_link_handshake(
        &mut self,
        now: Instant,
        from: SocketAddr,
        hs: Handshake,
        local_idx: u32,
        remote_idx: u32,
        dial: Option<u64>,
    ) {
        let we_initiated = hs.is_initiator();
        // Whoever read the handshake's last message knows the peer holds the keys: the IK
        // initiator (it read the response) and the XX responder (it read the final).
        let confirmed = we_initiated == (hs.pattern() == Pattern::IK);
        let Ok((transport, key)) = hs.into_transport() else {
            self.counters.drop_handshake_failed += 1;
            return;
        };
        if we_initiated && crypto::noise::aes_offered() {
            let aes = transport.suite() == crypto::noise::Suite::Aes256Gcm;
            self.link_offers.insert(from, aes);
        }
        self.counters.handshakes_completed += 1;
        let configured = dial.and_then(|id| self.dials.get_mut(&id)).map(|d| {
            d.linked = Some(key);
            d.attempts = 0;
            d.endpoint
        });
        let d = match self.link_by_key.get(&key) {
            Some(&d) => d,
            None => {
                // A free slot not freed recently: labels naming an old peer's director must
                // not quietly lead to a new one.
                let d = (0..self.links.len())
                    .find(|&i| {
                        self.links[i].is_none()
                            && self.retired.get(&(i as Director)).is_none_or(|t| {
                                now.saturating_duration_since(*t) > Duration::from_secs(300)
                            })
                    })
                    .unwrap_or(self.links.len());
                if d > switch::MAX_DIRECTOR as usize {
                    self.counters.drop_not_allowed += 1;
                    return;
                }
                let link = Link {
                    key,
                    director: d as Director,
                    endpoint: from,
                    configured: None,
                    keys: KeyPair::default(),
                    up: false,
                    last_rx: now,
                    last_data_tx: now
                        - ACTIVE_WINDOW.min(now.saturating_duration_since(self.started)),
                    last_ping: None,
                    unanswered_since: None,
                    ping_seq: 0,
                    rtt: None,
                    stats: LinkStats::default(),
                    down_since: Some(now),
                    redial_at: now,
                    backoff: FIRST_BACKOFF,
                    control_bucket: TokenBucket::new(1000.0, 500.0),
                    session_hs_bucket: TokenBucket::new(100.0, 100.0),
                    observed: None,
                };
                if d == self.links.len() {
                    self.links.push(Some(link));
                } else {
                    self.links[d] = Some(link);
                }
                self.link_by_key.insert(key, d as Director);
                self.link_by_addr.insert(key.address(), d as Director);
                d as Director
            }
        };
        let me = self.id.public_key();
        let l = self.links[d as usize].as_mut().expect("link exists");
        if configured.is_some() {
            l.configured = configured;
        }
        l.endpoint = from;
        l.last_rx = now;
        l.unanswered_since = None;
        l.keys.install_indexed(
            Keys {
                transport,
                local_idx,
                remote_idx,
                since: now,
                we_initiated,
                confirmed,
                heard: None,
            },
            &me,
            &key,
            now,
            &mut self.link_idx,
            d,
        );
        // Measure the RTT at once; the answer also tells us our observed endpoint.
        let l = self.links[d as usize].as_mut().expect("link exists");
        l.ping_seq = l.ping_seq.wrapping_add(1);
        let seq = l.ping_seq;
        l.last_ping = Some((now, seq));
        let was_up = l.up;
        self.send_on_link(now, d, link_kind::PING, &seq.to_le_bytes());
        if !was_up {
            self.link_up(now, d);
        }
    }

    /// The one-hop route to `addr` if it is a direct peer whose link is up (the table holds
    /// only as many direct peers as its buckets take; IP packets to a direct peer go over its
    /// link without either).
    pub(crate) fn link_route(&self, addr: &Address) -> Option<Route> {
        let &d = self.link_by_addr.get(addr)?;
        self.links.get(d as usize)?.as_ref().filter(|l| l.up)?;
        Some(Route::from(Label::single(d).ok()?))
    }

    fn link_up(&mut self, now: Instant, d: Director) {
        let l = self.links[d as usize].as_mut().expect("link exists");
        l.up = true;
        l.down_since = None;
        l.backoff = FIRST_BACKOFF;
        let key = l.key;
        let suite = l.keys.current.as_ref().map(|k| k.transport.suite());
        tracing::info!(peer = %key.address(), director = d, endpoint = %l.endpoint, suite = ?suite, "link up");
        self.events.push_back(Event::LinkUp(key));
        if let Some(d) = self.direct.get_mut(&key.address()) {
            d.state = crate::routing::DirectState::Linked;
        }
        let (sessions, lookups) = (&self.sessions, &self.lookups);
        self.table.upsert(
            key,
            Label::single(d).expect("director fits"),
            None,
            now,
            true,
            |a| sessions.contains_key(a) || lookups.contains_key(a),
        );
        if self.next_self_lookup.is_none() {
            self.next_self_lookup = Some(now);
        }
        // A new link may lead to what was unreachable: look again at the next packet.
        self.unreachable_until.clear();
        for i in 0..crate::tree::TREES {
            self.announce_tree(now, Some(d), i);
        }
        self.refresh_gap = Duration::from_secs(10);
        self.on_routes_changed(now, &[key.address()]);
    }

    fn link_down(&mut self, now: Instant, d: Director) {
        let Some(l) = self.links[d as usize].as_mut() else {
            return;
        };
        if !l.up {
            return;
        }
        l.up = false;
        l.down_since = Some(now);
        l.redial_at = now;
        l.backoff = FIRST_BACKOFF;
        let key = l.key;
        tracing::info!(peer = %key.address(), director = d, "link down");
        self.counters.links_down += 1;
        let before = self.trees[0].coord();
        for i in 0..crate::tree::TREES {
            self.tree_at(i).link_down(now, d);
            let all = self.tree_at(i).take_dirty(now);
            self.tree_news(now, i, all);
        }
        if self.trees[0].coord() != before {
            self.on_tree_moved(now);
        }
        self.refresh_gap = Duration::from_secs(10);
        self.events.push_back(Event::LinkDown(key));
        let direct = Label::single(d).expect("director fits");
        self.table.unpin(&key.address(), direct, now);
        let touched = self
            .table
            .mark_broken(|r| r.first().directors().next() == Some(d), now);
        self.on_path_broken(now, |r| r.first().directors().next() == Some(d));
        self.on_routes_changed(now, &touched);
    }

    fn forget_link(&mut self, now: Instant, d: Director) {
        self.link_down(now, d);
        if let Some(mut l) = self.links[d as usize].take() {
            for i in l.keys.clear() {
                self.link_idx.remove(&i);
            }
            self.link_by_key.remove(&l.key);
            self.link_by_addr.remove(&l.key.address());
            self.retired.insert(d, now);
        }
    }

    fn on_link_data(
        &mut self,
        now: Instant,
        from: SocketAddr,
        receiver: u32,
        counter: u64,
        ct: &[u8],
    ) {
        let Some(&d) = self.link_idx.get(&receiver) else {
            self.counters.drop_unknown_index += 1;
            return;
        };
        let mut plain = std::mem::take(&mut self.scratch);
        // Grown to the largest datagram seen, not allocated up front: 10,000 simulated nodes
        // each holding 64 KiB they never use was most of a simulation's memory.
        if plain.len() < ct.len() {
            plain.resize(ct.len().max(2048), 0);
        }
        let l = self.links[d as usize]
            .as_mut()
            .expect("indexed link exists");
        let Some(keys) = l.keys.by_index(receiver) else {
            self.scratch = plain;
            self.counters.drop_unknown_index += 1;
            return;
        };
        let n = match keys.transport.decrypt(counter, ct, &mut plain) {
            Ok(n) => n,
            Err(crypto::noise::NoiseError::Replay) => {
                self.scratch = plain;
                self.counters.drop_replay += 1;
                return;
            }
            Err(_) => {
                self.scratch = plain;
                self.counters.drop_decrypt += 1;
                return;
            }
        };
        // The peer sends with the keys it holds: if it completed an earlier handshake try
        // than the one we answered last, send with those keys too (key confirmation).
        l.keys.confirm(receiver, now);
        if !self.finals.is_empty() {
            self.finals.remove(&receiver);
        }
        l.last_rx = now;
        l.unanswered_since = None;
        l.stats.rx_packets += 1;
        l.stats.rx_bytes += ct.len() as u64 + DATA_HEADER_LEN as u64;
        if l.endpoint != from {
            // Roaming: an authenticated packet from a new address moves the peer.
            tracing::info!(peer = %l.key.address(), old = %l.endpoint, new = %from, "peer moved");
            l.endpoint = from;
        }
        if !l.up {
            self.link_up(now, d);
        }
        if n == 0 {
            self.scratch = plain;
            self.counters.drop_malformed += 1;
            return;
        }
        match plain[0] {
            link_kind::FRAME => self.on_frame(now, d, &mut plain[..n]),
            link_kind::PING if n >= 5 => {
                let mut reply = [0u8; 4 + 19];
                reply[..4].copy_from_slice(&plain[1..5]);
                let len = 4 + encode_endpoint(&from, &mut reply[4..]);
                self.send_on_link(now, d, link_kind::PONG, &reply[..len]);
            }
            link_kind::PONG if n >= 5 => {
                let seq = u32::from_le_bytes(plain[1..5].try_into().expect("4 bytes"));
                let observed = decode_endpoint(&plain[5..n]);
                let l = self.links[d as usize].as_mut().expect("link");
                if let Some((t, s)) = l.last_ping {
                    if s == seq {
                        l.rtt = Some(now.saturating_duration_since(t));
                        l.last_ping = None;
                    }
                }
                if observed.is_some() {
                    l.observed = observed;
                }
            }
            link_kind::PEER_IP => {
                let me = self.id.address().ip();
                let l = self.links[d as usize].as_ref().expect("link");
                match crate::icmp::addresses(&plain[1..n]) {
                    Some((src, dst)) if src == l.key.address().ip() && dst == me => {
                        let p = self.tun_packet(&plain[1..n]);
                        self.tun_out.push_back(p);
                    }
                    _ => self.counters.drop_spoofed += 1,
                }
            }
            link_kind::CLOSE => {
                let l = self.links[d as usize].as_mut().expect("link");
                let key = l.key;
                for i in l.keys.clear() {
                    self.link_idx.remove(&i);
                }
                let configured = self
                    .dials
                    .values()
                    .any(|x| x.linked == Some(key) || x.key == Some(key));
                if configured {
                    // We want this peer: redial, but give a restarting peer a moment.
                    self.link_down(now, d);
                    if let Some(l) = self.links[d as usize].as_mut() {
                        l.redial_at = now + Duration::from_secs(1);
                    }
                } else {
                    // The peer shut down or removed us, and nobody here asked for it: forget
                    // the link, so a removal sticks. It dials us again if it wants us.
                    self.forget_link(now, d);
                }
            }
            _ => self.counters.drop_malformed += 1,
        }
        self.scratch = plain;
    }

    /// Encrypts `kind, body` for link `d` and queues it. Returns false if the link is down.
    pub(crate) fn send_on_link(
        &mut self,
        now: Instant,
        d: Director,
        kind: u8,
        body: &[u8],
    ) -> bool {
        let mut plain = self.buffer();
        plain.push(kind);
        plain.extend_from_slice(body);
        let sent = self.send_link_plain(now, d, &plain);
        self.recycle(plain);
        sent
    }

    /// Encrypts a link plaintext that already starts with its kind byte (a frame being
    /// forwarded is sent from the very buffer it was decrypted into: no copy).
    pub(crate) fn send_link_plain(&mut self, now: Instant, d: Director, plain: &[u8]) -> bool {
        let mut out = self.buffer();
        let Some(l) = self.links.get_mut(d as usize).and_then(Option::as_mut) else {
            return false;
        };
        let Some(keys) = l.keys.sending(now) else {
            return false;
        };
        out.resize(DATA_HEADER_LEN + plain.len() + TAG_LEN, 0);
        let Ok((counter, n)) = keys.transport.encrypt(plain, &mut out[DATA_HEADER_LEN..]) else {
            return false;
        };
        wire::write_data_header(&mut out, keys.remote_idx, counter);
        out.truncate(DATA_HEADER_LEN + n);
        l.stats.tx_packets += 1;
        l.stats.tx_bytes += out.len() as u64;
        if plain.first() == Some(&link_kind::FRAME) {
            l.last_data_tx = now;
        }
        let dst = l.endpoint;
        self.transmit(dst, out);
        true
    }

    // ---------------------------------------------------------------- switch

    /// A switch frame arrived on link `came_in`; `plain` is the link plaintext: the FRAME kind
    /// byte, then the frame.
    fn on_frame(&mut self, now: Instant, came_in: Director, plain: &mut [u8]) {
        let frame = &mut plain[1..];
        match switch::forward(frame, Some(came_in)) {
            Decision::Drop => self.counters.drop_malformed += 1,
            Decision::Deliver => {
                let Ok(h) = SwitchHeader::parse(frame) else {
                    return;
                };
                if h.kind == FrameKind::Relayed {
                    self.on_relayed_frame(now, came_in, plain);
                    return;
                }
                self.on_local_frame(
                    now,
                    h.kind,
                    h.reverse.into(),
                    Some(came_in),
                    &frame[SwitchHeader::LEN..],
                );
            }
            Decision::Forward(out) => {
                self.counters.forwarded += 1;
                self.forward_out(now, out, plain);
            }
        }
    }

    /// A relayed frame delivered to us: relay it on along its next segment, or take it in
    /// if this is its last one. `plain` is the link plaintext (kind byte, then the frame).
    fn on_relayed_frame(&mut self, now: Instant, came_in: Director, plain: &mut [u8]) {
        let frame = &mut plain[1..];
        // At most one relay step per segment (a segment that is empty leads back here).
        for _ in 0..switch::MAX_SEGMENTS {
            match switch::relay(frame) {
                RelayStep::Drop => break,
                RelayStep::Arrived {
                    reverse,
                    kind,
                    body,
                } => {
                    self.on_local_frame(now, kind, reverse, Some(came_in), &frame[body..]);
                    return;
                }
                RelayStep::Onward => match switch::forward(frame, None) {
                    Decision::Forward(out) => {
                        self.counters.relayed += 1;
                        self.forward_out(now, out, plain);
                        return;
                    }
                    Decision::Deliver => continue,
                    Decision::Drop => break,
                },
            }
        }
        self.counters.drop_malformed += 1;
    }

    /// Sends a frame we forward (or relay) out of link `out`; if that link is down or
    /// missing, answers the frame's source with an error along its reverse route.
    fn forward_out(&mut self, now: Instant, out: Director, plain: &mut [u8]) {
        let up = self
            .links
            .get(out as usize)
            .and_then(Option::as_ref)
            .is_some_and(|l| l.up);
        if up && self.send_link_plain(now, out, plain) {
            return;
        }
        let frame = &plain[1..];
        let Ok(h) = SwitchHeader::parse(frame) else {
            return;
        };
        let code = if self
            .links
            .get(out as usize)
            .and_then(Option::as_ref)
            .is_some()
        {
            ErrorCode::LinkDown
        } else {
            ErrorCode::NoSuchLink
        };
        self.counters.drop_no_route += 1;
        if h.kind == FrameKind::Error || !h.reverse.is_valid() || !self.error_bucket.take(now) {
            return;
        }
        let remaining = h.route.push(out).unwrap_or(Label::INVALID);
        let err = SwitchError {
            code,
            reporter: self.id.public_key(),
            remaining: remaining.0,
        };
        self.send_frame(now, h.reverse.into(), FrameKind::Error, &err.to_bytes());
    }

    /// Sends a frame we originate along `route`. Returns false if the first hop is down.
    pub(crate) fn send_frame(
        &mut self,
        now: Instant,
        route: Route,
        kind: FrameKind,
        body: &[u8],
    ) -> bool {
        // The link plaintext: kind byte, switch header (and relay header), body, built once.
        let mut plain = self.buffer();
        plain.push(link_kind::FRAME);
        plain.resize(1 + SwitchHeader::LEN + route.relay_header_len(), 0);
        switch::write_headers(route, kind, &mut plain[1..]);
        plain.extend_from_slice(body);
        let sent = match switch::forward(&mut plain[1..], None) {
            Decision::Forward(d) => self.send_link_plain(now, d, &plain),
            Decision::Deliver | Decision::Drop => false,
        };
        self.recycle(plain);
        sent
    }

    /// A frame for us of `kind`; `reverse` is the route back to its source.
    fn on_local_frame(
        &mut self,
        now: Instant,
        kind: FrameKind,
        reverse: Route,
        came_in: Option<Director>,
        body: &[u8],
    ) {
        match kind {
            FrameKind::Session => self.on_session_message(now, reverse, came_in, body),
            FrameKind::Router => {
                if let Some(l) = came_in
                    .and_then(|d| self.links.get_mut(d as usize))
                    .and_then(Option::as_mut)
                {
                    if !l.control_bucket.take(now) {
                        self.counters.drop_control_rate += 1;
                        return;
                    }
                }
                self.on_control(now, reverse, body);
            }
            // Relayed frames don't nest (`switch::relay` refuses them).
            FrameKind::Relayed => self.counters.drop_malformed += 1,
            FrameKind::Error => {
                let Some(e) = SwitchError::parse(body) else {
                    self.counters.drop_malformed += 1;
                    return;
                };
                self.counters.switch_errors += 1;
                // The error came back along the reverse of our route, so its reverse label is
                // exactly our path to the reporter; with the director that failed there, it
                // names the broken hop precisely. (Matching paths by their tail alone would
                // also hit unrelated paths that merely end with the same director.)
                let failed = match Label(e.remaining).pop() {
                    Some(Ok((d, _))) => d,
                    _ => return,
                };
                // Errors are never relayed: one from a later segment of a relayed route
                // reaches the relay, which holds the route to the reporter (and, like us,
                // stops using the broken hop).
                let Some(dead) = reverse
                    .single()
                    .and_then(|r| r.splice(Label::single(failed).ok()?).ok())
                    .filter(|l| l.is_valid())
                else {
                    return;
                };
                let broken = move |r: Route| r.first().strip_prefix(dead).is_some();
                let touched = self.table.mark_broken(broken, now);
                tracing::debug!(
                    me = %self.id.address(),
                    reporter_hops = reverse.hops(),
                    touched = ?touched,
                    "switch error: paths marked broken"
                );
                self.on_path_broken(now, broken);
                self.on_routes_changed(now, &touched);
            }
        }
    }
}

/// The gap after a configured peer's `attempts`-th dial: [`FIRST_BACKOFF`] for the first
/// [`DIAL_EAGER`], then doubling up to [`MAX_BACKOFF`].
fn dial_gap(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(DIAL_EAGER).min(8);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// Endpoint as `family u8 (4|6), ip, port u16 LE`.
fn encode_endpoint(e: &SocketAddr, out: &mut [u8]) -> usize {
    match e {
        SocketAddr::V4(a) => {
            out[0] = 4;
            out[1..5].copy_from_slice(&a.ip().octets());
            out[5..7].copy_from_slice(&a.port().to_le_bytes());
            7
        }
        SocketAddr::V6(a) => {
            out[0] = 6;
            out[1..17].copy_from_slice(&a.ip().octets());
            out[17..19].copy_from_slice(&a.port().to_le_bytes());
            19
        }
    }
}

fn decode_endpoint(b: &[u8]) -> Option<SocketAddr> {
    match *b.first()? {
        4 if b.len() >= 7 => {
            let ip: [u8; 4] = b[1..5].try_into().ok()?;
            Some(SocketAddr::from((ip, u16::from_le_bytes([b[5], b[6]]))))
        }
        6 if b.len() >= 19 => {
            let ip: [u8; 16] = b[1..17].try_into().ok()?;
            Some(SocketAddr::from((ip, u16::from_le_bytes([b[17], b[18]]))))
        }
        _ => None,
    }
}
