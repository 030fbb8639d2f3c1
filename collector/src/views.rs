//! Graph views built from the edge state: `versioned`, `app`, `workload`, `service`, `namespace`,
//! and any of them with some namespaces or apps collapsed.
//!
//! Raw edges connect peers as reported (workloads with their versions). A view maps each peer to a
//! view node (dropping versions for `app` and `service`, merging a namespace's workloads for
//! `namespace` and for a collapsed namespace), builds a petgraph of view nodes whose edges hold the
//! raw edges they merge, and aggregates slices and histograms per view edge and per node side, so a
//! merged node's percentiles are exact.
//!
//! Two phases, so readers hold the engine lock only for the first: [`freeze`] takes each edge's
//! window (from the sums the edge keeps per window length, brought up to date with the slices
//! completed since the last read) and copies the peers and the edges' ends (under the lock; the
//! pipeline waits meanwhile), and [`Frozen::view`] builds any view from that copy (after it is
//! released).

use hashbrown::HashMap;
use meshlens_model::api::{AppDetail, PeerStats, RatePoint, VersionDetail};
use meshlens_model::graph::{Edge, GraphSnapshot, Node, NodeKind, View};
use meshlens_model::hist::Merger;
use meshlens_model::stats::{HealthThresholds, Stats};
use meshlens_model::time::format_rfc3339_ms;
use meshlens_model::{Peer, Workload};
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::engine::Engine;
use crate::graph::EdgeState;
use crate::window::{Aggregate, EdgeWindow, WindowSpec};

/// Namespaces and apps (`ns/app`) drawn as one node each, over any view: what the views' "collapse"
/// does (`collapse=` on `GET /api/v1/graph`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collapse {
    namespaces: hashbrown::HashSet<String>,
    apps: hashbrown::HashSet<String>,
}

impl Collapse {
    /// From a list of namespaces and app ids: an item with a `/` is an app (`ns/app`).
    pub fn new<S: AsRef<str>>(items: &[S]) -> Self {
        let mut c = Self::default();
        for item in items {
            let item = item.as_ref();
            if item.contains('/') {
                c.apps.insert(item.to_owned())
            } else {
                c.namespaces.insert(item.to_owned())
            };
        }
        c
    }
}

/// What a view node stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// A peer as the view maps it.
    Peer(Peer),
    /// An app collapsed over a view that shows versions.
    App(Peer),
    /// A whole namespace (of one cluster).
    Namespace(String, Option<String>),
}

impl Key {
    fn id(&self) -> String {
        match self {
            Key::Peer(p) | Key::App(p) => p.id(),
            Key::Namespace(ns, None) => format!("ns:{ns}"),
            Key::Namespace(ns, Some(c)) => format!("ns:{ns}@{c}"),
        }
    }
}

fn view_key(peer: &Peer, view: View, collapse: &Collapse) -> Key {
    match peer {
        Peer::Workload(w) if view == View::Namespace || collapse.namespaces.contains(&w.namespace) => {
            Key::Namespace(w.namespace.clone(), w.cluster.clone())
        }
        Peer::Workload(w)
            if matches!(view, View::Versioned | View::Workload) && collapse.apps.contains(&w.app_id()) =>
        {
            Key::App(peer.without_version())
        }
        _ => match view {
            View::Versioned | View::Workload | View::Namespace => Key::Peer(peer.clone()),
            View::App | View::Service => Key::Peer(peer.without_version()),
        },
    }
}

fn node_kind(peer: &Peer, view: View) -> NodeKind {
    match peer {
        Peer::Workload(_) => match view {
            View::Versioned | View::Workload | View::Namespace => NodeKind::Workload,
            View::App => NodeKind::App,
            View::Service => NodeKind::Service,
        },
        Peer::User => NodeKind::User,
        Peer::External { .. } => NodeKind::External,
        Peer::Database { .. } => NodeKind::Database,
        Peer::Unknown => NodeKind::Unknown,
    }
}

fn active(edge: &EdgeState, spec: &WindowSpec) -> bool {
    edge.last_sec / spec.width >= spec.first
}

