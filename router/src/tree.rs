//! A spanning tree over the links, so any two nodes have a short route without searching for
//! one (the idea of Yggdrasil's tree, on meshd's labels).
//!
//! The root is the largest key alive; it counts a sequence number up every
//! [`ANNOUNCE_EVERY`], and every node passes the newest number on to its peers as soon as it
//! hears it from its parent. A root whose number stops moving for [`ROOT_TIMEOUT`] is dead,
//! and the next largest key takes over. Each node's parent is the peer nearest the root
//! (fewest hops; the current parent keeps its place on a tie). A node's place in the tree is
//! two labels: `down`, the route from the root to it (its parent's `down` plus the parent's
//! director for the link), and `up`, the route from it to the root.
//!
//! Between two nodes A and B under the same root, the tree route climbs from A to the last
//! node their `down` routes share and descends from there to B ([`Tree::route_to`]). The DHT
//! carries these `down` routes next to keys (control.rs, [`crate::control::Coord`]), so a
//! lookup's answer gives a route that does not depend on where the answer came from.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crypto::PublicKey;
use switch::{Director, Label, Route};

use crate::control::{Control, Coord};

/// The root counts up this often; nodes re-announce at least this often.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
/// A root whose sequence number has not moved for this long is taken for dead.
pub const ROOT_TIMEOUT: Duration = Duration::from_secs(7);
/// A peer's announcement older than this is ignored.
const PEER_STALE: Duration = Duration::from_secs(7);
/// Most roots remembered at once.
const MAX_ROOTS: usize = 32;
/// Deepest place in the tree (a label holds at most 31 hops, through 2-link nodes; deeper
/// coordinates would not fit anyway).
const MAX_DEPTH: u8 = 31;

/// A peer's place in the tree, as its [`Control::Tree`] announcement says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// Its root.
    pub root: PublicKey,
    /// The root's sequence number it last heard.
    pub seq: u64,
    /// Its hops to the root.
    pub depth: u8,
    /// Its route up to the root.
    pub up: Label,
    /// The route from the root down to it.
    pub down: Label,
    /// Its director for the link to us.
    pub director: Director,
}

