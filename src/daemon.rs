//! The I/O shell: one UDP socket, one TUN device, timers and signals around one sans-IO
//! [`router::Node`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crypto::Identity;
use router::Node;
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::PeerSpec;

/// Everything the daemon needs, after config and flags are merged.
#[derive(Debug)]
pub struct Settings {
    pub identity: Identity,
    pub listen: SocketAddr,
    pub peers: Vec<PeerSpec>,
    pub tun: String,
    pub admin: SocketAddr,
    /// Bearer token for the admin API.
    pub admin_token: String,
    /// Also serve the admin API on this unix socket.
    pub admin_socket: Option<PathBuf>,
    #[allow(dead_code)]
    pub state_dir: PathBuf,
    pub node: router::NodeConfig,
}

/// Datagrams read per wake-up before other work gets a turn.
const BATCH: usize = 64;

pub async fn run(s: Settings) -> Result<()> {
    let sock = UdpSocket::bind(s.listen)
        .await
        .with_context(|| format!("binding UDP {}", s.listen))?;
    let v6_socket = s.listen.is_ipv6();
    let addr = s.identity.address();
    let mtu = s.node.mtu;
    let tun = tun_rs::DeviceBuilder::new()
        .name(&s.tun)
        .ipv6(addr.ip(), 8u8)
        .mtu(mtu as u16)
        .build_async()
        .with_context(|| {
            format!(
                "creating TUN {} (needs root or CAP_NET_ADMIN, and /dev/net/tun)",
                s.tun
            )
        })?;
    tracing::info!(address = %addr, key = %s.identity.public_key(), listen = %s.listen, tun = %s.tun, mtu, "meshd running");

    let start = Instant::now();
    let (admin_tx, mut admin_rx) = tokio::sync::mpsc::channel::<admin_api::Command>(64);
    let admin_app = admin_api::server::app(admin_tx, s.admin_token);
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
        listen: vec![sock.local_addr()?],
        tun: s.tun.clone(),
        started: start,
    });
    tracing::info!(admin = %s.admin, "admin API listening");
    let mut node = Node::new(s.identity, s.node, rand::random(), start);
    let mut unresolved: Vec<PeerSpec> = Vec::new();
    for p in s.peers {
        match p.resolve().await {
            Ok(a) => {
                node.add_peer(Instant::now(), a, p.key);
            }
            Err(e) => {
                tracing::warn!("peer {}:{}: {e:#}; will retry", p.host, p.port);
                unresolved.push(p);
            }
        }
    }

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut resolve_retry = tokio::time::interval(Duration::from_secs(5));
    let mut udp_buf = vec![0u8; 65536];
    let mut tun_buf = vec![0u8; 65536];

    loop {
        let deadline = tokio::time::Instant::from_std(node.poll_timeout());
        tokio::select! {
            r = sock.recv_from(&mut udp_buf) => {
                let now = Instant::now();
                match r {
                    Ok((n, from)) => node.handle_datagram(now, canonical(from), &udp_buf[..n]),
                    Err(e) => tracing::debug!("udp recv: {e}"),
                }
                for _ in 1..BATCH {
                    match sock.try_recv_from(&mut udp_buf) {
                        Ok((n, from)) => node.handle_datagram(now, canonical(from), &udp_buf[..n]),
                        Err(_) => break,
                    }
                }
            }
            r = tun.recv(&mut tun_buf) => {
                match r {
                    Ok(n) => node.handle_tun_packet(Instant::now(), &tun_buf[..n]),
                    Err(e) => tracing::debug!("tun recv: {e}"),
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
            _ = resolve_retry.tick(), if !unresolved.is_empty() => {
                let mut still = Vec::new();
                for p in unresolved.drain(..) {
                    match p.resolve().await {
                        Ok(a) => { node.add_peer(Instant::now(), a, p.key); }
                        Err(_) => still.push(p),
                    }
                }
                unresolved = still;
            }
            Some(cmd) = admin_rx.recv() => executor.execute(&mut node, Instant::now(), cmd),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        node.handle_timeout(Instant::now());
        flush(&mut node, &sock, &tun, v6_socket, &mut executor).await;
    }
    tracing::info!("shutting down: telling peers");
    node.close_all(Instant::now());
    flush(&mut node, &sock, &tun, v6_socket, &mut executor).await;
    Ok(())
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

async fn flush(
    node: &mut Node,
    sock: &UdpSocket,
    tun: &tun_rs::AsyncDevice,
    v6_socket: bool,
    executor: &mut admin_api::Executor,
) {
    while let Some(t) = node.poll_transmit() {
        let dst = if v6_socket { v6_mapped(t.dst) } else { t.dst };
        if let Err(e) = sock.send_to(&t.payload, dst).await {
            tracing::debug!("udp send to {dst}: {e}");
        }
    }
    while let Some(p) = node.poll_tun_packet() {
        if let Err(e) = tun.send(&p).await {
            tracing::debug!("tun send: {e}");
        }
    }
    while let Some(ev) = node.poll_event() {
        tracing::debug!(?ev, "event");
        executor.on_event(&ev);
    }
}

/// IPv4-mapped IPv6 source addresses as plain IPv4, so they match configured peers.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// IPv4 destinations as IPv4-mapped IPv6, for a dual-stack IPv6 socket.
fn v6_mapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    }
}
