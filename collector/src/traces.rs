//! The traces behind the graph: a bounded store of the spans the collector receives, kept whole per
//! trace so that an edge's failed or slow request can be opened as the hops it took
//! (`/api/v1/traces/{id}`, `meshlens trace ID`).
//!
//! Bounded by spans, not traces: past the bound the oldest trace (by its first span's arrival) is
//! dropped whole, so what is kept is always whole traces of the recent past. A trace with more spans
//! than [`MAX_SPANS_PER_TRACE`] keeps its first ones and counts the rest. Both are counted
//! (`meshlens_collector_traces_evicted_total`, `..._trace_spans_dropped_total`). This is not a trace
//! backend: it answers "show me one" for what the graph shows now; `--trace-link` sends users to
//! their Jaeger or Tempo for the rest.

use std::collections::VecDeque;
use std::sync::Arc;

use hashbrown::HashMap;
use meshlens_model::api::{TraceBody, TraceSpan, TraceSummary};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::otlp::lite::{Span, SpanAttrs};

/// Spans kept of one trace at most.
pub(crate) const MAX_SPANS_PER_TRACE: usize = 1000;

/// One kept span, compact.
#[derive(Clone, Debug)]
struct Kept {
    span_id: [u8; 8],
    parent: [u8; 8],
    workload: Arc<str>,
    kind: i32,
    name: Box<str>,
    start_ns: u64,
    end_ns: u64,
    http_status: Option<u16>,
    grpc: Option<u8>,
    failed: bool,
    peer: Option<Box<str>>,
}

impl Kept {
    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.name.len() + self.peer.as_ref().map_or(0, |p| p.len())
    }
}

/// What the trace store is told of one span besides the span itself (read once by the pairing).
pub struct SpanNote<'a> {
    /// The reporting workload's id.
    pub workload: &'a Arc<str>,
    /// Its attributes, scanned.
    pub attrs: &'a SpanAttrs<'a>,
    /// Whether it failed by the graph's rule.
    pub failed: bool,
}

/// Which kept traces a search wants.
#[derive(Clone, Debug, Default)]
pub struct Search {
    /// Through this workload id (a span it reported). With `to`: a client span of it. Alone, a
    /// trace failed here when a span of its own failed or a span it called did.
    pub from: Option<String>,
    /// A server span of this workload id whose parent is a client span of `from` (an edge).
    pub to: Option<String>,
    /// Only traces with a failed span (on the edge, when `from`/`to` are given).
    pub failed: bool,
    /// Slowest first instead of newest first.
    pub slowest: bool,
    /// How many.
    pub limit: usize,
}

/// Whole traces of the recent past, bounded by spans.
pub struct TraceStore {
    bound: usize,
    spans: usize,
    traces: HashMap<[u8; 16], Vec<Kept>>,
    order: VecDeque<[u8; 16]>,
    heap: usize,
    /// Traces dropped whole to stay within the bound.
    pub evicted: u64,
    /// Spans past [`MAX_SPANS_PER_TRACE`] in their trace, or with no valid ids.
    pub dropped: u64,
}

/// Lowercase hex of an id.
pub(crate) fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// A trace id from 32 hex digits.
pub(crate) fn parse_trace_id(text: &str) -> Option<[u8; 16]> {
    if text.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(id)
}

fn kind_name(kind: i32) -> &'static str {
    match SpanKind::try_from(kind).unwrap_or(SpanKind::Unspecified) {
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal | SpanKind::Unspecified => "internal",
    }
}

fn is_kind(k: &Kept, kind: SpanKind) -> bool {
    k.kind == kind as i32
}

impl TraceStore {
    /// A store keeping at most `bound` spans; 0 keeps none.
    pub fn new(bound: usize) -> Self {
        Self { bound, spans: 0, traces: HashMap::new(), order: VecDeque::new(), heap: 0, evicted: 0, dropped: 0 }
    }

    /// Whether a trace is kept.
    pub fn contains(&self, trace: &[u8; 16]) -> bool {
        self.traces.contains_key(trace)
    }

    /// Spans kept now.
    pub fn spans(&self) -> usize {
        self.spans
    }

    /// Traces kept now.
    pub fn len(&self) -> usize {
        self.traces.len()
    }

