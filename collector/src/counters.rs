//! The collector's own health counters, shared lock-free between the receivers, the pipeline and
//! `/metrics` (`meshlens_collector_*`).

pub(crate) use meshlens_model::counter::Counter;

/// Every counter the collector exposes about itself.
#[derive(Debug, Default)]
pub struct Counters {
    /// Spans accepted into the ingest queue.
    pub spans_received: Counter,
    /// Metric data points accepted into the ingest queue.
    pub points_received: Counter,
    /// Spans rejected at the door (partial success): resource without `service.name`.
    pub spans_rejected: Counter,
    /// Data points rejected at the door.
    pub points_rejected: Counter,
    /// Resources refused, and peer names read as unknown, for a name over `MAX_NAME_BYTES`.
    pub names_too_long: Counter,
    /// Spans refused for ids of the wrong length, or all zero.
    pub spans_bad_ids: Counter,
    /// SSE subscriptions refused at the subscriber limit.
    pub sse_refused: Counter,
    /// Taps refused because `MAX_TAPS` were open.
    pub taps_refused: Counter,
    /// Agents' tap subscriptions refused because [`crate::tap::MAX_TAP_AGENTS`] were subscribed.
    pub tap_agents_refused: Counter,
    /// Gauge: agents subscribed for taps now.
    pub tap_agents: Counter,
    /// Tap events agents sent.
    pub tap_events: Counter,
    /// Tap events agents dropped (their queue was full).
    pub tap_dropped_agent: Counter,
    /// Tap events dropped because a tap's stream was full (a slow client).
    pub tap_dropped_stream: Counter,
    /// Connections closed at once because the listener had `max_connections` open.
    pub connections_refused: Counter,
    /// TLS handshakes that failed or did not finish within the header read timeout.
    pub tls_handshake_errors: Counter,
    /// Connections that ended with an error (headers not sent in time, a broken peer).
    pub connection_errors: Counter,
    /// HTTP connections closed after no request in flight for the idle timeout.
    pub idle_connections_closed: Counter,
    /// OTLP/HTTP uploads whose body did not arrive within the body read timeout (408).
    pub bodies_timed_out: Counter,
    /// OTLP/HTTP uploads refused because the in-flight byte budget was spent (503).
    pub requests_refused_inflight: Counter,
    /// Export requests refused because the ingest queue was full.
    pub requests_refused_queue_full: Counter,
    /// Export requests that could not be decoded.
    pub requests_malformed: Counter,
    /// Export requests over the size cap.
    pub requests_too_large: Counter,
    /// Spans dropped because a node or edge limit was reached.
    pub spans_dropped_cardinality: Counter,
    /// Data points of a metric meshlens reads, sent as a type it does not read.
    pub points_unsupported: Counter,
    /// Data points of HTTP duration metrics without meshlens's mesh attributes (an OpenTelemetry
    /// SDK's own `http.server.request.duration` and friends, or the old-semconv `http.*.duration`):
    /// read by no one, since they cannot say which edge they are on.
    pub points_ignored_sdk: Counter,
    /// Data points dropped because a node, edge or series limit was reached.
    pub points_dropped_cardinality: Counter,
    /// Spans dropped because the pairing store was full.
    pub spans_dropped_store_full: Counter,
    /// Client and server span halves paired into an edge.
    pub spans_paired: Counter,
    /// SERVER spans whose CLIENT never came (not an edge).
    pub expired_server: Counter,
    /// CONSUMER spans whose PRODUCER never came.
    pub expired_consumer: Counter,
    /// CLIENT spans with no SERVER: an edge to a virtual node.
    pub unpaired_client: Counter,
    /// PRODUCER spans with no CONSUMER: an edge to a virtual node.
    pub unpaired_producer: Counter,
    /// Root SERVER/CONSUMER spans: an edge from `user` or their `peer.service`.
    pub root_server: Counter,
    /// SERVER/CONSUMER spans without a parent that pair through their links (batch consumers).
    pub linked_consumer: Counter,
    /// CLIENT spans to a database: a one-span edge.
    pub database_client: Counter,
    /// Spans that are neither CLIENT, SERVER, PRODUCER nor CONSUMER.
    pub spans_ignored_kind: Counter,
    /// Span-derived requests not counted because agent metrics cover the edge.
    pub spans_covered_by_metrics: Counter,
    /// Cumulative series that went backwards (counter resets).
    pub counter_resets: Counter,
    /// Gauge: bytes waiting in the ingest queue; also what the queue's byte limit is checked against.
    pub queue_bytes: Counter,
    /// Gauge: batches waiting in the ingest queue.
    pub queue_batches: Counter,
    /// Gauge: span halves waiting to be paired.
    pub store_size: Counter,
    /// Gauge: nodes known.
    pub nodes: Counter,
    /// Nodes evicted after no traffic for the idle retention.
    pub nodes_evicted: Counter,
    /// Edges evicted after no traffic for the idle retention.
    pub edges_evicted: Counter,
    /// Cumulative metric series forgotten after no point for the idle retention.
    pub series_evicted: Counter,
    /// Gauge: edges known.
    pub edges: Counter,
    /// Gauge: metric series tracked for delta conversion.
    pub series: Counter,
    /// Revisions published.
    pub revisions_published: Counter,
    /// Live graph answers (a window or collapse other than the publisher's) computed on a read,
    /// because no tick had kept them ready ([`crate::live`]).
    pub live_computed: Counter,
    /// Live graph answers served as kept by a tick.
    pub live_served: Counter,
    /// Live keys dropped to make room for another ([`crate::live::MAX_KEYS`]).
    pub live_evicted: Counter,
    /// Store writes that failed.
    pub store_errors: Counter,
    /// Bytes appended to the write-ahead log.
    pub wal_bytes: Counter,
    /// Group commits of the write-ahead log (one `fdatasync` each).
    pub wal_syncs: Counter,
    /// Exports refused because the write-ahead log could not be written.
    pub wal_errors: Counter,
    /// Gauge: write-ahead log segments on disk.
    pub wal_segments: Counter,
    /// Series sent by `--remote-write` (summed over writes).
    pub remote_write_series: Counter,
    /// Remote writes that failed.
    pub remote_write_failures: Counter,
    /// Queries the `--prometheus` source ran.
    pub source_queries: Counter,
    /// Queries of the `--prometheus` source that failed.
    pub source_failures: Counter,
    /// Series read by the `--prometheus` source that make no edge (labels it cannot read as one).
    pub source_series_ignored: Counter,
}
