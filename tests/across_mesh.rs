//! Issue "Across the mesh": real meshd processes in network namespaces wired into lines and a
//! square, reaching nodes several hops away, failing over when a link dies silently, and
//! carrying ordinary programs (ping, TCP, ssh) to distant fc00::/8 addresses.
//!
//! Needs root (namespaces, TUN). Every test cleans up after itself, also when it fails.

mod common;

use std::fs;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{longest_gap, parse_ping_replies, run, unix_now, Mesh, NodeOpts};

/// `lossy_line_stays_up_and_delivers` measures a delivery rate, which the other tests of this
/// file (up to 34 daemons at once) can pull down on a 2-core machine: 168 of 300 in one
/// full-suite run against 204–226 alone. It runs alone (write lock); the others share (read).
static ALONE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    ALONE.read().unwrap_or_else(|e| e.into_inner())
}

/// A line `0 - 1 - ... - (n-1)` in which each node dials only its left neighbour.
fn line(tag: &str, n: usize) -> Mesh {
    let mut m = Mesh::new(tag, n);
    m.line();
    m.start(0, NodeOpts::default());
    for i in 1..n {
        m.start(i, NodeOpts::peers(&[i - 1]));
    }
    m
}

/// Waits until every node of a line has its one or two links up.
fn wait_line_up(m: &Mesh) {
    let n = m.len();
    for i in 0..n {
        let degree = if i == 0 || i == n - 1 { 1 } else { 2 };
        m.wait_peers_up(i, degree, Duration::from_secs(15));
    }
}

#[test]
fn six_node_line_ends_exchange_ping_and_tcp() {
    let _shared = shared();
    let mut m = line("ln", 6);
    wait_line_up(&m);
    let t = m.wait_ping(0, 5, Duration::from_secs(20));
    eprintln!("node 0 reached node 5 (5 hops) after {t:?}");
    let t = m.wait_ping(5, 0, Duration::from_secs(10));
    eprintln!("node 5 reached node 0 after {t:?}");
    let len = 8 << 20;
    let took = m.tcp_transfer(0, 5, len, Duration::from_secs(90));
    eprintln!(
        "8 MiB over 5 hops in {took:?} ({:.1} Mbit/s)",
        len as f64 * 8.0 / took.as_secs_f64() / 1e6
    );
    // Nothing is cut: a burst of pings each way loses nothing.
    for (from, to) in [(0, 5), (5, 0)] {
        m.ping_burst(from, to, 10, 0.05);
    }
}

#[test]
fn first_packet_to_a_far_node_waits_for_the_lookup() {
    let _shared = shared();
    // As soon as the links of a fresh 6-node line are up, node 0 knows nothing of node 5:
    // its first packet must be queued while the lookup runs, not refused.
    let m = line("fp", 6);
    wait_line_up(&m);
    let first = m
        .cmd(0, "ping")
        .args(["-6", "-n", "-c1", "-W5", &m.addr(5)])
        .output()
        .expect("ping");
    if !first.status.success() {
        let metrics = m.metrics(0);
        let mut lookups: Vec<_> = metrics
            .iter()
            .filter(|(k, _)| k.contains("lookups"))
            .collect();
        lookups.sort_by(|a, b| a.0.cmp(b.0));
        panic!(
            "the first ping from node 0 to node 5 (no session yet) got no reply within 5 s:\n{}\nnode 0: {lookups:?}\n{}",
            String::from_utf8_lossy(&first.stdout),
            m.diagnose(0)
        );
    }
    eprintln!(
        "first packet: {}",
        String::from_utf8_lossy(&first.stdout)
            .lines()
            .find(|l| l.contains("bytes from"))
            .unwrap_or("")
    );
}

/// Which neighbour of `from` (among `choices`) the flow leaves through: the veth whose
/// transmit counter grows the most over `window` while a flow runs.
fn busiest_neighbour(
    m: &Mesh,
    from: usize,
    choices: &[usize],
    window: Duration,
) -> (usize, Vec<u64>) {
    let tx = |j: usize| {
        let (dev, _) = m.dev_to(from, j);
        m.dev_counter(from, &dev, "tx_packets")
    };
    let before: Vec<u64> = choices.iter().map(|&j| tx(j)).collect();
    sleep(window);
    let deltas: Vec<u64> = choices
        .iter()
        .zip(&before)
        .map(|(&j, b)| tx(j) - b)
        .collect();
    let best = (0..choices.len())
        .max_by_key(|&k| deltas[k])
        .expect("choices");
    (choices[best], deltas)
}

