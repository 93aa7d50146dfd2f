//! `meshd ctl`: the admin API from the command line. Finds the API address and token from
//! the same `--config`/`--state-dir` the node uses; prints tables, or JSON with `--json`.

use std::net::SocketAddr;

use admin_api::client::Client;
use admin_api::types;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;

/// `meshd ctl` arguments.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Admin API address (default: from the config, else 127.0.0.1:7401).
    #[arg(long, global = true)]
    admin: Option<SocketAddr>,
    #[command(subcommand)]
    cmd: CtlCmd,
}

#[derive(Subcommand, Debug)]
enum CtlCmd {
    /// This node: address, key, uptime, endpoints.
    #[command(name = "self")]
    SelfInfo,
    /// Links to peers.
    Peers,
    /// The routing table.
    Routes,
    /// End-to-end sessions.
    Sessions,
    /// Ping a node through the mesh (router-level).
    Ping {
        /// fc00::/8 address.
        address: String,
    },
    /// Each hop on the path to a node.
    Traceroute {
        /// fc00::/8 address.
        address: String,
    },
    /// Look a node up in the DHT.
    Lookup {
        /// fc00::/8 address.
        address: String,
    },
    /// Add or remove a peer at run time.
    Peer {
        #[command(subcommand)]
        cmd: PeerCmd,
    },
}

#[derive(Subcommand, Debug)]
enum PeerCmd {
    /// Dial a peer: HOST:PORT or PUBKEY@HOST:PORT.
    Add {
        /// The peer.
        peer: String,
    },
    /// Drop a peer by its public key.
    Remove {
        /// 64 hex digits.
        key: String,
    },
}

fn get<T: DeserializeOwned>(
    c: &Client,
    json: bool,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<Option<T>> {
    let (status, text) = c.request(method, path, body.as_deref())?;
    if !(200..300).contains(&status) {
        let msg = serde_json::from_str::<types::ErrorBody>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        bail!("{msg} (HTTP {status})");
    }
    if json {
        println!("{}", text.trim());
        return Ok(None);
    }
    Ok(Some(
        serde_json::from_str(&text).context("unexpected answer from the admin API")?,
    ))
}

fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<width$}", c, width = w[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

