//! The discrete-event core: real [`router::Node`]s, simulated links, a virtual clock.
//!
//! Every node has a fake UDP endpoint `10.x.y.z:7400` (x.y.z = its index). Events wait in a
//! queue ordered by (virtual time, sequence number): datagrams in flight, node timers (at
//! [`Node::poll_timeout`]) and scheduled actions (start, kill, link down/up). All randomness
//! comes from the seed (the run's RNG for experiments' choices, one per node for the nodes
//! and for loss on their datagrams), so one seed gives one run. No sleeping: time jumps from
//! event to event. The nodes may be split between threads, in windows of independent
//! events (`Sim::run_windows`); the run is the same however many there are.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
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
    /// Threads to run on (the nodes are split between them); the run is the same on any
    /// number. Default: [`default_threads`].
    pub threads: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            loss: 0.0,
            mtu: 1500,
            node: NodeConfig::default(),
            threads: default_threads(),
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

/// What a queued event does to its node.
enum Ev {
    /// A datagram arrives from `from` over link `link` (link indices are never reused).
    Datagram {
        from: u32,
        link: u32,
        payload: Vec<u8>,
    },
    /// The node's timer (stale unless it is still the node's pending one).
    Timer,
    /// The node starts (a scheduled [`Action::Start`]).
    Start,
    /// The node stops (a scheduled [`Action::Kill`]).
    Kill,
}

/// Orders the events of one instant at one node: scheduled actions (in scheduling order),
/// then datagrams (by sender, then the sender's send count), then the timer. It depends
/// only on what the nodes did, never on which queue or thread held the event, so a run is
/// the same however its nodes are split.
const ORDER_ACTION: u64 = 0;
const ORDER_DATAGRAM: u64 = 1 << 62;
const ORDER_TIMER: u64 = 2 << 62;

fn datagram_order(from: u32, sent: u32) -> u64 {
    ORDER_DATAGRAM | (from as u64) << 32 | sent as u64
}

/// A queue entry: virtual nanoseconds since the start, the order among events of that
/// instant, the node, and the event's slot in [`Queue::slab`]. 24 bytes, so sifting moves
/// little.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    t: u64,
    order: u64,
    node: u32,
    slot: u32,
}

impl PartialOrd for Key {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Key {
    fn cmp(&self, o: &Self) -> Ordering {
        // BinaryHeap is a max-heap: earliest (time, order, node) first.
        (o.t, o.order, o.node).cmp(&(self.t, self.order, self.node))
    }
}

/// Events waiting, earliest first: small keys in a heap, the events themselves in a slab
/// whose free slots are reused.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Key>,
    slab: Vec<Option<Ev>>,
    free: Vec<u32>,
}

impl Queue {
    fn push(&mut self, t: u64, order: u64, node: u32, ev: Ev) {
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
        self.heap.push(Key {
            t,
            order,
            node,
            slot,
        });
    }

    fn peek_time(&self) -> Option<u64> {
        self.heap.peek().map(|k| k.t)
    }

    fn pop(&mut self) -> Option<(Key, Ev)> {
        let k = self.heap.pop()?;
        let ev = self.slab[k.slot as usize].take().expect("queued event");
        self.free.push(k.slot);
        Some((k, ev))
    }
}

/// FxHash (rustc's): the link map is hashed once per datagram and its keys are not
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
    /// IPv6 address of each node.
    ips: Vec<Ipv6Addr>,
    /// The nodes (`None`: not started or dead).
    pub nodes: Vec<Option<Node>>,
    /// Links.
    pub links: Vec<Link>,
    link_of: HashMap<(u32, u32), u32, FxBuild>,
    /// Link indices of each node.
    pub node_links: Vec<Vec<u32>>,
    /// The engine's own record of each node.
    state: Vec<NodeState>,
    /// One queue per part: part `p` holds the events of nodes `bounds[p]..bounds[p + 1]`.
    queues: Vec<Queue>,
    bounds: Vec<u32>,
    /// Link changes scheduled, by (virtual ns, scheduling order); no window straddles one.
    link_actions: BTreeMap<(u64, u64), Action>,
    /// Actions scheduled so far (their order among events of one instant).
    scheduled: u64,
    /// Shortest link latency, ns: within a window this long the nodes are independent.
    min_latency: u64,
    rng: ChaCha8Rng,
    /// Data-path probes sent.
    pub probes: Vec<Probe>,
    /// Lookups launched.
    pub lookups: Vec<LookupProbe>,
    /// Network counters.
    pub stats: NetStats,
    trace: u64,
    addr_index: HashMap<Address, u32>,
}

