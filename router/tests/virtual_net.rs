//! Nodes stepped on a virtual clock over simulated links with latency and loss, in the
//! manner of quinn-proto's tests: the real `Node` code, no sockets, no sleeping.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::net::{Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crypto::{Address, Identity};
use meshd_router::{Event, Label, Node, NodeConfig};
use rand::{Rng, SeedableRng};

/// A datagram in flight: arrival time, sequence, to, from, bytes.
type InFlight = Reverse<(Instant, u64, usize, usize, Vec<u8>)>;

struct Net {
    now: Instant,
    nodes: Vec<Node>,
    /// Undirected links that carry packets.
    links: HashSet<(usize, usize)>,
    /// Links cut silently (packets vanish).
    cut: HashSet<(usize, usize)>,
    latency: Duration,
    /// Extra random delay per datagram, up to this: reorders packets.
    jitter: Duration,
    loss: f64,
    rng: rand::rngs::StdRng,
    queue: BinaryHeap<InFlight>,
    seq: u64,
    /// Packets each node wrote to its TUN.
    delivered: Vec<Vec<(Instant, Vec<u8>)>>,
    /// Whether nodes answer ICMPv6 echo requests, as a kernel would.
    echo: bool,
    /// Lookups that ended: (node, request id, found, when).
    lookups_done: Vec<(usize, u64, bool, Instant)>,
}

fn ep(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 7400))
}

fn key(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Net {
    fn new(n: usize, seed: u64, cfg: impl Fn(usize) -> NodeConfig) -> Net {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let now = Instant::now();
        let nodes = (0..n)
            .map(|i| {
                Node::new(
                    Identity::generate(&mut rng),
                    cfg(i),
                    seed * 1000 + i as u64,
                    now,
                )
            })
            .collect();
        Net {
            now,
            nodes,
            links: HashSet::new(),
            cut: HashSet::new(),
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            loss: 0.0,
            rng,
            queue: BinaryHeap::new(),
            seq: 0,
            delivered: vec![Vec::new(); n],
            echo: false,
            lookups_done: Vec::new(),
        }
    }

    /// Adds a node with identity `id`; returns its index.
    fn add_node(&mut self, id: Identity) -> usize {
        let i = self.nodes.len();
        let seed = 1_000_000 + i as u64;
        self.nodes
            .push(Node::new(id, NodeConfig::default(), seed, self.now));
        self.delivered.push(Vec::new());
        i
    }

    /// Wires a and b; a dials b.
    fn connect(&mut self, a: usize, b: usize, pin_key: bool) {
        self.links.insert(key(a, b));
        let k = pin_key.then(|| self.nodes[b].identity().public_key());
        self.nodes[a].add_peer(self.now, ep(b), k);
    }

    fn index_of(&self, e: SocketAddr) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| ep(i) == e)
    }

    /// Puts node `i`'s datagrams on the wire (dropping those for cut or absent links).
    fn send_transmits(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].poll_transmit() {
            let Some(j) = self.index_of(t.dst) else {
                continue;
            };
            let k = key(i, j);
            if !self.links.contains(&k) || self.cut.contains(&k) || self.rng.gen_bool(self.loss) {
                continue;
            }
            self.seq += 1;
            let jitter = if self.jitter.is_zero() {
                Duration::ZERO
            } else {
                self.jitter.mul_f64(self.rng.gen::<f64>())
            };
            self.queue.push(Reverse((
                self.now + self.latency + jitter,
                self.seq,
                j,
                i,
                t.payload,
            )));
        }
    }

    fn flush(&mut self, i: usize) {
        self.send_transmits(i);
        while let Some(p) = self.nodes[i].poll_tun_packet() {
            if self.echo && p.len() >= 48 && p[40] == 128 {
                let mut r = p.clone();
                r[8..24].copy_from_slice(&p[24..40]);
                r[24..40].copy_from_slice(&p[8..24]);
                r[40] = 129;
                self.nodes[i].handle_tun_packet(self.now, &r);
            }
            self.delivered[i].push((self.now, p));
        }
        // Echo replies the node just produced.
        self.send_transmits(i);
        while let Some(e) = self.nodes[i].poll_event() {
            if let Event::Lookup { id, result } = e {
                self.lookups_done.push((i, id, result.is_some(), self.now));
            }
        }
    }

    /// Runs until `until`.
    fn run_until(&mut self, until: Instant) {
        loop {
            let next_timer = (0..self.nodes.len())
                .map(|i| (self.nodes[i].poll_timeout(), i))
                .min()
                .expect("nodes");
            let next_pkt = self.queue.peek().map(|Reverse((t, ..))| *t);
            let t = next_pkt.map_or(next_timer.0, |p| p.min(next_timer.0));
            if t > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(t);
            if next_pkt.is_some_and(|p| p <= next_timer.0) {
                let Reverse((_, _, j, from, data)) = self.queue.pop().expect("packet");
                self.nodes[j].handle_datagram(self.now, ep(from), &data);
                self.flush(j);
            } else {
                let i = next_timer.1;
                self.nodes[i].handle_timeout(self.now);
                self.flush(i);
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// An ICMPv6 echo request from node a to node b, tagged with `seq`.
    fn ping(&mut self, a: usize, b: usize, seq: u16) {
        let src = self.nodes[a].address().ip();
        let dst = self.nodes[b].address().ip();
        let p = ipv6_packet(src, dst, seq);
        self.nodes[a].handle_tun_packet(self.now, &p);
        self.flush(a);
    }

    fn received(&self, b: usize, seq: u16) -> Option<Instant> {
        self.delivered[b]
            .iter()
            .find(|(_, p)| {
                p.len() >= 48 && u16::from_be_bytes([p[46], p[47]]) == seq && p[40] == 128
            })
            .map(|(t, _)| *t)
    }

    /// ICMPv6 Destination Unreachable messages node `i` wrote to its TUN.
    fn unreachables(&self, i: usize) -> usize {
        self.delivered[i]
            .iter()
            .filter(|(_, p)| p.len() > 40 && p[6] == 58 && p[40] == 1)
            .count()
    }

    /// When `a` got the echo reply for `seq`.
    fn replied(&self, a: usize, seq: u16) -> Option<Instant> {
        self.delivered[a]
            .iter()
            .find(|(_, p)| {
                p.len() >= 48 && u16::from_be_bytes([p[46], p[47]]) == seq && p[40] == 129
            })
            .map(|(t, _)| *t)
    }
}

fn ipv6_packet(src: Ipv6Addr, dst: Ipv6Addr, seq: u16) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 16, 58, 64];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[128, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0xab; 8]);
    p
}

