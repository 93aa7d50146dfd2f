//! A spanning tree over the links, so any two nodes have a short route without searching for
//! one (the idea of Yggdrasil's tree, on meshd's labels).
//!
//! The root is the node of highest *rank* alive, the largest key among equal ranks. A node's
//! rank is 0 below [`RANKED_FROM`] (32) links, and from there how many links it has on a log
//! scale, four steps per doubling (32, 40, 100, 242 links: ranks 20, 21, 26, 31; see
//! [`rank_for`]). A tree rooted at the best-linked node of an overlay is shallower and its
//! routes shorter (docs/sims.md, "ninth session": mean stretch on Barabási-Albert graphs of
//! 10,000 nodes 1.18–1.23 against 1.25–1.48 with the largest key as root; with whole powers
//! of two as ranks a 195-link hub beat the 242-link one on its key and gave 1.32). A rank
//! falls only when the links drop below three quarters of its lower bound, so a flapping
//! link doesn't move the root. The root counts a sequence number up every
//! [`ANNOUNCE_EVERY`] (and at once when its rank changes), and every node passes the newest
//! number and rank on to its peers as soon as it hears them from its parent. A root whose
//! number stops moving for [`ROOT_TIMEOUT`] is dead, and the next in order takes over. Each
//! node's parent is the peer nearest the root (fewest hops; the current parent keeps its
//! place on a tie if taken before this instant, else `tie_order`) among the *feasible*
//! ones: nearer the root than we were under the same sequence number, or with a newer one
//! (DSDV's rule, so a node whose parent died never takes its own descendants); a node with
//! none is cut off until a newer number comes, and after [`CUT_OFF_TIMEOUT`] takes the root
//! for dead. A node's place in the tree is two
//! routes of up to [`switch::MAX_SEGMENTS`] labels: `down`, the route from the root to it
//! (its parent's `down` plus the parent's director for the link), and `up`, the route from
//! it to the root.
//!
//! **A root near the middle** (a double sweep). Where no node ranks (a physical mesh: nobody
//! has 32 links) the largest key is the first root, at a random spot, and tree routes from
//! there are long (docs/sims.md, "eleventh session": mean stretch 1.86 on a 1,000-node grid,
//! 1.36 from its centre). So each node announces its *height* (the most hops down its own
//! subtree; a change goes to the parent at once), and the root's height goes down the tree
//! with its numbers. In a tree of at least [`SWEEP_FROM`] levels under a root of rank 0, a
//! node as deep as the root's height (the far end of the mesh from the root) *claims* the
//! root with rank 1; under a root of rank 1, the node halfway down a deepest path (its depth
//! plus its height is the root's height, its depth half of it) claims with rank 2: the middle
//! of a longest shortest path, near a centre of the mesh. Nobody claims under a root of rank 2
//! or above (nodes of 32 links and more rank 20 and up). A claim waits until its condition has
//! held for [`CLAIM_AFTER`] under the same root; a claimed rank lasts while its holder is the
//! root (when it dies, the largest key is root again and the sweep starts over). Among peers
//! heard at the same instant a node takes the first in its own shuffle of its directors as
//! parent (`tie_order`): on a grid, taking the same turn everywhere made the tree's paths
//! L-shaped and the middle of the longest a corner.
//!
//! Between two nodes A and B under the same root, the tree route climbs from A to the last
//! node their `down` routes share and descends from there to B ([`Tree::route_to`]). The DHT
//! carries these `down` routes next to keys (control.rs, [`crate::control::Coord`]), so a
//! lookup's answer gives a route that does not depend on where the answer came from.
//!
//! **More trees** ([`TREES`] in all). Two nodes close to each other but on branches that
//! meet far up have a long tree route: on physical meshes that is most of the stretch
//! (docs/sims.md, "twelfth session"). Every node also keeps [`TREES`]` - 1` further trees,
//! built the same way but rooted by a hash of the keys salted per tree (no ranks, no sweep),
//! so their roots fall at other spots; `Tree` messages say which tree they are about, the
//! DHT carries a coordinate in each, and a route takes the shortest of the trees' routes.
//! (Mean stretch on a 10,000-node grid: 1.52 with one tree, 1.33 with two, 1.27 with three;
//! docs/sims.md, "thirteenth session", for four.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crypto::PublicKey;
use switch::{Director, Label, Route};

use crate::control::{Control, Coord};

/// How many spanning trees every node keeps: the main one and `TREES - 1` rooted by hashes.
pub const TREES: usize = 4;

/// The root counts up this often; nodes re-announce at least this often.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
/// A root whose sequence number has not moved for this long is taken for dead.
pub const ROOT_TIMEOUT: Duration = Duration::from_secs(7);
/// Cut off from the root this long (no peer nearer it, none with a newer number: the root
/// counts up every [`ANNOUNCE_EVERY`]), a node takes the root for dead, as if it had timed
/// out: when the root dies, every node of its tree is soon cut off, and the next root must
/// not wait out [`ROOT_TIMEOUT`].
pub const CUT_OFF_TIMEOUT: Duration = Duration::from_millis(1000);
/// Roots and peers are aged this often (a hub's hundreds of peers need not be walked at
/// every tick of its node).
const AGE_EVERY: Duration = Duration::from_millis(100);
/// A peer's announcement older than this is ignored.
const PEER_STALE: Duration = Duration::from_secs(7);
/// Most roots remembered at once.
const MAX_ROOTS: usize = 32;
/// A node claims the root (module documentation) once its reason to has held this long under
/// the same root (one of the root's numbers: heights climb in a few round trips and the root's
/// height comes down with its next number; the sooner a sweep ends, the less of the DHT's
/// first work it undoes).
pub const CLAIM_AFTER: Duration = Duration::from_secs(2);
/// Trees of fewer levels than this keep their root: a better one would save little.
pub const SWEEP_FROM: u8 = 8;
/// Deepest place in the tree. A coordinate of [`switch::MAX_SEGMENTS`] (15) labels holds at
/// most 465 hops (through 2-link nodes), ~230 through nodes of 8 links.
const MAX_DEPTH: u8 = 200;

