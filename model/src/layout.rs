//! The graph layout the console and the web view both draw: left to right by call depth, the
//! versions of an app stacked in one box (Kiali's versioned app graph), edges routed orthogonally
//! through lanes in the gaps between columns, in character cells.
//!
//! It is deterministic (the same graph gives the same layout: columns by breadth-first depth from the
//! callers nothing calls, boxes in a column by id) and stable: traffic on a new edge between boxes
//! that already sit in successive columns moves nothing. It does no IO, so it runs in the browser too.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::graph::{Edge, GraphSnapshot, Node};

/// A node's place: one row inside its box.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlace {
    /// Index into the snapshot's nodes.
    pub node: usize,
    /// Column (call depth).
    pub column: usize,
    /// Its row, left and right ends (the box's inner width).
    pub x: u32,
    /// Row.
    pub y: u32,
    /// Inner width.
    pub w: u32,
    /// The text of the row.
    pub label: String,
}

/// A box: an app with its versions, or a lone node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoxPlace {
    /// The group id (`ns/app`) or the node id.
    pub id: String,
    /// Title on the top border (the app), empty for a lone node.
    pub title: String,
    /// Left column of the border.
    pub x: u32,
    /// Top row of the border.
    pub y: u32,
    /// Width including borders.
    pub w: u32,
    /// Height including borders.
    pub h: u32,
    /// Column.
    pub column: usize,
}

/// An edge's route and label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgePlace {
    /// Index into the snapshot's edges.
    pub edge: usize,
    /// Corner points of the orthogonal route, from just right of the source to just left of the
    /// target (or a short stub for a self call).
    pub points: Vec<(u32, u32)>,
    /// Where the label starts.
    pub label_at: (u32, u32),
    /// The label.
    pub label: String,
}

/// A laid-out graph, in character cells.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// One per snapshot node.
    pub nodes: Vec<NodePlace>,
    /// Boxes.
    pub boxes: Vec<BoxPlace>,
    /// One per snapshot edge.
    pub edges: Vec<EdgePlace>,
    /// Width of everything.
    pub width: u32,
    /// Height of everything.
    pub height: u32,
}

/// The short edge label: requests per second and, when any, error percent (`12/s 4.5%`).
pub fn edge_label(e: &Edge) -> String {
    let rps = e.stats.rps;
    let rate = if rps >= 10.0 {
        format!("{rps:.0}/s")
    } else if rps >= 0.1 || rps == 0.0 {
        format!("{rps:.1}/s")
    } else {
        format!("{rps:.2}/s")
    };
    let err = e.stats.error_pct.unwrap_or(0.0);
    if err <= 0.0 {
        rate
    } else if err >= 10.0 {
        format!("{rate} {err:.0}%")
    } else {
        format!("{rate} {err:.1}%")
    }
}

/// The text of a node's row: its version inside an app box, its name otherwise.
pub fn node_label(n: &Node) -> String {
    match (&n.group, &n.version) {
        (Some(_), Some(v)) => v.clone(),
        _ if n.namespace.is_empty() => n.id.clone(),
        _ => n.app.clone(),
    }
}

/// Cells a label takes in a terminal: pictographs (the console's 🔒) take two.
fn width(s: &str) -> u32 {
    s.chars().map(|c| if (c as u32) >= 0x1F000 { 2 } else { 1 }).sum()
}

struct Item {
    id: String,
    title: String,
    nodes: Vec<usize>,
}

