//! Console benchmarks (criterion; `cargo bench -p meshlens-console --features fixture`): the graph
//! layout plus one frame, for bookinfo, for 1,000 nodes and 3,000 edges, and for a synthetic
//! 10,000-node mesh of 10 namespaces (goal < 16 ms, one frame at 60 Hz). The frame is drawn on ratatui's `TestBackend` at 160×48, so terminal IO is left out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use meshlens_console::bench::{Action, App, draw};
use meshlens_console::fixture::bookinfo;
use meshlens_model::graph::{Edge, GraphSnapshot, Node, NodeKind};
use meshlens_model::{Health, Stats};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

/// 1,000 workloads (100 apps × 10 versions) and 3,000 edges between them, from a fixed seed.
fn large() -> GraphSnapshot {
    let mut nodes: Vec<Node> = (0..1000)
        .map(|i| {
            let (app, v) = (i / 10, i % 10);
            Node {
                id: format!("ns/app{app:03}/v{v}"),
                namespace: "ns".into(),
                app: format!("app{app:03}"),
                version: Some(format!("v{v}")),
                kind: NodeKind::Workload,
                cluster: None,
                group: Some(format!("ns/app{app:03}")),
                health: Health::Healthy,
                inbound: Stats::default(),
                outbound: Stats::default(),
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut seen = std::collections::BTreeSet::new();
    let mut edges = Vec::new();
    let mut x = 11u64;
    while edges.len() < 3000 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        // Mostly forward calls (to a later app), as real meshes are mostly layered.
        let s = (x >> 33) as usize % 1000;
        let t = ((s / 10 + 1 + (x >> 20) as usize % 20).min(99)) * 10 + (x >> 8) as usize % 10;
        if s / 10 != t / 10 && seen.insert((s, t)) {
            let stats = Stats { rps: (x % 1000) as f64 / 10.0, ..Stats::default() };
            edges.push(Edge {
                id: format!("{}->{}", nodes[s].id, nodes[t].id),
                source: nodes[s].id.clone(),
                target: nodes[t].id.clone(),
                protocol: "http".into(),
                health: Health::Healthy,
                stats,
            });
        }
    }
    edges.sort_by(|a, b| a.id.cmp(&b.id));
    GraphSnapshot { nodes, edges, ..GraphSnapshot::default() }
}

fn layout_and_frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("layout_and_frame");
    let ten_thousand = meshlens_model::synth::mesh(meshlens_model::synth::Spec::new(10, 334, 3));
    for (name, graph) in [("bookinfo", bookinfo()), ("1000x3000", large()), ("synth_10000", ten_thousand)] {
        let mut terminal = Terminal::new(TestBackend::new(160, 48)).unwrap();
        let mut app = App::new("http://127.0.0.1:7420");
        g.bench_function(name, |b| {
            b.iter(|| {
                app.update(Action::Graph { generation: 0, graph: Box::new(graph.clone()) });
                terminal.draw(|f| draw(f, &mut app)).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, layout_and_frame);
criterion_main!(benches);
