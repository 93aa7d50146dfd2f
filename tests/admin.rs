//! Issue "Admin JSON API, `meshd ctl`, and metrics", against real meshd processes in network
//! namespaces: every endpoint's shape over a 3-node line, the ctl commands, peers added and
//! removed at run time, authentication, the non-loopback refusal, and schemathesis fuzzing the
//! live API with docs/admin-api.yaml.
//!
//! Needs root (namespaces, TUN) and curl. Every test cleans up after itself, also when it fails.

mod common;
#[path = "field_support/mod.rs"]
mod field_support;

use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{Mesh, NodeOpts, MESHD, PORT};
use field_support::*;
use serde_json::Value;

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} should be a number, is {v}"))
}

fn uint(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} should be a non-negative integer, is {v}"))
}

fn string<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} should be a string, is {v}"))
}

/// Checks a Peer object (docs/admin-api.yaml).
fn check_peer(p: &Value) {
    assert!(
        is_hex(string(&p["public_key"], "peer.public_key"), 64),
        "{p}"
    );
    assert!(
        string(&p["address"], "peer.address").starts_with("fc"),
        "{p}"
    );
    string(&p["endpoint"], "peer.endpoint");
    assert!(
        ["up", "down"].contains(&string(&p["state"], "peer.state")),
        "{p}"
    );
    assert!(p["rtt_ms"].is_null() || p["rtt_ms"].is_number(), "{p}");
    for k in ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets"] {
        uint(&p[k], k);
    }
    assert!(num(&p["last_seen_s"], "last_seen_s") >= 0.0, "{p}");
    assert!(
        p["cipher"].is_null()
            || ["aes-256-gcm", "chacha20-poly1305"].contains(&string(&p["cipher"], "peer.cipher")),
        "{p}"
    );
}

/// Checks a PathAnswer object.
fn check_path_answer(a: &Value, addr: &str, key: &str, hops: u64) {
    assert_eq!(string(&a["address"], "address"), addr, "{a}");
    assert_eq!(string(&a["public_key"], "public_key"), key, "{a}");
    assert!(is_hex(string(&a["path"], "path"), 16), "{a}");
    assert_eq!(uint(&a["hops"], "hops"), hops, "{a}");
    assert!(a["rtt_ms"].is_null() || a["rtt_ms"].is_number(), "{a}");
}

/// `trees` of `GET /v1/self` on every node of the line `addrs` (in line order): each tree
/// has one root all nodes agree on, every node's depth is its distance from that root along
/// the line and its parent the neighbour toward it. Waits up to 15 s for the trees to
/// settle (a root is known alive once its sequence number has moved on).
fn check_trees(m: &Mesh, addrs: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let selves: Vec<Value> = (0..addrs.len()).map(|i| get(m, i, "/v1/self")).collect();
        let trees: Vec<&Vec<Value>> = selves
            .iter()
            .map(|s| s["trees"].as_array().expect("trees is an array"))
            .collect();
        let count = trees[0].len();
        assert!(count >= 2, "a main tree and hashed ones: {}", selves[0]);
        let mut wrong = Vec::new();
        for t in 0..count {
            let root = string(&trees[0][t]["root"], "tree.root");
            let Some(r) = addrs.iter().position(|a| *a == root) else {
                wrong.push(format!("tree {t}: root {root} is no node of the line"));
                continue;
            };
            for (i, node) in trees.iter().enumerate() {
                let place = &node[t];
                let parent = (i != r).then(|| addrs[if i < r { i + 1 } else { i - 1 }]);
                if uint(&place["tree"], "tree.tree") != t as u64
                    || string(&place["root"], "tree.root") != root
                    || uint(&place["depth"], "tree.depth") != i.abs_diff(r) as u64
                    || place["parent"].as_str() != parent
                {
                    wrong.push(format!("node {i}, tree {t} (root at node {r}): {place}"));
                }
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "trees never settled: {wrong:#?}");
        sleep(Duration::from_millis(500));
    }
}

/// A line 0 - 1 - 2 - 3, each dialing its left neighbour; returns once the ends ping each
/// other (3 hops).
fn line4(tag: &str) -> Mesh {
    let mut m = Mesh::new(tag, 4);
    m.line();
    m.start(0, NodeOpts::default());
    for i in 1..4 {
        m.start(i, NodeOpts::peers(&[i - 1]));
    }
    m.wait_ping(0, 3, Duration::from_secs(20));
    m.wait_ping(3, 0, Duration::from_secs(10));
    m
}