impl Announcement {
    /// The announcement a [`Control::Tree`] message carries.
    pub fn from_control(msg: &Control) -> Option<Announcement> {
        match *msg {
            Control::Tree {
                root,
                seq,
                depth,
                up,
                down,
                director,
            } => Some(Announcement {
                root,
                seq,
                depth,
                up: Label(up),
                down: Label(down),
                director,
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
    /// When `seq` last moved on.
    moved: Instant,
}

/// This node's view of the spanning tree.
#[derive(Debug)]
pub struct Tree {
    me: PublicKey,
    peers: BTreeMap<Director, PeerPlace>,
    roots: BTreeMap<PublicKey, RootSeen>,
    /// Roots that timed out, with the last number seen: they come back only with a newer one.
    dead: BTreeMap<PublicKey, u64>,
    parent: Option<Director>,
    root: PublicKey,
    seq: u64,
    depth: u8,
    up: Label,
    down: Label,
    /// Our own count, used while we are the root.
    own_seq: u64,
    next_announce: Instant,
    /// Something peers should hear about changed.
    dirty: bool,
}

impl Tree {
    /// A tree in which we are the root until we hear of a larger key.
    pub fn new(me: PublicKey, now: Instant) -> Tree {
        Tree {
            me,
            peers: BTreeMap::new(),
            roots: BTreeMap::new(),
            dead: BTreeMap::new(),
            parent: None,
            root: me,
            seq: 0,
            depth: 0,
            up: Label::SELF,
            down: Label::SELF,
            own_seq: 0,
            next_announce: now,
            dirty: true,
        }
    }

    /// Our place: root and route from it down to us (`None` if our labels overflowed).
    pub fn coord(&self) -> Option<Coord> {
        self.down.is_valid().then_some(Coord {
            root: self.root,
            down: self.down.0,
        })
    }

    /// The root we follow.
    pub fn root(&self) -> PublicKey {
        self.root
    }

    /// Hops to the root.
    pub fn depth(&self) -> u8 {
        self.depth
    }

    /// The link to our parent (`None` at the root).
    pub fn parent(&self) -> Option<Director> {
        self.parent
    }

    /// The shortest route we can build to the node whose route from `root` is `down`, if we
    /// are under the same root: the tree route from us (up to the last node both routes
    /// share, then down), or through one of our peers, from its own place in the tree (one
    /// hop of look-ahead: a peer on another branch is often a shortcut in a physical mesh).
    ///
    /// Where the route doesn't fit in one label, the node where it turns from climbing to
    /// descending relays it (a route of two segments).
    pub fn route_to(&self, root: &PublicKey, down: Label) -> Option<Route> {
        if *root != self.root
            || !self.down.is_valid()
            || !down.is_well_formed()
            || down == self.down
        {
            return None;
        }
        let mine = tree_route(self.up, self.down, self.depth, down)
            .filter(|r| *r != Route::from(Label::SELF));
        let via_peers = self
            .peers
            .iter()
            .filter(|(_, p)| p.said.root == *root)
            .filter_map(|(&d, p)| {
                let p = &p.said;
                let rest = tree_route(p.up, p.down, p.depth, down)?;
                Route::from(Label::single(d).ok()?).join(rest).ok()
            });
        mine.into_iter()
            .chain(via_peers)
            .min_by_key(|r| (r.hops(), r.segments().len(), r.first().bit_len()))
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
            let Some(smallest) = self.roots.keys().next().copied() else {
                return;
            };
            if smallest > root || smallest == self.root {
                return;
            }
            self.roots.remove(&smallest);
        }
        self.dead.remove(&root);
        let r = self
            .roots
            .entry(root)
            .or_insert(RootSeen { seq, moved: now });
        if seq > r.seq {
            *r = RootSeen { seq, moved: now };
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

    /// Ages roots and peers; as root, counts up. Returns whether to announce to every peer now.
    pub fn tick(&mut self, now: Instant) -> bool {
        let dead: Vec<PublicKey> = self
            .roots
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.moved) >= ROOT_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
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
        self.peers
            .retain(|_, p| now.saturating_duration_since(p.heard) < PEER_STALE);
        self.reselect(now);
        if now >= self.next_announce {
            if self.root == self.me {
                self.own_seq += 1;
                self.seq = self.own_seq;
            }
            self.dirty = true;
        }
        self.take_dirty(now)
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
            seq: self.seq,
            depth: self.depth,
            up: self.up.0,
            down: self.down.0,
            director: d,
        }
    }

    fn alive(&self, root: &PublicKey) -> bool {
        self.roots.contains_key(root)
    }

    /// Picks root and parent from what the peers said.
    fn reselect(&mut self, _now: Instant) {
        // The largest live root anyone offers (ourselves if larger).
        let best_root = self
            .peers
            .values()
            .map(|p| &p.said)
            .filter(|p| self.alive(&p.root) && p.root > self.me && p.depth < MAX_DEPTH)
            .map(|p| p.root)
            .max();
        let Some(root) = best_root else {
            self.become_root();
            return;
        };
        let newest = self.roots.get(&root).map_or(0, |r| r.seq);
        // Peers under that root with a recent number; nearest first, the current parent
        // first among equals, then the lowest director.
        let parent = self.parent;
        let choice = self
            .peers
            .iter()
            .map(|(&d, p)| (d, p.said))
            .filter(|(_, p)| p.root == root && p.seq + 1 >= newest && p.depth < MAX_DEPTH)
            .min_by_key(|(d, p)| (p.depth, Some(*d) != parent, *d));
        let Some((d, p)) = choice else {
            self.become_root();
            return;
        };
        let down = Label::single(p.director)
            .ok()
            .and_then(|hop| p.down.splice(hop).ok())
            .filter(|_| p.down.is_valid())
            .unwrap_or(Label::INVALID);
        let up = Label::single(d)
            .ok()
            .and_then(|hop| hop.splice(p.up).ok())
            .filter(|_| p.up.is_valid())
            .unwrap_or(Label::INVALID);
        let root_changed = self.root != root;
        let changed = root_changed
            || self.parent != Some(d)
            || self.down != down
            || self.up != up
            || self.depth != p.depth + 1;
        let newer = p.seq > self.seq;
        self.root = root;
        self.parent = Some(d);
        self.depth = p.depth + 1;
        self.down = down;
        self.up = up;
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

    fn become_root(&mut self) {
        if self.root != self.me {
            self.dirty = true;
        }
        self.root = self.me;
        self.parent = None;
        self.depth = 0;
        self.up = Label::SELF;
        self.down = Label::SELF;
        self.seq = self.own_seq;
    }
}

/// The route through the tree from the node at (`up`, `down`, `depth`) to the node at
/// `target` (a route from the root): climb to the last node both routes from the root share,
/// then descend; relayed by the node where it turns if it doesn't fit in one label.
/// [`Label::SELF`] when they are the same node.
fn tree_route(up: Label, down: Label, depth: u8, target: Label) -> Option<Route> {
    if !up.is_valid() || !down.is_valid() || up.hops() != depth as usize {
        return None;
    }
    let shared = down
        .directors()
        .zip(target.directors())
        .take_while(|(a, b)| a == b)
        .count();
    let climb = up.prefix(depth as usize - shared.min(depth as usize));
    let descend = target.strip_prefix(target.prefix(shared))?;
    Route::from(climb).join(Route::from(descend)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `b`-th smallest of 16 mesh keys (roots must be mesh keys): larger `b`, larger key.
    fn key(b: u8) -> PublicKey {
        use rand::SeedableRng;
        static KEYS: std::sync::OnceLock<Vec<PublicKey>> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(77);
            let mut keys: Vec<PublicKey> = (0..16)
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

    /// What a root says to a peer on its director `director`.
    fn at_root(root: PublicKey, seq: u64, director: Director) -> Announcement {
        Announcement {
            root,
            seq,
            depth: 0,
            up: Label::SELF,
            down: Label::SELF,
            director,
        }
    }

    /// A line of nodes with keys 1..=n (the last is the root), each knowing its two
    /// neighbours on directors 0 (left) and 1 (right), announcing until nothing changes.
    fn line(n: usize) -> Vec<Tree> {
        let now = Instant::now();
        let mut trees: Vec<Tree> = (0..n).map(|i| Tree::new(key(i as u8 + 1), now)).collect();
        for t in &mut trees {
            t.tick(now);
        }
        for _ in 0..2 * n {
            for i in 0..n {
                let right = (i + 1 < n).then(|| trees[i].announcement(1));
                let left = (i > 0).then(|| trees[i].announcement(0));
                for (msg, to, via) in [(right, i + 1, 0), (left, i.wrapping_sub(1), 1)] {
                    if let Some(said) = msg.as_ref().and_then(Announcement::from_control) {
                        trees[to].heard(now, via, said);
                    }
                }
            }
        }
        trees
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
                let c = trees[b].coord().unwrap();
                let route = trees[a].route_to(&c.root, Label(c.down));
                if a == b {
                    assert_eq!(route, None);
                    continue;
                }
                let route = route.unwrap();
                let end = route
                    .segments()
                    .iter()
                    .flat_map(|s| s.directors())
                    .fold(a as isize, |at, d| at + if d == 1 { 1 } else { -1 });
                assert_eq!(end as usize, b, "{a} -> {b} via {route}");
                assert_eq!(route.hops(), a.abs_diff(b), "shortest on a line");
            }
        }
    }

    #[test]
    fn a_dead_root_is_replaced_by_the_next_largest() {
        let now = Instant::now();
        let mut t = Tree::new(key(1), now);
        t.heard(now, 0, at_root(key(9), 1, 3));
        assert_eq!(t.root(), key(9));
        assert_eq!(t.coord().unwrap().down, Label::single(3).unwrap().0);
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
}