#[test]
fn two_nodes_link_and_carry_packets() {
    for pin in [false, true] {
        let mut net = Net::new(2, 1, |_| NodeConfig::default());
        net.connect(0, 1, pin);
        net.run_for(Duration::from_millis(200));
        assert!(
            net.nodes[0].peers(net.now).iter().any(|p| p.up),
            "linked (pinned key: {pin})"
        );
        assert!(net.nodes[1].peers(net.now).iter().any(|p| p.up));
        net.ping(0, 1, 1);
        net.ping(1, 0, 2);
        net.run_for(Duration::from_millis(200));
        assert!(net.received(1, 1).is_some(), "0 -> 1");
        assert!(net.received(0, 2).is_some(), "1 -> 0");
        let got = &net.delivered[1][0].1;
        assert_eq!(
            got,
            &ipv6_packet(net.nodes[0].address().ip(), net.nodes[1].address().ip(), 1)
        );
    }
}

#[test]
fn wrong_secret_never_links() {
    let mut net = Net::new(2, 2, |i| NodeConfig {
        network_psk: Some([i as u8; 32]),
        ..Default::default()
    });
    net.connect(0, 1, false);
    net.run_for(Duration::from_secs(10));
    assert!(net.nodes[0].peers(net.now).is_empty());
    assert!(net.nodes[1].peers(net.now).is_empty());
    assert!(net.nodes[1].counters().drop_handshake_failed > 0);
}

#[test]
fn allow_list_keeps_strangers_out() {
    let mut net = Net::new(3, 3, |_| NodeConfig::default());
    let friend = net.nodes[1].identity().public_key();
    net.nodes[0].set_allowed_keys(net.now, Some([friend].into_iter().collect()));
    net.connect(1, 0, false);
    net.connect(2, 0, false);
    net.run_for(Duration::from_secs(3));
    let peers: Vec<_> = net.nodes[0]
        .peers(net.now)
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(peers, vec![friend]);
    assert!(net.nodes[0].counters().drop_not_allowed > 0);
}

#[test]
fn simultaneous_dial_ends_in_one_link() {
    let mut net = Net::new(2, 4, |_| NodeConfig::default());
    net.connect(0, 1, false);
    net.connect(1, 0, false);
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.nodes[0].peers(net.now).len(), 1);
    assert_eq!(net.nodes[1].peers(net.now).len(), 1);
    for s in 0..20 {
        net.ping(0, 1, s);
        net.ping(1, 0, 100 + s);
        net.run_for(Duration::from_millis(20));
    }
    net.run_for(Duration::from_millis(100));
    assert!((0..20).all(|s| net.received(1, s).is_some() && net.received(0, 100 + s).is_some()));
}

#[test]
fn line_of_six_end_to_end() {
    let mut net = Net::new(6, 5, |_| NodeConfig::default());
    for i in 0..5 {
        net.connect(i, i + 1, false);
    }
    net.run_for(Duration::from_secs(3));
    for s in 0..10 {
        net.ping(0, 5, s);
        net.ping(5, 0, 100 + s);
        net.run_for(Duration::from_millis(100));
    }
    net.run_for(Duration::from_secs(2));
    let there = (0..10).filter(|&s| net.received(5, s).is_some()).count();
    let back = (0..10)
        .filter(|&s| net.received(0, 100 + s).is_some())
        .count();
    assert_eq!(
        (there, back),
        (10, 10),
        "counters: {:?}",
        net.nodes[0].counters()
    );
}

/// The middle of five numbers: a lossy run's outcome depends on which packets its seed drops
/// (one in twenty-five seeds loses the first lookup or handshake and, with it, most of the
/// flow), so these tests judge the median of five seeds, not one.
fn median_of_five(mut got: Vec<usize>) -> usize {
    assert_eq!(got.len(), 5);
    got.sort_unstable();
    got[2]
}

