//! The router's hot paths: routing-table lookups, and one packet end to end through real
//! [`Node`]s linked in memory (as in `router/tests/virtual_net.rs`): TUN packet in at the
//! source, link + session encryption, the switch at every hop, decryption, TUN packet out.
//!
//! `cargo bench -p meshd-router`; under `cargo test` each benchmark runs once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crypto::{Address, Identity, PublicKey};
use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use meshd_router::table::RoutingTable;
use meshd_router::{Label, Node, NodeConfig, DEFAULT_MTU};
use rand::{RngCore, SeedableRng};

fn main() {
    divan::main();
}

// ------------------------------------------------------------------ routing table

/// Keys whose address is in fc00::/8, as `Identity::generate` makes them, but without the
/// ed25519 key generation (the table only hashes keys): ~50 µs a key instead of ~4 ms, with
/// the same address distribution.
fn mesh_keys(n: usize, seed: u64) -> Vec<PublicKey> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut keys = Vec::with_capacity(n);
    while keys.len() < n {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        let key = PublicKey(k);
        if key.address().0[0] == 0xfc {
            keys.push(key);
        }
    }
    keys
}

/// Under `cargo test` (no `--bench` flag) each benchmark runs once, unoptimised: keep the
/// set small there so CI stays fast.
fn test_mode() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// The key set, made once per process and shared by the table benches.
fn keys() -> &'static [PublicKey] {
    static KEYS: OnceLock<Vec<PublicKey>> = OnceLock::new();
    KEYS.get_or_init(|| mesh_keys(if test_mode() { 264 } else { 3064 }, 7))
}

/// A table fed with `n` random mesh keys; `k` entries per bucket (16 is what a node uses,
/// so most keys are turned away; a large k keeps all of them).
fn table(n: usize, k: usize) -> (RoutingTable, Vec<Address>) {
    let now = Instant::now();
    let keys = keys();
    let n = n.min(keys.len() - 64);
    let mut t = RoutingTable::new(keys[0].address(), k);
    let label = Label::from_directors(&[3, 9]).unwrap();
    for key in &keys[1..=n] {
        t.upsert(
            *key,
            label,
            Some(Duration::from_millis(5)),
            now,
            false,
            |_| false,
        );
    }
    let targets = keys[n + 1..].iter().map(|k| k.address()).collect();
    (t, targets)
}

/// `closest(target, 8)`, what every lookup step and every lookup answer does.
#[divan::bench(args = [(3000, 16), (3000, 4096)])]
fn table_closest(b: Bencher, (n, k): (usize, usize)) {
    let (t, targets) = table(n, k);
    let mut i = 0;
    b.bench_local(|| {
        i = (i + 1) % targets.len();
        t.closest(black_box(&targets[i]), 8).len()
    });
}

/// `get`, what every packet to a destination without a fresh reply path does.
#[divan::bench(args = [(3000, 16), (3000, 4096)])]
fn table_get(b: Bencher, (n, k): (usize, usize)) {
    let (t, _) = table(n, k);
    let present: Vec<Address> = t.iter().map(|e| e.addr).collect();
    let mut i = 0;
    b.bench_local(|| {
        i = (i + 1) % present.len();
        t.get(black_box(&present[i])).is_some()
    });
}

// ------------------------------------------------------------------ nodes in memory

fn ep(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8 + 1], 7400))
}

/// Nodes in a line, 0 - 1 - ... - n-1, packets delivered instantly and in order between
/// neighbours only.
struct Line {
    now: Instant,
    nodes: Vec<Node>,
    queue: VecDeque<(usize, usize, Vec<u8>)>,
    delivered: Vec<usize>,
}

impl Line {
    fn new(n: usize) -> Line {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let now = Instant::now();
        let mut nodes: Vec<Node> = (0..n)
            .map(|i| {
                Node::new(
                    Identity::generate(&mut rng),
                    NodeConfig::default(),
                    i as u64,
                    now,
                )
            })
            .collect();
        for (i, node) in nodes.iter_mut().take(n - 1).enumerate() {
            node.add_peer(now, ep(i + 1), None);
        }
        let mut line = Line {
            now,
            nodes,
            queue: VecDeque::new(),
            delivered: vec![0; n],
        };
        line.run(Duration::from_secs(3));
        // Open the end-to-end session with a first packet, then let it settle.
        let p = packet(&line.nodes[0], &line.nodes[n - 1]);
        line.nodes[0].handle_tun_packet(line.now, &p);
        line.run(Duration::from_secs(1));
        assert!(line.delivered[n - 1] > 0, "the first packet got through");
        line
    }

    fn from_ep(e: SocketAddr, n: usize) -> usize {
        (0..n).find(|&i| ep(i) == e).expect("known endpoint")
    }

    /// Delivers everything outstanding at the current time.
    fn pump(&mut self) {
        let n = self.nodes.len();
        loop {
            for i in 0..n {
                while let Some(t) = self.nodes[i].poll_transmit() {
                    let to = Self::from_ep(t.dst, n);
                    // Only neighbours on the line hear each other: a direct link between
                    // the ends can't form, so the middle nodes really forward.
                    if to.abs_diff(i) == 1 {
                        self.queue.push_back((i, to, t.payload));
                    }
                }
                while let Some(p) = self.nodes[i].poll_tun_packet() {
                    self.delivered[i] += p.len();
                }
                while self.nodes[i].poll_event().is_some() {}
            }
            let Some((from, to, data)) = self.queue.pop_front() else {
                return;
            };
            self.nodes[to].handle_datagram(self.now, ep(from), &data);
        }
    }

    /// Steps the virtual clock by 5 ms at a time, firing timers.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(5);
            for i in 0..self.nodes.len() {
                if self.nodes[i].poll_timeout() <= self.now {
                    self.nodes[i].handle_timeout(self.now);
                }
            }
            self.pump();
        }
    }
}

/// A full-MTU IPv6/UDP packet from `a` to `b`.
fn packet(a: &Node, b: &Node) -> Vec<u8> {
    let len = DEFAULT_MTU;
    let mut p = vec![0u8; len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&a.address().ip().octets());
    p[24..40].copy_from_slice(&b.address().ip().octets());
    p
}

/// One full-MTU packet from node 0's TUN to the last node's TUN: `handle_tun_packet` →
/// `poll_transmit` → `handle_datagram` (→ forward at each middle node) → `poll_tun_packet`.
/// `hops` = 1: two nodes; 2: a line of three, the middle one forwarding.
#[divan::bench(args = [1, 2])]
fn node_to_node(b: Bencher, hops: usize) {
    let mut line = Line::new(hops + 1);
    let p = packet(&line.nodes[0], &line.nodes[hops]);
    b.counter(BytesCount::new(p.len())).bench_local(|| {
        let before = line.delivered[hops];
        line.nodes[0].handle_tun_packet(line.now, black_box(&p));
        line.pump();
        assert_eq!(line.delivered[hops] - before, p.len(), "delivered");
    });
}
