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
    /// Requests carried over mutual TLS.
    #[serde(default)]
    pub mtls: u64,
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
    /// The traces of its newest failed and slowest recent requests, once one came with a trace id.
    pub exemplars: Option<Box<crate::exemplars::Exemplars>>,
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
            exemplars: None,
        }
    }

    /// Offers a request with a trace id as an exemplar of this edge ([`crate::exemplars`]).
    pub fn offer_exemplar(&mut self, sample: crate::exemplars::Sample) {
        self.exemplars.get_or_insert_default().offer(sample);
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
        if obs.mtls {
            self.totals.mtls = self.totals.mtls.saturating_add(u64::from(obs.count));
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

    /// Records `n` latencies of requests counted apart (see [`crate::window::Rings::record_latency`]).
    pub fn record_latency(&mut self, sec: u64, latency_us: u64, n: u32) {
        self.rings.record_latency(sec, latency_us, n);
        self.touch(sec);
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

/// What an eviction pass changed.
#[derive(Debug, Default)]
pub struct Evicted {
    /// For the store, in the order done: the edge at `.0` is gone, and the one that was at `.1`
    /// (then the last) now sits there.
    pub edge_moves: Vec<(u32, Option<u32>)>,
    /// Peer indices that changed: old → new.
    pub node_moves: HashMap<u32, u32>,
    /// Peers removed (their old indices, as removed).
    pub nodes_removed: Vec<u32>,
}

impl Evicted {
    /// The index a surviving peer has now.
    pub fn node(&self, old: u32) -> u32 {
        self.node_moves.get(&old).copied().unwrap_or(old)
    }

    /// Whether the pass changed anything.
    pub fn is_empty(&self) -> bool {
        self.edge_moves.is_empty() && self.nodes_removed.is_empty()
    }
}

/// Peers and edges, bounded.
pub struct Graph {
    /// Shared counters (node and edge gauges; the writers count what they drop here too).
    pub counters: Arc<Counters>,
    max_nodes: usize,
    max_edges: usize,
    peers: Vec<Peer>,
    /// Per peer, the last second (Unix) it was looked up: a writer interns both ends of whatever it
    /// records, and a span half's nodes before the half, so an idle peer has no half waiting.
    peer_seen: Vec<u64>,
    /// The second of the newest lookup, so the hot path stamps without reading a clock.
    pub now_sec: u64,
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
    /// Per-route stats of the services callers' agents route ([`crate::routes`]).
    pub routes: crate::routes::RouteTable,
}

impl Graph {
    /// An empty graph of at most `max_nodes` peers and `max_edges` edges.
    pub fn new(counters: Arc<Counters>, max_nodes: usize, max_edges: usize) -> Self {
        Self {
            counters,
            max_nodes,
            max_edges,
            peers: Vec::new(),
            peer_seen: Vec::new(),
            now_sec: 0,
            peer_index: HashMap::new(),
            named: [HashMap::new(), HashMap::new()],
            edges: Vec::new(),
            edge_index: HashMap::new(),
            warm: false,
            scratch: EdgeState::new(0, 0, Protocol::Http),
            routes: crate::routes::RouteTable::default(),
        }
    }

    /// Interns a peer, or refuses when the node limit is reached.
    pub fn peer(&mut self, peer: &Peer) -> Result<u32, LimitHit> {
        if let Some(&i) = self.peer_index.get(peer) {
            self.peer_seen[i as usize] = self.now_sec;
            return Ok(i);
        }
        if self.peers.len() >= self.max_nodes {
            return Err(LimitHit::Nodes);
        }
        let i = self.peers.len() as u32;
        self.peer_index.insert(peer.clone(), i);
        self.peers.push(peer.clone());
        self.peer_seen.push(self.now_sec);
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
            self.peer_seen[i as usize] = self.now_sec;
            return Ok(i);
        }
        let peer =
            if database { Peer::Database { name: name.to_owned() } } else { Peer::External { name: name.to_owned() } };
        let i = self.peer(&peer)?;
        self.named[usize::from(database)].insert(name.into(), i);
        Ok(i)
    }

    /// Peers interned (indexes `0..peer_count()`).
    pub fn peer_count(&self) -> usize {
        self.peers.len()
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
        for i in [s, t] {
            self.peer_seen[i as usize] = self.peer_seen[i as usize].max(edge.last_sec);
        }
        if self.edges.len() >= self.max_edges {
            return Err(LimitHit::Edges);
        }
        let i = self.edges.len() as u32;
        self.edges.push(EdgeState { source: s, target: t, ..edge });
        self.edge_index.insert((s, t), i);
        self.counters.edges.set(self.edges.len() as u64);
        Ok(i)
    }

    /// Evicts edges with no traffic since `cutoff_sec` and peers no edge uses and no writer looked up
    /// since then, so data from a flood (or services long gone) does not hold the caps for good.
    /// Indices are compacted by swap-removal: see [`Evicted`] for what moved.
    pub fn evict_idle(&mut self, cutoff_sec: u64) -> Evicted {
        let mut out = Evicted::default();
        let dead: Vec<usize> = (0..self.edges.len()).filter(|&i| self.edges[i].last_sec < cutoff_sec).collect();
        for &i in dead.iter().rev() {
            let e = self.edges.swap_remove(i);
            self.edge_index.remove(&(e.source, e.target));
            let last = self.edges.len();
            if i < last {
                let m = &self.edges[i];
                self.edge_index.insert((m.source, m.target), i as u32);
                out.edge_moves.push((i as u32, Some(last as u32)));
            } else {
                out.edge_moves.push((i as u32, None));
            }
        }
        let mut used = vec![false; self.peers.len()];
        for e in &self.edges {
            used[e.source as usize] = true;
            used[e.target as usize] = true;
        }
        let dead: Vec<usize> = (0..self.peers.len()).filter(|&i| !used[i] && self.peer_seen[i] < cutoff_sec).collect();
        if !dead.is_empty() {
            // `origin[position]` = the index the peer there had before this pass.
            let mut origin: Vec<u32> = (0..self.peers.len() as u32).collect();
            for &j in dead.iter().rev() {
                let p = self.peers.swap_remove(j);
                self.peer_seen.swap_remove(j);
                origin.swap_remove(j);
                self.peer_index.remove(&p);
                match &p {
                    Peer::External { name } => drop(self.named[0].remove(name.as_str())),
                    Peer::Database { name } => drop(self.named[1].remove(name.as_str())),
                    _ => {}
                }
                out.nodes_removed.push(j as u32);
            }
            for (pos, &was) in origin.iter().enumerate() {
                if pos as u32 != was {
                    out.node_moves.insert(was, pos as u32);
                }
            }
            for (pos, p) in self.peers.iter().enumerate() {
                if out.node_moves.contains_key(&origin[pos]) {
                    self.peer_index.insert(p.clone(), pos as u32);
                    match p {
                        Peer::External { name } => drop(self.named[0].insert(name.as_str().into(), pos as u32)),
                        Peer::Database { name } => drop(self.named[1].insert(name.as_str().into(), pos as u32)),
                        _ => {}
                    }
                }
            }
            if !out.node_moves.is_empty() {
                self.edge_index.clear();
                for (i, e) in self.edges.iter_mut().enumerate() {
                    e.source = out.node(e.source);
                    e.target = out.node(e.target);
                    self.edge_index.insert((e.source, e.target), i as u32);
                }
            }
        }
        self.counters.nodes.set(self.peers.len() as u64);
        self.counters.edges.set(self.edges.len() as u64);
        self.counters.nodes_evicted.add(out.nodes_removed.len() as u64);
        self.counters.edges_evicted.add(out.edge_moves.len() as u64);
        out
    }

    /// Bytes of memory the windowed stats hold (rings and histograms), for the memory benchmark.
    pub fn window_heap_bytes(&self) -> usize {
        self.edges
            .iter()
            .map(|e| e.rings.fine.heap_bytes() + e.rings.coarse.heap_bytes() + e.rings.kept_heap_bytes())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlens_model::Workload;

    fn w(app: &str) -> Peer {
        Peer::Workload(Workload { namespace: "default".into(), app: app.into(), version: None, cluster: None })
    }

    /// After an eviction pass every index agrees: the peer index, the edge index and the edges' ends.
    fn consistent(g: &Graph) {
        assert_eq!(g.peers.len(), g.peer_index.len());
        for (i, p) in g.peers.iter().enumerate() {
            assert_eq!(g.peer_index[p], i as u32, "{p:?}");
        }
        assert_eq!(g.edges.len(), g.edge_index.len());
        for (i, e) in g.edges.iter().enumerate() {
            assert_eq!(g.edge_index[&(e.source, e.target)], i as u32);
        }
    }

    #[test]
    fn idle_nodes_and_edges_are_evicted_and_indices_stay_consistent() {
        let mut g = Graph::new(Arc::new(Counters::default()), 100, 100);
        // Old traffic at second 10 among a..f (and a database), new traffic at 100 between x and y.
        g.now_sec = 10;
        let old: Vec<u32> = ["a", "b", "c", "d", "e", "f"].iter().map(|n| g.peer(&w(n)).unwrap()).collect();
        let db = g.named_peer("redis", true).unwrap();
        for pair in old.windows(2) {
            g.edge_mut(pair[0], pair[1], Protocol::Http).unwrap().touch(10);
        }
        g.edge_mut(old[0], db, Protocol::Http).unwrap().touch(10);
        g.now_sec = 100;
        let (x, y) = (g.peer(&w("x")).unwrap(), g.peer(&w("y")).unwrap());
        g.edge_mut(x, y, Protocol::Http).unwrap().touch(100);
        // "b" is looked up again at 100 (a half waiting, say): it stays although its edges go.
        g.peer(&w("b")).unwrap();
        let ev = g.evict_idle(50);
        consistent(&g);
        assert_eq!(ev.edge_moves.len(), 6);
        assert_eq!(g.edges.len(), 1);
        let names: Vec<String> = g.peers.iter().map(|p| p.id()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        for keep in ["default/x", "default/y", "default/b"] {
            assert!(names.iter().any(|n| n == keep), "{keep} in {names:?}");
        }
        let e = &g.edges[0];
        assert_eq!((g.peer_at(e.source).id(), g.peer_at(e.target).id()), ("default/x".into(), "default/y".into()));
        // The freed names are new peers again, and the database's name lookup was cleared.
        assert!(g.named[1].is_empty());
        let db2 = g.named_peer("redis", true).unwrap();
        assert_eq!(g.peer_at(db2).id(), "db:redis");
        consistent(&g);
        // The moves, replayed on the old edge list, give the new one (what the store does).
        let mut before: Vec<u32> = (0..7).collect();
        for &(gone, from) in &ev.edge_moves {
            if let Some(f) = from {
                before[gone as usize] = before[f as usize];
            }
            before.truncate(before.len() - 1);
        }
        assert_eq!(before, vec![6]);
    }

    #[test]
    fn a_full_graph_takes_new_nodes_once_the_old_are_evicted() {
        let mut g = Graph::new(Arc::new(Counters::default()), 5, 10);
        g.now_sec = 1;
        for i in 0..5 {
            g.peer(&w(&format!("junk{i}"))).unwrap();
        }
        g.now_sec = 100;
        assert_eq!(g.peer(&w("real")), Err(LimitHit::Nodes));
        g.evict_idle(50);
        assert!(g.peer(&w("real")).is_ok());
        assert_eq!(g.counters.nodes_evicted.get(), 5);
    }
}