/// What the engine keeps for each node besides the node itself.
struct NodeState {
    /// The node's pending timer, virtual ns (`u64::MAX`: none); other queued timers of the
    /// node are stale and skipped.
    timer_at: u64,
    /// Loss draws on the node's outgoing datagrams (one RNG per node, so a draw doesn't
    /// depend on what other nodes did in the meantime).
    loss: ChaCha8Rng,
    /// Datagrams sent so far (their order at the receiver among those of one instant).
    sent: u32,
    /// Times started.
    starts: u32,
    /// Events handled since the parts were last balanced.
    work: u32,
}

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    let mut h = h;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Fingerprint of one delivery: time, ends, size. The run's trace is the sum of these, so
/// it doesn't depend on the order in which independent nodes were handled.
fn delivery_hash(t: u64, to: u32, from: u32, len: usize) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325;
    h = fnv(h, &t.to_le_bytes());
    h = fnv(h, &to.to_le_bytes());
    h = fnv(h, &from.to_le_bytes());
    fnv(h, &(len as u32).to_le_bytes())
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

thread_local! {
    static VIRTUAL_NS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Virtual nanoseconds of the event this thread is handling: the timestamps of `SIM_LOG`
/// lines.
pub fn virtual_ns() -> u64 {
    VIRTUAL_NS.with(|v| v.get())
}

/// Threads a run uses by default: `SIM_THREADS` if set, else 1.
pub fn default_threads() -> usize {
    std::env::var("SIM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Parts per thread when a run has several.
const PARTS_PER_THREAD: usize = 8;

/// A datagram bound for another part's node, handed over between windows.
struct Mail {
    t: u64,
    order: u64,
    to: u32,
    ev: Ev,
}

/// What handling a part's events produced for the rest of the [`Sim`].
#[derive(Default)]
struct Out {
    stats: NetStats,
    /// Sum of the delivery fingerprints.
    trace: u64,
    /// Probes whose request came out of the destination's TUN: (probe, ns).
    arrived: Vec<(usize, u64)>,
    /// Probes whose reply came out of the source's TUN: (probe, ns).
    replied: Vec<(usize, u64)>,
    /// Lookups that ended: (lookup, hops of the path found).
    lookups: Vec<(usize, Option<u32>)>,
    /// Datagrams for other parts' nodes, by part.
    mail: Vec<Vec<Mail>>,
}

impl Out {
    /// Nothing yet, with a mailbox for each of `parts` parts.
    fn for_parts(parts: usize) -> Out {
        Out {
            mail: (0..parts).map(|_| Vec::new()).collect(),
            ..Out::default()
        }
    }
}

/// What every part reads and nobody changes while windows run.
struct Shared<'a> {
    base: Instant,
    cfg: &'a SimConfig,
    ids: &'a [Identity],
    ips: &'a [Ipv6Addr],
    links: &'a [Link],
    link_of: &'a HashMap<(u32, u32), u32, FxBuild>,
    node_links: &'a [Vec<u32>],
    probes: &'a [Probe],
    bounds: &'a [u32],
}

/// The [`Shared`] view of a [`Sim`], borrowing its fields one by one (so its nodes and
/// queues can be borrowed mutably beside it).
macro_rules! shared {
    ($sim:expr) => {
        Shared {
            base: $sim.base,
            cfg: &$sim.cfg,
            ids: &$sim.ids,
            ips: &$sim.ips,
            links: &$sim.links,
            link_of: &$sim.link_of,
            node_links: &$sim.node_links,
            probes: &$sim.probes,
            bounds: &$sim.bounds,
        }
    };
}

impl Shared<'_> {
    fn instant(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }

    /// The part that holds node `i`.
    fn part_of(&self, i: u32) -> usize {
        part_of(self.bounds, i)
    }
}

/// The part that holds node `i`, given the parts' `bounds`.
fn part_of(bounds: &[u32], i: u32) -> usize {
    bounds[1..].partition_point(|&b| b <= i)
}

/// A part of the network (a range of nodes), handled by one thread at a time: its nodes,
/// their records, its queue.
struct Part<'a> {
    nodes: &'a mut [Option<Node>],
    io: PartIo<'a>,
}

