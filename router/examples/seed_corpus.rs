//! Writes the seed corpus for the fuzz targets in `fuzz/` from real traffic: datagrams of a
//! three-node line linking, looking each other up and exchanging packets, plus real switch
//! frames and control messages. Run: `cargo run -p meshd-router --example seed_corpus`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crypto::Identity;
use meshd_router::control::{Control, Coord, EndpointRecord, ErrorCode, NodeRecord, SwitchError};
use meshd_router::{Label, Node, NodeConfig, Route};
use rand::SeedableRng;
use switch::{FrameKind, SwitchHeader};

fn ep(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8 + 1], 7400))
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let ids: Vec<Identity> = (0..3).map(|_| Identity::generate(&mut rng)).collect();
    let start = Instant::now();
    let mut nodes: Vec<Node> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Node::new(id.clone(), NodeConfig::default(), i as u64, start))
        .collect();
    nodes[0].add_peer(start, ep(1), None);
    nodes[2].add_peer(start, ep(1), Some(ids[1].public_key()));
    let mut captured: Vec<Vec<u8>> = Vec::new();
    let mut queue: VecDeque<(usize, usize, Vec<u8>)> = VecDeque::new();
    let mut now = start;
    #[allow(clippy::needless_range_loop)] // nodes are indexed by their endpoint number
    for step in 0..400 {
        now += Duration::from_millis(10);
        if step == 150 {
            let (s, d) = (ids[0].address().ip(), ids[2].address().ip());
            let mut p = vec![0x60, 0, 0, 0, 0, 8, 58, 64];
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[128, 0, 0, 0, 0, 1, 0, 1]);
            nodes[0].handle_tun_packet(now, &p);
        }
        for i in 0..3 {
            nodes[i].handle_timeout(now);
            while let Some(t) = nodes[i].poll_transmit() {
                if let Some(j) = (0..3).find(|&j| ep(j) == t.dst) {
                    queue.push_back((i, j, t.payload));
                }
            }
            while nodes[i].poll_tun_packet().is_some() {}
        }
        while let Some((from, to, data)) = queue.pop_front() {
            if captured.len() < 60 || captured.iter().all(|c| c[0] != data[0]) {
                captured.push(data.clone());
            }
            nodes[to].handle_datagram(now, ep(from), &data);
            while let Some(t) = nodes[to].poll_transmit() {
                if let Some(j) = (0..3).find(|&j| ep(j) == t.dst) {
                    queue.push_back((to, j, t.payload));
                }
            }
        }
    }
    for (n, d) in captured.iter().enumerate() {
        write(&root.join("node_datagram"), &format!("real-{n:03}"), d);
        write(&root.join("tunnel_msg"), &format!("real-{n:03}"), d);
    }
    let route = Label::from_directors(&[1, 9, 100]).unwrap();
    let controls = [
        Control::FindNode {
            txid: 1,
            target: ids[2].address(),
            asker: ids[0].public_key(),
            coord: None,
        },
        Control::nodes(
            &ids[1],
            1,
            Label::from_directors(&[3]).unwrap().0,
            [
                Some(Coord {
                    root: ids[2].public_key(),
                    // A deep node: its coordinate takes two labels.
                    down: Route::from_directors([2, 5].into_iter().cycle().take(30)).unwrap(),
                }),
                Some(Coord {
                    root: ids[0].public_key(),
                    down: Route::from(Label::from_directors(&[3, 1]).unwrap()),
                }),
                None,
                Some(Coord {
                    root: ids[1].public_key(),
                    down: Route::from(Label::from_directors(&[2, 2]).unwrap()),
                }),
            ],
            vec![NodeRecord {
                key: ids[2].public_key(),
                label: route.0,
                coord: Route::from(Label::from_directors(&[2]).unwrap()),
                alts: [
                    Route::from(Label::from_directors(&[1, 2]).unwrap()),
                    Route::from(Label::from_directors(&[4]).unwrap()),
                    Route::INVALID,
                ],
            }],
        ),
        Control::Ping {
            txid: 2,
            asker: ids[0].public_key(),
        },
        Control::pong(&ids[2], 2, [None; meshd_router::tree::TREES]),
        Control::Tree {
            root: ids[2].public_key(),
            rank: 1,
            seq: 9,
            depth: 1,
            up: Route::from(Label::from_directors(&[0]).unwrap()),
            down: Route::from(Label::from_directors(&[4]).unwrap()),
            director: 1,
            root_height: 7,
            height: 2,
            child: true,
            tree: 0,
        },
        Control::Rendezvous {
            record: EndpointRecord::new(
                &ids[0],
                1,
                vec![ep(0), "[2001:db8::1]:7400".parse().unwrap()],
            ),
        },
    ];
    for (n, c) in controls.iter().enumerate() {
        let body = c.to_bytes();
        write(&root.join("control"), &format!("real-{n:03}"), &body);
        let mut f = vec![0u8; SwitchHeader::LEN];
        SwitchHeader {
            route,
            reverse: Label::SELF,
            kind: FrameKind::Router,
        }
        .write(&mut f);
        f.extend_from_slice(&body);
        write(&root.join("switch_frame"), &format!("real-{n:03}"), &f);
    }
    let err = SwitchError {
        code: ErrorCode::LinkDown,
        reporter: ids[1].public_key(),
        remaining: route.0,
    };
    write(&root.join("control"), "switch-error", &err.to_bytes());
    let mut f = vec![0u8; SwitchHeader::LEN];
    SwitchHeader {
        route: Label::SELF,
        reverse: route,
        kind: FrameKind::Error,
    }
    .write(&mut f);
    f.extend_from_slice(&err.to_bytes());
    write(&root.join("switch_frame"), "switch-error", &f);
    // A relayed frame as it leaves, and as it reaches its relay.
    let far = Route::new(&[route, Label::from_directors(&[1, 2, 3]).unwrap()]).unwrap();
    let mut f = vec![0u8; SwitchHeader::LEN + far.relay_header_len()];
    switch::write_headers(far, FrameKind::Router, &mut f);
    f.extend_from_slice(&controls[0].to_bytes());
    write(&root.join("switch_frame"), "relayed-sent", &f);
    while let switch::Decision::Forward(_) = switch::forward(&mut f, Some(1)) {}
    write(&root.join("switch_frame"), "relayed-at-relay", &f);
    println!(
        "wrote {} datagrams and {} control messages under {}",
        captured.len(),
        controls.len() + 1,
        root.display()
    );
}
