//! The Kademlia routing table: nodes in buckets by how many leading address bits they share
//! with us, at most `k` per bucket, so the table grows like O(k log n). Each entry keeps a few
//! verified paths (labels) with measured RTT. Direct peers go in under the same `k` rule
//! (their one-hop path puts them ahead of entries with longer ones) and, once in, are pinned;
//! a hub's further peers live in its link table only (IP packets to a direct peer go over its
//! link without the table; `Node::link_route`).

use std::time::{Duration, Instant};

use crypto::{Address, PublicKey};
use switch::{Label, Route};

/// A path to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Path {
    /// The route.
    pub route: Route,
    /// Last measured round trip.
    pub rtt: Option<Duration>,
    /// Last time something proved the path works.
    pub last_ok: Instant,
    /// Set when an error or a missed probe says the path broke.
    pub failed_at: Option<Instant>,
}

impl Path {
    fn score(&self) -> (bool, u128, usize) {
        (
            self.failed_at.is_some(),
            self.rtt.map_or(u128::MAX / 2, |r| {
                r.as_micros() + self.route.hops() as u128 * 50
            }),
            self.route.hops(),
        )
    }
}

/// A routing table entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The node's key.
    pub key: PublicKey,
    /// Its address (hash of the key).
    pub addr: Address,
    /// Known paths, best first.
    pub paths: Vec<Path>,
    /// Last time we heard from it.
    pub last_seen: Instant,
    /// Direct peers in the table are never evicted.
    pub pinned: bool,
    /// Its place in the spanning tree, as it (or someone who knew it) told us.
    pub coord: Option<crate::control::Coord>,
    /// Its places in the hashed trees (tree.rs, "More trees"): `alts[i]` in tree `i + 1`.
    pub alts: [Option<crate::control::Coord>; crate::control::ALT_TREES],
}

impl Entry {
    /// Its place in tree `tree` (0 the main one, then the hashed ones).
    pub fn place_mut(&mut self, tree: usize) -> &mut Option<crate::control::Coord> {
        match tree {
            0 => &mut self.coord,
            i => &mut self.alts[i - 1],
        }
    }

    /// Its place in every tree, the main one first.
    pub fn places(&self) -> [Option<crate::control::Coord>; crate::tree::TREES] {
        crate::control::join(self.coord, self.alts)
    }

    /// The best working path.
    pub fn best(&self) -> Option<&Path> {
        self.paths.first().filter(|p| p.failed_at.is_none())
    }

    /// The paths not known to be broken, best first.
    pub fn working(&self) -> impl Iterator<Item = &Path> + Clone {
        self.paths.iter().filter(|p| p.failed_at.is_none())
    }

    /// The best working path that is a single label (what a lookup's answer can carry).
    pub fn one_label(&self) -> Option<Label> {
        self.working().find_map(|p| p.route.single())
    }
    fn sort(&mut self) {
        self.paths.sort_by_key(|p| p.score());
    }
}

/// Entries not heard from for this long are dropped.
pub const ENTRY_TTL: Duration = Duration::from_secs(600);

/// The routing table.
#[derive(Debug)]
pub struct RoutingTable {
    me: Address,
    buckets: Vec<Vec<Entry>>,
    k: usize,
    max_paths: usize,
}

impl RoutingTable {
    /// An empty table for a node at `me`, `k` entries per bucket.
    pub fn new(me: Address, k: usize) -> Self {
        RoutingTable {
            me,
            buckets: (0..128).map(|_| Vec::new()).collect(),
            k,
            max_paths: 4,
        }
    }

    fn bucket(&self, a: &Address) -> Option<usize> {
        let cpl = self.me.common_prefix_len(a);
        (cpl < 128).then_some(cpl as usize)
    }

    /// The entry for `a`.
    pub fn get(&self, a: &Address) -> Option<&Entry> {
        self.buckets[self.bucket(a)?].iter().find(|e| e.addr == *a)
    }
    /// The entry for `a`, mutable.
    pub fn get_mut(&mut self, a: &Address) -> Option<&mut Entry> {
        let b = self.bucket(a)?;
        self.buckets[b].iter_mut().find(|e| e.addr == *a)
    }

    /// Whether a new node at `a` would be taken (its bucket has room, or it's known).
    pub fn has_room_for(&self, a: &Address, now: Instant) -> bool {
        let Some(b) = self.bucket(a) else {
            return false;
        };
        let bucket = &self.buckets[b];
        bucket.len() < self.k
            || bucket
                .iter()
                .any(|e| e.addr == *a || Self::evictable(e, now))
    }

