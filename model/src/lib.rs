//! Shared meshlens types.
//!
//! This crate owns the shapes that several parts of meshlens agree on: workload identity and node ids
//! ([`identity`]), the stats of a node or an edge ([`stats`]), graph snapshots, revisions and diffs
//! ([`graph`]), the bodies of the HTTP API ([`api`]), the mergeable latency histogram ([`hist`]), the
//! traffic policy schema the agent and the simulator share ([`policy`]) and the mechanisms both run
//! ([`policy_core`]), Istio's VirtualService and DestinationRule read as that schema ([`istio`]), metric and attribute names
//! ([`names`]), a lock-free [`counter`], and small parsers for durations and RFC 3339 times ([`time`]), and the shapes of a live tap ([`tap`]). It does no IO and has
//! no async runtime, so the console and the web app (wasm32) can use it without pulling in the
//! collector.

pub mod api;
pub mod counter;
pub mod escape;
pub mod find;
pub mod graph;
pub mod hist;
pub mod identity;
pub mod idle;
pub mod istio;
pub mod layout;
pub mod mutate;
pub mod names;
pub mod policy;
pub mod policy_core;
pub mod rng;
pub mod stats;
#[cfg(any(test, feature = "synth"))]
pub mod synth;
pub mod tap;
pub mod time;
pub mod viewstate;

pub use graph::{Edge, GraphSnapshot, Node, NodeKind, View};
pub use identity::{Peer, Workload};
pub use stats::{Codes, Health, HealthThresholds, LatencyMs, Stats};
