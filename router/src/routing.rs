//! Kademlia lookups, path probes and the router control protocol.
//!
//! A lookup for a target address asks the closest nodes we know (by XOR distance), three at a
//! time, for the nodes *they* know closest to it. Each answer is signed by its responder, so
//! it also proves the path we used to reach the responder; its records carry labels from the
//! responder, which we splice onto our path to it. The lookup ends when the target itself
//! answers (its path is then verified) or when no closer node is left to ask.

use std::time::{Duration, Instant};

use crypto::{Address, PublicKey};
use rand::Rng;
use switch::{FrameKind, Label, Route};

use crate::control::{Control, Coord, EndpointRecord, NodeRecord, ALT_TREES, MAX_RECORDS};
use crate::node::{Event, Node};
use crate::tree::TREES;

/// Parallel queries per lookup.
const ALPHA: usize = 3;
/// How many closest nodes a lookup must have heard from.
const K: usize = 12;
/// Records in an answer.
const ANSWER_RECORDS: usize = 8;
/// Most bytes of the responder's own coordinates and the records (keys, labels and
/// coordinates in every tree) in an answer: with the rest of the answer and the headers, a
/// datagram of at most ~1,300 bytes. (900 bytes for the records alone let answers of deep
/// nodes of a 10,000-node physical mesh outgrow a 1,500-byte link MTU with four trees.)
const ANSWER_BUDGET: usize = 1100;
/// A query unanswered this long is failed.
const QUERY_TIMEOUT: Duration = Duration::from_millis(1000);
/// A lookup query unanswered this long stops holding one of the `ALPHA` places (its answer
/// still counts until `QUERY_TIMEOUT`).
const QUERY_SLOW: Duration = Duration::from_millis(250);
/// A probe unanswered this long marks its path failed.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// After our root changed, for this long, table entries whose coordinate is under another
/// root and whom no one-label path reaches are probed (the answer brings the new coordinate:
/// until then an answer must leave them out)...
const STALE_COORDS_FOR: Duration = Duration::from_secs(30);
/// ...up to this many every [`STALE_COORDS_EVERY`]...
const STALE_COORD_PROBES: usize = 4;
const STALE_COORDS_EVERY: Duration = Duration::from_millis(250);
/// ...each at most this often (since anything last proved its path works).
const STALE_COORD_RECHECK: Duration = Duration::from_secs(2);
/// A lookup gives up after this.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(6);
/// Most candidates a lookup keeps.
const MAX_CANDIDATES: usize = 48;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CandState {
    New,
    Asked,
    Answered,
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate {
    key: PublicKey,
    addr: Address,
    path: Route,
    state: CandState,
    /// Other paths to the node that answers named, tried if `path` fails.
    alternatives: Vec<Route>,
    /// Asked a second time after a query went unanswered (a lost datagram is likelier than a
    /// dead node); a second silence counts as a failure.
    retried: bool,
    /// When the query in flight went out (`None` once it has been slow for `QUERY_SLOW`).
    asked_at: Option<Instant>,
}

/// A lookup in progress.
#[derive(Debug)]
pub(crate) struct Lookup {
    target: Address,
    cands: Vec<Candidate>,
    started: Instant,
    /// Other paths to the target seen in answers, probed once it is found.
    target_paths: Vec<(PublicKey, Route)>,
    /// Admin requests waiting for the answer.
    waiters: Vec<u64>,
}

/// Why a query was sent.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Purpose {
    /// A lookup step for this target.
    Find(Address),
    /// A path probe (failure marks the path).
    Probe,
    /// Checking a node that asked us, before adding it to the table.
    Verify,
    /// An admin ping.
    Admin(u64),
    /// A traceroute hop: whoever answers at the end of the path.
    Trace(u64),
}

/// Tree announcements owed to peers (see [`Node::tree_news`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TreeNews {
    /// Since when they are owed.
    pub(crate) since: Instant,
    /// Per tree: to every peer.
    pub(crate) all: [bool; TREES],
    /// Per tree: to the parent (our height changed).
    pub(crate) parent: [bool; TREES],
}

/// Probing entries whose coordinates are under another root, after our root changed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StaleCoords {
    /// The root we moved to.
    pub(crate) root: PublicKey,
    /// Until when.
    pub(crate) until: Instant,
    /// Next round.
    pub(crate) next: Instant,
}

/// An outstanding query.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Query {
    to: PublicKey,
    path: Route,
    sent: Instant,
    purpose: Purpose,
}

impl Node {
    /// Starts a lookup for `target` unless one runs. `waiter`: an admin request id to answer.
    pub(crate) fn start_lookup(&mut self, now: Instant, target: Address, waiter: Option<u64>) {
        self.start_lookup_from(now, target, waiter, false);
    }