/// Lays out `g`; `label` gives each edge's label.
pub fn layout(g: &GraphSnapshot, label: impl Fn(&Edge) -> String) -> Layout {
    // Boxes: an app's versions together; any other node alone. Items are sorted by id.
    let mut by_id: BTreeMap<String, Item> = BTreeMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let (id, title) = match &n.group {
            Some(group) => (group.clone(), n.app.clone()),
            None => (n.id.clone(), String::new()),
        };
        by_id.entry(id.clone()).or_insert_with(|| Item { id, title, nodes: Vec::new() }).nodes.push(i);
    }
    let items: Vec<Item> = by_id.into_values().collect();
    let mut item_of = vec![0usize; g.nodes.len()];
    for (k, item) in items.iter().enumerate() {
        for &n in &item.nodes {
            item_of[n] = k;
        }
    }
    let node_index: BTreeMap<&str, usize> = g.nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
    let ends: Vec<Option<(usize, usize)>> = g
        .edges
        .iter()
        .map(|e| Some((*node_index.get(e.source.as_str())?, *node_index.get(e.target.as_str())?)))
        .collect();
    let mut succ: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); items.len()];
    let mut has_caller = vec![false; items.len()];
    for &(s, t) in ends.iter().flatten() {
        let (a, b) = (item_of[s], item_of[t]);
        if a != b {
            succ[a].insert(b);
            has_caller[b] = true;
        }
    }
    // Columns: breadth-first depth from the items nothing calls; what only cycles reach starts anew.
    let mut depth = vec![usize::MAX; items.len()];
    let mut queue = VecDeque::new();
    let seed = |k: usize, depth: &mut Vec<usize>, queue: &mut VecDeque<usize>| {
        if depth[k] == usize::MAX {
            depth[k] = 0;
            queue.push_back(k);
        }
    };
    for k in (0..items.len()).filter(|&k| !has_caller[k]) {
        seed(k, &mut depth, &mut queue);
    }
    loop {
        while let Some(k) = queue.pop_front() {
            for &n in &succ[k] {
                if depth[n] == usize::MAX {
                    depth[n] = depth[k] + 1;
                    queue.push_back(n);
                }
            }
        }
        match (0..items.len()).find(|&k| depth[k] == usize::MAX) {
            Some(k) => seed(k, &mut depth, &mut queue),
            None => break,
        }
    }
    let columns = depth.iter().copied().max().map_or(0, |d| d + 1);

    // Box sizes and column widths.
    let labels: Vec<String> = g.nodes.iter().map(node_label).collect();
    let inner: Vec<u32> = items
        .iter()
        .map(|it| it.nodes.iter().map(|&n| width(&labels[n]) + 2).chain([width(&it.title)]).max().unwrap_or(1))
        .collect();
    let mut col_w = vec![0u32; columns];
    for (k, &d) in depth.iter().enumerate() {
        col_w[d] = col_w[d].max(inner[k] + 2);
    }

    // Which gap each edge's vertical run uses, which side its label goes, and the gaps' widths.
    let edge_labels: Vec<String> = g.edges.iter().map(&label).collect();
    let mut in_deg = vec![0u32; g.nodes.len()];
    let mut out_deg = vec![0u32; g.nodes.len()];
    for &(s, t) in ends.iter().flatten() {
        out_deg[s] += 1;
        in_deg[t] += 1;
    }
    // Gap `c` is the one right of column `c`.
    let mut lanes = vec![0u32; columns];
    let mut src_label = vec![0u32; columns];
    let mut tgt_label = vec![0u32; columns];
    let mut route: Vec<Option<(usize, u32, bool)>> = vec![None; g.edges.len()];
    for (i, end) in ends.iter().enumerate() {
        let Some((s, t)) = *end else { continue };
        if s == t {
            continue;
        }
        let (cs, ct) = (depth[item_of[s]], depth[item_of[t]]);
        // Forward edges turn in the gap before the target; others in the gap after the source.
        let gap = if ct > cs { ct - 1 } else { cs };
        let source_side = in_deg[t] > 1 && out_deg[s] == 1;
        let lw = width(&edge_labels[i]) + 1;
        if source_side {
            src_label[gap] = src_label[gap].max(lw);
        } else {
            tgt_label[gap] = tgt_label[gap].max(lw);
        }
        route[i] = Some((gap, lanes[gap], source_side));
        lanes[gap] += 1;
    }
    // Two cells of margin on the left, where edges calling back into the first column end.
    let mut col_x = vec![2u32; columns + 1];
    for c in 0..columns {
        let gap = if c + 1 < columns || lanes[c] > 0 { 2 + src_label[c] + lanes[c] + tgt_label[c] + 1 } else { 0 };
        col_x[c + 1] = col_x[c] + col_w[c] + gap;
    }

    // Place boxes top to bottom in each column, in id order.
    let mut next_y = vec![0u32; columns];
    let mut boxes = Vec::with_capacity(items.len());
    let mut nodes: Vec<Option<NodePlace>> = vec![None; g.nodes.len()];
    for (k, item) in items.iter().enumerate() {
        let c = depth[k];
        let (x, y) = (col_x[c], next_y[c]);
        let h = item.nodes.len() as u32 + 2;
        boxes.push(BoxPlace { id: item.id.clone(), title: item.title.clone(), x, y, w: col_w[c], h, column: c });
        for (row, &n) in item.nodes.iter().enumerate() {
            nodes[n] = Some(NodePlace {
                node: n,
                column: c,
                x: x + 1,
                y: y + 1 + row as u32,
                w: col_w[c] - 2,
                label: labels[n].clone(),
            });
        }
        next_y[c] = y + h + 1;
    }
    let nodes: Vec<NodePlace> = nodes.into_iter().flatten().collect();

    // Routes: right of the source, along to the lane, up or down, along to the left of the target.
    let gap_start = |c: usize| col_x[c] + col_w[c];
    let mut edges = Vec::with_capacity(g.edges.len());
    for (i, end) in ends.iter().enumerate() {
        let Some((s, t)) = *end else { continue };
        let (ns, nt) = (&nodes[s], &nodes[t]);
        let src = (ns.x + ns.w + 1, ns.y);
        let Some((gap, lane, source_side)) = route[i] else {
            // A self call: a stub right of the node with the label after it.
            edges.push(EdgePlace {
                edge: i,
                points: vec![src, (src.0 + 1, src.1)],
                label_at: (src.0 + 2, src.1),
                label: edge_labels[i].clone(),
            });
            continue;
        };
        let lane_x = gap_start(gap) + 1 + src_label[gap] + lane;
        let dst = (nt.x.saturating_sub(2), nt.y);
        let points = vec![src, (lane_x, src.1), (lane_x, dst.1), dst];
        // Target-side labels sit right of every lane of the gap, so no lane runs through them.
        let label_at = if source_side {
            (gap_start(gap) + 1, src.1)
        } else {
            (gap_start(gap) + 2 + src_label[gap] + lanes[gap], dst.1)
        };
        edges.push(EdgePlace { edge: i, points, label_at, label: edge_labels[i].clone() });
    }
    let width = col_x[columns].max(1);
    let height = next_y.iter().copied().max().unwrap_or(0).saturating_sub(1).max(1);
    Layout { nodes, boxes, edges, width, height }
}

impl Layout {
    /// The place of snapshot node `node`.
    pub fn node(&self, node: usize) -> Option<&NodePlace> {
        self.nodes.get(node)
    }
}

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
