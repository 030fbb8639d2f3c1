//! Text outputs, generic over their sink: the `stat` table (the columns of `linkerd viz stat`), and the
//! graph as a table, Graphviz dot or Mermaid, a kept trace as a waterfall (`meshlens trace`), and a live tap's requests and their `top` table.

use std::io::{self, Write};

use meshlens_model::Stats;
use meshlens_model::api::{TraceBody, TraceSummary, WorkloadRow};
use meshlens_model::escape::{self, dot as quote};
use meshlens_model::graph::{GraphSnapshot, NodeKind};

fn pct(v: Option<f64>) -> String {
    v.map(|p| format!("{p:.2}%")).unwrap_or_else(|| "-".into())
}

fn rps(v: f64) -> String {
    format!("{v:.1}rps")
}

fn ms(s: &Stats, f: impl Fn(&meshlens_model::LatencyMs) -> f64) -> String {
    s.latency_ms.as_ref().map(|l| format_ms(f(l))).unwrap_or_else(|| "-".into())
}

/// Milliseconds the way `linkerd viz stat` prints them: `3ms`, `12ms`, `1.2s` (one definition, in
/// the model, shared with the web view).
pub use meshlens_model::viewstate::format_ms;

/// Writes rows as aligned columns; every cell is escaped for the terminal (names come from span
/// data: no escape sequence or newline of theirs reaches it).
fn table<W: Write>(out: &mut W, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let rows: Vec<Vec<String>> =
        rows.iter().map(|r| r.iter().map(|c| escape::terminal(c).into_owned()).collect()).collect();
    let rows = &rows;
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut W, cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        let mut s = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                s.push_str("   ");
            }
            s.push_str(c);
            if i + 1 < widths.len() {
                s.push_str(&" ".repeat(widths[i].saturating_sub(c.chars().count())));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, &mut header.iter().copied())?;
    for r in rows {
        line(out, &mut r.iter().map(String::as_str))?;
    }
    Ok(())
}

/// `meshlens stat`: one row per workload; `wide` adds inbound/outbound rates, 4xx/5xx and the
/// gRPC codes its callers got.
pub fn write_stat<W: Write>(out: &mut W, rows: &[WorkloadRow], wide: bool) -> io::Result<()> {
    if rows.is_empty() {
        return writeln!(out, "No traffic in the window.");
    }
    let mut header = vec!["NAMESPACE", "APP", "VERSION", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"];
    if wide {
        header.extend(["IN_RPS", "OUT_RPS", "OUT_SUCCESS", "4XX", "5XX", "GRPC"]);
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let s = &r.inbound;
            let mut row = vec![
                r.namespace.clone(),
                r.app.clone(),
                r.version.clone().unwrap_or_else(|| "-".into()),
                pct(s.success_pct),
                rps(s.rps),
                ms(s, |l| l.p50),
                ms(s, |l| l.p95),
                ms(s, |l| l.p99),
            ];
            if wide {
                row.extend([
                    rps(r.inbound.rps),
                    rps(r.outbound.rps),
                    pct(r.outbound.success_pct),
                    r.inbound.codes.c4xx.to_string(),
                    r.inbound.codes.c5xx.to_string(),
                    r.inbound.grpc_line().map_or_else(|| "-".to_owned(), |g| g.replace(" · ", ",")),
                ]);
            }
            row
        })
        .collect();
    table(out, &header, &body)
}

