//! meshd's sans-IO node.
//!
//! [`Node`] composes the pieces of one meshd node: Noise links to direct peers over UDP
//! (`node`), the label switch (`switch` crate), the Kademlia routing table and lookups
//! (`table`, `routing`) and end-to-end sessions (`session`). It takes bytes, events and the
//! current time and returns datagrams, TUN packets, events and its next timer; it never
//! touches a clock, socket or runtime, so the daemon and the simulator drive the same code.
#![deny(unsafe_code)]

pub mod control;
#[doc(hidden)]
pub mod fuzzing;
pub mod icmp;
mod node;
mod routing;
mod session;
pub mod table;
pub mod tree;
pub mod tunnel;
pub mod wire;

pub use node::{Event, LinkStats, Node, NodeConfig, PeerInfo, Transmit, DEFAULT_MTU, OVERHEAD};
pub use routing::DirectState;
pub use session::{SessionInfo, SessionStats};
pub use switch::{Label, Route};

/// Counters of one node: traffic, events, and every reason a packet was dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// UDP datagrams received.
    pub rx_datagrams: u64,
    /// UDP bytes received.
    pub rx_bytes: u64,
    /// UDP datagrams sent.
    pub tx_datagrams: u64,
    /// UDP bytes sent.
    pub tx_bytes: u64,
    /// Frames forwarded for others.
    pub forwarded: u64,
    /// Frames relayed for others: re-labelled here with the next segment of their route.
    pub relayed: u64,
    /// Link handshakes started.
    pub handshakes_sent: u64,
    /// Link handshakes completed.
    pub handshakes_completed: u64,
    /// Session handshakes started.
    pub session_handshakes_sent: u64,
    /// Sessions established.
    pub sessions_established: u64,
    /// Lookups started.
    pub lookups: u64,
    /// Lookups that found their target.
    pub lookups_found: u64,
    /// Lookups that failed.
    pub lookups_failed: u64,
    /// Switch errors received.
    pub switch_errors: u64,
    /// Sessions that moved to another path.
    pub path_switches: u64,
    /// Path probes unanswered.
    pub probes_lost: u64,
    /// Links that went down.
    pub links_down: u64,
    /// Hole-punching rounds started (direct links through the mesh).
    pub punches: u64,
    /// Dropped: unparseable packet or frame.
    pub drop_malformed: u64,
    /// Dropped: no handshake or session with that index.
    pub drop_unknown_index: u64,
    /// Dropped: failed authentication.
    pub drop_decrypt: u64,
    /// Dropped: replayed counter.
    pub drop_replay: u64,
    /// Dropped: handshake message that failed (wrong secret, bad key...).
    pub drop_handshake_failed: u64,
    /// Dropped: handshake over the rate limit.
    pub drop_handshake_rate: u64,
    /// Dropped: peer not on the allow-list.
    pub drop_not_allowed: u64,
    /// Dropped: frame for a link that is down or missing (an error went back).
    pub drop_no_route: u64,
    /// Dropped: control message over a peer's rate limit.
    pub drop_control_rate: u64,
    /// Dropped: undecodable or unexpected control message.
    pub drop_bad_control: u64,
    /// Dropped: control answer with a bad signature or key (a lie).
    pub drop_forged: u64,
    /// Dropped: inner source address not the session's.
    pub drop_spoofed: u64,
    /// Dropped: waiting queue full.
    pub drop_queue_full: u64,
    /// Dropped: packet from the TUN we don't carry.
    pub drop_tun_invalid: u64,
    /// Dropped: packet larger than the MTU (answered with Packet Too Big).
    pub drop_too_big: u64,
    /// Dropped: destination unreachable (answered with ICMPv6).
    pub drop_unreachable: u64,
}
