//! The graph layout the console and the web view both draw: left to right by call depth, the
//! versions of an app stacked in one box (Kiali's versioned app graph), edges routed orthogonally
//! through lanes in the gaps between columns, in character cells.
//!
//! It is deterministic (the same graph gives the same layout: columns by breadth-first depth from the
//! callers nothing calls, a callee then moved right of any caller in its column unless the call
//! closes a cycle, as `dot`'s ranks never hold a call) and reduces crossings the way layered layouts do (Sugiyama; Graphviz `dot`
//! orders its ranks so): boxes in a column are kept together by namespace and, within it, ordered
//! by the barycentre of their neighbours in the next column, in sweeps down and up the columns. Only
//! structure moves boxes, never traffic figures, so a live view's boxes stay put while the rates
//! change. It does no IO, so it runs in the browser too.

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
    /// Its row.
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
    /// Column (call depth).
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
    /// One per box drawn (a node, or a namespace's group).
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

/// The text of a node's row: its version inside an app box (titled `app@cluster` in a cluster), its
/// name otherwise (`app@cluster`); escaped for the
/// terminal (`crate::escape`), so widths are what the console draws.
pub fn node_label(n: &Node) -> String {
    let text = match (&n.group, &n.version, &n.cluster) {
        (Some(_), Some(v), _) => v.clone(),
        _ if n.namespace.is_empty() => n.id.clone(),
        // A node of one cluster among several says which.
        (_, _, Some(c)) => format!("{}@{c}", n.app),
        _ => n.app.clone(),
    };
    crate::escape::terminal(&text).into_owned()
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
    // Boxes: an app's versions together; any other node alone. Items are sorted by id. A box is
    // titled by its app, or `ns/app` where another namespace has an app of that name.
    let mut namespaces_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for n in g.nodes.iter().filter(|n| !n.namespace.is_empty() && n.kind != crate::graph::NodeKind::Namespace) {
        namespaces_of.entry(n.app.as_str()).or_default().insert(n.namespace.as_str());
    }
    let ambiguous = |n: &Node| namespaces_of.get(n.app.as_str()).is_some_and(|ns| ns.len() > 1);
    let mut by_id: BTreeMap<String, Item> = BTreeMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let at = n.cluster.as_deref().map(|c| format!("@{c}")).unwrap_or_default();
        let (id, title) = match &n.group {
            Some(group) if ambiguous(n) => (group.clone(), format!("{}/{}{at}", n.namespace, n.app)),
            Some(group) => (group.clone(), format!("{}{at}", n.app)),
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
    let mut pred: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); items.len()];
    let mut has_caller = vec![false; items.len()];
    for &(s, t) in ends.iter().flatten() {
        let (a, b) = (item_of[s], item_of[t]);
        if a != b {
            succ[a].insert(b);
            pred[b].insert(a);
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
    separate_calls_within_a_column(&succ, &has_caller, &mut depth);
    let columns = depth.iter().copied().max().map_or(0, |d| d + 1);
    let order = order_columns(&items, g, &depth, columns, &succ, &pred);

    // Box sizes and column widths.
    // A lone node's row carries its namespace where another namespace has an app of that name.
    let labels: Vec<String> = g
        .nodes
        .iter()
        .map(|n| match &n.group {
            None if n.kind != crate::graph::NodeKind::Namespace && ambiguous(n) => {
                crate::escape::terminal(&format!("{}/{}", n.namespace, n.app)).into_owned()
            }
            _ => node_label(n),
        })
        .collect();
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

    // Place boxes top to bottom in each column, in the order the sweeps found.
    let mut next_y = vec![0u32; columns];
    let mut boxes = Vec::with_capacity(items.len());
    let mut nodes: Vec<Option<NodePlace>> = vec![None; g.nodes.len()];
    for &k in order.iter().flatten() {
        let item = &items[k];
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
    // Rows a horizontal run crosses each gap on, so a label moved off its own row does not sit on
    // another edge's line: a target's row in its gap, a source's row in every gap it runs across,
    // and a back edge's target row in the gaps it runs back through.
    let mut crossed: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); columns];
    for (i, end) in ends.iter().enumerate() {
        let (Some((s, t)), Some((gap, _, _))) = (*end, route[i]) else { continue };
        let (ns, nt) = (&nodes[s], &nodes[t]);
        let (cs, ct) = (ns.column, nt.column);
        crossed[gap].insert(nt.y);
        for rows in crossed.iter_mut().take(gap + 1).skip(cs) {
            rows.insert(ns.y);
        }
        for rows in crossed.iter_mut().take(gap).skip(ct) {
            rows.insert(nt.y);
        }
    }
    // Labels already placed, per gap and side (target side: true), by row.
    let mut placed: BTreeSet<(usize, bool, u32)> = BTreeSet::new();
    let mut label_row = |gap: usize, target_side: bool, row: u32| -> u32 {
        for d in [0i64, 1, -1, 2, -2] {
            let r = i64::from(row) + d;
            let Ok(r) = u32::try_from(r) else { continue };
            if !placed.contains(&(gap, target_side, r)) && (d == 0 || !crossed[gap].contains(&r)) {
                placed.insert((gap, target_side, r));
                return r;
            }
        }
        row
    };
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
        // Two labels at one place (a target with several callers through one gap) move to a free
        // row nearby.
        let label_at = if source_side {
            (gap_start(gap) + 1, label_row(gap, false, src.1))
        } else {
            (gap_start(gap) + 2 + src_label[gap] + lanes[gap], label_row(gap, true, dst.1))
        };
        edges.push(EdgePlace { edge: i, points, label_at, label: edge_labels[i].clone() });
    }
    drop_overlapping_labels(g, &mut edges);
    let width = col_x[columns].max(1);
    let height = next_y.iter().copied().max().unwrap_or(0).saturating_sub(1).max(1);
    Layout { nodes, boxes, edges, width, height }
}