/// A part's records, queue and output (apart from the nodes, so both can be borrowed).
struct PartIo<'a> {
    /// The part's index.
    me: usize,
    /// Its first node.
    first: u32,
    state: &'a mut [NodeState],
    queue: &'a mut Queue,
    out: Out,
}

impl Part<'_> {
    /// Handles the part's events before `end` (ns), in order.
    fn run(&mut self, sh: &Shared, end: u64) {
        while self.io.queue.peek_time().is_some_and(|t| t < end) {
            let (k, ev) = self.io.queue.pop().expect("peeked");
            self.io.out.stats.events += 1;
            VIRTUAL_NS.with(|v| v.set(k.t));
            let i = k.node;
            let li = (i - self.io.first) as usize;
            self.io.state[li].work = self.io.state[li].work.saturating_add(1);
            match ev {
                Ev::Timer => {
                    if self.io.state[li].timer_at != k.t {
                        continue; // superseded
                    }
                    self.io.state[li].timer_at = u64::MAX;
                    if let Some(node) = self.nodes[li].as_mut() {
                        node.handle_timeout(sh.instant(k.t));
                        self.drain(sh, i, k.t);
                    }
                }
                Ev::Datagram {
                    from,
                    link,
                    payload,
                } => {
                    if !sh.links[link as usize].up {
                        self.io.out.stats.drop_link += 1;
                        continue;
                    }
                    let Some(node) = self.nodes[li].as_mut() else {
                        self.io.out.stats.drop_dead += 1;
                        continue;
                    };
                    self.io.out.stats.delivered += 1;
                    self.io.out.trace =
                        self.io
                            .out
                            .trace
                            .wrapping_add(delivery_hash(k.t, i, from, payload.len()));
                    node.handle_datagram(sh.instant(k.t), endpoint(from), &payload);
                    self.drain(sh, i, k.t);
                }
                Ev::Start => self.start(sh, i, k.t),
                Ev::Kill => {
                    self.nodes[li] = None;
                    self.io.state[li].timer_at = u64::MAX;
                }
            }
        }
    }

    /// Starts node `i` at `now` (fresh state, same identity): it dials its peers.
    fn start(&mut self, sh: &Shared, i: u32, now: u64) {
        let li = (i - self.io.first) as usize;
        if self.nodes[li].is_some() {
            return;
        }
        let st = &mut self.io.state[li];
        st.starts += 1;
        let seed = sh.cfg.seed ^ ((i as u64) << 20) ^ ((st.starts as u64) << 52);
        let at = sh.instant(now);
        let mut node = Node::new(sh.ids[i as usize].clone(), sh.cfg.node.clone(), seed, at);
        for &l in &sh.node_links[i as usize] {
            let l = &sh.links[l as usize];
            if l.a == i && l.up {
                node.add_peer(at, endpoint(l.b), None);
            }
        }
        self.nodes[li] = Some(node);
        self.drain(sh, i, now);
    }

    /// Collects node `i`'s output at `now` (ns): datagrams onto links, TUN packets,
    /// events, its timer.
    fn drain(&mut self, sh: &Shared, i: u32, now: u64) {
        let li = (i - self.io.first) as usize;
        loop {
            let Some(node) = self.nodes[li].as_mut() else {
                return;
            };
            let mut sent = false;
            while let Some(t) = node.poll_transmit() {
                sent = true;
                self.io.send(sh, i, now, t.dst, t.payload);
            }
            let mut tun = Vec::new();
            while let Some(p) = node.poll_tun_packet() {
                tun.push(p);
            }
            while let Some(e) = node.poll_event() {
                if let Event::Lookup { id, result } = e {
                    self.io
                        .out
                        .lookups
                        .push((id as usize, result.map(|(_, l)| l.hops() as u32)));
                }
            }
            let t = (node
                .poll_timeout()
                .saturating_duration_since(sh.base)
                .as_nanos() as u64)
                .max(now);
            let st = &mut self.io.state[li];
            if st.timer_at != t {
                st.timer_at = t;
                self.io.queue.push(t, ORDER_TIMER, i, Ev::Timer);
            }
            if !sent && tun.is_empty() {
                return;
            }
            for p in tun {
                self.io.on_tun(sh, node, i, now, &p);
            }
        }
    }
}

