//! The bridge between the HTTP server and the node: the server sends [`Command`]s over a
//! channel; the daemon's loop, which owns the [`Node`], runs them with [`Executor`] between
//! packets, so the node is never shared or locked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crypto::{Address, PublicKey};
use router::{Event, Node, Route};
use tokio::sync::oneshot;

use crate::types;

/// A request for the node.
#[derive(Debug)]
pub enum Command {
    /// Node identity and settings.
    SelfInfo(oneshot::Sender<types::SelfInfo>),
    /// Links.
    Peers(oneshot::Sender<Vec<types::Peer>>),
    /// Dial a peer.
    AddPeer {
        /// Resolved endpoint.
        endpoint: SocketAddr,
        /// Pinned key.
        key: Option<PublicKey>,
        /// Done.
        reply: oneshot::Sender<()>,
    },
    /// Drop a peer; replies whether it was known.
    RemovePeer {
        /// Its key.
        key: PublicKey,
        /// Whether it existed.
        reply: oneshot::Sender<bool>,
    },
    /// Routing table.
    Routes(oneshot::Sender<Vec<types::Route>>),
    /// Sessions.
    Sessions(oneshot::Sender<Vec<types::Session>>),
    /// Ping through the mesh.
    Ping {
        /// Target.
        addr: Address,
        /// Answer, or None if unreachable.
        reply: oneshot::Sender<Option<types::PathAnswer>>,
    },
    /// Ping whoever is at the end of a path (traceroute).
    PingPath {
        /// The path.
        path: Route,
        /// Responder key and rtt.
        reply: oneshot::Sender<Option<(PublicKey, Duration)>>,
    },
    /// Lookup.
    Lookup {
        /// Target.
        addr: Address,
        /// Answer, or None.
        reply: oneshot::Sender<Option<types::PathAnswer>>,
    },
    /// A snapshot for `/metrics`.
    Metrics(oneshot::Sender<crate::metrics::Snapshot>),
}

/// Static facts about the daemon for `/v1/self`.
#[derive(Clone, Debug)]
pub struct DaemonInfo {
    /// UDP listen endpoints.
    pub listen: Vec<SocketAddr>,
    /// TUN name.
    pub tun: String,
    /// When the daemon started.
    pub started: Instant,
}

enum Waiter {
    Ping(Address, oneshot::Sender<Option<types::PathAnswer>>),
    PingPath(oneshot::Sender<Option<(PublicKey, Duration)>>),
    Lookup(Address, oneshot::Sender<Option<types::PathAnswer>>),
}

