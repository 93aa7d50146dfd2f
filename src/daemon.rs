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
    #[allow(dead_code)] // served by the admin API
    pub admin: SocketAddr,
    #[allow(dead_code)]
    pub state_dir: PathBuf,
    pub node: router::NodeConfig,
}

/// Datagrams read per wake-up before other work gets a turn.
const BATCH: usize = 64;

pub async fn run(s: Settings) -> Result<()> {
    let sock = UdpSocket::bind(s.listen).await.with_context(|| format!("binding UDP {}", s.listen))?;
    let v6_socket = s.listen.is_ipv6();
    let addr = s.identity.address();
    let mtu = s.node.mtu;
    let tun = tun_rs::DeviceBuilder::new()
        .name(&s.tun)
        .ipv6(addr.ip(), 8u8)
        .mtu(mtu as u16)
        .build_async()
        .with_context(|| format!("creating TUN {} (needs root or CAP_NET_ADMIN, and /dev/net/tun)", s.tun))?;
    tracing::info!(address = %addr, key = %s.identity.public_key(), listen = %s.listen, tun = %s.tun, mtu, "meshd running");

    let start = Instant::now();
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
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        node.handle_timeout(Instant::now());
        flush(&mut node, &sock, &tun, v6_socket).await;
    }
    tracing::info!("shutting down: telling peers");
    node.close_all(Instant::now());
    flush(&mut node, &sock, &tun, v6_socket).await;
    Ok(())
}

async fn flush(node: &mut Node, sock: &UdpSocket, tun: &tun_rs::AsyncDevice, v6_socket: bool) {
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
