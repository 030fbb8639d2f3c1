//! The collector's graph: interned peers (workloads and virtual nodes) and the directed edges between
//! them, each with its windowed stats and Prometheus totals, within the node and edge limits. Span
//! pairing ([`crate::spans`]) and metric merging ([`crate::metrics`]) write it; views
//! ([`crate::views`]), `/metrics` ([`crate::prom`]) and the store read it. It knows nothing of OTLP.

use std::sync::Arc;

use hashbrown::HashMap;
use meshlens_model::Peer;

use crate::counters::Counters;
use crate::window::{Obs, Rings};

/// Prometheus servicegraph histogram buckets, seconds (the OTel Collector connector's defaults).
pub const PROM_BUCKETS: [f64; 16] =
    [0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0, 5.0, 10.0, 15.0];

/// A cumulative Prometheus histogram.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PromHist {
    /// Non-cumulative counts per bucket of [`PROM_BUCKETS`], plus the `+Inf` bucket.
    pub buckets: Vec<u64>,
    /// Sum of observations, seconds.
    pub sum: f64,
    /// Observations.
    pub count: u64,
    /// Per bucket, the last request with a trace id that fell in it (OpenMetrics exemplars). Not
    /// stored: a restart starts without.
    #[serde(skip)]
    pub exemplars: Vec<Option<Exemplar>>,
}

/// A request behind a histogram bucket: its trace, its value and when it arrived.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exemplar {
    /// The trace id.
    pub trace_id: [u8; 16],
    /// The observed value, seconds.
    pub secs: f64,
    /// Arrival, Unix seconds.
    pub at: f64,
}

impl PromHist {
    /// Keeps `trace_id` as the exemplar of the bucket `secs` falls in.
    pub fn exemplar(&mut self, secs: f64, trace_id: [u8; 16], at: f64) {
        if self.exemplars.len() != PROM_BUCKETS.len() + 1 {
            self.exemplars = vec![None; PROM_BUCKETS.len() + 1];
        }
        let i = PROM_BUCKETS.iter().position(|&b| secs <= b).unwrap_or(PROM_BUCKETS.len());
        self.exemplars[i] = Some(Exemplar { trace_id, secs, at });
    }

    /// Records `n` observations of `secs`.
    pub fn record(&mut self, secs: f64, n: u64) {
        if self.buckets.len() != PROM_BUCKETS.len() + 1 {
            self.buckets = vec![0; PROM_BUCKETS.len() + 1];
        }
        let i = PROM_BUCKETS.iter().position(|&b| secs <= b).unwrap_or(PROM_BUCKETS.len());
        // Saturating, not wrapping: a wrapped counter would read as a reset to Prometheus.
        self.buckets[i] = self.buckets[i].saturating_add(n);
        self.sum += secs * n as f64;
        self.count = self.count.saturating_add(n);
    }
}

/// Totals since the collector's data began, for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    /// Requests.
    pub requests: u64,
    /// Failed requests.
    pub failed: u64,
    /// Server-side latency.
    pub server: PromHist,
    /// Client-side latency.
    pub client: PromHist,
    /// gRPC requests per status code, on edges that carried gRPC.
    #[serde(default)]
    pub grpc: Option<[u64; 17]>,
    /// On messaging edges: the time between a producer span's end and its consumer span's start.
    #[serde(default)]
    pub messaging: PromHist,
}

/// The protocol an edge carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP.
    Http,
    /// gRPC.
    Grpc,
    /// A message queue (PRODUCER/CONSUMER spans).
    Messaging,
    /// A database call.
    Database,
}

impl Protocol {
    /// API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
            Protocol::Messaging => "messaging",
            Protocol::Database => "database",
        }
    }

    /// The servicegraph `connection_type` label.
    pub fn connection_type(self) -> &'static str {
        match self {
            Protocol::Http | Protocol::Grpc => "",
            Protocol::Messaging => "messaging_system",
            Protocol::Database => "database",
        }
    }
}

