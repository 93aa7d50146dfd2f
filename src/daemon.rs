//! The I/O shell: one UDP socket, one TUN device, the admin server, timers and signals around
//! one sans-IO [`router::Node`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crypto::{Identity, PublicKey};
use router::Node;
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{ConfigFile, PeerSpec};
use crate::io::{Tun, Udp};
use crate::lan::{Lan, LanConfig};

/// Everything the daemon needs, after config and flags are merged.
#[derive(Debug)]
pub struct Settings {
    pub identity: Identity,
    pub listen: SocketAddr,
    /// Peers from the config file and the command line.
    pub peers: Vec<PeerSpec>,
    pub tun: String,
    /// An already-open TUN file descriptor (Android's VpnService); address and routes are
    /// then the caller's business.
    pub tun_fd: Option<i32>,
    pub admin: SocketAddr,
    /// Bearer token for the admin API.
    pub admin_token: String,
    /// Also serve the admin API on this unix socket.
    pub admin_socket: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub node: router::NodeConfig,
    pub lan: LanConfig,
    /// For SIGHUP: the config file to re-read and the peers given on the command line.
    pub config_path: Option<PathBuf>,
    pub cli_peers: Vec<PeerSpec>,
    /// Use TUN offloads (TSO/GRO) and UDP GSO/GRO where available.
    pub offload: bool,
}

/// Datagrams read per wake-up before other work gets a turn.
const BATCH: usize = 64;

/// Opens the TUN: the given fd, or a new device with offloads if asked and available.
fn open_tun(s: &Settings) -> Result<Tun> {
    if let Some(fd) = s.tun_fd {
        // SAFETY: the fd was handed to us (by Android's VpnService or a wrapper) as an open
        // TUN device in IFF_NO_PI mode; we take ownership of it and nothing else uses it.
        #[allow(unsafe_code)]
        let dev = unsafe { tun_rs::AsyncDevice::from_fd(fd) }
            .with_context(|| format!("using TUN fd {fd}"))?;
        return Ok(Tun::new(dev, false));
    }
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(&s.tun)
            .ipv6(s.identity.address().ip(), 8u8)
            .mtu(s.node.mtu as u16)
            .offload(offload)
            .build_async()
    };
    if s.offload {
        match build(true) {
            Ok(dev) => return Ok(Tun::new(dev, true)),
            Err(e) => tracing::warn!("TUN offloads unavailable ({e}); one packet per read"),
        }
    }
    let dev = build(false).with_context(|| {
        format!(
            "creating TUN {} (needs root or CAP_NET_ADMIN, and /dev/net/tun)",
            s.tun
        )
    })?;
    Ok(Tun::new(dev, false))
}

/// Peers dialed because of the config, the command line, or the saved run-time list.
struct Peers {
    state_file: PathBuf,
    /// Spec → resolved endpoint (None while unresolved).
    wanted: Vec<(PeerSpec, Option<SocketAddr>)>,
    /// Peers added at run time, as last saved, and their endpoints.
    saved: BTreeSet<String>,
    runtime: BTreeSet<SocketAddr>,
}

fn spec_string(endpoint: SocketAddr, key: Option<PublicKey>) -> String {
    match key {
        Some(k) => format!("{k}@{endpoint}"),
        None => endpoint.to_string(),
    }
}

