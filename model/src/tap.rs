//! The shapes of a live tap, as `linkerd viz tap` shows one: the requests an agent sees, sampled.
//!
//! A tap is opened against the collector (`GET /api/v1/tap`); the collector tells the agents of the
//! tapped workload what it wants ([`TapInterest`]), each agent matches its requests against every
//! open tap's `--find` expression ([`TapField`], parsed by the same parser as the graph's find) and
//! sends what matched, at most [`TapSpec::max_rps`] a second per tap ([`TapBatch`]); the collector
//! streams the [`TapEvent`]s to whoever opened the tap. Nothing here does IO.

use serde::{Deserialize, Serialize};

use crate::find::{self, Expr, Fields, FindError, Op, Value, compare_num, compare_text};
use crate::identity::Workload;

/// Most taps open at once in one collector; one more is refused (429) and counted.
pub const MAX_TAPS: usize = 32;
/// The most events a second one agent sends for one tap (linkerd's `--max-rps` default is 100).
pub const MAX_TAP_RPS: u32 = 100;
/// Most events an agent holds between two sends; past it they are dropped and counted.
pub const AGENT_TAP_QUEUE: usize = 1024;
/// Most events the collector holds for one tap's stream before it drops (counted in the stream's
/// status and in `/metrics`).
pub const TAP_STREAM_QUEUE: usize = 4096;
/// The longest `--find` expression, in bytes.
pub const MAX_FIND_BYTES: usize = 1024;
/// Longest path a tap event carries; a longer one is cut (at a character boundary) and ends in `…`.
/// With [`MAX_TAP_METHOD`], a full agent queue ([`AGENT_TAP_QUEUE`] events) stays well inside the
/// collector's batch limit (4 MiB).
pub const MAX_TAP_PATH: usize = 2048;
/// Longest method a tap event carries (extension methods are tokens of any length).
pub const MAX_TAP_METHOD: usize = 32;

/// `s` cut to at most `max` bytes, marked with `…` when cut.
pub fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Which side of the tapped agent a request passed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The workload called out (seen by its outbound listener).
    #[default]
    Outbound,
    /// A caller called the workload (seen by its inbound listener).
    Inbound,
}

impl Direction {
    /// `out` or `in`, as linkerd's tap prints it.
    pub fn short(self) -> &'static str {
        match self {
            Direction::Outbound => "out",
            Direction::Inbound => "in",
        }
    }
}

/// One request an agent saw, answered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TapEvent {
    /// When it started, ms since the Unix epoch.
    pub time_unix_ms: u64,
    /// Which way it went.
    pub direction: Direction,
    /// The caller's node id (`unknown` when an inbound caller did not say).
    pub source: String,
    /// The service called (outbound), or the workload's own id (inbound).
    pub destination: String,
    /// The version the split picked (outbound), when the request reached one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_version: Option<String>,
    /// HTTP method.
    pub method: String,
    /// The path (a gRPC call's is `/package.Service/Method`).
    pub path: String,
    /// The route it matched (outbound; `[default]` when none did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// HTTP status of the answer.
    pub status: u16,
    /// gRPC status, for a gRPC answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u8>,
    /// Whole latency, ms.
    pub latency_ms: f64,
    /// Retries the agent sent (outbound).
    pub retries: u32,
    /// W3C trace id, hex.
    pub trace_id: String,
    /// Whether the trace was sampled (its spans were exported, so `meshlens trace` can show it).
    pub sampled: bool,
}

impl TapEvent {
    /// Whether it failed: a 5xx, or a gRPC error.
    pub fn failed(&self) -> bool {
        self.status >= 500 || self.grpc_status.is_some_and(|c| c != 0)
    }

    /// Whether `expr` holds for it.
    pub fn matches(&self, expr: &Expr<TapField>) -> bool {
        expr.eval_by(&|f, op, v| match (f.num(self), v) {
            (Some(n), Value::Num(v)) => compare_num(n, op, *v),
            (None, Value::Text(v)) => {
                let text = f.text(self);
                // `to = reviews` matches `reviews` and its versions' ids alike.
                compare_text(text, op, v)
                    || (f == TapField::To
                        && op == Op::Eq
                        && self.destination_version.as_deref().is_some_and(|dv| compare_text(dv, op, v)))
            }
            _ => false,
        })
    }
}

/// The fields of `meshlens tap --find`: `method`, `path`, `route`, `status`, `grpc`, `latency` (ms),
/// `retries`, `from` (the caller), `to` (the service called), `direction` (`in`/`out`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapField {
    /// HTTP method.
    Method,
    /// Request path.
    Path,
    /// Route name.
    Route,
    /// HTTP status.
    Status,
    /// gRPC status (-1 when not gRPC).
    Grpc,
    /// Latency, ms.
    Latency,
    /// Retries the caller's agent made.
    Retries,
    /// The caller's id.
    From,
    /// The service called.
    To,
    /// `in` or `out`.
    Direction,
}

