//! Graph snapshots, revisions and diffs: the bodies of `/api/v1/graph`, `/revisions`, `/diff` and the
//! SSE `graph` event.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::stats::{Health, Stats};

/// How nodes are grouped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum View {
    /// One node per app and version, grouped by app (Kiali's versioned app graph).
    #[default]
    Versioned,
    /// One node per app: versions merged.
    App,
    /// One node per workload (app and version), not grouped.
    Workload,
    /// One node per service. meshlens names a service by `service.name`, so this is the app graph
    /// with service nodes.
    Service,
    /// One node per namespace (`ns:NAME`), the apps of each merged; peers outside the mesh stay as
    /// they are. Edges inside a namespace are its self-edge. The first view of a large mesh.
    Namespace,
}

impl View {
    /// All views, in API order.
    pub const ALL: [View; 5] = [View::Versioned, View::App, View::Workload, View::Service, View::Namespace];

    /// The query-string name.
    pub fn as_str(self) -> &'static str {
        match self {
            View::Versioned => "versioned",
            View::App => "app",
            View::Workload => "workload",
            View::Service => "service",
            View::Namespace => "namespace",
        }
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for View {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        View::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown view {s:?}: expected versioned, app, workload, service or namespace"))
    }
}

/// What a node stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// One version of an app.
    Workload,
    /// An app, versions merged.
    App,
    /// A service.
    Service,
    /// Traffic with no known caller.
    User,
    /// A peer outside the mesh.
    External,
    /// A database.
    Database,
    /// A callee nothing is known about.
    Unknown,
    /// A namespace, its workloads merged (the namespace view, or a collapsed namespace).
    Namespace,
}

/// A node of a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Stable id: `ns/app/version`, `ns/app`, `user`, `unknown`, `ext:NAME`, `db:NAME`.
    pub id: String,
    /// Namespace; empty for nodes outside the mesh.
    pub namespace: String,
    /// App (or the external name).
    pub app: String,
    /// Version, for workload nodes that have one.
    pub version: Option<String>,
    /// What the node stands for.
    pub kind: NodeKind,
    /// The cluster it runs in, in a mesh of several.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cluster: Option<String>,
    /// The app box this node sits in (`ns/app`), in the versioned view.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub group: Option<String>,
    /// Worst of inbound and outbound health.
    pub health: Health,
    /// Requests this node received.
    pub inbound: Stats,
    /// Requests this node sent.
    pub outbound: Stats,
}

/// An edge of a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    /// `source->target`.
    pub id: String,
    /// Caller node id.
    pub source: String,
    /// Callee node id.
    pub target: String,
    /// `http`, `grpc`, `messaging` or `database`.
    pub protocol: String,
    /// Health from the error rate.
    pub health: Health,
    /// Stats over the window.
    pub stats: Stats,
}

/// A graph as the API serves it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GraphSnapshot {
    /// The revision this snapshot belongs to; 0 before the first revision.
    pub revision: u64,
    /// When it was computed (RFC 3339).
    pub generated_at: String,
    /// The stats window.
    pub window_seconds: u64,
    /// The grouping.
    pub view: View,
    /// Nodes, sorted by id.
    pub nodes: Vec<Node>,
    /// Edges, sorted by id.
    pub edges: Vec<Edge>,
}

impl GraphSnapshot {
    /// Finds a node by id.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Finds an edge by source and target id.
    pub fn edge(&self, source: &str, target: &str) -> Option<&Edge> {
        self.edges.iter().find(|e| e.source == source && e.target == target)
    }

    /// Keeps what touches the namespaces: their nodes, edges with an end in them, and those edges'
    /// other ends. An empty list keeps everything.
    pub fn retain_namespaces(&mut self, namespaces: &[String]) {
        if namespaces.is_empty() {
            return;
        }
        let in_ns = |n: &Node| namespaces.contains(&n.namespace);
        let inside: std::collections::HashSet<String> =
            self.nodes.iter().filter(|n| in_ns(n)).map(|n| n.id.clone()).collect();
        self.edges.retain(|e| inside.contains(&e.source) || inside.contains(&e.target));
        let touched: std::collections::HashSet<&str> =
            self.edges.iter().flat_map(|e| [e.source.as_str(), e.target.as_str()]).collect();
        self.nodes.retain(|n| inside.contains(&n.id) || touched.contains(n.id.as_str()));
    }
}

