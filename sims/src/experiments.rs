//! The experiments: converge, reach, fail, churn, mobility, cost. Each builds a topology,
//! runs the real nodes on it and returns a [`Report`]: the [`Summary`] (`summary.json`), CSV
//! series and plots.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

use crate::graph::{bfs, components_of, geometric_edges, Graph};
use crate::ids;
use crate::plot::{self, Series};
use crate::sim::{Action, Sim, SimConfig};

/// Which experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Experiment {
    /// Cold start: time until 99% of sampled pairs reach each other.
    Converge,
    /// Success, hops and stretch of lookups and data packets between random pairs.
    Reach,
    /// Kill a fraction of nodes (or links) at once; success over time and recovery.
    Fail,
    /// Nodes leave and join continuously; steady-state success.
    Churn,
    /// Nodes move on a plane, linking to whoever is in radio range; delivery rate.
    Mobility,
    /// Table entries, control bytes and memory per node.
    Cost,
}

impl Experiment {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Experiment::Converge => "converge",
            Experiment::Reach => "reach",
            Experiment::Fail => "fail",
            Experiment::Churn => "churn",
            Experiment::Mobility => "mobility",
            Experiment::Cost => "cost",
        }
    }
}

/// Synthetic topology kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Random geometric graph (a physical mesh).
    Geometric,
    /// Barabási–Albert (an internet overlay).
    Ba,
    /// Square grid.
    Grid,
    /// Line.
    Line,
    /// Ring.
    Ring,
}

/// Where the graph comes from.
#[derive(Clone, Debug)]
pub enum Topology {
    /// A synthetic graph.
    Synthetic(Kind),
    /// A GML file.
    Gml(PathBuf),
}

/// Parameters of a run.
#[derive(Clone, Debug)]
pub struct Params {
    /// Experiment.
    pub experiment: Experiment,
    /// Nodes (synthetic topologies; GML files bring their own).
    pub nodes: usize,
    /// Topology.
    pub topology: Topology,
    /// Seed.
    pub seed: u64,
    /// Mean degree of geometric graphs (and mobility).
    pub degree: f64,
    /// Edges per new node in Barabási–Albert graphs.
    pub ba_m: usize,
    /// Link latency of line, ring and grid, ms.
    pub latency_ms: f64,
    /// Datagram loss probability per link.
    pub loss: f64,
    /// Link MTU, bytes.
    pub mtu: usize,
    /// Sampled pairs (or flows).
    pub pairs: usize,
    /// Nodes start uniformly within this many seconds.
    pub start_spread: f64,
    /// Seconds before measuring (reach, fail, churn, mobility, cost).
    pub warmup: f64,
    /// Length of the measured phase, s (converge: the limit).
    pub duration: f64,
    /// Fraction of nodes (or links) killed by `fail`.
    pub fail_fraction: f64,
    /// `fail` kills links instead of nodes.
    pub fail_links: bool,
    /// `fail` kills exactly these nodes instead of a random fraction.
    pub kill: Vec<u32>,
    /// `churn`: nodes leaving per second (each comes back after `churn_down` s).
    pub churn_rate: f64,
    /// `churn`: seconds a node stays away.
    pub churn_down: f64,
    /// `mobility`: speed in radio ranges per second.
    pub speed: f64,
    /// `mobility`: seconds between topology updates.
    pub move_interval: f64,
    /// `mobility` in rounds (meshnet-lab's procedure): every node jumps up to `jump` radio
    /// ranges in a random direction, the mesh gets `settle` seconds, then `pairs` fresh random
    /// pairs ping once each, spread over 2 s; repeat. `None`: continuous movement.
    pub settle: Option<f64>,
    /// `mobility` rounds: longest jump, in radio ranges.
    pub jump: f64,
    /// Seconds of the quiet window (no probes) that measures control traffic.
    pub quiet: f64,
    /// Identity cache directory.
    pub id_cache: Option<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
    /// Threads the simulator runs on (the run is the same on any number).
    pub threads: usize,
}

impl Params {
    /// Defaults for `experiment` on `nodes` nodes of `topology`.
    pub fn new(experiment: Experiment, nodes: usize, topology: Topology, seed: u64) -> Params {
        Params {
            experiment,
            nodes,
            topology,
            seed,
            degree: 8.0,
            ba_m: 2,
            latency_ms: 1.0,
            loss: 0.0,
            mtu: 1500,
            pairs: 200,
            start_spread: 2.0,
            warmup: 30.0,
            duration: 60.0,
            fail_fraction: 0.1,
            fail_links: false,
            kill: Vec::new(),
            churn_rate: 1.0,
            churn_down: 10.0,
            speed: 0.05,
            move_interval: 2.0,
            settle: None,
            jump: 0.31,
            quiet: 10.0,
            id_cache: None,
            progress: false,
            threads: crate::sim::default_threads(),
        }
    }
}

/// The numbers of a run (`summary.json`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    /// Experiment name.
    pub experiment: String,
    /// Topology name.
    pub topology: String,
    /// Nodes.
    pub nodes: usize,
    /// Edges.
    pub edges: usize,
    /// Seed.
    pub seed: u64,
    /// Round trips answered / probes between pairs connected in the (live) graph.
    pub success_rate: Option<f64>,
    /// Round trips answered / all probes (pairs cut apart by the graph included).
    pub success_rate_all: Option<f64>,
    /// Probes counted in `success_rate`.
    pub probes: usize,
    /// Probes between pairs the graph itself had cut apart (not counted in `success_rate`).
    pub probes_disconnected: usize,
    /// Lookups that found their target / lookups (reach).
    pub lookup_success_rate: Option<f64>,
    /// Running nodes whose routing table holds a working path to their nearest running node
    /// by XOR (where a lookup for them ends) / running nodes, at the end of the run. Below 1,
    /// the DHT is split into groups that lookups from the wrong side don't find.
    pub dht_nearest_held: Option<f64>,
    /// Mean hops of the paths found by lookups.
    pub lookup_mean_hops: Option<f64>,
    /// Mean of hops used / shortest hops (BFS) over delivered probes.
    pub mean_stretch: Option<f64>,
    /// Mean hops of delivered probes.
    pub mean_hops: Option<f64>,
    /// Median hops.
    pub p50_hops: Option<u32>,
    /// 99th percentile hops.
    pub p99_hops: Option<u32>,
    /// Mean round-trip time of answered probes, ms.
    pub mean_rtt_ms: Option<f64>,
    /// fail: seconds from the failure until success stays ≥ 99% (None: never within the run).
    pub recovery_s: Option<f64>,
    /// converge: seconds from the first start until 99% of pairs had a round trip.
    pub converge_s: Option<f64>,
    /// Mean routing-table entries per running node (end of run).
    pub table_entries_mean: f64,
    /// Largest routing table.
    pub table_entries_max: usize,
    /// UDP payload bytes sent per node per second while no probes ran (keepalives,
    /// lookups, refreshes); converge counts its whole run, probes included.
    pub control_bytes_per_node_s: f64,
    /// Resident memory per node, bytes (cost only; whole process growth / nodes).
    pub memory_bytes_per_node: Option<f64>,
    /// Virtual seconds simulated.
    pub sim_s: f64,
    /// Wall-clock seconds of the simulation (identities excluded).
    pub wall_s: f64,
    /// Wall-clock seconds spent making identities.
    pub ids_wall_s: f64,
    /// Events processed.
    pub events: u64,
    /// Datagrams lost to random loss, MTU, dead links, dead nodes.
    pub drops: [u64; 4],
    /// Fingerprint of every datagram delivered (equal seeds ⇒ equal hashes).
    pub trace_hash: String,
    /// The nodes' counters summed over running nodes (`router::Counters` fields).
    pub node_counters: std::collections::BTreeMap<String, u64>,
    /// "ed25519", or "simulated" (a keyed hash in their place, `crypto::simulated`).
    pub signatures: String,
}

