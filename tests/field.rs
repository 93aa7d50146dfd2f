//! Issue "In the field": public-address discovery, LAN auto-peering (and the network secret
//! keeping strangers out), NAT traversal behind home-router-like NATs (and the symmetric NAT
//! where it can't work), roaming, a bare chroot, signals, and `--tun-fd`, with real meshd
//! processes in network namespaces.
//!
//! Needs root (namespaces, TUN, mounts) and curl. Every test cleans up after itself, also
//! when it fails.

mod common;
#[path = "field_support/mod.rs"]
mod field_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{longest_gap, run, unix_now, Mesh, NodeOpts, Proc, MESHD, PORT};
use field_support::*;
use serde_json::Value;

/// A config text with LAN discovery off and these peers.
fn cfg(peers: &[String]) -> String {
    format!("lan_discovery = false\n{}", toml_peers(peers))
}

fn ep(ip: &str) -> String {
    format!("{ip}:{PORT}")
}

/// The session node `i` has with `addr`.
fn session(m: &Mesh, i: usize, addr: &str) -> Option<Value> {
    get(m, i, "/v1/sessions")
        .as_array()
        .and_then(|a| a.iter().find(|s| s["address"] == addr).cloned())
}

/// The peer entry node `i` has for `key`.
fn peer_entry(m: &Mesh, i: usize, key: &str) -> Option<Value> {
    peers(m, i).into_iter().find(|p| p["public_key"] == key)
}

// ------------------------------------------------------------ public-address discovery

#[test]
fn each_node_learns_its_external_endpoint_from_its_peer() {
    let mut m = Mesh::new("fxe", 2);
    let l = m.link(0, 1);
    let c0 = write_config(&m, 0, &cfg(&[]));
    let c1 = write_config(&m, 1, &cfg(&[ep(&l.a_ip)]));
    let _n0 = start_with_config(&m, 0, &c0);
    let _n1 = start_with_config(&m, 1, &c1);
    m.wait_ping(1, 0, Duration::from_secs(10));
    for (i, ip) in [(0, &l.a_ip), (1, &l.b_ip)] {
        let want = ep(ip);
        let mut last = Value::Null;
        let t = poll(Duration::from_secs(5), || {
            last = get(&m, i, "/v1/self");
            last["external_endpoints"]
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e == want.as_str()))
        });
        assert!(
            t.is_some(),
            "node {i}'s external_endpoints should contain {want} (as its peer sees it): {last}"
        );
        let out = ctl_ok(&m, i, &["self"]);
        assert!(
            out.lines()
                .any(|l| l.starts_with("seen as") && l.contains(&want)),
            "ctl self on node {i} should show it is seen as {want}:\n{out}"
        );
    }
}

// ------------------------------------------------------------------------------- LAN

/// Nodes 0..n on one bridge (in node n's namespace, no meshd there), each through its own
/// veth `lan0`, no IPv4 addresses, no --peer: only link-local IPv6.
fn lan(tag: &str, secrets: &[Option<&str>]) -> Mesh {
    let mut m = lan_wiring(tag, secrets.len());
    for (i, s) in secrets.iter().enumerate() {
        m.start(
            i,
            NodeOpts {
                secret: s.map(str::to_string),
                ..Default::default()
            },
        );
    }
    m
}

/// The wiring of [`lan`] without starting anything.
fn lan_wiring(tag: &str, n: usize) -> Mesh {
    let m = Mesh::new(tag, n + 1);
    ns_run(
        &m,
        n,
        &[
            "ip",
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ],
    );
    ns_run(&m, n, &["ip", "link", "set", "br0", "up"]);
    for i in 0..n {
        let port = format!("p{i}");
        veth(&m, i, "lan0", n, &port);
        ns_run(&m, n, &["ip", "link", "set", &port, "master", "br0"]);
    }
    m
}

#[test]
fn three_nodes_on_a_bridge_find_each_other_without_peers() {
    let mut m = lan("lan", &[None, None, None]);
    let start = Instant::now();
    for (a, b) in [(0, 1), (0, 2), (1, 2), (1, 0), (2, 0), (2, 1)] {
        m.wait_ping(a, b, Duration::from_secs(20));
    }
    eprintln!("all six pairs answered ping6 after {:?}", start.elapsed());
    for i in 0..3 {
        for j in (0..3).filter(|&j| j != i) {
            let p = peer_entry(&m, i, &m.key(j))
                .unwrap_or_else(|| panic!("node {i} has no link to node {j}: {:?}", peers(&m, i)));
            assert_eq!(p["state"], "up", "node {i}'s link to {j}: {p}");
            assert!(
                p["endpoint"].as_str().is_some_and(|e| e.contains("fe80")),
                "node {i}'s link to {j} should be over link-local IPv6: {p}"
            );
        }
    }
}