/// `meshlens graph -o table`: one row per edge.
pub fn write_graph_table<W: Write>(out: &mut W, g: &GraphSnapshot) -> io::Result<()> {
    if g.edges.is_empty() {
        return writeln!(out, "No traffic in the window (revision {}).", g.revision);
    }
    let rows: Vec<Vec<String>> = g
        .edges
        .iter()
        .map(|e| {
            let s = &e.stats;
            vec![
                e.source.clone(),
                e.target.clone(),
                e.protocol.clone(),
                pct(s.success_pct),
                rps(s.rps),
                ms(s, |l| l.p50),
                ms(s, |l| l.p99),
                pct(s.mtls_pct),
            ]
        })
        .collect();
    table(out, &["SOURCE", "TARGET", "PROTOCOL", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P99", "MTLS"], &rows)
}

/// `meshlens graph -o dot`: Graphviz, one cluster per app in the versioned view.
pub fn write_dot<W: Write>(out: &mut W, g: &GraphSnapshot) -> io::Result<()> {
    writeln!(out, "digraph meshlens {{")?;
    writeln!(out, "  rankdir=LR;")?;
    writeln!(out, "  node [shape=box, style=rounded];")?;
    let mut groups: std::collections::BTreeMap<&str, Vec<&meshlens_model::Node>> = Default::default();
    for n in &g.nodes {
        groups.entry(n.group.as_deref().unwrap_or("")).or_default().push(n);
    }
    for (i, (group, nodes)) in groups.iter().enumerate() {
        let indent = if group.is_empty() { "  " } else { "    " };
        if !group.is_empty() {
            writeln!(out, "  subgraph cluster_{i} {{")?;
            writeln!(out, "    label={};", quote(group))?;
        }
        for n in nodes {
            let label = match (&n.kind, &n.version) {
                (NodeKind::Workload, Some(v)) if !group.is_empty() => v.clone(),
                _ => n.id.clone(),
            };
            let color = match n.health {
                meshlens_model::Health::Failing => "red",
                meshlens_model::Health::Degraded => "orange",
                meshlens_model::Health::Healthy => "green",
                meshlens_model::Health::Idle => "gray",
            };
            writeln!(out, "{indent}{} [label={}, color={color}];", quote(&n.id), quote(&label))?;
        }
        if !group.is_empty() {
            writeln!(out, "  }}")?;
        }
    }
    for e in &g.edges {
        let label = format!("{:.1}rps {}", e.stats.rps, pct(e.stats.error_pct));
        writeln!(out, "  {} -> {} [label={}];", quote(&e.source), quote(&e.target), quote(&label))?;
    }
    writeln!(out, "}}")
}

/// `meshlens graph -o mermaid`: a Mermaid flowchart, one subgraph per app in the versioned view.
pub fn write_mermaid<W: Write>(out: &mut W, g: &GraphSnapshot) -> io::Result<()> {
    let ids: std::collections::BTreeMap<&str, String> =
        g.nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), format!("n{i}"))).collect();
    let text = escape::mermaid;
    writeln!(out, "flowchart LR")?;
    let mut groups: std::collections::BTreeMap<&str, Vec<&meshlens_model::Node>> = Default::default();
    for n in &g.nodes {
        groups.entry(n.group.as_deref().unwrap_or("")).or_default().push(n);
    }
    for (i, (group, nodes)) in groups.iter().enumerate() {
        if !group.is_empty() {
            writeln!(out, "  subgraph g{i}[\"{}\"]", text(group))?;
        }
        for n in nodes {
            writeln!(out, "    {}[\"{}\"]", ids[n.id.as_str()], text(&n.id))?;
        }
        if !group.is_empty() {
            writeln!(out, "  end")?;
        }
    }
    for e in &g.edges {
        let (Some(s), Some(t)) = (ids.get(e.source.as_str()), ids.get(e.target.as_str())) else { continue };
        writeln!(out, "  {s} -->|\"{:.1}rps {}\"| {t}", e.stats.rps, pct(e.stats.error_pct))?;
    }
    Ok(())
}

/// Width of the waterfall's bar column.
const BAR: usize = 40;

/// A kept trace as a waterfall: each span under its parent, its start and duration, who reported
/// it, its status, and a bar placed on the trace's time line.
pub fn write_trace<W: Write>(out: &mut W, t: &TraceBody) -> io::Result<()> {
    let (start, end) = t.time_line();
    let total_ms = (end - start) as f64 / 1e6;
    let failed = t.spans.iter().filter(|s| s.failed).count();
    writeln!(
        out,
        "trace {}  {} spans  {}  {}",
        t.trace_id,
        t.spans.len(),
        format_ms(total_ms),
        if failed == 0 { "no failures".to_owned() } else { format!("{failed} failed") }
    )?;
    if let Some(link) = &t.link {
        writeln!(out, "{}", escape::terminal(link))?;
    }
    let mut rows = Vec::new();
    for (i, depth) in t.tree_order() {
        let s = &t.spans[i];
        let offset = (s.start_unix_nano - start) as f64 / 1e6;
        let from = ((offset / total_ms) * BAR as f64) as usize;
        let width = (((s.duration_ms / total_ms) * BAR as f64).round() as usize).max(1);
        let from = from.min(BAR - 1);
        let bar = format!("{}{}", " ".repeat(from), "█".repeat(width.min(BAR - from)));
        let status = s.status_text();
        let to = s.peer.as_deref().map(|p| format!(" → {p}")).unwrap_or_default();
        rows.push(vec![
            format_ms(offset),
            format_ms(s.duration_ms),
            format!("{}{} {} {}{to}", "  ".repeat(depth), s.workload, s.kind, s.name),
            format!("{status}{}", if s.failed { " ✗" } else { "" }),
            bar,
        ]);
    }
    table(out, &["START", "DURATION", "SPAN", "STATUS", "TIMELINE"], &rows)
}

