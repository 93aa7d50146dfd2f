//! Issue "Two nodes meet": two real meshd processes in two network namespaces joined by a
//! veth pair, reaching each other's fc00::/8 addresses through their TUN devices.
//!
//! Needs root (namespaces, TUN). Every test cleans up after itself, also when it fails.

mod common;

use std::time::{Duration, Instant};

use common::{Mesh, NodeOpts, PORT};

/// Two namespaces joined by a veth; node 1 dials node 0.
fn pair(tag: &str) -> Mesh {
    let mut m = Mesh::new(tag, 2);
    m.link(0, 1);
    m.start(0, NodeOpts::default());
    m.start(1, NodeOpts::peers(&[0]));
    m
}

#[test]
fn ping6_both_ways() {
    let mut m = pair("png");
    let t01 = m.wait_ping(1, 0, Duration::from_secs(10));
    let t10 = m.wait_ping(0, 1, Duration::from_secs(5));
    eprintln!("first reply 1->0 after {t01:?}, 0->1 after {t10:?}");
    // Not just one lucky packet: a burst of ten, every one answered.
    for (from, to) in [(0, 1), (1, 0)] {
        m.ping_burst(from, to, 10, 0.05);
    }
}

#[test]
fn eight_megabyte_tcp_stream_arrives_intact() {
    let mut m = pair("tcp");
    m.wait_ping(1, 0, Duration::from_secs(10));
    let len = 8 << 20;
    let took = m.tcp_transfer(1, 0, len, Duration::from_secs(60));
    eprintln!(
        "8 MiB node1 -> node0 in {took:?} ({:.1} Mbit/s)",
        len as f64 * 8.0 / took.as_secs_f64() / 1e6
    );
    let took = m.tcp_transfer(0, 1, len, Duration::from_secs(60));
    eprintln!(
        "8 MiB node0 -> node1 in {took:?} ({:.1} Mbit/s)",
        len as f64 * 8.0 / took.as_secs_f64() / 1e6
    );
}

#[test]
fn restarted_node_keeps_its_address_and_is_reached_again() {
    let mut m = pair("rst");
    m.wait_ping(1, 0, Duration::from_secs(10));
    let before = (m.addr(0), m.key(0));
    let identity = std::fs::read_to_string(m.state_dir(0).join("identity")).expect("identity file");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(m.state_dir(0).join("identity"))
            .expect("identity file")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the identity file is readable by others (mode {:o})",
            mode & 0o777
        );
    }

    // Node 0 is the one that was dialed: node 1 must find it again on its own.
    m.stop(0);
    assert!(!m.ping_once(1, &before.0), "node 0 answered while stopped");
    m.restart(0);
    assert_eq!(
        std::fs::read_to_string(m.state_dir(0).join("identity")).expect("identity file"),
        identity,
        "the identity file changed across a restart"
    );
    let out = common::run(
        std::process::Command::new(common::MESHD)
            .arg("address")
            .arg("--state-dir")
            .arg(m.state_dir(0)),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec![before.0.as_str(), before.1.as_str()],
        "address/key changed across a restart"
    );
    // (start() already checked the TUN carries that same address.)
    let took = m.wait_ping(1, 0, Duration::from_secs(15));
    eprintln!("restarted node 0 reached again from node 1 after {took:?}");
    m.wait_ping(0, 1, Duration::from_secs(5));

    // And the other way round: the dialing node restarts.
    m.stop(1);
    m.restart(1);
    let took = m.wait_ping(0, 1, Duration::from_secs(15));
    eprintln!("restarted node 1 reached again from node 0 after {took:?}");
}