#[test]
fn lan_nodes_with_a_network_secret_never_link_to_a_stranger() {
    let mut m = lan(
        "lsc",
        &[Some("our lan secret"), Some("our lan secret"), None],
    );
    m.wait_ping(0, 1, Duration::from_secs(20));
    m.wait_ping(1, 0, Duration::from_secs(5));
    let (k0, k1, k2) = (m.key(0), m.key(1), m.key(2));
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        for (i, other) in [(0, &k2), (1, &k2), (2, &k0), (2, &k1)] {
            assert!(
                !link_up(&m, i, other),
                "node {i} linked across the network secret boundary: {:?}",
                peers(&m, i)
            );
        }
        for (a, b) in [(2, 0), (2, 1), (0, 2)] {
            assert!(
                !m.ping_once(a, &m.addr(b)),
                "node {a} reached node {b} across the network secret boundary"
            );
        }
    }
    // The stranger did hear the beacons and tried (or was tried): handshakes were refused,
    // not merely never attempted.
    let mut refused = 0.0;
    let mut sent = 0.0;
    for i in 0..3 {
        refused += metric(&m, i, "meshd_drops_total{reason=\"handshake_failed\"}")
            + metric(&m, i, "meshd_drops_total{reason=\"decrypt\"}");
        sent += metric(&m, i, "meshd_handshakes_total{reason=\"link_sent\"}");
    }
    eprintln!("handshakes sent {sent}, refused {refused}");
    assert!(
        refused > 0.0,
        "no handshake across the secret boundary was refused: did node 2 hear the beacons at all? (handshakes sent: {sent})"
    );
    assert!(
        link_up(&m, 0, &k1) && link_up(&m, 1, &k0),
        "the secret pair lost its link"
    );
}

#[test]
fn lan_discovery_keeps_to_the_configured_interfaces() {
    // 0, 1: default (every interface); 2: lan_exclude matches its interface; 3: lan_interfaces
    // doesn't match it; 4: lan_interfaces names it. All on one bridge through `lan0`.
    let mut m = lan_wiring("lif", 5);
    let configs = [
        "",
        "",
        "lan_exclude = [\"lan*\"]\n",
        "lan_interfaces = [\"eth*\", \"wlan0\"]\n",
        "lan_interfaces = [\"lan0\"]\nlan_exclude = [\"docker*\"]\n",
    ];
    let mut procs = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let path = write_config(&m, i, c);
        procs.push(start_with_config(&m, i, &path));
    }
    for (a, b) in [(0, 1), (0, 4), (1, 4), (4, 0)] {
        m.wait_ping(a, b, Duration::from_secs(20));
    }
    let keys: Vec<String> = (0..5).map(|i| m.key(i)).collect();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        for i in [2, 3] {
            let ps = peers(&m, i);
            assert!(
                ps.is_empty(),
                "node {i}'s only interface is left out of LAN discovery by its config, yet it has peers: {ps:?}"
            );
            for j in [0, 1, 4] {
                assert!(
                    !link_up(&m, j, &keys[i]),
                    "node {j} linked to node {i}, whose interface is left out of LAN discovery"
                );
            }
        }
        sleep(Duration::from_millis(250));
    }
    assert!(!m.ping_once(0, &m.addr(2)) && !m.ping_once(0, &m.addr(3)));
}

// ------------------------------------------------------------------ idle cost

/// utime + stime of process `pid` in clock ticks, and its context switches (all threads).
fn cpu_and_switches(pid: u32) -> (u64, u64) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = stat.rsplit_once(')').expect("comm").1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the comm: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let mut switches = 0;
    for t in fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let st = fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for l in st.lines() {
            if let Some(v) = l
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    (ticks, switches)
}

#[test]
fn an_idle_linked_node_sleeps_between_timers() {
    let mut m = Mesh::new("idl", 2);
    m.link(0, 1);
    m.start(0, NodeOpts::default());
    m.start(1, NodeOpts::peers(&[0]));
    m.wait_ping(1, 0, Duration::from_secs(10));
    sleep(Duration::from_secs(2));
    let pid = m.node(0).pid();
    let (c0, s0) = cpu_and_switches(pid);
    let window = Duration::from_secs(5);
    sleep(window);
    let (c1, s1) = cpu_and_switches(pid);
    // Clock ticks are 1/100 s on Linux (USER_HZ).
    let cpu_s = (c1 - c0) as f64 / 100.0;
    let wakeups = s1 - s0;
    eprintln!("idle linked node over {window:?}: {cpu_s:.2} s CPU, {wakeups} context switches");
    assert!(
        cpu_s <= 0.25,
        "an idle node used {cpu_s:.2} s of CPU in {window:?} (busy polling?)"
    );
    assert!(
        wakeups <= 500,
        "an idle node woke {wakeups} times in {window:?} (busy polling?)"
    );
    assert!(link_up(&m, 0, &m.key(1)), "the link went down while idle");
}

// ------------------------------------------------------------------------------- NAT

/// Node roles in the NAT topology.
const P: usize = 0; // public node
const N1: usize = 1; // behind router 1
const N2: usize = 2; // behind router 2
const R1: usize = 3;
const R2: usize = 4;
const NET: usize = 5; // the "internet": a bridge