    fn evictable(e: &Entry, now: Instant) -> bool {
        !e.pinned
            && (e.best().is_none()
                || now.saturating_duration_since(e.last_seen) > Duration::from_secs(120))
    }

    /// Records a verified path to `key`. Returns false if the bucket is full of live nodes
    /// (Kademlia keeps the old ones: they are likelier to stay) none of which has a longer
    /// path than the newcomer, unless the newcomer is `in_use` (a destination we talk to or
    /// look up): those go in beyond `k`, and [`RoutingTable::expire`] trims them once no
    /// longer in use. So the table is O(k log n) plus the destinations in use. A `pinned`
    /// newcomer (a direct peer) follows the same rule, and its one-hop path replaces the
    /// entry with the longest; a hub with more peers than fit keeps the rest in its link
    /// table only (before, they all went in, and a hub of 336 links held 419 entries). A
    /// newcomer never evicts an entry that is pinned or in use: a session must not lose its
    /// paths because a lookup heard of a closer node in the same bucket.
    pub fn upsert(
        &mut self,
        key: PublicKey,
        route: impl Into<Route>,
        rtt: Option<Duration>,
        now: Instant,
        pinned: bool,
        in_use: impl Fn(&Address) -> bool,
    ) -> bool {
        let route = route.into();
        let addr = key.address();
        let Some(b) = self.bucket(&addr) else {
            return false;
        };
        let max_paths = self.max_paths;
        let k = self.k;
        let bucket = &mut self.buckets[b];
        let e = match bucket.iter().position(|e| e.addr == addr) {
            Some(i) => &mut bucket[i],
            None => {
                if bucket.len() >= k {
                    // A dead entry goes first; else (proximity neighbour selection) the entry
                    // with the longest path, if the new one is shorter: any node of a bucket
                    // serves a lookup equally well, and short paths in our table make short
                    // labels in our answers, so paths found by lookups stay short.
                    let farthest = || {
                        bucket
                            .iter()
                            .enumerate()
                            .filter(|(_, e)| !e.pinned && !in_use(&e.addr))
                            .filter_map(|(i, e)| Some((i, e.best()?.route.hops())))
                            .max_by_key(|&(_, h)| h)
                            .filter(|&(_, h)| h > route.hops())
                            .map(|(i, _)| i)
                    };
                    match bucket
                        .iter()
                        .position(|e| Self::evictable(e, now) && !in_use(&e.addr))
                        .or_else(farthest)
                    {
                        Some(i) => {
                            bucket.swap_remove(i);
                        }
                        None if in_use(&addr) => {}
                        None => return false,
                    }
                }
                bucket.push(Entry {
                    key,
                    addr,
                    paths: Vec::new(),
                    last_seen: now,
                    pinned,
                    coord: None,
                    alts: [None; crate::control::ALT_TREES],
                });
                bucket.last_mut().expect("just pushed")
            }
        };
        e.pinned |= pinned;
        e.last_seen = now;
        match e.paths.iter_mut().find(|p| p.route == route) {
            Some(p) => {
                p.last_ok = now;
                p.failed_at = None;
                if rtt.is_some() {
                    p.rtt = rtt;
                }
            }
            None => {
                e.paths.push(Path {
                    route,
                    rtt,
                    last_ok: now,
                    failed_at: None,
                });
            }
        }
        e.sort();
        e.paths.truncate(max_paths);
        true
    }

    /// Unpins `a` (its link went down) and drops its direct path.
    pub fn unpin(&mut self, a: &Address, direct: Label, now: Instant) {
        if let Some(e) = self.get_mut(a) {
            e.pinned = false;
            for p in e
                .paths
                .iter_mut()
                .filter(|p| p.route == Route::from(direct))
            {
                p.failed_at.get_or_insert(now);
            }
            e.sort();
        }
    }

    /// Marks every path for which `broken` holds as failed; returns the addresses touched.
    pub fn mark_broken(&mut self, broken: impl Fn(Route) -> bool, now: Instant) -> Vec<Address> {
        let mut touched = Vec::new();
        for e in self.buckets.iter_mut().flatten() {
            let mut hit = false;
            for p in e
                .paths
                .iter_mut()
                .filter(|p| p.failed_at.is_none() && broken(p.route))
            {
                p.failed_at = Some(now);
                hit = true;
            }
            if hit {
                e.sort();
                touched.push(e.addr);
            }
        }
        touched
    }