    /// Starts a lookup from the nodes we know closest to `target`, or, with `explore`, from
    /// a few picked at random among the others: a lookup ends at the closest nodes its
    /// answers lead to, and in a physical mesh, where tables start out local, the nodes
    /// nearest an address can form separate groups that each lookup from the same start
    /// finds again. A start elsewhere descends through other nodes and may reach another
    /// group: it learns of us and we of it.
    fn start_lookup_from(
        &mut self,
        now: Instant,
        target: Address,
        waiter: Option<u64>,
        explore: bool,
    ) {
        if let Some(l) = self.lookups.get_mut(&target) {
            l.waiters.extend(waiter);
            return;
        }
        self.counters.lookups += 1;
        let start = if explore {
            let near: Vec<Address> = self
                .table
                .closest(&target, K)
                .into_iter()
                .map(|e| e.addr)
                .collect();
            let mut others: Vec<&crate::table::Entry> = self
                .table
                .iter()
                .filter(|e| !near.contains(&e.addr))
                .collect();
            let picks = others.len().min(2 * ALPHA);
            for i in 0..picks {
                let j = self.rng.gen_range(i..others.len());
                others.swap(i, j);
            }
            others.truncate(picks);
            others
        } else {
            self.table.closest(&target, K)
        };
        let mut cands: Vec<Candidate> = start
            .into_iter()
            .filter_map(|e| {
                let mut working = e
                    .paths
                    .iter()
                    .filter(|p| p.failed_at.is_none())
                    .map(|p| p.route);
                Some(Candidate {
                    key: e.key,
                    addr: e.addr,
                    path: working.next()?,
                    state: CandState::New,
                    alternatives: working.take(3).collect(),
                    retried: false,
                    asked_at: None,
                })
            })
            .collect();
        if cands.is_empty() {
            // Every path we know is marked broken (say a link flapped a moment ago): try the
            // nodes anyway rather than fail without asking anyone.
            cands = self
                .table
                .iter()
                .filter_map(|e| {
                    let p = e.paths.first()?.route;
                    Some(Candidate {
                        key: e.key,
                        addr: e.addr,
                        path: p,
                        state: CandState::New,
                        alternatives: Vec::new(),
                        retried: false,
                        asked_at: None,
                    })
                })
                .collect();
        }
        cands.sort_by_key(|c| c.addr.distance(&target));
        cands.truncate(MAX_CANDIDATES);
        self.lookups.insert(
            target,
            Lookup {
                target,
                cands,
                started: now,
                target_paths: Vec::new(),
                waiters: waiter.into_iter().collect(),
            },
        );
        self.step_lookup(now, target);
    }

    fn send_query(&mut self, now: Instant, to: PublicKey, path: Route, purpose: Purpose) -> bool {
        let txid: u64 = self.rng.gen();
        let msg = match purpose {
            Purpose::Find(target) => Control::FindNode {
                txid,
                target,
                asker: self.id.public_key(),
                coord: self.trees[0].coord(),
            },
            _ => Control::Ping {
                txid,
                asker: self.id.public_key(),
            },
        };
        if !self.send_frame(now, path, FrameKind::Router, &msg.to_bytes()) {
            return false;
        }
        self.queries.insert(
            txid,
            Query {
                to,
                path,
                sent: now,
                purpose,
            },
        );
        true
    }

    /// Sends the next queries of a lookup, or ends it: found when the target itself has
    /// answered; failed when the K closest live candidates have all answered and nothing is
    /// in flight. A loop, not recursion: failed sends only ever use up candidates or paths.
    fn step_lookup(&mut self, now: Instant, target: Address) {
        loop {
            let Some(l) = self.lookups.get_mut(&target) else {
                return;
            };
            l.cands.sort_by_key(|c| c.addr.distance(&target));
            if l.cands
                .first()
                .is_some_and(|c| c.addr == target && c.state == CandState::Answered)
            {
                self.finish_lookup(now, target, true);
                return;
            }
            let asked = l
                .cands
                .iter()
                .filter(|c| c.state == CandState::Asked)
                .count();
            // A query unanswered for a while still counts if its answer comes, but no longer
            // holds one of the ALPHA places: with dead candidates (nodes just failed) the
            // lookup goes on to the next ones instead of waiting out each timeout.
            let inflight = l
                .cands
                .iter()
                .filter(|c| {
                    c.state == CandState::Asked
                        && c.asked_at
                            .is_some_and(|t| now.saturating_duration_since(t) < QUERY_SLOW)
                })
                .count();
            let mut to_ask = Vec::new();
            for c in l
                .cands
                .iter_mut()
                .filter(|c| c.state != CandState::Failed)
                .take(K)
            {
                if inflight + to_ask.len() >= ALPHA {
                    break;
                }
                if c.state == CandState::New {
                    c.state = CandState::Asked;
                    c.asked_at = Some(now);
                    to_ask.push((c.key, c.path));
                }
            }
            if to_ask.is_empty() {
                if asked == 0 {
                    self.finish_lookup(now, target, false);
                }
                return;
            }
            let mut all_sent = true;
            for (key, path) in to_ask {
                if !self.send_query(now, key, path, Purpose::Find(target)) {
                    self.candidate_failed(target, &key);
                    all_sent = false;
                }
            }
            if all_sent {
                return;
            }
        }
    }

    /// A query to a candidate timed out: ask it again once over the same path, then count it
    /// failed. On a lossy path (radio links: 10% loss per hop loses about half the queries
    /// over three hops and back) a lookup with few candidates otherwise gives up on a
    /// destination it could reach.
    fn candidate_unanswered(&mut self, target: Address, key: &PublicKey) {
        if let Some(c) = self
            .lookups
            .get_mut(&target)
            .and_then(|l| l.cands.iter_mut().find(|c| c.key == *key))
        {
            if !c.retried {
                c.retried = true;
                c.state = CandState::New;
                return;
            }
        }
        self.candidate_failed(target, key);
    }

    fn candidate_failed(&mut self, target: Address, key: &PublicKey) {
        let Some(c) = self
            .lookups
            .get_mut(&target)
            .and_then(|l| l.cands.iter_mut().find(|c| c.key == *key))
        else {
            return;
        };
        match c.alternatives.pop() {
            Some(p) => {
                c.path = p;
                c.state = CandState::New;
            }
            None => c.state = CandState::Failed,
        }
    }