const P_IP: &str = "198.51.100.1";

/// Two NATed nodes and a public one. Routers masquerade out of `wan` and drop anything from
/// outside that is not part of a flow started inside (input and forward hooks).
fn nat(tag: &str, symmetric: bool) -> (Mesh, Vec<Proc>) {
    let m = Mesh::new(tag, 6);
    ns_run(&m, NET, &["ip", "link", "add", "br0", "type", "bridge"]);
    ns_run(&m, NET, &["ip", "link", "set", "br0", "up"]);
    for (i, ip) in [(P, P_IP), (R1, "198.51.100.11"), (R2, "198.51.100.12")] {
        let port = format!("p{i}");
        veth(&m, i, "wan", NET, &port);
        ns_run(&m, NET, &["ip", "link", "set", &port, "master", "br0"]);
        addr_add(&m, i, "wan", &format!("{ip}/24"));
    }
    for (r, n, net) in [(R1, N1, 1), (R2, N2, 2)] {
        veth(&m, r, "lan", n, "eth0");
        addr_add(&m, r, "lan", &format!("192.168.{net}.1/24"));
        addr_add(&m, n, "eth0", &format!("192.168.{net}.2/24"));
        ns_run(
            &m,
            n,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("192.168.{net}.1"),
            ],
        );
        ns_run(&m, r, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        let script = format!(
            "table ip nat {{\n\
             \tchain post {{ type nat hook postrouting priority srcnat; policy accept; oifname \"wan\" masquerade{}; }}\n\
             }}\n\
             table inet filter {{\n\
             \tchain input {{ type filter hook input priority filter; policy accept; iifname \"wan\" ct state established,related accept; iifname \"wan\" drop; }}\n\
             \tchain forward {{ type filter hook forward priority filter; policy accept; iifname \"wan\" ct state established,related accept; iifname \"wan\" drop; }}\n\
             }}\n",
            if symmetric { " random" } else { "" }
        );
        let path = m.dir.join(format!("router{r}.nft"));
        fs::write(&path, script).expect("nft script");
        run(Command::new("ip")
            .args(["netns", "exec", m.ns(r), "nft", "-f"])
            .arg(&path));
    }
    let cp = write_config(&m, P, &cfg(&[]));
    let c1 = write_config(&m, N1, &cfg(&[ep(P_IP)]));
    let c2 = write_config(&m, N2, &cfg(&[ep(P_IP)]));
    let procs = vec![
        start_with_config(&m, P, &cp),
        start_with_config(&m, N1, &c1),
        start_with_config(&m, N2, &c2),
    ];
    (m, procs)
}

fn forwarded(m: &Mesh, i: usize) -> f64 {
    metric(m, i, "meshd_forwarded_frames_total")
}

#[test]
fn nodes_behind_two_nats_punch_a_direct_link_and_leave_the_public_node() {
    let (mut m, _procs) = nat("nat", false);
    m.wait_ping(N1, N2, Duration::from_secs(20));
    let (k1, k2) = (m.key(N1), m.key(N2));
    // Each NATed node learns its public endpoint from the public node.
    for (n, ip) in [(N1, "198.51.100.11:"), (N2, "198.51.100.12:")] {
        let mut last = Value::Null;
        let ok = poll(Duration::from_secs(5), || {
            last = get(&m, n, "/v1/self");
            last["external_endpoints"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|e| e.as_str().is_some_and(|e| e.starts_with(ip)))
            })
        });
        assert!(ok.is_some(), "node {n} should be seen at {ip}*: {last}");
    }
    let flow = ping_flow(&m, N1, &m.addr(N2), "nat-flow");
    let t = poll(Duration::from_secs(20), || {
        link_up(&m, N1, &k2) && link_up(&m, N2, &k1)
    });
    let t = t.unwrap_or_else(|| {
        panic!(
            "no direct link between the NATed nodes within 20 s of traffic: node {N1} peers {:?}; sessions {:?}",
            peers(&m, N1),
            get(&m, N1, "/v1/sessions")
        )
    });
    eprintln!("direct link N1-N2 up {t:?} after the flow started");
    let p = peer_entry(&m, N1, &k2).expect("peer entry");
    assert!(
        p["endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with("198.51.100.12:")),
        "N1 should reach N2 at router 2's public address: {p}"
    );
    let out = ctl_ok(&m, N1, &["peers"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&m.addr(N2)) && l.contains(" up ")),
        "ctl peers on N1 should show N2 up:\n{out}"
    );
    sleep(Duration::from_secs(1));
    let f0 = forwarded(&m, P);
    let veth0 = m.dev_counter(P, "wan", "rx_packets");
    let t0 = unix_now();
    sleep(Duration::from_secs(3));
    let f1 = forwarded(&m, P);
    let veth1 = m.dev_counter(P, "wan", "rx_packets");
    let replies = stop_flow(flow);
    let in_window = replies
        .iter()
        .filter(|r| r.0 >= t0 && r.0 <= t0 + 3.0)
        .count();
    eprintln!(
        "during 3 s of a 20/s ping flow N1->N2 ({in_window} replies): public node forwarded {} frames, its veth received {} packets",
        f1 - f0,
        veth1 - veth0
    );
    assert!(
        in_window >= 50,
        "the flow N1->N2 stalled: {in_window} replies in 3 s"
    );
    // Through the public node, each echo round trip costs it 2 forwarded frames; what is left
    // are path probes (a few per second).
    assert!(
        f1 - f0 < 0.25 * 2.0 * in_window as f64,
        "the public node still forwarded {} frames in 3 s of the flow ({in_window} echo replies): the traffic did not move to the direct link",
        f1 - f0
    );
    let s = session(&m, N1, &m.addr(N2)).expect("N1 has a session with N2");
    assert_eq!(s["direct"], "direct link up", "N1's session with N2: {s}");
}

