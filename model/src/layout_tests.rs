//! Layout properties: nothing overlaps, every edge is drawn between its ends, the same graph gives
//! the same layout, and new traffic between successive columns moves nothing.

use super::*;
use crate::graph::{Edge, GraphSnapshot, Node, NodeKind, View};
use crate::stats::{Health, Stats};

fn node(id: &str) -> Node {
    let parts: Vec<&str> = id.split('/').collect();
    let (namespace, app, version, group, kind) = match parts.as_slice() {
        [ns, app, v] => {
            (ns.to_string(), app.to_string(), Some(v.to_string()), Some(format!("{ns}/{app}")), NodeKind::Workload)
        }
        _ => (String::new(), id.to_owned(), None, None, NodeKind::User),
    };
    Node {
        id: id.into(),
        namespace,
        app,
        version,
        kind,
        cluster: None,
        group,
        health: Health::Healthy,
        inbound: Stats::default(),
        outbound: Stats::default(),
    }
}

fn edge(s: &str, t: &str, rps: f64) -> Edge {
    let stats = Stats { rps, ..Stats::default() };
    Edge {
        id: format!("{s}->{t}"),
        source: s.into(),
        target: t.into(),
        protocol: "http".into(),
        health: Health::Healthy,
        stats,
    }
}

/// Bookinfo, as the demo shows it.
pub(super) fn bookinfo() -> GraphSnapshot {
    let ids =
        ["user", "b/productpage/v1", "b/details/v1", "b/reviews/v1", "b/reviews/v2", "b/reviews/v3", "b/ratings/v1"];
    let mut nodes: Vec<Node> = ids.iter().map(|i| node(i)).collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut edges = vec![
        edge("user", "b/productpage/v1", 20.0),
        edge("b/productpage/v1", "b/details/v1", 20.0),
        edge("b/productpage/v1", "b/reviews/v1", 6.6),
        edge("b/productpage/v1", "b/reviews/v2", 6.7),
        edge("b/productpage/v1", "b/reviews/v3", 6.7),
        edge("b/reviews/v2", "b/ratings/v1", 6.7),
        edge("b/reviews/v3", "b/ratings/v1", 6.7),
    ];
    edges.sort_by(|a, b| a.id.cmp(&b.id));
    GraphSnapshot { revision: 1, generated_at: String::new(), window_seconds: 60, view: View::Versioned, nodes, edges }
}

fn overlaps(a: &BoxPlace, b: &BoxPlace) -> bool {
    a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h
}

fn check(g: &GraphSnapshot, l: &Layout) {
    for (i, a) in l.boxes.iter().enumerate() {
        for b in &l.boxes[i + 1..] {
            assert!(!overlaps(a, b), "{a:?} overlaps {b:?}");
        }
        assert!(a.x + a.w <= l.width && a.y + a.h <= l.height + 1, "{a:?} outside {}x{}", l.width, l.height);
    }
    assert_eq!(l.nodes.len(), g.nodes.len());
    assert_eq!(l.edges.len(), g.edges.len(), "every edge is drawn");
    for p in &l.edges {
        let e = &g.edges[p.edge];
        let (s, t) = (
            l.node(g.nodes.iter().position(|n| n.id == e.source).unwrap()).unwrap(),
            l.node(g.nodes.iter().position(|n| n.id == e.target).unwrap()).unwrap(),
        );
        let first = p.points[0];
        assert_eq!(first, (s.x + s.w + 1, s.y), "{} starts right of its source", e.id);
        if e.source != e.target {
            assert_eq!(*p.points.last().unwrap(), (t.x - 2, t.y), "{} ends left of its target", e.id);
            for w in p.points.windows(2) {
                assert!(w[0].0 == w[1].0 || w[0].1 == w[1].1, "{} is orthogonal", e.id);
            }
        }
    }
    let labels: Vec<(u32, u32, u32)> = l
        .edges
        .iter()
        .filter(|p| !p.label.is_empty())
        .map(|p| (p.label_at.1, p.label_at.0, p.label_at.0 + p.label.chars().count() as u32))
        .collect();
    for (i, a) in labels.iter().enumerate() {
        for b in &labels[i + 1..] {
            assert!(a.0 != b.0 || a.2 < b.1 || b.2 < a.1, "labels overlap: {a:?} {b:?}");
        }
    }
}

#[test]
fn bookinfo_reads_left_to_right_in_80_columns() {
    let g = bookinfo();
    let l = layout(&g, edge_label);
    check(&g, &l);
    let column = |id: &str| l.nodes[g.nodes.iter().position(|n| n.id == id).unwrap()].column;
    assert_eq!(
        ["user", "b/productpage/v1", "b/details/v1", "b/reviews/v1", "b/reviews/v3", "b/ratings/v1"].map(column),
        [0, 1, 2, 2, 2, 3]
    );
    let reviews = l.boxes.iter().find(|b| b.id == "b/reviews").unwrap();
    assert_eq!((reviews.title.as_str(), reviews.h), ("reviews", 5), "three versions in one box");
    assert!(l.width <= 80 && l.height <= 20, "{}x{}", l.width, l.height);
    let user = g.edges.iter().position(|e| e.source == "user").unwrap();
    assert_eq!(l.edges.iter().find(|p| p.edge == user).map(|p| p.label.as_str()), Some("20/s"));
}

