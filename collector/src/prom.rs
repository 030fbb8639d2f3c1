//! `/metrics`: the graph as the servicegraph connector's `traces_service_graph_*` series (so Grafana's
//! service graph and existing dashboards work), and the collector's own `meshlens_collector_*` health.

use meshlens_model::escape::prometheus_label as escape;
use std::fmt::Write;

use meshlens_model::Peer;

use crate::engine::Engine;
use crate::graph::{EdgeState, PROM_BUCKETS, PromHist};
use crate::hub::Hub;

fn peer_labels(peer: &Peer) -> (String, String, String) {
    match peer {
        Peer::Workload(w) => (w.app.clone(), w.version.clone().unwrap_or_default(), w.namespace.clone()),
        other => (other.display_name(), String::new(), String::new()),
    }
}

/// Which exposition format `/metrics` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus text 0.0.4.
    Text,
    /// OpenMetrics 1.0, with exemplars (trace ids) on histogram buckets.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names it (as Prometheus's
    /// scraper does), else the text format.
    pub(crate) fn from_accept(accept: &str) -> Self {
        if accept.contains("application/openmetrics-text") { Format::OpenMetrics } else { Format::Text }
    }

    /// Its `Content-Type`.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A metric family's `# HELP` and `# TYPE` lines. OpenMetrics names a counter's family without
/// its samples' `_total`.
fn family(out: &mut String, format: Format, name: &str, kind: &str, help: &str) {
    let name = match (format, kind) {
        (Format::OpenMetrics, "counter") => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn hex(id: &[u8; 16]) -> String {
    crate::traces::hex(id)
}

/// The servicegraph `connection_type` of an edge, as Tempo labels it: `virtual_node` when one end
/// has no span of its own (`user`, an `ext:` peer, `unknown` — a lone producer's destination too),
/// else `database` or `messaging_system` by protocol, empty between two instrumented workloads.
fn connection_type(engine: &Engine, e: &EdgeState) -> &'static str {
    let virtual_end = |i: u32| matches!(engine.peer_at(i), Peer::User | Peer::External { .. } | Peer::Unknown);
    if virtual_end(e.source) || virtual_end(e.target) { "virtual_node" } else { e.protocol.connection_type() }
}

/// One sample of a service-graph family: its name suffix (`""`, `_bucket`, `_sum`, `_count`), its
/// labels, its value and, on a bucket, the exemplar kept for it.
pub(crate) struct Sample<'e> {
    /// Appended to the family's name.
    pub suffix: &'static str,
    /// Label pairs, in order.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
    /// The bucket's exemplar (OpenMetrics only).
    pub exemplar: Option<&'e crate::graph::Exemplar>,
}

/// A metric family of the service graph, with its samples: what `/metrics` writes and what
/// `--remote-write` sends, built once ([`graph_families`]).
pub(crate) struct Family<'e> {
    /// Its name (a counter's with `_total`).
    pub name: &'static str,
    /// `counter` or `histogram`.
    pub kind: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// Its samples.
    pub samples: Vec<Sample<'e>>,
}

/// The edge labels, as the servicegraph connector writes them.
fn edge_labels(engine: &Engine, e: &EdgeState) -> Vec<(&'static str, String)> {
    let (c, cv, cn) = peer_labels(engine.peer_at(e.source));
    let (s, sv, sn) = peer_labels(engine.peer_at(e.target));
    let mut labels = vec![
        ("client", c),
        ("server", s),
        ("connection_type", connection_type(engine, e).to_owned()),
        ("client_service_version", cv),
        ("server_service_version", sv),
        ("client_service_namespace", cn),
        ("server_service_namespace", sn),
    ];
    // In a mesh of several clusters, each end's (`k8s.cluster.name`); absent otherwise.
    for (label, peer) in [("client_cluster", e.source), ("server_cluster", e.target)] {
        if let Some(c) = engine.peer_at(peer).workload().and_then(|w| w.cluster.clone()) {
            labels.push((label, c));
        }
    }
    labels
}