/// A 4-node line losing 10% of datagrams on every link, 6 s to settle, then 50 pings 50 ms
/// apart from one end to the other: how many arrived.
fn pings_over_a_lossy_line(seed: u64) -> usize {
    let mut net = Net::new(4, seed, |_| NodeConfig::default());
    net.loss = 0.1;
    for i in 0..3 {
        net.connect(i, i + 1, false);
    }
    net.run_for(Duration::from_secs(6));
    for s in 0..50 {
        net.ping(0, 3, s);
        net.run_for(Duration::from_millis(50));
    }
    net.run_for(Duration::from_secs(1));
    (0..50).filter(|&s| net.received(3, s).is_some()).count()
}

#[test]
fn lossy_links_still_deliver() {
    let got: Vec<usize> = (6..11).map(pings_over_a_lossy_line).collect();
    // Three lossy hops each way lose ~27% of packets; all must not be lost.
    assert!(median_of_five(got.clone()) >= 25, "got {got:?} of 50");
}

#[test]
fn restarted_node_is_reached_again() {
    let mut net = Net::new(3, 8, |_| NodeConfig::default());
    net.connect(0, 1, false);
    net.connect(1, 2, false);
    net.run_for(Duration::from_secs(3));
    net.ping(0, 2, 1);
    net.run_for(Duration::from_secs(1));
    assert!(net.received(2, 1).is_some());
    // Node 2 restarts with the same identity and no other state.
    let id = net.nodes[2].identity().clone();
    net.nodes[2] = Node::new(id, NodeConfig::default(), 99, net.now);
    net.nodes[2].add_peer(net.now, ep(1), None);
    net.run_for(Duration::from_secs(1));
    for s in 2..100 {
        net.ping(0, 2, s);
        net.run_for(Duration::from_millis(100));
    }
    let first = (2..100).find(|&s| net.received(2, s).is_some());
    assert!(
        first.is_some_and(|s| s < 60),
        "reached again after {first:?} x 100ms"
    );
}

#[test]
fn garbage_never_breaks_a_link() {
    let mut net = Net::new(2, 9, |_| NodeConfig::default());
    net.connect(0, 1, false);
    net.run_for(Duration::from_millis(300));
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for i in 0..20000 {
        let len = rng.gen_range(0..200);
        let mut junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if i % 3 == 0 && !junk.is_empty() {
            junk[0] = rng.gen_range(1..=5); // plausible types
        }
        let now = net.now;
        net.nodes[1].handle_datagram(now, ep(0), &junk);
        net.nodes[1].handle_datagram(now, "192.0.2.1:9".parse().unwrap(), &junk);
    }
    net.flush(1);
    net.ping(0, 1, 7);
    net.run_for(Duration::from_millis(500));
    assert!(net.received(1, 7).is_some());
    let c = net.nodes[1].counters();
    assert!(
        c.drop_malformed + c.drop_unknown_index + c.drop_handshake_failed + c.drop_handshake_rate
            > 10000
    );
}

/// 0 and 2 are both linked to 1 and could reach each other directly (as two NATed nodes can
/// once they punch): busy traffic between them opens a direct link, and 1 stops forwarding.
#[test]
fn busy_pairs_open_a_direct_link_through_the_mesh() {
    let mut net = Net::new(3, 10, |_| NodeConfig::default());
    net.connect(0, 1, false);
    net.connect(2, 1, false);
    net.links.insert(key(0, 2)); // reachable, but nobody configured it
    net.run_for(Duration::from_secs(2));
    for s in 0..100 {
        net.ping(0, 2, s);
        net.run_for(Duration::from_millis(50));
    }
    let k2 = net.nodes[2].identity().public_key();
    assert!(
        net.nodes[0]
            .peers(net.now)
            .iter()
            .any(|p| p.key == k2 && p.up),
        "direct link 0-2"
    );
    let forwarded = net.nodes[1].counters().forwarded;
    for s in 100..140 {
        net.ping(0, 2, s);
        net.run_for(Duration::from_millis(50));
    }
    assert!((100..140).all(|s| net.received(2, s).is_some()));
    // Only probes of the old path may still cross the middle node, not the traffic.
    assert!(
        net.nodes[1].counters().forwarded - forwarded < 20,
        "middle still forwards {}",
        net.nodes[1].counters().forwarded - forwarded
    );
}

/// Right after the links of a fresh line come up, the first packet to the far end waits
/// for the lookup instead of being refused.
#[test]
fn first_packet_on_a_fresh_line_waits_for_the_lookup() {
    for seed in 20..24 {
        let mut net = Net::new(6, seed, |_| NodeConfig::default());
        for i in 0..5 {
            net.connect(i, i + 1, false);
        }
        net.run_for(Duration::from_millis(300));
        net.ping(0, 5, 1);
        net.run_for(Duration::from_secs(3));
        let icmp_errors = net.unreachables(0);
        assert!(
            net.received(5, 1).is_some() && icmp_errors == 0,
            "seed {seed}: delivered {:?}, {icmp_errors} ICMP errors; node 0: {:?}",
            net.received(5, 1),
            net.nodes[0].counters()
        );
    }
}

/// Square 0-1-2-3-0 where 0 and 2 are not peers, linked and settled.
fn square(seed: u64, echo: bool) -> Net {
    let mut net = Net::new(4, seed, |_| NodeConfig::default());
    net.echo = echo;
    for (a, b) in [(0, 1), (1, 2), (2, 3), (3, 0)] {
        net.connect(a, b, false);
    }
    net.run_for(Duration::from_secs(3));
    net
}