/// Runs a ctl command against the API at `admin` with `token`.
pub fn run(args: CtlArgs, admin: SocketAddr, token: String) -> Result<()> {
    let c = Client::new(args.admin.unwrap_or(admin), token);
    let json = args.json;
    match args.cmd {
        CtlCmd::SelfInfo => {
            if let Some(s) = get::<types::SelfInfo>(&c, json, "GET", "/v1/self", None)? {
                println!("address      {}", s.address);
                println!("public key   {}", s.public_key);
                println!("version      {}", s.version);
                println!("uptime       {:.0} s", s.uptime_s);
                println!("listen       {}", s.listen.join(", "));
                println!(
                    "seen as      {}",
                    if s.external_endpoints.is_empty() {
                        "-".into()
                    } else {
                        s.external_endpoints.join(", ")
                    }
                );
                println!("tun          {} (mtu {})", s.tun, s.mtu);
                for t in &s.trees {
                    println!(
                        "tree {}       root {} depth {} via {}",
                        t.tree,
                        t.root,
                        t.depth,
                        t.parent.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        CtlCmd::Peers => {
            if let Some(ps) = get::<Vec<types::Peer>>(&c, json, "GET", "/v1/peers", None)? {
                let rows = ps
                    .into_iter()
                    .map(|p| {
                        vec![
                            p.address,
                            p.endpoint,
                            p.state,
                            opt_ms(p.rtt_ms),
                            p.rx_bytes.to_string(),
                            p.tx_bytes.to_string(),
                            format!("{:.1}", p.last_seen_s),
                            p.cipher.unwrap_or_else(|| "-".into()),
                            p.public_key,
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ADDRESS",
                        "ENDPOINT",
                        "STATE",
                        "RTT_MS",
                        "RX_BYTES",
                        "TX_BYTES",
                        "SEEN_S",
                        "CIPHER",
                        "PUBLIC_KEY",
                    ],
                    rows,
                );
            }
        }
        CtlCmd::Routes => {
            if let Some(rs) = get::<Vec<types::Route>>(&c, json, "GET", "/v1/routes", None)? {
                let rows = rs
                    .into_iter()
                    .map(|r| {
                        vec![
                            r.address,
                            r.path,
                            r.hops.to_string(),
                            opt_ms(r.rtt_ms),
                            r.paths.to_string(),
                            format!("{:.1}", r.last_seen_s),
                        ]
                    })
                    .collect();
                table(
                    &["ADDRESS", "PATH", "HOPS", "RTT_MS", "PATHS", "SEEN_S"],
                    rows,
                );
            }
        }
        CtlCmd::Sessions => {
            if let Some(ss) = get::<Vec<types::Session>>(&c, json, "GET", "/v1/sessions", None)? {
                let rows = ss
                    .into_iter()
                    .map(|s| {
                        vec![
                            s.address,
                            s.state,
                            s.path.unwrap_or_else(|| "-".into()),
                            s.rx_packets.to_string(),
                            s.tx_packets.to_string(),
                            s.queued.to_string(),
                        ]
                    })
                    .collect();
                table(
                    &["ADDRESS", "STATE", "PATH", "RX_PKTS", "TX_PKTS", "QUEUED"],
                    rows,
                );
            }
        }
        CtlCmd::Ping { address } => {
            let body = serde_json::to_string(&types::Target { address })?;
            if let Some(a) = get::<types::PathAnswer>(&c, json, "POST", "/v1/ping", Some(body))? {
                println!(
                    "{} answered in {} ms over {} hops (path {})",
                    a.address,
                    opt_ms(a.rtt_ms),
                    a.hops,
                    a.path
                );
            }
        }
        CtlCmd::Traceroute { address } => {
            let body = serde_json::to_string(&types::Target { address })?;
            if let Some(t) =
                get::<types::Traceroute>(&c, json, "POST", "/v1/traceroute", Some(body))?
            {
                println!("traceroute to {} (path {})", t.address, t.path);
                for h in t.hops {
                    println!(
                        "{:>3}  {}  {} ms",
                        h.hop,
                        h.address.unwrap_or_else(|| "*".into()),
                        opt_ms(h.rtt_ms)
                    );
                }
                if !t.reached {
                    println!("destination not reached");
                }
            }
        }
        CtlCmd::Lookup { address } => {
            if let Some(a) =
                get::<types::PathAnswer>(&c, json, "GET", &format!("/v1/lookup/{address}"), None)?
            {
                println!(
                    "{} key {} path {} ({} hops)",
                    a.address, a.public_key, a.path, a.hops
                );
            }
        }
        CtlCmd::Peer {
            cmd: PeerCmd::Add { peer },
        } => {
            let spec = crate::config::PeerSpec::parse(&peer)?;
            let host = if spec.host.contains(':') {
                format!("[{}]", spec.host)
            } else {
                spec.host.clone()
            };
            let body = serde_json::to_string(&types::AddPeer {
                endpoint: format!("{host}:{}", spec.port),
                public_key: spec.key.map(|k| k.to_hex()),
            })?;
            if let Some(r) = get::<types::PeerChange>(&c, json, "POST", "/v1/peers", Some(body))? {
                println!("{} {}", r.result, r.endpoint.unwrap_or_default());
            }
        }
        CtlCmd::Peer {
            cmd: PeerCmd::Remove { key },
        } => {
            if let Some(r) = get::<types::PeerChange>(
                &c,
                json,
                "DELETE",
                &format!("/v1/peers/{}", key.trim()),
                None,
            )? {
                println!("{}", r.result);
            }
        }
    }
    Ok(())
}
