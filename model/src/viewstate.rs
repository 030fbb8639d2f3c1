//! What the web view shows, as it lives in the URL's query string, so a view can be shared: page,
//! graph view, window, namespaces, find expression (highlight or hide), pinned revision, and which
//! number labels the edges.

use crate::graph::{Edge, View};

/// What labels the edges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EdgeLabel {
    /// Requests per second.
    #[default]
    Rps,
    /// Error percent.
    Error,
    /// p95 latency.
    P95,
    /// p99 latency.
    P99,
    /// Share of the caller's outbound traffic.
    Share,
}

impl EdgeLabel {
    /// All, in menu order.
    pub const ALL: [EdgeLabel; 5] =
        [EdgeLabel::Rps, EdgeLabel::Error, EdgeLabel::P95, EdgeLabel::P99, EdgeLabel::Share];

    /// The query-string name.
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeLabel::Rps => "rps",
            EdgeLabel::Error => "error",
            EdgeLabel::P95 => "p95",
            EdgeLabel::P99 => "p99",
            EdgeLabel::Share => "share",
        }
    }

    /// From its name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// The label of `e`, whose caller sends `caller_rps` in all.
    pub fn text(self, e: &Edge, caller_rps: f64) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), format_ms);
        match self {
            EdgeLabel::Rps => crate::layout::edge_label(e),
            EdgeLabel::Error => format!("{:.1}%", e.stats.error_pct.unwrap_or(0.0)),
            EdgeLabel::P95 => ms(e.stats.latency_ms.as_ref().map(|l| l.p95)),
            EdgeLabel::P99 => ms(e.stats.latency_ms.as_ref().map(|l| l.p99)),
            EdgeLabel::Share if caller_rps > 0.0 => format!("{:.0}%", 100.0 * e.stats.rps / caller_rps),
            EdgeLabel::Share => "-".to_owned(),
        }
    }
}

/// The windows the console cycles through and the web view offers, shortest first.
pub const WINDOWS: [&str; 5] = ["30s", "1m", "5m", "15m", "1h"];

/// A percentage as the tables show it: two decimals, `-` when there were no requests.
pub fn format_pct(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |p| format!("{p:.2}"))
}

/// Milliseconds, short: `3.2ms`, `12ms`, `1.2s`.
pub fn format_ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1}s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0}ms")
    } else {
        format!("{v:.1}ms")
    }
}

/// Which page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Page {
    /// The topology.
    #[default]
    Graph,
    /// The workloads table.
    Workloads,
}

/// The whole view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewState {
    /// Which page is open.
    pub page: Page,
    /// Graph view.
    pub view: View,
    /// Window (`1m`).
    pub window: String,
    /// Namespaces; all when empty.
    pub namespaces: Vec<String>,
    /// Find expression.
    pub find: String,
    /// Hide what the expression matches (else highlight it).
    pub hide: bool,
    /// Pinned revision; live when `None`.
    pub revision: Option<u64>,
    /// Edge labels.
    pub label: EdgeLabel,
    /// Selected node or edge id.
    pub selected: Option<String>,
    /// Namespaces and apps (`ns/app`) drawn as one node each.
    pub collapse: Vec<String>,
    /// Show only what lies within this many calls of the selected node (0: everything).
    pub focus: u32,
}

impl Default for ViewState {
    fn default() -> Self {
        Self {
            page: Page::Graph,
            view: View::Versioned,
            window: "1m".into(),
            namespaces: Vec::new(),
            find: String::new(),
            hide: false,
            revision: None,
            label: EdgeLabel::Rps,
            selected: None,
            collapse: Vec::new(),
            focus: 0,
        }
    }
}

impl ViewState {
    /// Moves to the next of [`WINDOWS`], the shortest after the longest; a window not among them
    /// (typed into the address) moves to the first.
    pub fn cycle_window(&mut self) {
        let next = WINDOWS.iter().position(|w| *w == self.window).map_or(0, |i| (i + 1) % WINDOWS.len());
        self.window = WINDOWS[next].to_owned();
    }
}

/// What a query component leaves as it is: the unreserved characters, and `/` and `:`, which a query
/// may hold as they are (RFC 3986 §3.4), so ids stay readable in the address bar.
const QUERY: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/').remove(b':');

/// What a path segment leaves as it is: the unreserved characters only (a `/` would split it).
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes a query-string component (`/` and `:` kept, for readable ids; a space is `+`, as
/// forms write it, and a `+` is `%2B`).
pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY).to_string().replace("%20", "+")
}

