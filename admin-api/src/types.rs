//! JSON bodies of the admin API (v1). `docs/admin-api.yaml` describes the same shapes.

use serde::{Deserialize, Serialize};

/// `GET /v1/self`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SelfInfo {
    /// This node's fc00::/8 address.
    pub address: String,
    /// ed25519 public key, hex.
    pub public_key: String,
    /// meshd version.
    pub version: String,
    /// Seconds since start.
    pub uptime_s: f64,
    /// UDP endpoints we listen on.
    pub listen: Vec<String>,
    /// Our endpoints as peers see them (public-address discovery).
    pub external_endpoints: Vec<String>,
    /// TUN device name.
    pub tun: String,
    /// TUN MTU.
    pub mtu: u32,
    /// Our place in each spanning tree, the main one first (docs/architecture.md, "The
    /// spanning tree" and "More trees"); empty from nodes that predate it.
    #[serde(default)]
    pub trees: Vec<TreePlace>,
}

/// Our place in one spanning tree, in `GET /v1/self`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TreePlace {
    /// Which tree: 0 the main one, 1 and up the hashed ones.
    pub tree: u8,
    /// The root's address (ours when we are the root).
    pub root: String,
    /// Hops from us up to the root.
    pub depth: u8,
    /// The peer we follow toward the root (its address); null at the root, or while cut off.
    pub parent: Option<String>,
}

/// One entry of `GET /v1/peers`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Peer {
    /// Peer's key, hex.
    pub public_key: String,
    /// Peer's address.
    pub address: String,
    /// UDP endpoint.
    pub endpoint: String,
    /// `up` or `down`.
    pub state: String,
    /// Keepalive round trip, ms.
    pub rtt_ms: Option<f64>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Datagrams received.
    pub rx_packets: u64,
    /// Datagrams sent.
    pub tx_packets: u64,
    /// Seconds since the last packet from the peer.
    pub last_seen_s: f64,
    /// The link's cipher, `aes-256-gcm` when both ends have AES instructions, else
    /// `chacha20-poly1305`; null before the first handshake (and from nodes that predate it).
    #[serde(default)]
    pub cipher: Option<String>,
}

/// `POST /v1/peers`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AddPeer {
    /// `HOST:PORT` (HOST a name, IPv4, or `[IPv6]`).
    pub endpoint: String,
    /// Optional key to pin, hex.
    #[serde(default)]
    pub public_key: Option<String>,
}

/// Answer to `POST /v1/peers` and `DELETE /v1/peers/{key}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PeerChange {
    /// What happened: `added` or `removed`.
    pub result: String,
    /// The endpoint resolved, for additions.
    pub endpoint: Option<String>,
}

/// One entry of `GET /v1/routes`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Route {
    /// Node address.
    pub address: String,
    /// Node key, hex.
    pub public_key: String,
    /// Best path label, 16 hex digits.
    pub path: String,
    /// Hops on that path.
    pub hops: u32,
    /// Measured round trip on that path, ms.
    pub rtt_ms: Option<f64>,
    /// Seconds since we last heard from it.
    pub last_seen_s: f64,
    /// Number of known paths (working or not).
    pub paths: u32,
}

/// One entry of `GET /v1/sessions`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Session {
    /// Remote address.
    pub address: String,
    /// Remote key, hex, once known.
    pub public_key: Option<String>,
    /// `established` or `handshaking`.
    pub state: String,
    /// Path in use, hex label.
    pub path: Option<String>,
    /// IPv6 bytes received.
    pub rx_bytes: u64,
    /// IPv6 bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Packets waiting for the session.
    pub queued: u32,
    /// Direct link to the node: tried or not, and why there is none.
    pub direct: Option<String>,
}

/// Body of `POST /v1/ping` and `POST /v1/traceroute`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// An fc00::/8 address.
    pub address: String,
}

/// Answer to `POST /v1/ping` and `GET /v1/lookup/{address}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PathAnswer {
    /// The node's address.
    pub address: String,
    /// Its key, hex.
    pub public_key: String,
    /// Path label, hex.
    pub path: String,
    /// Hops.
    pub hops: u32,
    /// Round trip, ms (ping only).
    pub rtt_ms: Option<f64>,
}

/// One hop of a traceroute.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Hop {
    /// 1 for our direct peer.
    pub hop: u32,
    /// Address of the node at that hop, if it answered.
    pub address: Option<String>,
    /// Its key, hex.
    pub public_key: Option<String>,
    /// Round trip, ms.
    pub rtt_ms: Option<f64>,
}

/// Answer to `POST /v1/traceroute`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Traceroute {
    /// The destination.
    pub address: String,
    /// The path label used, hex.
    pub path: String,
    /// Each hop.
    pub hops: Vec<Hop>,
    /// Whether the last hop is the destination.
    pub reached: bool,
}

/// Every error body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}