impl PartIo<'_> {
    /// Puts a datagram from `from` on its link (or counts why not).
    fn send(&mut self, sh: &Shared, from: u32, now: u64, dst: SocketAddr, payload: Vec<u8>) {
        let stats = &mut self.out.stats;
        stats.datagrams += 1;
        stats.bytes += payload.len() as u64;
        let Some(to) = node_of(&dst).filter(|&j| (j as usize) < sh.ips.len()) else {
            stats.drop_link += 1;
            return;
        };
        let Some(&link) = sh.link_of.get(&(from.min(to), from.max(to))) else {
            stats.drop_link += 1;
            return;
        };
        let l = &sh.links[link as usize];
        if !l.up {
            stats.drop_link += 1;
            return;
        }
        if payload.len() + UDP_IP_OVERHEAD > sh.cfg.mtu {
            stats.drop_mtu += 1;
            return;
        }
        let st = &mut self.state[(from - self.first) as usize];
        if sh.cfg.loss > 0.0 && st.loss.gen_bool(sh.cfg.loss) {
            stats.drop_loss += 1;
            return;
        }
        st.sent = st.sent.wrapping_add(1);
        let order = datagram_order(from, st.sent);
        let t = now + l.latency.as_nanos() as u64;
        let ev = Ev::Datagram {
            from,
            link,
            payload,
        };
        let part = sh.part_of(to);
        if part == self.me {
            self.queue.push(t, order, to, ev);
        } else {
            self.out.mail[part].push(Mail { t, order, to, ev });
        }
    }

    /// A packet out of node `at`'s TUN: a probe's request (answered at once, as a host
    /// would) or its reply.
    fn on_tun(&mut self, sh: &Shared, node: &mut Node, at: u32, now: u64, p: &[u8]) {
        if p.len() < 48 || p[6] != 58 {
            return;
        }
        let kind = p[40];
        let id = u32::from_be_bytes(p[44..48].try_into().expect("4 bytes")) as usize;
        let src_ip = Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).expect("16"));
        match kind {
            128 => {
                let Some(pr) = sh.probes.get(id) else {
                    return;
                };
                let (src, dst) = (pr.src, pr.dst);
                if dst != at || src_ip != sh.ips[src as usize] {
                    return;
                }
                if pr.arrived.is_none() {
                    self.out.arrived.push((id, now));
                }
                // The destination answers, as a host would.
                let reply = echo_packet(sh.ips[dst as usize], src_ip, id as u32, false);
                node.handle_tun_packet(sh.instant(now), &reply);
            }
            129 => {
                if sh
                    .probes
                    .get(id)
                    .is_some_and(|pr| pr.src == at && pr.replied.is_none())
                {
                    self.out.replied.push((id, now));
                }
            }
            _ => self.out.stats.icmp_errors += 1,
        }
    }
}

