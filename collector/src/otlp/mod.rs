//! OTLP receivers and the bounded ingest queue between them and the pipeline.
//!
//! Receivers decode, reject what cannot be identified (a resource without `service.name`: an OTLP
//! partial success), and hand the rest to the queue — through the write-ahead log ([`crate::wal`])
//! when the collector has a data directory, so an answer means the batch is on disk. The queue is
//! bounded in encoded bytes; when it is full, an export is refused as retryable (HTTP 429 with
//! `Retry-After`, gRPC `UNAVAILABLE` with `RetryInfo`) and counted, so memory stays bounded and
//! nothing acknowledged is dropped. A log that cannot be written refuses exports the same way (503).

pub(crate) mod grpc;
pub(crate) mod http;
pub mod lite;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{HistogramDataPoint, metric::Data};
use tokio::sync::mpsc;

use crate::attrs::get_str;
use crate::counters::Counters;
use meshlens_model::identity::MAX_NAME_BYTES;

/// How long a refused exporter is told to wait.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One accepted export, waiting for the pipeline.
pub(crate) enum Batch {
    /// Spans (lean: see [`lite`]).
    Traces(lite::TraceRequest),
    Metrics(ExportMetricsServiceRequest),
}

/// A queued batch and the bytes it counts against the queue limit.
pub(crate) struct Job {
    /// The batch.
    pub batch: Batch,
    /// Encoded size.
    pub bytes: usize,
    /// Its write-ahead log sequence number (0 without a log).
    pub seq: u64,
    /// When the log made it durable (Unix seconds); the pipeline places it in time there, as a
    /// replay does. `None` without a log: placed when applied.
    pub at: Option<f64>,
}

/// An export refused as retryable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue's byte budget is spent: retry later.
    QueueFull,
    /// The write-ahead log could not be written: nothing was acknowledged.
    Log,
}

impl Refused {
    /// The message an exporter sees.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refused::QueueFull => "ingest queue is full; retry later",
            Refused::Log => "the write-ahead log cannot be written; retry later",
        }
    }
}

/// Where accepted batches go: straight to the pipeline, or through the write-ahead log.
pub(crate) enum Sink {
    /// In memory only (`--in-memory`).
    Direct(mpsc::UnboundedSender<Job>),
    /// Durable before the answer.
    Log(crate::wal::Wal),
}

/// Called by the pipeline when a job is done. The queue's accounting is the `queue_bytes` and
/// `queue_batches` gauges themselves, so the pipeline needs only the counters, not a sender (which
/// would keep the queue from ever closing).
pub(crate) fn done(counters: &Counters, bytes: usize) {
    counters.queue_bytes.sub(bytes.max(1) as u64);
    counters.queue_batches.sub(1);
}

/// Limits on OTLP/HTTP uploads while their bodies arrive.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UploadLimits {
    /// Time a body has to arrive whole.
    pub body_read_timeout: std::time::Duration,
    /// Bytes being read at once across all uploads.
    pub max_inflight_bytes: usize,
}

/// The sending side of the ingest queue, shared by all receivers.
pub(crate) struct Ingest {
    sink: Sink,
    max_bytes: usize,
    /// Limits on uploads being read.
    pub uploads: UploadLimits,
    /// The in-flight byte budget, in KiB permits.
    pub inflight: Arc<tokio::sync::Semaphore>,
    /// Size cap of one export after decompression.
    pub max_request_bytes: usize,
    /// Shared counters.
    pub counters: Arc<Counters>,
}

impl Ingest {
    /// A queue holding at most `max_bytes` of encoded exports, feeding `sink`.
    pub(crate) fn new(
        max_bytes: usize,
        max_request_bytes: usize,
        uploads: UploadLimits,
        counters: Arc<Counters>,
        sink: Sink,
    ) -> Arc<Self> {
        let kib = (uploads.max_inflight_bytes / 1024).clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let inflight = Arc::new(tokio::sync::Semaphore::new(kib));
        Arc::new(Self { sink, max_bytes, uploads, inflight, max_request_bytes, counters })
    }