#[test]
fn every_endpoint_and_ctl_command_over_a_line_of_three_hops() {
    let m = line4("adm");
    let (a0, a1, a2, a3) = (m.addr(0), m.addr(1), m.addr(2), m.addr(3));
    let (k0, k1, k2, k3) = (m.key(0), m.key(1), m.key(2), m.key(3));

    // GET /v1/self
    let s = get(&m, 0, "/v1/self");
    assert_eq!(string(&s["address"], "address"), a0, "{s}");
    assert_eq!(string(&s["public_key"], "public_key"), k0, "{s}");
    assert!(!string(&s["version"], "version").is_empty(), "{s}");
    assert!(num(&s["uptime_s"], "uptime_s") >= 0.0, "{s}");
    let listen = s["listen"].as_array().expect("listen is an array");
    assert!(
        listen
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.ends_with(&format!(":{PORT}")))),
        "listen should show port {PORT}: {s}"
    );
    assert!(s["external_endpoints"].is_array(), "{s}");
    assert_eq!(string(&s["tun"], "tun"), common::TUN, "{s}");
    assert!(uint(&s["mtu"], "mtu") >= 1280, "{s}");
    check_trees(&m, &[&a0, &a1, &a2, &a3]);

    // GET /v1/peers on the middle node: both ends, up.
    let ps = peers(&m, 1);
    for p in &ps {
        check_peer(p);
    }
    for (k, a, ip) in [(&k0, &a0, "10.77.1.1"), (&k2, &a2, "10.77.2.2")] {
        let p = ps
            .iter()
            .find(|p| p["public_key"] == k.as_str())
            .unwrap_or_else(|| panic!("node 1's peers lack {a}: {ps:?}"));
        assert_eq!(p["address"], a.as_str(), "{p}");
        assert_eq!(p["state"], "up", "{p}");
        assert!(
            p["endpoint"].as_str().unwrap_or("").contains(ip),
            "node 1's peer {a} should be at {ip}: {p}"
        );
        assert!(uint(&p["rx_packets"], "rx_packets") > 0, "{p}");
        // Both ends run here, on the same CPU and environment: AES when it has the
        // instructions (and MESHD_CIPHER isn't chacha), else ChaCha.
        let cipher = if crypto::noise::aes_offered() {
            "aes-256-gcm"
        } else {
            "chacha20-poly1305"
        };
        assert_eq!(p["cipher"], cipher, "{p}");
    }

    // GET /v1/routes on node 0: node 1 one hop, node 2 two, node 3 three.
    let routes = get(&m, 0, "/v1/routes");
    let routes = routes.as_array().expect("routes array");
    for (a, k, hops) in [(&a1, &k1, 1), (&a2, &k2, 2), (&a3, &k3, 3)] {
        let r = routes
            .iter()
            .find(|r| r["address"] == a.as_str())
            .unwrap_or_else(|| panic!("node 0's routes lack {a}: {routes:?}"));
        assert_eq!(r["public_key"], k.as_str(), "{r}");
        assert!(is_hex(string(&r["path"], "path"), 16), "{r}");
        assert_eq!(uint(&r["hops"], "hops"), hops, "{r}");
        assert!(r["rtt_ms"].is_null() || r["rtt_ms"].is_number(), "{r}");
        assert!(num(&r["last_seen_s"], "last_seen_s") >= 0.0, "{r}");
        assert!(uint(&r["paths"], "paths") >= 1, "{r}");
    }

    // GET /v1/sessions on node 0: the session with node 3 carried the pings.
    let ss = get(&m, 0, "/v1/sessions");
    let ss = ss.as_array().expect("sessions array");
    let s3 = ss
        .iter()
        .find(|s| s["address"] == a3.as_str())
        .unwrap_or_else(|| panic!("node 0 has no session with node 3: {ss:?}"));
    assert_eq!(s3["state"], "established", "{s3}");
    assert_eq!(s3["public_key"], k3.as_str(), "{s3}");
    for k in ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "queued"] {
        uint(&s3[k], k);
    }
    assert!(uint(&s3["rx_packets"], "rx_packets") > 0, "{s3}");
    assert!(s3["direct"].is_null() || s3["direct"].is_string(), "{s3}");
    assert!(s3["path"].is_null() || s3["path"].is_string(), "{s3}");

    // GET /v1/lookup/{address}
    let l = get(&m, 0, &format!("/v1/lookup/{a3}"));
    check_path_answer(&l, &a3, &k3, 3);
    let r = api(&m, 0, "GET", "/v1/lookup/not-an-address", None);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.json()["error"].is_string(), "{r:?}");

    // POST /v1/ping over three links.
    let r = api(
        &m,
        0,
        "POST",
        "/v1/ping",
        Some(&format!(r#"{{"address":"{a3}"}}"#)),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let p = r.json();
    check_path_answer(&p, &a3, &k3, 3);
    assert!(num(&p["rtt_ms"], "ping rtt_ms") > 0.0, "{p}");

    // POST /v1/traceroute: each hop's address, in order.
    let r = api(
        &m,
        0,
        "POST",
        "/v1/traceroute",
        Some(&format!(r#"{{"address":"{a3}"}}"#)),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let t = r.json();
    assert_eq!(t["address"], a3.as_str(), "{t}");
    assert_eq!(t["reached"], true, "{t}");
    string(&t["path"], "traceroute path");
    let hops = t["hops"].as_array().expect("hops array");
    let got: Vec<(u64, &str)> = hops
        .iter()
        .map(|h| (uint(&h["hop"], "hop"), h["address"].as_str().unwrap_or("*")))
        .collect();
    assert_eq!(
        got,
        vec![(1, a1.as_str()), (2, a2.as_str()), (3, a3.as_str())],
        "traceroute 0 -> 3: {t}"
    );
    for h in hops {
        assert!(num(&h["rtt_ms"], "hop rtt_ms") > 0.0, "{h}");
    }

    // GET /metrics: Prometheus text; the middle node forwarded the ends' frames.
    let r = api(&m, 1, "GET", "/metrics", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.content_type.contains("text"),
        "/metrics content type {:?}",
        r.content_type
    );
    for sample in [
        "meshd_udp_packets_total{direction=\"rx\"}",
        "meshd_udp_bytes_total{direction=\"tx\"}",
        "meshd_drops_total{reason=\"decrypt\"}",
        "meshd_handshakes_total{reason=\"link_completed\"}",
        "meshd_lookups_total{reason=\"started\"}",
        "meshd_peers_up",
        "meshd_routing_table_entries",
        "meshd_sessions",
        "meshd_forwarded_frames_total",
    ] {
        assert!(
            metric_in(&r.body, sample).is_some(),
            "/metrics lacks {sample}:\n{}",
            r.body
        );
    }
    assert_eq!(
        metric_in(&r.body, "meshd_peers_up"),
        Some(2.0),
        "{}",
        r.body
    );
    assert!(
        metric_in(&r.body, "meshd_forwarded_frames_total").unwrap_or(0.0) > 0.0,
        "node 1 carried node 0's pings to node 2 but counts no forwarded frames:\n{}",
        r.body
    );

    // meshd ctl, tables, from inside the namespace (token found through --state-dir).
    let out = ctl_ok(&m, 0, &["self"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("address") && l.contains(&a0)),
        "ctl self:\n{out}"
    );
    assert!(out.contains(&k0), "ctl self:\n{out}");
    let out = ctl_ok(&m, 1, &["peers"]);
    let header = out.lines().next().unwrap_or("");
    assert!(
        header.starts_with("ADDRESS") && header.contains("STATE"),
        "ctl peers header: {out}"
    );
    for a in [&a0, &a2] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(a.as_str()) && l.contains(" up ")),
            "ctl peers on node 1 should list {a} as up:\n{out}"
        );
    }
    let out = ctl_ok(&m, 0, &["routes"]);
    assert!(
        out.lines().next().unwrap_or("").starts_with("ADDRESS"),
        "ctl routes:\n{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with(&a3)),
        "ctl routes:\n{out}"
    );
    let out = ctl_ok(&m, 0, &["sessions"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&a3) && l.contains("established")),
        "ctl sessions:\n{out}"
    );
    let out = ctl_ok(&m, 0, &["ping", &a3]);
    assert!(
        out.contains(&a3) && out.contains("answered") && out.contains("3 hops"),
        "ctl ping:\n{out}"
    );
    let out = ctl_ok(&m, 0, &["traceroute", &a3]);
    let hops: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().take(2).collect())
        .collect();
    assert_eq!(
        hops,
        vec![
            vec!["1", a1.as_str()],
            vec!["2", a2.as_str()],
            vec!["3", a3.as_str()]
        ],
        "ctl traceroute should list nodes 1, 2, 3 in order:\n{out}"
    );
    let out = ctl_ok(&m, 0, &["lookup", &a3]);
    assert!(
        out.contains(&a3) && out.contains(&k3) && out.contains("3 hops"),
        "ctl lookup:\n{out}"
    );

    // meshd ctl --json: the API's JSON.
    for cmd in ["self", "peers", "routes", "sessions"] {
        let out = ctl_ok(&m, 0, &["--json", cmd]);
        let v: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("ctl --json {cmd} printed no JSON ({e}):\n{out}"));
        let has =
            |k: &str, want: &str| v.as_array().is_some_and(|a| a.iter().any(|x| x[k] == want));
        let ok = match cmd {
            "self" => v["address"] == a0.as_str(),
            "peers" => has("public_key", &k1),
            _ => has("address", &a3),
        };
        assert!(ok, "ctl --json {cmd} on node 0:\n{out}");
    }
    for cmd in ["ping", "traceroute", "lookup"] {
        let out = ctl_ok(&m, 0, &["--json", cmd, &a3]);
        let v: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("ctl --json {cmd} printed no JSON ({e}):\n{out}"));
        assert_eq!(v["address"], a3.as_str(), "ctl --json {cmd}: {out}");
    }
    // An error is reported as one, with a failing exit status.
    let (ok, out, err) = ctl(&m, 0, &["ping", "fc00::1"]);
    assert!(
        !ok && !err.is_empty(),
        "ctl ping to a node that does not exist should fail: {out}{err}"
    );
}