impl GraphSnapshot {
    /// Keeps `id` and what lies within `hops` calls of it, either way (focus on a node's
    /// neighbourhood); keeps everything when `id` is not in the graph.
    pub fn retain_hops(&mut self, id: &str, hops: u32) {
        if self.node(id).is_none() {
            return;
        }
        let mut near: std::collections::HashSet<String> = std::collections::HashSet::from([id.to_owned()]);
        let mut frontier = vec![id.to_owned()];
        for _ in 0..hops {
            let mut next = Vec::new();
            for e in &self.edges {
                for (a, b) in [(&e.source, &e.target), (&e.target, &e.source)] {
                    if frontier.contains(a) && near.insert(b.clone()) {
                        next.push(b.clone());
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        self.nodes.retain(|n| near.contains(&n.id));
        self.edges.retain(|e| near.contains(&e.source) && near.contains(&e.target));
    }
}

/// Topology changes between two revisions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyChanges {
    /// Node ids that appeared.
    pub nodes_added: Vec<String>,
    /// Node ids that went away.
    pub nodes_removed: Vec<String>,
    /// Edge ids that appeared.
    pub edges_added: Vec<String>,
    /// Edge ids that went away.
    pub edges_removed: Vec<String>,
}

impl TopologyChanges {
    /// Computes the changes from `before` to `after`.
    pub fn between(before: &GraphSnapshot, after: &GraphSnapshot) -> Self {
        let set =
            |it: &mut dyn Iterator<Item = &String>| -> std::collections::BTreeSet<String> { it.cloned().collect() };
        let (bn, an) = (set(&mut before.nodes.iter().map(|n| &n.id)), set(&mut after.nodes.iter().map(|n| &n.id)));
        let (be, ae) = (set(&mut before.edges.iter().map(|e| &e.id)), set(&mut after.edges.iter().map(|e| &e.id)));
        Self {
            nodes_added: an.difference(&bn).cloned().collect(),
            nodes_removed: bn.difference(&an).cloned().collect(),
            edges_added: ae.difference(&be).cloned().collect(),
            edges_removed: be.difference(&ae).cloned().collect(),
        }
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.nodes_added.is_empty()
            && self.nodes_removed.is_empty()
            && self.edges_added.is_empty()
            && self.edges_removed.is_empty()
    }
}

/// One entry of `/api/v1/revisions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionSummary {
    /// The revision number.
    pub revision: u64,
    /// When it was published (RFC 3339).
    pub generated_at: String,
    /// Topology changes from the revision before it (versioned view).
    pub changes: TopologyChanges,
}

/// The body of `/api/v1/revisions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionsBody {
    /// The newest revision.
    pub latest: u64,
    /// The oldest revision still kept.
    pub oldest: u64,
    /// Revisions after `since`, oldest first.
    pub revisions: Vec<RevisionSummary>,
    /// Pass as `since` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// How one node or edge's stats changed between two revisions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsChange {
    /// Node or edge id.
    pub id: String,
    /// `node` or `edge`.
    pub item: String,
    /// Stats in `from` (inbound stats for a node).
    pub before: Stats,
    /// Stats in `to`.
    pub after: Stats,
    /// `after.rps - before.rps`.
    pub rps_delta: f64,
    /// Change of error percent, in points.
    pub error_pct_delta: f64,
    /// Change of p99 in ms, when both have latency.
    pub p99_ms_delta: Option<f64>,
}

/// The body of `/api/v1/diff`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffBody {
    /// The older revision.
    pub from: u64,
    /// The newer revision.
    pub to: u64,
    /// The grouping compared.
    pub view: View,
    /// Nodes and edges added or removed.
    pub topology: TopologyChanges,
    /// Items present in both whose stats differ.
    pub stats: Vec<StatsChange>,
}

