//! The admin API served over a real (sans-IO) `Node`, in process: every documented endpoint
//! answers, the OpenAPI document lists exactly what is served, and bad input of every kind
//! gets a 4xx JSON error without changing the node.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

use crypto::Identity;
use meshd_admin_api::client::Client;
use meshd_admin_api::{server, Command, DaemonInfo, Executor};
use rand::SeedableRng;
use router::{Node, NodeConfig};
use tokio::sync::mpsc;

const TOKEN: &str = "test-token";

/// Serves the API over a real Node (no links) and returns its address.
async fn start() -> SocketAddr {
    let (tx, mut rx) = mpsc::channel::<Command>(16);
    let id = Identity::generate(&mut rand::rngs::StdRng::seed_from_u64(1));
    let start = Instant::now();
    tokio::spawn(async move {
        let mut node = Node::new(id, NodeConfig::default(), 1, start);
        let mut ex = Executor::new(DaemonInfo {
            listen: vec!["[::]:7400".parse().unwrap()],
            tun: "meshd0".into(),
            started: start,
        });
        loop {
            let deadline = tokio::time::Instant::from_std(node.poll_timeout());
            tokio::select! {
                Some(cmd) = rx.recv() => ex.execute(&mut node, Instant::now(), cmd),
                _ = tokio::time::sleep_until(deadline) => {}
            }
            node.handle_timeout(Instant::now());
            while node.poll_transmit().is_some() {}
            while let Some(ev) = node.poll_event() {
                ex.on_event(&ev);
            }
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, server::app(tx, TOKEN.into())).await });
    addr
}

async fn call(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<String>,
) -> (u16, serde_json::Value) {
    let c = Client::new(addr, token.into());
    let (m, p) = (method.to_string(), path.to_string());
    let (status, text) =
        tokio::task::spawn_blocking(move || c.request(&m, &p, body.as_deref()).unwrap())
            .await
            .unwrap();
    let v = if path == "/metrics" && status == 200 {
        serde_json::Value::String(text)
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text:?}"))
    };
    (status, v)
}

