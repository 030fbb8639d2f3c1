//! Bodies of the HTTP API that are not graphs: workloads, errors, the rate series.

use serde::{Deserialize, Serialize};

use crate::stats::{Health, Stats};

/// `{"error": {"code": "...", "message": "..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code: `bad_parameter`, `not_found`, `not_ready`, `internal`.
    pub code: String,
    /// What is wrong, naming the parameter.
    pub message: String,
}

/// One row of `/api/v1/workloads` and `meshlens stat`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadRow {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's app (`app` label or `service.name`).
    pub app: String,
    /// Version, when the workload has one.
    pub version: Option<String>,
    /// The cluster, in a mesh of several.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cluster: Option<String>,
    /// Node id.
    pub id: String,
    /// Healthy, warning or failing, by its inbound success rate.
    pub health: Health,
    /// Requests the workload received.
    pub inbound: Stats,
    /// Requests the workload sent.
    pub outbound: Stats,
}

/// The body of `/api/v1/workloads`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadsBody {
    /// Revision the rows come from (0 when computed live before the first revision).
    pub revision: u64,
    /// The stats window.
    pub window_seconds: u64,
    /// One row per workload, sorted by namespace, app, version.
    pub workloads: Vec<WorkloadRow>,
}

/// Requests between a workload and one peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerStats {
    /// The peer's node id.
    pub peer: String,
    /// Stats of the edge.
    pub stats: Stats,
}

/// One point of a rate series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RatePoint {
    /// Start of the step (RFC 3339).
    pub time: String,
    /// Requests per second in the step.
    pub rps: f64,
    /// Failed requests per second in the step.
    pub error_rps: f64,
}

/// One version of an app in `/api/v1/workloads/{namespace}/{app}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionDetail {
    /// Version (absent for an unversioned workload).
    pub version: Option<String>,
    /// Node id.
    pub id: String,
    /// Healthy, warning or failing, by its inbound success rate.
    pub health: Health,
    /// Totals in.
    pub inbound: Stats,
    /// Totals out.
    pub outbound: Stats,
    /// Per caller.
    pub inbound_edges: Vec<PeerStats>,
    /// Per callee.
    pub outbound_edges: Vec<PeerStats>,
    /// Inbound rate per step over the window.
    pub rate_series: Vec<RatePoint>,
}

/// The body of `/api/v1/workloads/{namespace}/{app}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppDetail {
    /// The app's namespace.
    pub namespace: String,
    /// The app's name.
    pub app: String,
    /// The stats window.
    pub window_seconds: u64,
    /// The step of the rate series.
    pub step_seconds: u64,
    /// All versions merged (inbound).
    pub inbound: Stats,
    /// All versions merged (outbound).
    pub outbound: Stats,
    /// Each version.
    pub versions: Vec<VersionDetail>,
}

impl WorkloadRow {
    /// One row per workload node of a graph, sorted by namespace, app and version.
    pub fn from_graph(g: &crate::graph::GraphSnapshot) -> Vec<Self> {
        let mut rows: Vec<Self> = g
            .nodes
            .iter()
            .filter(|n| n.kind == crate::graph::NodeKind::Workload)
            .map(|n| Self {
                namespace: n.namespace.clone(),
                app: n.app.clone(),
                version: n.version.clone(),
                cluster: n.cluster.clone(),
                id: n.id.clone(),
                health: n.health,
                inbound: n.inbound.clone(),
                outbound: n.outbound.clone(),
            })
            .collect();
        rows.sort_by(|a, b| {
            (&a.namespace, &a.app, &a.version, &a.cluster).cmp(&(&b.namespace, &b.app, &b.version, &b.cluster))
        });
        rows
    }
}

/// A column of the workloads table (the console's and the web view's), in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Column {
    /// The workload's namespace.
    Namespace,
    /// The workload's app.
    App,
    /// The workload's version.
    Version,
    /// Inbound success %.
    Success,
    /// Inbound requests per second.
    Rps,
    /// Inbound p50.
    P50,
    /// Inbound p95.
    P95,
    /// Inbound p99.
    P99,
    /// Inbound requests per second (the `IN` beside `OUT`).
    Inbound,
    /// Outbound requests per second.
    Outbound,
}

impl Column {
    /// Every column, in the table's order.
    pub const ALL: [Column; 10] = [
        Column::Namespace,
        Column::App,
        Column::Version,
        Column::Success,
        Column::Rps,
        Column::P50,
        Column::P95,
        Column::P99,
        Column::Inbound,
        Column::Outbound,
    ];