    fn finish_lookup(&mut self, now: Instant, target: Address, found: bool) {
        let Some(l) = self.lookups.remove(&target) else {
            return;
        };
        if !found {
            tracing::debug!(
                me = %self.id.address(),
                %target,
                age = ?now.saturating_duration_since(l.started),
                target_candidate = ?l.cands.iter().find(|c| c.addr == target).map(|c| (c.state, c.path.hops())),
                closest = ?l.cands.iter().take(8).map(|c| (c.addr.common_prefix_len(&target), c.state, c.path.hops())).collect::<Vec<_>>(),
                "lookup failed"
            );
        }
        if found {
            self.counters.lookups_found += 1;
            // Verify the other paths seen, so failover has somewhere to go.
            let best = self
                .table
                .get(&target)
                .and_then(|e| e.best())
                .map(|p| p.route);
            for (key, path) in l
                .target_paths
                .iter()
                .filter(|(_, p)| Some(*p) != best)
                .take(3)
            {
                self.send_query(now, *key, *path, Purpose::Probe);
            }
        } else {
            self.counters.lookups_failed += 1;
        }
        let result = if found {
            self.table
                .get(&target)
                .and_then(|e| Some((e.key, e.best()?.route)))
        } else {
            None
        };
        for id in l.waiters {
            self.events.push_back(Event::Lookup { id, result });
        }
        self.on_lookup_done(now, target, found);
    }

