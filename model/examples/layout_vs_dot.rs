//! The shared layout against Graphviz `dot` on the same graphs: straight-segment edge crossings
//! between node rows (the same count for both, from each layout's node positions) and layout time.
//!
//!   cargo run --release -p meshlens-model --features synth --example layout_vs_dot
//!
//! Needs `dot` on PATH (Debian's graphviz). `bench/layout.sh` runs it.

// A bench tool: it prints its table and panics on a broken setup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use meshlens_model::graph::GraphSnapshot;
use meshlens_model::layout::{edge_label, layout, straight_crossings};
use meshlens_model::synth::{Spec, mesh};

/// The graph as DOT: left to right, one cluster per app box, as the shared layout groups it.
fn to_dot(g: &GraphSnapshot) -> String {
    let mut out = String::from("digraph g {\n  rankdir=LR;\n  node [shape=box];\n");
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        groups.entry(n.group.as_deref().unwrap_or("")).or_default().push(i);
    }
    for (c, (group, members)) in groups.iter().enumerate() {
        if !group.is_empty() {
            out.push_str(&format!("  subgraph cluster_{c} {{\n"));
        }
        for &i in members {
            out.push_str(&format!("    n{i} [label=\"{}\"];\n", g.nodes[i].id));
        }
        if !group.is_empty() {
            out.push_str("  }\n");
        }
    }
    let index: BTreeMap<&str, usize> = g.nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
    for e in &g.edges {
        if let (Some(s), Some(t)) = (index.get(e.source.as_str()), index.get(e.target.as_str())) {
            out.push_str(&format!("  n{s} -> n{t};\n"));
        }
    }
    out.push_str("}\n");
    out
}

/// Runs `dot -Tplain` and reads back each node's centre.
fn dot_positions(dot: &str) -> (BTreeMap<usize, (f64, f64)>, f64) {
    let start = Instant::now();
    let mut child = Command::new("dot")
        .arg("-Tplain")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("graphviz's dot on PATH (apt-get install graphviz)");
    child.stdin.take().unwrap().write_all(dot.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut pos = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"node")
            && let (Some(id), Some(x), Some(y)) = (f.get(1), f.get(2), f.get(3))
        {
            pos.insert(id.trim_start_matches('n').parse().unwrap(), (x.parse().unwrap(), y.parse().unwrap()));
        }
    }
    (pos, secs)
}

/// Crossings of the orthogonal routes as the console and the web view draw them: a horizontal run
/// of one edge through a vertical run of another.
fn drawn_crossings(l: &meshlens_model::layout::Layout) -> usize {
    let mut h = Vec::new();
    let mut v = Vec::new();
    for e in &l.edges {
        for w in e.points.windows(2) {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            if y0 == y1 && x0 != x1 {
                h.push((x0.min(x1), x0.max(x1), y0, e.edge));
            } else if x0 == x1 && y0 != y1 {
                v.push((x0, y0.min(y1), y0.max(y1), e.edge));
            }
        }
    }
    let mut n = 0;
    for &(xa, xb, y, e1) in &h {
        for &(x, ya, yb, e2) in &v {
            if e1 != e2 && xa < x && x < xb && ya < y && y < yb {
                n += 1;
            }
        }
    }
    n
}