impl Fields for TapField {
    const EXPECTED: &'static str = "method, path, route, status, grpc, latency, retries, from, to or direction";

    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "method" => TapField::Method,
            "path" => TapField::Path,
            "route" => TapField::Route,
            "status" => TapField::Status,
            "grpc" => TapField::Grpc,
            "latency" => TapField::Latency,
            "retries" => TapField::Retries,
            "from" | "source" => TapField::From,
            "to" | "destination" => TapField::To,
            "direction" | "dir" => TapField::Direction,
            _ => return None,
        })
    }

    fn numeric(self) -> bool {
        matches!(self, TapField::Status | TapField::Grpc | TapField::Latency | TapField::Retries)
    }
}

impl TapField {
    fn num(self, e: &TapEvent) -> Option<f64> {
        Some(match self {
            TapField::Status => f64::from(e.status),
            TapField::Grpc => e.grpc_status.map_or(-1.0, f64::from),
            TapField::Latency => e.latency_ms,
            TapField::Retries => f64::from(e.retries),
            _ => return None,
        })
    }

    fn text(self, e: &TapEvent) -> &str {
        match self {
            TapField::Method => &e.method,
            TapField::Path => &e.path,
            TapField::Route => e.route.as_deref().unwrap_or(""),
            TapField::From => &e.source,
            TapField::To => &e.destination,
            TapField::Direction => e.direction.short(),
            _ => "",
        }
    }
}

/// Parses a `--find` expression (at most [`MAX_FIND_BYTES`]).
pub fn parse_find(s: &str) -> Result<Expr<TapField>, FindError> {
    if s.len() > MAX_FIND_BYTES {
        return Err(FindError { at: MAX_FIND_BYTES, message: format!("longer than {MAX_FIND_BYTES} bytes") });
    }
    find::parse_fields(s)
}

/// Whether a tap's target names this workload: its app (`reviews`), its app id (`ns/reviews`), its
/// node id (`ns/reviews/v2`), or linkerd's `deploy/reviews`.
pub fn targets(target: &str, w: &Workload) -> bool {
    let target = target.strip_prefix("deploy/").or_else(|| target.strip_prefix("deployment/")).unwrap_or(target);
    target == w.app || target == w.app_id() || target == w.id()
}

/// One open tap, as an agent is told of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapSpec {
    /// The tap's id in this collector.
    pub id: u64,
    /// Only requests this `--find` expression holds for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub find: Option<String>,
    /// At most this many events a second from each agent ([`MAX_TAP_RPS`] at most).
    pub max_rps: u32,
}

/// What the collector wants from one agent: every open tap of its workload (none: tap nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapInterest {
    /// The open taps.
    pub taps: Vec<TapSpec>,
}

/// An event and the taps it is for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tapped {
    /// The taps whose expression held and whose rate allowed it.
    pub taps: Vec<u64>,
    /// The request.
    pub event: TapEvent,
}

/// What an agent sends: the taps it now applies (each acknowledged once, so a tap knows it is
/// live), the events since its last send, and how many it dropped (queue full).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TapBatch {
    /// The agent's workload.
    pub workload: Workload,
    /// Taps it started applying since its last send.
    #[serde(default)]
    pub acked: Vec<u64>,
    /// Events, oldest first.
    #[serde(default)]
    pub events: Vec<Tapped>,
    /// Events it dropped since its last send: its queue ([`AGENT_TAP_QUEUE`]) was full.
    #[serde(default)]
    pub dropped: u64,
}

/// A tap stream's status line (`event: status` on the SSE stream).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapStatus {
    /// Agents of the tapped workload connected to this collector.
    pub agents: usize,
    /// Of them, those that applied the tap.
    pub live: usize,
    /// Events sent on this stream so far.
    pub events: u64,
    /// Events lost on the way (an agent's queue or this stream's full).
    pub dropped: u64,
}

/// Most rows [`Top`] keeps; requests of a new key past it are counted in [`Top::other`].
pub const MAX_TOP_ROWS: usize = 10_000;

/// One row of `meshlens top`: the requests of one source, destination, method and path.
#[derive(Clone, Debug, PartialEq)]
pub struct TopRow {
    /// The caller's id.
    pub source: String,
    /// Service called.
    pub destination: String,
    /// HTTP method.
    pub method: String,
    /// Request path (its query left off).
    pub path: String,
    /// Requests seen.
    pub count: u64,
    /// Fastest, ms.
    pub best_ms: f64,
    /// Slowest, ms.
    pub worst_ms: f64,
    /// The latest, ms.
    pub last_ms: f64,
    /// Of them, succeeded.
    pub succeeded: u64,
}

impl TopRow {
    /// Success percent.
    pub fn success_pct(&self) -> f64 {
        if self.count == 0 { 0.0 } else { 100.0 * self.succeeded as f64 / self.count as f64 }
    }
}

/// Tap events aggregated by source, destination, method and path, as `linkerd viz top` does.
#[derive(Clone, Debug, Default)]
pub struct Top {
    rows: std::collections::HashMap<(String, String, String, String), TopRow>,
    /// Requests not kept: past [`MAX_TOP_ROWS`] keys.
    pub other: u64,
    /// Requests seen.
    pub total: u64,
}

