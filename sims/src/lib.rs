//! `sims`: a discrete-event simulator that runs the real [`router::Node`] state machines, by
//! the thousands, on simulated links with a virtual clock, and the experiments that measure
//! them (convergence, reachability and stretch, failure recovery, churn, mobility, cost).
//!
//! See `docs/sims.md` for the method, the commands and the results.
#![deny(unsafe_code)]

pub mod experiments;
pub mod gml;
pub mod graph;
pub mod ids;
pub mod plot;
pub mod sim;

pub use experiments::{run, Experiment, Kind, Params, Report, Summary, Topology};
pub use graph::Graph;
pub use sim::{Action, Sim, SimConfig};