/// Percent-encodes one path segment (`/api/v1/workloads/{ns}/{app}`): a `/` in a name is `%2F`.
pub fn encode_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// Decodes a query-string component (`+` is a space, as forms write it).
fn dec(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

impl ViewState {
    /// The query string (without `?`); defaults are left out.
    pub fn to_query(&self) -> String {
        let d = Self::default();
        let mut parts = Vec::new();
        if self.page == Page::Workloads {
            parts.push("page=workloads".to_owned());
        }
        if self.view != d.view {
            parts.push(format!("view={}", self.view));
        }
        if self.window != d.window {
            parts.push(format!("window={}", encode(&self.window)));
        }
        for ns in &self.namespaces {
            parts.push(format!("namespace={}", encode(ns)));
        }
        if !self.find.is_empty() {
            parts.push(format!("find={}", encode(&self.find)));
        }
        if self.hide {
            parts.push("hide=1".to_owned());
        }
        if let Some(r) = self.revision {
            parts.push(format!("revision={r}"));
        }
        if self.label != d.label {
            parts.push(format!("label={}", self.label.as_str()));
        }
        if let Some(s) = &self.selected {
            parts.push(format!("selected={}", encode(s)));
        }
        for c in &self.collapse {
            parts.push(format!("collapse={}", encode(c)));
        }
        if self.focus > 0 {
            parts.push(format!("focus={}", self.focus));
        }
        parts.join("&")
    }

    /// Reads a query string (with or without `?`); what it cannot read keeps its default.
    pub fn from_query(q: &str) -> Self {
        let mut s = Self::default();
        for pair in q.trim_start_matches('?').split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = dec(v);
            match k {
                "page" if v == "workloads" => s.page = Page::Workloads,
                "view" => s.view = v.parse().unwrap_or_default(),
                "window" if !v.is_empty() => s.window = v,
                "namespace" if !v.is_empty() => s.namespaces.push(v),
                "find" => s.find = v,
                "hide" => s.hide = v == "1" || v == "true",
                "revision" => s.revision = v.parse().ok(),
                "label" => s.label = EdgeLabel::parse(&v).unwrap_or_default(),
                "selected" if !v.is_empty() => s.selected = Some(v),
                "collapse" if !v.is_empty() => s.collapse.push(v),
                "focus" => s.focus = v.parse::<u32>().unwrap_or(0).min(MAX_FOCUS_HOPS),
                _ => {}
            }
        }
        s
    }

    /// The API query for the graph this state shows.
    pub fn graph_query(&self) -> String {
        let mut q = format!("view={}&window={}", self.view, encode(&self.window));
        for ns in &self.namespaces {
            q.push_str(&format!("&namespace={}", encode(ns)));
        }
        for c in &self.collapse {
            q.push_str(&format!("&collapse={}", encode(c)));
        }
        if let Some(r) = self.revision {
            q.push_str(&format!("&at={r}"));
        }
        q
    }

    /// Expands a namespace (see [`expand_namespace`]) and clears the selection.
    pub fn expand(&mut self, namespace: &str, g: &crate::graph::GraphSnapshot) {
        expand_namespace(&mut self.view, &mut self.collapse, namespace, g);
        self.selected = None;
    }

    /// Collapses a namespace, or an app given as `ns/app`, into one node, selects it and unfocuses.
    pub fn collapse(&mut self, item: &str) {
        self.selected = Some(collapse_item(&mut self.collapse, item));
        self.focus = 0;
    }
}

/// Expands a namespace: in the namespace view, that is the versioned view with every other
/// namespace of `g` collapsed; elsewhere the namespace and its apps leave the collapsed list. The
/// console and the web both call this.
pub fn expand_namespace(view: &mut View, collapse: &mut Vec<String>, namespace: &str, g: &crate::graph::GraphSnapshot) {
    if *view == View::Namespace {
        *view = View::Versioned;
        *collapse = g
            .nodes
            .iter()
            .filter(|n| n.kind == crate::graph::NodeKind::Namespace && n.namespace != namespace)
            .map(|n| n.namespace.clone())
            .collect();
    } else {
        collapse.retain(|c| c != namespace && !c.starts_with(&format!("{namespace}/")));
    }
}

/// Adds a namespace, or an app given as `ns/app`, to the collapsed list; returns the id of the node
/// it becomes (`ns:NAME`, or the app's id).
pub fn collapse_item(collapse: &mut Vec<String>, item: &str) -> String {
    if !collapse.iter().any(|c| c == item) {
        collapse.push(item.to_owned());
    }
    if item.contains('/') { item.to_owned() } else { format!("ns:{item}") }
}

