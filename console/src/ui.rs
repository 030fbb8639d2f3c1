//! Drawing the state: [`draw`] lays out the screen (title, the graph or the workloads table, the
//! detail pane, the status line, overlays); each panel is a function of the [`App`] only, so
//! screens render the same on a real terminal and on ratatui's `TestBackend`.

use meshlens_model::viewstate::format_pct as pct;
use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout as Split, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap};

use meshlens_model::graph::Edge;
use meshlens_model::{Health, Stats};

use crate::app::{App, COLUMNS, Connection, Overlay};
use crate::text::format_ms;
use meshlens_model::viewstate::Page;

/// The colour of a health.
pub(crate) fn health_color(h: Health) -> Color {
    match h {
        Health::Idle => Color::DarkGray,
        Health::Healthy => Color::Green,
        Health::Degraded => Color::Yellow,
        Health::Failing => Color::Red,
    }
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &mut App) {
    let area = frame.area();
    app.width = area.width;
    let [title, body, status] =
        Split::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(1)]).areas(area);
    draw_title(frame, app, title);
    let detail_width = crate::app::detail_width(area.width);
    let (main, side) = if app.detail_visible(area.width) && app.state.page == Page::Graph {
        let [m, s] = Split::horizontal([Constraint::Min(20), Constraint::Length(detail_width)]).areas(body);
        (m, Some(s))
    } else {
        (body, None)
    };
    match app.state.page {
        Page::Graph => draw_graph(frame, app, main),
        Page::Workloads => draw_table(frame, app, main),
    }
    if let Some(side) = side {
        draw_detail(frame, app, side);
    }
    draw_status(frame, app, status);
    match app.overlay {
        Overlay::Help => draw_help(frame, area),
        Overlay::Revisions => draw_revisions(frame, app, area),
        Overlay::Tap => draw_tap(frame, app, area),
        Overlay::None => {}
    }
}