#[test]
fn behind_symmetric_nats_traffic_stays_on_the_mesh_and_the_api_says_why() {
    let (mut m, _procs) = nat("sym", true);
    m.wait_ping(N1, N2, Duration::from_secs(20));
    let (addr2, k2) = (m.addr(N2), m.key(N2));
    let flow = ping_flow(&m, N1, &addr2, "sym-flow");
    let mut last = None;
    let t = poll(Duration::from_secs(25), || {
        assert!(
            !link_up(&m, N1, &k2),
            "a direct link came up through symmetric NATs: {:?}",
            peers(&m, N1)
        );
        last = session(&m, N1, &addr2);
        last.as_ref()
            .and_then(|s| s["direct"].as_str())
            .is_some_and(|d| d.starts_with("no direct link"))
    });
    assert!(
        t.is_some(),
        "after 25 s of traffic, GET /v1/sessions on N1 should say why there is no direct link to N2: {last:?}"
    );
    eprintln!(
        "N1's session with N2 after {:?}: direct = {}",
        t.unwrap(),
        last.as_ref().unwrap()["direct"]
    );
    let f0 = forwarded(&m, P);
    let t0 = unix_now();
    sleep(Duration::from_secs(2));
    let f1 = forwarded(&m, P);
    let replies = stop_flow(flow);
    let in_window = replies
        .iter()
        .filter(|r| r.0 >= t0 && r.0 <= t0 + 2.0)
        .count();
    eprintln!(
        "2 s of the flow: {in_window} replies, the public node forwarded {} frames",
        f1 - f0
    );
    assert!(
        in_window >= 30,
        "the flow N1->N2 through the public node stalled: {in_window} replies in 2 s"
    );
    assert!(
        f1 - f0 >= 2.0 * in_window as f64 * 0.9,
        "the public node forwarded only {} frames for {in_window} echo round trips",
        f1 - f0
    );
    assert!(
        !link_up(&m, N1, &k2),
        "direct link up through symmetric NATs"
    );
}

// ---------------------------------------------------------------------------- roaming

/// Runs a 50 ms ping flow from `from` to `to`; after 1.5 s, node `node` replaces its address
/// `old` on `dev` by `new` (same subnet); returns the longest gap from the move on and the
/// replies in the last 2 s of the 5 s after it.
fn move_during_flow(
    m: &Mesh,
    (from, to): (usize, usize),
    node: usize,
    dev: &str,
    old: &str,
    new: &str,
) -> (f64, usize) {
    let flow = ping_flow(m, from, &m.addr(to), &format!("roam-flow-{node}"));
    sleep(Duration::from_millis(1500));
    let t_move = unix_now();
    // (Deleting first: deleting a primary address also deletes the secondaries of its subnet.)
    common::ip(&[
        "-n",
        m.ns(node),
        "addr",
        "del",
        &format!("{old}/24"),
        "dev",
        dev,
    ]);
    addr_add(m, node, dev, &format!("{new}/24"));
    sleep(Duration::from_secs(5));
    let t_end = unix_now();
    let replies = stop_flow(flow);
    let (gap, at) = longest_gap(&replies, t_move - 0.25, t_end);
    let after = replies.iter().filter(|r| r.0 > t_end - 2.0).count();
    eprintln!(
        "node {node} moved {old} -> {new} during a flow {from}->{to}: longest gap {:.0} ms starting {:.3} s after the move; {after} replies in the last 2 s",
        gap * 1000.0,
        at - t_move
    );
    (gap, after)
}