/// Pings 0 -> 2 every 50 ms for `d`, numbering from `*seq`.
fn ping_flow(net: &mut Net, seq: &mut u16, d: Duration) {
    let end = net.now + d;
    while net.now < end {
        net.ping(0, 2, *seq);
        *seq += 1;
        net.run_for(Duration::from_millis(50));
    }
}

/// The middle node (1 or 3) that has forwarded more: the one the flow uses.
fn middle_in_use(net: &Net) -> usize {
    if net.nodes[1].counters().forwarded > net.nodes[3].counters().forwarded {
        1
    } else {
        3
    }
}

fn longest_gap(times: &[Instant]) -> Duration {
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(Duration::MAX)
}

/// A one-way flow 0 -> 2 keeps going when the far link it uses is cut silently, with the
/// longest gap under a second; again when the first link of the other path is cut after the
/// first heals.
#[test]
fn silent_cut_fails_over_within_a_second() {
    let mut net = square(7, false);
    let mut seq = 0u16;
    ping_flow(&mut net, &mut seq, Duration::from_secs(2));
    let via = middle_in_use(&net);
    net.cut.insert(key(via, 2));
    ping_flow(&mut net, &mut seq, Duration::from_secs(4));
    net.cut.clear();
    ping_flow(&mut net, &mut seq, Duration::from_secs(8));
    net.cut.insert(key(0, 4 - via));
    ping_flow(&mut net, &mut seq, Duration::from_secs(4));
    net.run_for(Duration::from_secs(1));
    let times: Vec<Instant> = (0..seq).filter_map(|s| net.received(2, s)).collect();
    let gap = longest_gap(&times);
    assert!(
        gap < Duration::from_millis(1000),
        "longest outage {gap:?}, got {}/{seq}",
        times.len()
    );
}

/// As the namespace test does it: a ping flow with replies (both ends send), the link next
/// to the sender cut silently, then (after healing) the first link of the other path.
#[test]
fn round_trips_survive_a_cut_next_to_the_sender() {
    let mut net = square(11, true);
    let mut seq = 0u16;
    ping_flow(&mut net, &mut seq, Duration::from_secs(2));
    net.cut.insert(key(0, middle_in_use(&net)));
    ping_flow(&mut net, &mut seq, Duration::from_secs(4));
    net.cut.clear();
    ping_flow(&mut net, &mut seq, Duration::from_secs(8));
    net.cut.insert(key(0, middle_in_use(&net)));
    ping_flow(&mut net, &mut seq, Duration::from_secs(4));
    net.run_for(Duration::from_secs(1));
    let times: Vec<Instant> = (0..seq).filter_map(|s| net.replied(0, s)).collect();
    let gap = longest_gap(&times);
    assert!(
        gap < Duration::from_millis(1000),
        "longest outage {gap:?}, got {}/{seq}; node 0: {:?}",
        times.len(),
        net.nodes[0].counters()
    );
}

/// A switch error about a far link must only break paths through that link: the square's
/// far link dies while node 0's direct path to the other middle node may end with the same
/// director number as the dead link.
#[test]
fn round_trips_survive_a_far_cut() {
    let mut net = square(11, true);
    let mut seq = 0u16;
    ping_flow(&mut net, &mut seq, Duration::from_secs(2));
    net.cut.insert(key(middle_in_use(&net), 2));
    ping_flow(&mut net, &mut seq, Duration::from_secs(6));
    net.run_for(Duration::from_secs(1));
    let times: Vec<Instant> = (0..seq).filter_map(|s| net.replied(0, s)).collect();
    let gap = longest_gap(&times);
    assert!(
        gap < Duration::from_millis(1000),
        "longest outage {gap:?}; node 0: {:?}",
        net.nodes[0].counters()
    );
    assert_eq!(
        net.nodes[0].counters().drop_unreachable,
        0,
        "node 2 was never unreachable: {:?}",
        net.nodes[0].counters()
    );
}

/// Keys are replaced before they get old: over six virtual minutes a link rekeys (both ends
/// agree on the new keys) and traffic never stops.
#[test]
fn links_and_sessions_rekey_before_keys_expire() {
    let mut net = Net::new(3, 12, |_| NodeConfig::default());
    net.connect(0, 1, false);
    net.connect(1, 2, false);
    net.run_for(Duration::from_secs(2));
    let seq = 720u16; // one packet every 500 ms for six minutes
    for s in 0..seq {
        net.ping(0, 2, s);
        net.run_for(Duration::from_millis(500));
    }
    let times: Vec<Instant> = (0..seq).filter_map(|s| net.received(2, s)).collect();
    assert!(
        times.len() >= 715,
        "only {}/{seq} packets arrived over 6 minutes",
        times.len()
    );
    let c0 = net.nodes[0].counters();
    assert!(
        c0.handshakes_completed >= 3,
        "link rekeyed only {} times: {c0:?}",
        c0.handshakes_completed
    );
    assert!(
        c0.sessions_established >= 3,
        "session rekeyed only {} times: {c0:?}",
        c0.sessions_established
    );
}

/// Links in a static, lossless mesh never go down, with or without traffic.
#[test]
fn static_links_never_flap() {
    let mut net = Net::new(8, 13, |_| NodeConfig::default());
    for i in 0..7 {
        net.connect(i, i + 1, false);
    }
    net.connect(0, 4, false);
    net.links.insert(key(0, 4));
    net.run_for(Duration::from_secs(20));
    for s in 0..200 {
        net.ping(s as usize % 8, (s as usize * 3 + 1) % 8, s);
        net.run_for(Duration::from_millis(100));
    }
    net.run_for(Duration::from_secs(20));
    let downs: Vec<u64> = net.nodes.iter().map(|n| n.counters().links_down).collect();
    assert!(downs.iter().all(|&d| d == 0), "links went down: {downs:?}");
}