    /// Queues a batch (durably, with a log), or refuses it when the byte budget is spent or the log
    /// cannot be written.
    pub(crate) async fn submit(&self, batch: Batch, bytes: usize) -> Result<(), Refused> {
        let bytes = bytes.max(1);
        let prev = self.counters.queue_bytes.fetch_add(bytes as u64);
        if prev + bytes as u64 > self.max_bytes as u64 && prev > 0 {
            self.counters.queue_bytes.sub(bytes as u64);
            self.counters.requests_refused_queue_full.add(1);
            return Err(Refused::QueueFull);
        }
        self.counters.queue_batches.add(1);
        let sent = match &self.sink {
            Sink::Direct(tx) => tx.send(Job { batch, bytes, seq: 0, at: None }).map_err(|_| Refused::QueueFull),
            Sink::Log(wal) => wal.append(batch, bytes).await.map_err(|_| Refused::Log),
        };
        sent.inspect_err(|_| done(&self.counters, bytes))
    }

    /// Validates, queues and answers a trace export: `(rejected spans, message)` for the partial
    /// success, or why it was refused.
    pub(crate) async fn accept_traces(
        &self,
        mut req: lite::TraceRequest,
        bytes: usize,
    ) -> Result<(i64, String), Refused> {
        let (rejected, message) = reject_unidentified_traces(&mut req, &self.counters);
        self.counters.spans_rejected.add(rejected as u64);
        let spans: usize = req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        if spans > 0 {
            self.submit(Batch::Traces(req), bytes).await?;
            self.counters.spans_received.add(spans as u64);
        }
        Ok((rejected, message))
    }

    /// Validates, queues and answers a metrics export.
    pub(crate) async fn accept_metrics(
        &self,
        mut req: ExportMetricsServiceRequest,
        bytes: usize,
    ) -> Result<(i64, String), Refused> {
        let (rejected, message) = reject_unusable_metrics(&mut req, &self.counters);
        self.counters.points_rejected.add(rejected as u64);
        let points: usize =
            req.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics).map(point_count).sum();
        if points > 0 {
            self.submit(Batch::Metrics(req), bytes).await?;
            self.counters.points_received.add(points as u64);
        }
        Ok((rejected, message))
    }
}

/// Data points in a metric, whatever its type.
pub(crate) fn point_count(m: &opentelemetry_proto::tonic::metrics::v1::Metric) -> usize {
    match &m.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

/// Why a resource's items are refused at the door.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    NoName,
    TooLong,
}

impl Refusal {
    fn reason(self) -> String {
        match self {
            Refusal::NoName => "resource without service.name".to_owned(),
            Refusal::TooLong => {
                format!("service.name, service.namespace or service.version longer than {MAX_NAME_BYTES} bytes")
            }
        }
    }
}

/// Whether a resource names a workload meshlens can keep.
fn check_resource(
    resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>,
    counters: &Counters,
) -> Result<(), Refusal> {
    let attrs = resource.map(|r| r.attributes.as_slice()).unwrap_or(&[]);
    let long = ["service.name", "service.namespace", "service.version"]
        .iter()
        .any(|k| get_str(attrs, k).is_some_and(|v| v.len() > MAX_NAME_BYTES));
    if long {
        counters.names_too_long.add(1);
        return Err(Refusal::TooLong);
    }
    // The workload's one refusal, checked without building it (no allocation per resource).
    meshlens_model::identity::app_name(get_str(attrs, "service.name")).map(|_| ()).ok_or(Refusal::NoName)
}

fn describe(what: &str, refused: &[(Refusal, usize, i64)]) -> String {
    let mut parts = Vec::new();
    for why in [Refusal::NoName, Refusal::TooLong] {
        let of: Vec<&(Refusal, usize, i64)> = refused.iter().filter(|r| r.0 == why).collect();
        if of.is_empty() {
            continue;
        }
        let n: i64 = of.iter().map(|r| r.2).sum();
        let shown: Vec<String> = of.iter().take(5).map(|r| r.1.to_string()).collect();
        parts.push(format!(
            "{n} {what} rejected: {} (resource index {}{})",
            why.reason(),
            shown.join(", "),
            if of.len() > 5 { ", ..." } else { "" }
        ));
    }
    parts.join("; ")
}