#[test]
fn a_ping_flow_survives_a_node_changing_its_underlay_address() {
    let mut m = Mesh::new("rom", 3);
    m.line();
    let (l01, l12) = (m.link_between(0, 1).clone(), m.link_between(1, 2).clone());
    let c0 = write_config(&m, 0, &cfg(&[]));
    let c1 = write_config(&m, 1, &cfg(&[ep(&l01.a_ip)]));
    let c2 = write_config(&m, 2, &cfg(&[ep(&l12.a_ip)]));
    let _n = [
        start_with_config(&m, 0, &c0),
        start_with_config(&m, 1, &c1),
        start_with_config(&m, 2, &c2),
    ];
    m.wait_ping(0, 2, Duration::from_secs(20));
    m.wait_ping(2, 0, Duration::from_secs(5));
    // 1: node 2, which dialed node 1, moves.
    let new2 = "10.77.2.3";
    let (gap, after) = move_during_flow(&m, (0, 2), 2, &l12.b_dev, &l12.b_ip, new2);
    assert!(
        after >= 30,
        "the flow did not come back after node 2 moved ({after} replies in the last 2 s)"
    );
    assert!(
        gap <= 2.0,
        "the flow paused {:.0} ms after node 2 moved (limit 2000 ms)",
        gap * 1000.0
    );
    let p = peer_entry(&m, 1, &m.key(2)).expect("node 1 knows node 2");
    assert_eq!(
        p["endpoint"],
        ep(new2).as_str(),
        "node 1's link to node 2 should have moved: {p}"
    );
    assert_eq!(p["state"], "up", "{p}");
    // 2: node 0, which node 1 dials at its configured address, moves: node 1's configured
    // endpoint is stale now, the link must follow node 0 anyway.
    let new0 = "10.77.1.5";
    let (gap, after) = move_during_flow(&m, (0, 2), 0, &l01.a_dev, &l01.a_ip, new0);
    assert!(
        after >= 30,
        "the flow did not come back after node 0 moved ({after} replies in the last 2 s)"
    );
    assert!(
        gap <= 2.0,
        "the flow paused {:.0} ms after node 0 moved (limit 2000 ms)",
        gap * 1000.0
    );
    let p = peer_entry(&m, 1, &m.key(0)).expect("node 1 knows node 0");
    assert_eq!(
        p["endpoint"],
        ep(new0).as_str(),
        "node 1's link to node 0 should have moved: {p}"
    );
    assert_eq!(p["state"], "up", "{p}");

    // 3: a paced TCP stream from node 0 to node 2 while node 2 moves again.
    let rx = m.spawn(2, "tcp-rx", "python3", &["-c", TCP_STREAM, "rx", "9100"]);
    sleep(Duration::from_millis(300));
    let tx = m.spawn(
        0,
        "tcp-tx",
        "python3",
        &["-c", TCP_STREAM, "tx", &m.addr(2), "9100", "7"],
    );
    sleep(Duration::from_millis(2000));
    let t_move = unix_now();
    let new2b = "10.77.2.7";
    common::ip(&[
        "-n",
        m.ns(2),
        "addr",
        "del",
        &format!("{new2}/24"),
        "dev",
        &l12.b_dev,
    ]);
    addr_add(&m, 2, &l12.b_dev, &format!("{new2b}/24"));
    let (mut tx, mut rx) = (tx, rx);
    let tx_st = tx.wait_timeout(Duration::from_secs(20));
    let rx_st = rx.wait_timeout(Duration::from_secs(5));
    let report = rx.log_text();
    eprintln!(
        "TCP stream across node 2's move {new2} -> {new2b} at {t_move:.3}: sender {tx_st:?} {}; receiver {rx_st:?} {}",
        tx.log_text().trim(),
        report.trim()
    );
    assert!(
        tx_st.is_some_and(|s| s.success()) && rx_st.is_some_and(|s| s.success()),
        "the TCP stream did not survive node 2's move: sender {tx_st:?}: {}; receiver {rx_st:?}: {report}",
        tx.log_text()
    );
    let field = |k: &str| -> f64 {
        report
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.parse().ok())
            .unwrap_or_else(|| panic!("receiver report lacks {k}: {report}"))
    };
    assert_eq!(field("intact="), 1.0, "TCP stream corrupted: {report}");
    assert_eq!(
        field("bytes="),
        field("expected="),
        "TCP stream incomplete: {report}"
    );
    assert!(
        field("maxgap=") <= 2.0,
        "the TCP stream paused {:.0} ms across the move (limit 2000 ms): {report}",
        field("maxgap=") * 1000.0
    );
}

/// A paced TCP stream: `tx ADDR PORT SECONDS` sends 16 KiB every 50 ms of a known pattern;
/// `rx PORT` receives one connection and reports bytes, integrity and the longest pause.
const TCP_STREAM: &str = r#"
import socket, sys, time
CHUNK, EVERY = 16384, 0.05
def pattern(off, n):
    return bytes((off + i) % 251 for i in range(n))