    /// The header.
    pub fn header(self) -> &'static str {
        match self {
            Column::Namespace => "NAMESPACE",
            Column::App => "APP",
            Column::Version => "VERSION",
            Column::Success => "SUCCESS",
            Column::Rps => "RPS",
            Column::P50 => "P50",
            Column::P95 => "P95",
            Column::P99 => "P99",
            Column::Inbound => "IN",
            Column::Outbound => "OUT",
        }
    }

    /// The sort after choosing `self` with `current` in force: the same column reverses; another
    /// sorts by it, numbers highest first and names A to Z.
    pub fn sort_after(self, current: (Column, bool)) -> (Column, bool) {
        if current.0 == self {
            (self, !current.1)
        } else {
            (self, !matches!(self, Column::Namespace | Column::App | Column::Version))
        }
    }
}

/// Orders two workload rows by a column; `desc` reverses; ties go by id, so the order is stable.
pub fn compare_rows(a: &WorkloadRow, b: &WorkloadRow, col: Column, desc: bool) -> std::cmp::Ordering {
    let num = |w: &WorkloadRow| -> f64 {
        let lat = |f: fn(&crate::stats::LatencyMs) -> f64| w.inbound.latency_ms.as_ref().map_or(-1.0, f);
        match col {
            Column::Success => w.inbound.success_pct.unwrap_or(-1.0),
            Column::P50 => lat(|l| l.p50),
            Column::P95 => lat(|l| l.p95),
            Column::P99 => lat(|l| l.p99),
            Column::Outbound => w.outbound.rps,
            _ => w.inbound.rps,
        }
    };
    let o = match col {
        Column::Namespace => a.namespace.cmp(&b.namespace),
        Column::App => a.app.cmp(&b.app),
        Column::Version => a.version.cmp(&b.version),
        _ => num(a).total_cmp(&num(b)),
    };
    let o = if desc { o.reverse() } else { o };
    o.then_with(|| a.id.cmp(&b.id))
}

/// The traffic profile the simulator starts from (`GET /api/v1/profile`): per version its rate,
/// errors and service time, per edge how many calls a request makes, and what users send.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The revision it was read from.
    pub revision: u64,
    /// The stats window.
    pub window_seconds: u64,
    /// Workload versions.
    pub versions: Vec<ProfileVersion>,
    /// Calls between them.
    pub edges: Vec<ProfileEdge>,
}

/// One workload version in a profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileVersion {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's app.
    pub app: String,
    /// Version (`-` when none).
    pub version: String,
    /// Requests it received per second.
    pub rps: f64,
    /// Users' requests per second (callers without an agent or span of their own).
    pub user_rps: f64,
    /// Percent of its requests that failed, as observed (including failures its callees caused).
    pub error_pct: f64,
    /// Percent of its requests it failed on its own: the observed share less what its calls'
    /// failures explain, `1 − (1 − observed) / Π (1 − call failure)^(calls per request)`, where a
    /// call's failure is its final attempt's (failed attempts less the retries they caused). This
    /// is an estimate: it takes every failed call to fail the request, as an app that propagates a
    /// callee's 5xx does, and failures to be independent.
    #[serde(default)]
    pub own_error_pct: f64,
    /// Its own service time: inbound latency less what its calls take, ms (median and p99).
    pub service_p50_ms: f64,
    /// p99 of the same.
    pub service_p99_ms: f64,
}

/// Calls from one version to another in a profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileEdge {
    /// Caller id (`ns/app/version`).
    pub source: String,
    /// Callee id.
    pub target: String,
    /// Calls per request the caller serves: first attempts, retries left out.
    pub calls_per_request: f64,
    /// Calls per second.
    pub rps: f64,
}

/// The share of requests (percent) a version fails on its own, given the share observed and the
/// chance that none of its calls fail.
fn own_error_pct(observed_pct: f64, calls_ok: f64) -> f64 {
    if calls_ok <= 0.0 {
        return 0.0;
    }
    let ok = (1.0 - observed_pct / 100.0) / calls_ok;
    ((1.0 - ok) * 100.0).clamp(0.0, 100.0)
}