/// (METHOD, path) pairs in docs/admin-api.yaml, read from its `paths:` block.
fn documented() -> BTreeSet<(String, String)> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/admin-api.yaml"
    ))
    .unwrap();
    let mut out = BTreeSet::new();
    let mut in_paths = false;
    let mut path = String::new();
    for line in doc.lines() {
        if line.starts_with("paths:") {
            in_paths = true;
            continue;
        }
        if in_paths && !line.starts_with(' ') && !line.is_empty() {
            break;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = format!("/{}", p.trim_end_matches(':'));
        } else if let Some(m) = line.strip_prefix("    ").filter(|m| !m.starts_with(' ')) {
            let m = m.trim_end_matches(':');
            if ["get", "post", "delete", "put", "patch"].contains(&m) {
                out.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn openapi_document_matches_the_server() {
    let addr = start().await;
    let doc = documented();
    let served: BTreeSet<(String, String)> = [
        ("GET", "/v1/self"),
        ("GET", "/v1/peers"),
        ("POST", "/v1/peers"),
        ("DELETE", "/v1/peers/{public_key}"),
        ("GET", "/v1/routes"),
        ("GET", "/v1/sessions"),
        ("POST", "/v1/ping"),
        ("POST", "/v1/traceroute"),
        ("GET", "/v1/lookup/{address}"),
        ("GET", "/metrics"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(doc, served, "docs/admin-api.yaml and the server disagree");
    // Every documented route is really served (no 404 "no such endpoint", no 405).
    for (m, p) in &doc {
        let p = p
            .replace("{public_key}", &"ab".repeat(32))
            .replace("{address}", "fc00::1");
        let body = (m == "POST").then(|| "{}".to_string());
        let (status, v) = call(addr, TOKEN, m, &p, body).await;
        assert!(
            status != 405 && !(status == 404 && v["error"] == "no such endpoint"),
            "{m} {p}: {status} {v}"
        );
        assert!(status < 500, "{m} {p}: {status}");
    }
}

#[tokio::test]
async fn endpoints_answer_with_their_shapes() {
    let addr = start().await;
    let (s, me) = call(addr, TOKEN, "GET", "/v1/self", None).await;
    assert_eq!(s, 200);
    assert!(me["address"].as_str().unwrap().starts_with("fc"));
    assert_eq!(me["public_key"].as_str().unwrap().len(), 64);
    assert_eq!(me["tun"], "meshd0");
    assert_eq!(
        call(addr, TOKEN, "GET", "/v1/peers", None).await,
        (200, serde_json::json!([]))
    );
    assert_eq!(
        call(addr, TOKEN, "GET", "/v1/routes", None).await,
        (200, serde_json::json!([]))
    );
    assert_eq!(
        call(addr, TOKEN, "GET", "/v1/sessions", None).await,
        (200, serde_json::json!([]))
    );
    // With no peers nothing can be found: a clear not-found, not an error of the server.
    let (s, v) = call(addr, TOKEN, "GET", "/v1/lookup/fc00::1", None).await;
    assert_eq!(s, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not found"));
    let (s, _) = call(
        addr,
        TOKEN,
        "POST",
        "/v1/ping",
        Some(r#"{"address":"fc00::1"}"#.into()),
    )
    .await;
    assert_eq!(s, 404);
    // Adding a peer at run time shows up as configured; the metrics count it.
    let (s, v) = call(
        addr,
        TOKEN,
        "POST",
        "/v1/peers",
        Some(r#"{"endpoint":"127.0.0.1:9"}"#.into()),
    )
    .await;
    assert_eq!((s, v["result"].as_str()), (201, Some("added")));
    let (s, m) = call(addr, TOKEN, "GET", "/metrics", None).await;
    assert_eq!(s, 200);
    let text = m.as_str().unwrap();
    for name in [
        "meshd_udp_packets_total",
        "meshd_drops_total{reason=\"decrypt\"}",
        "meshd_lookups_total",
        "meshd_routing_table_entries",
        "meshd_sessions",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
}

#[tokio::test]
async fn bad_input_gets_a_json_4xx_and_changes_nothing() {
    let addr = start().await;
    let (_, before) = call(addr, TOKEN, "GET", "/v1/peers", None).await;
    let not_mesh_key = format!("/v1/peers/{}", "ab".repeat(32));
    let huge = format!(r#"{{"endpoint":"{}"}}"#, "x".repeat(100_000));
    let cases: Vec<(&str, &str, &str, Option<String>, u16)> = vec![
        ("no token", "GET", "/v1/self", None, 401),
        ("unknown path", "GET", "/v2/nothing", None, 404),
        ("wrong method", "PUT", "/v1/self", None, 405),
        ("wrong method on an action", "GET", "/v1/ping", None, 405),
        (
            "malformed JSON",
            "POST",
            "/v1/peers",
            Some("{\"endpoint\":".into()),
            400,
        ),
        (
            "wrong type",
            "POST",
            "/v1/peers",
            Some(r#"{"endpoint": 7400}"#.into()),
            400,
        ),
        (
            "unknown field",
            "POST",
            "/v1/peers",
            Some(r#"{"endpoint":"1.2.3.4:5","x":1}"#.into()),
            400,
        ),
        (
            "no port",
            "POST",
            "/v1/peers",
            Some(r#"{"endpoint":"1.2.3.4"}"#.into()),
            400,
        ),
        (
            "bad key",
            "POST",
            "/v1/peers",
            Some(r#"{"endpoint":"1.2.3.4:5","public_key":"zz"}"#.into()),
            400,
        ),
        ("huge body", "POST", "/v1/peers", Some(huge), 413),
        ("empty body", "POST", "/v1/ping", Some(String::new()), 400),
        (
            "not an address",
            "POST",
            "/v1/ping",
            Some(r#"{"address":"nope"}"#.into()),
            400,
        ),
        (
            "not a mesh address",
            "POST",
            "/v1/traceroute",
            Some(r#"{"address":"2001:db8::1"}"#.into()),
            400,
        ),
        ("bad lookup", "GET", "/v1/lookup/1.2.3.4", None, 400),
        ("bad key to remove", "DELETE", "/v1/peers/xyz", None, 400),
        ("not a mesh key", "DELETE", &not_mesh_key, None, 400),
        (
            "unknown peer",
            "DELETE",
            "/v1/peers/71d0c74b105f51884f5849366f8ba7968141ffc0846de4f3a3682ae5d0fe833e",
            None,
            404,
        ),
    ];
    for (what, m, p, body, want) in cases {
        let token = if what == "no token" { "wrong" } else { TOKEN };
        let (s, v) = call(addr, token, m, p, body).await;
        assert_eq!(s, want, "{what}: {v}");
        assert!(v["error"].is_string(), "{what}: {v}");
    }
    let (_, after) = call(addr, TOKEN, "GET", "/v1/peers", None).await;
    assert_eq!(before, after);
}