    /// Handles a router control message delivered to us; `reverse` leads back to the sender.
    pub(crate) fn on_control(&mut self, now: Instant, reverse: Route, body: &[u8]) {
        let Some(msg) = Control::from_bytes(body) else {
            self.counters.drop_bad_control += 1;
            return;
        };
        match msg {
            Control::FindNode {
                txid,
                target,
                asker,
                coord,
            } => {
                let Some(back_route) = self.reply_route(reverse, &asker, coord) else {
                    return;
                };
                let asker_addr = asker.address();
                let roots = self.trees.each_ref().map(|t| t.root());
                let under = |c: Option<Coord>, root: PublicKey| {
                    c.filter(|c| c.root == root)
                        .map_or(Route::INVALID, |c| c.down)
                };
                // Records' coordinates can be long (a deep node of a large physical mesh: a
                // dozen labels in each tree): as many records as fit the budget.
                let places = self.places();
                let mut budget = ANSWER_BUDGET
                    .saturating_sub(places.iter().map(crate::control::coord_wire_len).sum());
                let nodes: Vec<NodeRecord> = self
                    .table
                    .closest(&target, ANSWER_RECORDS + 1)
                    .into_iter()
                    .filter(|e| e.addr != asker_addr)
                    .filter_map(|e| {
                        // A record carries one label: the best path that is one. A node
                        // reached only over longer paths (far off in a large physical mesh)
                        // goes out with its coordinate alone (label 0), if it has one under
                        // our root: the asker routes to it through the tree.
                        // As before, only nodes we have a working path to (not ones whose
                        // every path failed: just died, say).
                        e.working().next()?;
                        let label = e.one_label().unwrap_or(Label::INVALID);
                        let coord = under(e.coord, roots[0]);
                        let alts: [Route; ALT_TREES] =
                            std::array::from_fn(|i| under(e.alts[i], roots[i + 1]));
                        (label.is_valid() || coord.is_valid() || alts.iter().any(|a| a.is_valid()))
                            .then_some(NodeRecord {
                                key: e.key,
                                label: label.0,
                                coord,
                                alts,
                            })
                    })
                    .take(ANSWER_RECORDS.min(MAX_RECORDS))
                    .take_while(|r| {
                        let fits = r.wire_len() <= budget;
                        budget = budget.saturating_sub(r.wire_len());
                        fits
                    })
                    .collect();
                // `back` is the reverse of the asker's last segment to us: what it splices onto.
                let back = reverse.first().0;
                let answer = Control::nodes(&self.id, txid, back, places, nodes);
                self.send_frame(now, back_route, FrameKind::Router, &answer.to_bytes());
                self.learn_of(now, asker, back_route, coord);
            }
            Control::Rendezvous { record } => {
                if !record.verify() || record.key == self.id.public_key() || !reverse.is_valid() {
                    self.counters.drop_forged += 1;
                    return;
                }
                let addr = record.key.address();
                // At most one answer per node every few seconds: no handshake floods by proxy.
                if self
                    .direct
                    .get(&addr)
                    .and_then(|d| d.answered)
                    .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(2))
                {
                    return;
                }
                let mine = self.endpoint_record();
                self.send_frame(
                    now,
                    reverse,
                    FrameKind::Router,
                    &Control::RendezvousAck { record: mine }.to_bytes(),
                );
                let d = self.direct.entry(addr).or_insert(Direct {
                    since: now,
                    state: DirectState::Trying,
                    answered: None,
                });
                d.answered = Some(now);
                if d.state != DirectState::Linked {
                    *d = Direct {
                        since: now,
                        state: DirectState::Trying,
                        answered: Some(now),
                    };
                }
                self.punch(now, &record);
            }
            Control::RendezvousAck { record } => {
                let addr = record.key.address();
                if !record.verify()
                    || !self
                        .direct
                        .get(&addr)
                        .is_some_and(|d| d.state == DirectState::Trying)
                {
                    self.counters.drop_forged += 1;
                    return;
                }
                self.punch(now, &record);
            }
            Control::Tree { tree, .. } => {
                let Some(said) = crate::tree::Announcement::from_control(&msg) else {
                    return;
                };
                if usize::from(tree) >= TREES {
                    self.counters.drop_bad_control += 1;
                    return;
                }
                let tree = usize::from(tree);
                // Only from a direct peer: the frame came over one hop.
                let Some(Ok((d, rest))) = reverse.single().and_then(|r| r.pop()) else {
                    self.counters.drop_bad_control += 1;
                    return;
                };
                let from_peer = rest == Label::SELF
                    && self
                        .links
                        .get(d as usize)
                        .and_then(|l| l.as_ref())
                        .is_some_and(|l| l.up);
                if !from_peer {
                    self.counters.drop_bad_control += 1;
                    return;
                }
                // A direct peer's place is what it says here: the DHT hands it out from us.
                let peer = self.links[d as usize].as_ref().map(|l| l.key);
                if let Some(e) = peer.and_then(|k| self.table.get_mut(&k.address())) {
                    let place = said.down.is_valid().then_some(Coord {
                        root: said.root,
                        down: said.down,
                    });
                    *e.place_mut(tree) = place;
                }
                let before = self.tree_at(tree).coord();
                self.tree_at(tree).heard(now, d, said);
                let all = self.tree_at(tree).take_dirty(now);
                self.tree_news(now, tree, all);
                if tree == 0 && self.trees[0].coord() != before {
                    self.on_tree_moved(now);
                }
            }
            Control::Ping { txid, asker } => {
                if let Some(back_route) = self.reply_route(reverse, &asker, None) {
                    let answer = Control::pong(&self.id, txid, self.places());
                    self.send_frame(now, back_route, FrameKind::Router, &answer.to_bytes());
                }
            }
            Control::Nodes { txid, .. } | Control::Pong { txid, .. } => {
                let Some(q) = self.queries.get(&txid).copied() else {
                    self.counters.drop_bad_control += 1;
                    return;
                };
                let expected = match (&q.purpose, &msg) {
                    (Purpose::Trace(_), Control::Pong { responder, .. }) => *responder,
                    _ => q.to,
                };
                if !msg.verify_answer(&expected) {
                    // A lie: wrong key, bad signature, or the label led elsewhere.
                    self.counters.drop_forged += 1;
                    return;
                }
                self.queries.remove(&txid);
                let rtt = now.saturating_duration_since(q.sent);
                let addr = expected.address();
                let (sessions, lookups) = (&self.sessions, &self.lookups);
                self.table
                    .upsert(expected, q.path, Some(rtt), now, false, |a| {
                        sessions.contains_key(a) || lookups.contains_key(a)
                    });
                let (coord, alts) = match &msg {
                    Control::Nodes { coord, alts, .. } | Control::Pong { coord, alts, .. } => {
                        (*coord, *alts)
                    }
                    _ => (None, [None; ALT_TREES]),
                };
                let moved = match self.table.get_mut(&addr) {
                    Some(e) => {
                        let alts_moved = std::mem::replace(&mut e.alts, alts) != alts;
                        std::mem::replace(&mut e.coord, coord) != coord || alts_moved
                    }
                    None => false,
                };
                if moved && self.sessions.contains_key(&addr) {
                    self.probe_tree_route(now, addr);
                }
                match (q.purpose, msg) {
                    (Purpose::Find(target), Control::Nodes { nodes, back, .. }) => {
                        let places = crate::control::join(coord, alts);
                        self.on_nodes(now, target, q, Label(back), places, nodes)
                    }
                    (Purpose::Admin(id) | Purpose::Trace(id), _) => {
                        self.events.push_back(Event::Ping {
                            id,
                            result: Some((rtt, q.path, expected)),
                        })
                    }
                    _ => {}
                }
                self.on_routes_changed(now, &[addr]);
            }
        }
    }

    /// The route for an answer to `asker`: back the way the question came, or, when that
    /// route did not fit in a label (the directors back through hubs are longer than those
    /// forward), the tree route from the place the asker says it has or we know it at, or
    /// the best path we hold to it. The answer is signed, so any route that arrives will do.
    pub(crate) fn reply_route(
        &self,
        reverse: Route,
        asker: &PublicKey,
        hint: Option<Coord>,
    ) -> Option<Route> {
        if reverse.is_valid() {
            return Some(reverse);
        }
        let entry = self.table.get(&asker.address()).filter(|e| e.key == *asker);
        let mut at = entry.map_or([None; TREES], |e| e.places());
        at[0] = hint.or(at[0]);
        self.route_by_trees(at)
            .or_else(|| entry.and_then(|e| e.best()).map(|p| p.route))
    }

    /// Our coordinates in each tree, the main one first.
    pub(crate) fn places(&self) -> [Option<Coord>; TREES] {
        self.trees.each_ref().map(|t| t.coord())
    }

    /// The shortest of the tree routes to a node at `at` (its place in each tree, the main
    /// one first; each only under the root we follow there).
    pub(crate) fn route_by_trees(&self, at: [Option<Coord>; TREES]) -> Option<Route> {
        shortest(tree_routes(&self.trees, at))
    }

    /// A node asked us something: if its bucket has room, check the path back to it with a
    /// signed ping before it enters the table.
    /// Also re-checks a node we hold whose tree place `coord` (its own unsigned claim)
    /// differs from what we hold: its signed pong brings the new one, so the coordinates the
    /// DHT hands out follow the tree when it moves.
    fn learn_of(&mut self, now: Instant, key: PublicKey, reverse: Route, coord: Option<Coord>) {
        let addr = key.address();
        let moved = self
            .table
            .get(&addr)
            .is_some_and(|e| e.key == key && coord.is_some() && e.coord != coord);
        if addr == self.id.address()
            || (!moved
                && (self.table.get(&addr).is_some()
                    || key.validate().is_err()
                    || !self.table.has_room_for(&addr, now)))
        {
            return;
        }
        if self
            .queries
            .values()
            .filter(|q| matches!(q.purpose, Purpose::Verify))
            .count()
            < 32
        {
            self.send_query(now, key, reverse, Purpose::Verify);
        }
    }

    fn on_nodes(
        &mut self,
        now: Instant,
        target: Address,
        q: Query,
        back: Label,
        places: [Option<Coord>; TREES],
        nodes: Vec<NodeRecord>,
    ) {
        // Records' tree places are under the responder's roots (`route_to` wants ours).
        let roots = places.map(|c| c.map(|c| c.root));
        let root = roots[0];
        let me = self.id.address();
        let Some(l) = self.lookups.get_mut(&target) else {
            return;
        };
        if let Some(c) = l.cands.iter_mut().find(|c| c.key == q.to) {
            c.state = CandState::Answered;
        }
        for rec in nodes {
            // Keys we hold already passed validation (a point decompression, the costliest
            // step of reading an answer).
            let known = self
                .table
                .get(&rec.key.address())
                .is_some_and(|e| e.key == rec.key);
            let valid = if known {
                Ok(rec.key.address())
            } else {
                rec.key.validate()
            };
            let Ok(addr) = valid else {
                self.counters.drop_forged += 1;
                continue;
            };
            // Label 0: the responder knows no one-label path to the node, only its coordinate.
            let label = Label(rec.label);
            if addr == me || (label.is_valid() && !label.is_well_formed()) {
                continue;
            }
            // The tree route doesn't depend on who answered; the spliced one is the fallback.
            let downs = rec.places();
            let at = std::array::from_fn(|i| {
                roots[i].map(|root| Coord {
                    root,
                    down: downs[i],
                })
            });
            let tree = shortest(tree_routes(&self.trees, at));
            let Some(spliced) = q.path.extend(back, label).ok().or(tree) else {
                if addr == target {
                    tracing::debug!(
                        me = %me,
                        %target,
                        path_hops = q.path.hops(),
                        label_hops = label.hops(),
                        has_coord = rec.coord.is_valid(),
                        same_root = root.is_some(),
                        "lookup: a record of the target is unusable: label overflows and no tree route"
                    );
                }
                tracing::trace!(
                    %target,
                    record = %addr,
                    path_hops = q.path.hops(),
                    label_hops = label.hops(),
                    has_coord = rec.coord.is_valid(),
                    same_root = root.is_some(),
                    "record unusable: label overflows and no tree route"
                );
                continue;
            };
            let fresh = match tree {
                Some(t) if t.hops() <= spliced.hops() => t,
                _ => spliced,
            };
            // Prefer a path we already know works if it is no longer.
            let path = match self.table.get(&addr).and_then(|e| e.best()) {
                Some(p) if p.route.hops() <= fresh.hops() => p.route,
                _ => fresh,
            };
            if addr == target
                && fresh != spliced
                && !l.target_paths.iter().any(|(_, p)| *p == fresh)
            {
                l.target_paths.push((rec.key, fresh));
            }
            if addr == target
                && !l.target_paths.iter().any(|(_, p)| *p == spliced)
                && l.target_paths.len() < 6
            {
                l.target_paths.push((rec.key, spliced));
            }
            match l.cands.iter_mut().find(|c| c.addr == addr) {
                // The other ways we were just given stay in reserve: a tree route from a
                // coordinate that went stale fails, the spliced one may not.
                None => l.cands.push(Candidate {
                    key: rec.key,
                    addr,
                    path,
                    state: CandState::New,
                    alternatives: [spliced, fresh].into_iter().filter(|p| *p != path).fold(
                        Vec::new(),
                        |mut v, p| {
                            if !v.contains(&p) {
                                v.push(p);
                            }
                            v
                        },
                    ),
                    retried: false,
                    asked_at: None,
                }),
                // Another way to the same node: if the path we tried dies (often the very
                // reason for this lookup), the node is tried again over this one.
                Some(c)
                    if c.path != path
                        && !c.alternatives.contains(&path)
                        && c.alternatives.len() < 3 =>
                {
                    if c.state == CandState::Failed {
                        c.path = path;
                        c.state = CandState::New;
                    } else if c.state == CandState::New && path.hops() < c.path.hops() {
                        // Not asked yet: ask over the shorter way, keep the other in reserve.
                        c.alternatives.push(std::mem::replace(&mut c.path, path));
                    } else {
                        c.alternatives.push(path);
                    }
                }
                Some(_) => {}
            }
        }
        l.cands.sort_by_key(|c| c.addr.distance(&target));
        l.cands.truncate(MAX_CANDIDATES);
        self.step_lookup(now, target);
    }

    /// Notes that every peer should hear our place in the spanning tree if `all`, else only
    /// our parent, if our height changed (heights climb to the root at once; the rest goes
    /// with the root's numbers). Sent by [`Node::send_tree_news`] once everything that
    /// arrived at this instant is handled: a node that hears several peers at once announces
    /// where it ends up, not every place in between. (On a grid, where the peers of a node
    /// offer the new root at the same instant over equal paths, announcing every step doubled
    /// the announcements at each level: a storm of a million messages over the control rate
    /// limit on 1,000 nodes when the root moved.)
    pub(crate) fn tree_news(&mut self, now: Instant, tree: usize, all: bool) {
        let parent = self.tree_at(tree).take_parent_news().is_some();
        if !all && !parent {
            return;
        }
        let n = self.owed_tree_news.get_or_insert(TreeNews {
            since: now,
            all: [false; TREES],
            parent: [false; TREES],
        });
        n.all[tree] |= all;
        n.parent[tree] |= parent;
    }

    /// Tree `i`: 0 the main one, then the hashed ones.
    pub(crate) fn tree_at(&mut self, i: usize) -> &mut crate::tree::Tree {
        &mut self.trees[i]
    }

    /// Sends the tree announcements owed ([`Node::tree_news`]): to every peer, or to the
    /// parent we have now if only our height changed.
    pub(crate) fn send_tree_news(&mut self, now: Instant) {
        let Some(n) = self.owed_tree_news.take() else {
            return;
        };
        for i in 0..TREES {
            if n.all[i] {
                self.announce_tree(now, None, i);
            } else if let Some(p) = self.tree_at(i).parent().filter(|_| n.parent[i]) {
                self.announce_tree(now, Some(p), i);
            }
        }
    }

    /// Tells peers our place in spanning tree `tree`: the one on link `only`, or all.
    pub(crate) fn announce_tree(
        &mut self,
        now: Instant,
        only: Option<switch::Director>,
        tree: usize,
    ) {
        let up: Vec<switch::Director> = match only {
            Some(d) => vec![d],
            None => self
                .links
                .iter()
                .enumerate()
                .filter(|(_, l)| l.as_ref().is_some_and(|l| l.up))
                .map(|(d, _)| d as switch::Director)
                .collect(),
        };
        for d in up {
            let Ok(route) = Label::single(d) else {
                continue;
            };
            let msg = self.tree_at(tree).announcement(d).to_bytes();
            self.send_frame(now, route.into(), FrameKind::Router, &msg);
        }
    }

    /// Our signed endpoint record: where our peers see us, and our own listen addresses.
    pub(crate) fn endpoint_record(&mut self) -> EndpointRecord {
        let mut eps: Vec<std::net::SocketAddr> = self
            .links
            .iter()
            .flatten()
            .filter(|l| l.up)
            .filter_map(|l| l.observed)
            .collect();
        eps.extend(self.local_endpoints.iter().copied());
        eps.sort();
        eps.dedup();
        self.record_seq += 1;
        EndpointRecord::new(&self.id, self.record_seq, eps)
    }

    /// Starts handshakes to every endpoint of `record` at once (with the peer doing the same
    /// towards us, this opens NAT mappings on both sides).
    fn punch(&mut self, now: Instant, record: &EndpointRecord) {
        if self
            .link_by_key
            .get(&record.key)
            .and_then(|&d| self.links[d as usize].as_ref())
            .is_some_and(|l| l.up)
        {
            return;
        }
        // Bounded, so signed records from many made-up keys can't turn us into a UDP reflector.
        if !self.punch_bucket.take(now) {
            self.counters.drop_handshake_rate += 1;
            return;
        }
        self.counters.punches += 1;
        for ep in record.endpoints.iter().take(4) {
            self.start_link_handshake(now, *ep, Some(record.key), None);
        }
    }

    /// Asks `addr`, through the mesh, to open a direct link with us (rate-limited).
    pub(crate) fn maybe_rendezvous(&mut self, now: Instant, addr: Address) {
        let key = self
            .table
            .get(&addr)
            .map(|e| e.key)
            .or_else(|| self.sessions.get(&addr).and_then(|s| s.key));
        let Some(key) = key else { return };
        if self
            .link_by_key
            .get(&key)
            .and_then(|&d| self.links[d as usize].as_ref())
            .is_some_and(|l| l.up)
        {
            if let Some(d) = self.direct.get_mut(&addr) {
                d.state = DirectState::Linked;
            }
            return;
        }
        if let Some(d) = self.direct.get_mut(&addr) {
            let age = now.saturating_duration_since(d.since);
            if d.state == DirectState::Trying && age > Duration::from_secs(5) {
                d.state = DirectState::Failed;
            }
            if age < Duration::from_secs(30) {
                return;
            }
        }
        let record = self.endpoint_record();
        if record.endpoints.is_empty() {
            self.direct.insert(
                addr,
                Direct {
                    since: now,
                    state: DirectState::NoEndpoint,
                    answered: None,
                },
            );
            return;
        }
        let Some(route) = self.session_route(now, &addr) else {
            return;
        };
        if self.send_frame(
            now,
            route,
            FrameKind::Router,
            &Control::Rendezvous { record }.to_bytes(),
        ) {
            let answered = self.direct.get(&addr).and_then(|d| d.answered);
            self.direct.insert(
                addr,
                Direct {
                    since: now,
                    state: DirectState::Trying,
                    answered,
                },
            );
        }
    }

    /// Why there is or isn't a direct link to `addr`, if one was tried.
    pub fn direct_status(&self, addr: &Address) -> Option<DirectState> {
        self.direct.get(addr).map(|d| d.state)
    }

    /// Tells the node its own UDP endpoints (e.g. the listen address on a public host); they
    /// go into its endpoint records next to what its peers observe.
    pub fn set_local_endpoints(&mut self, eps: Vec<std::net::SocketAddr>) {
        self.local_endpoints = eps;
    }

    /// Probes the tree route to `addr` from its last known coordinate, unless it is a path we
    /// already hold working or one being probed: after links move, the tree gives the new
    /// way at once, without a lookup. Verified by the answer like any other path.
    pub(crate) fn probe_tree_route(&mut self, now: Instant, addr: Address) {
        let Some(e) = self.table.get(&addr) else {
            return;
        };
        // The route in each tree: if the shortest crosses what just died, another may not.
        let routes = tree_routes(&self.trees, e.places());
        let key = e.key;
        for (i, route) in routes.into_iter().enumerate() {
            let Some(route) = route else { continue };
            let Some(e) = self.table.get(&addr) else {
                return;
            };
            if routes[..i].contains(&Some(route))
                || e.paths
                    .iter()
                    .any(|p| p.route == route && p.failed_at.is_none())
                || self.queries.values().any(|q| q.path == route)
            {
                continue;
            }
            self.send_query(now, key, route, Purpose::Probe);
        }
    }

    /// Our place in the tree moved: routes to the destinations in use may have too, and the
    /// nodes closest to us (who hand out our coordinate) should hear the new one: look
    /// ourselves up soon (at most every 2 s for this reason).
    pub(crate) fn on_tree_moved(&mut self, now: Instant) {
        self.last_tree_move = Some(now);
        let new_root = self.trees[0].root() != self.stale_coords.root;
        if new_root {
            self.stale_coords = StaleCoords {
                root: self.trees[0].root(),
                until: now + STALE_COORDS_FOR,
                next: now + STALE_COORDS_EVERY,
            };
        }
        // Routes that failed before may exist now (as after a new link).
        self.unreachable_until.clear();
        if self.next_self_lookup.is_some() {
            // Under a new root, every coordinate changes and answers leave out nodes whose
            // new one hasn't come in: wait for the tree and the probes above to settle.
            let soon = now + Duration::from_millis(if new_root { 2500 } else { 500 });
            if self.next_self_lookup.is_some_and(|t| t > soon)
                && self
                    .last_tree_lookup
                    .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(2))
            {
                self.last_tree_lookup = Some(now);
                self.next_self_lookup = Some(soon);
            }
        }
        let addrs: Vec<Address> = self.sessions.keys().copied().collect();
        for a in addrs {
            self.probe_tree_route(now, a);
        }
    }

    /// Probes a few table entries whose coordinate is under another root and whom no one-label
    /// path reaches: an answer to a lookup can't carry them until their new coordinate is in.
    fn probe_stale_coords(&mut self, now: Instant) {
        let root = self.trees[0].root();
        let stale: Vec<(PublicKey, Route)> = self
            .table
            .iter()
            .filter(|e| e.coord.is_some_and(|c| c.root != root) && e.one_label().is_none())
            .filter_map(|e| {
                let p = e.working().next()?;
                (now.saturating_duration_since(p.last_ok) >= STALE_COORD_RECHECK)
                    .then_some((e.key, p.route))
            })
            .filter(|(key, _)| {
                !self
                    .queries
                    .values()
                    .any(|q| q.to == *key && matches!(q.purpose, Purpose::Probe))
            })
            .take(STALE_COORD_PROBES)
            .collect();
        for (key, path) in stale {
            self.send_query(now, key, path, Purpose::Probe);
        }
    }

    /// Probes every known path to `addr` (for busy sessions).
    pub(crate) fn probe_paths(&mut self, now: Instant, addr: Address) {
        self.probe_tree_route(now, addr);
        let Some(e) = self.table.get(&addr) else {
            return;
        };
        let key = e.key;
        let paths: Vec<Route> = e
            .paths
            .iter()
            .filter(|p| {
                p.failed_at.is_none()
                    || now.saturating_duration_since(p.last_ok) > Duration::from_secs(2)
            })
            .map(|p| p.route)
            .take(3)
            .collect();
        for p in paths {
            if !self
                .queries
                .values()
                .any(|q| q.path == p && matches!(q.purpose, Purpose::Probe))
            {
                self.send_query(now, key, p, Purpose::Probe);
            }
        }
    }

    /// Fails outstanding queries whose path matches `broken` (a switch error or a dead link
    /// said so), so lookups move on at once instead of waiting for the timeout.
    pub(crate) fn fail_queries_on(&mut self, broken: &impl Fn(Route) -> bool) {
        let dead: Vec<u64> = self
            .queries
            .iter()
            .filter(|(_, q)| broken(q.path))
            .map(|(&t, _)| t)
            .collect();
        let mut targets = Vec::new();
        for t in dead {
            let Some(q) = self.queries.remove(&t) else {
                continue;
            };
            if let Purpose::Find(target) = q.purpose {
                self.candidate_failed(target, &q.to);
                targets.push(target);
            }
            if let Purpose::Admin(id) | Purpose::Trace(id) = q.purpose {
                self.events.push_back(Event::Ping { id, result: None });
            }
        }
        self.pending_lookup_steps.extend(targets);
    }

    pub(crate) fn tick_routing(&mut self, now: Instant) {
        // Queries that timed out.
        let expired: Vec<u64> = self
            .queries
            .iter()
            .filter(|(_, q)| {
                let limit = match q.purpose {
                    Purpose::Probe => PROBE_TIMEOUT,
                    _ => QUERY_TIMEOUT,
                };
                now.saturating_duration_since(q.sent) >= limit
            })
            .map(|(&t, _)| t)
            .collect();
        for t in expired {
            let Some(q) = self.queries.remove(&t) else {
                continue;
            };
            match q.purpose {
                Purpose::Find(target) => {
                    self.candidate_unanswered(target, &q.to);
                    self.pending_lookup_steps.push(target);
                }
                Purpose::Probe => {
                    // A silently dead path: mark it, so the session moves to the next one.
                    self.counters.probes_lost += 1;
                    let touched = self.table.mark_broken(|l| l == q.path, now);
                    tracing::debug!(
                        me = %self.id.address(),
                        to = %q.to.address(),
                        hops = q.path.hops(),
                        "probe lost: path marked broken"
                    );
                    self.on_path_broken(now, |l| l == q.path);
                    self.on_routes_changed(now, &touched);
                }
                Purpose::Verify => {}
                Purpose::Admin(id) | Purpose::Trace(id) => {
                    self.events.push_back(Event::Ping { id, result: None })
                }
            }
        }
        if now < self.stale_coords.until && now >= self.stale_coords.next {
            self.stale_coords.next = now + STALE_COORDS_EVERY;
            self.probe_stale_coords(now);
        }
        // Lookups with a query that just turned slow: their next candidates are due.
        for l in self.lookups.values_mut() {
            let mut turned_slow = false;
            for c in l.cands.iter_mut().filter(|c| c.state == CandState::Asked) {
                if c.asked_at
                    .is_some_and(|t| now.saturating_duration_since(t) >= QUERY_SLOW)
                {
                    // Noted once: it no longer holds a place.
                    c.asked_at = None;
                    turned_slow = true;
                }
            }
            if turned_slow {
                self.pending_lookup_steps.push(l.target);
            }
        }
        // Lookups past their deadline, and those whose queries failed.
        let late: Vec<Address> = self
            .lookups
            .values()
            .filter(|l| now.saturating_duration_since(l.started) > LOOKUP_DEADLINE)
            .map(|l| l.target)
            .collect();
        for t in late {
            self.finish_lookup(now, t, false);
        }
        let steps: Vec<Address> = std::mem::take(&mut self.pending_lookup_steps);
        for t in steps {
            self.step_lookup(now, t);
        }
        // Bootstrap and refresh: look ourselves up soon after the first link, then with
        // growing gaps; look up a random address in a sparse bucket now and then.
        if let Some(t) = self.next_self_lookup {
            if now >= t && self.links.iter().flatten().any(|l| l.up) {
                let me = self.id.address();
                // The first two start from the closest nodes we know, then every other one
                // elsewhere (explores), but not one that tells the closest nodes our new
                // place in the tree. Exploring every time found no more in the simulator
                // (ring-100, geometric-1000, BA-1000: all lookups found either way) and cost
                // a sixth more control traffic on BA-1000 (7.1 against 6.1 kB/s per node).
                let tree_moved = self
                    .last_tree_lookup
                    .is_some_and(|m| now.saturating_duration_since(m) < Duration::from_secs(2));
                let explore =
                    self.self_lookups >= 2 && self.self_lookups.is_multiple_of(2) && !tree_moved;
                self.start_lookup_from(now, me, None, explore);
                self.self_lookups += 1;
                let gap = Duration::from_millis(500) * 2u32.pow(self.self_lookups.min(6));
                self.next_self_lookup = Some(now + gap.min(Duration::from_secs(30)));
            }
        }
        if now >= self.next_refresh && self.links.iter().flatten().any(|l| l.up) {
            self.next_refresh = now + self.refresh_gap;
            self.refresh_gap = (self.refresh_gap * 2).min(Duration::from_secs(160));
            let depth = self.table.depth() + 1;
            // Every address shares the first 8 bits (fc00::/8): buckets 0-7 stay empty.
            let sparse: Vec<usize> = (8..depth.clamp(9, 127))
                .filter(|&b| self.table.bucket_len(b) < 4)
                .collect();
            if !sparse.is_empty() {
                let b = sparse[self.rng.gen_range(0..sparse.len())];
                let target = random_in_bucket(&self.id.address(), b, self.rng.gen());
                self.start_lookup(now, target, None);
            }
        }
        if now >= self.next_expire {
            self.next_expire = now + Duration::from_secs(1);
            let sessions = &self.sessions;
            self.table.expire(now, |a| sessions.contains_key(a));
        }
    }

    /// Pings `addr` through the mesh (looking it up first if needed). The answer comes as
    /// [`Event::Ping`] with `id`.
    pub fn ping(&mut self, now: Instant, addr: Address, id: u64) {
        let target = self
            .table
            .get(&addr)
            .and_then(|e| Some((e.key, e.best()?.route)));
        match target {
            Some((key, path)) => {
                if !self.send_query(now, key, path, Purpose::Admin(id)) {
                    self.events.push_back(Event::Ping { id, result: None });
                }
            }
            None => {
                self.pending_pings.push((addr, id));
                self.start_lookup(now, addr, None);
            }
        }
    }

    /// Pings whichever node sits at the end of `path` (for traceroute: send it for each
    /// prefix of a route). The answer, [`Event::Ping`] with `id`, names the responder's key,
    /// checked by its signature.
    pub fn ping_path(&mut self, now: Instant, path: Route, id: u64) {
        let me = self.id.public_key();
        if !self.send_query(now, me, path, Purpose::Trace(id)) {
            self.events.push_back(Event::Ping { id, result: None });
        }
    }

    /// The best known path to `addr`, if any: the table's, else the link to it.
    pub fn path_to(&self, addr: &Address) -> Option<Route> {
        self.table
            .get(addr)
            .and_then(|e| e.best())
            .map(|p| p.route)
            .or_else(|| self.link_route(addr))
    }

    /// Looks `addr` up; the answer comes as [`Event::Lookup`] with `id`.
    pub fn lookup(&mut self, now: Instant, addr: Address, id: u64) {
        self.start_lookup(now, addr, Some(id));
    }
}

