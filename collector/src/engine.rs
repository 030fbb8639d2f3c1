//! The collector's state behind one lock: the [`Graph`] (peers, edges, their stats) and the two
//! writers' own state beside it — the span pairing store ([`crate::spans::SpanStore`]) and the
//! cumulative metric series ([`crate::metrics::SeriesStore`]). Each writer gets the graph and its own
//! state, never the engine, so neither depends on the other or on this module. One pipeline thread
//! ([`crate::pipeline`]) writes; API readers and the publisher take the same lock briefly.

use std::sync::Arc;

use meshlens_model::Peer;
use meshlens_model::stats::HealthThresholds;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::counters::Counters;
use crate::graph::{EdgeState, Graph, LimitHit};
use crate::metrics::SeriesStore;
use crate::otlp::lite::TraceRequest;
use crate::spans::SpanStore;
use crate::traces::TraceStore;

/// Limits and knobs of the graph state.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most nodes (workloads and virtual peers) tracked; beyond it, data about new nodes is dropped
    /// and counted.
    pub max_nodes: usize,
    /// Most edges tracked.
    pub max_edges: usize,
    /// Most span halves waiting for their other half.
    pub pairing_capacity: usize,
    /// How long a span half waits for its other half, seconds.
    pub pairing_ttl_secs: f64,
    /// Most cumulative metric series remembered for delta conversion.
    pub max_series: usize,
    /// Nodes and edges with no traffic for this long are evicted (seconds; at least the window and
    /// the pairing time-to-live).
    pub idle_retention_secs: u64,
    /// Most spans kept whole in the trace store (0: none).
    pub trace_store_spans: usize,
    /// Health thresholds.
    pub health: HealthThresholds,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_nodes: 10_000,
            max_edges: 50_000,
            pairing_capacity: 1_000_000,
            pairing_ttl_secs: 5.0,
            max_series: 200_000,
            idle_retention_secs: 3600,
            trace_store_spans: 200_000,
            health: HealthThresholds::default(),
        }
    }
}

/// The collector's state.
pub struct Engine {
    /// The limits and timings it was started with.
    pub config: EngineConfig,
    /// Shared counters.
    pub counters: Arc<Counters>,
    /// Peers and edges.
    pub graph: Graph,
    /// Span halves waiting for their other half.
    pub pairing: SpanStore,
    /// Cumulative metric series state.
    pub series: SeriesStore,
    /// Whole traces of the recent past.
    pub traces: TraceStore,
    /// Unix seconds since when this state holds data (collector start, or restored data).
    pub data_since: f64,
    /// The last write-ahead log batch applied (the pipeline moves it; each tick stores it).
    pub applied: crate::wal::Checkpoint,
}

impl Engine {
    /// An empty state.
    pub fn new(config: EngineConfig, counters: Arc<Counters>, now: f64) -> Self {
        Self {
            graph: Graph::new(counters.clone(), config.max_nodes, config.max_edges),
            pairing: SpanStore::new(config.pairing_capacity, config.pairing_ttl_secs),
            series: SeriesStore::new(config.max_series, (now * 1e9) as u64),
            traces: TraceStore::new(config.trace_store_spans),
            config,
            counters,
            data_since: now,
            applied: crate::wal::Checkpoint::default(),
        }
    }

    /// Turns an export of spans into edge observations at time `now` (Unix seconds).
    pub fn ingest_lean_traces(&mut self, req: &TraceRequest, now: f64) {
        self.graph.now_sec = now as u64;
        self.pairing.ingest(&mut self.graph, Some(&mut self.traces), req, now);
    }

    /// The same, for an export decoded into the full OTLP types (OTLP/JSON, tests).
    pub fn ingest_traces(&mut self, req: &ExportTraceServiceRequest, now: f64) {
        self.ingest_lean_traces(&TraceRequest::from_full(req), now);
    }

    /// Merges an export of agent metrics at time `now` (Unix seconds).
    pub fn ingest_metrics(&mut self, req: &ExportMetricsServiceRequest, now: f64) {
        self.graph.now_sec = now as u64;
        self.series.ingest(&mut self.graph, req, now);
    }

    /// Expires span halves that waited too long.
    pub fn expire(&mut self, now: f64) {
        self.graph.now_sec = now as u64;
        self.pairing.expire(&mut self.graph, now);
    }

    /// Evicts nodes and edges idle for the retention; returns how edge indices moved, for the store
    /// (see [`crate::graph::Evicted`]).
    pub fn evict_idle(&mut self, now: f64) -> Vec<(u32, Option<u32>)> {
        let cutoff = (now as u64).saturating_sub(self.config.idle_retention_secs);
        let ev = self.graph.evict_idle(cutoff);
        let series = self.series.evict_idle(cutoff);
        self.graph.routes.evict_idle(cutoff);
        self.counters.series_evicted.add(series as u64);
        self.counters.series.set(self.series.len() as u64);
        if !ev.nodes_removed.is_empty() {
            self.pairing.remap_nodes(&ev);
        }
        ev.edge_moves
    }

    /// The peer at an index.
    pub fn peer_at(&self, i: u32) -> &Peer {
        self.graph.peer_at(i)
    }

    /// All edges, by index.
    pub fn edges(&self) -> &[EdgeState] {
        self.graph.edges()
    }

    /// All edges, mutable (the store drains dirty marks).
    pub fn edges_mut(&mut self) -> &mut [EdgeState] {
        self.graph.edges_mut()
    }

    /// Puts back an edge read from the store.
    pub fn restore_edge(&mut self, source: &Peer, target: &Peer, edge: EdgeState) -> Result<u32, LimitHit> {
        self.graph.restore_edge(source, target, edge)
    }

    /// Bytes of memory the windowed stats hold, for the memory benchmark.
    pub fn window_heap_bytes(&self) -> usize {
        self.graph.window_heap_bytes()
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