/// A demo mesh file (examples/*/mesh.yaml) as the versioned graph its traffic makes: users to the
/// entry, and each version's calls to every version of the callee.
fn from_mesh(path: &str) -> GraphSnapshot {
    use meshlens_model::graph::{Edge, Node, NodeKind, View};
    let text = std::fs::read_to_string(path).unwrap();
    let mesh: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let ns = mesh["namespace"].as_str().unwrap().to_owned();
    let apps = mesh["apps"].as_mapping().unwrap();
    let versions = |app: &str| -> Vec<String> {
        apps[app]["versions"].as_mapping().unwrap().keys().map(|k| k.as_str().unwrap().to_owned()).collect()
    };
    let node = |id: String, app: &str, version: Option<String>, kind: NodeKind| Node {
        group: version.as_ref().map(|_| format!("{ns}/{app}")),
        id,
        namespace: if kind == NodeKind::User { String::new() } else { ns.clone() },
        app: app.to_owned(),
        version,
        kind,
        cluster: None,
        health: meshlens_model::Health::Healthy,
        inbound: Default::default(),
        outbound: Default::default(),
    };
    let mut nodes = vec![node("user".into(), "user", None, NodeKind::User)];
    let mut edges = Vec::new();
    let edge = |s: String, t: String| Edge {
        id: format!("{s}->{t}"),
        source: s,
        target: t,
        protocol: "http".into(),
        health: meshlens_model::Health::Healthy,
        stats: Default::default(),
    };
    for (app, spec) in apps {
        let app = app.as_str().unwrap();
        for (v, vspec) in spec["versions"].as_mapping().unwrap() {
            let v = v.as_str().unwrap();
            let id = format!("{ns}/{app}/{v}");
            nodes.push(node(id.clone(), app, Some(v.to_owned()), NodeKind::Workload));
            for callee in vspec["calls"].as_sequence().into_iter().flatten() {
                let callee = callee.as_str().unwrap();
                for cv in versions(callee) {
                    edges.push(edge(id.clone(), format!("{ns}/{callee}/{cv}")));
                }
            }
        }
    }
    let entry = mesh["entry"].as_str().unwrap();
    for v in versions(entry) {
        edges.push(edge("user".into(), format!("{ns}/{entry}/{v}")));
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    edges.sort_by(|a, b| a.id.cmp(&b.id));
    edges.dedup_by(|a, b| a.id == b.id);
    GraphSnapshot { revision: 1, generated_at: String::new(), window_seconds: 60, view: View::Versioned, nodes, edges }
}

fn main() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut graphs: Vec<(String, GraphSnapshot)> = ["bookinfo", "online-boutique", "social-network", "train-ticket"]
        .iter()
        .map(|m| ((*m).to_owned(), from_mesh(&format!("{root}/{m}/mesh.yaml"))))
        .collect();
    graphs.extend(vec![
        ("1 ns × 8 apps × 2 versions".into(), mesh(Spec::new(1, 8, 2))),
        ("4 ns × 15 apps × 3 versions (180)".into(), mesh(Spec::new(4, 15, 3))),
        ("10 ns × 30 apps × 1 version (300)".into(), mesh(Spec::new(10, 30, 1))),
        ("10 ns × 100 apps × 3 versions (3,000)".into(), mesh(Spec::new(10, 100, 3))),
    ]);
    println!(
        "| graph | nodes | edges | crossings: meshlens | dot | drawn crossings (meshlens) | layout ms: meshlens | dot |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, g) in graphs {
        let start = Instant::now();
        let l = layout(&g, edge_label);
        let ours_ms = start.elapsed().as_secs_f64() * 1e3;
        let ours = straight_crossings(&l.segments(&g));
        let (theirs, dot_ms) = if g.nodes.len() <= 400 {
            let (pos, secs) = dot_positions(&to_dot(&g));
            let index: BTreeMap<&str, usize> = g.nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
            let segs: Vec<_> = g
                .edges
                .iter()
                .filter(|e| e.source != e.target)
                .filter_map(|e| {
                    Some((*pos.get(index.get(e.source.as_str())?)?, *pos.get(index.get(e.target.as_str())?)?))
                })
                .collect();
            (straight_crossings(&segs).to_string(), format!("{:.0}", secs * 1e3))
        } else {
            ("not run".into(), "not run".into())
        };
        let drawn = drawn_crossings(&l);
        println!(
            "| {name} | {} | {} | {ours} | {theirs} | {drawn} | {ours_ms:.1} | {dot_ms} |",
            g.nodes.len(),
            g.edges.len()
        );
    }
}