    /// The `n` entries with a working path closest to `target` by XOR distance.
    pub fn closest(&self, target: &Address, n: usize) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self
            .buckets
            .iter()
            .flatten()
            .filter(|e| e.best().is_some())
            .collect();
        v.sort_by_key(|e| e.addr.distance(target));
        v.truncate(n);
        v
    }

    /// Drops entries unheard-of for [`ENTRY_TTL`], failed paths older than a minute, and
    /// brings buckets back to `k` entries by dropping the least recently seen ones that are
    /// neither pinned nor `in_use`.
    pub fn expire(&mut self, now: Instant, in_use: impl Fn(&Address) -> bool) {
        let k = self.k;
        for b in &mut self.buckets {
            b.retain(|e| e.pinned || now.saturating_duration_since(e.last_seen) < ENTRY_TTL);
            while b.len() > k {
                let Some(i) = b
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| !e.pinned && !in_use(&e.addr))
                    .min_by_key(|(_, e)| e.last_seen)
                    .map(|(i, _)| i)
                else {
                    break;
                };
                b.swap_remove(i);
            }
            for e in b.iter_mut() {
                e.paths.retain(|p| {
                    p.failed_at
                        .is_none_or(|f| now.saturating_duration_since(f) < Duration::from_secs(60))
                });
            }
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// All entries.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flatten()
    }
    /// Index of the deepest non-empty bucket (for refreshes).
    pub fn depth(&self) -> usize {
        self.buckets
            .iter()
            .rposition(|b| !b.is_empty())
            .unwrap_or(0)
    }
    /// Entries in bucket `i`.
    pub fn bucket_len(&self, i: usize) -> usize {
        self.buckets.get(i).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto::Identity;
    use rand::SeedableRng;

    #[test]
    fn buckets_bounded_and_paths_ranked() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let me = Identity::generate(&mut rng);
        let now = Instant::now();
        let mut t = RoutingTable::new(me.address(), 4);
        let ids: Vec<_> = (0..200).map(|_| Identity::generate(&mut rng)).collect();
        for (i, id) in ids.iter().enumerate() {
            t.upsert(
                id.public_key(),
                Label::single((i % 8) as u16).unwrap(),
                None,
                now,
                false,
                |_| false,
            );
        }
        // Roughly half the nodes fall in bucket 0..: each bucket holds at most 4.
        assert!(t.len() <= 4 * 128);
        assert!((0..128).all(|b| t.bucket_len(b) <= 4));
        assert!(t.len() < 40, "O(k log n), got {}", t.len());

        let x = ids[0].public_key();
        if t.get(&x.address()).is_none() {
            t.upsert(x, Label::single(1).unwrap(), None, now, true, |_| false);
        }
        let slow = Label::from_directors(&[1, 2]).unwrap();
        let fast = Label::from_directors(&[3, 2]).unwrap();
        t.upsert(x, slow, Some(Duration::from_millis(9)), now, false, |_| {
            false
        });
        t.upsert(x, fast, Some(Duration::from_millis(2)), now, false, |_| {
            false
        });
        assert_eq!(
            t.get(&x.address()).unwrap().best().unwrap().route,
            Route::from(fast)
        );
        let touched = t.mark_broken(
            |l| {
                l.first().ends_with(Label::single(2).unwrap())
                    && l.hops() == 2
                    && l.first().directors().next() == Some(3)
            },
            now,
        );
        assert_eq!(touched, vec![x.address()]);
        assert_ne!(
            t.get(&x.address()).unwrap().best().unwrap().route,
            Route::from(fast)
        );
        let c = t.closest(&x.address(), 3);
        assert_eq!(c[0].addr, x.address());
    }

    /// A newcomer with a shorter path takes the place of the entry with the longest one, but
    /// never of an entry in use: a session kept losing its destination's paths (and falling
    /// back to older, slower ones) whenever a lookup heard of a nearer node of that bucket.
    #[test]
    fn entries_in_use_are_not_evicted_for_shorter_newcomers() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let me = Identity::generate(&mut rng);
        let now = Instant::now();
        let mut t = RoutingTable::new(me.address(), 2);
        let in_bucket: Vec<_> = (0..64)
            .map(|_| Identity::generate(&mut rng))
            .filter(|i| me.address().common_prefix_len(&i.address()) == 8)
            .collect();
        assert!(in_bucket.len() >= 4);
        let long = Label::from_directors(&[3, 4, 5, 6, 7]).unwrap();
        let short = Label::from_directors(&[3, 4]).unwrap();
        let used = in_bucket[0].address();
        let in_use = |a: &Address| *a == used;
        for i in &in_bucket[..2] {
            assert!(t.upsert(i.public_key(), long, None, now, false, in_use));
        }
        // The one not in use goes for the shorter newcomer...
        assert!(t.upsert(in_bucket[2].public_key(), short, None, now, false, in_use));
        assert!(t.get(&in_bucket[1].address()).is_none());
        // ...the one in use stays, and a bucket of short paths and in-use entries is full.
        assert!(t.get(&used).is_some());
        assert!(!t.upsert(in_bucket[3].public_key(), short, None, now, false, in_use));
        assert!(t.get(&used).is_some());
        // Without the session, the long path goes.
        assert!(
            t.upsert(in_bucket[3].public_key(), short, None, now, false, |_| {
                false
            })
        );
        assert!(t.get(&used).is_none());
    }

    /// A destination in use gets an entry even when its bucket is full of live nodes (else a
    /// lookup finds it and the session still has no path), and loses it once not in use.
    #[test]
    fn destinations_in_use_go_beyond_k_and_are_trimmed_after() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let me = Identity::generate(&mut rng);
        let now = Instant::now();
        let mut t = RoutingTable::new(me.address(), 2);
        let ids: Vec<_> = (0..64).map(|_| Identity::generate(&mut rng)).collect();
        let l = Label::single(1).unwrap();
        // Fill bucket 8 (after the shared 0xfc byte, the first differing bit), then one more.
        let in_bucket: Vec<_> = ids
            .iter()
            .filter(|i| me.address().common_prefix_len(&i.address()) == 8)
            .collect();
        assert!(in_bucket.len() >= 4);
        for i in &in_bucket[..2] {
            assert!(t.upsert(i.public_key(), l, None, now, false, |_| false));
        }
        let extra = in_bucket[2].public_key();
        assert!(
            !t.upsert(extra, l, None, now, false, |_| false),
            "full bucket refuses"
        );
        assert!(t.get(&extra.address()).is_none());
        assert!(
            t.upsert(extra, l, None, now, false, |a| *a == extra.address()),
            "in use goes in"
        );
        assert_eq!(t.bucket_len(8), 3);
        let others: Vec<_> = in_bucket[..2].iter().map(|i| i.address()).collect();
        t.expire(now, |a| *a == extra.address() || others.contains(a));
        assert_eq!(t.bucket_len(8), 3, "kept while in use");
        t.expire(now, |a| *a == extra.address());
        assert_eq!(t.bucket_len(8), 2, "the others trimmed first");
        assert!(t.get(&extra.address()).is_some());
        t.expire(now, |_| false);
        assert_eq!(t.bucket_len(8), 2, "never below k");
    }

    #[test]
    fn direct_peers_go_in_under_k_and_displace_the_longest_paths() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let me = Identity::generate(&mut rng);
        let now = Instant::now();
        let mut t = RoutingTable::new(me.address(), 2);
        let ids: Vec<_> = (0..64).map(|_| Identity::generate(&mut rng)).collect();
        let in_bucket: Vec<_> = ids
            .iter()
            .filter(|i| me.address().common_prefix_len(&i.address()) == 8)
            .collect();
        assert!(in_bucket.len() >= 5);
        let far = Label::from_directors(&[1, 2, 3]).unwrap();
        let direct = Label::single(4).unwrap();
        for i in &in_bucket[..2] {
            assert!(t.upsert(i.public_key(), far, None, now, false, |_| false));
        }
        // Two direct peers take the places of the two 3-hop entries, and stay (pinned).
        for i in &in_bucket[2..4] {
            assert!(t.upsert(i.public_key(), direct, None, now, true, |_| false));
        }
        assert!(in_bucket[2..4]
            .iter()
            .all(|i| t.get(&i.address()).is_some_and(|e| e.pinned)));
        // A third one finds the bucket full of direct peers: it stays out (its link is
        // enough to reach it), and the bucket stays at k.
        assert!(
            !t.upsert(in_bucket[4].public_key(), direct, None, now, true, |_| {
                false
            })
        );
        assert!(t.get(&in_bucket[4].address()).is_none());
        assert_eq!(t.bucket_len(8), 2);
        let newcomer = in_bucket[0].public_key();
        assert!(
            !t.upsert(newcomer, direct, None, now, false, |_| false),
            "pinned entries are not displaced"
        );
    }
}