impl Profile {
    /// Reads a profile off a versioned graph.
    pub fn from_graph(g: &crate::graph::GraphSnapshot) -> Self {
        use crate::graph::NodeKind;
        let mut versions = Vec::new();
        let mut edges = Vec::new();
        for n in g.nodes.iter().filter(|n| n.kind == NodeKind::Workload) {
            let user_rps: f64 = g
                .edges
                .iter()
                .filter(|e| e.target == n.id && g.node(&e.source).is_none_or(|s| s.kind != NodeKind::Workload))
                .map(|e| e.stats.rps)
                .sum();
            let lat =
                |f: fn(&crate::stats::LatencyMs) -> f64, s: &crate::stats::Stats| s.latency_ms.as_ref().map_or(0.0, f);
            // What its calls take at the median, per request it serves.
            let mut downstream_p50 = 0.0;
            let mut downstream_p99 = 0.0;
            // The chance that none of its calls fail, per request.
            let mut calls_ok = 1.0_f64;
            for e in g.edges.iter().filter(|e| e.source == n.id) {
                // Calls the app makes: first attempts only, since the policy adds the retries again
                // when the simulator replays them (agents report the retries on their edges).
                let first = match e.stats.retries {
                    Some(r) if e.stats.requests > 0 => {
                        e.stats.requests.saturating_sub(r) as f64 / e.stats.requests as f64
                    }
                    _ => 1.0,
                };
                let per_request = if n.inbound.rps > 0.0 { e.stats.rps * first / n.inbound.rps } else { 0.0 };
                downstream_p50 += per_request * lat(|l| l.p50, &e.stats);
                downstream_p99 += per_request * lat(|l| l.p50, &e.stats);
                let retries = e.stats.retries.unwrap_or(0);
                let calls = e.stats.requests.saturating_sub(retries);
                if calls > 0 {
                    let failed = e.stats.errors.saturating_sub(retries).min(calls) as f64 / calls as f64;
                    calls_ok *= (1.0 - failed).powf(per_request);
                }
                if g.node(&e.target).is_some_and(|t| t.kind == NodeKind::Workload) {
                    edges.push(ProfileEdge {
                        source: n.id.clone(),
                        target: e.target.clone(),
                        calls_per_request: per_request,
                        rps: e.stats.rps,
                    });
                }
            }
            let error_pct = n.inbound.error_pct.unwrap_or(0.0);
            let p50 = (lat(|l| l.p50, &n.inbound) - downstream_p50).max(0.1);
            let p99 = (lat(|l| l.p99, &n.inbound) - downstream_p99).max(p50 * 1.01);
            versions.push(ProfileVersion {
                namespace: n.namespace.clone(),
                app: n.app.clone(),
                version: n.version.clone().unwrap_or_else(|| "-".into()),
                rps: n.inbound.rps,
                user_rps,
                error_pct,
                own_error_pct: own_error_pct(error_pct, calls_ok),
                service_p50_ms: p50,
                service_p99_ms: p99,
            });
        }
        Self { revision: g.revision, window_seconds: g.window_seconds, versions, edges }
    }
}

/// One span of a kept trace (`/api/v1/traces/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceSpan {
    /// Span id, 16 hex digits.
    pub span_id: String,
    /// Parent span id, 16 hex digits; empty for a root span.
    pub parent_span_id: String,
    /// The workload that reported it (`ns/app/version`).
    pub workload: String,
    /// `client`, `server`, `producer`, `consumer` or `internal`.
    pub kind: String,
    /// The span's name.
    pub name: String,
    /// Start, Unix nanoseconds.
    pub start_unix_nano: u64,
    /// Duration, milliseconds.
    pub duration_ms: f64,
    /// HTTP status, when the span has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// gRPC status code, when the span has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u8>,
    /// Whether the span failed by the graph's one rule (5xx, a server-fault gRPC code, no answer).
    pub failed: bool,
    /// Whom a client span called (`peer.service`, `server.address`), when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// `/api/v1/traces/{id}` and `meshlens trace ID`: one kept trace, its spans in start order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceBody {
    /// Trace id, 32 hex digits.
    pub trace_id: String,
    /// Its spans, by start time.
    pub spans: Vec<TraceSpan>,
    /// The trace in the user's Jaeger or Tempo (the collector's `--trace-link`), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl TraceSpan {
    /// Its status as the waterfalls print it: `grpc N`, the HTTP status, or `-`.
    pub fn status_text(&self) -> String {
        match (self.http_status, self.grpc_status) {
            (_, Some(g)) => format!("grpc {g}"),
            (Some(h), None) => h.to_string(),
            (None, None) => "-".to_owned(),
        }
    }

    /// Its end, Unix nanoseconds.
    pub fn end_unix_nano(&self) -> u64 {
        self.start_unix_nano + (self.duration_ms * 1e6) as u64
    }
}

impl TraceBody {
    /// The trace's time line: the earliest start and the latest end (at least 1 ns apart), Unix ns.
    pub fn time_line(&self) -> (u64, u64) {
        let start = self.spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
        let end = self.spans.iter().map(TraceSpan::end_unix_nano).max().unwrap_or(start).max(start + 1);
        (start, end)
    }