fn aggregate(engine: &Engine, spec: WindowSpec, members: &[u32], merger: &mut Merger) -> Stats {
    let mut agg = Aggregate::new(spec, merger);
    for &i in members {
        let e = &engine.edges()[i as usize];
        agg.add(&e.rings, e.metrics_seen);
    }
    agg.stats()
}

/// Every active edge's window (inactive edges: `None`), from the sums each edge keeps per window
/// length ([`crate::window::Rings::window`]).
fn edge_windows(engine: &mut Engine, spec: WindowSpec, merger: &mut Merger) -> Vec<Option<EdgeWindow>> {
    let mut scratch = Vec::new();
    engine
        .edges_mut()
        .iter_mut()
        .map(|e| {
            if active(e, &spec) {
                Some(e.rings.window(&spec, e.metrics_seen, merger, &mut scratch))
            } else {
                e.rings.forget(spec.secs);
                None
            }
        })
        .collect()
}

fn merge(windows: &[Option<EdgeWindow>], spec: WindowSpec, members: &[u32], merger: &mut Merger) -> Stats {
    let mut agg = Aggregate::new(spec, merger);
    for &i in members {
        if let Some(w) = &windows[i as usize] {
            agg.add_window(w);
        }
    }
    agg.stats()
}

/// One raw edge's ends and protocol, as frozen.
#[derive(Clone, Copy, Debug)]
struct EdgeEnds {
    source: u32,
    target: u32,
    protocol: crate::graph::Protocol,
}

/// What every view of one window needs of the engine, copied out under its lock: each active edge's
/// window summed once, the edges' ends, the peers. Building views from it needs no lock.
pub struct Frozen {
    peers: Vec<Peer>,
    edges: Vec<EdgeEnds>,
    windows: Vec<Option<EdgeWindow>>,
    spec: WindowSpec,
    health: HealthThresholds,
    window_secs: u64,
    now: f64,
}

/// Sums every edge's window ending at `now` and copies what the views need (the part of a view
/// that needs the engine; run it under the lock, then [`Frozen::view`] after).
pub fn freeze(engine: &mut Engine, window_secs: u64, now: f64, merger: &mut Merger) -> Frozen {
    let spec = WindowSpec::new(now, window_secs, engine.data_since);
    let windows = edge_windows(engine, spec, merger);
    frozen(engine, spec, now, windows)
}

/// [`freeze`] summing every edge's slices afresh, keeping nothing (tests, as the reference, and the
/// benchmark of a first read).
#[cfg(any(test, feature = "testkit"))]
pub fn freeze_summed(engine: &Engine, window_secs: u64, now: f64, merger: &mut Merger) -> Frozen {
    let spec = WindowSpec::new(now, window_secs, engine.data_since);
    let windows = engine
        .edges()
        .iter()
        .map(|e| {
            active(e, &spec).then(|| {
                let mut agg = Aggregate::new(spec, merger);
                agg.add(&e.rings, e.metrics_seen);
                agg.to_window()
            })
        })
        .collect();
    frozen(engine, spec, now, windows)
}

fn frozen(engine: &Engine, spec: WindowSpec, now: f64, windows: Vec<Option<EdgeWindow>>) -> Frozen {
    let window_secs = spec.secs;
    let edges =
        engine.edges().iter().map(|e| EdgeEnds { source: e.source, target: e.target, protocol: e.protocol }).collect();
    let peers = (0..engine.graph.peer_count()).map(|i| engine.peer_at(i as u32).clone()).collect();
    Frozen { peers, edges, windows, spec, health: engine.config.health, window_secs, now }
}

/// A view's graph: view nodes, and per view edge the raw edges it merges.
struct ViewGraph {
    graph: DiGraph<Key, Vec<u32>>,
}

fn side_members(g: &DiGraph<Key, Vec<u32>>, n: NodeIndex, dir: Direction) -> Vec<u32> {
    g.edges_directed(n, dir).flat_map(|e| e.weight().iter().copied()).collect()
}

/// Computes a snapshot of `view` over a `window_secs` window ending at `now` (tests and the
/// benchmark; the server keeps its answers in [`crate::live`]).
#[cfg(any(test, feature = "testkit"))]
pub fn snapshot(engine: &Engine, view: View, window_secs: u64, now: f64, merger: &mut Merger) -> GraphSnapshot {
    collapsed(engine, view, &Collapse::default(), window_secs, now, merger)
}