/// A link that sat idle (so heard from its peer only every second or so) and then carries a
/// packet is probed before it can be judged dead: it must not flap.
#[test]
fn idle_link_that_starts_carrying_traffic_stays_up() {
    let mut net = Net::new(2, 14, |_| NodeConfig::default());
    net.connect(0, 1, false);
    for round in 0..20u16 {
        net.run_for(Duration::from_millis(1000 + 137 * round as u64));
        net.ping(0, 1, round);
    }
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        net.nodes[0].counters().links_down + net.nodes[1].counters().links_down,
        0
    );
    assert!((0..20).all(|s| net.received(1, s).is_some()));
}

/// A line of four nodes over links that lose 5% of datagrams and reorder them (up to 8 ms of
/// jitter on 1 ms), warmed up for 5 s, after node 0 sent node 3 100 pings in bursts of five
/// (so packets of one flow overtake each other) and the network ran on for 2 s.
fn lossy_reordered_line_after_a_flow(seed: u64) -> Net {
    let mut net = Net::new(4, seed, |_| NodeConfig::default());
    net.jitter = Duration::from_millis(8);
    net.loss = 0.05;
    for i in 0..3 {
        net.connect(i, i + 1, false);
    }
    net.run_for(Duration::from_secs(5));
    for s in 0..100u16 {
        net.ping(0, 3, s);
        if s % 5 == 4 {
            net.run_for(Duration::from_millis(100));
        }
    }
    net.run_for(Duration::from_secs(2));
    net
}

fn links_down(net: &Net) -> u64 {
    net.nodes.iter().map(|n| n.counters().links_down).sum()
}

/// Datagrams reordered and lost: links, lookups and sessions still work, and nothing a
/// reordered packet carries is refused as a replay.
#[test]
fn reordering_and_loss_are_survived() {
    let mut got = Vec::new();
    for seed in 15..20 {
        let net = lossy_reordered_line_after_a_flow(seed);
        got.push((0..100).filter(|&s| net.received(3, s).is_some()).count());
        let replays: u64 = net.nodes.iter().map(|n| n.counters().drop_replay).sum();
        assert_eq!(
            replays, 0,
            "reordered packets were refused as replays (seed {seed})"
        );
        assert_eq!(
            links_down(&net),
            0,
            "links flapped under reordering (seed {seed})"
        );
    }
    // Three lossy hops lose ~14%; everything else must arrive.
    assert!(median_of_five(got.clone()) >= 70, "got {got:?} of 100");
}

/// On a lossy, reordering line, handshake tries cross: a node may complete an earlier try
/// than the one its peer answered last, and then send with keys the peer has dropped; or the
/// last message of an XX handshake is lost, and the peer never finishes. Three things keep the
/// link up: unanswered probes start a fresh handshake (13 of 100 runs flapped before), a peer
/// sending with our previous keys makes us send with them too, and the last XX message goes
/// again with each probe until the peer answers (4 of 200 runs flapped before those two).
#[test]
fn crossed_handshakes_on_lossy_links_do_not_flap() {
    let flapped: Vec<u64> = (200..320)
        .filter(|&seed| links_down(&lossy_reordered_line_after_a_flow(seed)) > 0)
        .collect();
    assert!(
        flapped.is_empty(),
        "links flapped in {} of 120 runs: {flapped:?}",
        flapped.len()
    );
}

/// A 4x4 grid: every node agrees on the largest key as root and reaches every other node over
/// tree routes no longer than twice the grid distance; when the root's links are cut
/// silently, the others agree on the next largest key within the root timeout and still
/// reach each other.
#[test]
fn grid_agrees_on_a_root_and_survives_losing_it() {
    let side = 4;
    let n = side * side;
    let mut net = Net::new(n, 21, |_| NodeConfig::default());
    for r in 0..side {
        for c in 0..side {
            let i = r * side + c;
            if c + 1 < side {
                net.connect(i, i + 1, false);
            }
            if r + 1 < side {
                net.connect(i, i + side, false);
            }
        }
    }
    net.run_for(Duration::from_secs(5));
    let keys: Vec<_> = net
        .nodes
        .iter()
        .map(|x| x.identity().public_key())
        .collect();
    let root = (0..n).max_by_key(|&i| keys[i]).unwrap();
    for (i, x) in net.nodes.iter().enumerate() {
        assert_eq!(
            x.tree().root(),
            keys[root],
            "node {i} follows the largest key"
        );
    }
    let dist = |a: usize, b: usize| (a / side).abs_diff(b / side) + (a % side).abs_diff(b % side);
    let mut seq = 0u16;
    let check_all = |net: &mut Net, seq: &mut u16, skip: Option<usize>| {
        let from = if skip == Some(0) { 1 } else { 0 };
        let mut sent = Vec::new();
        for to in (0..n).filter(|&t| t != from && Some(t) != skip) {
            *seq += 1;
            net.ping(from, to, *seq);
            sent.push((to, *seq));
        }
        net.run_for(Duration::from_secs(3));
        for (to, s) in sent {
            assert!(net.received(to, s).is_some(), "{from} -> {to}");
            let hops = net.nodes[from]
                .path_to(&net.nodes[to].address())
                .map(|l| l.hops())
                .unwrap_or(usize::MAX);
            assert!(hops <= 2 * dist(from, to), "{from} -> {to}: {hops} hops");
        }
    };
    check_all(&mut net, &mut seq, None);
    // The root goes silent on every link.
    for j in 0..n {
        if dist(root, j) == 1 {
            net.cut.insert(key(root, j));
        }
    }
    net.run_for(Duration::from_secs(10));
    let next = (0..n)
        .filter(|&i| i != root)
        .max_by_key(|&i| keys[i])
        .unwrap();
    for (i, x) in net.nodes.iter().enumerate().filter(|(i, _)| *i != root) {
        assert_eq!(
            x.tree().root(),
            keys[next],
            "node {i} moved to the next largest key"
        );
    }
    check_all(&mut net, &mut seq, Some(root));
}