if sys.argv[1] == "tx":
    addr, port, secs = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    s = socket.create_connection((addr, port), timeout=20)
    n = int(secs / EVERY)
    s.sendall(n.to_bytes(4, "big"))
    off, t0 = 0, time.time()
    for i in range(n):
        s.sendall(pattern(off, CHUNK))
        off += CHUNK
        time.sleep(max(0.0, t0 + (i + 1) * EVERY - time.time()))
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    print("sent", off)
else:
    l = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("::", int(sys.argv[2])))
    l.listen(1)
    c, _ = l.accept()
    head = b""
    while len(head) < 4:
        head += c.recv(4 - len(head))
    expected = int.from_bytes(head, "big") * CHUNK
    total, intact, last, maxgap = 0, 1, None, 0.0
    while True:
        d = c.recv(65536)
        now = time.time()
        if not d:
            break
        if last is not None:
            maxgap = max(maxgap, now - last)
        last = now
        if d != pattern(total, len(d)):
            intact = 0
        total += len(d)
    c.close()
    print(f"bytes={total} expected={expected} intact={intact} maxgap={maxgap:.3f}")
"#;

#[test]
fn two_peers_moving_at_once_meet_again_through_a_third() {
    // A=0, B=1, C=2 on one segment (a bridge in namespace 3). A dials B and C, B dials C.
    let m = Mesh::new("rm2", 4);
    ns_run(&m, 3, &["ip", "link", "add", "br0", "type", "bridge"]);
    ns_run(&m, 3, &["ip", "link", "set", "br0", "up"]);
    for i in 0..3 {
        let port = format!("p{i}");
        veth(&m, i, "eth0", 3, &port);
        ns_run(&m, 3, &["ip", "link", "set", &port, "master", "br0"]);
        addr_add(&m, i, "eth0", &format!("10.88.0.{}/24", i + 1));
    }
    let ca = write_config(&m, 0, &cfg(&[ep("10.88.0.2"), ep("10.88.0.3")]));
    let cb = write_config(&m, 1, &cfg(&[ep("10.88.0.3")]));
    let cc = write_config(&m, 2, &cfg(&[]));
    let _n = [
        start_with_config(&m, 0, &ca),
        start_with_config(&m, 1, &cb),
        start_with_config(&m, 2, &cc),
    ];
    let (ka, kb) = (m.key(0), m.key(1));
    poll(Duration::from_secs(10), || {
        link_up(&m, 0, &kb) && link_up(&m, 1, &ka)
    })
    .unwrap_or_else(|| panic!("A-B never linked: {:?}", peers(&m, 0)));
    poll(Duration::from_secs(10), || {
        link_up(&m, 0, &m.key(2)) && link_up(&m, 1, &m.key(2))
    })
    .unwrap_or_else(|| {
        panic!(
            "A and B did not both link to C: {:?} / {:?}",
            peers(&m, 0),
            peers(&m, 1)
        )
    });
    let mut mm = m;
    mm.wait_ping(0, 1, Duration::from_secs(10));
    let m = mm;
    let flow = ping_flow(&m, 0, &m.addr(1), "both-move-flow");
    sleep(Duration::from_secs(1));
    // Both move in the same moment: neither old address exists any more.
    let t_move = unix_now();
    for (i, old, new) in [
        (0, "10.88.0.1", "10.88.0.11"),
        (1, "10.88.0.2", "10.88.0.12"),
    ] {
        common::ip(&[
            "-n",
            m.ns(i),
            "addr",
            "del",
            &format!("{old}/24"),
            "dev",
            "eth0",
        ]);
        addr_add(&m, i, "eth0", &format!("{new}/24"));
    }
    let t = poll(Duration::from_secs(20), || {
        let a = peer_entry(&m, 0, &kb);
        let b = peer_entry(&m, 1, &ka);
        a.is_some_and(|p| p["state"] == "up" && p["endpoint"] == ep("10.88.0.12").as_str())
            && b.is_some_and(|p| p["state"] == "up" && p["endpoint"] == ep("10.88.0.11").as_str())
    });
    let replies = stop_flow(flow);
    let (gap, _) = longest_gap(&replies, t_move - 0.25, unix_now());
    let t = t.unwrap_or_else(|| {
        panic!(
            "A and B did not link again at their new addresses within 20 s: A's peers {:?}; B's peers {:?}; C's peers {:?}",
            peers(&m, 0),
            peers(&m, 1),
            peers(&m, 2)
        )
    });
    eprintln!(
        "A-B direct link back at the new addresses {t:?} after both moved; the A->B flow's longest gap was {:.0} ms",
        gap * 1000.0
    );
    assert!(
        m.ping_once(0, &m.addr(1)),
        "A cannot ping B after they met again"
    );
}

// ----------------------------------------------------------------------------- chroot

/// A bare chroot directory; unmounts its /proc and deletes it when dropped.
struct Chroot {
    dir: PathBuf,
    proc_mounted: bool,
}

impl Drop for Chroot {
    fn drop(&mut self) {
        if self.proc_mounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.join("proc"))
                .status();
        }
        if !self.dir.join("proc").join("self").exists() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The shared libraries `ldd` lists for `bin` (absolute paths).
fn ldd(bin: &Path) -> Vec<PathBuf> {
    let out = run(Command::new("ldd").arg(bin));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    libs
}