/// A CSV series file and its plot.
pub struct Figure {
    /// File stem (`stem.csv`, `stem.png`).
    pub stem: String,
    /// Plot title (the run name and seed are added).
    pub title: String,
    /// X axis label with unit.
    pub x_label: String,
    /// Y axis label with unit.
    pub y_label: String,
    /// Data.
    pub series: Vec<Series>,
}

/// What a run produced.
pub struct Report {
    /// Numbers.
    pub summary: Summary,
    /// Series and plots.
    pub figures: Vec<Figure>,
}

impl Report {
    /// Writes `summary.json`, `*.csv` and `*.png` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("summary.json"),
            serde_json::to_string_pretty(&self.summary)? + "\n",
        )?;
        let run = format!(
            "{} on {} ({} nodes), seed {}",
            self.summary.experiment, self.summary.topology, self.summary.nodes, self.summary.seed
        );
        for f in &self.figures {
            plot::write_csv(&dir.join(format!("{}.csv", f.stem)), &f.x_label, &f.series)?;
            let title = format!("{}: {run}", f.title);
            if !plot::line_plot(
                &dir.join(format!("{}.png", f.stem)),
                &title,
                &f.x_label,
                &f.y_label,
                &f.series,
            )? {
                eprintln!(
                    "no TrueType font found (set SIMS_FONT): {}.png skipped",
                    f.stem
                );
            }
        }
        Ok(())
    }
}

/// Builds the graph of `p`.
pub fn build_graph(p: &Params) -> anyhow::Result<Graph> {
    let lat = Duration::from_secs_f64(p.latency_ms / 1000.0);
    Ok(match &p.topology {
        Topology::Synthetic(Kind::Line) => Graph::line(p.nodes, lat),
        Topology::Synthetic(Kind::Ring) => Graph::ring(p.nodes, lat),
        Topology::Synthetic(Kind::Grid) => Graph::grid(p.nodes, lat),
        Topology::Synthetic(Kind::Ba) => Graph::barabasi_albert(p.nodes, p.ba_m, p.seed),
        Topology::Synthetic(Kind::Geometric) => Graph::geometric(p.nodes, p.degree, p.seed),
        Topology::Gml(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let name = path
                .file_stem()
                .map_or("gml".into(), |s| s.to_string_lossy().into_owned());
            crate::gml::read_graph(&text, &name)?
        }
    })
}

struct Run {
    p: Params,
    graph: Graph,
    sim: Sim,
    pb: ProgressBar,
    wall: Instant,
    ids_wall: f64,
    lookup_pairs: usize,
    /// `SIM_PROFILE` set: each advance prints its events, datagrams and wall time.
    profile: bool,
}

fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