/// `meshlens routes`: `linkerd viz routes` columns; with retries in the window (or `wide`), the
/// effective and actual success and rate side by side, as `linkerd viz routes -o wide` shows them.
pub fn write_routes<W: Write>(out: &mut W, body: &meshlens_model::api::RoutesBody, wide: bool) -> io::Result<()> {
    if body.routes.is_empty() {
        return writeln!(out, "No requests to {} in the last {}s.", body.service, body.window_seconds);
    }
    let wide = wide || body.routes.iter().any(|r| r.stats.retries.unwrap_or(0) > 0);
    let mut header = vec!["ROUTE", "SERVICE"];
    if wide {
        header.extend(["EFFECTIVE_SUCCESS", "EFFECTIVE_RPS", "ACTUAL_SUCCESS", "ACTUAL_RPS"]);
    } else {
        header.extend(["SUCCESS", "RPS"]);
    }
    header.extend(["LATENCY_P50", "LATENCY_P95", "LATENCY_P99"]);
    let app = body.service.split_once('/').map_or(body.service.as_str(), |(_, a)| a);
    let rows: Vec<Vec<String>> = body
        .routes
        .iter()
        .map(|r| {
            let s = &r.stats;
            let mut row = vec![r.route.clone(), app.to_owned(), pct(s.success_pct), rps(s.rps)];
            if wide {
                row.extend([pct(r.actual_success_pct), rps(r.actual_rps)]);
            }
            row.extend([ms(s, |l| l.p50), ms(s, |l| l.p95), ms(s, |l| l.p99)]);
            row
        })
        .collect();
    table(out, &header, &rows)
}

/// `meshlens trace` without an id: one row per kept trace.
pub fn write_traces<W: Write>(out: &mut W, traces: &[TraceSummary]) -> io::Result<()> {
    let rows: Vec<Vec<String>> = traces
        .iter()
        .map(|t| {
            vec![
                t.trace_id.clone(),
                format_ms(t.duration_ms),
                t.spans.to_string(),
                if t.failed { "failed".into() } else { "ok".into() },
                t.workloads.join(" → "),
            ]
        })
        .collect();
    table(out, &["TRACE", "DURATION", "SPANS", "RESULT", "WORKLOADS"], &rows)
}

/// `meshlens tap`: one request per line, in `linkerd viz tap`'s `key=value` words (UTC time first):
/// `12:00:01.234 out src=shop/productpage/v1 dst=reviews/v2 :method=GET :path=/reviews/1
/// :status=200 latency=12ms retries=0 route="GET /reviews/{id}" trace=…`. Every field is escaped
/// for the terminal (paths come from requests).
pub fn write_tap_event<W: Write>(out: &mut W, e: &meshlens_model::tap::TapEvent) -> io::Result<()> {
    let esc = |s: &str| escape::terminal(s).into_owned();
    let dst = match &e.destination_version {
        Some(v) => format!("{}/{}", esc(&e.destination), esc(v)),
        None => esc(&e.destination),
    };
    let mut line = format!(
        "{} {:<3} src={} dst={dst} :method={} :path={} :status={}",
        clock(e.time_unix_ms),
        e.direction.short(),
        esc(&e.source),
        esc(&e.method),
        esc(&e.path),
        e.status
    );
    if let Some(g) = e.grpc_status {
        line.push_str(&format!(" grpc-status={g}"));
    }
    line.push_str(&format!(" latency={} retries={}", format_ms(e.latency_ms), e.retries));
    if let Some(r) = &e.route {
        line.push_str(&format!(" route={:?}", esc(r)));
    }
    if !e.trace_id.is_empty() {
        line.push_str(&format!(" trace={}{}", e.trace_id, if e.sampled { "" } else { " (not sampled)" }));
    }
    writeln!(out, "{line}")
}

