//! Helpers shared by `tests/admin.rs` and `tests/field.rs`, on top of the namespace harness in
//! `tests/common`: meshd started with a config file (or in other ways the harness does not
//! offer), the admin API over HTTP from inside a namespace, custom wiring (bridges, NAT
//! routers), and polling.
#![allow(dead_code)] // each test binary uses a different part

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{run, unix_now, Mesh, Proc, MESHD, PORT, TUN};

/// Runs `ip netns exec NS ARGS...` in node `i`'s namespace; must succeed.
pub fn ns_run(m: &Mesh, i: usize, args: &[&str]) -> String {
    let out = run(Command::new("ip")
        .args(["netns", "exec", m.ns(i)])
        .args(args));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A veth pair between the namespaces of `a` and `b`, both ends up, no addresses.
pub fn veth(m: &Mesh, a: usize, a_dev: &str, b: usize, b_dev: &str) {
    crate::common::ip(&[
        "link",
        "add",
        a_dev,
        "netns",
        m.ns(a),
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        m.ns(b),
    ]);
    crate::common::ip(&["-n", m.ns(a), "link", "set", a_dev, "up"]);
    crate::common::ip(&["-n", m.ns(b), "link", "set", b_dev, "up"]);
}

/// Adds `cidr` to `dev` in node `i`'s namespace.
pub fn addr_add(m: &Mesh, i: usize, dev: &str, cidr: &str) {
    crate::common::ip(&["-n", m.ns(i), "addr", "add", cidr, "dev", dev]);
}

/// The admin token of node `i` (from its state dir).
pub fn token(m: &Mesh, i: usize) -> String {
    fs::read_to_string(m.state_dir(i).join("admin.token"))
        .unwrap_or_else(|e| panic!("node {i}: reading admin.token: {e}"))
        .trim()
        .to_string()
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Http {
    pub status: u16,
    pub content_type: String,
    pub body: String,
    pub www_authenticate: Option<String>,
}

impl Http {
    /// The body as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected a JSON body (HTTP {}, {}): {e}\n{}",
                self.status, self.content_type, self.body
            )
        })
    }
}

/// An HTTP request to node `i`'s admin API (127.0.0.1:7401 inside its namespace) with curl.
/// `auth`: the full Authorization header value, or None for no header.
pub fn http_raw(
    m: &Mesh,
    i: usize,
    method: &str,
    path: &str,
    body: Option<&str>,
    auth: Option<&str>,
) -> Http {
    http_to(m, i, "127.0.0.1:7401", method, path, body, auth)
}

/// Like [`http_raw`] against any admin address reachable from node `i`'s namespace.
pub fn http_to(
    m: &Mesh,
    i: usize,
    admin: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    auth: Option<&str>,
) -> Http {
    let hdr = m
        .dir
        .join(format!("curl-headers-{}-{i}", std::process::id()));
    let mut c = m.cmd(i, "curl");
    c.args(["-sS", "-m", "30", "-X", method, "-D"])
        .arg(&hdr)
        .args(["-o", "-", "-w", "\n%{http_code} %{content_type}"]);
    if let Some(a) = auth {
        c.args(["-H", &format!("Authorization: {a}")]);
    }
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    c.arg(format!("http://{admin}{path}"));
    // A node just started may not listen yet: retry a refused connection (curl exit 7) for a
    // few seconds; any other failure counts at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let out = loop {
        let out = c
            .output()
            .unwrap_or_else(|e| panic!("running curl (is it installed?): {e}"));
        if out.status.code() != Some(7) || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl {method} http://{admin}{path} in node {i}'s namespace failed ({}): {}{}",
        out.status,
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (code, ct) = last.split_once(' ').unwrap_or((last, ""));
    let headers = fs::read_to_string(&hdr).unwrap_or_default();
    let _ = fs::remove_file(&hdr);
    let www_authenticate = headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("www-authenticate")
            .then(|| v.trim().to_string())
    });
    Http {
        status: code.trim().parse().unwrap_or(0),
        content_type: ct.trim().to_string(),
        body: body.to_string(),
        www_authenticate,
    }
}

/// An authorized request to node `i`'s admin API.
pub fn api(m: &Mesh, i: usize, method: &str, path: &str, body: Option<&str>) -> Http {
    let t = token(m, i);
    http_raw(m, i, method, path, body, Some(&format!("Bearer {t}")))
}

/// `GET path` on node `i`, which must answer 200 with JSON.
pub fn get(m: &Mesh, i: usize, path: &str) -> Value {
    let r = api(m, i, "GET", path, None);
    assert_eq!(r.status, 200, "node {i}: GET {path} answered {r:?}");
    r.json()
}

/// Node `i`'s peers (GET /v1/peers).
pub fn peers(m: &Mesh, i: usize) -> Vec<Value> {
    get(m, i, "/v1/peers")
        .as_array()
        .cloned()
        .expect("/v1/peers is an array")
}

/// The state of node `i`'s link to the node with public key `key`: Some("up"/"down") or None
/// when it is not listed.
pub fn link_state(m: &Mesh, i: usize, key: &str) -> Option<String> {
    peers(m, i)
        .iter()
        .find(|p| p["public_key"] == key)
        .map(|p| p["state"].as_str().unwrap_or("?").to_string())
}