/// A peer's place in the tree, as its [`Control::Tree`] announcement says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// Its root.
    pub root: PublicKey,
    /// Its root's rank.
    pub rank: u8,
    /// The root's sequence number it last heard.
    pub seq: u64,
    /// Its hops to the root.
    pub depth: u8,
    /// Its route up to the root.
    pub up: Route,
    /// The route from the root down to it.
    pub down: Route,
    /// Its director for the link to us.
    pub director: Director,
    /// The root's height, as it last heard.
    pub root_height: u8,
    /// Its height: the most hops down its own subtree.
    pub height: u8,
    /// Whether we are its parent.
    pub child: bool,
}

impl Announcement {
    /// The announcement a [`Control::Tree`] message carries.
    pub fn from_control(msg: &Control) -> Option<Announcement> {
        match *msg {
            Control::Tree {
                root,
                rank,
                seq,
                depth,
                up,
                down,
                director,
                root_height,
                height,
                child,
                tree: _,
            } => Some(Announcement {
                root,
                rank,
                seq,
                depth,
                up,
                down,
                director,
                root_height,
                height,
                child,
            }),
            _ => None,
        }
    }
}

/// What a peer last told us, and when.
#[derive(Clone, Copy, Debug)]
struct PeerPlace {
    said: Announcement,
    heard: Instant,
}

/// The newest we know of a root.
#[derive(Clone, Copy, Debug)]
struct RootSeen {
    seq: u64,
    /// Its rank, as of `seq`.
    rank: u8,
    /// When `seq` last moved on.
    moved: Instant,
}

/// This node's view of the spanning tree.
#[derive(Debug)]
pub struct Tree {
    me: PublicKey,
    /// Which tree: 0 the main one, 1 and up those rooted by hashes (module documentation,
    /// "More trees").
    index: u8,
    peers: BTreeMap<Director, PeerPlace>,
    roots: BTreeMap<PublicKey, RootSeen>,
    /// Roots that timed out, with the last number seen: they come back only with a newer one.
    dead: BTreeMap<PublicKey, u64>,
    parent: Option<Director>,
    root: PublicKey,
    /// The root's rank.
    root_rank: u8,
    seq: u64,
    depth: u8,
    up: Route,
    down: Route,
    /// Our own rank (from how many peers we hear).
    rank: u8,
    /// Our own count, used while we are the root.
    own_seq: u64,
    /// Since when we have been cut off from the root we follow (no parent, not the root).
    cut_off: Option<Instant>,
    /// When we took the parent we have.
    parent_since: Instant,
    next_announce: Instant,
    /// When roots and peers are next aged ([`Tree::tick`]).
    next_age: Instant,
    /// Something peers should hear about changed.
    dirty: bool,
    /// The root's height, as our parent last said (ours at the root).
    root_height: u8,
    /// Our height: the most hops down our subtree (0 without children).
    height: u8,
    /// Our height changed: the parent should hear it.
    parent_news: bool,
    /// The rank we claimed the root with (0: none; kept while we are the root).
    claim_rank: u8,
    /// Since when, and under which root, we could claim it.
    claim_since: Option<(Instant, PublicKey)>,
}

impl Tree {
    /// The main tree, in which we are the root until we hear of a larger key.
    pub fn new(me: PublicKey, now: Instant) -> Tree {
        Tree::nth(me, now, 0)
    }

    /// Tree `index` (1 to [`TREES`]` - 1`; module documentation, "More trees"): rooted by a
    /// hash of the keys salted with `index`.
    pub fn hashed(me: PublicKey, now: Instant, index: u8) -> Tree {
        debug_assert!((1..TREES).contains(&usize::from(index)));
        Tree::nth(me, now, index)
    }

    fn nth(me: PublicKey, now: Instant, index: u8) -> Tree {
        Tree {
            me,
            index,
            peers: BTreeMap::new(),
            roots: BTreeMap::new(),
            dead: BTreeMap::new(),
            parent: None,
            root: me,
            root_rank: 0,
            seq: 0,
            depth: 0,
            up: Route::from(Label::SELF),
            down: Route::from(Label::SELF),
            rank: 0,
            own_seq: 0,
            cut_off: None,
            parent_since: now,
            next_announce: now,
            next_age: now,
            dirty: true,
            root_height: 0,
            height: 0,
            parent_news: false,
            claim_rank: 0,
            claim_since: None,
        }
    }

    /// Our place: root and route from it down to us (`None` if our labels overflowed).
    pub fn coord(&self) -> Option<Coord> {
        self.down.is_valid().then_some(Coord {
            root: self.root,
            down: self.down,
        })
    }

    /// The root we follow.
    pub fn root(&self) -> PublicKey {
        self.root
    }

    /// Our own rank (see the module's documentation).
    pub fn rank(&self) -> u8 {
        self.rank
    }

    /// The rank of our root, as we heard it (a claimed rank where the root claimed).
    pub fn rank_as_root(&self) -> u8 {
        self.root_rank
    }

    /// Hops to the root.
    pub fn depth(&self) -> u8 {
        self.depth
    }

    /// The link to our parent (`None` at the root).
    pub fn parent(&self) -> Option<Director> {
        self.parent
    }

    /// Our height: the most hops down our subtree.
    pub fn height(&self) -> u8 {
        self.height
    }

    /// The root's height (the most hops from it to any node of the tree), as last heard.
    pub fn root_height(&self) -> u8 {
        self.root_height
    }

    /// Whether our parent should hear our announcement now (our height changed) and was not
    /// told with everyone: its link.
    pub fn take_parent_news(&mut self) -> Option<Director> {
        std::mem::take(&mut self.parent_news)
            .then_some(self.parent)
            .flatten()
    }