/// Removes resources without `service.name` or with a name over [`MAX_NAME_BYTES`]; returns the
/// spans rejected and the message.
pub(crate) fn reject_unidentified_traces(req: &mut lite::TraceRequest, counters: &Counters) -> (i64, String) {
    let mut refused = Vec::new();
    let mut i = 0usize;
    req.resource_spans.retain(|rs| {
        let check = check_resource(rs.resource.as_ref(), counters);
        if let Err(why) = check {
            refused.push((why, i, rs.scope_spans.iter().map(|s| s.spans.len() as i64).sum::<i64>()));
        }
        i += 1;
        check.is_ok()
    });
    let mut rejected: i64 = refused.iter().map(|r| r.2).sum();
    let mut message = describe("spans", &refused);
    let bad_ids = reject_bad_ids(req);
    if bad_ids > 0 {
        rejected += bad_ids;
        counters.spans_bad_ids.add(bad_ids as u64);
        if !message.is_empty() {
            message.push_str("; ");
        }
        message.push_str(&format!(
            "{bad_ids} spans rejected: trace_id must be 16 bytes and span_id 8, neither all zero, and parent_span_id empty or 8 bytes"
        ));
    }
    (rejected, message)
}

/// Removes spans whose ids OTLP does not allow (W3C trace context: a 16-byte trace id and an
/// 8-byte span id, neither all zero); returns how many.
fn reject_bad_ids(req: &mut lite::TraceRequest) -> i64 {
    let valid = |id: &[u8], len: usize| id.len() == len && id.iter().any(|&b| b != 0);
    let mut bad = 0i64;
    for ss in req.resource_spans.iter_mut().flat_map(|r| &mut r.scope_spans) {
        ss.spans.retain(|s| {
            let ok = valid(&s.trace_id, 16)
                && valid(&s.span_id, 8)
                && (s.parent_span_id.is_empty() || s.parent_span_id.len() == 8);
            bad += i64::from(!ok);
            ok
        });
    }
    bad
}

/// Removes resources without `service.name`, and histogram points whose buckets do not match their
/// bounds; returns the data points rejected and a message naming each reason.
pub(crate) fn reject_unusable_metrics(req: &mut ExportMetricsServiceRequest, counters: &Counters) -> (i64, String) {
    let mut refused = Vec::new();
    let mut i = 0usize;
    req.resource_metrics.retain(|rm| {
        let check = check_resource(rm.resource.as_ref(), counters);
        if let Err(why) = check {
            let points = rm.scope_metrics.iter().flat_map(|s| &s.metrics).map(point_count).sum::<usize>() as i64;
            refused.push((why, i, points));
        }
        i += 1;
        check.is_ok()
    });
    let rejected: i64 = refused.iter().map(|r| r.2).sum();
    let mut messages = vec![describe("data points", &refused)];
    let mut misshapen = 0i64;
    for metric in req.resource_metrics.iter_mut().flat_map(|r| &mut r.scope_metrics).flat_map(|s| &mut s.metrics) {
        let Some(Data::Histogram(h)) = &mut metric.data else { continue };
        h.data_points.retain(|p| match histogram_shape_error(p) {
            None => true,
            Some(why) => {
                if misshapen < 3 {
                    messages.push(format!("metric {}: {why}", metric.name));
                }
                misshapen += 1;
                false
            }
        });
    }
    if misshapen > 0 {
        messages.push(format!("{misshapen} histogram data points rejected"));
    }
    messages.retain(|m| !m.is_empty());
    (rejected + misshapen, messages.join("; "))
}

/// Why an explicit-bucket histogram point cannot be read, if it cannot: OTLP wants one more bucket
/// count than bounds (or neither), and bounds strictly increasing.
pub(crate) fn histogram_shape_error(p: &HistogramDataPoint) -> Option<String> {
    let (counts, bounds) = (p.bucket_counts.len(), p.explicit_bounds.len());
    if counts != 0 && counts != bounds + 1 {
        return Some(format!(
            "{counts} bucket_counts for {bounds} explicit_bounds; there must be one more count than bounds"
        ));
    }
    if !p.explicit_bounds.windows(2).all(|w| w[0] < w[1]) || p.explicit_bounds.iter().any(|b| !b.is_finite()) {
        return Some("explicit_bounds must be finite and strictly increasing".to_owned());
    }
    None
}

#[cfg(test)]
mod fuzz_tests;