/// Where labels would still overlap (many callers of one target through one gap, more than the
/// free rows nearby), the busier edge keeps its label and the other's is left empty: a label is
/// drawn whole or not at all. Views show the figure elsewhere (the web on hover, both in the panel).
fn drop_overlapping_labels(g: &GraphSnapshot, edges: &mut [EdgePlace]) {
    let mut order: Vec<usize> = (0..edges.len()).collect();
    order.sort_by(|&a, &b| {
        g.edges[edges[b].edge].stats.rps.total_cmp(&g.edges[edges[a].edge].stats.rps).then(a.cmp(&b))
    });
    let mut taken: BTreeMap<u32, Vec<(u32, u32)>> = BTreeMap::new();
    for k in order {
        let e = &mut edges[k];
        let (x, y) = e.label_at;
        let span = (x, x + width(&e.label));
        let row = taken.entry(y).or_default();
        if row.iter().any(|&(a, b)| span.0 <= b && a <= span.1) {
            e.label.clear();
        } else {
            row.push(span);
        }
    }
}

/// Boxes in a strongly connected set at least this large may call each other within a column.
const KNOT: usize = 6;

/// Each box's strongly connected component and the components' sizes (Kosaraju, iterative).
fn strong_components(succ: &[BTreeSet<usize>]) -> (Vec<usize>, Vec<usize>) {
    let n = succ.len();
    let mut pred: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (a, bs) in succ.iter().enumerate() {
        for &b in bs {
            pred[b].push(a);
        }
    }
    // First pass: finish order.
    let mut seen = vec![false; n];
    let mut finished = Vec::with_capacity(n);
    for s in 0..n {
        if seen[s] {
            continue;
        }
        seen[s] = true;
        let mut stack: Vec<(usize, Vec<usize>)> = vec![(s, succ[s].iter().copied().collect())];
        while let Some((k, next)) = stack.last_mut() {
            let k = *k;
            match next.pop() {
                Some(m) if !seen[m] => {
                    seen[m] = true;
                    stack.push((m, succ[m].iter().copied().collect()));
                }
                Some(_) => {}
                None => {
                    finished.push(k);
                    stack.pop();
                }
            }
        }
    }
    // Second pass, on the reversed graph in reverse finish order.
    let mut component = vec![usize::MAX; n];
    let mut size = Vec::new();
    for &s in finished.iter().rev() {
        if component[s] != usize::MAX {
            continue;
        }
        let c = size.len();
        size.push(0);
        let mut stack = vec![s];
        component[s] = c;
        while let Some(k) = stack.pop() {
            size[c] += 1;
            for &m in &pred[k] {
                if component[m] == usize::MAX {
                    component[m] = c;
                    stack.push(m);
                }
            }
        }
    }
    (component, size)
}

/// The calls that close a cycle, found by depth-first search from the boxes nothing calls (then
/// from the rest, in index order).
fn back_edges(succ: &[BTreeSet<usize>], has_caller: &[bool]) -> BTreeSet<(usize, usize)> {
    let n = succ.len();
    // 0 unvisited, 1 on the stack, 2 done.
    let mut state = vec![0u8; n];
    let mut back = BTreeSet::new();
    let starts = (0..n).filter(|&k| !has_caller[k]).chain(0..n);
    for s in starts {
        if state[s] != 0 {
            continue;
        }
        state[s] = 1;
        let mut stack: Vec<(usize, Vec<usize>)> = vec![(s, succ[s].iter().rev().copied().collect())];
        while let Some((k, next)) = stack.last_mut() {
            let k = *k;
            match next.pop() {
                Some(m) if state[m] == 1 => {
                    back.insert((k, m));
                }
                Some(m) if state[m] == 0 => {
                    state[m] = 1;
                    stack.push((m, succ[m].iter().rev().copied().collect()));
                }
                Some(_) => {}
                None => {
                    state[k] = 2;
                    stack.pop();
                }
            }
        }
    }
    back
}