impl DiffBody {
    /// Compares two snapshots.
    pub fn between(from: &GraphSnapshot, to: &GraphSnapshot) -> Self {
        let mut stats = Vec::new();
        let nodes_before: BTreeMap<&str, &Node> = from.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        for n in &to.nodes {
            if let Some(b) = nodes_before.get(n.id.as_str())
                && b.inbound != n.inbound
            {
                stats.push(StatsChange::new(&n.id, "node", &b.inbound, &n.inbound));
            }
        }
        let edges_before: BTreeMap<&str, &Edge> = from.edges.iter().map(|e| (e.id.as_str(), e)).collect();
        for e in &to.edges {
            if let Some(b) = edges_before.get(e.id.as_str())
                && b.stats != e.stats
            {
                stats.push(StatsChange::new(&e.id, "edge", &b.stats, &e.stats));
            }
        }
        Self {
            from: from.revision,
            to: to.revision,
            view: to.view,
            topology: TopologyChanges::between(from, to),
            stats,
        }
    }
}

impl StatsChange {
    fn new(id: &str, item: &str, before: &Stats, after: &Stats) -> Self {
        let p99 = |s: &Stats| s.latency_ms.map(|l| l.p99);
        Self {
            id: id.to_owned(),
            item: item.to_owned(),
            before: before.clone(),
            after: after.clone(),
            rps_delta: crate::stats::round2(after.rps - before.rps),
            error_pct_delta: crate::stats::round2(after.error_pct.unwrap_or(0.0) - before.error_pct.unwrap_or(0.0)),
            p99_ms_delta: p99(after).zip(p99(before)).map(|(a, b)| crate::stats::round2(a - b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, ns: &str) -> Node {
        Node {
            id: id.into(),
            namespace: ns.into(),
            app: id.into(),
            version: None,
            kind: NodeKind::App,
            cluster: None,
            group: None,
            health: Health::Idle,
            inbound: Stats::default(),
            outbound: Stats::default(),
        }
    }

    fn edge(s: &str, t: &str) -> Edge {
        Edge {
            id: format!("{s}->{t}"),
            source: s.into(),
            target: t.into(),
            protocol: "http".into(),
            health: Health::Idle,
            stats: Stats::default(),
        }
    }

    #[test]
    fn namespace_filter_keeps_neighbours() {
        let mut g = GraphSnapshot {
            nodes: vec![node("a", "x"), node("b", "y"), node("c", "z")],
            edges: vec![edge("a", "b"), edge("b", "c")],
            ..GraphSnapshot::default()
        };
        g.retain_namespaces(&["x".to_owned()]);
        assert_eq!(g.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(g.edges.len(), 1);
    }

    #[test]
    fn focus_keeps_k_hops_either_way() {
        let chain = || GraphSnapshot {
            nodes: ["a", "b", "c", "d", "e"].iter().map(|i| node(i, "x")).collect(),
            edges: vec![edge("a", "b"), edge("b", "c"), edge("c", "d"), edge("d", "e")],
            ..GraphSnapshot::default()
        };
        let ids = |g: &GraphSnapshot| g.nodes.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        let mut one = chain();
        one.retain_hops("c", 1);
        assert_eq!(ids(&one), ["b", "c", "d"]);
        assert_eq!(one.edges.len(), 2);
        let mut two = chain();
        two.retain_hops("c", 2);
        assert_eq!(ids(&two), ["a", "b", "c", "d", "e"]);
        let mut none = chain();
        none.retain_hops("zz", 1);
        assert_eq!(none.nodes.len(), 5, "an unknown id keeps everything");
    }

    #[test]
    fn topology_changes() {
        let a = GraphSnapshot { nodes: vec![node("a", "x")], ..GraphSnapshot::default() };
        let b = GraphSnapshot { nodes: vec![node("b", "x")], edges: vec![edge("b", "b")], ..GraphSnapshot::default() };
        let c = TopologyChanges::between(&a, &b);
        assert_eq!(c.nodes_added, ["b"]);
        assert_eq!(c.nodes_removed, ["a"]);
        assert_eq!(c.edges_added, ["b->b"]);
        assert!(TopologyChanges::between(&a, &a).is_empty());
    }
}