/// Computes a snapshot of `view` with `collapse`'s namespaces and apps drawn as one node each.
#[cfg(any(test, feature = "testkit"))]
pub(crate) fn collapsed(
    engine: &Engine,
    view: View,
    collapse: &Collapse,
    window_secs: u64,
    now: f64,
    merger: &mut Merger,
) -> GraphSnapshot {
    freeze_summed(engine, window_secs, now, merger).view(view, collapse, merger)
}

/// Computes snapshots of several views over one window: each edge's slices are summed once and the
/// views merge those sums (the benchmark).
#[cfg(feature = "testkit")]
pub fn snapshots(
    engine: &Engine,
    views: &[View],
    window_secs: u64,
    now: f64,
    merger: &mut Merger,
) -> Vec<GraphSnapshot> {
    freeze_summed(engine, window_secs, now, merger).views(views, merger)
}

impl Frozen {
    /// Snapshots of several views, without collapse.
    pub fn views(&self, views: &[View], merger: &mut Merger) -> Vec<GraphSnapshot> {
        let none = Collapse::default();
        views.iter().map(|&view| self.view(view, &none, merger)).collect()
    }

    fn build(&self, view: View, collapse: &Collapse) -> ViewGraph {
        let mut graph: DiGraph<Key, Vec<u32>> = DiGraph::new();
        let mut index: HashMap<Key, NodeIndex> = HashMap::new();
        let mut node =
            |graph: &mut DiGraph<Key, Vec<u32>>, k: Key| *index.entry(k.clone()).or_insert_with(|| graph.add_node(k));
        for (i, e) in self.edges.iter().enumerate() {
            if self.windows[i].is_none() {
                continue;
            }
            let s = node(&mut graph, view_key(&self.peers[e.source as usize], view, collapse));
            let t = node(&mut graph, view_key(&self.peers[e.target as usize], view, collapse));
            match graph.find_edge(s, t) {
                Some(ei) => graph[ei].push(i as u32),
                None => {
                    graph.add_edge(s, t, vec![i as u32]);
                }
            }
        }
        ViewGraph { graph }
    }