/// One directed edge between two peers.
#[derive(Clone, Debug)]
pub struct EdgeState {
    /// Caller peer index.
    pub source: u32,
    /// Callee peer index.
    pub target: u32,
    /// What it carries.
    pub protocol: Protocol,
    /// Windowed stats.
    pub rings: Rings,
    /// Totals for `/metrics`.
    pub totals: Totals,
    /// Agent metrics have covered this edge: span-derived counts are not added on top.
    pub metrics_seen: bool,
    /// The callee's agent reports this edge: client-side reports add only what it never saw.
    pub server_metrics_seen: bool,
    /// Second of the last observation (Unix).
    pub last_sec: u64,
    /// Seconds (Unix) touched since the last persist, oldest first; drained by the store.
    pub dirty_from: Option<u64>,
}

impl EdgeState {
    fn new(source: u32, target: u32, protocol: Protocol) -> Self {
        Self {
            source,
            target,
            protocol,
            rings: Rings::default(),
            totals: Totals::default(),
            metrics_seen: false,
            server_metrics_seen: false,
            last_sec: 0,
            dirty_from: None,
        }
    }

    fn touch(&mut self, sec: u64) {
        self.last_sec = self.last_sec.max(sec);
        if self.dirty_from.is_none_or(|d| sec < d) {
            self.dirty_from = Some(sec);
        }
    }

    /// Records requests that arrived at second `sec` into the window and the totals.
    pub fn record(&mut self, sec: u64, obs: &Obs) {
        self.rings.record(sec, obs);
        self.totals.requests = self.totals.requests.saturating_add(u64::from(obs.count));
        if obs.failed {
            self.totals.failed = self.totals.failed.saturating_add(u64::from(obs.count));
        }
        if let Some(code) = obs.grpc.filter(|&c| c <= 16) {
            let g = self.totals.grpc.get_or_insert([0; 17]);
            g[usize::from(code)] = g[usize::from(code)].saturating_add(u64::from(obs.count));
        }
        self.touch(sec);
    }

    /// Records server-side latency into the totals.
    pub fn record_server_latency(&mut self, latency_us: u64, n: u64) {
        self.totals.server.record(latency_us as f64 / 1e6, n);
    }

    /// Records client-side latency into the totals.
    pub fn record_client_latency(&mut self, latency_us: u64, n: u64) {
        self.totals.client.record(latency_us as f64 / 1e6, n);
    }

    /// Adds agent-reported retries and timeouts.
    pub fn record_retries(&mut self, sec: u64, retries: u32, timeouts: u32) {
        self.rings.record_retries(sec, retries, timeouts);
        self.touch(sec);
    }
}

/// Why data about a node or an edge was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    /// `max_nodes` reached.
    Nodes,
    /// `max_edges` reached.
    Edges,
    /// `max_series` reached.
    Series,
}

/// Peers and edges, bounded.
pub struct Graph {
    /// Shared counters (node and edge gauges; the writers count what they drop here too).
    pub counters: Arc<Counters>,
    max_nodes: usize,
    max_edges: usize,
    peers: Vec<Peer>,
    peer_index: HashMap<Peer, u32>,
    /// External and database peers by name, looked up with a borrowed `&str` so the span hot path
    /// does not build a `Peer` (a `String`) to find one it already knows.
    named: [HashMap<Box<str>, u32>; 2],
    edges: Vec<EdgeState>,
    edge_index: HashMap<(u32, u32), u32>,
    /// Warm replay of the write-ahead log ([`crate::wal::replay`]): what the writers record goes to
    /// `scratch`, since the store already counts it; only their own state (halves, series) is rebuilt.
    pub warm: bool,
    scratch: EdgeState,
}

impl Graph {
    /// An empty graph of at most `max_nodes` peers and `max_edges` edges.
    pub fn new(counters: Arc<Counters>, max_nodes: usize, max_edges: usize) -> Self {
        Self {
            counters,
            max_nodes,
            max_edges,
            peers: Vec::new(),
            peer_index: HashMap::new(),
            named: [HashMap::new(), HashMap::new()],
            edges: Vec::new(),
            edge_index: HashMap::new(),
            warm: false,
            scratch: EdgeState::new(0, 0, Protocol::Http),
        }
    }