impl Run {
    fn new(p: &Params) -> anyhow::Result<Run> {
        let graph = build_graph(p)?;
        anyhow::ensure!(graph.n >= 2, "need at least two nodes");
        anyhow::ensure!(graph.n < 1 << 24, "at most 2^24 nodes");
        let t = Instant::now();
        let ids = ids::identities(p.seed, graph.n, p.id_cache.as_deref());
        let ids_wall = t.elapsed().as_secs_f64();
        let cfg = SimConfig {
            seed: p.seed,
            loss: p.loss,
            mtu: p.mtu,
            threads: p.threads,
            ..SimConfig::default()
        };
        let sim = Sim::new(&graph, ids, cfg);
        let pb = if p.progress {
            let pb = ProgressBar::new(1);
            pb.set_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{bar:40}] {pos}/{len} virtual s, {elapsed} wall",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            pb.set_message(p.experiment.name());
            pb
        } else {
            ProgressBar::hidden()
        };
        Ok(Run {
            p: p.clone(),
            graph,
            sim,
            pb,
            wall: Instant::now(),
            ids_wall,
            lookup_pairs: 0,
            profile: std::env::var_os("SIM_PROFILE").is_some(),
        })
    }

    fn set_total(&self, secs: f64) {
        self.pb.set_length(secs.ceil() as u64);
    }

    /// Advances to virtual second `t`, updating the progress bar.
    fn advance(&mut self, t: f64) {
        let until = self.sim.at(t);
        let (events, datagrams, wall) = (
            self.sim.stats.events,
            self.sim.stats.datagrams,
            Instant::now(),
        );
        self.sim.run_until(until);
        if self.profile {
            eprintln!(
                "SIM_PROFILE t={:.1} events={} datagrams={} wall_s={:.3}",
                t,
                self.sim.stats.events - events,
                self.sim.stats.datagrams - datagrams,
                wall.elapsed().as_secs_f64()
            );
        }
        self.pb.set_position(self.sim.secs() as u64);
    }

    /// Starts every node at a uniform random time in `[0, start_spread)`.
    fn start_all(&mut self) {
        let spread = self.p.start_spread.max(0.0);
        for i in 0..self.graph.n as u32 {
            let dt = if spread > 0.0 {
                self.sim.rng().gen_range(0.0..spread)
            } else {
                0.0
            };
            let t = self.sim.at(dt);
            self.sim.schedule(t, Action::Start(i));
        }
    }

    /// `k` random ordered pairs of distinct running nodes.
    fn random_pairs(&mut self, k: usize) -> Vec<(u32, u32)> {
        let alive: Vec<u32> = (0..self.sim.n() as u32)
            .filter(|&i| self.sim.alive(i))
            .collect();
        if alive.len() < 2 {
            return Vec::new();
        }
        (0..k)
            .map(|_| loop {
                let a = *alive.choose(self.sim.rng()).expect("nodes");
                let b = *alive.choose(self.sim.rng()).expect("nodes");
                if a != b {
                    break (a, b);
                }
            })
            .collect()
    }

    /// Bytes sent per node per second over a quiet window of `secs`.
    fn quiet_cost(&mut self, secs: f64) -> f64 {
        let b0 = self.sim.stats.bytes;
        let t0 = self.sim.secs();
        self.advance(t0 + secs);
        let alive = self.sim.nodes.iter().flatten().count().max(1);
        (self.sim.stats.bytes - b0) as f64 / alive as f64 / secs
    }

    fn summary(&self, probes: &[Scored], cost: f64) -> Summary {
        let tables = self.sim.table_sizes();
        let counted: Vec<&Scored> = probes.iter().filter(|s| s.connected).collect();
        let ok = counted.iter().filter(|s| s.ok).count();
        let all_ok = probes.iter().filter(|s| s.ok).count();
        let mut hops: Vec<u32> = counted.iter().filter_map(|s| s.hops).collect();
        hops.sort_unstable();
        let stretches: Vec<f64> = counted.iter().filter_map(|s| s.stretch).collect();
        let rtts: Vec<f64> = counted.iter().filter_map(|s| s.rtt_ms).collect();
        let lookups = &self.sim.lookups[..self.lookup_pairs.min(self.sim.lookups.len())];
        let found: Vec<u32> = lookups.iter().filter_map(|l| l.result.flatten()).collect();
        let s = &self.sim.stats;
        Summary {
            experiment: self.p.experiment.name().into(),
            topology: self.graph.name.clone(),
            nodes: self.graph.n,
            edges: self.graph.edges.len(),
            seed: self.p.seed,
            success_rate: ratio(ok, counted.len()),
            success_rate_all: ratio(all_ok, probes.len()),
            probes: counted.len(),
            probes_disconnected: probes.len() - counted.len(),
            lookup_success_rate: ratio(found.len(), lookups.len()),
            dht_nearest_held: {
                let (held, live) = dht_nearest_held(&self.sim);
                ratio(held, live)
            },
            lookup_mean_hops: mean(&found.iter().map(|&h| h as f64).collect::<Vec<_>>()),
            mean_stretch: mean(&stretches),
            mean_hops: mean(&hops.iter().map(|&h| h as f64).collect::<Vec<_>>()),
            p50_hops: percentile(&hops, 0.5),
            p99_hops: percentile(&hops, 0.99),
            mean_rtt_ms: mean(&rtts),
            recovery_s: None,
            converge_s: None,
            table_entries_mean: if tables.is_empty() {
                0.0
            } else {
                tables.iter().sum::<usize>() as f64 / tables.len() as f64
            },
            table_entries_max: tables.iter().copied().max().unwrap_or(0),
            control_bytes_per_node_s: cost,
            memory_bytes_per_node: None,
            sim_s: self.sim.secs(),
            wall_s: self.wall.elapsed().as_secs_f64(),
            ids_wall_s: self.ids_wall,
            events: s.events,
            drops: [s.drop_loss, s.drop_mtu, s.drop_link, s.drop_dead],
            trace_hash: format!("{:016x}", self.sim.trace_hash()),
            signatures: if crypto::simulated::signatures() {
                "simulated".into()
            } else {
                "ed25519".into()
            },
            node_counters: self.sim.counter_totals(),
        }
    }
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn percentile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

/// A probe judged: was it answered in time, and between nodes the graph connects?
#[derive(Clone, Debug)]
struct Scored {
    sent_s: f64,
    connected: bool,
    ok: bool,
    hops: Option<u32>,
    stretch: Option<f64>,
    rtt_ms: Option<f64>,
}

/// Shortest hop counts on the live graph, cached per source.
struct Shortest {
    adj: Vec<Vec<u32>>,
    alive: Vec<bool>,
    from: HashMap<u32, Vec<u32>>,
}

impl Shortest {
    fn of(sim: &Sim) -> Shortest {
        Shortest {
            adj: sim.live_adjacency(),
            alive: sim.alive_mask(),
            from: HashMap::new(),
        }
    }
    fn hops(&mut self, a: u32, b: u32) -> Option<u32> {
        let adj = &self.adj;
        let alive = &self.alive;
        let d = self
            .from
            .entry(a)
            .or_insert_with(|| bfs(adj, a as usize, Some(alive)));
        (d[b as usize] != u32::MAX).then_some(d[b as usize])
    }
}

/// Judges probes `range` with the graph as `sp` says; answered within `deadline`.
fn score(
    sim: &Sim,
    range: std::ops::Range<usize>,
    sp: &mut Shortest,
    deadline: Duration,
) -> Vec<Scored> {
    range
        .map(|i| {
            let pr = &sim.probes[i];
            let shortest = sp.hops(pr.src, pr.dst);
            let ok = pr.replied.is_some_and(|t| t - pr.sent <= deadline);
            let hops = if ok { pr.hops } else { None };
            Scored {
                sent_s: (pr.sent - sim.base).as_secs_f64(),
                connected: shortest.is_some(),
                ok,
                hops,
                stretch: hops.zip(shortest).map(|(h, s)| h as f64 / s.max(1) as f64),
                rtt_ms: pr
                    .replied
                    .filter(|_| ok)
                    .map(|t| (t - pr.sent).as_secs_f64() * 1000.0),
            }
        })
        .collect()
}

/// Success per time bin of `bin` seconds.
fn success_series(scored: &[Scored], bin: f64, t0: f64) -> Vec<(f64, f64)> {
    let mut bins: std::collections::BTreeMap<i64, (usize, usize)> = Default::default();
    for s in scored.iter().filter(|s| s.connected) {
        let b = ((s.sent_s - t0) / bin).floor() as i64;
        let e = bins.entry(b).or_default();
        e.1 += 1;
        if s.ok {
            e.0 += 1;
        }
    }
    bins.into_iter()
        .map(|(b, (ok, n))| ((b as f64 + 0.5) * bin, ok as f64 / n as f64))
        .collect()
}

/// Points of a series: (x, y).
type Points = Vec<(f64, f64)>;

/// Routing-table entries per node over time: (mean, max) series.
fn tables_figure(tables: (Points, Points)) -> Figure {
    Figure {
        stem: "tables".into(),
        title: "Routing table entries".into(),
        x_label: "virtual time (s)".into(),
        y_label: "entries per node".into(),
        series: vec![
            Series {
                name: "mean".into(),
                points: tables.0,
            },
            Series {
                name: "max".into(),
                points: tables.1,
            },
        ],
    }
}