    /// The snapshot of `view` with `collapse`'s namespaces and apps drawn as one node each.
    pub fn view(&self, view: View, collapse: &Collapse, merger: &mut Merger) -> GraphSnapshot {
        let (health, spec, windows) = (self.health, self.spec, &self.windows[..]);
        let vg = self.build(view, collapse);
        let g = &vg.graph;
        let mut edges = Vec::with_capacity(g.edge_count());
        for e in g.edge_references() {
            let stats = merge(windows, spec, e.weight(), merger);
            if stats.requests == 0 && stats.retries.unwrap_or(0) == 0 && stats.timeouts.unwrap_or(0) == 0 {
                continue;
            }
            let (s, t) = (g[e.source()].id(), g[e.target()].id());
            let protocol = self.edges[e.weight()[0] as usize].protocol.as_str().to_owned();
            edges.push(Edge {
                id: format!("{s}->{t}"),
                source: s,
                target: t,
                protocol,
                health: stats.health(&health),
                stats,
            });
        }
        edges.sort_by(|a, b| a.id.cmp(&b.id));
        let live: hashbrown::HashSet<String> =
            edges.iter().flat_map(|e| [e.source.clone(), e.target.clone()]).collect();
        let mut nodes = Vec::with_capacity(g.node_count());
        for n in g.node_indices() {
            let key = &g[n];
            let id = key.id();
            if !live.contains(&id) {
                continue;
            }
            let inbound = merge(windows, spec, &side_members(g, n, Direction::Incoming), merger);
            let outbound = merge(windows, spec, &side_members(g, n, Direction::Outgoing), merger);
            nodes.push(make_node(key, id, view, inbound, outbound, &health));
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        GraphSnapshot {
            revision: 0,
            generated_at: format_rfc3339_ms((self.now * 1000.0) as i64),
            window_seconds: self.window_secs,
            view,
            nodes,
            edges,
        }
    }
}

fn make_node(key: &Key, id: String, view: View, inbound: Stats, outbound: Stats, t: &HealthThresholds) -> Node {
    let health = inbound.health(t).max(outbound.health(t));
    let (peer, kind) = match key {
        Key::Namespace(ns, cluster) => {
            let (namespace, app, cluster) = (ns.clone(), ns.clone(), cluster.clone());
            let kind = NodeKind::Namespace;
            return Node { id, namespace, app, version: None, kind, cluster, group: None, health, inbound, outbound };
        }
        Key::App(p) => (p, NodeKind::App),
        Key::Peer(p) => (p, node_kind(p, view)),
    };
    let (namespace, app, version, cluster) = match peer {
        Peer::Workload(w) => (w.namespace.clone(), w.app.clone(), w.version.clone(), w.cluster.clone()),
        other => (String::new(), other.display_name(), None, None),
    };
    let group = match (view, peer) {
        (View::Versioned, Peer::Workload(w)) if w.version.is_some() => Some(w.app_id()),
        _ => None,
    };
    Node { id, namespace, app, version, kind, cluster, group, health, inbound, outbound }
}

/// One app's versions with their inbound and outbound tables and rate series; `None` when the app
/// has no traffic in the window.
pub(crate) fn app_detail(
    engine: &Engine,
    namespace: &str,
    app: &str,
    window_secs: u64,
    now: f64,
    merger: &mut Merger,
) -> Option<AppDetail> {
    let spec = WindowSpec::new(now, window_secs, engine.data_since);
    let health = engine.config.health;
    let is_app = |p: &Peer| matches!(p, Peer::Workload(w) if w.namespace == namespace && w.app == app);
    // By version and cluster: one app in two clusters is two workloads of each version.
    let mut versions: std::collections::BTreeMap<Workload, (Vec<u32>, Vec<u32>)> = Default::default();
    for (i, e) in engine.edges().iter().enumerate() {
        if !active(e, &spec) {
            continue;
        }
        for (peer, inbound) in [(engine.peer_at(e.target), true), (engine.peer_at(e.source), false)] {
            if let Peer::Workload(w) = peer
                && is_app(peer)
            {
                let entry = versions.entry(w.clone()).or_default();
                if inbound { entry.0.push(i as u32) } else { entry.1.push(i as u32) }
            }
        }
    }
    if versions.is_empty() {
        return None;
    }
    let peer_table = |members: &[u32], inbound: bool, merger: &mut Merger| -> Vec<PeerStats> {
        let mut by_peer: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
        for &i in members {
            let e = &engine.edges()[i as usize];
            let other = if inbound { e.source } else { e.target };
            by_peer.entry(engine.peer_at(other).id()).or_default().push(i);
        }
        by_peer
            .into_iter()
            .map(|(peer, m)| PeerStats { peer, stats: aggregate(engine, spec, &m, merger) })
            .filter(|p| p.stats.requests > 0)
            .collect()
    };
    let (mut all_in, mut all_out) = (Vec::new(), Vec::new());
    let mut out = Vec::new();
    for (w, (inb, outb)) in &versions {
        let version = &w.version;
        let mut agg = Aggregate::new(spec, merger);
        for &i in inb {
            let e = &engine.edges()[i as usize];
            agg.add(&e.rings, e.metrics_seen);
        }
        let rate_series = agg
            .series()
            .map(|(t, rps, err)| RatePoint { time: format_rfc3339_ms(t as i64 * 1000), rps, error_rps: err })
            .collect();
        let inbound = agg.stats();
        let outbound = aggregate(engine, spec, outb, merger);
        out.push(VersionDetail {
            version: version.clone(),
            id: w.id(),
            health: inbound.health(&health).max(outbound.health(&health)),
            inbound_edges: peer_table(inb, true, merger),
            outbound_edges: peer_table(outb, false, merger),
            inbound,
            outbound,
            rate_series,
        });
        all_in.extend_from_slice(inb);
        all_out.extend_from_slice(outb);
    }
    Some(AppDetail {
        namespace: namespace.to_owned(),
        app: app.to_owned(),
        window_seconds: window_secs,
        step_seconds: spec.width,
        inbound: aggregate(engine, spec, &all_in, merger),
        outbound: aggregate(engine, spec, &all_out, merger),
        versions: out,
    })
}
