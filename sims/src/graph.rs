//! Topologies: undirected graphs with a latency per edge, and the graph algorithms the
//! experiments measure against (BFS hop counts, connected components).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// An undirected edge with its one-way latency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Edge {
    /// One end (the side that dials).
    pub a: u32,
    /// The other end.
    pub b: u32,
    /// One-way latency.
    pub latency: Duration,
}

/// An undirected simple graph (no self-loops, no repeated edges).
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// Number of nodes.
    pub n: usize,
    /// Edges.
    pub edges: Vec<Edge>,
    /// Positions on a plane (km) or on the globe (lon, lat degrees), when known.
    pub positions: Option<Vec<(f64, f64)>>,
    /// Human-readable name of the topology.
    pub name: String,
}

/// Speed of light in fibre, km per millisecond (about 2/3 of c).
pub const FIBRE_KM_PER_MS: f64 = 200.0;

impl Graph {
    /// An empty graph on `n` nodes.
    pub fn new(n: usize, name: impl Into<String>) -> Graph {
        Graph {
            n,
            edges: Vec::new(),
            positions: None,
            name: name.into(),
        }
    }

    /// Adds edge a-b unless it is a self-loop or already there (checked with `seen`).
    fn add(&mut self, seen: &mut HashSet<(u32, u32)>, a: u32, b: u32, latency: Duration) {
        if a == b {
            return;
        }
        let k = (a.min(b), a.max(b));
        if seen.insert(k) {
            self.edges.push(Edge {
                a: k.0,
                b: k.1,
                latency,
            });
        }
    }

    /// Adjacency lists.
    pub fn adjacency(&self) -> Vec<Vec<u32>> {
        let mut adj = vec![Vec::new(); self.n];
        for e in &self.edges {
            adj[e.a as usize].push(e.b);
            adj[e.b as usize].push(e.a);
        }
        adj
    }

    /// A line 0-1-...-(n-1).
    pub fn line(n: usize, latency: Duration) -> Graph {
        let mut g = Graph::new(n, format!("line-{n}"));
        let mut seen = HashSet::new();
        for i in 1..n as u32 {
            g.add(&mut seen, i - 1, i, latency);
        }
        g
    }

    /// A ring of `n` nodes.
    pub fn ring(n: usize, latency: Duration) -> Graph {
        let mut g = Graph::line(n, latency);
        g.name = format!("ring-{n}");
        if n > 2 {
            let mut seen: HashSet<(u32, u32)> = g.edges.iter().map(|e| (e.a, e.b)).collect();
            g.add(&mut seen, 0, n as u32 - 1, latency);
        }
        g
    }

    /// A grid `w` wide with `n` nodes (rows filled in order; `w = round(sqrt(n))`).
    pub fn grid(n: usize, latency: Duration) -> Graph {
        let w = ((n as f64).sqrt().round() as usize).max(1);
        let mut g = Graph::new(n, format!("grid-{}x{}", w, n.div_ceil(w)));
        let mut seen = HashSet::new();
        for i in 0..n {
            let (r, c) = (i / w, i % w);
            if c + 1 < w && i + 1 < n {
                g.add(&mut seen, i as u32, i as u32 + 1, latency);
            }
            if i + w < n {
                g.add(&mut seen, i as u32, (i + w) as u32, latency);
            }
            let _ = r;
        }
        g.positions = Some((0..n).map(|i| ((i % w) as f64, (i / w) as f64)).collect());
        g
    }

    /// Barabási–Albert preferential attachment, `m` edges per new node: an internet-like
    /// overlay with a few hubs. Latency uniform in 2–20 ms (overlay links span distance).
    pub fn barabasi_albert(n: usize, m: usize, seed: u64) -> Graph {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xba);
        let mut g = Graph::new(n, format!("ba-{n}-m{m}"));
        let mut seen = HashSet::new();
        let m = m.max(1);
        let mut ends: Vec<u32> = Vec::new();
        let core = (m + 1).min(n);
        for a in 0..core as u32 {
            for b in 0..a {
                let lat = Duration::from_micros(rng.gen_range(2_000..20_000));
                g.add(&mut seen, b, a, lat);
                ends.extend([a, b]);
            }
        }
        for v in core as u32..n as u32 {
            let mut targets = HashSet::new();
            while targets.len() < m.min(v as usize) {
                let t = ends[rng.gen_range(0..ends.len())];
                targets.insert(t);
            }
            let mut targets: Vec<u32> = targets.into_iter().collect();
            targets.sort_unstable();
            for t in targets {
                let lat = Duration::from_micros(rng.gen_range(2_000..20_000));
                g.add(&mut seen, t, v, lat);
                ends.extend([v, t]);
            }
        }
        g
    }

    /// Random geometric graph: `n` radios uniform on a square whose side makes the mean
    /// degree about `degree` for a radio range of `range_km`; latency 1 ms per hop (radio
    /// MAC and queueing) plus distance at light speed. Components other than the largest
    /// are joined to it by one edge from their node closest to it, so the graph is connected
    /// (documented: a real mesh would leave them cut off).
    pub fn geometric(n: usize, degree: f64, seed: u64) -> Graph {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6e0);
        let range = 1.0;
        // Mean degree ≈ n·π·r²/side² (ignoring borders).
        let side = (n as f64 * std::f64::consts::PI * range * range / degree.max(0.5)).sqrt();
        let pos: Vec<(f64, f64)> = (0..n)
            .map(|_| (rng.gen_range(0.0..side), rng.gen_range(0.0..side)))
            .collect();
        let mut g = geometric_edges(&pos, range);
        g.name = format!("geometric-{n}-d{degree}");
        g.connect_components();
        g
    }

    /// Joins every component to the largest one by its closest pair (needs positions).
    pub fn connect_components(&mut self) {
        let Some(pos) = self.positions.clone() else {
            return;
        };
        let comp = self.components();
        let ncomp = comp.iter().copied().max().map_or(0, |m| m + 1);
        if ncomp <= 1 {
            return;
        }
        let mut sizes = vec![0usize; ncomp];
        for &c in &comp {
            sizes[c] += 1;
        }
        let big = (0..ncomp)
            .max_by_key(|&c| (sizes[c], usize::MAX - c))
            .expect("one");
        let main: Vec<usize> = (0..self.n).filter(|&i| comp[i] == big).collect();
        let mut seen: HashSet<(u32, u32)> = self.edges.iter().map(|e| (e.a, e.b)).collect();
        for c in 0..ncomp {
            if c == big {
                continue;
            }
            let mut best = (f64::MAX, 0, 0);
            for i in (0..self.n).filter(|&i| comp[i] == c) {
                for &j in &main {
                    let d = dist(pos[i], pos[j]);
                    if d < best.0 {
                        best = (d, i, j);
                    }
                }
            }
            let lat = plane_latency(best.0);
            self.add(&mut seen, best.1 as u32, best.2 as u32, lat);
        }
    }

    /// Component index of every node.
    pub fn components(&self) -> Vec<usize> {
        components_of(self.n, &self.adjacency(), &vec![true; self.n])
    }

    /// Hop counts from `src` to every node (`u32::MAX`: unreachable).
    pub fn bfs(&self, adj: &[Vec<u32>], src: usize) -> Vec<u32> {
        bfs(adj, src, None)
    }
}