fn hop_figure(scored: &[Scored]) -> Figure {
    let mut hist: std::collections::BTreeMap<u32, usize> = Default::default();
    let mut stretch: std::collections::BTreeMap<u32, usize> = Default::default();
    for s in scored {
        if let Some(h) = s.hops {
            *hist.entry(h).or_default() += 1;
        }
        if let Some(x) = s.stretch {
            *stretch.entry((x * 10.0).round() as u32).or_default() += 1;
        }
    }
    let _ = stretch;
    Figure {
        stem: "hops".into(),
        title: "Hops of delivered packets".into(),
        x_label: "hops (switch hops on the path used)".into(),
        y_label: "packets (count)".into(),
        series: vec![Series {
            name: "packets".into(),
            points: hist
                .into_iter()
                .map(|(h, c)| (h as f64, c as f64))
                .collect(),
        }],
    }
}

fn stretch_figure(scored: &[Scored]) -> Figure {
    let mut v: Vec<f64> = scored.iter().filter_map(|s| s.stretch).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len().max(1) as f64;
    Figure {
        stem: "stretch_cdf".into(),
        title: "Path stretch CDF".into(),
        x_label: "stretch (hops used / shortest hops)".into(),
        y_label: "fraction of delivered packets".into(),
        series: vec![Series {
            name: "stretch".into(),
            points: v
                .iter()
                .enumerate()
                .map(|(i, &x)| (x, (i + 1) as f64 / n))
                .collect(),
        }],
    }
}

/// Runs an experiment.
pub fn run(p: &Params) -> anyhow::Result<Report> {
    match p.experiment {
        Experiment::Converge => converge(p),
        Experiment::Reach => reach(p, false),
        Experiment::Cost => reach(p, true),
        Experiment::Fail => fail(p),
        Experiment::Churn => churn(p),
        Experiment::Mobility => mobility(p),
    }
}

/// Table sizes sampled (mean, max) at virtual time t.
fn table_point(sim: &Sim) -> (f64, f64) {
    let t = sim.table_sizes();
    let mean = t.iter().sum::<usize>() as f64 / t.len().max(1) as f64;
    (mean, t.iter().copied().max().unwrap_or(0) as f64)
}

fn converge(p: &Params) -> anyhow::Result<Report> {
    let mut r = Run::new(p)?;
    r.set_total(p.duration);
    r.start_all();
    // Sample pairs among all nodes (they will all run); keep those the graph connects.
    let n = r.graph.n as u32;
    let adj = r.graph.adjacency();
    let comp = components_of(r.graph.n, &adj, &vec![true; r.graph.n]);
    let mut pairs = Vec::new();
    let mut disconnected = 0;
    while pairs.len() < p.pairs {
        let a = r.sim.rng().gen_range(0..n);
        let b = r.sim.rng().gen_range(0..n);
        if a == b {
            continue;
        }
        if comp[a as usize] == comp[b as usize] {
            pairs.push((a, b));
        } else {
            disconnected += 1;
            if disconnected > 100 * p.pairs {
                break;
            }
        }
    }
    let interval = 0.5;
    let mut reached: Vec<Option<f64>> = vec![None; pairs.len()];
    let mut probe_of: Vec<Vec<usize>> = vec![Vec::new(); pairs.len()];
    let mut curve = Vec::new();
    let mut tables = (Vec::new(), Vec::new());
    let mut converge_s = None;
    let mut t = 0.0;
    let mut end = p.duration;
    while t < end {
        let first = r.sim.probes.len();
        for (k, &(a, b)) in pairs.iter().enumerate() {
            if reached[k].is_none() && r.sim.alive(a) {
                let id = r.sim.probe(a, b);
                probe_of[k].push(id);
            }
        }
        t += interval;
        r.advance(t);
        if std::env::var_os("SIM_DEBUG").is_some() && converge_s.is_none() {
            // Why this round's unanswered probes were not answered within the round.
            let mut sp = Shortest::of(&r.sim);
            let part = score(
                &r.sim,
                first..r.sim.probes.len(),
                &mut sp,
                Duration::from_secs_f64(interval),
            );
            explain_failures(&r.sim, &part, first, &mut sp);
        }
        for k in 0..pairs.len() {
            if reached[k].is_none() {
                reached[k] = probe_of[k]
                    .iter()
                    .filter_map(|&i| r.sim.probes[i].replied)
                    .min()
                    .map(|x| (x - r.sim.base).as_secs_f64());
            }
        }
        let frac = reached.iter().filter(|x| x.is_some()).count() as f64 / pairs.len() as f64;
        curve.push((t, frac));
        let (tm, tx) = table_point(&r.sim);
        tables.0.push((t, tm));
        tables.1.push((t, tx));
        if converge_s.is_none() && frac >= 0.99 {
            // The exact moment: the time the 99th-percentile pair was reached.
            let mut times: Vec<f64> = reached.iter().flatten().copied().collect();
            times.sort_by(f64::total_cmp);
            let need = (0.99 * pairs.len() as f64).ceil() as usize;
            converge_s = times.get(need.saturating_sub(1)).copied();
            end = end.min(t + 5.0);
        }
    }
    r.pb.finish_and_clear();
    let mut sp = Shortest::of(&r.sim);
    let all = score(
        &r.sim,
        0..r.sim.probes.len(),
        &mut sp,
        Duration::from_secs(3600),
    );
    // Success: pairs reached (each pair once), stretch from every answered probe.
    let cost = r.sim.stats.bytes as f64 / r.graph.n as f64 / r.sim.secs();
    let mut s = r.summary(&all, cost);
    let ok = reached.iter().filter(|x| x.is_some()).count();
    s.success_rate = ratio(ok, pairs.len());
    s.success_rate_all = ratio(ok, pairs.len() + disconnected);
    s.probes = pairs.len();
    s.probes_disconnected = disconnected;
    s.converge_s = converge_s;
    let figures = vec![
        Figure {
            stem: "converge".into(),
            title: "Pairs reached since cold start".into(),
            x_label: "virtual time since first start (s)".into(),
            y_label: "fraction of sampled pairs with a round trip".into(),
            series: vec![Series {
                name: "reached".into(),
                points: curve,
            }],
        },
        tables_figure(tables),
        hop_figure(&all),
    ];
    Ok(Report {
        summary: s,
        figures,
    })
}

