//! `meshd`: the mesh router daemon and its command line.
#![deny(unsafe_code)]

mod config;
mod ctl;
mod daemon;
mod gro;
mod io;
mod lan;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use config::{ConfigFile, PeerSpec};

/// meshd: a mesh network router. Every node gets a stable fc00::/8 address from its key;
/// ordinary programs reach any node by that address across many hops.
#[derive(Parser, Debug)]
#[command(name = "meshd", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Config file (TOML; `meshd genconf` writes one). Flags override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// State directory: identity (without --config), admin token, saved peers.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// UDP address to listen on [default: [::]:7400].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A peer to link to: HOST:PORT or PUBKEY@HOST:PORT. Repeatable.
    #[arg(long = "peer", value_name = "[PUBKEY@]HOST:PORT")]
    peers: Vec<String>,
    /// TUN device name [default: meshd0].
    #[arg(long)]
    tun: Option<String>,
    /// Use this already-open TUN file descriptor (e.g. from Android's VpnService) instead of
    /// creating a device; its address and routes are then the caller's business.
    #[arg(long, value_name = "N")]
    tun_fd: Option<i32>,
    /// Don't use TUN offloads or UDP GSO/GRO (one packet per system call).
    #[arg(long, env = "MESHD_NO_OFFLOAD")]
    no_offload: bool,
    /// Admin API address [default: 127.0.0.1:7401].
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Network secret: only nodes with the same secret link.
    #[arg(long, env = "MESHD_NETWORK_SECRET")]
    network_secret: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print a complete, commented config with a fresh identity.
    Genconf,
    /// Print this node's address and public key.
    Address,
    /// Talk to a running node's admin API.
    Ctl(ctl::CtlArgs),
}

fn main() {
    restore_sigpipe();
    if let Err(e) = real_main() {
        eprintln!("meshd: {e:#}");
        std::process::exit(1);
    }
}

/// Rust ignores SIGPIPE, so `meshd address | head -1` would panic on a closed pipe; restore
/// the default so a CLI command piped into `head` just ends, as Unix tools do. The daemon never
/// writes to a pipe that matters (logs go to stderr).
#[allow(unsafe_code)]
fn restore_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_DFL at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn real_main() -> Result<()> {
    let mut cli = Cli::parse();
    match cli.cmd.take() {
        Some(Cmd::Genconf) => {
            print!("{}", config::generate_config());
            Ok(())
        }
        Some(Cmd::Address) => {
            let (file, state_dir) = load_config(&cli)?;
            let id = identity(&file, &state_dir)?;
            println!("{}", id.address());
            println!("{}", id.public_key());
            Ok(())
        }
        Some(Cmd::Ctl(args)) => {
            let (file, state_dir) = load_config(&cli)?;
            let admin = match &file.admin {
                Some(a) => a.parse().with_context(|| format!("config admin {a:?}"))?,
                None => config::DEFAULT_ADMIN.parse().expect("default parses"),
            };
            let token = match &file.admin_token {
                Some(t) => t.clone(),
                None => {
                    let p = state_dir.join("admin.token");
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("reading the admin token {} (use --state-dir or --config as the node does)", p.display()))?
                        .trim()
                        .to_string()
                }
            };
            ctl::run(args, admin, token)
        }
        None => {
            // MESHD_LOG=error|warn|info|debug|trace (default info). A plain level, not an
            // env-filter: the filter's regex engine alone was ~10% of the binary (and of an
            // idle node's resident memory).
            let level = std::env::var("MESHD_LOG")
                .ok()
                .and_then(|v| v.trim().parse::<tracing::Level>().ok())
                .unwrap_or(tracing::Level::INFO);
            tracing_subscriber::fmt()
                .with_max_level(level)
                .with_writer(std::io::stderr)
                .init();
            let settings = settings(cli)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(daemon::run(settings))
        }
    }
}

fn load_config(cli: &Cli) -> Result<(ConfigFile, PathBuf)> {
    let file = match &cli.config {
        Some(p) => ConfigFile::load(p)?,
        None => ConfigFile::default(),
    };
    let state_dir = cli
        .state_dir
        .clone()
        .or_else(|| file.state_dir.clone())
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_STATE_DIR));
    Ok((file, state_dir))
}

fn identity(file: &ConfigFile, state_dir: &std::path::Path) -> Result<crypto::Identity> {
    match &file.private_key {
        Some(k) => config::identity_from_hex(k).context("config private_key"),
        None => config::load_or_create_identity(state_dir),
    }
}

fn settings(cli: Cli) -> Result<daemon::Settings> {
    let (file, state_dir) = load_config(&cli)?;
    let identity = identity(&file, &state_dir)?;
    let listen = match (cli.listen, &file.listen) {
        (Some(l), _) => l,
        (None, Some(l)) => l.parse().with_context(|| format!("config listen {l:?}"))?,
        (None, None) => config::DEFAULT_LISTEN.parse().expect("default parses"),
    };
    let admin = match (cli.admin, &file.admin) {
        (Some(a), _) => a,
        (None, Some(a)) => a.parse().with_context(|| format!("config admin {a:?}"))?,
        (None, None) => config::DEFAULT_ADMIN.parse().expect("default parses"),
    };
    if !admin.ip().is_loopback() && !file.admin_allow_remote {
        bail!("refusing to serve the admin API on non-loopback {admin}: set admin_allow_remote = true in the config to allow it");
    }
    let mut peers = Vec::new();
    for p in &file.peers {
        peers.push(PeerSpec::parse(p)?);
    }
    let mut cli_peers = Vec::new();
    for p in &cli.peers {
        cli_peers.push(PeerSpec::parse(p)?);
    }
    peers.extend(cli_peers.iter().cloned());
    let secret = cli.network_secret.or(file.network_secret.clone());
    let node = router::NodeConfig {
        network_psk: secret.as_deref().map(crypto::network_psk),
        allowed_keys: file.allowed()?,
        ..Default::default()
    };
    let admin_token = match &file.admin_token {
        Some(t) => t.clone(),
        None => config::load_or_create_admin_token(&state_dir)?,
    };
    Ok(daemon::Settings {
        identity,
        admin_token,
        admin_socket: file.admin_socket.clone(),
        listen,
        peers,
        tun: cli
            .tun
            .or(file.tun.clone())
            .unwrap_or_else(|| config::DEFAULT_TUN.to_string()),
        tun_fd: cli.tun_fd,
        lan: lan::LanConfig {
            enabled: file.lan_discovery.unwrap_or(true),
            include: file.lan_interfaces.clone(),
            exclude: file.lan_exclude.clone(),
        },
        config_path: cli.config.clone(),
        cli_peers,
        offload: !cli.no_offload,
        admin,
        state_dir,
        node,
    })
}