    /// Interns a peer, or refuses when the node limit is reached.
    pub fn peer(&mut self, peer: &Peer) -> Result<u32, LimitHit> {
        if let Some(&i) = self.peer_index.get(peer) {
            return Ok(i);
        }
        if self.peers.len() >= self.max_nodes {
            return Err(LimitHit::Nodes);
        }
        let i = self.peers.len() as u32;
        self.peer_index.insert(peer.clone(), i);
        self.peers.push(peer.clone());
        self.counters.nodes.set(self.peers.len() as u64);
        Ok(i)
    }

    /// Interns an external (`database: false`) or database peer by name.
    /// A name over `MAX_NAME_BYTES` is the unknown peer, counted.
    pub fn named_peer(&mut self, name: &str, database: bool) -> Result<u32, LimitHit> {
        if name.len() > meshlens_model::identity::MAX_NAME_BYTES {
            self.counters.names_too_long.add(1);
            return self.peer(&Peer::Unknown);
        }
        if let Some(&i) = self.named[usize::from(database)].get(name) {
            return Ok(i);
        }
        let peer =
            if database { Peer::Database { name: name.to_owned() } } else { Peer::External { name: name.to_owned() } };
        let i = self.peer(&peer)?;
        self.named[usize::from(database)].insert(name.into(), i);
        Ok(i)
    }

    /// The peer at an index.
    pub fn peer_at(&self, i: u32) -> &Peer {
        &self.peers[i as usize]
    }

    /// The edge between two peers, created on first use.
    pub fn edge_mut(&mut self, source: u32, target: u32, protocol: Protocol) -> Result<&mut EdgeState, LimitHit> {
        if self.warm {
            self.scratch = EdgeState::new(source, target, protocol);
            if let Some(&i) = self.edge_index.get(&(source, target)) {
                let e = &self.edges[i as usize];
                (self.scratch.metrics_seen, self.scratch.server_metrics_seen) = (e.metrics_seen, e.server_metrics_seen);
            }
            return Ok(&mut self.scratch);
        }
        let i = match self.edge_index.get(&(source, target)) {
            Some(&i) => i,
            None => {
                if self.edges.len() >= self.max_edges {
                    return Err(LimitHit::Edges);
                }
                let i = self.edges.len() as u32;
                self.edges.push(EdgeState::new(source, target, protocol));
                self.edge_index.insert((source, target), i);
                self.counters.edges.set(self.edges.len() as u64);
                i
            }
        };
        let e = &mut self.edges[i as usize];
        if protocol == Protocol::Grpc && e.protocol == Protocol::Http {
            e.protocol = Protocol::Grpc;
        }
        Ok(e)
    }

    /// All edges, by index.
    pub fn edges(&self) -> &[EdgeState] {
        &self.edges
    }

    /// All edges, mutable (the store drains dirty marks).
    pub fn edges_mut(&mut self) -> &mut [EdgeState] {
        &mut self.edges
    }

    /// Puts back an edge read from the store.
    pub fn restore_edge(&mut self, source: &Peer, target: &Peer, edge: EdgeState) -> Result<u32, LimitHit> {
        let s = self.peer(source)?;
        let t = self.peer(target)?;
        if self.edges.len() >= self.max_edges {
            return Err(LimitHit::Edges);
        }
        let i = self.edges.len() as u32;
        self.edges.push(EdgeState { source: s, target: t, ..edge });
        self.edge_index.insert((s, t), i);
        self.counters.edges.set(self.edges.len() as u64);
        Ok(i)
    }

    /// Bytes of memory the windowed stats hold (rings and histograms), for the memory benchmark.
    pub fn window_heap_bytes(&self) -> usize {
        self.edges.iter().map(|e| e.rings.fine.heap_bytes() + e.rings.coarse.heap_bytes()).sum()
    }
}