/// A time of day in UTC to the millisecond, `12:00:01.234`.
pub fn clock(unix_ms: u64) -> String {
    let t = unix_ms % 86_400_000;
    format!("{:02}:{:02}:{:02}.{:03}", t / 3_600_000, t / 60_000 % 60, t / 1000 % 60, t % 1000)
}

/// `meshlens top`: `linkerd viz top`'s columns, most requests first, at most `limit` rows.
pub fn write_top<W: Write>(out: &mut W, top: &meshlens_model::tap::Top, limit: usize) -> io::Result<()> {
    let rows: Vec<Vec<String>> = top
        .rows()
        .into_iter()
        .take(limit)
        .map(|r| {
            vec![
                r.source.clone(),
                r.destination.clone(),
                r.method.clone(),
                r.path.clone(),
                r.count.to_string(),
                format_ms(r.best_ms),
                format_ms(r.worst_ms),
                format_ms(r.last_ms),
                format!("{:.2}%", r.success_pct()),
            ]
        })
        .collect();
    let header = ["SOURCE", "DESTINATION", "METHOD", "PATH", "COUNT", "BEST", "WORST", "LAST", "SUCCESS_RATE"];
    table(out, &header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlens_model::graph::{Edge, Node, View};
    use meshlens_model::{Health, LatencyMs};

    fn stats(rps: f64, err: f64) -> Stats {
        let mut s = Stats {
            requests: 100,
            errors: err as u64,
            rps,
            latency_ms: Some(LatencyMs { p50: 3.0, p95: 12.0, p99: 1500.0, max: 2000.0 }),
            ..Stats::default()
        };
        s.set_percentages(0);
        s
    }

    fn graph() -> GraphSnapshot {
        let node = |id: &str, app: &str, v: Option<&str>| Node {
            id: id.into(),
            namespace: "default".into(),
            app: app.into(),
            version: v.map(Into::into),
            kind: NodeKind::Workload,
            cluster: None,
            group: v.map(|_| format!("default/{app}")),
            health: Health::Healthy,
            inbound: stats(2.0, 0.0),
            outbound: stats(2.0, 0.0),
        };
        GraphSnapshot {
            revision: 7,
            generated_at: String::new(),
            window_seconds: 60,
            view: View::Versioned,
            nodes: vec![node("default/a/v1", "a", Some("v1")), node("default/b/v2", "b", Some("v2"))],
            edges: vec![Edge {
                id: "default/a/v1->default/b/v2".into(),
                source: "default/a/v1".into(),
                target: "default/b/v2".into(),
                protocol: "http".into(),
                health: Health::Degraded,
                stats: stats(2.0, 5.0),
            }],
        }
    }

    #[test]
    fn stat_table_has_linkerd_columns() {
        let rows = vec![WorkloadRow {
            namespace: "default".into(),
            app: "reviews".into(),
            version: Some("v3".into()),
            cluster: None,
            id: "default/reviews/v3".into(),
            health: Health::Degraded,
            inbound: stats(12.25, 5.0),
            outbound: Stats::default(),
        }];
        let mut out = Vec::new();
        write_stat(&mut out, &rows, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAMESPACE   APP       VERSION   SUCCESS   RPS       LATENCY_P50   LATENCY_P95   LATENCY_P99"
        );
        assert_eq!(lines[1], "default     reviews   v3        95.00%    12.2rps   3.0ms         12ms          1.5s");
        let mut out = Vec::new();
        write_stat(&mut out, &rows, true).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .ends_with("IN_RPS    OUT_RPS   OUT_SUCCESS   4XX   5XX   GRPC")
        );
    }

    #[test]
    fn dot_and_mermaid_name_every_edge() {
        let g = graph();
        let mut out = Vec::new();
        write_dot(&mut out, &g).unwrap();
        let dot = String::from_utf8(out).unwrap();
        assert!(dot.contains("subgraph cluster_0"), "{dot}");
        assert!(dot.contains("\"default/a/v1\" -> \"default/b/v2\" [label=\"2.0rps 5.00%\"];"), "{dot}");
        let mut out = Vec::new();
        write_mermaid(&mut out, &g).unwrap();
        let m = String::from_utf8(out).unwrap();
        assert!(m.starts_with("flowchart LR"));
        assert!(m.contains("n0 -->|\"2.0rps 5.00%\"| n1"), "{m}");
        let mut out = Vec::new();
        write_graph_table(&mut out, &g).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("default/a/v1   default/b/v2   http"));
    }
}
