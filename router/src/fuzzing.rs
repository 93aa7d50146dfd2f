//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the test that replays their
//! saved corpus on the stable toolchain (`router/tests/fuzz_corpus.rs`). Each feeds arbitrary
//! bytes to a wire parser or to a whole node; none may panic.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crypto::Identity;

use crate::control::{Control, SwitchError};
use crate::wire::TunnelMsg;
use crate::{Node, NodeConfig};

/// The tunnel message parser (UDP datagrams and session messages).
pub fn tunnel_msg(data: &[u8]) {
    let _ = TunnelMsg::parse(data);
}

/// The switch: header parsing, one forwarding step, labels.
pub fn switch_frame(data: &[u8]) {
    let mut f = data.to_vec();
    let _ = switch::forward(&mut f, Some(3));
    if let Ok(h) = switch::SwitchHeader::parse(data) {
        let _ = h.route.hops();
        let _ = h.route.reversed();
        let _ = h.route.splice(h.reverse);
        if h.kind == switch::FrameKind::Relayed {
            let mut g = data.to_vec();
            // Relay steps as a node would take them: at most one per segment.
            for _ in 0..switch::MAX_SEGMENTS {
                match switch::relay(&mut g) {
                    switch::RelayStep::Onward => {
                        if switch::forward(&mut g, None) != switch::Decision::Deliver {
                            break;
                        }
                    }
                    switch::RelayStep::Arrived { reverse, body, .. } => {
                        let _ = &g[body..];
                        let _ = reverse.hops();
                        let _ = reverse.to_string().parse::<switch::Route>();
                        let _ = reverse.extend(h.route, h.reverse);
                        let _ = reverse.prefix(3);
                        break;
                    }
                    switch::RelayStep::Drop => break,
                }
            }
        }
    }
}

/// Router control messages and switch errors.
pub fn control(data: &[u8]) {
    if let Some(c) = Control::from_bytes(data) {
        let _ = c.to_bytes();
        if let Control::Rendezvous { record } | Control::RendezvousAck { record } = &c {
            let _ = record.verify();
        }
    }
    let _ = SwitchError::parse(data);
}

/// A whole node: the bytes as a datagram from a stranger and as a TUN packet, then timers.
pub fn node_datagram(data: &[u8]) {
    thread_local! {
        static ID: Identity = Identity::from_seed(&SEED).expect("seed hashes into fc00::/8");
    }
    let id = ID.with(Clone::clone);
    let now = Instant::now();
    let mut node = Node::new(id, NodeConfig::default(), 1, now);
    let from: SocketAddr = "192.0.2.1:7400".parse().expect("literal");
    node.handle_datagram(now, from, data);
    node.handle_tun_packet(now, data);
    node.handle_timeout(now + Duration::from_secs(1));
    while node.poll_transmit().is_some() {}
    while node.poll_tun_packet().is_some() {}
}

/// A fixed identity seed whose address is in fc00::/8 (the crypto crate's known answer).
const SEED: [u8; 32] = [
    0x70, 0x56, 0x61, 0xaf, 0xa6, 0x7d, 0x79, 0x57, 0x0e, 0x6b, 0xe9, 0x81, 0x3d, 0x47, 0x9d, 0xeb,
    0x77, 0x11, 0x23, 0x08, 0xef, 0x8d, 0x17, 0x19, 0xef, 0xb4, 0x00, 0xf9, 0x25, 0xc4, 0xbd, 0xc2,
];