    /// Span indices in tree order (each under its parent, siblings by start), with their depth; a
    /// span whose parent is not kept is a root.
    pub fn tree_order(&self) -> Vec<(usize, usize)> {
        let ids: std::collections::HashSet<&str> = self.spans.iter().map(|s| s.span_id.as_str()).collect();
        let mut order = Vec::with_capacity(self.spans.len());
        let mut stack: Vec<(usize, usize)> = self
            .spans
            .iter()
            .enumerate()
            .filter(|(_, s)| s.parent_span_id.is_empty() || !ids.contains(s.parent_span_id.as_str()))
            .map(|(i, _)| (i, 0))
            .rev()
            .collect();
        let mut seen = vec![false; self.spans.len()];
        while let Some((i, depth)) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            order.push((i, depth));
            // The spans are sorted by start, so children pushed in reverse pop in start order.
            for (j, c) in self.spans.iter().enumerate().rev() {
                if c.parent_span_id == self.spans[i].span_id && !seen[j] {
                    stack.push((j, depth + 1));
                }
            }
        }
        order
    }
}

/// One trace in a list of kept traces (`/api/v1/traces`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    /// Trace id, 32 hex digits.
    pub trace_id: String,
    /// Earliest span start, Unix nanoseconds.
    pub start_unix_nano: u64,
    /// From the earliest start to the latest end, milliseconds.
    pub duration_ms: f64,
    /// Spans kept.
    pub spans: usize,
    /// Whether any span failed.
    pub failed: bool,
    /// The workloads it went through, in the order their first spans started.
    pub workloads: Vec<String>,
    /// The trace in the user's Jaeger or Tempo, when `--trace-link` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// `/api/v1/traces`: the kept traces that match, newest first (or slowest first).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TracesBody {
    /// Matching traces.
    pub traces: Vec<TraceSummary>,
    /// Traces kept now.
    pub kept: usize,
    /// Spans kept now, and the most that are kept (`--trace-store-spans`).
    pub spans_kept: usize,
    /// The bound on spans kept.
    pub spans_bound: usize,
}

/// One request behind an edge (an exemplar): its trace, and whether the collector still keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exemplar {
    /// Trace id, 32 hex digits.
    pub trace_id: String,
    /// The caller's node id (the graph's workload view).
    pub source: String,
    /// The callee's node id.
    pub target: String,
    /// The request's latency, milliseconds (the callee's span; the caller's when it had none).
    pub latency_ms: f64,
    /// When it arrived, Unix seconds.
    pub time_unix: u64,
    /// Whether it failed by the graph's rule.
    pub failed: bool,
    /// Whether the trace is in the collector's trace store (`/api/v1/traces/{id}` opens it).
    pub kept: bool,
    /// The trace in the user's Jaeger or Tempo, when `--trace-link` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// `/api/v1/exemplars`: the requests behind a node (the edges into it) or an edge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExemplarsBody {
    /// The newest failed requests, newest first.
    pub failed: Vec<Exemplar>,
    /// The slowest requests of the last five minutes, slowest first.
    pub slowest: Vec<Exemplar>,
}

/// `/api/v1/routes`: one service's routes over a window, as its callers' agents saw them (the
/// columns of `linkerd viz routes`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoutesBody {
    /// `namespace/app` of the service.
    pub service: String,
    /// The caller the rows are limited to, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub from: Option<String>,
    /// The stats window.
    pub window_seconds: u64,
    /// Routes with traffic in the window, declared ones in name order, `[default]` last.
    pub routes: Vec<RouteRow>,
}

/// One route of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteRow {
    /// The route's name (`[default]`: requests no declared route fits).
    pub route: String,
    /// `namespace/app` of the service.
    pub service: String,
    /// Callers (`namespace/app/version`) with traffic on it in the window.
    pub callers: Vec<String>,
    /// Requests as the callers saw them, one per request whatever its retries (effective): count,
    /// rate, success, latency of the whole request, and the retries sent.
    pub stats: Stats,
    /// Attempts a second: requests plus retries (Linkerd's actual RPS).
    pub actual_rps: f64,
    /// Percent of attempts that succeeded (Linkerd's actual success); absent without traffic.
    pub actual_success_pct: Option<f64>,
}

impl RouteRow {
    /// Fills the actual figures from the effective ones: every request that succeeded did so on
    /// exactly one attempt, and every retry is an attempt that came after a failed one.
    pub fn new(route: String, service: String, callers: Vec<String>, stats: Stats, covered_secs: f64) -> Self {
        let attempts = stats.requests + stats.retries.unwrap_or(0);
        let succeeded = stats.requests - stats.errors.min(stats.requests);
        let actual_rps = crate::stats::round2(attempts as f64 / covered_secs.max(1.0));
        let actual_success_pct =
            (attempts > 0).then(|| crate::stats::round2(100.0 * succeeded as f64 / attempts as f64));
        Self { route, service, callers, stats, actual_rps, actual_success_pct }
    }
}