    /// The shortest route we can build to the node whose route from `root` is `down`, if we
    /// are under the same root: the tree route from us (up to the last node both routes
    /// share, then down), or through one of our peers, from its own place in the tree (one
    /// hop of look-ahead: a peer on another branch is often a shortcut in a physical mesh).
    ///
    /// The route is packed into as few labels as hold it; the nodes where they end relay.
    /// Cut off from the root (no coordinate of our own), only the ways through peers remain.
    pub fn route_to(&self, root: &PublicKey, down: Route) -> Option<Route> {
        if *root != self.root || !down.is_valid() || !down.is_well_formed() || down == self.down {
            return None;
        }
        // Our own route and one through each peer's place (hubs have hundreds of peers): count
        // the hops of each first and build only the shortest, unless none of those fits.
        let target_hops = down.hops();
        let peers = || self.peers.iter().filter(|(_, p)| p.said.root == *root);
        let mine_hops =
            tree_hops(&self.up, &self.down, self.depth, &down, target_hops).filter(|&h| h > 0);
        let peer_hops = |p: &PeerPlace| {
            let p = &p.said;
            tree_hops(&p.up, &p.down, p.depth, &down, target_hops).map(|h| h + 1)
        };
        let shortest = mine_hops
            .into_iter()
            .chain(peers().filter_map(|(_, p)| peer_hops(p)))
            .min()?;
        let build = |only: Option<usize>| {
            let mine = mine_hops
                .filter(|&h| only.is_none_or(|o| o == h))
                .and_then(|_| tree_route(&self.up, &self.down, self.depth, &down));
            let via_peers = peers()
                .filter(|(_, p)| only.is_none_or(|o| peer_hops(p) == Some(o)))
                .filter_map(|(&d, p)| {
                    let p = &p.said;
                    tree_route(&p.up, &p.down, p.depth, &down)?.hop_then(d)
                });
            mine.into_iter()
                .chain(via_peers)
                .min_by_key(|r| (r.hops(), r.segments().len(), r.first().bit_len()))
        };
        build(Some(shortest)).or_else(|| build(None))
    }

    /// A peer's announcement over link `d`.
    pub fn heard(&mut self, now: Instant, d: Director, said: Announcement) {
        let (root, seq) = (said.root, said.seq);
        // Only mesh keys can be roots (a made-up key must at least be ground), and the roots
        // remembered are bounded: a peer naming a new root in every message can't grow them.
        if root.address().0[0] != 0xfc || self.dead.get(&root).is_some_and(|&s| seq <= s) {
            return;
        }
        if !self.roots.contains_key(&root) && self.roots.len() >= MAX_ROOTS {
            let Some((smallest, order)) = self
                .roots
                .iter()
                .map(|(k, r)| (*k, self.rank_key(r.rank, k)))
                .min_by_key(|&(_, o)| o)
            else {
                return;
            };
            if order > self.rank_key(said.rank, &root) || smallest == self.root {
                return;
            }
            self.roots.remove(&smallest);
        }
        self.dead.remove(&root);
        let rank = said.rank;
        let r = self.roots.entry(root).or_insert(RootSeen {
            seq,
            rank,
            moved: now,
        });
        if seq > r.seq {
            *r = RootSeen {
                seq,
                rank,
                moved: now,
            };
        }
        self.peers.insert(d, PeerPlace { said, heard: now });
        self.reselect(now);
    }

    /// Link `d` went down.
    pub fn link_down(&mut self, now: Instant, d: Director) {
        if self.peers.remove(&d).is_some() {
            self.reselect(now);
        }
    }

    /// Ages roots and peers (every [`AGE_EVERY`]); as root, counts up. Returns whether to
    /// announce to every peer now.
    pub fn tick(&mut self, now: Instant) -> bool {
        if now >= self.next_age {
            self.next_age = now + AGE_EVERY;
            self.age(now);
        }
        if now >= self.next_announce {
            if self.root == self.me {
                self.own_seq += 1;
                self.seq = self.own_seq;
            }
            self.dirty = true;
        }
        self.take_dirty(now)
    }