#[test]
fn the_same_graph_gives_the_same_layout() {
    let g = bookinfo();
    assert_eq!(layout(&g, edge_label), layout(&g.clone(), edge_label));
}

#[test]
fn new_traffic_between_successive_columns_moves_nothing() {
    let g = bookinfo();
    let before = layout(&g, edge_label);
    let mut g2 = g.clone();
    g2.edges.push(edge("b/reviews/v1", "b/ratings/v1", 1.0));
    let after = layout(&g2, edge_label);
    check(&g2, &after);
    assert_eq!(
        before.boxes.iter().map(|b| (&b.id, b.y, b.column)).collect::<Vec<_>>(),
        after.boxes.iter().map(|b| (&b.id, b.y, b.column)).collect::<Vec<_>>()
    );
    assert_eq!(
        before.nodes.iter().map(|n| n.y).collect::<Vec<_>>(),
        after.nodes.iter().map(|n| n.y).collect::<Vec<_>>()
    );
}

#[test]
fn a_large_graph_has_no_overlaps_and_every_edge() {
    // 1,000 nodes in 100 apps of 10 versions, calling forward, backward and themselves.
    let mut nodes = Vec::new();
    for a in 0..100 {
        for v in 0..10 {
            nodes.push(node(&format!("ns/app{a:03}/v{v}")));
        }
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut edges = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut x = 7u64;
    while edges.len() < 3000 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let (s, t) = ((x >> 33) as usize % 1000, (x >> 13) as usize % 1000);
        if seen.insert((s, t)) {
            edges.push(edge(&nodes[s].id, &nodes[t].id, (x % 1000) as f64 / 10.0));
        }
    }
    let g = GraphSnapshot { nodes, edges, ..GraphSnapshot::default() };
    let l = layout(&g, edge_label);
    check(&g, &l);
}

#[test]
fn labels_are_short() {
    let mut e = edge("a", "b", 12.34);
    assert_eq!(edge_label(&e), "12/s");
    e.stats.rps = 0.25;
    e.stats.error_pct = Some(4.5);
    assert_eq!(edge_label(&e), "0.2/s 4.5%");
    e.stats.error_pct = Some(25.0);
    assert_eq!(edge_label(&e), "0.2/s 25%");
}

/// Ordering by neighbours' barycentres, namespaces kept together, crosses fewer edges than the id
/// order it starts from, on a 180-node mesh (the figures against Graphviz are in PERFORMANCE.md).
#[test]
fn sweeps_cross_fewer_edges_than_id_order_and_keep_namespaces_together() {
    let g = crate::synth::mesh(crate::synth::Spec::new(4, 15, 3));
    let l = layout(&g, edge_label);
    check(&g, &l);
    let ours = straight_crossings(&l.segments(&g));
    // The id order: every box of a column in id order, placed as the layout places them.
    let mut by_id = l.clone();
    let mut columns: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, b) in l.boxes.iter().enumerate() {
        columns.entry(b.column).or_default().push(i);
    }
    for members in columns.values() {
        let mut sorted = members.clone();
        sorted.sort_by(|&a, &b| l.boxes[a].id.cmp(&l.boxes[b].id));
        let mut y = 0;
        for &i in &sorted {
            let dy = y as i64 - l.boxes[i].y as i64;
            for n in by_id.nodes.iter_mut() {
                let p = &l.nodes[n.node];
                let inside = |b: &BoxPlace| p.x > b.x && p.x < b.x + b.w && p.y > b.y && p.y < b.y + b.h;
                if inside(&l.boxes[i]) {
                    n.y = (p.y as i64 + dy) as u32;
                }
            }
            y += l.boxes[i].h + 1;
        }
    }
    let id_order = straight_crossings(&by_id.segments(&g));
    assert!(ours < id_order, "{ours} crossings against {id_order} in id order");
    // Within each column a namespace's boxes are contiguous.
    for members in columns.values() {
        let mut sorted = members.clone();
        sorted.sort_by_key(|&i| l.boxes[i].y);
        let ns: Vec<&str> = sorted.iter().map(|&i| l.boxes[i].id.split('/').next().unwrap_or("")).collect();
        let mut seen = std::collections::BTreeSet::new();
        for w in ns.windows(2) {
            if w[0] != w[1] {
                assert!(seen.insert(w[0]), "namespace {} split in a column: {ns:?}", w[0]);
            }
        }
    }
}

#[test]
fn a_box_title_carries_its_namespace_where_the_app_name_is_ambiguous() {
    let mut g = bookinfo();
    g.nodes.push(node("c/reviews/v1"));
    g.nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let l = layout(&g, edge_label);
    let titles: BTreeSet<&str> = l.boxes.iter().map(|b| b.title.as_str()).collect();
    assert!(titles.contains("b/reviews") && titles.contains("c/reviews"), "{titles:?}");
    assert!(titles.contains("productpage"), "unambiguous names stay short: {titles:?}");
}