/// Splits `s` into the parts of `bounds` (part `p`: `bounds[p]..bounds[p + 1]`).
fn split_parts<'a, T>(mut s: &'a mut [T], bounds: &[u32]) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(bounds.len() - 1);
    for w in bounds.windows(2) {
        let (a, b) = s.split_at_mut((w[1] - w[0]) as usize);
        out.push(a);
        s = b;
    }
    out
}

/// A barrier that spins a while before it sleeps: a window's work is often done sooner
/// than a sleeping thread takes to wake up, but a thread that spins while the one it waits
/// for has no core (more threads than cores, or a busy machine) only delays it.
struct SpinBarrier {
    parts: usize,
    arrived: std::sync::atomic::AtomicUsize,
    generation: std::sync::atomic::AtomicUsize,
    sleepers: std::sync::Mutex<()>,
    wake: std::sync::Condvar,
}

/// Spins before a thread waiting at a [`SpinBarrier`] sleeps (tens of microseconds).
const BARRIER_SPINS: u32 = 20_000;

impl SpinBarrier {
    fn new(parts: usize) -> SpinBarrier {
        SpinBarrier {
            parts,
            arrived: 0.into(),
            generation: 0.into(),
            sleepers: std::sync::Mutex::new(()),
            wake: std::sync::Condvar::new(),
        }
    }

    /// Returns once all `parts` threads have called it.
    fn wait(&self) {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
        let generation = self.generation.load(Acquire);
        if self.arrived.fetch_add(1, AcqRel) + 1 == self.parts {
            self.arrived.store(0, Relaxed);
            // Under the lock, so a thread about to sleep either sees the new generation or
            // is already waiting when the wake-up comes.
            let _guard = self.sleepers.lock().expect("barrier");
            self.generation.fetch_add(1, Release);
            self.wake.notify_all();
            return;
        }
        for _ in 0..BARRIER_SPINS {
            if self.generation.load(Acquire) != generation {
                return;
            }
            std::hint::spin_loop();
        }
        let mut guard = self.sleepers.lock().expect("barrier");
        while self.generation.load(Acquire) == generation {
            guard = self.wake.wait(guard).expect("barrier");
        }
    }
}

/// What the threads of a run share while windows run.
struct Windows<'a> {
    barrier: SpinBarrier,
    parts: Vec<std::sync::Mutex<Part<'a>>>,
    /// Per window (mod 3): the next part to take.
    take: [std::sync::atomic::AtomicUsize; 3],
    /// Per window (mod 3): its first event's time, ns (`u64::MAX`: none).
    start: [std::sync::atomic::AtomicU64; 3],
    /// Datagrams in transit between parts: slot `from * parts + to`.
    mail: Vec<std::sync::Mutex<Vec<Mail>>>,
}

/// One thread's share of [`Sim::run_windows`]: window after window, it takes parts not yet
/// taken, hands each the datagrams other parts sent it, handles its events in the window and
/// posts what it sends other parts, until the window's parts are all done; then it waits for
/// the other threads. `lead` resets the counters of the windows to come.
fn run_windows_thread(w: &Windows, sh: &Shared, stop: u64, window: u64, lead: bool) {
    use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
    let parts = w.parts.len();
    let mut k = 0usize;
    loop {
        let t0 = w.start[k % 3].load(Acquire);
        if t0 >= stop {
            return;
        }
        if lead {
            // Last used two windows ago (`take`) and read at the start of the last one
            // (`start`): every thread has passed both.
            w.take[(k + 1) % 3].store(0, Release);
            w.start[(k + 2) % 3].store(u64::MAX, Release);
        }
        let end = t0.saturating_add(window).min(stop);
        loop {
            let p = w.take[k % 3].fetch_add(1, AcqRel);
            if p >= parts {
                break;
            }
            let mut part = w.parts[p].lock().expect("part");
            let part = &mut *part;
            for from in (0..parts).filter(|&q| q != p) {
                let mail = std::mem::take(&mut *w.mail[from * parts + p].lock().expect("mail"));
                for m in mail {
                    part.io.queue.push(m.t, m.order, m.to, m.ev);
                }
            }
            part.run(sh, end);
            let mut next = part.io.queue.peek_time().unwrap_or(u64::MAX);
            for to in (0..parts).filter(|&q| q != p) {
                let out = &mut part.io.out.mail[to];
                if !out.is_empty() {
                    next = out.iter().map(|m| m.t).fold(next, u64::min);
                    w.mail[p * parts + to].lock().expect("mail").append(out);
                }
            }
            w.start[(k + 1) % 3].fetch_min(next, AcqRel);
        }
        w.barrier.wait();
        k += 1;
    }
}

