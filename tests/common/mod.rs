//! Harness for the real-network integration tests: Linux network namespaces joined by veth
//! pairs, real `meshd` processes with real TUN devices, and real programs (ping, socat, ssh)
//! talking over the fc00::/8 addresses.
//!
//! Everything a test makes is owned by one [`Mesh`] and removed when it drops, also when the
//! test panics; on a panic the tail of every node's log is printed first, and the scratch
//! directory (full logs) is kept. `MESHD_LOG=debug cargo test ...` makes the logs detailed.
//! Names carry the process id and a per-process counter, so tests can run in parallel threads
//! and processes.
//! Every spawned process also gets `setpriv --pdeathsig KILL`, so nothing outlives a test
//! process that is killed outright.
//!
//! A note on ping: with `-c N -W 1`, iputils ping waits only two round trips for the replies
//! to the last probes, so one late reply counts as lost; [`Mesh::ping_burst`] uses a deadline
//! (`-w`) and checks that every probe was answered instead.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The meshd binary cargo built for these tests.
pub const MESHD: &str = env!("CARGO_BIN_EXE_meshd");
/// UDP port every node listens on (each node has its own namespace).
pub const PORT: u16 = 7400;
/// TUN device name inside each namespace.
pub const TUN: &str = "mesh0";

static SEQ: AtomicUsize = AtomicUsize::new(0);
static PREFLIGHT: Once = Once::new();

/// Fails the test at once, clearly, unless we are root and the tools exist.
pub fn preflight() {
    PREFLIGHT.call_once(|| {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?");
        assert!(
            uid == "0",
            "these tests need root: they create network namespaces, veth pairs and TUN devices \
             (effective uid is {uid}); run them as root, e.g. `sudo -E cargo test --test two_nodes`"
        );
        assert!(
            Path::new("/dev/net/tun").exists(),
            "/dev/net/tun is missing (scripts/test creates it)"
        );
        for tool in [
            "ip",
            "ping",
            "nft",
            "socat",
            "python3",
            "setpriv",
            "ssh",
            "ssh-keygen",
        ] {
            let found = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(
                found,
                "the tool `{tool}` is missing; scripts/test installs what these tests need"
            );
        }
        remove_stale_namespaces();
    });
}

