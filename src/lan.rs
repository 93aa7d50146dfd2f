//! LAN auto-peering: IPv6 link-local multicast beacons on every allowed interface.
//!
//! A beacon says only "meshd, this key, this port": it carries no secret. Whoever hears it and
//! has the lower key dials the other with IK; the network secret and allow-list still decide in
//! the handshake who may link, so a visitor's node on the LAN can't join a private mesh.
//! Interfaces are rescanned every few seconds, so ones that come up late are picked up.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use crypto::PublicKey;
use tokio::net::UdpSocket;

/// The link-local multicast group beacons go to (ff02::6d65:7368, "mesh").
pub const GROUP: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0x6d65, 0x7368);
const MAGIC: &[u8; 9] = b"MESHDLAN1";
/// Beacon length: magic, key, port.
pub const BEACON_LEN: usize = 9 + 32 + 2;
/// A LAN dial that hasn't linked by then is dropped (until the next beacon after a pause).
const DIAL_GIVE_UP: Duration = Duration::from_secs(30);

/// Which interfaces to beacon on.
#[derive(Clone, Debug, Default)]
pub struct LanConfig {
    /// Off entirely.
    pub enabled: bool,
    /// Name patterns to use (`*` wildcards); empty: every multicast interface.
    pub include: Vec<String>,
    /// Name patterns never to use.
    pub exclude: Vec<String>,
}

/// LAN discovery state.
pub struct Lan {
    cfg: LanConfig,
    key: PublicKey,
    port: u16,
    joined: HashMap<u32, String>,
    /// Keys we dialed because of a beacon: endpoint and when.
    pub dials: HashMap<PublicKey, (SocketAddr, Instant)>,
}

/// Simple glob: `*` matches any run of characters.
pub fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            name.starts_with(head) && {
                let rest = &name[head.len()..];
                (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob(tail, &rest[i..]))
            }
        }
    }
}

impl Lan {
    /// LAN discovery for a node with `key` listening on `port`.
    pub fn new(cfg: LanConfig, key: PublicKey, port: u16) -> Lan {
        Lan {
            cfg,
            key,
            port,
            joined: HashMap::new(),
            dials: HashMap::new(),
        }
    }

    fn wanted(&self, name: &str) -> bool {
        (self.cfg.include.is_empty() || self.cfg.include.iter().any(|p| glob(p, name)))
            && !self.cfg.exclude.iter().any(|p| glob(p, name))
    }

    /// Joins the group on new interfaces, leaves vanished ones.
    pub fn scan(&mut self, sock: &UdpSocket, tun: &str) {
        if !self.cfg.enabled {
            return;
        }
        let mut seen = HashSet::new();
        let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let read = |f: &str| {
                std::fs::read_to_string(e.path().join(f))
                    .ok()
                    .map(|s| s.trim().to_string())
            };
            let flags = read("flags")
                .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
                .unwrap_or(0);
            let Some(index) = read("ifindex").and_then(|i| i.parse::<u32>().ok()) else {
                continue;
            };
            const IFF_UP: u32 = 0x1;
            const IFF_LOOPBACK: u32 = 0x8;
            const IFF_MULTICAST: u32 = 0x1000;
            if name == tun
                || flags & IFF_UP == 0
                || flags & IFF_LOOPBACK != 0
                || flags & IFF_MULTICAST == 0
                || !self.wanted(&name)
            {
                continue;
            }
            seen.insert(index);
            if let std::collections::hash_map::Entry::Vacant(slot) = self.joined.entry(index) {
                match sock.join_multicast_v6(&GROUP, index) {
                    Ok(()) => {
                        tracing::info!(interface = %name, "LAN discovery on");
                        slot.insert(name);
                    }
                    Err(e) => tracing::debug!(interface = %name, "can't join the LAN group: {e}"),
                }
            }
        }
        self.joined.retain(|i, name| {
            let keep = seen.contains(i);
            if !keep {
                tracing::info!(interface = %name, "LAN discovery off (interface gone)");
            }
            keep
        });
    }

    /// Sends a beacon on every joined interface.
    pub async fn beacon(&self, sock: &UdpSocket) {
        let mut b = Vec::with_capacity(BEACON_LEN);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.key.0);
        b.extend_from_slice(&self.port.to_le_bytes());
        for &i in self.joined.keys() {
            let _ = sock
                .send_to(
                    &b,
                    SocketAddr::V6(SocketAddrV6::new(GROUP, self.port, 0, i)),
                )
                .await;
        }
    }

    /// If `data` is a beacon from another node that we should dial, returns its key.
    pub fn on_datagram(
        &mut self,
        data: &[u8],
        from: SocketAddr,
        now: Instant,
        linked: impl Fn(&PublicKey) -> bool,
    ) -> Option<PublicKey> {
        if data.len() != BEACON_LEN || &data[..9] != MAGIC {
            return None;
        }
        let key = PublicKey(data[9..41].try_into().ok()?);
        if key == self.key || key.validate().is_err() || linked(&key) {
            return None;
        }
        // The lower key dials, so two nodes don't both start handshakes.
        if self.key > key {
            return None;
        }
        match self.dials.get(&key) {
            Some((_, t)) if now.saturating_duration_since(*t) < DIAL_GIVE_UP * 2 => None,
            _ => {
                self.dials.insert(key, (from, now));
                Some(key)
            }
        }
    }

    /// Whether `data` looks like a beacon (so it is not handed to the node).
    pub fn is_beacon(data: &[u8]) -> bool {
        data.len() == BEACON_LEN && &data[..9] == MAGIC
    }

    /// LAN dials that never linked and should be dropped.
    pub fn expired(
        &mut self,
        now: Instant,
        linked: impl Fn(&PublicKey) -> bool,
    ) -> Vec<SocketAddr> {
        self.dials
            .iter()
            .filter(|(k, (_, t))| {
                !linked(k)
                    && now.saturating_duration_since(*t) > DIAL_GIVE_UP
                    && now.saturating_duration_since(*t) < DIAL_GIVE_UP + Duration::from_secs(10)
            })
            .map(|(_, (e, _))| *e)
            .collect()
    }

    /// Endpoints dialed because of beacons.
    pub fn endpoints(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.dials.values().map(|(e, _)| *e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("eth*", "eth0"));
        assert!(glob("*", "wlan0"));
        assert!(glob("br-*-lan", "br-x-lan"));
        assert!(!glob("eth*", "wlan0"));
        assert!(glob("wlan0", "wlan0"));
        assert!(!glob("wlan0", "wlan01"));
    }
}
