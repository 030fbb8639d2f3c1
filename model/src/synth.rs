//! Large synthetic meshes for tests and benchmarks (feature `synth`): namespaces × apps × versions,
//! skewed fan-out (a few apps called by many, as real meshes have), calls mostly within a namespace
//! and some across, a few back edges (cycles), and external and database nodes. Deterministic: the
//! same [`Spec`] gives the same graph.

use crate::graph::{Edge, GraphSnapshot, Node, NodeKind, View};
use crate::rng::SplitMix64;
use crate::stats::{Health, Stats};

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spec {
    /// Namespaces generated.
    pub namespaces: usize,
    /// Apps per namespace.
    pub apps: usize,
    /// Versions per app.
    pub versions: usize,
    /// Calls each app makes (to other apps), on average.
    pub fan_out: usize,
    /// Seed of the generator.
    pub seed: u64,
}

impl Spec {
    /// `namespaces` × `apps` × `versions`, three calls an app, seed 1.
    pub fn new(namespaces: usize, apps: usize, versions: usize) -> Self {
        Self { namespaces, apps, versions, fan_out: 3, seed: 1 }
    }
}

/// The model's SplitMix64, with a skewed draw.
struct Rng(SplitMix64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0.below(n)
    }

    /// Skewed toward 0 in `0..n`: the square of a uniform draw, so low indexes are called most.
    fn skewed(&mut self, n: usize) -> usize {
        let u = self.0.f64();
        ((u * u * n as f64) as usize).min(n - 1)
    }
}

fn node(id: String, namespace: &str, app: &str, version: Option<String>, kind: NodeKind) -> Node {
    let group = version.as_ref().map(|_| format!("{namespace}/{app}"));
    Node {
        id,
        namespace: namespace.to_owned(),
        app: app.to_owned(),
        version,
        kind,
        cluster: None,
        group,
        health: Health::Healthy,
        inbound: Stats::default(),
        outbound: Stats::default(),
    }
}

/// A versioned graph as the collector would publish it for `spec`.
pub fn mesh(spec: Spec) -> GraphSnapshot {
    let mut rng = Rng(SplitMix64::new(spec.seed));
    let ns_name = |n: usize| format!("ns{n}");
    let app_name = |a: usize| format!("svc{a}");
    let mut nodes = vec![node("user".into(), "", "user", None, NodeKind::User)];
    for n in 0..spec.namespaces {
        for a in 0..spec.apps {
            for v in 0..spec.versions.max(1) {
                let (ns, app) = (ns_name(n), app_name(a));
                nodes.push(node(
                    format!("{ns}/{app}/v{}", v + 1),
                    &ns,
                    &app,
                    Some(format!("v{}", v + 1)),
                    NodeKind::Workload,
                ));
            }
        }
    }
    let externals = (spec.namespaces * spec.apps / 20).max(1);
    for e in 0..externals {
        let name = format!("api{e}.example.com");
        nodes.push(node(format!("ext:{name}"), "", &name, None, NodeKind::External));
        let db = format!("db{e}.local");
        nodes.push(node(format!("db:{db}"), "", &db, None, NodeKind::Database));
    }
    let mut edges: std::collections::BTreeMap<(String, String), f64> = std::collections::BTreeMap::new();
    let versions = spec.versions.max(1);
    let id = |n: usize, a: usize, v: usize| format!("{}/{}/v{}", ns_name(n), app_name(a), v + 1);
    for n in 0..spec.namespaces {
        // Users reach each namespace's first app (its gateway).
        for v in 0..versions {
            edges.insert(("user".into(), id(n, 0, v)), 10.0);
        }
        for a in 0..spec.apps {
            for _ in 0..spec.fan_out {
                // Mostly downstream within the namespace; one call in eight crosses to another
                // namespace; one in twenty goes back upstream (a cycle).
                let (tn, ta) = match rng.below(40) {
                    0..=4 if spec.namespaces > 1 => (rng.below(spec.namespaces), rng.skewed(spec.apps)),
                    5 | 6 if a > 0 => (n, rng.below(a)),
                    _ if a + 1 < spec.apps => (n, a + 1 + rng.skewed(spec.apps - a - 1)),
                    _ => continue,
                };
                if (tn, ta) == (n, a) {
                    continue;
                }
                for v in 0..versions {
                    let tv = rng.below(versions);
                    edges.insert((id(n, a, v), id(tn, ta, tv)), 1.0 + rng.below(50) as f64);
                }
            }
            // Some apps call a database or an external API.
            if rng.below(6) == 0 {
                let e = rng.below(externals);
                let target =
                    if rng.below(2) == 0 { format!("db:db{e}.local") } else { format!("ext:api{e}.example.com") };
                edges.insert((id(n, a, 0), target), 5.0);
            }
        }
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let edges = edges
        .into_iter()
        .map(|((source, target), rps)| Edge {
            id: format!("{source}->{target}"),
            source,
            target,
            protocol: "http".into(),
            health: Health::Healthy,
            stats: Stats { rps, requests: (rps * 60.0) as u64, ..Stats::default() },
        })
        .collect();
    GraphSnapshot { revision: 1, generated_at: String::new(), window_seconds: 60, view: View::Versioned, nodes, edges }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_spec_gives_the_same_mesh_of_the_asked_size() {
        let spec = Spec::new(4, 15, 3);
        let g = mesh(spec);
        assert_eq!(g, mesh(spec));
        let workloads = g.nodes.iter().filter(|n| n.kind == NodeKind::Workload).count();
        assert_eq!(workloads, 4 * 15 * 3);
        assert!(g.edges.len() > 400, "{} edges", g.edges.len());
        let ids: std::collections::BTreeSet<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
        assert!(g.edges.iter().all(|e| ids.contains(e.source.as_str()) && ids.contains(e.target.as_str())));
        // Some calls cross namespaces, some reach databases.
        assert!(g.edges.iter().any(|e| e.source.starts_with("ns0/") && e.target.starts_with("ns1/")));
        assert!(g.edges.iter().any(|e| e.target.starts_with("db:")));
    }
}