/// Runs `ping -D -i 0.05` from `from` to `to`; after a second, finds the neighbour of
/// `from` the flow uses, calls `cut(m, via)` (which cuts something and returns a label), keeps
/// pinging for 4 s, and returns the longest time without a reply from just before the cut
/// to the end, and the neighbour the flow used.
fn outage_when(
    m: &Mesh,
    from: usize,
    to: usize,
    neighbours: &[usize],
    phase: &str,
    cut: impl FnOnce(&Mesh, usize) -> String,
) -> (f64, usize) {
    let mut ping = m.spawn(
        from,
        &format!("ping-{phase}"),
        "ping",
        &["-6", "-n", "-D", "-i0.05", "-W1", &m.addr(to)],
    );
    let (via, deltas) = busiest_neighbour(m, from, neighbours, Duration::from_millis(1000));
    assert!(
        deltas.iter().max().copied().unwrap_or(0) >= 10,
        "{phase}: the 20/s ping flow from node {from} left through no link (tx deltas {deltas:?} towards {neighbours:?})"
    );
    let watched = [
        "meshd_path_switches_total",
        "meshd_lookups_total{reason=\"started\"}",
        "meshd_lookups_total{reason=\"found\"}",
        "meshd_drops_total{reason=\"unreachable\"}",
        "meshd_drops_total{reason=\"queue_full\"}",
    ];
    let before = m.metrics(from);
    let what = cut(m, via);
    let t_cut = unix_now();
    sleep(Duration::from_secs(4));
    let t_end = unix_now();
    let after_m = m.metrics(from);
    let deltas_m: Vec<String> = watched
        .iter()
        .map(|k| {
            format!(
                "{k} +{}",
                after_m.get(*k).unwrap_or(&f64::NAN) - before.get(*k).unwrap_or(&f64::NAN)
            )
        })
        .collect();
    ping.signal("INT");
    ping.wait_timeout(Duration::from_secs(3));
    let replies = parse_ping_replies(&ping.log_text());
    let (gap, gap_start) = longest_gap(&replies, t_cut - 0.25, t_end);
    let after = replies.iter().filter(|r| r.0 > t_cut + 2.0).count();
    eprintln!(
        "{phase}: flow {from}->{to} left via node {via} (tx deltas {deltas:?} towards {neighbours:?}); cut {what}; \
         longest gap {:.0} ms starting {:.3} s after the cut; {after} replies in the last 2 s; {} replies in all",
        gap * 1000.0,
        gap_start - t_cut,
        replies.len()
    );
    eprintln!(
        "{phase}: node {from} counters over the cut: {}",
        deltas_m.join(", ")
    );
    // (A flow that never comes back shows as a gap running to the end of the window.)
    (gap, via)
}

/// Waits until the healed link `a`-`b` carries packets again both ways (keepalives,
/// handshakes), then a little longer for the nodes to trust it.
fn wait_link_traffic(m: &Mesh, a: usize, b: usize, timeout: Duration) -> Duration {
    let start = Instant::now();
    let (dev, _) = m.dev_to(a, b);
    let rx0 = m.dev_counter(a, &dev, "rx_packets");
    let tx0 = m.dev_counter(a, &dev, "tx_packets");
    loop {
        let rx = m.dev_counter(a, &dev, "rx_packets") - rx0;
        let tx = m.dev_counter(a, &dev, "tx_packets") - tx0;
        if rx >= 3 && tx >= 3 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "healed link {a}-{b} carried nothing within {timeout:?} (rx {rx}, tx {tx})"
        );
        sleep(Duration::from_millis(100));
    }
}