fn draw_title(frame: &mut Frame, app: &App, area: Rect) {
    let tab = |name: &str, on: bool| {
        if on { Span::styled(format!(" {name} "), Style::new().reversed()) } else { Span::raw(format!(" {name} ")) }
    };
    let mut spans = vec![
        Span::styled("meshlens ", Style::new().bold()),
        tab("Graph", app.state.page == Page::Graph),
        tab("Workloads", app.state.page == Page::Workloads),
        Span::raw(format!("  view {}  window {}", app.state.view, app.state.window)),
    ];
    if app.state.focus > 0 {
        spans.push(Span::styled("  focus", Style::new().fg(Color::Cyan)));
    }
    if !app.filter.is_empty() {
        spans.push(Span::raw(format!("  filter \"{}\"", app.filter)));
    }
    spans.push(Span::styled("  ? keys", Style::new().fg(Color::DarkGray)));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_status(frame: &mut Frame, app: &App, area: Rect) {
    let (state, color) = match &app.connection {
        Connection::Connecting => ("connecting".to_owned(), Color::Yellow),
        Connection::Live => ("live".to_owned(), Color::Green),
        Connection::Down(why) => (format!("reconnecting: {why}"), Color::Red),
    };
    let revision = match app.state.revision {
        Some(r) => format!("revision {r} (pinned; L for live)"),
        None => format!("revision {}", app.graph.revision),
    };
    let stale = app.staleness().map_or("no data yet".to_owned(), |s| format!("updated {s:.0}s ago"));
    let line = Line::from(vec![
        Span::styled("● ", Style::new().fg(color)),
        Span::raw(format!("{state}  {revision}  {stale}  {}", app.collector)),
    ]);
    frame.render_widget(Paragraph::new(line).style(Style::new().bg(Color::Black)), area);
}

fn put(buf: &mut Buffer, area: Rect, x: i64, y: i64, s: &str, style: Style) {
    let mut cx = x;
    // Cells take characters as given; a name's control characters must not reach the terminal.
    for ch in meshlens_model::escape::terminal(s).chars() {
        let w = if (ch as u32) >= 0x1F000 { 2 } else { 1 };
        if cx >= 0 && y >= 0 && cx < i64::from(area.width) && y < i64::from(area.height) {
            let pos = (area.x + cx as u16, area.y + y as u16);
            if let Some(cell) = buf.cell_mut(pos) {
                cell.set_char(ch).set_style(style);
            }
        }
        cx += w;
    }
}

/// Draws one line character, joining it with what is already there.
fn line_cell(buf: &mut Buffer, area: Rect, x: i64, y: i64, ch: char, style: Style) {
    if x < 0 || y < 0 || x >= i64::from(area.width) || y >= i64::from(area.height) {
        return;
    }
    let pos = (area.x + x as u16, area.y + y as u16);
    if let Some(cell) = buf.cell_mut(pos) {
        let joined = match (cell.symbol(), ch) {
            ("─", '│') | ("│", '─') => '┼',
            _ => ch,
        };
        cell.set_char(joined).set_style(style);
    }
}

fn draw_edge(buf: &mut Buffer, area: Rect, app: &App, k: usize, highlighted: bool) {
    let place = &app.layout.edges[k];
    let edge: &Edge = &app.graph.edges[place.edge];
    let style = if highlighted {
        Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
    } else {
        Style::new().fg(health_color(edge.health))
    };
    let (sx, sy) = (i64::from(app.scroll.0), i64::from(app.scroll.1));
    // What of the layout is on screen: runs are walked only there, so a frame costs what it shows,
    // not the size of the mesh.
    let (vx, vy) = ((sx, sx + i64::from(area.width) - 1), (sy, sy + i64::from(area.height) - 1));
    let pts = &place.points;
    for (seg, w) in pts.windows(2).enumerate() {
        let ((x0, y0), (x1, y1)) = ((i64::from(w[0].0), i64::from(w[0].1)), (i64::from(w[1].0), i64::from(w[1].1)));
        if y0 == y1 {
            if (vy.0..=vy.1).contains(&y0) {
                for x in x0.min(x1).max(vx.0)..=x0.max(x1).min(vx.1) {
                    line_cell(buf, area, x - sx, y0 - sy, '─', style);
                }
            }
        } else {
            if (vx.0..=vx.1).contains(&x0) {
                for y in y0.min(y1).max(vy.0)..=y0.max(y1).min(vy.1) {
                    line_cell(buf, area, x0 - sx, y - sy, '│', style);
                }
            }
            // Corners where the run turns.
            let down = y1 > y0;
            let into = if down { '┐' } else { '┘' };
            let out = if down { '└' } else { '┌' };
            if seg > 0 || pts.len() > 2 {
                line_cell(buf, area, x0 - sx, y0 - sy, into, style);
                line_cell(buf, area, x1 - sx, y1 - sy, out, style);
            }
        }
    }
    if let Some(&(x, y)) = pts.last()
        && edge.source != edge.target
    {
        line_cell(buf, area, i64::from(x) - sx, i64::from(y) - sy, '▶', style);
    }
    let (lx, ly) = place.label_at;
    put(buf, area, i64::from(lx) - sx, i64::from(ly) - sy, &place.label, style.remove_modifier(Modifier::BOLD));
}

fn draw_graph(frame: &mut Frame, app: &mut App, area: Rect) {
    app.viewport = (u32::from(area.width), u32::from(area.height));
    if app.graph.nodes.is_empty() {
        let text = match &app.connection {
            Connection::Down(why) => format!("Cannot reach the collector: {why}\nRetrying…"),
            _ => "No traffic yet. Send some through agents or any OpenTelemetry SDK.".to_owned(),
        };
        frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        return;
    }
    let selected_edge = app.selected_edge_index();
    let selected = app.selected_index();
    let buf = frame.buffer_mut();
    let (sx, sy) = (i64::from(app.scroll.0), i64::from(app.scroll.1));
    // Edges first (boxes cover what runs behind them), the highlighted ones last.
    let highlighted = |k: usize| {
        let e = app.layout.edges[k].edge;
        Some(e) == selected_edge
            || (selected_edge.is_none()
                && selected.is_some_and(|n| {
                    let id = &app.graph.nodes[n].id;
                    app.graph.edges[e].source == *id || app.graph.edges[e].target == *id
                }))
    };
    for k in (0..app.layout.edges.len()).filter(|&k| !highlighted(k)) {
        draw_edge(buf, area, app, k, false);
    }
    for k in (0..app.layout.edges.len()).filter(|&k| highlighted(k)) {
        draw_edge(buf, area, app, k, true);
    }
    for b in &app.layout.boxes {
        let (x, y, w, h) = (i64::from(b.x) - sx, i64::from(b.y) - sy, i64::from(b.w), i64::from(b.h));
        if x + w < 0 || y + h < 0 || x > i64::from(area.width) || y > i64::from(area.height) {
            continue;
        }
        let border = Style::new().fg(Color::Gray);
        for dx in 0..w {
            let ch = match dx {
                0 => ('┌', '└'),
                _ if dx == w - 1 => ('┐', '┘'),
                _ => ('─', '─'),
            };
            put(buf, area, x + dx, y, &ch.0.to_string(), border);
            put(buf, area, x + dx, y + h - 1, &ch.1.to_string(), border);
        }
        for dy in 1..h - 1 {
            put(buf, area, x, y + dy, "│", border);
            put(buf, area, x + w - 1, y + dy, "│", border);
            put(buf, area, x + 1, y + dy, &" ".repeat((w - 2).max(0) as usize), Style::new());
        }
        if !b.title.is_empty() {
            put(buf, area, x + 1, y, &b.title, Style::new().bold());
        }
    }
    for p in &app.layout.nodes {
        let n = &app.graph.nodes[p.node];
        let (x, y) = (i64::from(p.x) - sx, i64::from(p.y) - sy);
        if y < 0 || y > i64::from(area.height) || x > i64::from(area.width) || x + i64::from(p.w) < 0 {
            continue;
        }
        let style = if Some(p.node) == selected { Style::new().reversed().bold() } else { Style::new() };
        put(buf, area, x, y, "●", Style::new().fg(health_color(n.health)));
        let text = format!(" {:<width$}", p.label, width = (p.w as usize).saturating_sub(2));
        put(buf, area, x + 1, y, &text, style);
    }
}

fn lat(s: &Stats) -> [String; 3] {
    match &s.latency_ms {
        Some(l) => [format_ms(l.p50), format_ms(l.p95), format_ms(l.p99)],
        None => ["-".into(), "-".into(), "-".into()],
    }
}

fn draw_table(frame: &mut Frame, app: &mut App, area: Rect) {
    let rows = app.rows();
    let header = Row::new(COLUMNS.iter().map(|&c| {
        let mark = if app.sort.0 == c { if app.sort.1 { "▼" } else { "▲" } } else { "" };
        Cell::from(format!("{}{mark}", c.header()))
    }))
    .style(Style::new().bold());
    let body: Vec<Row> = rows
        .iter()
        .map(|w| {
            let [p50, p95, p99] = lat(&w.inbound);
            Row::new(vec![
                Cell::from(w.namespace.clone()),
                Cell::from(w.app.clone()),
                Cell::from(w.version.clone().unwrap_or_else(|| "-".into())),
                Cell::from(w.inbound.success_pct.map_or("-".into(), |p| format!("{p:.2}%")))
                    .style(Style::new().fg(health_color(w.health))),
                Cell::from(format!("{:.1}", w.inbound.rps)),
                Cell::from(p50),
                Cell::from(p95),
                Cell::from(p99),
                Cell::from(format!("{:.1}", w.inbound.rps)),
                Cell::from(format!("{:.1}", w.outbound.rps)),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(9),
        Constraint::Min(11),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(5),
    ];
    let title = if app.filtering { format!(" Workloads  /{}▏", app.filter) } else { " Workloads ".to_owned() };
    let table = Table::new(body, widths)
        .header(header)
        .block(Block::new().borders(Borders::TOP).title(title))
        .row_highlight_style(Style::new().reversed());
    let mut state = TableState::default().with_selected(Some(app.row));
    frame.render_stateful_widget(table, area, &mut state);
}

fn stats_lines(label: &str, s: &Stats) -> Vec<Line<'static>> {
    let [p50, p95, p99] = lat(s);
    let dim = Style::new().fg(Color::DarkGray);
    let mut codes = format!("2xx {} 4xx {} 5xx {}", s.codes.c2xx, s.codes.c4xx, s.codes.c5xx);
    if s.codes.c3xx > 0 {
        codes.push_str(&format!(" 3xx {}", s.codes.c3xx));
    }
    if s.codes.none > 0 {
        codes.push_str(&format!(" none {}", s.codes.none));
    }
    let mut lines = vec![
        Line::from(format!("{label:<4}{:>7.2} {:>9} {:>7}", s.rps, pct(s.success_pct), pct(s.error_pct))),
        Line::from(Span::styled(format!("    {codes}"), dim)),
    ];
    if let Some(grpc) = s.grpc_line() {
        lines.push(Line::from(Span::styled(format!("    grpc {grpc}"), dim)));
    }
    lines.push(Line::from(Span::styled(format!("    rps min {:.2} max {:.2}", s.rps_min, s.rps_max), dim)));
    lines.push(Line::from(Span::styled(format!("    p50 {p50} p95 {p95} p99 {p99}"), dim)));
    lines
}

/// Routes the detail pane lists; `meshlens routes` shows them all.
const MAX_DETAIL_ROUTES: usize = 8;

fn draw_detail(frame: &mut Frame, app: &App, area: Rect) {
    let block = Block::new().borders(Borders::LEFT).title(" Detail ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let mut lines: Vec<Line> = Vec::new();
    let mut series: Vec<u64> = Vec::new();
    if let Some(k) = app.selected_edge_index() {
        let e = &app.graph.edges[k];
        lines.push(Line::from(Span::styled(format!("{} →", e.source), Style::new().bold())));
        lines.push(Line::from(Span::styled(format!("  {}", e.target), Style::new().bold())));
        lines.push(Line::from(Span::styled(
            format!("{} edge, {:?}", e.protocol, e.health).to_lowercase(),
            Style::new().fg(health_color(e.health)),
        )));
        lines.push(Line::from("HTTP requests per second"));
        lines.push(Line::from(Span::styled("      Total  %Success  %Error", Style::new().fg(Color::DarkGray))));
        lines.extend(stats_lines("", &e.stats));
        if e.stats.retries.is_some() || e.stats.timeouts.is_some() {
            lines.push(Line::from(format!(
                "retries {}  timeouts {}",
                e.stats.retries.unwrap_or(0),
                e.stats.timeouts.unwrap_or(0)
            )));
        }
        if let Some(m) = e.stats.mtls_pct {
            lines.push(Line::from(format!("mTLS {m:.0}%")));
        }
    } else if let Some(i) = app.selected_index() {
        let n = &app.graph.nodes[i];
        let name = match &n.version {
            Some(v) => format!("{} {v}", n.app),
            None => n.app.clone(),
        };
        lines.push(Line::from(vec![
            Span::styled(name, Style::new().bold()),
            Span::raw(if n.namespace.is_empty() { String::new() } else { format!("  ({})", n.namespace) }),
        ]));
        lines.push(Line::from(Span::styled(
            format!("{:?}", n.health).to_lowercase(),
            Style::new().fg(health_color(n.health)),
        )));
        lines.push(Line::from("HTTP requests per second"));
        lines.push(Line::from(Span::styled("      Total  %Success  %Error", Style::new().fg(Color::DarkGray))));
        lines.extend(stats_lines("In", &n.inbound));
        lines.extend(stats_lines("Out", &n.outbound));
        let (mut retries, mut timeouts, mut reported) = (0, 0, false);
        for e in app.graph.edges.iter().filter(|e| e.source == n.id) {
            if e.stats.retries.is_some() || e.stats.timeouts.is_some() {
                reported = true;
            }
            retries += e.stats.retries.unwrap_or(0);
            timeouts += e.stats.timeouts.unwrap_or(0);
        }
        if reported {
            lines.push(Line::from(format!("outbound retries {retries}  timeouts {timeouts}")));
        }
        let out: Vec<String> = app
            .graph
            .edges
            .iter()
            .filter(|e| e.source == n.id)
            .map(|e| format!("→ {}  {}", e.target, meshlens_model::layout::edge_label(e)))
            .collect();
        if !out.is_empty() {
            lines.push(Line::from(Span::styled("calls (e selects)", Style::new().fg(Color::DarkGray))));
            lines.extend(out.into_iter().map(Line::from));
        }
        if let Some(r) = &app.routes
            && r.service == format!("{}/{}", n.namespace, n.app)
            && !r.routes.is_empty()
        {
            lines.push(Line::from(Span::styled("routes (meshlens routes)", Style::new().fg(Color::DarkGray))));
            for row in r.routes.iter().take(MAX_DETAIL_ROUTES) {
                let s = &row.stats;
                let color = if s.error_pct.unwrap_or(0.0) > 0.0 { Color::Yellow } else { Color::Reset };
                lines.push(Line::from(vec![
                    Span::styled(meshlens_model::escape::terminal(&row.route).into_owned(), Style::new().fg(color)),
                    Span::raw(format!("  {:.2}rps {}% p99 {}", s.rps, pct(s.success_pct), lat(s)[2])),
                ]));
            }
            if r.routes.len() > MAX_DETAIL_ROUTES {
                lines.push(Line::from(Span::styled(
                    format!("  … {} more", r.routes.len() - MAX_DETAIL_ROUTES),
                    Style::new().fg(Color::DarkGray),
                )));
            }
        }
        if let Some((w, ex)) = &app.traces
            && *w == n.id
            && !(ex.failed.is_empty() && ex.slowest.is_empty())
        {
            lines.push(Line::from(Span::styled("traces (meshlens trace ID)", Style::new().fg(Color::DarkGray))));
            for (what, list, color) in [("failed", &ex.failed, Color::Red), ("slow", &ex.slowest, Color::Yellow)] {
                for x in list {
                    // The other end of the exemplar's edge: who called, or whom it called.
                    let other =
                        if x.target == n.id { format!("← {}", x.source) } else { format!("→ {}", x.target) };
                    let gone = if x.kept { "" } else { " (not kept)" };
                    lines.push(Line::from(vec![
                        Span::styled(format!("{what:<6} "), Style::new().fg(color)),
                        Span::raw(format!("{} {}{gone} ", x.trace_id, crate::text::format_ms(x.latency_ms))),
                        Span::styled(other, Style::new().fg(Color::DarkGray)),
                    ]));
                }
            }
        }
        if let Some(d) = &app.detail
            && d.namespace == n.namespace
            && d.app == n.app
        {
            let v = d.versions.iter().find(|v| v.version == n.version).or(d.versions.first());
            if let Some(v) = v {
                series = v.rate_series.iter().map(|p| (p.rps * 100.0).round() as u64).collect();
            }
        }
    }
    let spark_h = if series.is_empty() { 0 } else { 3 };
    let [text_area, spark_area] = Split::vertical([Constraint::Min(1), Constraint::Length(spark_h)]).areas(inner);
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), text_area);
    if !series.is_empty() {
        let spark = Sparkline::default()
            .block(Block::new().title(Span::styled("rate", Style::new().fg(Color::DarkGray))))
            .data(&series)
            .style(Style::new().fg(Color::Cyan));
        frame.render_widget(spark, spark_area);
    }
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h }
}

/// The keys, as `?` shows them.
pub(crate) const KEYS: [(&str, &str); 20] = [
    ("←↑↓→ hjkl", "move along the graph (callers, callees, same column)"),
    ("e", "select the next outbound edge of the node"),
    ("Enter / d", "show / toggle the detail pane"),
    ("a", "collapse versions (app view) / expand"),
    ("f", "focus on the node's neighbourhood / everything"),
    ("n", "namespace view (a large mesh at a glance) / versioned"),
    ("c", "collapse the node's namespace / expand a namespace"),
    ("PgUp PgDn < >", "scroll the graph"),
    ("w", "next window: 30s 1m 5m 15m 1h"),
    ("r", "revisions; Enter shows one"),
    ("t", "tap the selected workload: its requests live / close"),
    ("L", "back to live"),
    ("Tab", "graph / workloads table"),
    ("1-9 0", "sort the table by a column (again: reverse)"),
    ("/", "filter the table: text, or find such as error > 1"),
    ("Esc", "close, unselect, unfocus"),
    ("?", "this help"),
    ("q Ctrl-C", "quit"),
    ("", ""),
    ("", "Colours: green healthy, yellow degraded, red failing, grey idle."),
];

fn draw_help(frame: &mut Frame, area: Rect) {
    let rect = centered(area, 70, KEYS.len() as u16 + 2);
    frame.render_widget(Clear, rect);
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| Line::from(vec![Span::styled(format!("{k:<15}"), Style::new().bold()), Span::raw(*what)]))
        .collect();
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(" Keys ")), rect);
}