/// reach (and cost, which adds memory and table-growth series).
/// `SIM_DEBUG`: the tree's root (which node, how many links) against the graph's best
/// connected node, and how deep the tree is.
fn debug_tree(r: &Run) {
    let mut degree = vec![0usize; r.graph.n];
    for e in &r.graph.edges {
        degree[e.a as usize] += 1;
        degree[e.b as usize] += 1;
    }
    let live: Vec<(usize, &router::Node)> = r
        .sim
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
        .collect();
    let Some(root) = live.first().map(|(_, n)| n.tree().root()) else {
        return;
    };
    let root_at = live
        .iter()
        .find(|(_, n)| n.identity().public_key() == root)
        .map(|&(i, _)| i);
    let depths: Vec<f64> = live.iter().map(|(_, n)| n.tree().depth() as f64).collect();
    let without = live
        .iter()
        .filter(|(_, n)| n.tree().coord().is_none())
        .count();
    let max_degree = degree.iter().max().copied().unwrap_or(0);
    let root_rank = live
        .iter()
        .find(|(_, n)| n.identity().public_key() == root)
        .map(|(_, n)| n.tree().rank_as_root());
    eprintln!(
        "SIM_DEBUG tree: root height {}, root's rank {root_rank:?}",
        live[0].1.tree().root_height(),
    );
    eprintln!(
        "SIM_DEBUG tree: root node {root_at:?} with {} links (most linked node: {max_degree}); \
         depth mean {:.2} max {}; {without} of {} nodes without a coordinate (their route \
         from the root overflows a label)",
        root_at.map_or(0, |i| degree[i]),
        mean(&depths).unwrap_or(0.0),
        depths.iter().cloned().fold(0.0, f64::max),
        live.len()
    );
    let (held, n) = dht_nearest_held(&r.sim);
    eprintln!("SIM_DEBUG dht: {held} of {n} nodes hold their nearest node by XOR");
}

/// (running nodes holding a working path to their nearest running node by XOR, running
/// nodes): how well the DHT holds together. O(n²) address comparisons: ~10⁸ at 10,000 nodes.
fn dht_nearest_held(sim: &Sim) -> (usize, usize) {
    let live: Vec<&router::Node> = sim.nodes.iter().flatten().collect();
    let addrs: Vec<crypto::Address> = live.iter().map(|n| n.address()).collect();
    let held = live
        .iter()
        .zip(&addrs)
        .filter(|(n, me)| {
            addrs
                .iter()
                .filter(|a| a != me)
                .min_by_key(|a| a.distance(me))
                .is_some_and(|near| n.routes().any(|e| e.addr == *near && e.best().is_some()))
        })
        .count();
    (held, live.len())
}

