//! The HTTP/1.1 JSON server (axum). Every request needs `Authorization: Bearer TOKEN`;
//! every error is a JSON [`ErrorBody`] with a 4xx status (bad input never causes a 5xx).

use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use crypto::{Address, PublicKey};
use router::Route;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::node_handle::Command;
use crate::types::{self, ErrorBody};

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;
/// How long a ping, lookup or traceroute may wait for the mesh.
const MESH_WAIT: Duration = Duration::from_secs(10);

/// An error answer.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}
fn not_found(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, msg.into())
}

#[derive(Clone)]
struct AppState {
    tx: mpsc::Sender<Command>,
    token: Arc<String>,
    metrics: Arc<Metrics>,
}

impl AppState {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "node is shutting down".into(),
            )
        })?;
        match tokio::time::timeout(MESH_WAIT, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "node is shutting down".into(),
            )),
            Err(_) => Err(not_found("no answer from the mesh in time")),
        }
    }
}

/// Builds the API over a command channel to the node.
pub fn app(tx: mpsc::Sender<Command>, token: String) -> Router {
    let state = AppState {
        tx,
        token: Arc::new(token),
        metrics: Arc::new(Metrics::new()),
    };
    Router::new()
        .route("/v1/self", get(self_info))
        .route("/v1/peers", get(peers).post(add_peer))
        .route("/v1/peers/{public_key}", delete(remove_peer))
        .route("/v1/routes", get(routes))
        .route("/v1/sessions", get(sessions))
        .route("/v1/ping", post(ping))
        .route("/v1/traceroute", post(traceroute))
        .route("/v1/lookup/{address}", get(lookup))
        .route("/metrics", get(metrics))
        .fallback(|| async { not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed here".into(),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

async fn auth(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), s.token.as_bytes()));
    if !ok {
        let mut r = ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        )
        .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn json_body<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {MAX_BODY} bytes"),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

fn parse_address(s: &str) -> Result<Address, ApiError> {
    let ip: Ipv6Addr = s
        .trim()
        .parse()
        .map_err(|_| bad(format!("{s:?} is not an IPv6 address")))?;
    if ip.octets()[0] != 0xfc {
        return Err(bad(format!("{ip} is not a mesh address (fc00::/8)")));
    }
    Ok(Address::from(ip))
}

fn parse_key(s: &str) -> Result<PublicKey, ApiError> {
    let k: PublicKey = s
        .parse()
        .map_err(|_| bad("a public key is 64 hex digits"))?;
    k.validate().map_err(|e| bad(format!("public key: {e}")))?;
    Ok(k)
}

async fn self_info(State(s): State<AppState>) -> Result<Json<types::SelfInfo>, ApiError> {
    Ok(Json(s.ask(Command::SelfInfo).await?))
}

async fn peers(State(s): State<AppState>) -> Result<Json<Vec<types::Peer>>, ApiError> {
    Ok(Json(s.ask(Command::Peers).await?))
}

async fn add_peer(
    State(s): State<AppState>,
    body: Body,
) -> Result<(StatusCode, Json<types::PeerChange>), ApiError> {
    let req: types::AddPeer = json_body(body).await?;
    let key = req.public_key.as_deref().map(parse_key).transpose()?;
    let ep = req.endpoint.trim();
    if !ep.contains(':') || ep.len() > 300 {
        return Err(bad("endpoint must be HOST:PORT"));
    }
    let endpoint =
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(ep)).await {
            Ok(Ok(mut a)) => a.next().ok_or_else(|| bad(format!("{ep}: no address")))?,
            Ok(Err(e)) => return Err(bad(format!("{ep}: {e}"))),
            Err(_) => return Err(bad(format!("{ep}: name resolution timed out"))),
        };
    if endpoint.port() == 0 {
        return Err(bad("port 0 is not a peer port"));
    }
    s.ask(|reply| Command::AddPeer {
        endpoint,
        key,
        reply,
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(types::PeerChange {
            result: "added".into(),
            endpoint: Some(endpoint.to_string()),
        }),
    ))
}

async fn remove_peer(
    State(s): State<AppState>,
    key: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<types::PeerChange>, ApiError> {
    let Path(key) = key.map_err(|e| bad(e.body_text()))?;
    let key = parse_key(&key)?;
    if s.ask(|reply| Command::RemovePeer { key, reply }).await? {
        Ok(Json(types::PeerChange {
            result: "removed".into(),
            endpoint: None,
        }))
    } else {
        Err(not_found("no such peer"))
    }
}

async fn routes(State(s): State<AppState>) -> Result<Json<Vec<types::Route>>, ApiError> {
    Ok(Json(s.ask(Command::Routes).await?))
}

async fn sessions(State(s): State<AppState>) -> Result<Json<Vec<types::Session>>, ApiError> {
    Ok(Json(s.ask(Command::Sessions).await?))
}

async fn ping(State(s): State<AppState>, body: Body) -> Result<Json<types::PathAnswer>, ApiError> {
    let t: types::Target = json_body(body).await?;
    let addr = parse_address(&t.address)?;
    match s.ask(|reply| Command::Ping { addr, reply }).await? {
        Some(a) => Ok(Json(a)),
        None => Err(not_found(format!("{} did not answer", addr))),
    }
}

async fn lookup(
    State(s): State<AppState>,
    a: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<types::PathAnswer>, ApiError> {
    let Path(a) = a.map_err(|e| bad(e.body_text()))?;
    let addr = parse_address(&a)?;
    match s.ask(|reply| Command::Lookup { addr, reply }).await? {
        Some(a) => Ok(Json(a)),
        None => Err(not_found(format!("{addr} not found in the mesh"))),
    }
}

async fn traceroute(
    State(s): State<AppState>,
    body: Body,
) -> Result<Json<types::Traceroute>, ApiError> {
    let t: types::Target = json_body(body).await?;
    let addr = parse_address(&t.address)?;
    let Some(found) = s.ask(|reply| Command::Lookup { addr, reply }).await? else {
        return Err(not_found(format!("{addr} not found in the mesh")));
    };
    let path: Route = found.path.parse().map_err(|_| bad("bad path"))?;
    let n = path.hops();
    let mut waits = Vec::new();
    for i in 1..=n {
        let (tx, rx) = oneshot::channel();
        s.tx.send(Command::PingPath {
            path: path.prefix(i),
            reply: tx,
        })
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "node is shutting down".into(),
            )
        })?;
        waits.push(rx);
    }
    let mut hops = Vec::new();
    for (i, rx) in waits.into_iter().enumerate() {
        let r = tokio::time::timeout(MESH_WAIT, rx)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        hops.push(types::Hop {
            hop: i as u32 + 1,
            address: r.map(|(k, _)| k.address().to_string()),
            public_key: r.map(|(k, _)| k.to_hex()),
            rtt_ms: r.map(|(_, d)| d.as_secs_f64() * 1000.0),
        });
    }
    let reached = hops.last().and_then(|h| h.address.as_deref()) == Some(addr.to_string().as_str());
    Ok(Json(types::Traceroute {
        address: addr.to_string(),
        path: found.path,
        hops,
        reached,
    }))
}

async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let snap = s.ask(Command::Metrics).await?;
    let text = s.metrics.render(&snap);
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