/// Packets to an address nobody has: the first waits for the lookup and gets ICMPv6
/// unreachable; the one right after it is answered at once; a stream of them starts a few
/// lookups (the back-off doubles from 50 ms), not one each; once the back-off has passed, the
/// next packet looks again.
#[test]
fn a_missing_destination_is_not_looked_up_for_every_packet() {
    let mut net = Net::new(3, 31, |_| NodeConfig::default());
    net.connect(0, 1, false);
    net.connect(1, 2, false);
    net.run_for(Duration::from_secs(3));
    let src = net.nodes[0].address().ip();
    let mut missing = net.nodes[2].address().ip().octets();
    missing[15] ^= 0x55;
    let missing = Ipv6Addr::from(missing);
    let unreachables = |net: &Net| net.unreachables(0);
    let send = |net: &mut Net, seq: u16| {
        let p = ipv6_packet(src, missing, seq);
        net.nodes[0].handle_tun_packet(net.now, &p);
        net.flush(0);
    };
    send(&mut net, 1);
    net.run_for(Duration::from_secs(7));
    assert_eq!(
        unreachables(&net),
        1,
        "the first packet: unreachable after its lookup"
    );
    let lookups = net.nodes[0].counters().lookups;
    send(&mut net, 2);
    net.run_for(Duration::from_millis(10));
    assert_eq!(unreachables(&net), 2, "the next packet: answered at once");
    for seq in 3..12 {
        send(&mut net, seq);
        net.run_for(Duration::from_millis(50));
    }
    net.run_for(Duration::from_secs(7));
    assert_eq!(unreachables(&net), 11, "every packet answered");
    // The back-off (50 ms doubling) lets a few lookups through, and the periodic self-lookup
    // or bucket refresh may run meanwhile; without it each of the ten packets starts a lookup.
    let during = net.nodes[0].counters().lookups - lookups;
    assert!(during <= 5, "{during} lookups for 10 packets");
    net.run_for(Duration::from_secs(2));
    let before = net.nodes[0].counters().lookups;
    send(&mut net, 12);
    net.run_for(Duration::from_millis(50));
    assert!(
        net.nodes[0].counters().lookups > before,
        "looked up again after the back-off"
    );
}

/// Over a path whose round trip (720 ms) is longer than the first handshake retry gaps
/// (250 ms, 500 ms), the answer to an earlier try still completes the session: the first
/// packet arrives after about one round trip for the handshake, not after several.
#[test]
fn slow_paths_answer_an_earlier_handshake_try() {
    let mut net = Net::new(4, 41, |_| NodeConfig::default());
    net.latency = Duration::from_millis(120);
    for i in 0..3 {
        net.connect(i, i + 1, false);
    }
    net.run_for(Duration::from_secs(8));
    let sent = net.now;
    net.ping(0, 3, 1);
    net.run_for(Duration::from_secs(5));
    let got = net.received(3, 1).expect("delivered");
    let took = got - sent;
    assert!(
        took < Duration::from_millis(1400),
        "first packet took {took:?}; node 0: {:?}",
        net.nodes[0].counters()
    );
}

/// Lookups, sessions and links on a lossy line, over many seeds: 10% loss per hop lets
/// 0.9^3 = 73% of one-way pings through, 36.5 of each run's 50, 4,380 over 120 runs; a run
/// whose lookup, session or link fails loses most of its 50. Measured over seeds 100..220:
/// 4,005 (91% of what the loss allows). Earlier, over seeds 100..160, a lookup that failed a
/// silent candidate at once delivered 1,973 of 3,000 and the retry 2,088; over these 120
/// seeds the retry was worth 3,998 -> 4,066 before configured peers were dialed every 250 ms
/// for their first 2 s, and nothing measurable after (4,005 either way): the guard here is
/// the delivery rate itself.
#[test]
fn lossy_line_over_many_seeds() {
    let got: usize = (100..220).map(pings_over_a_lossy_line).sum();
    assert!(
        got >= 3900,
        "{got} of 6000 pings arrived (4,380 is what the loss allows)"
    );
}

/// Node `k`'s director for its link to node `j`.
fn director(net: &Net, k: usize, j: usize) -> u16 {
    let key = net.nodes[j].identity().public_key();
    net.nodes[k]
        .peers(net.now)
        .into_iter()
        .find(|p| p.key == key)
        .expect("peers")
        .director
}