/// Namespaces left by test processes that died without cleaning up (SIGKILL): names are
/// `mi-PID-...`, and a PID that no longer runs cannot be using them.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("mi-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Runs a command, returns its output; panics with everything it said if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ip ARGS...`, which must succeed.
pub fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// Seconds since the Unix epoch, as `ping -D` prints them.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Deterministic pseudo-random bytes (xorshift64*), for payloads we compare afterwards.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A process we started, killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    /// Print the log if the test is failing when this drops (helpers; node logs are
    /// printed by the [`Mesh`]).
    pub dump_on_panic: bool,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process wrote so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.dump_on_panic && std::thread::panicking() {
            eprintln!(
                "----- {} (helper) output -----\n{}",
                self.name,
                self.log_text()
            );
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// How to start one node.
#[derive(Clone, Debug, Default)]
pub struct NodeOpts {
    /// Nodes (indices) to give as `--peer`, each at its address on the shared link.
    pub peers: Vec<usize>,
    /// Give the peers as `PUBKEY@HOST:PORT`.
    pub pin_keys: bool,
    /// `--network-secret`.
    pub secret: Option<String>,
}

impl NodeOpts {
    pub fn peers(peers: &[usize]) -> NodeOpts {
        NodeOpts {
            peers: peers.to_vec(),
            ..Default::default()
        }
    }
}

/// One veth pair between two namespaces.
#[derive(Clone, Debug)]
pub struct Link {
    pub a: usize,
    pub b: usize,
    /// Device name in `a`'s namespace.
    pub a_dev: String,
    /// Device name in `b`'s namespace.
    pub b_dev: String,
    pub a_ip: String,
    pub b_ip: String,
}

/// A set of namespaces (one per node), the veths between them and the meshd processes in
/// them. Dropping it kills every process and deletes every namespace and file it made.
pub struct Mesh {
    // Field order is drop order: processes before namespaces before files.
    nodes: Vec<Option<Proc>>,
    ns: Vec<String>,
    links: Vec<Link>,
    idents: Vec<(String, String)>,
    opts: Vec<NodeOpts>,
    starts: Vec<usize>,
    /// Scratch directory of this mesh (state dirs, logs, payloads).
    pub dir: PathBuf,
    tag: String,
}

impl Mesh {
    /// `n` namespaces named after `tag` (a few letters naming the test), loopback up.
    pub fn new(tag: &str, n: usize) -> Mesh {
        preflight();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = format!("mi-{}-{tag}{seq}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        let mut m = Mesh {
            nodes: Vec::new(),
            ns: Vec::new(),
            links: Vec::new(),
            idents: Vec::new(),
            opts: vec![NodeOpts::default(); n],
            starts: vec![0; n],
            dir,
            tag,
        };
        for i in 0..n {
            let name = format!("{}-{i}", m.tag);
            ip(&["netns", "add", &name]);
            m.ns.push(name.clone());
            ip(&["-n", &name, "link", "set", "lo", "up"]);
            m.nodes.push(None);
            let state = m.state_dir(i);
            let out = run(Command::new(MESHD)
                .arg("address")
                .arg("--state-dir")
                .arg(&state));
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let mut lines = text.lines();
            let addr = lines.next().unwrap_or_default().trim().to_string();
            let key = lines.next().unwrap_or_default().trim().to_string();
            assert!(
                addr.starts_with("fc"),
                "meshd address printed {text:?}: line 1 should be an fc00::/8 address"
            );
            assert_eq!(
                key.len(),
                64,
                "meshd address printed {text:?}: line 2 should be a 64-hex public key"
            );
            m.idents.push((addr, key));
        }
        m
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.ns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ns.is_empty()
    }

    /// Namespace name of node `i`.
    pub fn ns(&self, i: usize) -> &str {
        &self.ns[i]
    }

    /// The fc00::/8 address of node `i`.
    pub fn addr(&self, i: usize) -> String {
        self.idents[i].0.clone()
    }

    /// The public key (hex) of node `i`.
    pub fn key(&self, i: usize) -> String {
        self.idents[i].1.clone()
    }

    /// State directory of node `i`.
    pub fn state_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("state{i}"))
    }

    /// Log file of node `i` (every start appends to it).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{i}.log"))
    }

    /// Joins `a` and `b` with a veth pair on 10.77.K.0/24 (K = link number). The device in
    /// `a`'s namespace is called `v{b}`, the one in `b`'s `v{a}`.
    pub fn link(&mut self, a: usize, b: usize) -> Link {
        let k = self.links.len() + 1;
        assert!(k < 255, "too many links");
        let (a_dev, b_dev) = (format!("v{b}"), format!("v{a}"));
        let (a_ip, b_ip) = (format!("10.77.{k}.1"), format!("10.77.{k}.2"));
        ip(&[
            "link",
            "add",
            &a_dev,
            "netns",
            &self.ns[a],
            "type",
            "veth",
            "peer",
            "name",
            &b_dev,
            "netns",
            &self.ns[b],
        ]);
        for (ns, dev, addr) in [(&self.ns[a], &a_dev, &a_ip), (&self.ns[b], &b_dev, &b_ip)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        let l = Link {
            a,
            b,
            a_dev,
            b_dev,
            a_ip,
            b_ip,
        };
        self.links.push(l.clone());
        l
    }

    /// Links `0-1-2-...-(n-1)`.
    pub fn line(&mut self) {
        for i in 1..self.len() {
            self.link(i - 1, i);
        }
    }

    /// The link between `a` and `b`.
    pub fn link_between(&self, a: usize, b: usize) -> &Link {
        self.links
            .iter()
            .find(|l| (l.a, l.b) == (a, b) || (l.a, l.b) == (b, a))
            .unwrap_or_else(|| panic!("no link between {a} and {b}"))
    }

    /// `i`'s device on its link to `j`, and `i`'s IPv4 address on it.
    pub fn dev_to(&self, i: usize, j: usize) -> (String, String) {
        let l = self.link_between(i, j);
        if l.a == i {
            (l.a_dev.clone(), l.a_ip.clone())
        } else {
            (l.b_dev.clone(), l.b_ip.clone())
        }
    }

    /// A command run inside node `i`'s namespace (and killed if this test process dies).
    pub fn cmd(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.ns[i],
            "setpriv",
            "--pdeathsig",
            "KILL",
            program,
        ]);
        c
    }

    /// Starts meshd in node `i`'s namespace.
    pub fn start(&mut self, i: usize, opts: NodeOpts) {
        assert!(self.nodes[i].is_none(), "node {i} is already running");
        self.opts[i] = opts.clone();
        self.starts[i] += 1;
        let log_path = self.log_path(i);
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open node log");
        {
            use std::io::Write;
            let _ = writeln!(
                log,
                "===== test harness: start #{} of node {i} at {:.3} =====",
                self.starts[i],
                unix_now()
            );
        }
        let mut c = self.cmd(i, MESHD);
        c.arg("--state-dir").arg(self.state_dir(i));
        c.args([
            "--listen",
            &format!("[::]:{PORT}"),
            "--tun",
            TUN,
            "--admin",
            "127.0.0.1:7401",
        ]);
        for &p in &opts.peers {
            let (_, peer_ip) = self.dev_to(p, i);
            let spec = if opts.pin_keys {
                format!("{}@{peer_ip}:{PORT}", self.key(p))
            } else {
                format!("{peer_ip}:{PORT}")
            };
            c.args(["--peer", &spec]);
        }
        if let Some(s) = &opts.secret {
            c.args(["--network-secret", s]);
        }
        let child = spawn_logged(&mut c, log);
        self.nodes[i] = Some(Proc {
            name: format!("node{i}"),
            child,
            log: log_path,
            dump_on_panic: false,
        });
        self.wait_tun(i, Duration::from_secs(10));
    }

    /// Starts node `i` again with the options it last had.
    pub fn restart(&mut self, i: usize) {
        let opts = self.opts[i].clone();
        self.start(i, opts);
    }

    /// Waits until node `i`'s TUN device exists and carries its address.
    fn wait_tun(&mut self, i: usize, timeout: Duration) {
        let (ns, addr) = (self.ns[i].clone(), self.addr(i));
        let node = self.nodes[i].as_mut().expect("started");
        wait_for_tun(&ns, &addr, i, node, TUN, timeout);
    }

    /// The running process of node `i`.
    pub fn node(&mut self, i: usize) -> &mut Proc {
        self.nodes[i]
            .as_mut()
            .unwrap_or_else(|| panic!("node {i} is not running"))
    }

    /// Stops node `i` with SIGTERM; asserts it exits cleanly and its TUN goes away.
    pub fn stop(&mut self, i: usize) {
        let mut p = self.nodes[i]
            .take()
            .unwrap_or_else(|| panic!("node {i} is not running"));
        p.signal("TERM");
        let st = p.wait_timeout(Duration::from_secs(5));
        let log = p.log_text();
        drop(p);
        let st = st
            .unwrap_or_else(|| panic!("node {i} did not exit within 5 s of SIGTERM; log:\n{log}"));
        assert!(
            st.success(),
            "node {i} exited with {st} after SIGTERM; log:\n{log}"
        );
        self.assert_no_tun(i);
    }

    /// Kills node `i` with SIGKILL (no goodbye to its peers).
    pub fn kill(&mut self, i: usize) {
        let mut p = self.nodes[i]
            .take()
            .unwrap_or_else(|| panic!("node {i} is not running"));
        p.signal("KILL");
        assert!(
            p.wait_timeout(Duration::from_secs(5)).is_some(),
            "node {i} survived SIGKILL"
        );
        drop(p);
        self.assert_no_tun(i);
    }

    fn assert_no_tun(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let out = Command::new("ip")
                .args(["-n", &self.ns[i], "link", "show", "dev", TUN])
                .output()
                .expect("ip link");
            if !out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {i}'s TUN {TUN} still exists after the process ended"
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// Is node `i`'s process still alive?
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i]
            .as_mut()
            .map(|p| p.is_running())
            .unwrap_or(false)
    }

    /// One `ping -6 -c1 -W1` from node `from` to `addr`.
    pub fn ping_once(&self, from: usize, addr: &str) -> bool {
        self.cmd(from, "ping")
            .args(["-6", "-n", "-c1", "-W1", addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Pings `to` from `from` until a reply comes; panics after `timeout`. Returns how long it took.
    pub fn wait_ping(&mut self, from: usize, to: usize, timeout: Duration) -> Duration {
        let start = Instant::now();
        let addr = self.addr(to);
        loop {
            if self.ping_once(from, &addr) {
                return start.elapsed();
            }
            for i in [from, to] {
                if self.nodes[i].is_some() {
                    assert!(
                        self.is_running(i),
                        "node {i} died while node {from} was pinging node {to}"
                    );
                }
            }
            if start.elapsed() >= timeout {
                panic!(
                    "node {from} got no ping6 reply from node {to} ({addr}) within {timeout:?}\n{}{}",
                    self.diagnose(from),
                    self.diagnose(to)
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Sends `n` pings from `from` to `to`, one every `interval_s` seconds, and checks that
    /// every one of them (icmp_seq 1..=n) was answered, waiting up to 5 s past the last for
    /// late replies: late is fine, lost is not. Returns ping's output.
    pub fn ping_burst(&self, from: usize, to: usize, n: u32, interval_s: f64) -> String {
        let deadline = (f64::from(n) * interval_s).ceil() as u64 + 5;
        let out = self
            .cmd(from, "ping")
            .args([
                "-6",
                "-n",
                &format!("-c{n}"),
                &format!("-i{interval_s}"),
                &format!("-w{deadline}"),
                &self.addr(to),
            ])
            .output()
            .expect("ping");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let answered: std::collections::HashSet<u64> = text
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("icmp_seq="))
                    .and_then(|v| v.parse().ok())
            })
            .collect();
        let missing: Vec<u64> = (1..=u64::from(n))
            .filter(|q| !answered.contains(q))
            .collect();
        assert!(
            missing.is_empty(),
            "ping burst node {from} -> node {to}: probes {missing:?} of 1..={n} were never answered (waited {deadline} s):\n{text}"
        );
        text
    }

    /// What node `i` says about itself through `meshd ctl` (peers, sessions, routes), for
    /// failure messages; best effort.
    pub fn diagnose(&self, i: usize) -> String {
        let mut s = format!(
            "----- node {i} ({}) as its admin API sees it -----\n",
            self.addr(i)
        );
        for what in ["peers", "sessions", "routes"] {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.ns[i],
                    MESHD,
                    "ctl",
                    "--admin",
                    "127.0.0.1:7401",
                    "--state-dir",
                ])
                .arg(self.state_dir(i))
                .arg(what)
                .output();
            match out {
                Ok(o) => {
                    let _ = writeln!(
                        s,
                        "$ meshd ctl {what}\n{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
                Err(e) => {
                    let _ = writeln!(s, "meshd ctl {what}: {e}");
                }
            }
        }
        s
    }

    /// Starts a helper program inside node `i`'s namespace, output into a log file; it is
    /// killed when the returned guard drops.
    pub fn spawn(&self, i: usize, name: &str, program: &str, args: &[&str]) -> Proc {
        let log = self.dir.join(format!("{name}.log"));
        let f = File::create(&log).expect("helper log");
        let child = self
            .cmd(i, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
            dump_on_panic: true,
        }
    }

    /// Sends `len` pseudo-random bytes over TCP from node `from` to node `to`'s fc address
    /// (socat at both ends) and checks every byte arrived in order. Returns the time taken.
    pub fn tcp_transfer(&self, from: usize, to: usize, len: usize, timeout: Duration) -> Duration {
        let seed = 0x5eed ^ (from as u64) << 8 ^ to as u64;
        let data = pseudo_random_bytes(len, seed);
        let input = self.dir.join(format!("tcp-{from}-{to}.in"));
        let output = self.dir.join(format!("tcp-{from}-{to}.out"));
        fs::write(&input, &data).expect("write payload");
        let _ = fs::remove_file(&output);
        let port = "9000";
        let mut rx = self.spawn(
            to,
            &format!("socat-rx-{to}"),
            "socat",
            &[
                "-u",
                &format!("TCP6-LISTEN:{port},reuseaddr"),
                &format!("CREATE:{}", output.display()),
            ],
        );
        let start = Instant::now();
        let mut tx = self.spawn(
            from,
            &format!("socat-tx-{from}"),
            "socat",
            &[
                "-u",
                &format!("OPEN:{},rdonly", input.display()),
                &format!("TCP6:[{}]:{port},retry=50,interval=0.1", self.addr(to)),
            ],
        );
        let tx_st = tx.wait_timeout(timeout);
        let rx_st =
            rx.wait_timeout(timeout.saturating_sub(start.elapsed()) + Duration::from_secs(2));
        let took = start.elapsed();
        let got = fs::read(&output).unwrap_or_default();
        assert!(
            tx_st.is_some_and(|s| s.success()) && rx_st.is_some_and(|s| s.success()),
            "TCP transfer of {len} bytes from node {from} to node {to} did not finish within {timeout:?} \
             (sender {tx_st:?}: {}; receiver {rx_st:?}: {}; {} bytes arrived)",
            tx.log_text(),
            rx.log_text(),
            got.len()
        );
        assert_eq!(
            got.len(),
            data.len(),
            "TCP stream node {from} -> node {to}: wrong length"
        );
        if let Some(pos) = got.iter().zip(&data).position(|(a, b)| a != b) {
            panic!("TCP stream node {from} -> node {to}: {len} bytes arrived but differ from byte {pos} on");
        }
        let _ = fs::remove_file(&input);
        let _ = fs::remove_file(&output);
        took
    }

    /// Node `i`'s Prometheus metrics (`/metrics` of its admin API, read with curl inside its
    /// namespace): `name{labels}` -> value.
    pub fn metrics(&self, i: usize) -> std::collections::HashMap<String, f64> {
        let token = fs::read_to_string(self.state_dir(i).join("admin.token"))
            .expect("admin.token in the state dir");
        let out = self
            .cmd(i, "curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "-H",
                &format!("Authorization: Bearer {}", token.trim()),
            ])
            .arg("http://127.0.0.1:7401/metrics")
            .output()
            .expect("curl (needed to read /metrics)");
        assert!(
            out.status.success(),
            "node {i}: GET /metrics failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut m = std::collections::HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((k, v)) = line.rsplit_once(' ') {
                if let Ok(v) = v.parse::<f64>() {
                    m.insert(k.to_string(), v);
                }
            }
        }
        assert!(!m.is_empty(), "node {i}: /metrics had no samples:\n{text}");
        m
    }

    /// One metric of node `i`; panics (naming what exists) if it is not there.
    pub fn metric(&self, i: usize, key: &str) -> f64 {
        let m = self.metrics(i);
        *m.get(key).unwrap_or_else(|| {
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            panic!("node {i} has no metric {key}; it has {keys:?}")
        })
    }

    /// Waits until node `i` has `n` links up (`meshd_peers_up`).
    pub fn wait_peers_up(&self, i: usize, n: usize, timeout: Duration) {
        let start = Instant::now();
        loop {
            let up = self.metric(i, "meshd_peers_up");
            if up == n as f64 {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "node {i} has {up} links up, not {n}, after {timeout:?}"
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Reads a counter of device `dev` in node `i`'s namespace (`rx_packets`, `tx_packets`...).
    pub fn dev_counter(&self, i: usize, dev: &str, counter: &str) -> u64 {
        let out = run(Command::new("ip").args([
            "netns",
            "exec",
            &self.ns[i],
            "cat",
            &format!("/sys/class/net/{dev}/statistics/{counter}"),
        ]));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("counter is a number")
    }

    /// Packets in both directions on `i`'s veth towards `j`.
    pub fn link_packets(&self, i: usize, j: usize) -> u64 {
        let (dev, _) = self.dev_to(i, j);
        self.dev_counter(i, &dev, "rx_packets") + self.dev_counter(i, &dev, "tx_packets")
    }

    /// Silently cuts the link `a`-`b`: nftables in both namespaces drops everything in and
    /// out of the veth (no carrier change, no ICMP: the packets just vanish).
    pub fn cut(&self, a: usize, b: usize) {
        for (me, other) in [(a, b), (b, a)] {
            let (dev, _) = self.dev_to(me, other);
            let script = format!(
                "table inet meshcut {{\n\
                 \tchain in {{ type filter hook input priority -300; policy accept; iifname \"{dev}\" drop; }}\n\
                 \tchain out {{ type filter hook output priority -300; policy accept; oifname \"{dev}\" drop; }}\n\
                 }}\n"
            );
            let path = self.dir.join(format!("cut-{me}.nft"));
            fs::write(&path, script).expect("nft script");
            run(Command::new("ip")
                .args(["netns", "exec", &self.ns[me], "nft", "-f"])
                .arg(&path));
        }
    }

    /// Undoes [`Mesh::cut`].
    pub fn heal(&self, a: usize, b: usize) {
        for i in [a, b] {
            run(Command::new("ip").args([
                "netns",
                "exec",
                &self.ns[i],
                "nft",
                "delete",
                "table",
                "inet",
                "meshcut",
            ]));
        }
    }

    /// The last `n` lines of every node's log, for failure reports.
    pub fn logs_tail(&self, n: usize) -> String {
        let mut s = String::new();
        for i in 0..self.len() {
            let mut text = String::new();
            if let Ok(mut f) = File::open(self.log_path(i)) {
                let _ = f.read_to_string(&mut text);
            }
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(n);
            let _ = writeln!(
                s,
                "----- node {i} ({}, {}) log, last {} of {} lines -----",
                self.ns[i],
                self.addr(i),
                lines.len() - from,
                lines.len()
            );
            for l in &lines[from..] {
                let _ = writeln!(s, "{l}");
            }
        }
        s
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n===== {} failed; node logs follow =====\n{}",
                self.tag,
                self.logs_tail(80)
            );
        }
        for n in self.nodes.iter_mut() {
            drop(n.take());
        }
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if std::thread::panicking() {
            eprintln!(
                "(the failed test's files and full node logs are kept in {})",
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Replies of a `ping -D` run: (unix time, icmp_seq) of each reply line.
pub fn parse_ping_replies(text: &str) -> Vec<(f64, u64)> {
    let mut v = Vec::new();
    for line in text.lines() {
        if !line.contains("bytes from") {
            continue;
        }
        let Some(ts) = line
            .strip_prefix('[')
            .and_then(|l| l.split(']').next())
            .and_then(|t| t.parse::<f64>().ok())
        else {
            continue;
        };
        let Some(seq) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("icmp_seq="))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        v.push((ts, seq));
    }
    v
}

/// The longest time without a reply within `[from, to]` (unix seconds), counting the edges.
pub fn longest_gap(replies: &[(f64, u64)], from: f64, to: f64) -> (f64, f64) {
    let mut times: Vec<f64> = replies
        .iter()
        .map(|r| r.0)
        .filter(|&t| t >= from && t <= to)
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let mut prev = from;
    let mut worst = (0.0, from);
    for t in times.into_iter().chain(std::iter::once(to)) {
        if t - prev > worst.0 {
            worst = (t - prev, prev);
        }
        prev = t;
    }
    worst
}

/// Spawns a meshd command with its output (stdout and stderr) going into `log`, at log level
/// info unless MESHD_LOG says otherwise.
pub fn spawn_logged(c: &mut Command, log: std::fs::File) -> std::process::Child {
    c.env("NO_COLOR", "1");
    if std::env::var_os("MESHD_LOG").is_none() {
        c.env("MESHD_LOG", "info");
    }
    c.stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log);
    c.spawn().expect("spawn meshd")
}

/// Waits until TUN `tun` in namespace `ns` carries `addr` (node `i`'s address); fails at once,
/// with the log, if node `i`'s process `p` exits first.
pub fn wait_for_tun(ns: &str, addr: &str, i: usize, p: &mut Proc, tun: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let out = Command::new("ip")
            .args(["-n", ns, "-6", "addr", "show", "dev", tun])
            .output()
            .expect("ip addr");
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(addr) {
            return;
        }
        if let Ok(Some(st)) = p.child.try_wait() {
            panic!(
                "meshd node {i} exited during start-up ({st}); log:\n{}",
                p.log_text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "node {i}: TUN {tun} with address {addr} did not appear within {timeout:?}; log:\n{}",
            p.log_text()
        );
        sleep(Duration::from_millis(20));
    }
}