    /// Drops dead roots and stale peers, claims the root if it is time to, and picks root and
    /// parent again if any of that changed something.
    fn age(&mut self, now: Instant) {
        let mut dead: Vec<PublicKey> = self
            .roots
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.moved) >= ROOT_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        let mut changed = !dead.is_empty();
        if self
            .cut_off
            .is_some_and(|t| now.saturating_duration_since(t) >= CUT_OFF_TIMEOUT)
            && self.root != self.me
            && self.roots.contains_key(&self.root)
        {
            dead.push(self.root);
            changed = true;
        }
        for k in dead {
            if let Some(r) = self.roots.remove(&k) {
                self.dead.insert(k, r.seq);
            }
        }
        if self.dead.len() > 64 {
            // Bounded: forget the oldest tombstones (they can't be told apart anyway).
            let extra: Vec<PublicKey> = self
                .dead
                .keys()
                .take(self.dead.len() - 64)
                .copied()
                .collect();
            for k in extra {
                self.dead.remove(&k);
            }
        }
        let peers = self.peers.len();
        self.peers
            .retain(|_, p| now.saturating_duration_since(p.heard) < PEER_STALE);
        changed |= self.peers.len() != peers;
        changed |= self.claim(now);
        // Root and parent follow from the peers and live roots alone, and every other change
        // to those (`heard`, `link_down`) picks again at once: nothing to pick otherwise.
        if changed {
            self.reselect(now);
        }
    }

    /// Whether something changed that peers should hear at once.
    pub fn take_dirty(&mut self, now: Instant) -> bool {
        if self.dirty {
            self.dirty = false;
            self.next_announce = now + ANNOUNCE_EVERY;
            return true;
        }
        false
    }

    /// When [`Tree::tick`] wants to run next.
    pub fn next_announce(&self) -> Instant {
        self.next_announce
    }

    /// The announcement for the peer on link `d`.
    pub fn announcement(&self, d: Director) -> Control {
        Control::Tree {
            root: self.root,
            rank: self.root_rank,
            seq: self.seq,
            // Cut off from the root (no parent, not the root): nowhere to lead.
            depth: if self.parent.is_none() && self.root != self.me {
                u8::MAX
            } else {
                self.depth
            },
            up: self.up,
            down: self.down,
            director: d,
            root_height: self.root_height,
            height: self.height,
            child: self.parent == Some(d),
            tree: self.index,
        }
    }

    /// Claims the root once our reason to (module documentation: the far end under a root
    /// of rank 0, the middle of a deepest path under one of rank 1) has held for
    /// [`CLAIM_AFTER`] under the same root. Returns whether we took a claimed rank.
    fn claim(&mut self, now: Instant) -> bool {
        let h = self.root_height;
        let may = self.index == 0
            && self.root != self.me
            && self.parent.is_some()
            && self.rank == 0
            && h >= SWEEP_FROM
            && match self.root_rank {
                0 => self.depth == h,
                1 => self.depth == h / 2 && self.depth.saturating_add(self.height) == h,
                _ => false,
            };
        match self.claim_since {
            _ if !may => self.claim_since = None,
            Some((t, r)) if r == self.root => {
                if now.saturating_duration_since(t) >= CLAIM_AFTER {
                    self.claim_since = None;
                    self.claim_rank = self.root_rank + 1;
                    tracing::debug!(
                        depth = self.depth,
                        root_height = h,
                        rank = self.claim_rank,
                        "claiming the root"
                    );
                    return true;
                }
            }
            _ => self.claim_since = Some((now, self.root)),
        }
        false
    }

    /// A live root's place in the order roots are chosen by: rank, then key (the hashed
    /// trees: a hash of the key alone).
    fn order(&self, root: &PublicKey) -> Option<RootOrder> {
        self.roots.get(root).map(|r| self.rank_key(r.rank, root))
    }

    /// The place of a root of `rank` and key `key` in this tree's order of roots.
    fn rank_key(&self, rank: u8, key: &PublicKey) -> RootOrder {
        match self.index {
            0 => (rank, 0, *key),
            i => (0, hashed_order(key, i), *key),
        }
    }

    /// Our rank for the peers we hear now (a rank rises at once and falls only well below
    /// its bound).
    fn rank_now(&self) -> u8 {
        if self.index != 0 {
            return 0;
        }
        let links = self.peers.len();
        if rank_for(links) > self.rank || (links as f64) < 0.75 * rank_floor(self.rank) {
            rank_for(links)
        } else {
            self.rank
        }
    }

    /// Picks root and parent from what the peers said, then our height.
    fn reselect(&mut self, now: Instant) {
        self.reselect_place(now);
        let height = self
            .peers
            .values()
            .filter(|p| p.said.child && p.said.root == self.root)
            .map(|p| p.said.height.saturating_add(1))
            .max()
            .unwrap_or(0);
        if height != self.height {
            self.height = height;
            self.parent_news = true;
        }
        if self.root == self.me {
            self.root_height = self.height;
        }
    }

    /// Picks root and parent from what the peers said.
    fn reselect_place(&mut self, now: Instant) {
        // As root, a new rank goes out with a new sequence number (`become_root`).
        self.rank = self.rank_now();
        // The first live root in order anyone offers (ourselves if we come before it).
        let me = self.rank_key(self.own_rank(), &self.me);
        // The root we follow stays a candidate while it lives and a peer still names it,
        // even if none leads to it right now (we are cut off until its next number reaches
        // us: see below). Alone, we are our own root at once.
        let following = (self.root != self.me
            && self.peers.values().any(|p| p.said.root == self.root))
        .then(|| self.order(&self.root))
        .flatten();
        let best_root = self
            .peers
            .values()
            .map(|p| &p.said)
            .filter(|p| p.depth < MAX_DEPTH)
            .filter_map(|p| self.order(&p.root))
            .chain(following)
            .filter(|o| *o > me)
            .max();
        let Some((root_rank, _, root)) = best_root else {
            self.become_root();
            return;
        };
        // Someone comes before us: a claim of ours is over (or didn't beat it).
        self.claim_rank = 0;
        let newest = self.roots.get(&root).map_or(0, |r| r.seq);
        // Peers under that root with a recent number; nearest first, then the current
        // parent, then our own order of directors (`tie_order`).
        let parent = self.parent;
        // Under the root we already follow, a peer is a parent only if it is nearer the root
        // than we were under the same number, or has a newer number (DSDV's feasibility
        // rule): when our parent dies, the peers still offering the way through us (our
        // children and theirs) are never nearer, so no loop forms. Without it, nodes took
        // their own descendants as parents and counted their depths up until the root's
        // number went stale, re-announcing at every step; MAX_DEPTH (31 before coordinates
        // took several labels) had cut that short (10% of a 10,000-node BA mesh killed, seed
        // 5: 137 M events and 7.5 s to recover with MAX_DEPTH 200, against 69 M and 4.0 s).
        let same = root == self.root && self.root != self.me;
        let (seq, depth) = (self.seq, self.depth);
        let choice = self
            .peers
            .iter()
            .map(|(&d, p)| (d, p.said))
            .filter(|(_, p)| p.root == root && p.seq + 1 >= newest && p.depth < MAX_DEPTH)
            .filter(|(_, p)| !same || p.seq > seq || (p.seq == seq && p.depth < depth))
            .min_by_key(|(d, p)| {
                // The current parent keeps its place on a tie, unless we took it at this very
                // instant: then among peers heard at once, our own order (tie_order).
                let keeps = Some(*d) == parent && self.parent_since < now;
                (p.depth, !keeps, tie_order(&self.me, *d))
            });
        let Some((d, p)) = choice else {
            if same {
                // Cut off until the root's next number comes over some peer: no parent,
                // no coordinate, and peers hear that we lead nowhere (depth u8::MAX).
                if self.parent.take().is_some() || self.down.is_valid() {
                    self.dirty = true;
                }
                self.up = Route::INVALID;
                self.down = Route::INVALID;
                self.cut_off.get_or_insert(now);
                return;
            }
            self.become_root();
            return;
        };
        self.cut_off = None;
        // A route that no longer fits is invalid: no coordinate, but still in the tree.
        let down = p.down.then_hop(p.director).unwrap_or(Route::INVALID);
        let up = p.up.hop_then(d).unwrap_or(Route::INVALID);
        let root_changed = self.root != root;
        let changed = root_changed
            || self.root_rank != root_rank
            || self.parent != Some(d)
            || self.down != down
            || self.up != up
            || self.depth != p.depth + 1;
        let newer = p.seq > self.seq;
        self.root = root;
        self.root_rank = root_rank;
        if self.parent != Some(d) {
            self.parent_since = now;
        }
        self.parent = Some(d);
        self.depth = p.depth + 1;
        self.down = down;
        self.up = up;
        self.root_height = p.root_height;
        self.seq = if root_changed {
            p.seq
        } else {
            self.seq.max(p.seq)
        };
        // Pass a new root number on at once, so it reaches the edge well within the timeout.
        if changed || newer {
            self.dirty = true;
        }
    }

    /// The rank we would be root with: by links, or the one we claimed.
    fn own_rank(&self) -> u8 {
        self.rank.max(self.claim_rank)
    }

    fn become_root(&mut self) {
        self.cut_off = None;
        if self.root != self.me || self.root_rank != self.own_rank() {
            // A new number: peers take a root's rank only with one (they may have heard us
            // as a root of another rank under the number we had).
            self.own_seq += 1;
            self.dirty = true;
        }
        self.root = self.me;
        self.root_rank = self.own_rank();
        self.parent = None;
        self.depth = 0;
        self.up = Route::from(Label::SELF);
        self.down = Route::from(Label::SELF);
        self.seq = self.own_seq;
    }
}