/// Moves a callee one column right of a caller in its own column (checkout and the cart it calls,
/// both one call from the frontend), as often as needed; calls that close a cycle stay.
fn separate_calls_within_a_column(succ: &[BTreeSet<usize>], has_caller: &[bool], depth: &mut [usize]) {
    let back = back_edges(succ, has_caller);
    let (component, size) = strong_components(succ);
    // Inside a large knot of mutual calls every order runs some calls backwards; stacking the knot
    // in the columns breadth-first search gave it keeps it compact instead of a chain one box wide.
    let knotted = |a: usize, b: usize| component[a] == component[b] && size[component[a]] >= KNOT;
    loop {
        let mut moved = false;
        for a in 0..succ.len() {
            for &b in &succ[a] {
                if depth[b] == depth[a] && !back.contains(&(a, b)) && !knotted(a, b) {
                    depth[b] = depth[a] + 1;
                    moved = true;
                }
            }
        }
        if !moved {
            break;
        }
    }
}

/// Sweeps over the columns: boxes in each column grouped by namespace (in name order, boxes outside
/// any namespace last) and, inside a namespace, sorted by the mean position of their neighbours in
/// the column before (downward sweeps) or after (upward); a box with no such neighbour keeps its
/// place. Four rounds of both, then a last downward sweep. Ties keep the previous order, which
/// starts as id order, so the result is deterministic.
fn order_columns(
    items: &[Item],
    g: &GraphSnapshot,
    depth: &[usize],
    columns: usize,
    succ: &[BTreeSet<usize>],
    pred: &[BTreeSet<usize>],
) -> Vec<Vec<usize>> {
    let namespace = |k: usize| items[k].nodes.first().map(|&n| g.nodes[n].namespace.as_str()).unwrap_or("");
    let mut names: Vec<&str> = (0..items.len()).map(namespace).filter(|n| !n.is_empty()).collect();
    names.sort_unstable();
    names.dedup();
    let rank: Vec<usize> = (0..items.len())
        .map(|k| match namespace(k) {
            "" => usize::MAX,
            ns => names.binary_search(&ns).unwrap_or(usize::MAX),
        })
        .collect();
    let mut order: Vec<Vec<usize>> = vec![Vec::new(); columns];
    for k in 0..items.len() {
        order[depth[k]].push(k);
    }
    let mut pos = vec![0f64; items.len()];
    let set_pos = |col: &[usize], pos: &mut [f64]| {
        for (i, &k) in col.iter().enumerate() {
            pos[k] = i as f64;
        }
    };
    for col in &mut order {
        col.sort_by_key(|&k| rank[k]);
        set_pos(col, &mut pos);
    }
    let sweep = |c: usize, neighbours: &[BTreeSet<usize>], from: usize, order: &mut [Vec<usize>], pos: &mut [f64]| {
        let mut keyed: Vec<(usize, f64, f64, usize)> = order[c]
            .iter()
            .map(|&k| {
                let near: Vec<f64> = neighbours[k].iter().filter(|&&n| depth[n] == from).map(|&n| pos[n]).collect();
                let bary = if near.is_empty() { pos[k] } else { near.iter().sum::<f64>() / near.len() as f64 };
                (rank[k], bary, pos[k], k)
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.total_cmp(&b.2)));
        order[c] = keyed.into_iter().map(|(_, _, _, k)| k).collect();
        set_pos(&order[c], pos);
    };
    for round in 0..5 {
        for c in 1..columns {
            sweep(c, pred, c - 1, &mut order, &mut pos);
        }
        if round == 4 {
            break;
        }
        for c in (0..columns.saturating_sub(1)).rev() {
            sweep(c, succ, c + 1, &mut order, &mut pos);
        }
    }
    order
}

/// A straight segment between two points.
pub type Segment = ((f64, f64), (f64, f64));

/// Crossings of straight segments between the rows of each edge's ends: what an ordering of boxes
/// costs the eye, measured the same way for any layout (Graphviz's too) given its node positions.
pub fn straight_crossings(points: &[Segment]) -> usize {
    fn orient(a: (f64, f64), b: (f64, f64), c: (f64, f64)) -> f64 {
        (b.0 - a.0) * (c.1 - a.1) - (b.1 - a.1) * (c.0 - a.0)
    }
    let mut n = 0;
    for (i, &(a, b)) in points.iter().enumerate() {
        for &(c, d) in &points[i + 1..] {
            // Segments sharing an end do not cross.
            if a == c || a == d || b == c || b == d {
                continue;
            }
            let (d1, d2) = (orient(c, d, a), orient(c, d, b));
            let (d3, d4) = (orient(a, b, c), orient(a, b, d));
            if d1 * d2 < 0.0 && d3 * d4 < 0.0 {
                n += 1;
            }
        }
    }
    n
}

impl Layout {
    /// Each edge as a straight segment between the middles of its ends' rows, for
    /// [`straight_crossings`].
    pub fn segments(&self, g: &GraphSnapshot) -> Vec<Segment> {
        let index: BTreeMap<&str, usize> = g.nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
        let at = |id: &str| {
            let p = self.nodes.get(*index.get(id)?)?;
            Some((f64::from(p.x) + f64::from(p.w) / 2.0, f64::from(p.y)))
        };
        g.edges.iter().filter(|e| e.source != e.target).filter_map(|e| Some((at(&e.source)?, at(&e.target)?))).collect()
    }

    /// The place of snapshot node `node`.
    pub fn node(&self, node: usize) -> Option<&NodePlace> {
        self.nodes.get(node)
    }
}

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