impl Sim {
    /// A network with the graph's nodes (none started yet) and links.
    pub fn new(graph: &Graph, ids: Vec<Identity>, cfg: SimConfig) -> Sim {
        assert!(ids.len() >= graph.n, "an identity per node");
        let n = graph.n;
        let base = Instant::now();
        // Several parts per thread: a thread that finishes its share of a window early
        // takes another part instead of waiting.
        let parts = if cfg.threads > 1 {
            (cfg.threads * PARTS_PER_THREAD).min(n.max(1))
        } else {
            1
        };
        let seed = cfg.seed;
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
            ips: ids.iter().take(n).map(|id| id.address().ip()).collect(),
            ids,
            nodes: (0..n).map(|_| None).collect(),
            links: Vec::new(),
            link_of: HashMap::default(),
            node_links: vec![Vec::new(); n],
            state: (0..n as u64)
                .map(|i| NodeState {
                    timer_at: u64::MAX,
                    loss: ChaCha8Rng::seed_from_u64(seed ^ (i << 24) ^ 0x5eed_1055),
                    sent: 0,
                    starts: 0,
                    work: 0,
                })
                .collect(),
            queues: (0..parts).map(|_| Queue::default()).collect(),
            bounds: (0..=parts).map(|p| (p * n / parts) as u32).collect(),
            link_actions: BTreeMap::new(),
            scheduled: 0,
            min_latency: u64::MAX,
            probes: Vec::new(),
            lookups: Vec::new(),
            stats: NetStats::default(),
            trace: 0,
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
    ///
    /// # Panics
    /// If `latency` is zero: nothing may arrive in the instant it was sent.
    pub fn add_link(&mut self, a: u32, b: u32, latency: Duration) -> u32 {
        assert!(latency > Duration::ZERO, "links take time");
        self.min_latency = self.min_latency.min(latency.as_nanos() as u64);
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
        let t = self.ns(t.max(self.now));
        self.scheduled += 1;
        let order = ORDER_ACTION | self.scheduled;
        match action {
            Action::Start(i) | Action::Kill(i) => {
                let ev = if matches!(action, Action::Start(_)) {
                    Ev::Start
                } else {
                    Ev::Kill
                };
                let p = self.part_of(i);
                self.queues[p].push(t, order, i, ev);
            }
            Action::LinkDown(_) | Action::LinkUp(_) => {
                self.link_actions.insert((t, self.scheduled), action);
            }
        }
    }

    /// Virtual nanoseconds of `t` (not before the start).
    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// The part that holds node `i`.
    fn part_of(&self, i: u32) -> usize {
        part_of(&self.bounds, i)
    }

    /// Applies `action` now.
    pub fn apply(&mut self, action: Action) {
        match action {
            Action::Start(i) => {
                let now = self.ns(self.now);
                self.with_part_of(i, |part, sh| part.start(sh, i, now));
            }
            Action::Kill(i) => {
                self.nodes[i as usize] = None;
                self.state[i as usize].timer_at = u64::MAX;
            }
            Action::LinkDown(li) => self.links[li as usize].up = false,
            Action::LinkUp(li) => self.links[li as usize].up = true,
        }
    }

    /// Runs `f` on the part that holds node `i` (between windows), then takes in what it
    /// produced.
    fn with_part_of(&mut self, i: u32, f: impl FnOnce(&mut Part, &Shared)) {
        let p = self.part_of(i);
        let parts = self.queues.len();
        let (a, b) = (self.bounds[p] as usize, self.bounds[p + 1] as usize);
        let sh = shared!(self);
        let mut part = Part {
            nodes: &mut self.nodes[a..b],
            io: PartIo {
                me: p,
                first: a as u32,
                state: &mut self.state[a..b],
                queue: &mut self.queues[p],
                out: Out::for_parts(parts),
            },
        };
        f(&mut part, &sh);
        let out = part.io.out;
        self.merge(vec![out]);
    }

    /// Takes in what parts produced, in part order: counters, probe and lookup results,
    /// datagrams for other parts.
    fn merge(&mut self, outs: Vec<Out>) {
        let mut arrived = Vec::new();
        let mut replied = Vec::new();
        for mut out in outs {
            let d = &out.stats;
            let s = &mut self.stats;
            s.datagrams += d.datagrams;
            s.bytes += d.bytes;
            s.delivered += d.delivered;
            s.drop_loss += d.drop_loss;
            s.drop_mtu += d.drop_mtu;
            s.drop_link += d.drop_link;
            s.drop_dead += d.drop_dead;
            s.icmp_errors += d.icmp_errors;
            s.events += d.events;
            self.trace = self.trace.wrapping_add(out.trace);
            for (id, result) in out.lookups {
                if let Some(l) = self.lookups.get_mut(id) {
                    l.result = Some(result);
                }
            }
            arrived.append(&mut out.arrived);
            replied.append(&mut out.replied);
            for mail in out.mail {
                for m in mail {
                    let p = self.part_of(m.to);
                    self.queues[p].push(m.t, m.order, m.to, m.ev);
                }
            }
        }
        for (id, t) in arrived {
            if self.probes[id].arrived.is_some() {
                continue;
            }
            let (src, dst) = (self.probes[id].src, self.probes[id].dst);
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
            pr.arrived = Some(self.base + Duration::from_nanos(t));
            pr.hops = hops;
        }
        for (id, t) in replied {
            let pr = &mut self.probes[id];
            if pr.replied.is_none() && pr.arrived.is_some() {
                pr.replied = Some(self.base + Duration::from_nanos(t));
            }
        }
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

    /// Collects node `i`'s output now (between windows).
    fn drain(&mut self, i: u32) {
        let now = self.ns(self.now);
        self.with_part_of(i, |part, sh| part.drain(sh, i, now));
    }

    /// Time of the next event, if any.
    pub fn next_event(&self) -> Option<Instant> {
        self.queues
            .iter()
            .filter_map(Queue::peek_time)
            .chain(self.link_actions.keys().map(|&(t, _)| t))
            .min()
            .map(|t| self.base + Duration::from_nanos(t))
    }

    /// Runs every event up to and including `until`, then sets the clock to `until`. Events
    /// run in windows of independent events, on [`SimConfig::threads`] threads; scheduled
    /// link changes between windows. Probe and lookup results are taken in at the end.
    pub fn run_until(&mut self, until: Instant) {
        let until_ns = self.ns(until);
        loop {
            let next = self.link_actions.first_key_value().map(|(&k, &a)| (k, a));
            match next {
                Some(((t, seq), action)) if t <= until_ns => {
                    self.run_windows(t);
                    self.link_actions.remove(&(t, seq));
                    self.now = self.now.max(self.base + Duration::from_nanos(t));
                    self.stats.events += 1;
                    self.apply(action);
                }
                _ => {
                    self.run_windows(until_ns.saturating_add(1));
                    break;
                }
            }
        }
        self.now = self.now.max(until);
    }

    /// Handles every queued event before `stop` (ns), and those they cause.
    ///
    /// The nodes are split into parts, one per thread, each with its own queue. Nothing a
    /// node sends arrives sooner than the shortest link latency, so in a window that long
    /// the parts are independent: each handles its own events in order, then hands the
    /// datagrams for other parts' nodes over. Events of one instant at one node go in an
    /// order that depends only on what the nodes did, so the run is the same on any number
    /// of threads (test `threads_do_not_change_the_run`).
    fn run_windows(&mut self, stop: u64) {
        self.balance();
        let parts = self.queues.len();
        let threads = self.cfg.threads.min(parts);
        let window = self.min_latency.max(1);
        let sh = shared!(self);
        let nodes = split_parts(&mut self.nodes, &self.bounds);
        let states = split_parts(&mut self.state, &self.bounds);
        let mut ps: Vec<Part> = nodes
            .into_iter()
            .zip(states)
            .zip(self.queues.iter_mut())
            .enumerate()
            .map(|(p, ((nodes, state), queue))| Part {
                nodes,
                io: PartIo {
                    me: p,
                    first: sh.bounds[p],
                    state,
                    queue,
                    out: Out::for_parts(parts),
                },
            })
            .collect();
        if parts == 1 {
            // One part: windows change nothing, so one runs to the end.
            ps[0].run(&sh, stop);
            let outs: Vec<Out> = ps.into_iter().map(|p| p.io.out).collect();
            self.merge(outs);
            return;
        }
        let first = ps
            .iter()
            .filter_map(|p| p.io.queue.peek_time())
            .min()
            .unwrap_or(u64::MAX);
        let w = Windows {
            barrier: SpinBarrier::new(threads),
            parts: ps.into_iter().map(std::sync::Mutex::new).collect(),
            take: Default::default(),
            start: [first.into(), u64::MAX.into(), u64::MAX.into()],
            mail: (0..parts * parts)
                .map(|_| std::sync::Mutex::new(Vec::new()))
                .collect(),
        };
        std::thread::scope(|scope| {
            for _ in 1..threads {
                let (sh, w) = (&sh, &w);
                scope.spawn(move || run_windows_thread(w, sh, stop, window, false));
            }
            run_windows_thread(&w, &sh, stop, window, true);
        });
        let mut outs: Vec<Out> = w
            .parts
            .into_iter()
            .map(|p| p.into_inner().expect("part").io.out)
            .collect();
        // What the last window sent other parts is still in the mail.
        for (slot, mail) in w.mail.into_iter().enumerate() {
            outs[slot / parts].mail[slot % parts].append(&mut mail.into_inner().expect("mail"));
        }
        self.merge(outs);
    }

    /// Moves the bounds between parts so that each handled about as many events as the
    /// others since the last time, moving queued events with their nodes. Only the speed
    /// depends on it.
    fn balance(&mut self) {
        let parts = self.queues.len();
        let n = self.nodes.len();
        let total: u64 = self.state.iter().map(|s| s.work as u64).sum();
        if parts == 1 || total < 64 * n as u64 {
            return;
        }
        let mut bounds = vec![0u32];
        let mut acc = 0u64;
        for (i, s) in self.state.iter().enumerate() {
            let next = bounds.len() as u64;
            if next < parts as u64 && acc >= total * next / parts as u64 {
                bounds.push(i as u32);
            }
            acc += s.work as u64;
        }
        while bounds.len() < parts {
            bounds.push(n as u32);
        }
        bounds.push(n as u32);
        for s in &mut self.state {
            s.work = 0;
        }
        if bounds == self.bounds {
            return;
        }
        self.bounds = bounds;
        let old = std::mem::take(&mut self.queues);
        self.queues = (0..parts).map(|_| Queue::default()).collect();
        for mut q in old {
            while let Some((k, ev)) = q.pop() {
                let p = self.part_of(k.node);
                self.queues[p].push(k.t, k.order, k.node, ev);
            }
        }
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