/// Fewer links than this give rank 0: below it, how many links a node has says little about
/// its place (in a physical mesh every node has a handful, changing as radios move; a
/// random geometric graph of 1,000 nodes has nodes of 16–18 links at random spots), and the
/// key decides as it always did.
pub const RANKED_FROM: usize = 32;

/// The rank of a node with `links` links: 0 below [`RANKED_FROM`], else four steps per
/// doubling (the largest `r` with 2^(r/4) <= links; 32 links: 20, 40: 21, 100: 26, 242: 31).
pub fn rank_for(links: usize) -> u8 {
    if links < RANKED_FROM {
        return 0;
    }
    ((links as f64).log2() * 4.0 + 1e-9).floor().min(255.0) as u8
}

/// The order in which a node takes equally near peers heard at the same instant as its
/// parent: its own shuffle of its directors. With the lowest director (or the first heard)
/// first, every node of a grid made the same turn, the tree's paths were L-shaped, and the
/// middle of the longest one (where the double sweep puts the root) was a corner.
fn tie_order(me: &PublicKey, d: Director) -> u64 {
    let k = u64::from_le_bytes(me.0[..8].try_into().expect("8 bytes"));
    mix64(k ^ u64::from(d).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// splitmix64's finaliser: every bit of `z` stirred into every bit of the result.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Where a root stands in the order roots are chosen by: rank, then a number from the key
/// (0 in the main tree, a hash of it in the others), then the key.
type RootOrder = (u8, u64, PublicKey);

/// Hashed tree `index`'s order of roots: a hash of the key salted with the index, unrelated
/// to the order of keys (the main tree's root is the largest key where no node ranks) and
/// to the other trees' orders, so each root is somewhere else.
fn hashed_order(key: &PublicKey, index: u8) -> u64 {
    let k = u64::from_le_bytes(key.0[8..16].try_into().expect("8 bytes"));
    mix64(k ^ 0x5851_f42d_4c95_7f2d_u64.wrapping_mul(u64::from(index)))
}

/// The fewest links of rank `rank`: 2^(rank/4).
fn rank_floor(rank: u8) -> f64 {
    (f64::from(rank) / 4.0).exp2()
}

/// The route through the tree from the node at (`up`, `down`, `depth`) to the node at
/// `target` (a route from the root): climb to the last node both routes from the root share,
/// then descend; relayed by the node where it turns if it doesn't fit in one label.
/// [`Label::SELF`] when they are the same node. The route is packed into as few segments as
/// hold it (`None` if that is more than a route has).
fn tree_route(up: &Route, down: &Route, depth: u8, target: &Route) -> Option<Route> {
    let (climb, shared) = tree_turn(up, down, depth, target)?;
    Route::from_directors(
        up.directors()
            .take(climb)
            .chain(target.directors().skip(shared)),
    )
}

/// The hops of [`tree_route`]'s route (`target_hops`: `target.hops()`), without building it.
fn tree_hops(
    up: &Route,
    down: &Route,
    depth: u8,
    target: &Route,
    target_hops: usize,
) -> Option<usize> {
    let (climb, shared) = tree_turn(up, down, depth, target)?;
    Some(climb + target_hops - shared)
}

/// Where [`tree_route`] turns: the hops it climbs, and how many of `target`'s directors (from
/// the root) it shares with `down` and so skips.
fn tree_turn(up: &Route, down: &Route, depth: u8, target: &Route) -> Option<(usize, usize)> {
    if !up.is_valid() || !down.is_valid() || up.hops() != depth as usize {
        return None;
    }
    let shared = down
        .directors()
        .zip(target.directors())
        .take_while(|(a, b)| a == b)
        .count();
    Some((depth as usize - shared.min(depth as usize), shared))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `b`-th smallest of 48 mesh keys (roots must be mesh keys): larger `b`, larger key.
    fn key(b: u8) -> PublicKey {
        use rand::SeedableRng;
        static KEYS: std::sync::OnceLock<Vec<PublicKey>> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(77);
            let mut keys: Vec<PublicKey> = (0..48)
                .map(|_| crypto::Identity::generate(&mut rng).public_key())
                .collect();
            keys.sort();
            keys
        })[b as usize]
    }

    #[test]
    fn roots_must_be_mesh_keys_and_are_bounded() {
        let now = Instant::now();
        let mut t = Tree::new(key(1), now);
        t.heard(now, 0, at_root(PublicKey([0xff; 32]), 1, 3));
        assert_eq!(t.root(), key(1), "a key outside fc00::/8 is no root");
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(78);
        for _ in 0..2 * MAX_ROOTS {
            let k = crypto::Identity::generate(&mut rng).public_key();
            t.heard(now, 1, at_root(k, 1, 2));
        }
        assert_eq!(
            t.roots.len(),
            MAX_ROOTS,
            "a root per message can't grow the memory"
        );
        t.heard(now, 2, at_root(key(15), 1, 4));
        assert!(t.roots.len() <= MAX_ROOTS);
    }

    /// On a line of 9 (root: the largest key, at the end), every node knows its height and
    /// the root's.
    #[test]
    fn heights_climb_to_the_root() {
        let trees = line(9);
        assert_eq!(trees[8].root(), key(9));
        for (i, t) in trees.iter().enumerate() {
            assert_eq!((t.height(), t.root_height()), (i as u8, 8), "node {i}");
        }
    }

    /// A line of 20 whose largest key is fourth from one end: the far end from it claims the
    /// root, then the middle of the line does; then nobody.
    #[test]
    fn the_root_moves_to_the_middle_of_a_line() {
        let n = 20;
        let mut keys: Vec<u8> = (1..=n as u8).collect();
        keys.swap(3, n - 1);
        let edges: Vec<(usize, usize)> = (1..n).map(|i| (i - 1, i)).collect();
        let t0 = Instant::now();
        let (mut trees, links) = mesh_with_links(&keys, &edges, t0);
        let root_at = |trees: &[Tree]| {
            let root = trees[0].root();
            assert!(trees.iter().all(|t| t.root() == root), "one root");
            keys.iter().position(|&k| key(k) == root).unwrap()
        };
        assert_eq!((root_at(&trees), trees[0].root_height()), (3, 16));
        let mut seen = vec![3];
        for s in 1..=20 {
            rounds(&mut trees, &links, t0 + Duration::from_millis(500 * s));
            let at = root_at(&trees);
            if seen.last() != Some(&at) {
                seen.push(at);
            }
        }
        // Depth 16 from node 3: node 19; then half of 19 hops from it: node 10.
        assert_eq!(seen, vec![3, 19, 10]);
        assert_eq!(trees[10].rank_as_root(), 2);
        assert_eq!(trees[0].root_height(), 10);
    }

    /// On a 6x6 grid the sweep's root is not a corner (eccentricity 10): peers heard at the
    /// same instant are taken in each node's own order, so the tree's paths are staircases,
    /// not all the same L.
    #[test]
    fn on_a_grid_the_root_moves_off_the_corners() {
        let w = 6;
        let keys: Vec<u8> = (1..=(w * w) as u8).collect();
        let mut edges = Vec::new();
        for i in 0..w * w {
            if i % w + 1 < w {
                edges.push((i, i + 1));
            }
            if i + w < w * w {
                edges.push((i, i + w));
            }
        }
        let t0 = Instant::now();
        let (mut trees, links) = mesh_with_links(&keys, &edges, t0);
        for s in 1..=20 {
            rounds(&mut trees, &links, t0 + Duration::from_millis(500 * s));
        }
        let root = trees[0].root();
        assert!(trees.iter().all(|t| t.root() == root));
        assert_eq!(trees[0].rank_as_root(), 2, "the sweep ran");
        assert!(
            trees[0].root_height() < 10,
            "root height {}",
            trees[0].root_height()
        );
    }

    /// A tree of fewer than [`SWEEP_FROM`] levels keeps its root.
    #[test]
    fn a_shallow_tree_keeps_its_root() {
        let keys: Vec<u8> = (1..=8).collect();
        let edges: Vec<(usize, usize)> = (1..8).map(|i| (i - 1, i)).collect();
        let t0 = Instant::now();
        let (mut trees, links) = mesh_with_links(&keys, &edges, t0);
        for s in 1..=20 {
            rounds(&mut trees, &links, t0 + Duration::from_millis(500 * s));
        }
        assert!(trees.iter().all(|t| t.root() == key(8)));
    }

    /// What a root of rank 24 (64 links, more than the trees under test have) says to a
    /// peer on its director `director`.
    fn at_root(root: PublicKey, seq: u64, director: Director) -> Announcement {
        ranked(root, 24, seq, director)
    }

    /// What a root of rank `rank` says to a peer on its director `director`.
    fn ranked(root: PublicKey, rank: u8, seq: u64, director: Director) -> Announcement {
        Announcement {
            root,
            rank,
            seq,
            depth: 0,
            up: Route::from(Label::SELF),
            down: Route::from(Label::SELF),
            director,
            root_height: 0,
            height: 0,
            child: false,
        }
    }

    /// Nodes with keys `keys[i]`, linked by `edges` (node `i`'s director for a link is the
    /// link's place among node `i`'s links), announcing until nothing changes.
    fn mesh(keys: &[u8], edges: &[(usize, usize)]) -> Vec<Tree> {
        mesh_with_links(keys, edges, Instant::now()).0
    }

    /// Each node's links: (neighbour, the neighbour's director back to us), in director order.
    type Links = Vec<Vec<(usize, Director)>>;

    /// [`mesh`], also giving the links, for more rounds later ([`rounds`]).
    fn mesh_with_links(keys: &[u8], edges: &[(usize, usize)], now: Instant) -> (Vec<Tree>, Links) {
        mesh_of(keys, edges, now, 0)
    }

    /// [`mesh_with_links`] for tree `index` (0 the main one, 1 the second).
    fn mesh_of(
        keys: &[u8],
        edges: &[(usize, usize)],
        now: Instant,
        index: u8,
    ) -> (Vec<Tree>, Links) {
        let n = keys.len();
        let mut trees: Vec<Tree> = keys
            .iter()
            .map(|&k| Tree::nth(key(k), now, index))
            .collect();
        // links[i]: (neighbour, our director to it, its director to us).
        let mut links: Vec<Vec<(usize, Director)>> = vec![Vec::new(); n];
        for &(a, b) in edges {
            links[a].push((b, 0));
            links[b].push((a, 0));
        }
        let dir = |links: &Vec<Vec<(usize, Director)>>, from: usize, to: usize| {
            links[from].iter().position(|&(x, _)| x == to).unwrap() as Director
        };
        for i in 0..n {
            for k in 0..links[i].len() {
                let j = links[i][k].0;
                links[i][k].1 = dir(&links, j, i);
            }
        }
        rounds(&mut trees, &links, now);
        (trees, links)
    }

    /// Every node ticks at `now`, then announces to every peer, round after round, until
    /// news has crossed the mesh.
    fn rounds(trees: &mut [Tree], links: &Links, now: Instant) {
        for t in trees.iter_mut() {
            t.tick(now);
        }
        for _ in 0..2 * trees.len() {
            for i in 0..trees.len() {
                for (d, &(j, back)) in links[i].iter().enumerate() {
                    let said = Announcement::from_control(&trees[i].announcement(d as Director));
                    trees[j].heard(now, back, said.unwrap());
                }
            }
        }
    }

    /// A line of nodes with keys 1..=n, each knowing its two neighbours on directors 0
    /// (left) and 1 (right; the first node's only link is its director 0).
    fn line(n: usize) -> Vec<Tree> {
        let keys: Vec<u8> = (1..=n as u8).collect();
        let edges: Vec<(usize, usize)> = (1..n).map(|i| (i - 1, i)).collect();
        mesh(&keys, &edges)
    }

    /// Where `route` from node `a` of [`line`] ends.
    fn walk_line(a: usize, route: &Route) -> usize {
        let mut at = a as isize;
        for d in route.directors() {
            // Node 0's director 0 goes right; everyone else's 0 goes left.
            at += if d == 1 || at == 0 { 1 } else { -1 };
        }
        at as usize
    }

    /// The route from node `a` of [`line`] to node `b` (`None` for `a == b`), checked to end
    /// at `b` and to be the shortest.
    fn line_route(trees: &[Tree], a: usize, b: usize) -> Option<Route> {
        let c = trees[b].coord().unwrap();
        let route = trees[a].route_to(&c.root, c.down);
        if a == b {
            assert_eq!(route, None);
            return None;
        }
        let route = route.unwrap();
        assert_eq!(walk_line(a, &route), b, "{a} -> {b} via {route}");
        assert_eq!(route.hops(), a.abs_diff(b), "shortest on a line");
        Some(route)
    }

    /// A ring of 16: the main tree is rooted at the largest key and cuts the ring at the link
    /// opposite it; each hashed tree, rooted by its own hash of the keys, elsewhere, cuts it
    /// elsewhere. Every tree's routes lead where they should, each hashed tree shortens some
    /// of the main tree's routes, and more trees never make a route longer.
    #[test]
    fn the_hashed_trees_have_their_own_roots_and_shorten_routes() {
        let n = 16;
        let keys: Vec<u8> = (1..=n as u8).collect();
        let edges: Vec<(usize, usize)> = (0..n).map(|i| (i, (i + 1) % n)).collect();
        let now = Instant::now();
        let trees: Vec<Vec<Tree>> = (0..TREES as u8)
            .map(|i| mesh_of(&keys, &edges, now, i).0)
            .collect();
        assert!(trees[0].iter().all(|t| t.root() == key(n as u8)));
        let mut tops = vec![n - 1];
        for (i, tree) in trees.iter().enumerate().skip(1) {
            let top = (0..n)
                .max_by_key(|&j| hashed_order(&key(keys[j]), i as u8))
                .unwrap();
            assert!(tree
                .iter()
                .all(|t| t.root() == key(keys[top]) && t.rank_as_root() == 0));
            assert!(!tops.contains(&top), "these keys put the roots apart");
            tops.push(top);
        }
        // Node 0's director 0 leads to node 1, its 1 to node 15; everyone else's 0 leads
        // back (i - 1), 1 on (i + 1).
        let walk = |a: usize, r: &Route| {
            r.directors().fold(a, |at, d| {
                let right = (d == 1) != (at == 0);
                if right {
                    (at + 1) % n
                } else {
                    (at + n - 1) % n
                }
            })
        };
        // Total hops over all pairs with the first 1, 2, ... trees, and with the main tree
        // and each hashed tree alone.
        let mut total = vec![0; TREES];
        let mut pair = vec![0; TREES];
        for a in 0..n {
            for b in (0..n).filter(|&b| b != a) {
                let via = |trees: &[Tree]| {
                    let c = trees[b].coord().unwrap();
                    let r = trees[a].route_to(&c.root, c.down).unwrap();
                    assert_eq!(walk(a, &r), b, "{a} -> {b} via {r}");
                    r.hops()
                };
                let hops: Vec<usize> = trees.iter().map(|t| via(t)).collect();
                let mut best = usize::MAX;
                for i in 0..TREES {
                    best = best.min(hops[i]);
                    total[i] += best;
                    pair[i] += hops[0].min(hops[i]);
                }
            }
        }
        assert!(
            total.windows(2).all(|w| w[1] <= w[0]) && total[TREES - 1] < total[0],
            "more trees, shorter routes: {total:?} hops"
        );
        assert!(
            pair.iter().skip(1).all(|&p| p < pair[0]),
            "each hashed tree shortens some of the main tree's routes: {pair:?} hops"
        );
    }

    #[test]
    fn a_line_roots_at_the_largest_key_and_routes_between_any_two() {
        let n = 6;
        let trees = line(n);
        for (i, t) in trees.iter().enumerate() {
            assert_eq!(t.root(), key(n as u8), "node {i}");
            assert_eq!(t.depth() as usize, n - 1 - i);
        }
        // Walk the route from every node to every other: directors 0 = left, 1 = right.
        for a in 0..n {
            for b in 0..n {
                line_route(&trees, a, b);
            }
        }
    }

    #[test]
    fn coordinates_deeper_than_a_label_take_several_segments() {
        // 47 nodes: the root (the largest key) at the right end, node 0 46 hops below it,
        // more than one label holds (31 hops through 2-link nodes).
        let n = 47;
        let trees = line(n);
        for (i, t) in trees.iter().enumerate() {
            assert_eq!(t.root(), key(n as u8), "node {i}");
            let c = t
                .coord()
                .unwrap_or_else(|| panic!("node {i} has a coordinate"));
            assert_eq!(c.down.hops(), n - 1 - i);
            assert_eq!(c.down.segments().len(), if n - 1 - i > 31 { 2 } else { 1 });
        }
        for a in (0..n).step_by(3) {
            for b in 0..n {
                if let Some(route) = line_route(&trees, a, b) {
                    assert_eq!(route.segments().len(), a.abs_diff(b).div_ceil(31));
                }
            }
        }
        // The wire carries the segments, and they come back the same.
        let said = Announcement::from_control(
            &Control::from_bytes(&trees[0].announcement(0).to_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(said.down, trees[0].coord().unwrap().down);
        assert_eq!(said.up.hops(), n - 1);
    }

    #[test]
    fn a_node_cut_off_from_the_root_does_not_take_its_descendants_as_parents() {
        // Line 0-1-2-3-4-5 rooted at node 5 (the largest key). The link 4-5 fails: nodes
        // 0-4 still name the root, and node 3 still offers the way through node 4 (at depth
        // 2). Taking it would make a loop whose depths count up until the root's number goes
        // stale; instead they wait, cut off, for a newer number.
        let n = 6;
        let mut trees = line(n);
        let now = Instant::now();
        // Node i's director to i+1, and node i+1's director to i.
        let right = |i: usize| if i == 0 { 0 } else { 1 };
        // Nodes 0-4 tell each other their places, `rounds` times over.
        let announce = |trees: &mut Vec<Tree>, rounds: usize| {
            for _ in 0..rounds {
                for i in 0..n - 2 {
                    let (a, b) = (
                        trees[i].announcement(right(i)),
                        trees[i + 1].announcement(0),
                    );
                    trees[i + 1].heard(now, 0, Announcement::from_control(&a).unwrap());
                    trees[i].heard(now, right(i), Announcement::from_control(&b).unwrap());
                }
            }
        };
        trees[4].link_down(now, right(4));
        assert_eq!(trees[4].parent(), None);
        assert!(
            trees[4].coord().is_none(),
            "no way to the root, no coordinate"
        );
        announce(&mut trees, 4 * n);
        for (i, t) in trees.iter().enumerate().take(n - 1) {
            assert_eq!(t.root(), key(n as u8), "node {i} still follows the root");
            assert_eq!(t.parent(), None, "node {i}: no loop");
            assert!(
                t.depth() as usize <= n - 1 - i,
                "node {i}: depth counted up"
            );
        }
        // The root's next number over a new link to node 2 brings them all back.
        trees[2].heard(now, 2, at_root(key(n as u8), 9, 0));
        announce(&mut trees, n);
        for (i, t) in trees.iter().enumerate().take(n - 1) {
            assert!(t.coord().is_some(), "node {i} is back in the tree");
            assert_eq!(t.depth() as usize, 1 + i.abs_diff(2), "node {i}");
        }
    }

    #[test]
    fn a_dead_root_is_replaced_by_the_next_largest() {
        let now = Instant::now();
        let mut t = Tree::new(key(1), now);
        t.heard(now, 0, at_root(key(9), 1, 3));
        assert_eq!(t.root(), key(9));
        assert_eq!(
            t.coord().unwrap().down,
            Route::from(Label::single(3).unwrap())
        );
        // Another peer offers a smaller root, still counting.
        let mut when = now;
        for s in 1..6 {
            when = now + ANNOUNCE_EVERY * s;
            t.heard(when, 1, at_root(key(5), s as u64, 2));
            t.tick(when);
        }
        assert_eq!(t.root(), key(5), "key 9 stopped counting");
        // The old number again (an echo from a slow peer) does not bring it back.
        t.heard(when, 0, at_root(key(9), 1, 3));
        assert_eq!(t.root(), key(5));
        // A newer one does: it restarted.
        t.heard(when, 0, at_root(key(9), 2, 3));
        assert_eq!(t.root(), key(9));
        t.link_down(when, 0);
        t.link_down(when, 1);
        assert_eq!(t.root(), key(1), "alone: our own root");
    }

    #[test]
    fn the_best_linked_node_is_root_whatever_its_key() {
        // A star: the hub (the smallest key) has 33 links, rank 20; the leaves one each.
        let keys: Vec<u8> = std::iter::once(1).chain(14..47).collect();
        let edges: Vec<(usize, usize)> = (1..keys.len()).map(|i| (0, i)).collect();
        let trees = mesh(&keys, &edges);
        assert_eq!(trees[0].rank(), 20);
        for (i, t) in trees.iter().enumerate() {
            assert_eq!(t.root(), key(1), "node {i}: {t:?}");
            assert_eq!(t.depth(), u8::from(i > 0));
        }
        assert_eq!(trees[1].rank(), 0);
        let c = trees[4].coord().unwrap();
        assert_eq!(trees[1].route_to(&c.root, c.down).unwrap().hops(), 2);
        // Below 32 links the key decides: the same star with 31 leaves roots at a leaf.
        let trees = mesh(&keys[..32], &edges[..31]);
        assert_eq!(trees[0].root(), key(44));
    }

    #[test]
    fn a_rank_falls_only_well_below_its_bound() {
        let now = Instant::now();
        let mut t = Tree::new(key(1), now);
        for d in 0..32 {
            t.heard(now, d, at_root(key(9), 1, 3));
        }
        assert_eq!(t.rank(), 20, "32 links");
        for d in 24..32 {
            t.link_down(now, d);
        }
        assert_eq!(t.rank(), 20, "24 links: still 3/4 of 32");
        t.link_down(now, 23);
        assert_eq!(t.rank(), 0, "23");
        for d in 23..40 {
            t.heard(now, d, at_root(key(9), 1, 3));
        }
        assert_eq!(
            t.rank(),
            21,
            "a rank rises as soon as the links are there (40)"
        );
    }

    #[test]
    fn roots_are_ordered_by_rank_and_a_new_rank_needs_a_newer_number() {
        let now = Instant::now();
        let mut t = Tree::new(key(1), now);
        t.heard(now, 0, ranked(key(9), 24, 1, 3));
        t.heard(now, 1, ranked(key(5), 30, 1, 3));
        assert_eq!(
            t.root(),
            key(5),
            "rank 30 before rank 24, whatever the keys"
        );
        // The same number with another rank (a stale or made-up echo) changes nothing.
        t.heard(now, 1, ranked(key(5), 20, 1, 3));
        assert_eq!(t.root(), key(5));
        // A newer number with the lower rank: key 9 comes first now.
        t.heard(now, 1, ranked(key(5), 20, 2, 3));
        assert_eq!(t.root(), key(9));
        assert_eq!(
            Announcement::from_control(&t.announcement(0)).unwrap().rank,
            24,
            "the root's rank is passed on"
        );
    }

    #[test]
    fn a_root_announces_a_new_rank_with_a_new_number() {
        let now = Instant::now();
        let mut t = Tree::new(key(47), now);
        for d in 0..31 {
            t.heard(now, d, ranked(key(1), 0, 1, 3));
        }
        assert_eq!(t.root(), key(47), "rank 0 each; the larger key");
        t.take_dirty(now);
        let before = Announcement::from_control(&t.announcement(0)).unwrap();
        t.heard(now, 31, ranked(key(1), 0, 1, 3));
        let after = Announcement::from_control(&t.announcement(0)).unwrap();
        assert_eq!((before.rank, after.rank), (0, 20));
        assert!(after.seq > before.seq);
        assert!(t.take_dirty(now), "announced at once");
    }
}