/// The widest focus: beyond a few hops a neighbourhood is most of a mesh.
pub const MAX_FOCUS_HOPS: u32 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_readable_in_a_query_and_a_slash_cannot_split_a_path_segment() {
        assert_eq!(encode("shop/b/v1@east"), "shop/b/v1%40east");
        assert_eq!(encode("ns:pay"), "ns:pay");
        assert_eq!(encode("a b&c=d#e+"), "a+b%26c%3Dd%23e%2B");
        assert_eq!(encode_segment("we/b"), "we%2Fb");
        assert_eq!(encode_segment("ünïcode ok"), "%C3%BCn%C3%AFcode%20ok");
        for s in ["shop/b/v1", "a b&c=d#e+f", "ünï/%2F"] {
            assert_eq!(dec(&encode(s)), s);
        }
        assert_eq!(dec("a+b%20c"), "a b c", "a form's + is a space");
    }

    #[test]
    fn the_url_round_trips_the_view() {
        let s = ViewState {
            page: Page::Graph,
            view: View::App,
            window: "15m".into(),
            namespaces: vec!["shop".into(), "bookinfo".into()],
            find: "version = v3 and error > 0".into(),
            hide: true,
            revision: Some(42),
            label: EdgeLabel::P99,
            selected: Some("shop/reviews/v3".into()),
            collapse: vec!["pay".into(), "shop/cart".into()],
            focus: 2,
        };
        let q = s.to_query();
        assert_eq!(
            q,
            "view=app&window=15m&namespace=shop&namespace=bookinfo&find=version+%3D+v3+and+error+%3E+0&hide=1&revision=42&label=p99&selected=shop/reviews/v3&collapse=pay&collapse=shop/cart&focus=2"
        );
        assert_eq!(ViewState::from_query(&format!("?{q}")), s);
        assert_eq!(ViewState::from_query(""), ViewState::default());
        assert_eq!(ViewState::default().to_query(), "");
        assert_eq!(
            ViewState::from_query("view=nope&revision=x&label=?&find=a%2"),
            ViewState { find: "a%2".into(), ..ViewState::default() }
        );
        assert_eq!(
            s.graph_query(),
            "view=app&window=15m&namespace=shop&namespace=bookinfo&collapse=pay&collapse=shop/cart&at=42"
        );
    }

    #[test]
    fn expand_from_the_namespace_view_collapses_the_others() {
        use crate::graph::{GraphSnapshot, Node, NodeKind};
        let ns = |n: &str| Node {
            id: format!("ns:{n}"),
            namespace: n.into(),
            app: n.into(),
            version: None,
            kind: NodeKind::Namespace,
            cluster: None,
            group: None,
            health: crate::stats::Health::Healthy,
            inbound: Default::default(),
            outbound: Default::default(),
        };
        let g = GraphSnapshot { nodes: vec![ns("a"), ns("b"), ns("c")], ..GraphSnapshot::default() };
        let mut s = ViewState { view: View::Namespace, ..ViewState::default() };
        s.expand("b", &g);
        assert_eq!((s.view, s.collapse.clone()), (View::Versioned, vec!["a".to_owned(), "c".to_owned()]));
        s.collapse("b/web");
        s.expand("a", &g);
        assert_eq!(s.collapse, ["c", "b/web"]);
        s.collapse("a");
        assert_eq!(
            (s.collapse.clone(), s.selected.clone()),
            (vec!["c".into(), "b/web".into(), "a".into()], Some("ns:a".into()))
        );
        s.expand("b", &g);
        assert_eq!(s.collapse, ["c", "a"], "expanding a namespace expands its apps");
    }

    #[test]
    fn edge_labels_switch() {
        let mut e = crate::graph::Edge {
            id: "a->b".into(),
            source: "a".into(),
            target: "b".into(),
            protocol: "http".into(),
            health: crate::stats::Health::Healthy,
            stats: crate::stats::Stats { rps: 5.0, error_pct: Some(2.5), ..Default::default() },
        };
        assert_eq!(EdgeLabel::Rps.text(&e, 10.0), "5.0/s 2.5%");
        assert_eq!(EdgeLabel::Error.text(&e, 10.0), "2.5%");
        assert_eq!(EdgeLabel::Share.text(&e, 10.0), "50%");
        assert_eq!(EdgeLabel::P99.text(&e, 10.0), "-");
        e.stats.latency_ms = Some(crate::stats::LatencyMs { p50: 1.0, p95: 12.4, p99: 1500.0, max: 2000.0 });
        assert_eq!((EdgeLabel::P95.text(&e, 0.0), EdgeLabel::P99.text(&e, 0.0)), ("12ms".into(), "1.5s".into()));
    }
}
