//! The discrete-event core: real [`router::Node`]s, simulated links, a virtual clock.
//!
//! Every node has a fake UDP endpoint `10.x.y.z:7400` (x.y.z = its index). Events wait in a
//! queue ordered by (virtual time, sequence number): datagrams in flight, node timers (at
//! [`Node::poll_timeout`]) and scheduled actions (start, kill, link down/up). All randomness
//! comes from one seeded ChaCha RNG, and the nodes' own RNGs are seeded from it, so one seed
//! gives one run. No threads, no sleeping: time jumps from event to event.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crypto::{Address, Identity};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use router::{Event, Node, NodeConfig};

use crate::graph::Graph;

/// UDP port of every simulated node.
pub const PORT: u16 = 7400;
/// IPv6 (40) + UDP (8) header bytes counted against the link MTU.
pub const UDP_IP_OVERHEAD: usize = 48;

/// The fake UDP endpoint of node `i`.
pub fn endpoint(i: u32) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        [10, (i >> 16) as u8, (i >> 8) as u8, i as u8].into(),
        PORT,
    ))
}

/// The node behind a fake endpoint.
pub fn node_of(e: &SocketAddr) -> Option<u32> {
    match e {
        SocketAddr::V4(a) if a.port() == PORT && a.ip().octets()[0] == 10 => {
            let o = a.ip().octets();
            Some((o[1] as u32) << 16 | (o[2] as u32) << 8 | o[3] as u32)
        }
        _ => None,
    }
}

/// Settings of a simulated network.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Probability that a datagram is lost on a link.
    pub loss: f64,
    /// Link MTU (IP packet bytes): larger datagrams are dropped.
    pub mtu: usize,
    /// Configuration of every node.
    pub node: NodeConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            loss: 0.0,
            mtu: 1500,
            node: NodeConfig::default(),
        }
    }
}

/// Something scheduled to happen to the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Node starts (fresh state, same identity) and dials its peers.
    Start(u32),
    /// Node stops at once, silently (power cut).
    Kill(u32),
    /// Link (edge index) stops carrying packets, silently.
    LinkDown(u32),
    /// Link carries packets again.
    LinkUp(u32),
}

enum Ev {
    Datagram {
        to: u32,
        from: u32,
        /// The link it travels on (indices are never reused).
        link: u32,
        payload: Vec<u8>,
    },
    Timer(u32),
    Action(Action),
}

/// A queue entry: virtual nanoseconds since the start, push sequence (ties go in push
/// order), and the event's slot in [`Queue::slab`]. 24 bytes, so sifting moves little.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    t: u64,
    seq: u64,
    slot: u32,
}

impl PartialOrd for Key {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Key {
    fn cmp(&self, o: &Self) -> Ordering {
        // BinaryHeap is a max-heap: earliest (time, seq) first.
        (o.t, o.seq).cmp(&(self.t, self.seq))
    }
}

/// Events waiting, earliest (time, sequence) first: small keys in a heap, the events
/// themselves in a slab whose free slots are reused.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Key>,
    slab: Vec<Option<Ev>>,
    free: Vec<u32>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, t: u64, ev: Ev) {
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s as usize] = Some(ev);
                s
            }
            None => {
                self.slab.push(Some(ev));
                (self.slab.len() - 1) as u32
            }
        };
        self.seq += 1;
        self.heap.push(Key {
            t,
            seq: self.seq,
            slot,
        });
    }

    fn peek_time(&self) -> Option<u64> {
        self.heap.peek().map(|k| k.t)
    }

    fn pop(&mut self) -> Option<(u64, Ev)> {
        let k = self.heap.pop()?;
        let ev = self.slab[k.slot as usize].take().expect("queued event");
        self.free.push(k.slot);
        Some((k.t, ev))
    }
}

/// FxHash (rustc's): the link map is hashed twice per datagram and its keys are not
/// attacker-chosen, so SipHash's cost buys nothing here.
#[derive(Clone, Copy, Default)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type FxBuild = std::hash::BuildHasherDefault<FxHasher>;

/// A simulated link.
#[derive(Clone, Debug)]
pub struct Link {
    /// Dialing end.
    pub a: u32,
    /// Other end.
    pub b: u32,
    /// One-way latency.
    pub latency: Duration,
    /// Carries packets.
    pub up: bool,
}