impl Peers {
    fn load_saved(state_dir: &std::path::Path) -> (PathBuf, Vec<PeerSpec>) {
        let path = state_dir.join("peers");
        let specs = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                PeerSpec::parse(l)
                    .map_err(|e| tracing::warn!("{}: {e:#}", path.display()))
                    .ok()
            })
            .collect();
        (path, specs)
    }

    /// Dials every wanted peer not yet dialed and drops dials no longer wanted.
    async fn apply(&mut self, node: &mut Node, lan: &Lan, specs: Vec<PeerSpec>) {
        let mut wanted = Vec::new();
        for spec in specs {
            let known = self
                .wanted
                .iter()
                .find(|(s, e)| *s == spec && e.is_some())
                .and_then(|(_, e)| *e);
            let ep = match known {
                Some(e) => Some(e),
                None => match spec.resolve().await {
                    Ok(e) => Some(e),
                    Err(e) => {
                        tracing::warn!("peer {}:{}: {e:#}; will retry", spec.host, spec.port);
                        None
                    }
                },
            };
            if let Some(e) = ep {
                node.add_peer(Instant::now(), e, spec.key);
            }
            wanted.push((spec, ep));
        }
        let keep: BTreeSet<SocketAddr> = wanted
            .iter()
            .filter_map(|(_, e)| *e)
            .chain(lan.endpoints())
            .chain(self.runtime.iter().copied())
            .collect();
        for (ep, _, _) in node.configured_peers() {
            if !keep.contains(&ep) {
                tracing::info!(endpoint = %ep, "peer no longer configured: removing");
                node.remove_peer(Instant::now(), None, Some(ep));
            }
        }
        self.wanted = wanted;
    }

    async fn retry_unresolved(&mut self, node: &mut Node) {
        for (spec, ep) in self.wanted.iter_mut().filter(|(_, e)| e.is_none()) {
            if let Ok(e) = spec.resolve().await {
                *ep = Some(e);
                node.add_peer(Instant::now(), e, spec.key);
            }
        }
    }

    /// Saves peers added at run time (through the admin API) to STATE_DIR/peers, so they
    /// are dialed again after a restart.
    fn save_runtime(&mut self, node: &Node, lan: &Lan) {
        let known: BTreeSet<SocketAddr> = self
            .wanted
            .iter()
            .filter_map(|(_, e)| *e)
            .chain(lan.endpoints())
            .collect();
        let peers: Vec<(SocketAddr, Option<PublicKey>)> = node
            .configured_peers()
            .into_iter()
            .filter(|(e, _, _)| !known.contains(e))
            .map(|(e, k, _)| (e, k))
            .collect();
        let runtime: BTreeSet<String> = peers.iter().map(|&(e, k)| spec_string(e, k)).collect();
        self.runtime = peers.iter().map(|&(e, _)| e).collect();
        if runtime == self.saved {
            return;
        }
        let mut text = String::from(
            "# Peers added at run time through the admin API; meshd rewrites this file.\n",
        );
        for l in &runtime {
            text.push_str(l);
            text.push('\n');
        }
        match std::fs::write(&self.state_file, text) {
            Ok(()) => self.saved = runtime,
            Err(e) => tracing::warn!("saving {}: {e}", self.state_file.display()),
        }
    }
}