    /// Whether no trace is kept.
    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }

    /// The most spans kept.
    pub fn bound(&self) -> usize {
        self.bound
    }

    /// Approximate heap bytes held (for the memory gauge).
    pub fn heap_bytes(&self) -> usize {
        self.heap + self.traces.allocation_size() + self.order.capacity() * 16
    }

    /// Keeps one span.
    pub fn keep(&mut self, span: &Span, note: &SpanNote<'_>) {
        if self.bound == 0 {
            return;
        }
        let (Ok(trace), Ok(span_id)) = (<[u8; 16]>::try_from(span.trace_id.as_ref()), span.span_id.as_ref().try_into())
        else {
            self.dropped += 1;
            return;
        };
        let parent = span.parent_span_id.as_ref().try_into().unwrap_or([0; 8]);
        let a = note.attrs;
        let kept = Kept {
            span_id,
            parent,
            workload: note.workload.clone(),
            kind: span.kind,
            name: String::from_utf8_lossy(&span.name).into(),
            start_ns: span.start_time_unix_nano,
            end_ns: span.end_time_unix_nano,
            http_status: a.http_status.and_then(|s| u16::try_from(s).ok()),
            grpc: a.grpc_code.and_then(|c| u8::try_from(c).ok()),
            failed: note.failed,
            peer: a.peer_service.or(a.server_address).or(a.net_peer_name).or(a.url_host).map(Into::into),
        };
        let bytes = kept.bytes();
        match self.traces.get_mut(&trace) {
            Some(spans) if spans.len() >= MAX_SPANS_PER_TRACE => {
                self.dropped += 1;
                return;
            }
            Some(spans) => spans.push(kept),
            None => {
                self.traces.insert(trace, vec![kept]);
                self.order.push_back(trace);
            }
        }
        self.spans += 1;
        self.heap += bytes;
        while self.spans > self.bound {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some(gone) = self.traces.remove(&oldest) {
                self.spans -= gone.len();
                self.heap -= gone.iter().map(Kept::bytes).sum::<usize>();
                self.evicted += 1;
            }
        }
    }

    /// One kept trace, its spans by start time; `link` is the `--trace-link` template.
    pub fn get(&self, trace: &[u8; 16], link: Option<&str>) -> Option<TraceBody> {
        let kept = self.traces.get(trace)?;
        let mut spans: Vec<TraceSpan> = kept
            .iter()
            .map(|k| TraceSpan {
                span_id: hex(&k.span_id),
                parent_span_id: if k.parent == [0; 8] { String::new() } else { hex(&k.parent) },
                workload: k.workload.to_string(),
                kind: kind_name(k.kind).to_owned(),
                name: k.name.to_string(),
                start_unix_nano: k.start_ns,
                duration_ms: k.end_ns.saturating_sub(k.start_ns) as f64 / 1e6,
                http_status: k.http_status,
                grpc_status: k.grpc,
                failed: k.failed,
                peer: k.peer.as_deref().map(str::to_owned),
            })
            .collect();
        spans.sort_by_key(|s| s.start_unix_nano);
        let trace_id = hex(trace);
        Some(TraceBody { link: link_for(link, &trace_id), trace_id, spans })
    }

    /// The kept traces a search wants.
    pub fn search(&self, q: &Search, link: Option<&str>) -> Vec<TraceSummary> {
        let mut out: Vec<TraceSummary> = Vec::new();
        for id in self.order.iter().rev() {
            let Some(spans) = self.traces.get(id) else { continue };
            let Some(failed) = matches(spans, q) else { continue };
            if q.failed && !failed {
                continue;
            }
            let start = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
            let end = spans.iter().map(|s| s.end_ns).max().unwrap_or(start);
            let mut by_start: Vec<&Kept> = spans.iter().collect();
            by_start.sort_by_key(|s| s.start_ns);
            let mut workloads: Vec<String> = Vec::new();
            for s in by_start {
                if !workloads.iter().any(|w| **w == *s.workload) {
                    workloads.push(s.workload.to_string());
                }
            }
            let trace_id = hex(id);
            out.push(TraceSummary {
                link: link_for(link, &trace_id),
                trace_id,
                start_unix_nano: start,
                duration_ms: end.saturating_sub(start) as f64 / 1e6,
                spans: spans.len(),
                failed,
                workloads,
            });
            if !q.slowest && out.len() >= q.limit {
                break;
            }
        }
        if q.slowest {
            out.sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms));
            out.truncate(q.limit);
        }
        out
    }
}