#[test]
fn square_fails_over_a_silently_cut_link_within_a_second() {
    let _shared = shared();
    // A=0, B=1, C=2, D=3 in a ring A-B-C-D-A; A and C are not peers. Each dials the next.
    let mut m = Mesh::new("sq", 4);
    for (a, b) in [(0, 1), (1, 2), (2, 3), (3, 0)] {
        m.link(a, b);
    }
    for (i, next) in [(0, 1), (1, 2), (2, 3), (3, 0)] {
        m.start(i, NodeOpts::peers(&[next]));
    }
    m.wait_ping(0, 2, Duration::from_secs(20));
    m.wait_ping(2, 0, Duration::from_secs(10));
    // Let every link and path settle before measuring.
    let _ = m
        .cmd(0, "ping")
        .args(["-6", "-n", "-c20", "-i0.05", "-W1", &m.addr(2)])
        .output();

    // 1: cut the first hop of the path in use (next to the sender).
    let (gap1, via1) = outage_when(&m, 0, 2, &[1, 3], "phase 1", |m, via| {
        m.cut(0, via);
        format!("link 0-{via}")
    });

    // Heal, wait until that link lives again, then cut the far hop of the path now in use.
    m.heal(0, via1);
    let back = wait_link_traffic(&m, 0, via1, Duration::from_secs(15));
    eprintln!("healed link 0-{via1} carried traffic again after {back:?}");
    sleep(Duration::from_secs(2));
    let (gap2, via2) = outage_when(&m, 0, 2, &[1, 3], "phase 2", |m, via| {
        m.cut(via, 2);
        format!("link {via}-2")
    });
    eprintln!(
        "longest outage: {:.0} ms (phase 1, via {via1}), {:.0} ms (phase 2, via {via2})",
        gap1 * 1000.0,
        gap2 * 1000.0
    );
    assert!(
        gap1 < 1.0,
        "phase 1: the flow stopped for {:.0} ms after link 0-{via1} was cut (limit 1000 ms)",
        gap1 * 1000.0
    );
    assert!(
        gap2 < 1.0,
        "phase 2: the flow stopped for {:.0} ms after link {via2}-2 was cut (limit 1000 ms)",
        gap2 * 1000.0
    );
}

#[test]
fn ssh_runs_a_command_two_hops_away() {
    let _shared = shared();
    let mut m = line("ssh", 3);
    m.wait_ping(0, 2, Duration::from_secs(20));
    let dir = m.dir.clone();
    let host_key = dir.join("ssh_host_ed25519_key");
    let client_key = dir.join("client_key");
    for k in [&host_key, &client_key] {
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "meshd-test", "-f"])
            .arg(k));
    }
    let authorized = dir.join("authorized_keys");
    fs::copy(client_key.with_extension("pub"), &authorized).expect("authorized_keys");
    fs::create_dir_all("/run/sshd").expect("/run/sshd (sshd's privilege separation directory)");
    let addr = m.addr(2);
    let _sshd = m.spawn(
        2,
        "sshd",
        "/usr/sbin/sshd",
        &[
            "-D",
            "-e",
            "-f",
            "/dev/null",
            "-o",
            &format!("HostKey={}", host_key.display()),
            "-o",
            &format!("ListenAddress=[{addr}]:22"),
            "-o",
            "PermitRootLogin=yes",
            "-o",
            &format!("AuthorizedKeysFile={}", authorized.display()),
            "-o",
            "UsePAM=no",
            "-o",
            "StrictModes=no",
            "-o",
            "PidFile=none",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = m
            .cmd(0, "ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(&client_key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "LogLevel=ERROR",
                &format!("root@{addr}"),
                "echo",
                "hello",
                "from",
                "$(hostname)",
            ])
            .output()
            .expect("ssh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            assert!(
                stdout.starts_with("hello from "),
                "ssh ran the command but printed {stdout:?}"
            );
            eprintln!("ssh root@{addr} (2 hops): {}", stdout.trim());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ssh from node 0 to root@{addr} (node 2, 2 hops) kept failing: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        sleep(Duration::from_millis(300));
    }
}

#[test]
fn killed_node_is_reached_again_after_restart() {
    let _shared = shared();
    // The middle node dials both ends, so the killed end must be found again by its peer.
    // It dials with the keys pinned (`KEY@HOST:PORT`, Noise IK).
    let mut m = Mesh::new("kil", 3);
    m.line();
    m.start(0, NodeOpts::default());
    m.start(2, NodeOpts::default());
    m.start(
        1,
        NodeOpts {
            peers: vec![0, 2],
            pin_keys: true,
            ..Default::default()
        },
    );
    m.wait_ping(0, 2, Duration::from_secs(20));
    m.wait_ping(2, 0, Duration::from_secs(10));

    m.kill(2);
    assert!(!m.ping_once(0, &m.addr(2)), "node 2 answered while dead");
    m.restart(2);
    let t = m.wait_ping(0, 2, Duration::from_secs(15));
    eprintln!("node 2 (SIGKILLed end) reached again from node 0 after {t:?}");
    m.wait_ping(2, 0, Duration::from_secs(5));

    // The middle node too: it dials both ends again from its saved identity.
    m.kill(1);
    m.restart(1);
    let t = m.wait_ping(0, 2, Duration::from_secs(15));
    eprintln!("ends reach each other again after restarting the SIGKILLed middle node: {t:?}");
    m.wait_ping(2, 0, Duration::from_secs(5));
}