/// A data-path probe: an ICMPv6 echo request from `src` to `dst`, answered by the
/// simulator at `dst` with an echo reply.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Source node.
    pub src: u32,
    /// Destination node.
    pub dst: u32,
    /// When it was sent.
    pub sent: Instant,
    /// When the request came out of the destination's TUN.
    pub arrived: Option<Instant>,
    /// When the reply came out of the source's TUN.
    pub replied: Option<Instant>,
    /// Hops of the source's session path at arrival.
    pub hops: Option<u32>,
}

/// A lookup launched with [`Node::lookup`].
#[derive(Clone, Debug)]
pub struct LookupProbe {
    /// Asking node.
    pub src: u32,
    /// Node looked up.
    pub dst: u32,
    /// Result: found, and the hops of the path found.
    pub result: Option<Option<u32>>,
}

/// Counters of the simulated network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams handed to links.
    pub datagrams: u64,
    /// UDP payload bytes handed to links.
    pub bytes: u64,
    /// Datagrams delivered to a node.
    pub delivered: u64,
    /// Lost to random loss.
    pub drop_loss: u64,
    /// Larger than the link MTU.
    pub drop_mtu: u64,
    /// Link down or absent.
    pub drop_link: u64,
    /// Receiver dead.
    pub drop_dead: u64,
    /// ICMPv6 errors that came out of a TUN.
    pub icmp_errors: u64,
    /// Events processed.
    pub events: u64,
}

/// The simulated network.
pub struct Sim {
    /// Virtual time zero.
    pub base: Instant,
    /// Current virtual time.
    pub now: Instant,
    cfg: SimConfig,
    ids: Vec<Identity>,
    /// The nodes (`None`: not started or dead).
    pub nodes: Vec<Option<Node>>,
    /// Links.
    pub links: Vec<Link>,
    link_of: HashMap<(u32, u32), u32, FxBuild>,
    /// Link indices of each node.
    pub node_links: Vec<Vec<u32>>,
    queue: Queue,
    /// Each node's pending timer, virtual ns (`u64::MAX`: none); older queued timers of
    /// the node are stale and skipped.
    timer_at: Vec<u64>,
    rng: ChaCha8Rng,
    starts: Vec<u32>,
    /// Data-path probes sent.
    pub probes: Vec<Probe>,
    /// Lookups launched.
    pub lookups: Vec<LookupProbe>,
    /// Network counters.
    pub stats: NetStats,
    trace: u64,
    addr_index: HashMap<Address, u32>,
}

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    let mut h = h;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// An ICMPv6 echo packet (request if `request`) carrying `id` as identifier and sequence.
pub fn echo_packet(src: Ipv6Addr, dst: Ipv6Addr, id: u32, request: bool) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 16, 58, 64];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[if request { 128 } else { 129 }, 0, 0, 0]);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0xab; 8]);
    p
}