fn draw_revisions(frame: &mut Frame, app: &App, area: Rect) {
    let rect = centered(area, 76, area.height.saturating_sub(4).max(5));
    frame.render_widget(Clear, rect);
    let rows: Vec<Row> = app
        .revisions
        .iter()
        .map(|r| {
            let c = &r.changes;
            let mut what = Vec::new();
            for (n, label) in [
                (c.nodes_added.len(), "+node"),
                (c.nodes_removed.len(), "-node"),
                (c.edges_added.len(), "+edge"),
                (c.edges_removed.len(), "-edge"),
            ] {
                if n > 0 {
                    what.push(format!("{n} {label}"));
                }
            }
            let first = c.nodes_added.first().or(c.edges_added.first()).cloned().unwrap_or_default();
            let time = r.generated_at.get(11..19).unwrap_or(&r.generated_at).to_owned();
            Row::new(vec![
                Cell::from(r.revision.to_string()),
                Cell::from(time),
                Cell::from(if what.is_empty() { "stats".to_owned() } else { what.join(" ") }),
                Cell::from(first),
            ])
        })
        .collect();
    let table =
        Table::new(rows, [Constraint::Length(8), Constraint::Length(9), Constraint::Length(22), Constraint::Min(10)])
            .header(Row::new(["REVISION", "TIME", "CHANGES", ""]).style(Style::new().bold()))
            .block(Block::bordered().title(" Revisions (Enter shows one, Esc closes) "))
            .row_highlight_style(Style::new().reversed());
    let mut state = TableState::default().with_selected(Some(app.revision_cursor));
    frame.render_stateful_widget(table, rect, &mut state);
}