fn hist_samples<'e>(out: &mut Vec<Sample<'e>>, labels: &[(&'static str, String)], h: &'e PromHist) {
    let mut cum = 0u64;
    for i in 0..=PROM_BUCKETS.len() {
        let le = PROM_BUCKETS.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
        cum = cum.saturating_add(h.buckets.get(i).copied().unwrap_or(0));
        let mut l = labels.to_vec();
        l.push(("le", le));
        let exemplar = h.exemplars.get(i).and_then(Option::as_ref);
        out.push(Sample { suffix: "_bucket", labels: l, value: cum as f64, exemplar });
    }
    out.push(Sample { suffix: "_sum", labels: labels.to_vec(), value: h.sum, exemplar: None });
    out.push(Sample { suffix: "_count", labels: labels.to_vec(), value: h.count as f64, exemplar: None });
}

/// The service graph as metric families: `traces_service_graph_*` as the servicegraph connector
/// and Tempo name and label them, and `meshlens_grpc_requests_total`. Values are totals since the
/// collector's data began (cumulative counters).
pub(crate) fn graph_families(engine: &Engine) -> Vec<Family<'_>> {
    let labels: Vec<Vec<(&'static str, String)>> = engine.edges().iter().map(|e| edge_labels(engine, e)).collect();
    let counter = |name, help, value: &dyn Fn(&EdgeState) -> u64| Family {
        name,
        kind: "counter",
        help,
        samples: engine
            .edges()
            .iter()
            .zip(&labels)
            .map(|(e, l)| Sample { suffix: "", labels: l.clone(), value: value(e) as f64, exemplar: None })
            .collect(),
    };
    let mut families = vec![
        counter("traces_service_graph_request_total", "Requests between two nodes.", &|e| e.totals.requests),
        counter("traces_service_graph_request_failed_total", "Failed requests between two nodes.", &|e| {
            e.totals.failed
        }),
        counter(
            "meshlens_mtls_requests_total",
            "Requests between two nodes carried over mutual TLS (of traces_service_graph_request_total).",
            &|e| e.totals.mtls,
        ),
    ];
    let histogram = |name, help, h: &dyn for<'x> Fn(&'x EdgeState) -> &'x PromHist| {
        let mut samples = Vec::new();
        for (e, l) in engine.edges().iter().zip(&labels) {
            if h(e).count > 0 {
                hist_samples(&mut samples, l, h(e));
            }
        }
        Family { name, kind: "histogram", help, samples }
    };
    families.push(histogram("traces_service_graph_request_server_seconds", "Time the server took, seconds.", &|e| {
        &e.totals.server
    }));
    families.push(histogram("traces_service_graph_request_client_seconds", "Time the client saw, seconds.", &|e| {
        &e.totals.client
    }));
    families.push(histogram(
        "traces_service_graph_request_messaging_system_seconds",
        "Time between a producer span's end and its consumer span's start, seconds.",
        &|e| &e.totals.messaging,
    ));
    let mut grpc = Vec::new();
    for (e, l) in engine.edges().iter().zip(&labels) {
        for (code, n) in e.totals.grpc.iter().flat_map(|g| g.iter().enumerate()).filter(|(_, n)| **n > 0) {
            let mut l = l.clone();
            l.push(("grpc_response_status", code.to_string()));
            grpc.push(Sample { suffix: "", labels: l, value: *n as f64, exemplar: None });
        }
    }
    families.push(Family {
        name: "meshlens_grpc_requests_total",
        kind: "counter",
        help: "gRPC requests between two nodes by status code (Istio's grpc_response_status).",
        samples: grpc,
    });
    for (name, help, by_node) in [
        (
            "traces_service_graph_unpaired_spans_total",
            "Span halves whose other half never came, by the node that sent them.",
            &engine.pairing.unpaired,
        ),
        (
            "traces_service_graph_dropped_spans_total",
            "Span halves dropped because the pairing store was full, by the node that sent them.",
            &engine.pairing.dropped,
        ),
    ] {
        let mut rows: Vec<(&u32, &[u64; 2])> = by_node.iter().collect();
        rows.sort_unstable();
        let mut samples = Vec::new();
        for (&node, counts) in rows {
            let (n, _, ns) = peer_labels(engine.peer_at(node));
            if counts[0] > 0 {
                let labels =
                    vec![("client", n.clone()), ("client_service_namespace", ns.clone()), ("server", String::new())];
                samples.push(Sample { suffix: "", labels, value: counts[0] as f64, exemplar: None });
            }
            if counts[1] > 0 {
                let labels = vec![("client", String::new()), ("server", n), ("server_service_namespace", ns)];
                samples.push(Sample { suffix: "", labels, value: counts[1] as f64, exemplar: None });
            }
        }
        families.push(Family { name, kind: "counter", help, samples });
    }
    families
}

