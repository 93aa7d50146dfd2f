//! meshd's admin interface: JSON over HTTP/1.1 on loopback (or a unix socket), with a bearer
//! token. [`server::app`] serves it over a channel of [`Command`]s that the daemon's loop
//! runs against its node with an [`Executor`]; [`client::Client`] is what `meshd ctl` uses;
//! [`metrics`] renders `/metrics`. The request and answer shapes are in [`types`] and in
//! `docs/admin-api.yaml`.
#![deny(unsafe_code)]

pub mod client;
pub mod metrics;
mod node_handle;
pub mod server;
pub mod types;

pub use node_handle::{Command, DaemonInfo, Executor};