/// Is node `i`'s link to `key` up?
pub fn link_up(m: &Mesh, i: usize, key: &str) -> bool {
    link_state(m, i, key).as_deref() == Some("up")
}

/// Polls `f` every 50 ms until it is true; returns how long it took, or None after `timeout`.
pub fn poll(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        sleep(Duration::from_millis(50));
    }
}

/// The value of a Prometheus sample (exact name with labels) in node `i`'s /metrics.
pub fn metric(m: &Mesh, i: usize, sample: &str) -> f64 {
    let r = api(m, i, "GET", "/metrics", None);
    assert_eq!(r.status, 200, "node {i}: /metrics answered {r:?}");
    metric_in(&r.body, sample)
        .unwrap_or_else(|| panic!("node {i}: no sample {sample} in /metrics:\n{}", r.body))
}

/// A sample's value in a metrics text.
pub fn metric_in(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(sample)?;
        let rest = rest.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `meshd --state-dir S ctl ARGS...` inside node `i`'s namespace: (success, stdout, stderr).
pub fn ctl(m: &Mesh, i: usize, args: &[&str]) -> (bool, String, String) {
    let out = m
        .cmd(i, MESHD)
        .arg("--state-dir")
        .arg(m.state_dir(i))
        .arg("ctl")
        .args(args)
        .output()
        .expect("run meshd ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Like [`ctl`], which must succeed; returns stdout.
pub fn ctl_ok(m: &Mesh, i: usize, args: &[&str]) -> String {
    let (ok, out, err) = ctl(m, i, args);
    assert!(
        ok,
        "node {i}: meshd ctl {args:?} failed:\nstdout: {out}\nstderr: {err}"
    );
    out
}

/// Writes a config file for node `i` (into the mesh's scratch dir) and returns its path.
pub fn write_config(m: &Mesh, i: usize, text: &str) -> PathBuf {
    let p = m.dir.join(format!("node{i}.toml"));
    fs::write(&p, text).expect("write config");
    p
}

/// A TOML list of peer specs.
pub fn toml_peers(peers: &[String]) -> String {
    let items: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    format!("peers = [{}]\n", items.join(", "))
}

/// Opens node `i`'s log (the harness's log file, so failure dumps include it) for appending.
fn node_log(m: &Mesh, i: usize, what: &str) -> fs::File {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(m.log_path(i))
        .expect("open node log");
    let _ = writeln!(f, "===== test: {what} node {i} at {:.3} =====", unix_now());
    f
}

/// Starts meshd in node `i`'s namespace with `--config CONFIG` (plus the harness's usual
/// state dir, listen port, TUN name and admin address) and waits for its TUN.
pub fn start_with_config(m: &Mesh, i: usize, config: &Path) -> Proc {
    let mut c = m.cmd(i, MESHD);
    c.arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(m.state_dir(i))
        .args([
            "--listen",
            &format!("[::]:{PORT}"),
            "--tun",
            TUN,
            "--admin",
            "127.0.0.1:7401",
        ]);
    spawn_node(m, i, c, TUN)
}

/// Spawns a prepared meshd command for node `i` (output into its log) and waits until the
/// TUN `tun` carries node `i`'s address.
pub fn spawn_node(m: &Mesh, i: usize, mut c: Command, tun: &str) -> Proc {
    let log = node_log(m, i, "start");
    let child = crate::common::spawn_logged(&mut c, log);
    let mut p = Proc {
        name: format!("node{i}"),
        child,
        log: m.log_path(i),
        dump_on_panic: false,
    };
    crate::common::wait_for_tun(m.ns(i), &m.addr(i), i, &mut p, tun, Duration::from_secs(10));
    p
}

/// Does device `dev` exist in node `i`'s namespace?
pub fn dev_exists(m: &Mesh, i: usize, dev: &str) -> bool {
    Command::new("ip")
        .args(["-n", m.ns(i), "link", "show", "dev", dev])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A `ping -6 -D -i 0.05` flow from node `from` to `addr`, in the background.
pub fn ping_flow(m: &Mesh, from: usize, addr: &str, name: &str) -> Proc {
    m.spawn(
        from,
        name,
        "ping",
        &["-6", "-n", "-D", "-i0.05", "-W1", addr],
    )
}

/// Stops a ping flow and returns its replies as (unix time, seq).
pub fn stop_flow(mut p: Proc) -> Vec<(f64, u64)> {
    p.signal("INT");
    p.wait_timeout(Duration::from_secs(3));
    crate::common::parse_ping_replies(&p.log_text())
}

/// `count` pings at 50 ms from `from` to `addr`: how many were answered.
pub fn ping_count(m: &Mesh, from: usize, addr: &str, count: usize) -> usize {
    let out = m
        .cmd(from, "ping")
        .args(["-6", "-n", "-i0.05", "-W1", "-c", &count.to_string(), addr])
        .output()
        .expect("ping");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("bytes from"))
        .count()
}