/// Whether a trace matches the search's `from`/`to`, and if so whether it failed there (on the
/// edge's spans for an edge search, anywhere otherwise).
fn matches(spans: &[Kept], q: &Search) -> Option<bool> {
    match (&q.from, &q.to) {
        (None, None) => Some(spans.iter().any(|s| s.failed)),
        (Some(w), None) | (None, Some(w)) => {
            // Failed here: a span of the workload's own, or a call it made (its outbound errors).
            let mine: Vec<&Kept> = spans.iter().filter(|s| *s.workload == **w).collect();
            let called = |s: &Kept| mine.iter().any(|m| m.span_id == s.parent);
            (!mine.is_empty()).then(|| spans.iter().any(|s| s.failed && (*s.workload == **w || called(s))))
        }
        (Some(from), Some(to)) => {
            let mut hit = None;
            for server in spans.iter().filter(|s| *s.workload == **to && is_kind(s, SpanKind::Server)) {
                let client = spans
                    .iter()
                    .find(|c| c.span_id == server.parent && *c.workload == **from && is_kind(c, SpanKind::Client));
                if let Some(c) = client {
                    let failed = server.failed || c.failed;
                    hit = Some(hit.unwrap_or(false) || failed);
                }
            }
            // A request from outside the mesh (a root server span) is on the `user` edge.
            if hit.is_none() && from == "user" {
                for s in spans.iter().filter(|s| *s.workload == **to && is_kind(s, SpanKind::Server)) {
                    if s.parent == [0; 8] {
                        hit = Some(hit.unwrap_or(false) || s.failed);
                    }
                }
            }
            hit
        }
    }
}

/// The user's trace UI link for a trace: `template` with `{trace_id}` replaced.
pub(crate) fn link_for(template: Option<&str>, trace_id: &str) -> Option<String> {
    template.map(|t| t.replace("{trace_id}", trace_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn span(trace: u8, id: u8, parent: u8, kind: SpanKind) -> Span {
        Span {
            trace_id: Bytes::from(vec![trace; 16]),
            span_id: Bytes::from(vec![id; 8]),
            parent_span_id: if parent == 0 { Bytes::new() } else { Bytes::from(vec![parent; 8]) },
            name: Bytes::from_static(b"GET /"),
            kind: kind as i32,
            start_time_unix_nano: u64::from(id) * 1000,
            end_time_unix_nano: u64::from(id) * 1000 + 500,
            ..Span::default()
        }
    }

    fn keep(store: &mut TraceStore, s: &Span, who: &str, failed: bool) {
        let attrs = SpanAttrs::scan(&[]);
        let w: Arc<str> = who.into();
        store.keep(s, &SpanNote { workload: &w, attrs: &attrs, failed });
    }

    #[test]
    fn the_oldest_whole_trace_goes_past_the_bound_and_an_edge_finds_its_pair() {
        let mut store = TraceStore::new(4);
        keep(&mut store, &span(1, 1, 0, SpanKind::Server), "shop/a/v1", false);
        keep(&mut store, &span(1, 2, 1, SpanKind::Client), "shop/a/v1", false);
        keep(&mut store, &span(1, 3, 2, SpanKind::Server), "shop/b/v1", true);
        keep(&mut store, &span(2, 1, 0, SpanKind::Server), "shop/a/v1", false);
        assert_eq!((store.len(), store.spans()), (2, 4));
        let edge =
            Search { from: Some("shop/a/v1".into()), to: Some("shop/b/v1".into()), limit: 10, ..Search::default() };
        let found = store.search(&edge, Some("https://tempo/{trace_id}"));
        assert_eq!(found.len(), 1);
        assert!(found[0].failed);
        assert_eq!(found[0].link.as_deref(), Some(format!("https://tempo/{}", "01".repeat(16)).as_str()));
        assert_eq!(found[0].workloads, ["shop/a/v1", "shop/b/v1"]);
        let body = store.get(&[1; 16], None).unwrap();
        assert_eq!(body.spans.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>(), ["server", "client", "server"]);
        assert_eq!(body.spans[2].parent_span_id, body.spans[1].span_id);
        // A fifth span drops trace 1 whole (three spans), not just one of them.
        keep(&mut store, &span(3, 1, 0, SpanKind::Server), "shop/a/v1", false);
        assert_eq!((store.len(), store.spans(), store.evicted), (2, 2, 1));
        assert!(store.get(&[1; 16], None).is_none());
        assert!(store.search(&edge, None).is_empty());
        assert_eq!(parse_trace_id(&"0a".repeat(16)), Some([10; 16]));
        assert_eq!(parse_trace_id("xyz"), None);
    }
}