pub async fn run(s: Settings) -> Result<()> {
    let sock = UdpSocket::bind(s.listen)
        .await
        .with_context(|| format!("binding UDP {}", s.listen))?;
    let v6_socket = s.listen.is_ipv6();
    let mut udp = Udp::new(sock).context("setting up the UDP socket")?;
    let mut tun = open_tun(&s)?;
    let addr = s.identity.address();
    tracing::info!(address = %addr, key = %s.identity.public_key(), listen = %s.listen, tun = %s.tun, mtu = s.node.mtu, offload = tun.headroom() > 0, "meshd running");

    let start = Instant::now();
    let (admin_tx, mut admin_rx) = tokio::sync::mpsc::channel::<admin_api::Command>(64);
    let admin_app = admin_api::server::app(admin_tx, s.admin_token.clone());
    let admin_listener = tokio::net::TcpListener::bind(s.admin)
        .await
        .with_context(|| format!("binding the admin API on {}", s.admin))?;
    tokio::spawn(serve_logged(admin_listener, admin_app.clone()));
    if let Some(path) = &s.admin_socket {
        let _ = std::fs::remove_file(path);
        let l = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("binding admin socket {}", path.display()))?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        tokio::spawn(serve_logged(l, admin_app));
    }
    let mut executor = admin_api::Executor::new(admin_api::DaemonInfo {
        listen: vec![udp.socket().local_addr()?],
        tun: s.tun.clone(),
        started: start,
    });
    tracing::info!(admin = %s.admin, "admin API listening");

    let key = s.identity.public_key();
    let node_cfg = router::NodeConfig {
        tun_headroom: tun.headroom(),
        ..s.node.clone()
    };
    let mut node = Node::new(s.identity.clone(), node_cfg, rand::random(), start);
    let mut lan = Lan::new(
        LanConfig {
            enabled: s.lan.enabled && v6_socket,
            ..s.lan.clone()
        },
        key,
        s.listen.port(),
    );
    let (state_file, saved) = Peers::load_saved(&s.state_dir);
    let mut peers = Peers {
        state_file,
        wanted: Vec::new(),
        saved: BTreeSet::new(),
        runtime: BTreeSet::new(),
    };
    // Peers added at run time before: dial them again, still as run-time peers (so removing
    // one through the API also removes it from the file).
    for spec in saved {
        match spec.resolve().await {
            Ok(e) => {
                node.add_peer(Instant::now(), e, spec.key);
                peers.runtime.insert(e);
                peers.saved.insert(spec_string(e, spec.key));
            }
            Err(e) => tracing::warn!("saved peer {}:{}: {e:#}", spec.host, spec.port),
        }
    }
    peers.apply(&mut node, &lan, s.peers.clone()).await;
    peers.save_runtime(&node, &lan);
    lan.scan(udp.socket(), &s.tun);

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut slow_timer = tokio::time::interval(Duration::from_secs(2));
    let mut out = Outbox::default();

    loop {
        let deadline = tokio::time::Instant::from_std(node.poll_timeout());
        tokio::select! {
            r = udp.readable() => {
                if let Err(e) = r {
                    tracing::debug!("udp: {e}");
                }
                read_udp(&mut udp, &mut node, &mut lan);
            }
            r = tun.recv() => {
                match r {
                    Ok(n) => {
                        let now = Instant::now();
                        for k in 0..n {
                            node.handle_tun_packet(now, tun.packet(k));
                        }
                    }
                    Err(e) => tracing::debug!("tun recv: {e}"),
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
            Some(cmd) = admin_rx.recv() => {
                executor.execute(&mut node, Instant::now(), cmd);
                peers.save_runtime(&node, &lan);
            }
            _ = slow_timer.tick() => {
                peers.retry_unresolved(&mut node).await;
                lan.scan(udp.socket(), &s.tun);
                lan.beacon(udp.socket()).await;
                let now = Instant::now();
                let linked = |k: &PublicKey| node.peers(now).iter().any(|p| p.key == *k && p.up);
                for ep in lan.expired(now, linked) {
                    node.remove_peer(now, None, Some(ep));
                }
            }
            _ = sighup.recv() => reload(&s, &mut node, &mut peers, &lan).await,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        // Whatever arrived while we were busy (or descheduled) is read before timers run, so
        // a stall of this process never makes a live link look silent.
        read_udp(&mut udp, &mut node, &mut lan);
        node.handle_timeout(Instant::now());
        out.flush(&mut node, &mut udp, &mut tun, &mut executor)
            .await;
    }
    tracing::info!("shutting down: telling peers");
    node.close_all(Instant::now());
    out.flush(&mut node, &mut udp, &mut tun, &mut executor)
        .await;
    if let Some(path) = &s.admin_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Reads the datagrams that are ready (up to a batch) into the node; LAN beacons go to `lan`.
fn read_udp(udp: &mut Udp, node: &mut Node, lan: &mut Lan) {
    let now = Instant::now();
    let mut total = 0;
    loop {
        let n = udp.recv_ready(|from, data| {
            if Lan::is_beacon(data) {
                let linked = |k: &PublicKey| node.peers(now).iter().any(|p| p.key == *k && p.up);
                if let Some(k) = lan.on_datagram(data, from, now, linked) {
                    tracing::info!(peer = %k.address(), endpoint = %from, "LAN beacon: dialing");
                    node.add_peer(now, from, Some(k));
                }
            } else {
                node.handle_datagram(now, from, data);
            }
        });
        total += n;
        if n == 0 || total >= BATCH {
            break;
        }
    }
}

/// What the node produced, collected so each kind goes out in batches.
#[derive(Default)]
struct Outbox {
    datagrams: Vec<(SocketAddr, Vec<u8>)>,
    packets: Vec<Vec<u8>>,
}

impl Outbox {
    async fn flush(
        &mut self,
        node: &mut Node,
        udp: &mut Udp,
        tun: &mut Tun,
        executor: &mut admin_api::Executor,
    ) {
        self.datagrams.clear();
        while let Some(t) = node.poll_transmit() {
            self.datagrams.push((t.dst, t.payload));
        }
        udp.send_all(&self.datagrams).await;
        for (_, payload) in self.datagrams.drain(..) {
            node.recycle(payload);
        }
        while let Some(p) = node.poll_tun_packet() {
            self.packets.push(p);
        }
        tun.send_all(&mut self.packets).await;
        for p in self.packets.drain(..) {
            node.recycle(p);
        }
        while let Some(ev) = node.poll_event() {
            tracing::debug!(?ev, "event");
            executor.on_event(&ev);
        }
    }
}

/// SIGHUP: re-read the config's peers and allow-list. Links still wanted stay up.
async fn reload(s: &Settings, node: &mut Node, peers: &mut Peers, lan: &Lan) {
    let file = match &s.config_path {
        Some(p) => match ConfigFile::load(p) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("SIGHUP: config not reloaded, keeping the running one: {e:#}");
                return;
            }
        },
        None => ConfigFile::default(),
    };
    let mut specs = Vec::new();
    for p in &file.peers {
        match PeerSpec::parse(p) {
            Ok(spec) => specs.push(spec),
            Err(e) => {
                tracing::error!("SIGHUP: config not reloaded: {e:#}");
                return;
            }
        }
    }
    let allowed = match file.allowed() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("SIGHUP: config not reloaded: {e:#}");
            return;
        }
    };
    specs.extend(s.cli_peers.iter().cloned());
    tracing::info!(
        peers = specs.len(),
        allow_list = allowed.as_ref().map_or(0, |a| a.len()),
        "SIGHUP: reloading peers and allow-list"
    );
    node.set_allowed_keys(Instant::now(), allowed);
    peers.apply(node, lan, specs).await;
}

async fn serve_logged<L>(listener: L, app: axum::Router)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("admin API stopped: {e}");
    }
}