/// Renders the exposition text.
pub(crate) fn render(engine: &Engine, hub: &Hub, format: Format) -> String {
    let mut out = String::with_capacity(4096 + engine.edges().len() * 2048);
    for f in graph_families(engine) {
        family(&mut out, format, f.name, f.kind, f.help);
        for s in &f.samples {
            out.push_str(f.name);
            out.push_str(s.suffix);
            out.push('{');
            for (i, (k, v)) in s.labels.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(out, "{sep}{k}=\"{}\"", escape(v));
            }
            let _ = write!(out, "}} {}", s.value);
            if format == Format::OpenMetrics
                && let Some(x) = s.exemplar
            {
                let _ = write!(out, " # {{trace_id=\"{}\"}} {} {:.3}", hex(&x.trace_id), x.secs, x.at);
            }
            out.push('\n');
        }
    }
    let c = &hub.counters;
    let mut metric = |name: &str, kind: &str, help: &str, series: &[(&str, u64)]| {
        family(&mut out, format, &format!("meshlens_collector_{name}"), kind, help);
        for (labels, v) in series {
            if labels.is_empty() {
                let _ = writeln!(out, "meshlens_collector_{name} {v}");
            } else {
                let _ = writeln!(out, "meshlens_collector_{name}{{{labels}}} {v}");
            }
        }
    };
    metric(
        "received_total",
        "counter",
        "Items accepted into the ingest queue.",
        &[("signal=\"spans\"", c.spans_received.get()), ("signal=\"data_points\"", c.points_received.get())],
    );
    metric(
        "rejected_total",
        "counter",
        "Items rejected at the door (partial success): resource without service.name, or with a name too long.",
        &[("signal=\"spans\"", c.spans_rejected.get()), ("signal=\"data_points\"", c.points_rejected.get())],
    );
    metric(
        "names_too_long_total",
        "counter",
        "Resources refused, and peer names read as unknown, for a name over 253 bytes.",
        &[("", c.names_too_long.get())],
    );
    metric(
        "connections_refused_total",
        "counter",
        "Connections closed at once because an HTTP listener had --max-connections open.",
        &[("", c.connections_refused.get())],
    );
    metric(
        "tls_handshake_errors_total",
        "counter",
        "TLS handshakes that failed (a plaintext client, an unknown CA, no certificate where one is required) or were late.",
        &[("", c.tls_handshake_errors.get())],
    );
    metric(
        "connection_errors_total",
        "counter",
        "HTTP connections that ended with an error (headers not sent within --header-read-timeout, a broken peer).",
        &[("", c.connection_errors.get())],
    );
    metric(
        "idle_connections_closed_total",
        "counter",
        "HTTP connections closed after no request in flight for --idle-timeout (an HTTP/2 preface and nothing else, an idle keep-alive).",
        &[("", c.idle_connections_closed.get())],
    );
    metric(
        "uploads_refused_total",
        "counter",
        "OTLP uploads answered 408 (an OTLP/HTTP body not whole within --body-read-timeout) or refused as retryable because the in-flight byte budget was spent (503 over HTTP, UNAVAILABLE over gRPC).",
        &[
            ("reason=\"body_timeout\"", c.bodies_timed_out.get()),
            ("reason=\"inflight_budget\"", c.requests_refused_inflight.get()),
        ],
    );
    metric(
        "sse_refused_total",
        "counter",
        "SSE subscriptions refused because --max-sse-subscribers were connected.",
        &[("", c.sse_refused.get())],
    );
    metric(
        "taps_refused_total",
        "counter",
        "Taps (GET /api/v1/tap) refused because the most taps were open at once.",
        &[("", c.taps_refused.get())],
    );
    metric(
        "tap_agents",
        "gauge",
        "Agents subscribed for taps now (each holds one stream open to hear what to sample).",
        &[("", c.tap_agents.get())],
    );
    metric(
        "tap_agents_refused_total",
        "counter",
        "Agents' tap subscriptions refused because the most agents were subscribed.",
        &[("", c.tap_agents_refused.get())],
    );
    metric("tap_events_total", "counter", "Requests agents sent for open taps.", &[("", c.tap_events.get())]);
    metric(
        "tap_events_dropped_total",
        "counter",
        "Tap events lost: an agent's queue was full, or a tap's stream was (a slow client).",
        &[
            ("reason=\"agent_queue\"", c.tap_dropped_agent.get()),
            ("reason=\"stream_full\"", c.tap_dropped_stream.get()),
        ],
    );
    metric(
        "spans_bad_ids_total",
        "counter",
        "Spans refused for a trace id that is not 16 bytes or a span id that is not 8, or all zero.",
        &[("", c.spans_bad_ids.get())],
    );
    metric(
        "refused_requests_total",
        "counter",
        "Export requests refused.",
        &[
            ("reason=\"queue_full\"", c.requests_refused_queue_full.get()),
            ("reason=\"malformed\"", c.requests_malformed.get()),
            ("reason=\"too_large\"", c.requests_too_large.get()),
        ],
    );
    metric(
        "dropped_total",
        "counter",
        "Items dropped after acceptance because a limit was reached.",
        &[
            ("signal=\"spans\",reason=\"cardinality\"", c.spans_dropped_cardinality.get()),
            ("signal=\"spans\",reason=\"store_full\"", c.spans_dropped_store_full.get()),
            ("signal=\"data_points\",reason=\"cardinality\"", c.points_dropped_cardinality.get()),
            ("signal=\"data_points\",reason=\"unsupported_type\"", c.points_unsupported.get()),
        ],
    );
    metric(
        "data_points_ignored_total",
        "counter",
        "Data points that make no edge: HTTP duration metrics without meshlens's mesh attributes (an SDK's own).",
        &[("reason=\"no_mesh_attributes\"", c.points_ignored_sdk.get())],
    );
    metric("spans_paired_total", "counter", "Span halves paired into an edge.", &[("", c.spans_paired.get())]);
    metric(
        "spans_expired_total",
        "counter",
        "Span halves whose other half never came (not an edge).",
        &[("kind=\"server\"", c.expired_server.get()), ("kind=\"consumer\"", c.expired_consumer.get())],
    );
    metric(
        "spans_unpaired_total",
        "counter",
        "Span halves with no other half, drawn as an edge to a virtual node.",
        &[("kind=\"client\"", c.unpaired_client.get()), ("kind=\"producer\"", c.unpaired_producer.get())],
    );
    metric(
        "spans_single_total",
        "counter",
        "Spans that make an edge on their own.",
        &[("kind=\"root_server\"", c.root_server.get()), ("kind=\"database_client\"", c.database_client.get())],
    );
    metric(
        "spans_linked_total",
        "counter",
        "SERVER/CONSUMER spans without a parent paired through their links (batch consumers).",
        &[("", c.linked_consumer.get())],
    );
    metric(
        "spans_ignored_total",
        "counter",
        "Spans that make no edge.",
        &[
            ("reason=\"kind\"", c.spans_ignored_kind.get()),
            ("reason=\"covered_by_metrics\"", c.spans_covered_by_metrics.get()),
        ],
    );
    metric(
        "counter_resets_total",
        "counter",
        "Cumulative series that went backwards.",
        &[("", c.counter_resets.get())],
    );
    metric("queue_bytes", "gauge", "Encoded bytes waiting in the ingest queue.", &[("", c.queue_bytes.get())]);
    metric("queue_depth", "gauge", "Export batches waiting in the ingest queue.", &[("", c.queue_batches.get())]);
    metric("store_size", "gauge", "Span halves waiting to be paired.", &[("", c.store_size.get())]);
    let kept = &engine.traces;
    metric("traces_kept", "gauge", "Whole traces kept for /api/v1/traces.", &[("", kept.len() as u64)]);
    metric(
        "trace_spans_kept",
        "gauge",
        "Spans kept in the trace store (at most --trace-store-spans).",
        &[("", kept.spans() as u64)],
    );
    metric(
        "traces_evicted_total",
        "counter",
        "Traces dropped whole, oldest first, to keep the trace store within --trace-store-spans.",
        &[("", kept.evicted)],
    );
    metric(
        "trace_spans_dropped_total",
        "counter",
        "Spans not kept: past 1000 in their trace, or without valid ids.",
        &[("", kept.dropped)],
    );
    metric("nodes", "gauge", "Nodes tracked.", &[("", c.nodes.get())]);
    metric(
        "evicted_total",
        "counter",
        "Nodes, edges and metric series evicted after no traffic for the idle retention.",
        &[
            ("kind=\"node\"", c.nodes_evicted.get()),
            ("kind=\"edge\"", c.edges_evicted.get()),
            ("kind=\"series\"", c.series_evicted.get()),
        ],
    );
    metric("edges", "gauge", "Edges tracked.", &[("", c.edges.get())]);
    metric("series", "gauge", "Cumulative metric series tracked.", &[("", c.series.get())]);
    metric(
        "revisions_published_total",
        "counter",
        "Revisions published by this process.",
        &[("", c.revisions_published.get())],
    );
    metric(
        "live_answers_total",
        "counter",
        "Live graph reads for another window or a collapse: computed on the read, or served as a tick kept them.",
        &[("how=\"computed\"", c.live_computed.get()), ("how=\"kept\"", c.live_served.get())],
    );
    metric(
        "live_keys_evicted_total",
        "counter",
        "Live graph keys (window, view, collapse) dropped to make room: the most are kept ready at once.",
        &[("", c.live_evicted.get())],
    );
    metric("store_errors_total", "counter", "Store writes that failed.", &[("", c.store_errors.get())]);
    metric("wal_bytes_total", "counter", "Bytes appended to the write-ahead log.", &[("", c.wal_bytes.get())]);
    metric(
        "wal_syncs_total",
        "counter",
        "Group commits of the write-ahead log (one fdatasync each).",
        &[("", c.wal_syncs.get())],
    );
    metric(
        "wal_errors_total",
        "counter",
        "Exports refused because the write-ahead log could not be written.",
        &[("", c.wal_errors.get())],
    );
    metric("wal_segments", "gauge", "Write-ahead log segments on disk.", &[("", c.wal_segments.get())]);
    metric(
        "remote_write_series_total",
        "counter",
        "Series sent by --remote-write (each write sends every series).",
        &[("", c.remote_write_series.get())],
    );
    metric(
        "remote_write_failures_total",
        "counter",
        "Remote writes that failed (unreachable, refused); the next write carries the same totals.",
        &[("", c.remote_write_failures.get())],
    );
    metric(
        "source_queries_total",
        "counter",
        "Queries the --prometheus source ran, and those that failed.",
        &[("result=\"ok\"", c.source_queries.get()), ("result=\"error\"", c.source_failures.get())],
    );
    metric(
        "source_series_ignored_total",
        "counter",
        "Series the --prometheus source read that make no edge (no caller or callee it can name).",
        &[("", c.source_series_ignored.get())],
    );
    metric(
        "latest_revision",
        "gauge",
        "Newest revision number.",
        &[("", hub.latest().map(|r| r.revision).unwrap_or(0))],
    );
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}