/// Links the nodes of `path` in a line whose route from its first node to its last fits in a
/// label but not the route back: each middle node's link onwards is its first (director 0,
/// 2 bits), its link back comes after eight links to `fillers` (director 9, 10 bits), as
/// through hubs whose peers came in between. The fillers must leave afterwards.
fn one_way(net: &mut Net, path: &[usize], fillers: std::ops::Range<usize>) {
    let step = Duration::from_millis(30);
    for i in (1..path.len() - 1).rev() {
        net.connect(path[i], path[i + 1], false);
        net.run_for(step);
        for f in fillers.clone() {
            net.connect(f, path[i], false);
        }
        net.run_for(step);
    }
    net.connect(path[0], path[1], false);
    net.run_for(step);
}

/// A route that fits in a label forward but not back, as through the hubs of a large
/// Barabási–Albert mesh: a chain 0-1-...-8 that fits from 0 to 8 (16 bits) but not back
/// (72 bits), and a longer line 8-...-0 (14 hops): node 0's first try goes over the chain,
/// and node 8 can answer only over the line. Node 8's bucket for node 0 is full of its own
/// (pinned) peers,
/// so, as for most pairs at 10,000 nodes, it holds no route to node 0 when the handshake
/// comes, and what a lookup finds is trimmed again within a second. It must hold the try,
/// look node 0 up and answer as soon as it has a route: waiting for a retry failed at 10,000
/// nodes (each retry found the route gone again). One try, one answer.
#[test]
fn a_route_that_only_fits_forward_gets_its_first_try_answered() {
    const FILLERS: std::ops::Range<usize> = 9..17;
    const LINE: std::ops::Range<usize> = 17..30;
    // Identities: nodes 0..30, then sixteen stubs for node 8 that fall in its bucket for
    // node 0, and a key larger than all of them for the middle of the line, so the tree
    // (rooted at the largest key) runs both ends' way to each other along the line, where it
    // fits (node 8 answers node 0's lookup over it).
    // The line fits both ways, so whether node 0's first try goes over the chain depends on
    // which path its lookup hears of first: with these identities it is the chain (asserted
    // below). Seed 5 gave the chain until direct peers stopped going into full buckets
    // beyond k; seed 3 then, until coordinates took several labels and records without a
    // one-label path went out with their coordinate alone; seeds 1, 2, 7 and 16 now give
    // the line, 6 the chain.
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let mut ids: Vec<Identity> = (0..LINE.end)
        .map(|_| Identity::generate(&mut rng))
        .collect();
    let (a, b) = (ids[0].address(), ids[8].address());
    let bucket = a.common_prefix_len(&b);
    for end in [b, a] {
        let want = ids.len() + 16;
        while ids.len() < want {
            let id = Identity::generate(&mut rng);
            if id.address().common_prefix_len(&end) == bucket {
                ids.push(id);
            }
        }
    }
    let largest = ids.iter().map(|i| i.public_key()).max().expect("ids");
    let root = loop {
        let id = Identity::generate(&mut rng);
        if id.public_key() > largest {
            break id;
        }
    };
    let middle = LINE.start + LINE.len() / 2;
    ids[middle] = root;
    let mut net = Net::new(0, 5, |_| NodeConfig::default());
    for id in ids {
        net.add_node(id);
    }
    net.echo = true;
    // Each way fits in one direction only.
    let chain: Vec<usize> = (0..9).collect();
    one_way(&mut net, &chain, FILLERS);
    let line: Vec<usize> = std::iter::once(8).chain(LINE).chain([0]).collect();
    for w in line.windows(2) {
        net.connect(w[0], w[1], false);
    }
    // The fillers leave; their directors stay retired.
    for f in FILLERS {
        for i in &chain[1..8] {
            let key = net.nodes[*i].identity().public_key();
            let now = net.now;
            net.nodes[f].remove_peer(now, Some(key), None);
        }
        net.flush(f);
    }
    // The stubs hang off nodes 8 and 0.
    for s in LINE.end..LINE.end + 16 {
        net.connect(s, 8, false);
        net.connect(s + 16, 0, false);
    }
    net.run_for(Duration::from_secs(6));
    assert!(
        net.nodes[8].routes().all(|e| e.addr != a) && net.nodes[0].routes().all(|e| e.addr != b),
        "neither end holds a route to the other"
    );

    let tries = net.nodes[0].counters().session_handshakes_sent;
    net.ping(0, 8, 1);
    // The route of the first try: node 0's best path to node 8 when it goes out.
    let deadline = net.now + Duration::from_secs(6);
    while net.nodes[0].counters().session_handshakes_sent == tries && net.now < deadline {
        net.run_for(Duration::from_millis(1));
    }
    let path = net.nodes[0].path_to(&b).expect("a path to node 8");
    let deadline = net.now + Duration::from_secs(6);
    while net.replied(0, 1).is_none() && net.now < deadline {
        net.run_for(Duration::from_millis(1));
    }
    assert!(
        net.replied(0, 1).is_some(),
        "no echo reply; node 0: {:?}; node 8: {:?}",
        net.nodes[0].counters(),
        net.nodes[8].counters()
    );
    // Tries until the echo came back (a session quiet after one exchange may be handshaken
    // again later: that is not this test's business).
    let tries = net.nodes[0].counters().session_handshakes_sent - tries;
    // The try went over the chain, whose reverse doesn't fit.
    let forward: Vec<u16> = (0..8).map(|k| director(&net, k, k + 1)).collect();
    assert_eq!(
        path,
        Label::from_directors(&forward).unwrap().into(),
        "over the chain"
    );
    let back: Vec<u16> = (1..=8).rev().map(|k| director(&net, k, k - 1)).collect();
    assert!(Label::from_directors(&back).is_err(), "back {back:?} fits");
    assert_eq!(
        tries,
        1,
        "the first try was answered; node 8: {:?}",
        net.nodes[8].counters()
    );
}