fn build_chroot(dir: &Path, bin: &Path) -> Chroot {
    fs::create_dir_all(dir).expect("chroot dir");
    let mut c = Chroot {
        dir: dir.to_path_buf(),
        proc_mounted: false,
    };
    fs::copy(bin, dir.join("meshd")).expect("copy meshd");
    for lib in ldd(bin) {
        let dst = dir.join(lib.strip_prefix("/").expect("absolute"));
        fs::create_dir_all(dst.parent().expect("parent")).expect("lib dir");
        fs::copy(&lib, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
    }
    fs::create_dir_all(dir.join("dev/net")).expect("dev/net");
    run(Command::new("mknod")
        .arg(dir.join("dev/net/tun"))
        .args(["c", "10", "200"]));
    fs::create_dir_all(dir.join("proc")).expect("proc");
    run(Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(dir.join("proc")));
    c.proc_mounted = true;
    fs::create_dir_all(dir.join("state")).expect("state");
    c
}

#[test]
fn meshd_in_a_bare_chroot_links_and_pings() {
    let mut m = Mesh::new("chr", 2);
    let l = m.link(0, 1);
    let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/meshd");
    let bin = if release.exists() {
        release
    } else {
        PathBuf::from(MESHD)
    };
    eprintln!("chroot with {}", bin.display());
    let root = m.dir.join("chroot");
    let chroot = build_chroot(&root, &bin);
    // Node 0's identity, so the harness knows its address.
    fs::copy(m.state_dir(0).join("identity"), root.join("state/identity")).expect("identity");
    // Nothing else in there: no /etc, no shell.
    assert!(!root.join("etc").exists() && !root.join("bin").exists());
    let mut c = m.cmd(0, "chroot");
    c.arg(&root).args([
        "/meshd",
        "--state-dir",
        "/state",
        "--listen",
        &format!("[::]:{PORT}"),
        "--tun",
        "mesh0",
        "--admin",
        "127.0.0.1:7401",
        "--peer",
        &ep(&l.b_ip),
    ]);
    let n0 = spawn_node(&m, 0, c, "mesh0");
    m.start(1, NodeOpts::default());
    let t = m.wait_ping(1, 0, Duration::from_secs(15));
    eprintln!("node in the chroot answered ping6 after {t:?}");
    m.wait_ping(0, 1, Duration::from_secs(5));
    // ctl from inside the chroot too.
    let out = m
        .cmd(0, "chroot")
        .arg(&root)
        .args(["/meshd", "--state-dir", "/state", "ctl", "peers"])
        .output()
        .expect("ctl in chroot");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&m.addr(1)),
        "meshd ctl peers inside the chroot: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    drop(n0);
    drop(chroot);
    assert!(!root.exists(), "the chroot was not cleaned up");
}

// ---------------------------------------------------------------------------- signals