/// State of an attempt to open a direct link to a node we talk to through the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectState {
    /// Endpoint records exchanged, handshakes under way.
    Trying,
    /// A direct link is up.
    Linked,
    /// Punching got no answer in 5 s: a symmetric NAT or a filtering firewall on one side;
    /// traffic keeps going through the mesh.
    Failed,
    /// We don't know our own external endpoint yet (no peer has told us).
    NoEndpoint,
}

impl DirectState {
    /// A sentence for the admin API.
    pub fn describe(&self) -> &'static str {
        match self {
            DirectState::Trying => "trying: endpoint records exchanged, hole punching under way",
            DirectState::Linked => "direct link up",
            DirectState::Failed => "no direct link: hole punching got no answer (symmetric NAT or filtering firewall on one side); traffic goes through the mesh",
            DirectState::NoEndpoint => "no direct link: our external endpoint is not known yet",
        }
    }
}

/// A direct-link attempt.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Direct {
    pub since: Instant,
    pub state: DirectState,
    /// When we last answered this node's rendezvous.
    pub answered: Option<Instant>,
}

/// A random address sharing exactly `bucket` leading bits with `me`.
/// The route through each tree to a node at `at` (its place in each, the main tree first;
/// each only under the root we follow there).
fn tree_routes(
    trees: &[crate::tree::Tree; TREES],
    at: [Option<Coord>; TREES],
) -> [Option<Route>; TREES] {
    std::array::from_fn(|i| at[i].and_then(|c| trees[i].route_to(&c.root, c.down)))
}

/// The shortest of some routes (fewest hops, then fewest segments), if there is any.
fn shortest(routes: [Option<Route>; TREES]) -> Option<Route> {
    routes
        .into_iter()
        .flatten()
        .min_by_key(|r| (r.hops(), r.segments().len()))
}

fn random_in_bucket(me: &Address, bucket: usize, r: u128) -> Address {
    let m = u128::from_be_bytes(me.0);
    let flip = 1u128 << (127 - bucket);
    let low_mask = flip - 1;
    let v = (m & !low_mask & !flip) | (!m & flip) | (r & low_mask);
    Address(v.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn random_in_bucket_lands_there(m in any::<u128>(), b in 0usize..128, r in any::<u128>()) {
            let me = Address(m.to_be_bytes());
            prop_assert_eq!(me.common_prefix_len(&random_in_bucket(&me, b, r)) as usize, b);
        }
    }
}