fn dist(a: (f64, f64), b: (f64, f64)) -> f64 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

/// Latency of a radio hop of `km`: 1 ms plus light speed.
pub fn plane_latency(km: f64) -> Duration {
    Duration::from_secs_f64((1.0 + km / 300.0) / 1000.0)
}

/// The unit-disk graph of `pos` with radio range `range` (same units as `pos`).
pub fn geometric_edges(pos: &[(f64, f64)], range: f64) -> Graph {
    let n = pos.len();
    let mut g = Graph::new(n, "geometric");
    let mut seen = HashSet::new();
    // Grid buckets of side `range`: only neighbouring cells can be in range.
    let mut cells: std::collections::HashMap<(i64, i64), Vec<u32>> = Default::default();
    for (i, p) in pos.iter().enumerate() {
        let c = ((p.0 / range).floor() as i64, (p.1 / range).floor() as i64);
        cells.entry(c).or_default().push(i as u32);
    }
    for (i, p) in pos.iter().enumerate() {
        let c = ((p.0 / range).floor() as i64, (p.1 / range).floor() as i64);
        for dx in -1..=1 {
            for dy in -1..=1 {
                if let Some(v) = cells.get(&(c.0 + dx, c.1 + dy)) {
                    for &j in v {
                        if (j as usize) > i {
                            let d = dist(*p, pos[j as usize]);
                            if d <= range {
                                g.add(&mut seen, i as u32, j, plane_latency(d));
                            }
                        }
                    }
                }
            }
        }
    }
    g.edges.sort_by_key(|e| (e.a, e.b));
    g.positions = Some(pos.to_vec());
    g
}

/// Hop counts from `src` over nodes for which `alive` holds (all if `None`).
pub fn bfs(adj: &[Vec<u32>], src: usize, alive: Option<&[bool]>) -> Vec<u32> {
    let mut d = vec![u32::MAX; adj.len()];
    if alive.is_some_and(|a| !a[src]) {
        return d;
    }
    d[src] = 0;
    let mut q = VecDeque::from([src]);
    while let Some(u) = q.pop_front() {
        for &v in &adj[u] {
            let v = v as usize;
            if d[v] == u32::MAX && alive.is_none_or(|a| a[v]) {
                d[v] = d[u] + 1;
                q.push_back(v);
            }
        }
    }
    d
}

/// Component index of every node among those `alive` (dead nodes get `usize::MAX`).
pub fn components_of(n: usize, adj: &[Vec<u32>], alive: &[bool]) -> Vec<usize> {
    let mut comp = vec![usize::MAX; n];
    let mut c = 0;
    for s in 0..n {
        if comp[s] != usize::MAX || !alive[s] {
            continue;
        }
        comp[s] = c;
        let mut q = vec![s];
        while let Some(u) = q.pop() {
            for &v in &adj[u] {
                let v = v as usize;
                if comp[v] == usize::MAX && alive[v] {
                    comp[v] = c;
                    q.push(v);
                }
            }
        }
        c += 1;
    }
    comp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let ms = Duration::from_millis(1);
        assert_eq!(Graph::line(5, ms).edges.len(), 4);
        assert_eq!(Graph::ring(5, ms).edges.len(), 5);
        assert_eq!(Graph::grid(49, ms).edges.len(), 2 * 7 * 6);
        let ba = Graph::barabasi_albert(200, 2, 1);
        assert!(ba.edges.len() >= 2 * 197);
        assert_eq!(ba.components().iter().max(), Some(&0));
        let geo = Graph::geometric(300, 8.0, 1);
        assert_eq!(geo.components().iter().max(), Some(&0));
        let mean = 2.0 * geo.edges.len() as f64 / 300.0;
        assert!((4.0..12.0).contains(&mean), "mean degree {mean}");
        let adj = Graph::line(5, ms).adjacency();
        assert_eq!(bfs(&adj, 0, None), vec![0, 1, 2, 3, 4]);
    }
}