fn draw_tap(frame: &mut Frame, app: &App, area: Rect) {
    let Some(tap) = &app.tap else { return };
    let rect = centered(area, area.width.saturating_sub(4).max(20), area.height.saturating_sub(4).max(5));
    frame.render_widget(Clear, rect);
    let esc = |s: &str| meshlens_model::escape::terminal(s).into_owned();
    // Newest at the bottom, as `meshlens tap` prints them: the rows that fit, latest last.
    let fit = usize::from(rect.height.saturating_sub(3));
    let rows: Vec<Row> = tap
        .events
        .iter()
        .skip(tap.events.len().saturating_sub(fit))
        .map(|e| {
            let to = match &e.destination_version {
                Some(v) => format!("{}/{}", e.destination, v),
                None => e.destination.clone(),
            };
            let status = match e.grpc_status {
                Some(g) => format!("{} grpc {g}", e.status),
                None => e.status.to_string(),
            };
            let style = if e.failed() { Style::new().fg(Color::Red) } else { Style::new() };
            Row::new(vec![
                Cell::from(crate::text::clock(e.time_unix_ms)),
                Cell::from(e.direction.short()),
                Cell::from(esc(&e.source)),
                Cell::from(esc(&to)),
                Cell::from(esc(&e.method)),
                Cell::from(esc(&e.path)),
                Cell::from(status),
                Cell::from(format_ms(e.latency_ms)),
                Cell::from(e.retries.to_string()),
                Cell::from(e.trace_id.clone()),
            ])
            .style(style)
        })
        .collect();
    let state = match (&tap.ended, &tap.status) {
        (Some(why), _) => format!("ended: {}", esc(why)),
        (None, Some(s)) => {
            format!("{} of {} agents tapping, {} requests, {} dropped", s.live, s.agents, tap.seen, s.dropped)
        }
        (None, None) => "opening".to_owned(),
    };
    let title = format!(" Tap {}: {state} (t or Esc closes) ", esc(&tap.target));
    let widths = [
        Constraint::Length(12),
        Constraint::Length(3),
        Constraint::Length(22),
        Constraint::Length(22),
        Constraint::Length(6),
        Constraint::Min(12),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(32),
    ];
    let header = Row::new(["TIME", "DIR", "FROM", "TO", "METHOD", "PATH", "STATUS", "LATENCY", "RETRIES", "TRACE"]);
    let table =
        Table::new(rows, widths).header(header.style(Style::new().bold())).block(Block::bordered().title(title));
    frame.render_widget(table, rect);
}