/// Runs commands against a node and answers the ones that wait for the mesh.
pub struct Executor {
    info: DaemonInfo,
    next_id: u64,
    waiting: HashMap<u64, Waiter>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Executor {
    /// An executor for a daemon described by `info`.
    pub fn new(info: DaemonInfo) -> Self {
        Executor {
            info,
            next_id: 1,
            waiting: HashMap::new(),
        }
    }

    /// Runs one command.
    pub fn execute(&mut self, node: &mut Node, now: Instant, cmd: Command) {
        match cmd {
            Command::SelfInfo(r) => {
                let mut ext: Vec<String> = node
                    .peers(now)
                    .iter()
                    .filter(|p| p.up)
                    .filter_map(|p| p.observed)
                    .map(|e| e.to_string())
                    .collect();
                ext.sort();
                ext.dedup();
                let peers = node.peers(now);
                let trees = node
                    .trees()
                    .iter()
                    .enumerate()
                    .map(|(i, t)| types::TreePlace {
                        tree: i as u8,
                        root: t.root().address().to_string(),
                        depth: t.depth(),
                        parent: t.parent().and_then(|d| {
                            peers
                                .iter()
                                .find(|p| p.director == d)
                                .map(|p| p.address.to_string())
                        }),
                    })
                    .collect();
                let _ = r.send(types::SelfInfo {
                    address: node.address().to_string(),
                    public_key: node.identity().public_key().to_hex(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    uptime_s: now
                        .saturating_duration_since(self.info.started)
                        .as_secs_f64(),
                    listen: self.info.listen.iter().map(|l| l.to_string()).collect(),
                    external_endpoints: ext,
                    tun: self.info.tun.clone(),
                    mtu: node.mtu() as u32,
                    trees,
                });
            }
            Command::Peers(r) => {
                let peers = node
                    .peers(now)
                    .into_iter()
                    .map(|p| types::Peer {
                        public_key: p.key.to_hex(),
                        address: p.address.to_string(),
                        endpoint: p.endpoint.to_string(),
                        state: if p.up { "up" } else { "down" }.to_string(),
                        rtt_ms: p.rtt.map(ms),
                        rx_bytes: p.stats.rx_bytes,
                        tx_bytes: p.stats.tx_bytes,
                        rx_packets: p.stats.rx_packets,
                        tx_packets: p.stats.tx_packets,
                        last_seen_s: p.last_seen.as_secs_f64(),
                        cipher: p.cipher.map(|c| c.id().to_string()),
                    })
                    .collect();
                let _ = r.send(peers);
            }
            Command::AddPeer {
                endpoint,
                key,
                reply,
            } => {
                node.add_peer(now, endpoint, key);
                let _ = reply.send(());
            }
            Command::RemovePeer { key, reply } => {
                let _ = reply.send(node.remove_peer(now, Some(key), None));
            }
            Command::Routes(r) => {
                let routes = node
                    .routes()
                    .filter_map(|e| {
                        let best = e.best()?;
                        Some(types::Route {
                            address: e.addr.to_string(),
                            public_key: e.key.to_hex(),
                            path: best.route.to_string(),
                            hops: best.route.hops() as u32,
                            rtt_ms: best.rtt.map(ms),
                            last_seen_s: now.saturating_duration_since(e.last_seen).as_secs_f64(),
                            paths: e.paths.len() as u32,
                        })
                    })
                    .collect();
                let _ = r.send(routes);
            }
            Command::Sessions(r) => {
                let s = node
                    .sessions()
                    .into_iter()
                    .map(|s| types::Session {
                        address: s.address.to_string(),
                        public_key: s.key.map(|k| k.to_hex()),
                        state: if s.established {
                            "established"
                        } else {
                            "handshaking"
                        }
                        .to_string(),
                        path: s.path.map(|p| p.to_string()),
                        rx_bytes: s.stats.rx_bytes,
                        tx_bytes: s.stats.tx_bytes,
                        rx_packets: s.stats.rx_packets,
                        tx_packets: s.stats.tx_packets,
                        queued: s.queued as u32,
                        direct: s.direct.map(|d| d.describe().to_string()),
                    })
                    .collect();
                let _ = r.send(s);
            }
            Command::Ping { addr, reply } => {
                let id = self.id();
                self.waiting.insert(id, Waiter::Ping(addr, reply));
                node.ping(now, addr, id);
            }
            Command::PingPath { path, reply } => {
                let id = self.id();
                self.waiting.insert(id, Waiter::PingPath(reply));
                node.ping_path(now, path, id);
            }
            Command::Lookup { addr, reply } => {
                let id = self.id();
                self.waiting.insert(id, Waiter::Lookup(addr, reply));
                node.lookup(now, addr, id);
            }
            Command::Metrics(r) => {
                let _ = r.send(crate::metrics::Snapshot {
                    counters: node.counters().clone(),
                    peers_up: node.peers(now).iter().filter(|p| p.up).count() as u64,
                    table_entries: node.routes().count() as u64,
                    sessions: node.sessions().len() as u64,
                });
            }
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Offers a node event; answers a waiting command if it is for one.
    pub fn on_event(&mut self, ev: &Event) {
        let (id, ok) = match ev {
            Event::Ping { id, result } => {
                (*id, result.map(|(rtt, path, key)| (Some(rtt), path, key)))
            }
            Event::Lookup { id, result } => (*id, result.map(|(key, path)| (None, path, key))),
            _ => return,
        };
        let Some(w) = self.waiting.remove(&id) else {
            return;
        };
        let answer = |addr: Address| {
            ok.map(|(rtt, path, key)| types::PathAnswer {
                address: addr.to_string(),
                public_key: key.to_hex(),
                path: path.to_string(),
                hops: path.hops() as u32,
                rtt_ms: rtt.map(ms),
            })
        };
        match w {
            Waiter::Ping(a, r) => {
                let _ = r.send(answer(a));
            }
            Waiter::Lookup(a, r) => {
                let _ = r.send(answer(a));
            }
            Waiter::PingPath(r) => {
                let _ = r.send(ok.and_then(|(rtt, _, key)| Some((key, rtt?))));
            }
        }
    }
}