/// Drops `pct`% of the UDP datagrams arriving at node `i` from node `j` (nftables `numgen`),
/// whether for node `i` or passing through it (a direct link between farther nodes crosses
/// the namespaces' IP routes): a lossy radio link, one direction.
fn lossy(m: &Mesh, i: usize, j: usize, pct: u32) {
    let (dev, _) = m.dev_to(i, j);
    let rule =
        format!("iifname \"{dev}\" meta l4proto udp numgen random mod 100 < {pct} counter drop;");
    let script = format!(
        "table inet meshloss{j} {{\n\
         \tchain in {{ type filter hook input priority -300; policy accept; {rule} }}\n\
         \tchain through {{ type filter hook forward priority -300; policy accept; {rule} }}\n\
         }}\n"
    );
    let path = std::env::temp_dir().join(format!("meshd-loss-{}-{i}-{j}.nft", std::process::id()));
    std::fs::write(&path, script).expect("nft script");
    let out = m.cmd(i, "nft").arg("-f").arg(&path).output().expect("nft");
    // The rules live in the namespace now; the script file is not needed (it was left in
    // /tmp by every run).
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A line of four real daemons whose every link loses 5% of datagrams each way: links stay up
/// (no "link down" in any log: crossed rekeys and lost handshake messages are recovered
/// without declaring the peer dead) and pings across all three hops get through at about the
/// rate the loss allows (0.95^6 = 74% of round trips).
#[test]
fn lossy_line_stays_up_and_delivers() {
    let _alone = ALONE.write().unwrap_or_else(|e| e.into_inner());
    let mut m = line("lo", 4);
    for i in 0..3 {
        lossy(&m, i, i + 1, 5);
        lossy(&m, i + 1, i, 5);
    }
    wait_line_up(&m);
    m.wait_ping(0, 3, Duration::from_secs(20));
    let out = m
        .cmd(0, "ping")
        .args(["-6", "-n", "-q", "-c300", "-i0.02", "-W2", &m.addr(3)])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let received: u32 = text
        .split(',')
        .find_map(|f| {
            f.trim()
                .strip_suffix(" received")
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    eprintln!("300 pings over three 5%-lossy hops: {received} answered");
    let rs = m
        .cmd(1, "nft")
        .args(["list", "ruleset"])
        .output()
        .expect("nft");
    eprintln!("RULESET {}", String::from_utf8_lossy(&rs.stdout));
    let downs: usize = (0..4)
        .map(|i| m.node(i).log_text().matches("link down").count())
        .sum();
    assert_eq!(downs, 0, "a link was declared down:\n{}", m.logs_tail(30));
    assert!(
        received >= 180,
        "only {received} of 300 pings answered:\n{text}\n{}",
        m.logs_tail(30)
    );
}

/// A line of 34 real daemons: its ends are 33 hops apart, more than one 64-bit label holds
/// (31 hops through nodes with two links). They reach each other over routes of two
/// segments, relayed by a node in between (`meshd_relayed_frames_total` counts it), with
/// ping and TCP (a relayed data packet still fits the path MTU).
#[test]
fn a_line_longer_than_a_label_is_crossed_through_a_relay() {
    let _shared = shared();
    let n = 34;
    let mut m = line("rl", n);
    wait_line_up(&m);
    let t = m.wait_ping(0, n - 1, Duration::from_secs(40));
    eprintln!("node 0 reached node {} ({} hops) after {t:?}", n - 1, n - 1);
    let t = m.wait_ping(n - 1, 0, Duration::from_secs(20));
    eprintln!("and back after {t:?}");
    for (from, to) in [(0, n - 1), (n - 1, 0)] {
        m.ping_burst(from, to, 10, 0.1);
    }
    let len = 2 << 20;
    let took = m.tcp_transfer(0, n - 1, len, Duration::from_secs(90));
    eprintln!(
        "2 MiB over {} hops in {took:?} ({:.1} Mbit/s)",
        n - 1,
        len as f64 * 8.0 / took.as_secs_f64() / 1e6
    );
    let relayed: f64 = (1..n - 1)
        .map(|i| m.metric(i, "meshd_relayed_frames_total"))
        .sum();
    assert!(
        relayed > 0.0,
        "no node relayed a frame: a 33-hop route cannot be one label"
    );
    assert_eq!(m.metric(0, "meshd_relayed_frames_total"), 0.0);
    // The admin API shows the route's two segments.
    let out = m
        .cmd(0, common::MESHD)
        .arg("--state-dir")
        .arg(m.state_dir(0))
        .args(["ctl", "lookup", &m.addr(n - 1)])
        .output()
        .expect("meshd ctl lookup");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("meshd ctl lookup: {text}");
    assert!(
        out.status.success() && text.contains('+'),
        "the route to node {} should show two segments joined by '+':\n{text}",
        n - 1
    );
}