/// `SIM_DEBUG`: for the answered probes, the hops used against what each kind of route
/// would give: the tree route alone, the source's look-ahead through its peers (what
/// `Tree::route_to` gives), the destination's (what its reply path gives), and a look-ahead
/// from both ends (a peer of the source to a peer of the destination).
fn debug_routes(r: &Run, first_probe: usize, sp: &mut Shortest) {
    let tree_hops = |from: u32, to: u32| -> Option<u32> {
        let a = r.sim.nodes[from as usize].as_ref()?;
        let b = r.sim.nodes[to as usize].as_ref()?;
        if from == to {
            return Some(0);
        }
        let c = b.tree().coord()?;
        a.tree().route_to(&c.root, c.down).map(|x| x.hops() as u32)
    };
    let (mut n, mut used, mut short, mut src, mut dst, mut both) =
        (0, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut to_peers = 0u64;
    for pr in &r.sim.probes[first_probe..] {
        let (Some(h), Some(_)) = (pr.hops, pr.replied) else {
            continue;
        };
        let Some(s) = sp.hops(pr.src, pr.dst) else {
            continue;
        };
        let (Some(a), Some(b)) = (tree_hops(pr.src, pr.dst), tree_hops(pr.dst, pr.src)) else {
            continue;
        };
        let near = |x: u32| -> Vec<u32> {
            std::iter::once(x)
                .chain(sp.adj[x as usize].iter().copied())
                .collect()
        };
        let mut best = a.min(b);
        for &p in &near(pr.src) {
            for &q in &near(pr.dst) {
                if let Some(t) = tree_hops(p, q) {
                    best = best.min(t + u32::from(p != pr.src) + u32::from(q != pr.dst));
                }
            }
        }
        // The source to up to 8 of the destination's peers, shallowest first.
        let mut peers: Vec<(u8, u32)> = sp.adj[pr.dst as usize]
            .iter()
            .filter_map(|&q| Some((r.sim.nodes[q as usize].as_ref()?.tree().depth(), q)))
            .collect();
        peers.sort();
        let via_peer = peers
            .iter()
            .take(8)
            .filter_map(|&(_, q)| tree_hops(pr.src, q))
            .map(|t| t + 1)
            .fold(a, u32::min);
        to_peers += via_peer as u64;
        n += 1;
        used += h as u64;
        short += s as u64;
        src += a as u64;
        dst += b as u64;
        both += best as u64;
    }
    let f = |x: u64| x as f64 / short.max(1) as f64;
    eprintln!(
        "SIM_DEBUG routes over {n} answered probes, hops / shortest: used {:.3}, source's \
         look-ahead {:.3}, destination's {:.3}, both ends' {:.3}, source's to 8 of the \
         destination's peers {:.3}",
        f(used),
        f(src),
        f(dst),
        f(both),
        f(to_peers)
    );
}

fn reach(p: &Params, cost_run: bool) -> anyhow::Result<Report> {
    let rss0 = rss_bytes();
    let mut r = Run::new(p)?;
    let total = p.warmup + p.quiet + 2.0 + 15.0;
    r.set_total(total);
    r.start_all();
    let mut tables = (Vec::new(), Vec::new());
    let mut bytes_series = Vec::new();
    let mut last_bytes = 0u64;
    let mut t = 0.0;
    while t < p.warmup {
        t = (t + 1.0).min(p.warmup);
        r.advance(t);
        let (tm, tx) = table_point(&r.sim);
        tables.0.push((t, tm));
        tables.1.push((t, tx));
        let b = r.sim.stats.bytes;
        bytes_series.push((t, (b - last_bytes) as f64 / r.graph.n as f64));
        last_bytes = b;
    }
    let cost = r.quiet_cost(p.quiet.max(0.1));
    let rss1 = rss_bytes();
    // Lookups and data probes between random pairs, spread over 2 s.
    let pairs = r.random_pairs(p.pairs);
    let lpairs = r.random_pairs(p.pairs);
    let t0 = r.sim.secs();
    let first_probe = r.sim.probes.len();
    for (k, (&(a, b), &(c, d))) in pairs.iter().zip(&lpairs).enumerate() {
        let at = t0 + 2.0 * k as f64 / pairs.len() as f64;
        r.advance(at);
        r.sim.probe(a, b);
        r.sim.lookup(c, d);
    }
    r.lookup_pairs = r.sim.lookups.len();
    // Until every probe and lookup has its answer, or 15 s.
    let mut t = t0 + 2.0;
    while t < t0 + 17.0 - 1e-9 {
        let done = r.sim.probes[first_probe..]
            .iter()
            .all(|p| p.replied.is_some())
            && r.sim.lookups.iter().all(|l| l.result.is_some());
        if done {
            break;
        }
        t += 0.5;
        r.advance(t);
    }
    r.pb.finish_and_clear();
    let mut sp = Shortest::of(&r.sim);
    if std::env::var_os("SIM_DEBUG").is_some() {
        debug_tree(&r);
        debug_routes(&r, first_probe, &mut sp);
    }
    let scored = score(
        &r.sim,
        first_probe..r.sim.probes.len(),
        &mut sp,
        Duration::from_secs(15),
    );
    explain_failures(&r.sim, &scored, first_probe, &mut sp);
    let mut s = r.summary(&scored, cost);
    if cost_run {
        s.memory_bytes_per_node = rss0
            .zip(rss1)
            .map(|(a, b)| b.saturating_sub(a) as f64 / r.graph.n as f64);
    }
    let mut figures = vec![hop_figure(&scored), stretch_figure(&scored)];
    figures.push(tables_figure(tables));
    if cost_run {
        figures.push(Figure {
            stem: "control_bytes".into(),
            title: "Traffic per node (no data probes)".into(),
            x_label: "virtual time (s)".into(),
            y_label: "UDP payload bytes per node per second".into(),
            series: vec![Series {
                name: "bytes".into(),
                points: bytes_series,
            }],
        });
    }
    Ok(Report {
        summary: s,
        figures,
    })
}

/// Continuous flows: every `every` s each flow sends one probe.
/// With `SIM_DEBUG` set: one line on stderr per failed probe (scored from probe `first`
/// on), with what the source knew of the destination, to tell why.
fn explain_failures(sim: &Sim, scored: &[Scored], first: usize, sp: &mut Shortest) {
    if std::env::var_os("SIM_DEBUG").is_none() {
        return;
    }
    for (i, sc) in scored
        .iter()
        .enumerate()
        .filter(|(_, sc)| !sc.ok && sc.connected)
    {
        let pr = &sim.probes[first + i];
        let (Some(src), Some(dst)) = (
            sim.nodes[pr.src as usize].as_ref(),
            sim.nodes[pr.dst as usize].as_ref(),
        ) else {
            continue;
        };
        let addr = dst.address();
        let session = src.sessions().into_iter().find(|s| s.address == addr);
        let coord = dst.tree().coord();
        let tree_route = coord.and_then(|c| src.tree().route_to(&c.root, c.down));
        let entry = src.routes().find(|e| e.addr == addr);
        let held: Vec<bool> = sim
            .nodes
            .iter()
            .flatten()
            .filter_map(|n| n.routes().find(|e| e.addr == addr))
            .map(|e| e.best().is_some())
            .collect();
        let mut nearest: Vec<(u32, bool, bool, bool, bool)> = sim
            .nodes
            .iter()
            .flatten()
            .filter(|n| n.address() != addr)
            .map(|n| {
                let e = n.routes().find(|e| e.addr == addr && e.best().is_some());
                (
                    n.address().common_prefix_len(&addr),
                    e.is_some(),
                    dst.routes()
                        .any(|e| e.addr == n.address() && e.best().is_some()),
                    e.is_some_and(|e| e.coord == coord),
                    e.is_some_and(|e| e.one_label().is_some()),
                )
            })
            .collect();
        nearest.sort_by(|a, b| b.cmp(a));
        nearest.truncate(6);
        eprintln!(
            "  nearest to target by XOR (common prefix, holds it, target holds it, its \
             coordinate current, a one-label path): {nearest:?}"
        );
        eprintln!(
            "FAIL {} src {} t={:.1} {}->{} shortest {:?} arrived {} session {:?} paths {:?} \
             same_root {} depths {}/{} tree_route {:?} entry_coord_current {:?} \
             held_by {} working {}",
            addr,
            src.address(),
            sc.sent_s,
            pr.src,
            pr.dst,
            sp.hops(pr.src, pr.dst),
            pr.arrived.is_some(),
            session.map(|s| (s.established, s.path.map(|l| l.hops()), s.queued)),
            entry.map(|e| e
                .paths
                .iter()
                .map(|p| (p.route.hops(), p.failed_at.is_some()))
                .collect::<Vec<_>>()),
            src.tree().root() == dst.tree().root(),
            src.tree().depth(),
            dst.tree().depth(),
            tree_route.map(|l| l.hops()),
            entry.map(|e| e.coord == coord),
            held.len(),
            held.iter().filter(|w| **w).count(),
        );
    }
}

fn send_flows(r: &mut Run, flows: &[(u32, u32)]) {
    for &(a, b) in flows {
        if r.sim.alive(a) && r.sim.alive(b) {
            r.sim.probe(a, b);
        }
    }
}

fn fail(p: &Params) -> anyhow::Result<Report> {
    let mut r = Run::new(p)?;
    let after = p.duration.max(1.0);
    let before = (after / 2.0).min(5.0);
    r.set_total(p.warmup + before + after + 3.0);
    r.start_all();
    r.advance(p.warmup);
    let cost = r.quiet_cost(p.quiet.clamp(0.1, 2.0));
    let flows = r.random_pairs(p.pairs);
    let every = 0.2;
    let t0 = r.sim.secs();
    let t_fail = t0 + before;
    let first = r.sim.probes.len();
    let mut t = t0;
    while t < t_fail - 1e-9 {
        send_flows(&mut r, &flows);
        t += every;
        r.advance(t);
    }
    let pre_end = r.sim.probes.len();
    let mut sp_pre = Shortest::of(&r.sim);
    // The failure. (With `SIM_DEBUG`: whether it takes the tree's root, which every node
    // then keeps for up to `ROOT_TIMEOUT` before the tree re-forms under another.)
    let root_before = r.sim.nodes.iter().flatten().next().map(|n| n.tree().root());
    let n = r.graph.n;
    if !p.kill.is_empty() {
        for &k in &p.kill {
            r.sim.apply(Action::Kill(k));
        }
    } else if p.fail_links {
        let mut ls: Vec<u32> = (0..r.sim.links.len() as u32).collect();
        ls.shuffle(r.sim.rng());
        let k = (ls.len() as f64 * p.fail_fraction).round() as usize;
        for &l in &ls[..k] {
            r.sim.apply(Action::LinkDown(l));
        }
    } else {
        let mut ns: Vec<u32> = (0..n as u32).collect();
        ns.shuffle(r.sim.rng());
        let k = (n as f64 * p.fail_fraction).round() as usize;
        for &i in &ns[..k] {
            r.sim.apply(Action::Kill(i));
        }
    }
    if std::env::var_os("SIM_DEBUG").is_some() {
        let root_alive = r
            .sim
            .nodes
            .iter()
            .flatten()
            .any(|n| Some(n.identity().public_key()) == root_before);
        eprintln!("SIM_DEBUG failure at {t_fail:.1} s: the tree's root survives: {root_alive}");
    }
    let mut sp_post = Shortest::of(&r.sim);
    let t_end = t_fail + after;
    while t < t_end - 1e-9 {
        send_flows(&mut r, &flows);
        t += every;
        r.advance(t);
    }
    let post_end = r.sim.probes.len();
    r.advance(t_end + 3.0);
    r.pb.finish_and_clear();
    let deadline = Duration::from_secs(2);
    let mut scored = score(&r.sim, first..pre_end, &mut sp_pre, deadline);
    let post = score(&r.sim, pre_end..post_end, &mut sp_post, deadline);
    explain_failures(&r.sim, &post, pre_end, &mut sp_post);
    scored.extend(post.iter().cloned());
    let bin = 0.5;
    let series = success_series(&scored, bin, t_fail);
    // Recovery: the end of the last post-failure bin below 99%.
    let post_bins: Vec<(f64, f64)> = series.iter().copied().filter(|(x, _)| *x > 0.0).collect();
    let recovery = match post_bins.iter().rposition(|(_, y)| *y < 0.99) {
        None => Some(0.0),
        Some(i) if i + 1 == post_bins.len() => None,
        Some(i) => Some(post_bins[i].0 + bin / 2.0),
    };
    // Success after recovery: the last 5 s of flows (or the last half if shorter).
    let tail: Vec<Scored> = post
        .iter()
        .filter(|s| s.sent_s >= t_end - (after / 2.0).min(5.0))
        .cloned()
        .collect();
    let mut s = r.summary(&tail, cost);
    s.recovery_s = recovery;
    let figures = vec![
        Figure {
            stem: "success".into(),
            title: format!(
                "Success around the failure ({})",
                if !p.kill.is_empty() {
                    format!("nodes {:?} killed", p.kill)
                } else if p.fail_links {
                    format!("{}% of links cut", p.fail_fraction * 100.0)
                } else {
                    format!("{}% of nodes killed", p.fail_fraction * 100.0)
                }
            ),
            x_label: "virtual time since the failure (s)".into(),
            y_label: "round trips answered within 2 s (fraction)".into(),
            series: vec![Series {
                name: "success".into(),
                points: series,
            }],
        },
        hop_figure(&tail),
    ];
    Ok(Report {
        summary: s,
        figures,
    })
}

fn churn(p: &Params) -> anyhow::Result<Report> {
    let mut r = Run::new(p)?;
    let warm = p.warmup;
    let dur = p.duration.max(10.0);
    r.set_total(warm + dur + 10.0);
    r.start_all();
    r.advance(warm);
    let cost = r.quiet_cost(p.quiet.clamp(0.1, 2.0));
    let n = r.graph.n as u32;
    // Departures as a Poisson process; each node returns after `churn_down` s.
    let t0 = r.sim.secs();
    let mut t_leave = t0;
    let t_end = t0 + dur;
    while p.churn_rate > 0.0 && t_leave < t_end {
        let u: f64 = r.sim.rng().gen_range(f64::EPSILON..1.0);
        t_leave += -u.ln() / p.churn_rate;
        if t_leave >= t_end {
            continue;
        }
        let i = r.sim.rng().gen_range(0..n);
        let (a, b) = (r.sim.at(t_leave), r.sim.at(t_leave + p.churn_down));
        r.sim.schedule(a, Action::Kill(i));
        r.sim.schedule(b, Action::Start(i));
    }
    // Probes: each round, fresh random pairs of running nodes (each needs a lookup).
    let per_round = (p.pairs / 20).max(5);
    let every = 0.5;
    let mut spans = Vec::new();
    let mut t = t0;
    let mut alive_series = Vec::new();
    while t < t_end - 10.0 + 1e-9 {
        let pairs = r.random_pairs(per_round);
        let first = r.sim.probes.len();
        for (a, b) in pairs {
            r.sim.probe(a, b);
        }
        spans.push((first, r.sim.probes.len(), Shortest::of(&r.sim)));
        alive_series.push((
            t - t0,
            r.sim.nodes.iter().flatten().count() as f64 / n as f64,
        ));
        t += every;
        r.advance(t);
    }
    r.advance(t_end);
    r.pb.finish_and_clear();
    let mut scored = Vec::new();
    for (a, b, mut sp) in spans {
        scored.extend(score(&r.sim, a..b, &mut sp, Duration::from_secs(10)));
    }
    let s = r.summary(&scored, cost);
    let series = success_series(&scored, 2.0, t0);
    let figures = vec![
        Figure {
            stem: "success".into(),
            title: format!(
                "Success under churn ({}/s leave, back after {} s)",
                p.churn_rate, p.churn_down
            ),
            x_label: "virtual time since churn began (s)".into(),
            y_label: "fraction".into(),
            series: vec![
                Series {
                    name: "round trips answered within 10 s".into(),
                    points: series,
                },
                Series {
                    name: "nodes running".into(),
                    points: alive_series,
                },
            ],
        },
        hop_figure(&scored),
    ];
    Ok(Report {
        summary: s,
        figures,
    })
}

/// The two plots of a mobility run: delivery over time, and links changed per move.
fn mobility_figures(
    delivery_title: String,
    delivery: Vec<(f64, f64)>,
    changes_title: &str,
    changes: Vec<(f64, f64)>,
) -> Vec<Figure> {
    vec![
        Figure {
            stem: "delivery".into(),
            title: delivery_title,
            x_label: "virtual time since movement began (s)".into(),
            y_label: "pings answered within 3 s (fraction)".into(),
            series: vec![Series {
                name: "delivery".into(),
                points: delivery,
            }],
        },
        Figure {
            stem: "link_changes".into(),
            title: changes_title.into(),
            x_label: "virtual time since movement began (s)".into(),
            y_label: "links changed (count)".into(),
            series: vec![Series {
                name: "changes".into(),
                points: changes,
            }],
        },
    ]
}

/// Sends one probe per flow now; the span of probes it made, with the graph they saw.
fn send_batch(r: &mut Run, flows: &[(u32, u32)]) -> (usize, usize, Shortest) {
    let first = r.sim.probes.len();
    send_flows(r, flows);
    (first, r.sim.probes.len(), Shortest::of(&r.sim))
}

/// Scores probes sent in batches against the graph each batch saw (a 3 s deadline, as
/// meshnet-lab's pings), explaining failures under `SIM_DEBUG`.
fn score_spans(sim: &Sim, spans: Vec<(usize, usize, Shortest)>) -> Vec<Scored> {
    let mut scored = Vec::new();
    for (a, b, mut sp) in spans {
        let part = score(sim, a..b, &mut sp, Duration::from_secs(3));
        explain_failures(sim, &part, a, &mut sp);
        scored.extend(part);
    }
    scored
}

/// Ends a run of probe batches: runs on to `end` so the last probes can be answered, then
/// scores every batch and summarises.
fn finish_spans(
    r: &mut Run,
    end: f64,
    spans: Vec<(usize, usize, Shortest)>,
    cost: f64,
) -> (Vec<Scored>, Summary) {
    r.advance(end);
    r.pb.finish_and_clear();
    let scored = score_spans(&r.sim, spans);
    let summary = r.summary(&scored, cost);
    (scored, summary)
}

/// Cuts the links whose ends moved out of radio range (silently: the dialer stops dialing)
/// and dials the new ones in range. Returns how many links changed.
fn move_links(r: &mut Run, pos: &[(f64, f64)]) -> usize {
    let g = geometric_edges(pos, 1.0);
    let want: HashMap<(u32, u32), Duration> =
        g.edges.iter().map(|e| ((e.a, e.b), e.latency)).collect();
    let mut changed = 0;
    for li in 0..r.sim.links.len() as u32 {
        let l = &r.sim.links[li as usize];
        let k = (l.a.min(l.b), l.a.max(l.b));
        if l.up && !want.contains_key(&k) {
            r.sim.remove_link(li);
            changed += 1;
        }
    }
    for e in &g.edges {
        match r.sim.link_between(e.a, e.b) {
            Some(li) if r.sim.links[li as usize].up => {}
            _ => {
                r.sim.add_link(e.a, e.b, e.latency);
                changed += 1;
            }
        }
    }
    changed
}

fn mobility(p: &Params) -> anyhow::Result<Report> {
    if p.settle.is_some() {
        return mobility_rounds(p);
    }
    // Positions come from a geometric graph of the same size and degree.
    let mut params = p.clone();
    params.topology = Topology::Synthetic(Kind::Geometric);
    let mut r = Run::new(&params)?;
    let n = r.graph.n;
    let mut pos = r.graph.positions.clone().expect("geometric has positions");
    let side = (n as f64 * std::f64::consts::PI / p.degree.max(0.5)).sqrt();
    let mut goal: Vec<(f64, f64)> = (0..n)
        .map(|_| {
            let rng = r.sim.rng();
            (rng.gen_range(0.0..side), rng.gen_range(0.0..side))
        })
        .collect();
    let dur = p.duration.max(10.0);
    r.set_total(p.warmup + dur + 3.0);
    r.start_all();
    r.advance(p.warmup);
    let cost = r.quiet_cost(p.quiet.clamp(0.1, 2.0));
    let flows = r.random_pairs(p.pairs);
    let t0 = r.sim.secs();
    let t_end = t0 + dur;
    let mut spans = Vec::new();
    let mut t = t0;
    let mut next_move = t0 + p.move_interval;
    let mut changes = Vec::new();
    let every = 0.5;
    while t < t_end - 1e-9 {
        if t + 1e-9 >= next_move {
            next_move += p.move_interval;
            // Random waypoint.
            let step = p.speed * p.move_interval;
            for i in 0..n {
                let (dx, dy) = (goal[i].0 - pos[i].0, goal[i].1 - pos[i].1);
                let d = (dx * dx + dy * dy).sqrt();
                if d <= step {
                    pos[i] = goal[i];
                    let rng = r.sim.rng();
                    goal[i] = (rng.gen_range(0.0..side), rng.gen_range(0.0..side));
                } else {
                    pos[i] = (pos[i].0 + dx / d * step, pos[i].1 + dy / d * step);
                }
            }
            let changed = move_links(&mut r, &pos);
            changes.push((t - t0, changed as f64));
        }
        spans.push(send_batch(&mut r, &flows));
        t += every;
        r.advance(t);
    }
    let (scored, mut s) = finish_spans(&mut r, t_end + 3.0, spans, cost);
    s.topology = format!("mobile-{}", r.graph.name);
    let figures = mobility_figures(
        format!(
            "Delivery while moving ({} ranges/s, topology every {} s)",
            p.speed, p.move_interval
        ),
        success_series(&scored, 2.0, t0),
        "Links made or broken per topology update",
        changes,
    );
    Ok(Report {
        summary: s,
        figures,
    })
}

/// meshnet-lab's mobility procedure (its "mobility1" test): 50 radios on a square, each round
/// every node jumps 0..`jump` ranges in a random direction, then after `settle` seconds
/// `pairs` random pairs ping once each, spread over 2 s.
fn mobility_rounds(p: &Params) -> anyhow::Result<Report> {
    let settle = p.settle.unwrap_or(10.0).max(0.0);
    let mut params = p.clone();
    params.topology = Topology::Synthetic(Kind::Geometric);
    let mut r = Run::new(&params)?;
    let n = r.graph.n;
    let mut pos = r.graph.positions.clone().expect("geometric has positions");
    let side = (n as f64 * std::f64::consts::PI / p.degree.max(0.5)).sqrt();
    let round = settle + 2.0;
    let rounds = (p.duration / round).ceil().max(1.0) as usize;
    r.set_total(p.warmup + rounds as f64 * round + 3.0);
    r.start_all();
    r.advance(p.warmup);
    let cost = r.quiet_cost(p.quiet.clamp(0.1, 2.0));
    let t0 = r.sim.secs();
    let mut t = t0;
    let mut spans = Vec::new();
    let mut changes = Vec::new();
    let batches = 4;
    for _ in 0..rounds {
        for q in pos.iter_mut() {
            let rng = r.sim.rng();
            let angle = rng.gen_range(0.0..std::f64::consts::TAU);
            let d = rng.gen_range(0.0..=p.jump.max(0.0));
            q.0 = (q.0 + d * angle.cos()).clamp(0.0, side);
            q.1 = (q.1 + d * angle.sin()).clamp(0.0, side);
        }
        let changed = move_links(&mut r, &pos);
        changes.push((t - t0, changed as f64));
        t += settle;
        r.advance(t);
        let pairs = r.random_pairs(p.pairs);
        let per = pairs.len().div_ceil(batches).max(1);
        for chunk in pairs.chunks(per) {
            spans.push(send_batch(&mut r, chunk));
            t += 2.0 / batches as f64;
            r.advance(t);
        }
    }
    let (scored, mut s) = finish_spans(&mut r, t + 3.0, spans, cost);
    s.topology = format!("rounds-{}", r.graph.name);
    let figures = mobility_figures(
        format!("Delivery {settle} s after jumps of up to {} ranges", p.jump),
        success_series(&scored, round, t0),
        "Links made or broken per jump",
        changes,
    );
    Ok(Report {
        summary: s,
        figures,
    })
}