/// A line of 45 nodes: the ends are 44 hops apart, more than a label holds (31 through nodes
/// with two links). Lookups find the far end over a route of two segments, and its owner, a
/// node in the middle, relays each frame onto the second; pings go through both ways.
#[test]
fn a_line_longer_than_a_label_is_crossed_through_a_relay() {
    let n = 45;
    let mut net = Net::new(n, 7, |_| NodeConfig::default());
    net.echo = true;
    for i in 0..n - 1 {
        net.connect(i, i + 1, false);
    }
    net.run_for(Duration::from_secs(10));
    for s in 0..10 {
        net.ping(0, n - 1, s);
        net.ping(n - 1, 0, 100 + s);
        net.run_for(Duration::from_millis(500));
    }
    net.run_for(Duration::from_secs(3));
    let there = (0..10).filter(|&s| net.replied(0, s).is_some()).count();
    let back = (0..10)
        .filter(|&s| net.replied(n - 1, 100 + s).is_some())
        .count();
    let relayed: u64 = net.nodes.iter().map(|x| x.counters().relayed).sum();
    assert!(
        there >= 8 && back >= 8,
        "round trips {there}/10 and {back}/10; relayed {relayed}; counters at 0: {:?}",
        net.nodes[0].counters()
    );
    assert!(relayed > 0, "no frame was relayed");
    let far = net.nodes[n - 1].address();
    let route = net.nodes[0].path_to(&far).expect("a route to the far end");
    assert_eq!(route.hops(), n - 1, "{route}");
    assert!(route.segments().len() >= 2, "{route}");
}

/// Nodes that just died are the closest a lookup knows to its target: it must go on to the
/// next candidates while their queries are unanswered, not wait out a 1 s timeout for each
/// round of three. A star of 24 leaves; the target joins last, so only the nodes its own
/// lookup met know it; the asker is a leaf that doesn't, and the three leaves it would ask
/// first fall silent.
#[test]
fn a_lookup_goes_past_dead_candidates() {
    let mut net = Net::new(25, 77, |_| NodeConfig::default());
    for leaf in 1..25 {
        net.connect(leaf, 0, false);
    }
    net.run_for(Duration::from_secs(12));
    let id = Identity::generate(&mut net.rng);
    let target = net.add_node(id);
    net.connect(target, 0, false);
    net.run_for(Duration::from_secs(2));
    let t_addr = net.nodes[target].address();
    let asker = (1..25)
        .find(|&i| !net.nodes[i].routes().any(|e| e.addr == t_addr))
        .expect("a leaf that doesn't know the target");
    // The three nodes the asker knows that are closest to the target (by XOR) die.
    let mut known: Vec<(Address, usize)> = net.nodes[asker]
        .routes()
        .filter_map(|e| {
            (1..25)
                .find(|&i| net.nodes[i].address() == e.addr)
                .map(|i| (e.addr, i))
        })
        .collect();
    known.sort_by_key(|(a, _)| a.distance(&t_addr));
    assert!(
        known.len() >= 6,
        "the asker knows enough nodes: {}",
        known.len()
    );
    for &(_, dead) in &known[..3] {
        net.cut.insert(key(dead, 0));
    }
    let start = net.now;
    net.nodes[asker].lookup(net.now, t_addr, 9);
    net.flush(asker);
    net.run_for(Duration::from_secs(3));
    let &(_, _, found, at) = net
        .lookups_done
        .iter()
        .find(|(i, id, ..)| *i == asker && *id == 9)
        .expect("the lookup ended");
    assert!(found, "the target is found");
    let took = at - start;
    assert!(
        took < Duration::from_millis(800),
        "found in {took:?}: the dead candidates' timeouts were waited out"
    );
}

/// While the mesh forms (the node's place in the tree moved in the last 2 s), a packet whose
/// lookup fails waits for the next lookups instead of being refused: here its destination
/// joins 300 ms after the first lookup failed. A settled node refuses at once
/// (`a_missing_destination_is_not_looked_up_for_every_packet`).
#[test]
fn while_the_mesh_forms_a_packet_waits_past_a_failed_lookup() {
    let mut net = Net::new(3, 41, |_| NodeConfig::default());
    // The sender is the one of the first two that ends up under the other in the tree (the
    // root's own place never moves).
    net.connect(0, 1, false);
    net.run_for(Duration::from_millis(200));
    let is_root =
        |net: &Net, i: usize| net.nodes[i].tree().root() == net.nodes[i].identity().public_key();
    let (a, b) = if is_root(&net, 0) { (1, 0) } else { (0, 1) };
    assert!(!is_root(&net, a));
    net.ping(a, 2, 7);
    net.run_for(Duration::from_millis(300));
    assert!(
        net.nodes[a].counters().lookups_failed >= 1,
        "node 2 isn't there yet: the lookup fails"
    );
    assert!(net.received(2, 7).is_none());
    net.connect(b, 2, false);
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.unreachables(a), 0, "not refused");
    assert!(
        net.received(2, 7).is_some(),
        "the held packet arrives once node 2 is there"
    );
}
