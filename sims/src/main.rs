//! `sims EXPERIMENT --nodes N --topology KIND|--gml FILE --seed S --out DIR`: runs one
//! experiment on simulated meshd nodes and writes `summary.json`, CSV series and PNG plots.
#![deny(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Parser;
use sims::{Experiment, Kind, Params, Topology};

/// mimalloc instead of glibc's malloc: a simulated mesh allocates a buffer per datagram,
/// from two threads, and its nodes' state is spread over many small allocations.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs the real meshd node code on a simulated network with a virtual clock.
#[derive(Parser, Debug)]
#[command(name = "sims", version)]
struct Cli {
    /// Experiment to run.
    #[arg(value_enum)]
    experiment: Experiment,
    /// Nodes (synthetic topologies).
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Synthetic topology.
    #[arg(long, value_enum, default_value = "geometric", conflicts_with = "gml")]
    topology: Kind,
    /// A GML file (Internet Topology Zoo format) instead of a synthetic topology.
    #[arg(long)]
    gml: Option<PathBuf>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Mean degree of geometric graphs.
    #[arg(long, default_value_t = 8.0)]
    degree: f64,
    /// Edges per new node in Barabási–Albert graphs.
    #[arg(long, default_value_t = 2)]
    ba_m: usize,
    /// Latency of line, ring and grid links, ms.
    #[arg(long, default_value_t = 1.0)]
    latency_ms: f64,
    /// Loss probability per datagram per link.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Link MTU, bytes.
    #[arg(long, default_value_t = 1500)]
    mtu: usize,
    /// Sampled pairs (flows).
    #[arg(long, default_value_t = 200)]
    pairs: usize,
    /// Nodes start within this many seconds.
    #[arg(long, default_value_t = 2.0)]
    start_spread: f64,
    /// Warm-up before measuring, virtual s.
    #[arg(long, default_value_t = 30.0)]
    warmup: f64,
    /// Measured phase, virtual s (converge: the limit).
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// fail: fraction of nodes (or links) killed.
    #[arg(long, default_value_t = 0.1)]
    fail_fraction: f64,
    /// fail: cut links instead of killing nodes.
    #[arg(long)]
    fail_links: bool,
    /// fail: kill exactly these nodes (comma-separated indices).
    #[arg(long, value_delimiter = ',')]
    kill: Vec<u32>,
    /// churn: departures per second.
    #[arg(long, default_value_t = 1.0)]
    churn_rate: f64,
    /// churn: seconds a departed node stays away.
    #[arg(long, default_value_t = 10.0)]
    churn_down: f64,
    /// mobility: speed, radio ranges per second.
    #[arg(long, default_value_t = 0.05)]
    speed: f64,
    /// mobility: seconds between topology updates.
    #[arg(long, default_value_t = 2.0)]
    move_interval: f64,
    /// mobility in rounds, as meshnet-lab does: jump, wait this many seconds, then ping
    /// (`--pairs` pings over 2 s). Without it, nodes move continuously.
    #[arg(long)]
    settle: Option<f64>,
    /// mobility rounds: longest jump, radio ranges (meshnet-lab's 60 m of a ~195 m range).
    #[arg(long, default_value_t = 0.31)]
    jump: f64,
    /// Quiet window (no probes) measuring control traffic, virtual s.
    #[arg(long, default_value_t = 10.0)]
    quiet: f64,
    /// Directory caching generated identities ("none" to disable).
    #[arg(long, default_value = "target/sims-ids")]
    id_cache: String,
    /// Real crypto: sign and check with ed25519, handshake with X25519. By default the
    /// simulated nodes sign with a keyed hash and handshake with a stand-in Diffie-Hellman
    /// (`crypto::simulated`): the same messages and checks, a fraction of the CPU time.
    #[arg(long)]
    real_signatures: bool,
    /// Threads to split the nodes between (the run is the same on any number). Default:
    /// `SIM_THREADS` if set, else every core for 1,000 nodes or more and one below.
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let c = Cli::parse();
    if !c.real_signatures {
        crypto::simulated::use_for_simulation();
    }
    // SIM_LOG=debug shows the nodes' own logs (e.g. why a lookup failed), on stderr.
    if let Some(level) = std::env::var("SIM_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<tracing::Level>().ok())
    {
        tracing_subscriber::fmt()
            .with_timer(VirtualTime)
            .with_max_level(level)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let topology = match c.gml {
        Some(f) => Topology::Gml(f),
        None => Topology::Synthetic(c.topology),
    };
    let mut p = Params::new(c.experiment, c.nodes, topology, c.seed);
    p.degree = c.degree;
    p.ba_m = c.ba_m;
    p.latency_ms = c.latency_ms;
    p.loss = c.loss;
    p.mtu = c.mtu;
    p.pairs = c.pairs;
    p.start_spread = c.start_spread;
    p.warmup = c.warmup;
    p.duration = c.duration;
    p.fail_fraction = c.fail_fraction;
    p.fail_links = c.fail_links;
    p.kill = c.kill;
    p.churn_rate = c.churn_rate;
    p.churn_down = c.churn_down;
    p.speed = c.speed;
    p.move_interval = c.move_interval;
    p.settle = c.settle;
    p.jump = c.jump;
    p.quiet = c.quiet;
    p.threads = c.threads.unwrap_or_else(|| {
        if std::env::var_os("SIM_THREADS").is_some() || c.nodes < 1000 {
            sims::sim::default_threads()
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    });
    p.id_cache = (c.id_cache != "none").then(|| PathBuf::from(&c.id_cache));
    p.progress = std::io::stderr().is_terminal();
    let report = sims::run(&p)?;
    report.write(&c.out)?;
    println!("{}", serde_json::to_string_pretty(&report.summary)?);
    Ok(())
}

/// Log timestamps in virtual seconds since the run began.
struct VirtualTime;

impl tracing_subscriber::fmt::time::FormatTime for VirtualTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let ns = sims::sim::virtual_ns();
        write!(w, "t={:.6}", ns as f64 / 1e9)
    }
}