/// Waits until `f` has been true continuously... no: asserts `f` stays true for `d`.
fn stays(d: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        assert!(f(), "{what}");
        sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_adds_and_removes_config_peers_keeping_the_others() {
    let mut m = Mesh::new("hup", 3);
    let l1 = m.link(0, 1);
    let l2 = m.link(0, 2);
    let (k0, k1, k2) = (m.key(0), m.key(1), m.key(2));
    let c0 = write_config(&m, 0, &cfg(&[ep(&l1.b_ip)]));
    let c1 = write_config(&m, 1, &cfg(&[]));
    let c2 = write_config(&m, 2, &cfg(&[]));
    let n0 = start_with_config(&m, 0, &c0);
    let _n1 = start_with_config(&m, 1, &c1);
    let _n2 = start_with_config(&m, 2, &c2);
    poll(Duration::from_secs(10), || link_up(&m, 0, &k1))
        .unwrap_or_else(|| panic!("0-1 never linked: {:?}", peers(&m, 0)));
    m.wait_ping(0, 1, Duration::from_secs(5));
    assert!(
        peers(&m, 2).is_empty(),
        "node 2 linked before being configured"
    );

    // Add node 2 to the config; SIGHUP. The link to node 1 carries a flow meanwhile.
    let flow = ping_flow(&m, 0, &m.addr(1), "hup-flow-1");
    sleep(Duration::from_millis(500));
    let t_hup = unix_now();
    write_config(&m, 0, &cfg(&[ep(&l1.b_ip), ep(&l2.b_ip)]));
    n0.signal("HUP");
    let t = poll(Duration::from_secs(5), || {
        link_up(&m, 0, &k2) && link_up(&m, 2, &k0)
    })
    .unwrap_or_else(|| {
        panic!(
            "SIGHUP did not link the added peer within 5 s: {:?}",
            peers(&m, 0)
        )
    });
    eprintln!("SIGHUP: the added peer linked after {t:?}");
    sleep(Duration::from_secs(1));
    let replies = stop_flow(flow);
    let (gap, _) = longest_gap(&replies, t_hup - 0.5, unix_now());
    assert!(
        gap < 0.5,
        "the flow over the link still wanted paused {:.0} ms across the SIGHUP",
        gap * 1000.0
    );
    m.wait_ping(0, 2, Duration::from_secs(5));
    let log = fs::read_to_string(m.log_path(1)).unwrap_or_default();
    assert!(
        !log.contains("link down"),
        "node 1's link went down on the SIGHUP:\n{log}"
    );

    // Remove node 1 from the config; SIGHUP. Node 2's link carries a flow meanwhile.
    let flow = ping_flow(&m, 0, &m.addr(2), "hup-flow-2");
    sleep(Duration::from_millis(500));
    let t_hup = unix_now();
    write_config(&m, 0, &cfg(&[ep(&l2.b_ip)]));
    n0.signal("HUP");
    let t = poll(Duration::from_secs(5), || !link_up(&m, 0, &k1)).unwrap_or_else(|| {
        panic!(
            "SIGHUP did not drop the removed peer within 5 s: {:?}",
            peers(&m, 0)
        )
    });
    eprintln!("SIGHUP: the removed peer's link went down after {t:?}");
    stays(
        Duration::from_secs(5),
        "the peer removed from the config linked again",
        || !link_up(&m, 0, &k1) && !link_up(&m, 1, &k0),
    );
    let replies = stop_flow(flow);
    let (gap, _) = longest_gap(&replies, t_hup - 0.5, unix_now());
    assert!(
        gap < 0.5,
        "the flow over the link still wanted paused {:.0} ms across the second SIGHUP",
        gap * 1000.0
    );
    assert!(link_up(&m, 0, &k2), "the link still wanted went down");
}

#[test]
fn sigterm_removes_the_tun_and_the_peer_sees_the_link_close_at_once() {
    let mut m = Mesh::new("trm", 2);
    m.link(0, 1);
    m.start(0, NodeOpts::default());
    m.start(1, NodeOpts::peers(&[0]));
    m.wait_ping(1, 0, Duration::from_secs(10));
    let k1 = m.key(1);
    assert!(link_up(&m, 0, &k1));
    // An idle link: without a CLOSE, node 0 would need seconds to notice.
    sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    m.stop(1); // SIGTERM; asserts a clean exit and that its TUN is gone
    let t = poll(Duration::from_secs(5), || !link_up(&m, 0, &k1));
    let total = t0.elapsed();
    assert!(
        t.is_some(),
        "node 0 still shows the link up 5 s after node 1 exited"
    );
    eprintln!("node 0 saw the link go down {total:?} after the SIGTERM");
    assert!(
        total < Duration::from_millis(1500),
        "node 0 noticed the SIGTERMed peer only after {total:?}: no CLOSE?"
    );
    assert!(!dev_exists(&m, 1, common::TUN), "TUN left behind");
}

// ------------------------------------------------------------------------------ tun-fd

const TUN_FD_HELPER: &str = r#"
import fcntl, os, struct, subprocess, sys
name, addr, meshd = sys.argv[1], sys.argv[2], sys.argv[3]
fd = os.open("/dev/net/tun", os.O_RDWR)
TUNSETIFF = 0x400454ca
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
for c in (["ip", "link", "set", name, "mtu", "1360"],
          ["ip", "-6", "addr", "add", addr + "/8", "dev", name, "nodad"],
          ["ip", "link", "set", name, "up"]):
    subprocess.run(c, check=True)
os.set_inheritable(fd, True)
args = [a.replace("{fd}", str(fd)) for a in sys.argv[4:]]
os.execv(meshd, [meshd] + args)
"#;

#[test]
fn meshd_uses_an_inherited_tun_fd() {
    let mut m = Mesh::new("tfd", 2);
    m.link(0, 1);
    let helper = m.dir.join("tun_fd_helper.py");
    fs::write(&helper, TUN_FD_HELPER).expect("helper");
    let addr0 = m.addr(0);
    let state = m.state_dir(0);
    let mut c = m.cmd(0, "python3");
    c.arg(&helper)
        .args(["tfd0", &addr0, MESHD, "--state-dir"])
        .arg(&state)
        .args([
            "--listen",
            &format!("[::]:{PORT}"),
            "--tun",
            "tfd0",
            "--tun-fd",
            "{fd}",
            "--admin",
            "127.0.0.1:7401",
        ]);
    let _n0 = spawn_node(&m, 0, c, "tfd0");
    m.start(1, NodeOpts::peers(&[0]));
    let t = m.wait_ping(1, 0, Duration::from_secs(15));
    eprintln!("node with an inherited TUN fd answered ping6 after {t:?}");
    m.wait_ping(0, 1, Duration::from_secs(5));
    assert_eq!(
        ping_count(&m, 1, &addr0, 10),
        10,
        "ping 1->0 over the inherited TUN lost packets"
    );
    assert!(
        !dev_exists(&m, 0, common::TUN),
        "meshd made its own TUN despite --tun-fd"
    );
    // meshd really runs on that fd: it is the process holding /dev/net/tun.
    let log = fs::read_to_string(m.log_path(0)).unwrap_or_default();
    assert!(log.contains("meshd running"), "{log}");
}