#[test]
fn garbage_udp_leaves_the_node_alive_and_linked() {
    let mut m = Mesh::new("gbg", 2);
    let l = m.link(0, 1);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/udp_garbage.py");
    let captured = m.dir.join("captured.bin");
    // Record what node 1 sends node 0 from the very first handshake on, to replay it.
    let mut cap = m.spawn(
        0,
        "capture",
        "python3",
        &[
            script,
            "capture",
            &l.a_dev,
            &PORT.to_string(),
            captured.to_str().unwrap(),
            "6",
            "300",
        ],
    );
    let ready = Instant::now();
    while !cap.log_text().contains("ready") {
        assert!(
            cap.is_running() && ready.elapsed() < Duration::from_secs(10),
            "capture did not start: {}",
            cap.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    m.start(0, NodeOpts::default());
    m.start(1, NodeOpts::peers(&[0]));
    m.wait_ping(1, 0, Duration::from_secs(10));
    // Some data traffic (link frames, session frames) to capture.
    let _ = m
        .cmd(1, "ping")
        .args(["-6", "-n", "-c40", "-i0.02", "-W1", &m.addr(0)])
        .output();
    let _ = m
        .cmd(0, "ping")
        .args(["-6", "-n", "-c40", "-i0.02", "-W1", &m.addr(1)])
        .output();
    let st = cap.wait_timeout(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "capture failed: {}",
        cap.log_text()
    );
    eprintln!("{}", cap.log_text().trim());

    // The flood comes from node 1's namespace; replays carry node 1's own address and port.
    let count = 40_000;
    let rx_before = m.dev_counter(0, &l.a_dev, "rx_packets");
    let get = |m: &Mesh, i: usize, k: &str| {
        m.metrics(i)
            .get(k)
            .copied()
            .unwrap_or_else(|| panic!("node {i}: no metric {k}"))
    };
    const UDP_RX: &str = "meshd_udp_packets_total{direction=\"rx\"}";
    const LINKS_MADE: &str = "meshd_handshakes_total{reason=\"link_completed\"}";
    let (udp_rx0, links0, links1) = (
        get(&m, 0, UDP_RX),
        get(&m, 0, LINKS_MADE),
        get(&m, 1, LINKS_MADE),
    );
    let start = Instant::now();
    let mut flood = m.spawn(
        1,
        "flood",
        "python3",
        &[
            script,
            "flood",
            &l.a_ip,
            &PORT.to_string(),
            captured.to_str().unwrap(),
            &l.b_ip,
            &PORT.to_string(),
            &count.to_string(),
            "7",
        ],
    );
    // Pinging through the flood, for the record (the flood may overflow socket buffers, so
    // losses here are not held against the node).
    let mut during = m.spawn(
        1,
        "ping-during-flood",
        "ping",
        &["-6", "-n", "-i0.1", "-W1", &m.addr(0)],
    );
    let st = flood.wait_timeout(Duration::from_secs(60));
    assert!(
        st.is_some_and(|s| s.success()),
        "flood failed: {}",
        flood.log_text()
    );
    eprintln!("{} ({:?})", flood.log_text().trim(), start.elapsed());
    let arrived = m.dev_counter(0, &l.a_dev, "rx_packets") - rx_before;
    assert!(
        arrived >= count * 95 / 100,
        "only {arrived} of {count} datagrams reached node 0's veth: the flood did not happen"
    );
    during.signal("INT");
    during.wait_timeout(Duration::from_secs(3));
    let text = during.log_text();
    eprintln!(
        "ping during the flood: {}",
        text.lines().rev().nth(1).unwrap_or("")
    );

    assert!(m.is_running(0), "node 0 died under the flood");
    assert!(m.is_running(1), "node 1 died");
    // The node itself read them (not only its veth), and its link was never lost and re-made:
    // no handshake completed on either side during the flood.
    let read = get(&m, 0, UDP_RX) - udp_rx0;
    eprintln!("node 0 read {read} datagrams during the flood");
    assert!(
        read >= 20_000.0,
        "node 0 read only {read} datagrams of the {count}-datagram flood"
    );
    assert_eq!(
        get(&m, 0, LINKS_MADE),
        links0,
        "node 0 completed a link handshake during the flood: the link was lost or hijacked"
    );
    assert_eq!(
        get(&m, 1, LINKS_MADE),
        links1,
        "node 1 completed a link handshake during the flood: the link was lost"
    );
    assert_eq!(get(&m, 0, "meshd_peers_up"), 1.0, "node 0 lost its peer");
    // Still linked: answers right away, both ways, with no time to re-handshake from scratch.
    for (from, to) in [(1, 0), (0, 1)] {
        m.ping_burst(from, to, 5, 0.1);
    }
    let log = std::fs::read_to_string(m.log_path(0)).unwrap_or_default();
    assert!(!log.contains("panicked"), "node 0 logged a panic:\n{log}");
}

#[test]
fn wrong_network_secret_never_links() {
    // Node 0 and node 2 share a secret; node 1 has another one. Both dial node 0.
    let mut m = Mesh::new("sec", 3);
    m.link(0, 1);
    m.link(0, 2);
    let secret = |s: &str| NodeOpts {
        secret: Some(s.to_string()),
        ..Default::default()
    };
    m.start(0, secret("right horse battery"));
    m.start(
        1,
        NodeOpts {
            peers: vec![0],
            ..secret("wrong horse battery")
        },
    );
    m.start(
        2,
        NodeOpts {
            peers: vec![0],
            ..secret("right horse battery")
        },
    );
    m.wait_ping(2, 0, Duration::from_secs(10));
    m.wait_ping(0, 2, Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut tries = 0;
    while Instant::now() < deadline {
        for (from, to) in [(1, 0), (0, 1), (1, 2)] {
            assert!(
                !m.ping_once(from, &m.addr(to)),
                "node {from} reached node {to} across different network secrets"
            );
            tries += 1;
        }
    }
    assert!(m.is_running(0) && m.is_running(1), "a node died");
    // The right pair still works after all those failed handshakes.
    m.wait_ping(2, 0, Duration::from_secs(3));
    // Node 1 did knock, and node 0 refused it for the secret (not for want of trying).
    let refused = m.metric(0, "meshd_drops_total{reason=\"handshake_failed\"}");
    assert!(
        refused > 0.0,
        "node 0 saw no failed handshake: node 1 never even tried to link"
    );
    eprintln!(
        "{tries} pings across the secret boundary all failed; node 0 refused {refused} handshakes"
    );
}