/// A config for a node that must not find others by LAN discovery.
fn no_lan(m: &Mesh, i: usize) -> std::path::PathBuf {
    write_config(m, i, "lan_discovery = false\n")
}

/// Two nodes on one veth, neither configured to dial the other, LAN discovery off.
fn unlinked_pair(tag: &str) -> (Mesh, common::Link, std::path::PathBuf) {
    let mut m = Mesh::new(tag, 2);
    let l = m.link(0, 1);
    let c1 = no_lan(&m, 1);
    no_lan(&m, 0);
    (m, l, c1)
}

/// Link handshakes node `i` started so far.
fn dials(m: &Mesh, i: usize) -> f64 {
    metric(m, i, "meshd_handshakes_total{reason=\"link_sent\"}")
}

#[test]
fn peer_added_at_run_time_links_and_its_removal_sticks() {
    let (mut m, l, c1) = unlinked_pair("apr");
    let _n0 = start_with_config(&m, 0, &m.dir.join("node0.toml"));
    let _n1 = start_with_config(&m, 1, &c1);
    let (k0, k1) = (m.key(0), m.key(1));
    let peers_file = m.state_dir(1).join("peers");

    // Same veth, but not configured and no LAN discovery: no link.
    sleep(Duration::from_secs(3));
    assert!(
        peers(&m, 0).is_empty() && peers(&m, 1).is_empty(),
        "nodes linked without being told to: {:?} / {:?}",
        peers(&m, 0),
        peers(&m, 1)
    );
    assert!(!m.ping_once(1, &m.addr(0)), "ping crossed with no link");

    // POST /v1/peers (no key: Noise XX).
    let ep = format!("{}:{PORT}", l.a_ip);
    let r = api(
        &m,
        1,
        "POST",
        "/v1/peers",
        Some(&format!(r#"{{"endpoint":"{ep}"}}"#)),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let v = r.json();
    assert_eq!(v["result"], "added", "{v}");
    assert_eq!(v["endpoint"], ep.as_str(), "{v}");
    let t = poll(Duration::from_secs(10), || {
        link_up(&m, 1, &k0) && link_up(&m, 0, &k1)
    })
    .unwrap_or_else(|| {
        panic!(
            "no link 1-0 within 10 s of POST /v1/peers: {:?} / {:?}",
            peers(&m, 1),
            peers(&m, 0)
        )
    });
    eprintln!("POST /v1/peers: link up after {t:?}");
    m.wait_ping(1, 0, Duration::from_secs(5));
    let saved = std::fs::read_to_string(&peers_file).unwrap_or_default();
    assert!(
        saved.contains(&ep),
        "STATE_DIR/peers should hold {ep}:\n{saved}"
    );

    // ctl peer remove: the link goes, on both sides, and is not dialed again.
    let out = ctl_ok(&m, 1, &["peer", "remove", &k0]);
    assert!(out.contains("removed"), "ctl peer remove: {out}");
    let sent = (dials(&m, 0), dials(&m, 1));
    let t = poll(Duration::from_secs(5), || {
        !link_up(&m, 1, &k0) && !link_up(&m, 0, &k1)
    })
    .unwrap_or_else(|| {
        panic!(
            "link still up 5 s after ctl peer remove: {:?} / {:?}",
            peers(&m, 1),
            peers(&m, 0)
        )
    });
    eprintln!("ctl peer remove: link down after {t:?}");
    let saved = std::fs::read_to_string(&peers_file).unwrap_or_default();
    assert!(
        !saved.contains(&ep),
        "STATE_DIR/peers still holds {ep}:\n{saved}"
    );
    // Removing it again: 404 JSON.
    let r = api(&m, 1, "DELETE", &format!("/v1/peers/{k0}"), None);
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.json()["error"].is_string(), "{r:?}");
    let until = Instant::now() + Duration::from_secs(6);
    let mut relinked = None;
    while Instant::now() < until {
        if relinked.is_none()
            && (link_up(&m, 1, &k0) || link_up(&m, 0, &k1) || m.ping_once(1, &m.addr(0)))
        {
            relinked = Some(Instant::now());
        }
        sleep(Duration::from_millis(200));
    }
    let after = (dials(&m, 0), dials(&m, 1));
    eprintln!(
        "link handshakes started during the 6 s after the removal: node 0 {}, node 1 {}",
        after.0 - sent.0,
        after.1 - sent.1
    );
    assert_eq!(
        after.1, sent.1,
        "node 1, which removed the peer, kept dialing it"
    );
    assert!(
        relinked.is_none(),
        "the removed peer linked again (node 0 started {} link handshakes to node 1, which it \
         never was told to dial, after node 1's CLOSE; node 1 accepted): {:?} / {:?}",
        after.0 - sent.0,
        peers(&m, 1),
        peers(&m, 0)
    );
}

#[test]
fn peer_added_at_run_time_is_saved_and_its_removal_too() {
    let (mut m, l, c1) = unlinked_pair("aps");
    let _n0 = start_with_config(&m, 0, &m.dir.join("node0.toml"));
    let mut n1 = Some(start_with_config(&m, 1, &c1));
    let k0 = m.key(0);
    let peers_file = m.state_dir(1).join("peers");
    let ep = format!("{}:{PORT}", l.a_ip);

    // ctl peer add with a pinned key (Noise IK); saved, so dialed again after a restart.
    let out = ctl_ok(&m, 1, &["peer", "add", &format!("{k0}@{ep}")]);
    assert!(out.contains("added"), "ctl peer add: {out}");
    poll(Duration::from_secs(10), || link_up(&m, 1, &k0))
        .unwrap_or_else(|| panic!("no link within 10 s of ctl peer add: {:?}", peers(&m, 1)));
    let saved = std::fs::read_to_string(&peers_file).unwrap_or_default();
    assert!(
        saved.contains(&format!("{k0}@{ep}")),
        "STATE_DIR/peers should hold {k0}@{ep}:\n{saved}"
    );
    let stop = |n: &mut Option<common::Proc>| {
        let mut p = n.take().expect("node 1 running");
        p.signal("TERM");
        assert!(
            p.wait_timeout(Duration::from_secs(5)).is_some(),
            "node 1 ignored SIGTERM"
        );
    };
    stop(&mut n1);
    n1 = Some(start_with_config(&m, 1, &c1));
    let t = poll(Duration::from_secs(10), || dials(&m, 1) > 0.0 && link_up(&m, 1, &k0))
        .unwrap_or_else(|| {
            panic!(
                "the peer added at run time was not dialed again after a restart: {:?}\nSTATE_DIR/peers:\n{}",
                peers(&m, 1),
                std::fs::read_to_string(&peers_file).unwrap_or_default()
            )
        });
    eprintln!("after a restart, the saved peer linked again after {t:?}");
    m.wait_ping(1, 0, Duration::from_secs(5));

    // DELETE /v1/peers/{key}: gone from the file; a restarted node 1 does not dial it.
    let r = api(&m, 1, "DELETE", &format!("/v1/peers/{k0}"), None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["result"], "removed", "{r:?}");
    let saved = std::fs::read_to_string(&peers_file).unwrap_or_default();
    assert!(
        !saved.contains(&ep),
        "STATE_DIR/peers still holds {ep} after DELETE:\n{saved}"
    );
    stop(&mut n1);
    let _n1 = start_with_config(&m, 1, &c1);
    sleep(Duration::from_secs(4));
    assert_eq!(
        dials(&m, 1),
        0.0,
        "node 1 dialed after a restart although its only run-time peer was deleted"
    );
}

#[test]
fn wrong_or_missing_token_is_a_401_json_error() {
    let mut m = Mesh::new("atk", 1);
    m.start(0, NodeOpts::default());
    let t = token(&m, 0);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(m.state_dir(0).join("admin.token"))
            .expect("admin.token")
            .permissions(),
    );
    assert_eq!(
        mode & 0o777,
        0o600,
        "admin.token mode is {:o}",
        mode & 0o777
    );
    let wrong = format!("Bearer {}x", &t[..t.len() - 1]);
    let basic = format!("Basic {t}");
    let bare = t.clone();
    let target = format!(r#"{{"address":"{}"}}"#, m.addr(0));
    let calls: Vec<(&str, String, Option<&str>)> = vec![
        ("GET", "/v1/self".into(), None),
        ("GET", "/v1/peers".into(), None),
        (
            "POST",
            "/v1/peers".into(),
            Some(r#"{"endpoint":"10.9.9.9:7400"}"#),
        ),
        ("DELETE", format!("/v1/peers/{}", m.key(0)), None),
        ("GET", "/v1/routes".into(), None),
        ("GET", "/v1/sessions".into(), None),
        ("POST", "/v1/ping".into(), Some(&target)),
        ("POST", "/v1/traceroute".into(), Some(&target)),
        ("GET", format!("/v1/lookup/{}", m.addr(0)), None),
        ("GET", "/metrics".into(), None),
        ("GET", "/no/such/path".into(), None),
    ];
    for (method, path, body) in &calls {
        for auth in [
            None,
            Some(wrong.as_str()),
            Some(basic.as_str()),
            Some(bare.as_str()),
            Some("Bearer "),
        ] {
            let r = http_raw(&m, 0, method, path, *body, auth);
            assert_eq!(r.status, 401, "{method} {path} with auth {auth:?}: {r:?}");
            assert!(
                r.content_type.contains("application/json"),
                "{method} {path}: 401 content type {:?}",
                r.content_type
            );
            let v = r.json();
            assert!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{method} {path}: 401 body {v}"
            );
            assert_eq!(
                r.www_authenticate.as_deref(),
                Some("Bearer"),
                "{method} {path}: 401 without WWW-Authenticate: Bearer"
            );
        }
    }
    // Nothing changed: no peer was added by the unauthorized POSTs.
    assert!(
        peers(&m, 0).is_empty(),
        "an unauthorized POST /v1/peers added a peer"
    );
    // And the right token works.
    assert_eq!(get(&m, 0, "/v1/self")["address"], m.addr(0).as_str());
}

#[test]
fn non_loopback_admin_address_is_refused_unless_allowed() {
    let mut m = Mesh::new("anl", 2);
    let l = m.link(0, 1);
    let try_start = |extra: &[&str], config: Option<&std::path::Path>| {
        let mut c = m.cmd(0, MESHD);
        c.arg("--state-dir").arg(m.state_dir(0));
        if let Some(cfg) = config {
            c.arg("--config").arg(cfg);
        }
        c.args(["--listen", &format!("[::]:{PORT}"), "--tun", "mesh0"])
            .args(extra)
            .stdin(Stdio::null());
        let start = Instant::now();
        let out = c.output().expect("run meshd");
        (out, start.elapsed())
    };
    // On the command line.
    for admin in [
        format!("{}:7401", l.a_ip),
        "0.0.0.0:7401".to_string(),
        "[::]:7401".to_string(),
    ] {
        let (out, took) = try_start(&["--admin", &admin], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "meshd --admin {admin} started (or exited 0); stderr: {err}"
        );
        assert!(
            err.contains("refusing") && err.contains("non-loopback") && err.contains("admin_allow_remote"),
            "meshd --admin {admin}: the error should say it refuses a non-loopback address and name admin_allow_remote; stderr: {err}"
        );
        assert!(took < Duration::from_secs(5), "refusal took {took:?}");
        assert!(
            !dev_exists(&m, 0, "mesh0"),
            "a refused start left a TUN behind"
        );
    }
    // In the config file.
    let cfg = write_config(
        &m,
        0,
        &format!("admin = \"{}:7401\"\nlan_discovery = false\n", l.a_ip),
    );
    let (out, _) = try_start(&[], Some(&cfg));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("admin_allow_remote"),
        "config admin = {}:7401 should be refused; status {}, stderr: {err}",
        l.a_ip,
        out.status
    );
    // Allowed explicitly: served there, reachable from the other namespace with the token.
    let cfg = write_config(
        &m,
        0,
        &format!(
            "admin = \"{}:7401\"\nadmin_allow_remote = true\nlan_discovery = false\n",
            l.a_ip
        ),
    );
    let mut c = m.cmd(0, MESHD);
    c.arg("--config")
        .arg(&cfg)
        .arg("--state-dir")
        .arg(m.state_dir(0))
        .args(["--listen", &format!("[::]:{PORT}"), "--tun", "mesh0"]);
    let _n0 = spawn_node(&m, 0, c, "mesh0");
    let admin = format!("{}:7401", l.a_ip);
    let mut r = None;
    poll(Duration::from_secs(5), || {
        let x = http_to(
            &m,
            1,
            &admin,
            "GET",
            "/v1/self",
            None,
            Some(&format!("Bearer {}", token(&m, 0))),
        );
        let ok = x.status == 200;
        r = Some(x);
        ok
    });
    let r = r.expect("a request was made");
    assert_eq!(
        r.status, 200,
        "admin_allow_remote: GET /v1/self from the other namespace: {r:?}"
    );
    assert_eq!(r.json()["address"], m.addr(0).as_str());
    let r = http_to(&m, 1, &admin, "GET", "/v1/self", None, None);
    assert_eq!(r.status, 401, "remote admin without a token: {r:?}");
}

#[test]
fn bad_input_gets_a_4xx_json_error_and_changes_nothing() {
    let mut m = Mesh::new("abi", 2);
    m.link(0, 1);
    m.start(0, NodeOpts::default());
    m.start(1, NodeOpts::peers(&[0]));
    m.wait_ping(1, 0, Duration::from_secs(10));
    let peers_before: Vec<String> = peers(&m, 1)
        .iter()
        .map(|p| format!("{}@{}", p["public_key"], p["endpoint"]))
        .collect();
    let huge = format!(r#"{{"endpoint":"{}:7400"}}"#, "a".repeat(20 * 1024));
    let cases: Vec<(&str, String, Option<String>, u16)> = vec![
        ("POST", "/v1/peers".into(), Some("{not json".into()), 400),
        (
            "POST",
            "/v1/peers".into(),
            Some(r#"{"endpoint": 7400}"#.into()),
            400,
        ),
        (
            "POST",
            "/v1/peers".into(),
            Some(r#"{"endpoint":"10.1.1.1:7400","x":1}"#.into()),
            400,
        ),
        (
            "POST",
            "/v1/peers".into(),
            Some(r#"{"endpoint":"10.1.1.1"}"#.into()),
            400,
        ),
        (
            "POST",
            "/v1/peers".into(),
            Some(r#"{"endpoint":"10.1.1.1:0"}"#.into()),
            400,
        ),
        (
            "POST",
            "/v1/peers".into(),
            Some(r#"{"endpoint":"10.1.1.1:7400","public_key":"abc"}"#.into()),
            400,
        ),
        ("POST", "/v1/peers".into(), Some(huge), 413),
        ("POST", "/v1/peers".into(), Some("[]".into()), 400),
        ("DELETE", "/v1/peers/nothex".into(), None, 400),
        ("DELETE", format!("/v1/peers/{}", "0".repeat(64)), None, 400),
        (
            "POST",
            "/v1/ping".into(),
            Some(r#"{"address":"::1"}"#.into()),
            400,
        ),
        (
            "POST",
            "/v1/ping".into(),
            Some(r#"{"address":12}"#.into()),
            400,
        ),
        ("POST", "/v1/traceroute".into(), Some("".into()), 400),
        ("GET", "/v1/lookup/2001:db8::1".into(), None, 400),
        ("GET", "/v1/nothing".into(), None, 404),
        ("PUT", "/v1/self".into(), None, 405),
        ("DELETE", "/v1/routes".into(), None, 405),
        ("GET", "/v1/ping".into(), None, 405),
    ];
    for (method, path, body, want) in &cases {
        let r = api(&m, 1, method, path, body.as_deref());
        let shown: String = body.as_deref().unwrap_or("").chars().take(60).collect();
        assert_eq!(
            r.status, *want,
            "{method} {path} {shown}: expected HTTP {want}, got {r:?}"
        );
        assert!(
            r.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path} {shown}: the error body should be {{\"error\": \"...\"}}: {r:?}"
        );
    }
    assert!(m.is_running(1), "node 1 died on bad input");
    let peers_after: Vec<String> = peers(&m, 1)
        .iter()
        .map(|p| format!("{}@{}", p["public_key"], p["endpoint"]))
        .collect();
    assert_eq!(
        peers_after, peers_before,
        "bad input changed node 1's peers"
    );
    let saved = std::fs::read_to_string(m.state_dir(1).join("peers")).unwrap_or_default();
    assert!(
        !saved.contains("10.1.1.1"),
        "bad input was saved as a peer:\n{saved}"
    );
    m.wait_ping(1, 0, Duration::from_secs(2));
}

#[test]
fn admin_api_on_a_unix_socket_and_a_configured_token() {
    let m = Mesh::new("aus", 1);
    let sock = m.dir.join("admin.sock");
    let cfg = write_config(
        &m,
        0,
        &format!(
            "admin_token = \"configured-token-123\"\nadmin_socket = \"{}\"\nlan_discovery = false\n",
            sock.display()
        ),
    );
    let n0 = start_with_config(&m, 0, &cfg);
    poll(Duration::from_secs(5), || sock.exists()).expect("the admin socket never appeared");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&sock).expect("socket").permissions(),
    );
    assert_eq!(
        mode & 0o777,
        0o600,
        "admin socket mode is {:o}",
        mode & 0o777
    );
    let curl = |auth: &str| {
        let out = m
            .cmd(0, "curl")
            .args(["-sS", "-m", "10", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(&sock)
            .args(["-H", auth, "http://localhost/v1/self"])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let ok = curl("Authorization: Bearer configured-token-123");
    assert!(
        ok.ends_with("\n200") && ok.contains(&m.addr(0)),
        "GET /v1/self over the unix socket: {ok}"
    );
    let bad = curl("Authorization: Bearer nope");
    assert!(
        bad.ends_with("\n401"),
        "wrong token over the unix socket: {bad}"
    );
    // The TCP API takes the configured token too, and ctl finds it through --config.
    let r = http_raw(
        &m,
        0,
        "GET",
        "/v1/self",
        None,
        Some("Bearer configured-token-123"),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let out = m
        .cmd(0, MESHD)
        .arg("--config")
        .arg(&cfg)
        .args(["ctl", "--json", "self"])
        .output()
        .expect("ctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&m.addr(0)),
        "meshd --config CFG ctl --json self: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // SIGTERM removes the socket.
    let mut n0 = n0;
    n0.signal("TERM");
    assert!(
        n0.wait_timeout(Duration::from_secs(5)).is_some(),
        "no exit on SIGTERM"
    );
    assert!(
        !sock.exists(),
        "the admin socket was left behind after SIGTERM"
    );
}

/// schemathesis, or installs it with pip; fails the test clearly if neither works.
fn schemathesis() -> String {
    let have = |p: &str| {
        Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if have("schemathesis") {
        return "schemathesis".into();
    }
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "schemathesis"])
        .output()
        .expect("run pip");
    assert!(
        out.status.success() && have("schemathesis"),
        "schemathesis is not installed and `python3 -m pip install schemathesis` failed ({}); \
         this test needs it (PyPI must be reachable):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    "schemathesis".into()
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let st = schemathesis();
    let mut m = Mesh::new("ast", 2);
    m.link(0, 1);
    m.start(0, NodeOpts::default());
    m.start(1, NodeOpts::peers(&[0]));
    m.wait_ping(1, 0, Duration::from_secs(10));
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/admin-api.yaml");
    let report = m.dir.join("schemathesis.xml");
    let start = Instant::now();
    let out = m
        .cmd(1, &st)
        .args([
            "run",
            spec,
            "--url",
            "http://127.0.0.1:7401",
            "-H",
            &format!("Authorization: Bearer {}", token(&m, 1)),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "15",
            "--phases",
            "examples,coverage,fuzzing",
            "--workers",
            "4",
            "--request-timeout",
            "20",
            "--seed",
            "1",
            "--generation-database",
            "none",
            "--no-color",
            "--report",
            "junit",
            "--report-junit-path",
        ])
        .arg(&report)
        .current_dir(&m.dir)
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .expect("run schemathesis");
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "schemathesis took {took:?}; summary:\n{}",
        stdout
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        out.status.success(),
        "schemathesis found problems ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // It really tested the operations (not an empty run): "N generated, N passed".
    let generated: u64 = stdout
        .lines()
        .find_map(|l| l.trim().split_once(" generated")?.0.parse().ok())
        .unwrap_or(0);
    assert!(
        generated >= 50,
        "schemathesis generated only {generated} test cases:\n{stdout}"
    );
    assert!(m.is_running(1), "the node died under schemathesis");
}