impl Top {
    /// Counts one request.
    pub fn add(&mut self, e: &TapEvent) {
        self.total += 1;
        let key = (e.source.clone(), e.destination.clone(), e.method.clone(), e.path.clone());
        if !self.rows.contains_key(&key) && self.rows.len() >= MAX_TOP_ROWS {
            self.other += 1;
            return;
        }
        let ok = u64::from(!e.failed());
        let row = self.rows.entry(key).or_insert_with(|| TopRow {
            source: e.source.clone(),
            destination: e.destination.clone(),
            method: e.method.clone(),
            path: e.path.clone(),
            count: 0,
            best_ms: f64::INFINITY,
            worst_ms: 0.0,
            last_ms: 0.0,
            succeeded: 0,
        });
        row.count += 1;
        row.succeeded += ok;
        row.best_ms = row.best_ms.min(e.latency_ms);
        row.worst_ms = row.worst_ms.max(e.latency_ms);
        row.last_ms = e.latency_ms;
    }

    /// The rows, most requests first (then by source, destination, path).
    pub fn rows(&self) -> Vec<&TopRow> {
        let mut rows: Vec<&TopRow> = self.rows.values().collect();
        rows.sort_by(|a, b| {
            b.count.cmp(&a.count).then_with(|| {
                (&a.source, &a.destination, &a.path, &a.method).cmp(&(&b.source, &b.destination, &b.path, &b.method))
            })
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(status: u16, latency: f64) -> TapEvent {
        TapEvent {
            time_unix_ms: 0,
            direction: Direction::Outbound,
            source: "shop/productpage/v1".into(),
            destination: "reviews".into(),
            destination_version: Some("v2".into()),
            method: "GET".into(),
            path: "/reviews/1".into(),
            route: Some("GET /reviews/{id}".into()),
            status,
            grpc_status: None,
            latency_ms: latency,
            retries: 1,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            sampled: true,
        }
    }

    #[test]
    fn long_fields_are_cut_whole_characters_and_marked() {
        assert_eq!(clip("/short".into(), MAX_TAP_PATH), "/short");
        let long = format!("/{}", "é".repeat(MAX_TAP_PATH));
        let path = clip(long.clone(), MAX_TAP_PATH);
        assert!(path.len() <= MAX_TAP_PATH && path.ends_with('…'), "{}", path.len());
        let method = clip(long, MAX_TAP_METHOD);
        assert!(method.len() <= MAX_TAP_METHOD && method.ends_with('…'));
        // A full agent queue of the largest events fits the collector's 4 MiB batch.
        let e = TapEvent { path, method, ..event(200, 1.0) };
        let batch = serde_json::to_vec(&vec![e; AGENT_TAP_QUEUE]).unwrap();
        assert!(batch.len() < 4 << 20, "{}", batch.len());
    }

    #[test]
    fn find_expressions_judge_requests() {
        let ok = event(200, 12.0);
        let bad = event(503, 250.0);
        for (expr, want_ok, want_bad) in [
            ("status >= 500", false, true),
            ("latency > 100 and method = get", false, true),
            ("path ~ /reviews and not status = 200", false, true),
            ("to = reviews and direction = out", true, true),
            ("to = v2", true, true),
            ("from ~ productpage", true, true),
            ("retries = 1 and route ~ {id}", true, true),
            ("grpc = -1", true, true),
        ] {
            let e = parse_find(expr).unwrap();
            assert_eq!((ok.matches(&e), bad.matches(&e)), (want_ok, want_bad), "{expr}");
        }
    }

    #[test]
    fn top_counts_by_path_with_best_worst_last_and_success() {
        let mut top = Top::default();
        for (status, ms) in [(200, 5.0), (503, 40.0), (200, 2.0)] {
            top.add(&event(status, ms));
        }
        let mut other = event(200, 1.0);
        other.path = "/other".into();
        top.add(&other);
        let rows = top.rows();
        assert_eq!(rows.len(), 2);
        let r = rows[0];
        assert_eq!((r.count, r.best_ms, r.worst_ms, r.last_ms, r.succeeded), (3, 2.0, 40.0, 2.0, 2));
        assert!((r.success_pct() - 66.666).abs() < 0.01);
        assert_eq!((rows[1].path.as_str(), top.total), ("/other", 4));
    }

    #[test]
    fn a_bad_expression_names_what_is_wrong() {
        let e = parse_find("rps > 3").unwrap_err();
        assert!(e.message.contains("unknown field \"rps\"") && e.message.contains("latency"), "{e}");
        assert!(parse_find("method > 3").unwrap_err().message.contains("text fields"));
        assert!(parse_find(&"a".repeat(MAX_FIND_BYTES + 1)).unwrap_err().message.contains("longer than"));
    }

    #[test]
    fn a_target_names_an_app_its_id_or_a_version() {
        let w = Workload { namespace: "shop".into(), app: "reviews".into(), version: Some("v2".into()), cluster: None };
        for t in ["reviews", "shop/reviews", "shop/reviews/v2", "deploy/reviews"] {
            assert!(targets(t, &w), "{t}");
        }
        for t in ["review", "shop/reviews/v1", "other/reviews"] {
            assert!(!targets(t, &w), "{t}");
        }
    }
}