/// Virtual nanoseconds of the event being handled: the timestamps of `SIM_LOG` lines.
pub static VIRTUAL_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Sim {
    /// A network with the graph's nodes (none started yet) and links.
    pub fn new(graph: &Graph, ids: Vec<Identity>, cfg: SimConfig) -> Sim {
        assert!(ids.len() >= graph.n, "an identity per node");
        let n = graph.n;
        let base = Instant::now();
        let mut s = Sim {
            base,
            now: base,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            cfg,
            addr_index: ids
                .iter()
                .take(n)
                .enumerate()
                .map(|(i, id)| (id.address(), i as u32))
                .collect(),
            ids,
            nodes: (0..n).map(|_| None).collect(),
            links: Vec::new(),
            link_of: HashMap::default(),
            node_links: vec![Vec::new(); n],
            queue: Queue::default(),
            timer_at: vec![u64::MAX; n],
            starts: vec![0; n],
            probes: Vec::new(),
            lookups: Vec::new(),
            stats: NetStats::default(),
            trace: 0xcbf2_9ce4_8422_2325,
        };
        for e in &graph.edges {
            s.add_link(e.a, e.b, e.latency);
        }
        s
    }

    /// Number of nodes.
    pub fn n(&self) -> usize {
        self.nodes.len()
    }

    /// Seconds of virtual time since the start.
    pub fn secs(&self) -> f64 {
        (self.now - self.base).as_secs_f64()
    }

    /// The virtual instant `s` seconds after the start.
    pub fn at(&self, s: f64) -> Instant {
        self.base + Duration::from_secs_f64(s)
    }

    /// Fingerprint of everything delivered so far: time, ends and size of every datagram.
    /// (Not the bytes: Noise ephemeral keys come from the OS RNG inside `snow`, so
    /// ciphertexts differ from run to run even when everything else is equal.)
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// The run's RNG (for experiments' choices, so they follow the seed too).
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// Whether node `i` runs.
    pub fn alive(&self, i: u32) -> bool {
        self.nodes[i as usize].is_some()
    }

    /// The address of node `i`.
    pub fn address(&self, i: u32) -> Address {
        self.ids[i as usize].address()
    }

    /// The node with this address.
    pub fn index_of(&self, a: &Address) -> Option<u32> {
        self.addr_index.get(a).copied()
    }

    /// Adds a link (or brings back a removed one); if both ends run, `a` dials `b`.
    pub fn add_link(&mut self, a: u32, b: u32, latency: Duration) -> u32 {
        let k = (a.min(b), a.max(b));
        let li = match self.link_of.get(&k) {
            Some(&li) => {
                let l = &mut self.links[li as usize];
                l.up = true;
                l.latency = latency;
                li
            }
            None => {
                let li = self.links.len() as u32;
                self.links.push(Link {
                    a,
                    b,
                    latency,
                    up: true,
                });
                self.link_of.insert(k, li);
                self.node_links[a as usize].push(li);
                self.node_links[b as usize].push(li);
                li
            }
        };
        let (a, b) = (self.links[li as usize].a, self.links[li as usize].b);
        if self.alive(a) && self.alive(b) {
            let now = self.now;
            if let Some(node) = self.nodes[a as usize].as_mut() {
                node.add_peer(now, endpoint(b), None);
            }
            self.drain(a);
        }
        li
    }

    /// The link between `a` and `b`, if any (up or down).
    pub fn link_between(&self, a: u32, b: u32) -> Option<u32> {
        self.link_of.get(&(a.min(b), a.max(b))).copied()
    }

    /// Removes link `li`: it stops carrying packets at once and the dialer stops dialing
    /// (as a mesh daemon would when a neighbour leaves radio range); the nodes find out
    /// by their own timeouts.
    pub fn remove_link(&mut self, li: u32) {
        let l = &mut self.links[li as usize];
        l.up = false;
        let (a, b) = (l.a, l.b);
        let now = self.now;
        if let Some(node) = self.nodes[a as usize].as_mut() {
            node.remove_peer(now, None, Some(endpoint(b)));
            self.drain(a);
        }
    }

    /// Schedules `action` at `t`.
    pub fn schedule(&mut self, t: Instant, action: Action) {
        self.push(t.max(self.now), Ev::Action(action));
    }

    /// Virtual nanoseconds of `t` (not before the start).
    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    fn push(&mut self, t: Instant, ev: Ev) {
        let t = self.ns(t);
        self.queue.push(t, ev);
    }

    /// Applies `action` now.
    pub fn apply(&mut self, action: Action) {
        match action {
            Action::Start(i) => self.start(i),
            Action::Kill(i) => {
                self.nodes[i as usize] = None;
                self.timer_at[i as usize] = u64::MAX;
            }
            Action::LinkDown(li) => self.links[li as usize].up = false,
            Action::LinkUp(li) => self.links[li as usize].up = true,
        }
    }

    fn start(&mut self, i: u32) {
        if self.alive(i) {
            return;
        }
        let iu = i as usize;
        self.starts[iu] += 1;
        let seed = self.cfg.seed ^ ((i as u64) << 20) ^ ((self.starts[iu] as u64) << 52);
        let mut node = Node::new(self.ids[iu].clone(), self.cfg.node.clone(), seed, self.now);
        for &li in &self.node_links[iu] {
            let l = &self.links[li as usize];
            if l.a == i && l.up {
                node.add_peer(self.now, endpoint(l.b), None);
            }
        }
        self.nodes[iu] = Some(node);
        self.drain(i);
    }

    /// Sends a data probe from `src` to `dst` now; returns its index in [`Sim::probes`].
    pub fn probe(&mut self, src: u32, dst: u32) -> usize {
        let id = self.probes.len();
        self.probes.push(Probe {
            src,
            dst,
            sent: self.now,
            arrived: None,
            replied: None,
            hops: None,
        });
        let p = echo_packet(
            self.address(src).ip(),
            self.address(dst).ip(),
            id as u32,
            true,
        );
        let now = self.now;
        if let Some(node) = self.nodes[src as usize].as_mut() {
            node.handle_tun_packet(now, &p);
            self.drain(src);
        }
        id
    }

    /// Starts a lookup of `dst` at `src`; returns its index in [`Sim::lookups`].
    pub fn lookup(&mut self, src: u32, dst: u32) -> usize {
        let id = self.lookups.len();
        self.lookups.push(LookupProbe {
            src,
            dst,
            result: None,
        });
        let addr = self.address(dst);
        let now = self.now;
        if let Some(node) = self.nodes[src as usize].as_mut() {
            node.lookup(now, addr, id as u64);
            self.drain(src);
        }
        id
    }

    /// Collects node `i`'s output: datagrams onto links, TUN packets, events, its timer.
    fn drain(&mut self, i: u32) {
        let iu = i as usize;
        loop {
            let Some(node) = self.nodes[iu].as_mut() else {
                return;
            };
            let mut tx = Vec::new();
            while let Some(t) = node.poll_transmit() {
                tx.push(t);
            }
            let mut tun = Vec::new();
            while let Some(p) = node.poll_tun_packet() {
                tun.push(p);
            }
            while let Some(e) = node.poll_event() {
                if let Event::Lookup { id, result } = e {
                    if let Some(l) = self.lookups.get_mut(id as usize) {
                        l.result = Some(result.map(|(_, label)| label.hops() as u32));
                    }
                }
            }
            let t = node.poll_timeout().max(self.now);
            let t = self.ns(t);
            if self.timer_at[iu] != t {
                self.timer_at[iu] = t;
                self.queue.push(t, Ev::Timer(i));
            }
            if tx.is_empty() && tun.is_empty() {
                return;
            }
            for t in tx {
                self.send(i, t.dst, t.payload);
            }
            for p in tun {
                self.on_tun(i, &p);
            }
        }
    }

    fn send(&mut self, from: u32, dst: SocketAddr, payload: Vec<u8>) {
        self.stats.datagrams += 1;
        self.stats.bytes += payload.len() as u64;
        let Some(to) = node_of(&dst).filter(|&j| (j as usize) < self.nodes.len()) else {
            self.stats.drop_link += 1;
            return;
        };
        let Some(&li) = self.link_of.get(&(from.min(to), from.max(to))) else {
            self.stats.drop_link += 1;
            return;
        };
        let l = &self.links[li as usize];
        if !l.up {
            self.stats.drop_link += 1;
            return;
        }
        if payload.len() + UDP_IP_OVERHEAD > self.cfg.mtu {
            self.stats.drop_mtu += 1;
            return;
        }
        if self.cfg.loss > 0.0 && self.rng.gen_bool(self.cfg.loss) {
            self.stats.drop_loss += 1;
            return;
        }
        let t = self.now + l.latency;
        self.push(
            t,
            Ev::Datagram {
                to,
                from,
                link: li,
                payload,
            },
        );
    }

    fn on_tun(&mut self, at: u32, p: &[u8]) {
        if p.len() < 48 || p[6] != 58 {
            return;
        }
        let kind = p[40];
        let id = u32::from_be_bytes(p[44..48].try_into().expect("4 bytes")) as usize;
        let src_ip = Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).expect("16"));
        match kind {
            128 => {
                let Some(pr) = self.probes.get(id) else {
                    return;
                };
                let (src, dst) = (pr.src, pr.dst);
                if dst != at || src_ip != self.address(src).ip() {
                    return;
                }
                if pr.arrived.is_none() {
                    let daddr = self.address(dst);
                    // The path the source's session uses (else its table's best path).
                    let hops = self.nodes[src as usize].as_ref().and_then(|n| {
                        n.sessions()
                            .into_iter()
                            .find(|s| s.address == daddr)
                            .and_then(|s| s.path)
                            .or_else(|| n.path_to(&daddr))
                            .map(|l| l.hops() as u32)
                    });
                    let pr = &mut self.probes[id];
                    pr.arrived = Some(self.now);
                    pr.hops = hops;
                }
                // The destination answers, as a host would.
                let reply = echo_packet(self.address(dst).ip(), src_ip, id as u32, false);
                let now = self.now;
                if let Some(node) = self.nodes[at as usize].as_mut() {
                    node.handle_tun_packet(now, &reply);
                }
            }
            129 => {
                if let Some(pr) = self.probes.get_mut(id) {
                    if pr.src == at && pr.replied.is_none() && pr.arrived.is_some() {
                        pr.replied = Some(self.now);
                    }
                }
            }
            _ => self.stats.icmp_errors += 1,
        }
    }

    /// Time of the next event, if any.
    pub fn next_event(&self) -> Option<Instant> {
        self.queue
            .peek_time()
            .map(|t| self.base + Duration::from_nanos(t))
    }

    /// Runs every event up to and including `until`, then sets the clock to `until`.
    pub fn run_until(&mut self, until: Instant) {
        let until_ns = self.ns(until);
        while self.queue.peek_time().is_some_and(|t| t <= until_ns) {
            let (t, ev) = self.queue.pop().expect("peeked");
            self.now = self.now.max(self.base + Duration::from_nanos(t));
            VIRTUAL_NS.store(t, std::sync::atomic::Ordering::Relaxed);
            self.stats.events += 1;
            match ev {
                Ev::Timer(i) => {
                    let iu = i as usize;
                    if self.timer_at[iu] != t {
                        continue; // superseded
                    }
                    self.timer_at[iu] = u64::MAX;
                    let now = self.now;
                    if let Some(node) = self.nodes[iu].as_mut() {
                        node.handle_timeout(now);
                        self.drain(i);
                    }
                }
                Ev::Datagram {
                    to,
                    from,
                    link,
                    payload,
                } => {
                    if !self.links[link as usize].up {
                        self.stats.drop_link += 1;
                        continue;
                    }
                    let now = self.now;
                    let Some(node) = self.nodes[to as usize].as_mut() else {
                        self.stats.drop_dead += 1;
                        continue;
                    };
                    self.stats.delivered += 1;
                    let mut h = self.trace;
                    h = fnv(h, &t.to_le_bytes());
                    h = fnv(h, &to.to_le_bytes());
                    h = fnv(h, &from.to_le_bytes());
                    h = fnv(h, &(payload.len() as u32).to_le_bytes());
                    self.trace = h;
                    node.handle_datagram(now, endpoint(from), &payload);
                    self.drain(to);
                }
                Ev::Action(a) => self.apply(a),
            }
        }
        self.now = self.now.max(until);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Routing-table sizes of the running nodes.
    pub fn table_sizes(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .flatten()
            .map(|n| n.routes().count())
            .collect()
    }

    /// `router::Counters` summed over running nodes, by field name (read from its `Debug`
    /// form, so new fields show up without changes here).
    pub fn counter_totals(&self) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for n in self.nodes.iter().flatten() {
            let text = format!("{:?}", n.counters());
            let body = text
                .split_once('{')
                .map_or("", |(_, b)| b.trim_end_matches('}'));
            for kv in body.split(',') {
                if let Some((k, v)) = kv.split_once(':') {
                    if let Ok(v) = v.trim().parse::<u64>() {
                        *out.entry(k.trim().to_string()).or_insert(0) += v;
                    }
                }
            }
        }
        out
    }

    /// Alive flags.
    pub fn alive_mask(&self) -> Vec<bool> {
        self.nodes.iter().map(Option::is_some).collect()
    }

    /// Adjacency over links that are up (by node).
    pub fn live_adjacency(&self) -> Vec<Vec<u32>> {
        let mut adj = vec![Vec::new(); self.n()];
        for l in self.links.iter().filter(|l| l.up) {
            adj[l.a as usize].push(l.b);
            adj[l.b as usize].push(l.a);
        }
        adj
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_round_trip() {
        for i in [0u32, 1, 255, 256, 70_000, (1 << 24) - 1] {
            assert_eq!(node_of(&endpoint(i)), Some(i));
        }
        assert_eq!(node_of(&"192.0.2.1:7400".parse().unwrap()), None);
    }
}