/// In the app view nodes stand alone, with no box title: their rows carry the namespace instead.
#[test]
fn a_lone_node_row_carries_its_namespace_where_the_app_name_is_ambiguous() {
    let app = |id: &str| {
        let (ns, a) = id.split_once('/').unwrap_or(("", id));
        Node { namespace: ns.into(), app: a.into(), kind: NodeKind::App, ..node(id) }
    };
    let nodes = vec![app("b/reviews"), app("c/reviews"), app("c/web")];
    let edges = vec![edge("c/web", "b/reviews", 1.0), edge("c/web", "c/reviews", 1.0)];
    let g =
        GraphSnapshot { revision: 1, generated_at: String::new(), window_seconds: 60, view: View::App, nodes, edges };
    let l = layout(&g, edge_label);
    let rows: BTreeSet<&str> = l.nodes.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(rows, BTreeSet::from(["b/reviews", "c/reviews", "web"]));
}

/// Online Boutique's shape: the frontend calls checkout and the cart, and checkout calls the cart
/// too. The cart goes right of checkout, not beside it; a call that closes a cycle may stay.
#[test]
fn no_call_runs_within_a_column_unless_it_closes_a_cycle() {
    let ids = ["user", "o/frontend/v1", "o/checkout/v1", "o/cart/v1", "o/redis/v1", "o/a/v1", "o/b/v1"];
    let mut nodes: Vec<Node> = ids.iter().map(|i| node(i)).collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut edges = vec![
        edge("user", "o/frontend/v1", 1.0),
        edge("o/frontend/v1", "o/checkout/v1", 1.0),
        edge("o/frontend/v1", "o/cart/v1", 1.0),
        edge("o/checkout/v1", "o/cart/v1", 1.0),
        edge("o/cart/v1", "o/redis/v1", 1.0),
        edge("o/frontend/v1", "o/a/v1", 1.0),
        edge("o/frontend/v1", "o/b/v1", 1.0),
        edge("o/a/v1", "o/b/v1", 1.0),
        edge("o/b/v1", "o/a/v1", 1.0),
    ];
    edges.sort_by(|a, b| a.id.cmp(&b.id));
    let g = GraphSnapshot { nodes, edges, ..GraphSnapshot::default() };
    let l = layout(&g, edge_label);
    check(&g, &l);
    let column = |id: &str| l.nodes[g.nodes.iter().position(|n| n.id == id).unwrap()].column;
    assert_eq!(["o/frontend/v1", "o/checkout/v1", "o/cart/v1", "o/redis/v1"].map(column), [1, 2, 3, 4]);
    // a and b call each other: one of the two calls goes forward, the other back.
    assert_ne!(column("o/a/v1"), column("o/b/v1"));
}

/// Two callers of one target through one gap (Online Boutique's frontend and checkout, both calling
/// the cart): their labels do not overlap.
#[test]
fn labels_at_a_shared_target_do_not_overlap() {
    let ids = ["user", "o/frontend/v1", "o/checkout/v1", "o/cart/v1", "o/currency/v1", "o/ship/v1"];
    let mut nodes: Vec<Node> = ids.iter().map(|i| node(i)).collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut edges = vec![edge("user", "o/frontend/v1", 1.0), edge("o/frontend/v1", "o/checkout/v1", 1.0)];
    for t in ["o/cart/v1", "o/currency/v1", "o/ship/v1"] {
        edges.push(edge("o/frontend/v1", t, 9.8));
        edges.push(edge("o/checkout/v1", t, 9.8));
    }
    edges.sort_by(|a, b| a.id.cmp(&b.id));
    let g = GraphSnapshot { nodes, edges, ..GraphSnapshot::default() };
    let l = layout(&g, edge_label);
    check(&g, &l);
    let spans: Vec<(u32, u32, u32)> =
        l.edges.iter().map(|e| (e.label_at.1, e.label_at.0, e.label_at.0 + width(&e.label))).collect();
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            assert!(a.0 != b.0 || a.2 <= b.1 || b.2 <= a.1, "labels {a:?} and {b:?} overlap: {:?}", l.edges);
        }
    }
    // And no label sits on another edge's line (only on its own, or on a free row); edges from one
    // source share their first run, which is one line.
    for e in &l.edges {
        let (x, y) = e.label_at;
        for other in l.edges.iter().filter(|o| o.edge != e.edge && o.points[0] != e.points[0]) {
            for w in other.points.windows(2) {
                let ((x0, y0), (x1, y1)) = (w[0], w[1]);
                let on_run = y0 == y1 && y0 == y && x0.min(x1) < x + width(&e.label) && x < x0.max(x1);
                assert!(
                    !on_run || other.points.last().map(|p| p.1) == Some(y) && e.points.last().map(|p| p.1) == Some(y),
                    "label of edge {} {:?} lies on edge {}'s run {:?}",
                    e.edge,
                    e,
                    other.edge,
                    other.points
                );
            }
        }
    }
}
