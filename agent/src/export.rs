//! OTLP export to the collector over gRPC: the request metrics every interval (cumulative, so a
//! failed export loses nothing — the next carries the totals) and the sampled spans in batches.
//!
//! The messages are `opentelemetry-proto`'s and the client its tonic one, the wire the
//! OpenTelemetry SDK's `opentelemetry-otlp` exporter speaks; the SDK's own instruments are not used
//! because they take a lock per recording and their data cannot be built from outside the SDK.
//! Export runs in its own tasks: a slow or absent collector delays nothing but the export, spans
//! beyond the queue are dropped and counted, and a failed span batch is retried with backoff a few
//! times before it is dropped and counted.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshlens_model::Workload;
use meshlens_model::names::{
    CLIENT_DURATION, CLIENT_RETRIES, CLIENT_TIMEOUTS, DESTINATION_PREFIX, ERROR_TYPE, GRPC_STATUS, HTTP_ROUTE,
    HTTP_STATUS, MTLS, REACHED, ROUTE_DURATION, ROUTE_RETRIES, SERVER_DURATION, SOURCE_PREFIX, SUCCESS,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::counters::Counters;
use crate::telemetry::{BOUNDS_US, Direction, Registry};
use crate::trace::{SpanKind, SpanRecord};

/// Spans sent in one export at most.
pub(crate) const SPAN_BATCH: usize = 512;
const SPAN_TRIES: u32 = 3;

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }), ..KeyValue::default() }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.to_owned())
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn workload_attrs(prefix: &str, w: &Workload, out: &mut Vec<KeyValue>) {
    out.push(kv(&format!("{prefix}namespace"), s(&w.namespace)));
    out.push(kv(&format!("{prefix}app"), s(&w.app)));
    if let Some(v) = &w.version {
        out.push(kv(&format!("{prefix}version"), s(v)));
    }
}

/// The OTLP resource of this agent's workload.
pub(crate) fn resource(w: &Workload) -> Resource {
    let mut attributes = vec![kv("service.namespace", s(&w.namespace)), kv("service.name", s(&w.app))];
    if let Some(v) = &w.version {
        attributes.push(kv("service.version", s(v)));
    }
    attributes.push(kv("telemetry.sdk.name", s("meshlens-agent")));
    Resource { attributes, ..Resource::default() }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "meshlens-agent".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// The metrics export: cumulative since `start`, at `now`.
pub fn metrics_request(
    me: &Workload,
    registry: &Registry,
    start: SystemTime,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let (start, now) = (nanos(start), nanos(now));
    let bounds: Vec<f64> = BOUNDS_US.iter().map(|&b| b as f64 / 1e6).collect();
    let (mut server, mut client, mut retries, mut timeouts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for peer in registry.all() {
        let mut ends = Vec::new();
        match peer.direction {
            Direction::Inbound => {
                if let Some(p) = &peer.peer {
                    workload_attrs(SOURCE_PREFIX, p, &mut ends);
                }
                workload_attrs(DESTINATION_PREFIX, me, &mut ends);
            }
            Direction::Outbound => {
                workload_attrs(SOURCE_PREFIX, me, &mut ends);
                if let Some(p) = &peer.peer {
                    workload_attrs(DESTINATION_PREFIX, p, &mut ends);
                }
            }
        }
        for t in peer.outcomes() {
            let mut attributes = ends.clone();
            attributes.push(kv(MTLS, Value::BoolValue(t.outcome.mtls)));
            if t.outcome.status != 0 {
                attributes.push(kv(HTTP_STATUS, Value::IntValue(i64::from(t.outcome.status))));
            }
            if let Some(code) = t.outcome.grpc {
                attributes.push(kv(GRPC_STATUS, Value::IntValue(i64::from(code))));
            }
            if !t.outcome.error.as_str().is_empty() {
                attributes.push(kv(ERROR_TYPE, s(t.outcome.error.as_str())));
            }
            if peer.direction == Direction::Outbound {
                attributes.push(kv(REACHED, Value::BoolValue(t.outcome.reached)));
            }
            let point = HistogramDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: now,
                count: t.count,
                sum: Some(t.sum_s),
                bucket_counts: t.buckets,
                explicit_bounds: bounds.clone(),
                ..HistogramDataPoint::default()
            };
            match peer.direction {
                Direction::Inbound => server.push(point),
                Direction::Outbound => client.push(point),
            }
        }
        if peer.direction == Direction::Outbound {
            for (value, out) in [(peer.retries(), &mut retries), (peer.timeouts(), &mut timeouts)] {
                if value > 0 {
                    out.push(NumberDataPoint {
                        attributes: ends.clone(),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        value: Some(number_data_point::Value::AsInt(i64::try_from(value).unwrap_or(i64::MAX))),
                        ..NumberDataPoint::default()
                    });
                }
            }
        }
    }
    let (mut route_points, mut route_retries) = (Vec::new(), Vec::new());
    for r in registry.routes() {
        let mut attrs = Vec::with_capacity(6);
        workload_attrs(SOURCE_PREFIX, me, &mut attrs);
        let (ns, app) = r.service.split_once('/').unwrap_or(("", &r.service));
        attrs.push(kv(&format!("{DESTINATION_PREFIX}namespace"), s(ns)));
        attrs.push(kv(&format!("{DESTINATION_PREFIX}app"), s(app)));
        attrs.push(kv(HTTP_ROUTE, s(&r.route)));
        for ok in [true, false] {
            let (buckets, sum_s, count) = r.read(ok);
            if count == 0 {
                continue;
            }
            let mut attributes = attrs.clone();
            attributes.push(kv(SUCCESS, Value::BoolValue(ok)));
            route_points.push(HistogramDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: now,
                count,
                sum: Some(sum_s),
                bucket_counts: buckets,
                explicit_bounds: bounds.clone(),
                ..HistogramDataPoint::default()
            });
        }
        if r.retries() > 0 {
            route_retries.push(NumberDataPoint {
                attributes: attrs,
                start_time_unix_nano: start,
                time_unix_nano: now,
                value: Some(number_data_point::Value::AsInt(i64::try_from(r.retries()).unwrap_or(i64::MAX))),
                ..NumberDataPoint::default()
            });
        }
    }
    let cumulative = AggregationTemporality::Cumulative as i32;
    let histogram = |name: &str, description: &str, data_points: Vec<HistogramDataPoint>| Metric {
        name: name.to_owned(),
        description: description.to_owned(),
        unit: "s".to_owned(),
        data: Some(Data::Histogram(Histogram { data_points, aggregation_temporality: cumulative })),
        ..Metric::default()
    };
    let sum = |name: &str, description: &str, data_points: Vec<NumberDataPoint>| Metric {
        name: name.to_owned(),
        description: description.to_owned(),
        unit: "{request}".to_owned(),
        data: Some(Data::Sum(Sum { data_points, aggregation_temporality: cumulative, is_monotonic: true })),
        ..Metric::default()
    };
    let mut metrics = Vec::new();
    if !server.is_empty() {
        metrics.push(histogram(SERVER_DURATION, "Inbound request duration at the callee's agent.", server));
    }
    if !client.is_empty() {
        metrics.push(histogram(CLIENT_DURATION, "Outbound attempt duration at the caller's agent.", client));
    }
    if !retries.is_empty() {
        metrics.push(sum(CLIENT_RETRIES, "Retries sent by the caller's agent.", retries));
    }
    if !timeouts.is_empty() {
        metrics.push(sum(CLIENT_TIMEOUTS, "Timeouts at the caller's agent.", timeouts));
    }
    if !route_points.is_empty() {
        metrics.push(histogram(
            ROUTE_DURATION,
            "Requests per route at the caller's agent, retries included.",
            route_points,
        ));
    }
    if !route_retries.is_empty() {
        metrics.push(sum(ROUTE_RETRIES, "Retries per route sent by the caller's agent.", route_retries));
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(me)),
            scope_metrics: vec![ScopeMetrics { scope: Some(scope()), metrics, ..ScopeMetrics::default() }],
            ..ResourceMetrics::default()
        }],
    }
}

/// The OTLP span of a record.
pub(crate) fn span(r: &SpanRecord) -> Span {
    let mut attributes = vec![kv("http.request.method", s(r.method.as_str()))];
    if r.status != 0 {
        attributes.push(kv(HTTP_STATUS, Value::IntValue(i64::from(r.status))));
    }
    if !r.error.is_empty() {
        attributes.push(kv(ERROR_TYPE, s(r.error)));
    }
    if let Some(p) = &r.path {
        attributes.push(kv("url.path", s(p)));
    }
    if let Some(p) = &r.peer_service {
        attributes.push(kv("peer.service", s(p)));
    }
    if let Some(a) = &r.server_address {
        attributes.push(kv("server.address", s(a)));
    }
    let failed = r.status == 0 || r.status >= 500;
    Span {
        trace_id: r.trace_id.to_vec(),
        span_id: r.span_id.to_vec(),
        parent_span_id: if r.parent_span_id == [0; 8] { Vec::new() } else { r.parent_span_id.to_vec() },
        name: r.method.as_str().to_owned(),
        kind: match r.kind {
            SpanKind::Server => span::SpanKind::Server as i32,
            SpanKind::Client => span::SpanKind::Client as i32,
        },
        start_time_unix_nano: nanos(r.start),
        end_time_unix_nano: nanos(r.end),
        attributes,
        status: Some(Status {
            code: if failed { status::StatusCode::Error } else { status::StatusCode::Unset } as i32,
            ..Status::default()
        }),
        ..Span::default()
    }
}

/// Adds the collector's bearer token, when it has one, to every export.
#[derive(Clone)]
pub(crate) struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// A bearer of `token` (none: nothing added).
    pub(crate) fn new(token: Option<&str>) -> Self {
        Self(token.and_then(|t| format!("Bearer {t}").parse().ok()))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A lazily connecting channel to the collector: export never blocks start-up. An `https://`
/// endpoint is reached over TLS with `tls`, the agent's mesh pair, and the collector must show the
/// mesh CA's certificate for `meshlens/collector`.
///
/// Each call times out after `timeout` when given (exports); a tap subscription is one call that
/// lasts as long as the agent, so its channel has none.
pub(crate) fn channel(
    endpoint: &str,
    tls: Option<Arc<crate::tls::MeshTls>>,
    timeout: Option<Duration>,
) -> Result<Channel, tonic::transport::Error> {
    let plain = endpoint.strip_prefix("https://").map(|rest| format!("http://{rest}"));
    let mut e = tonic::transport::Endpoint::from_shared(plain.clone().unwrap_or_else(|| endpoint.to_owned()))?
        .connect_timeout(Duration::from_secs(1));
    if let Some(t) = timeout {
        e = e.timeout(t);
    }
    match (plain, tls) {
        (Some(_), Some(tls)) => {
            let connector = tower::service_fn(move |uri: http::Uri| {
                let config = tls.client_h2.clone();
                async move {
                    let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
                    let tcp = tokio::net::TcpStream::connect(authority).await?;
                    tcp.set_nodelay(true)?;
                    let name = crate::tls::server_name(COLLECTOR_NS, COLLECTOR_APP).map_err(std::io::Error::other)?;
                    let s = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            });
            Ok(e.connect_with_connector_lazy(connector))
        }
        _ => Ok(e.connect_lazy()),
    }
}

/// The identity a TLS collector's certificate must carry (`meshlens ca issue --workload
/// meshlens/collector`).
pub(crate) const COLLECTOR_NS: &str = "meshlens";
/// See [`COLLECTOR_NS`].
pub(crate) const COLLECTOR_APP: &str = "collector";

/// Exports the metrics every `interval` until `stop` turns true, then once more.
pub(crate) async fn metrics_loop(
    channel: Channel,
    bearer: Bearer,
    build: impl Fn() -> ExportMetricsServiceRequest,
    interval: Duration,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut client = MetricsServiceClient::with_interceptor(channel, bearer);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let req = build();
        if !req.resource_metrics.iter().all(|r| r.scope_metrics.iter().all(|s| s.metrics.is_empty())) {
            match client.export(req).await {
                Ok(_) => counters.metric_exports.add(1),
                Err(e) => {
                    counters.export_failures.add(1);
                    tracing::debug!(error = %e, "metrics export failed; the next one carries the totals");
                }
            }
        }
        if last || *stop.borrow() {
            return;
        }
    }
}

/// Exports spans in batches of up to [`SPAN_BATCH`], at least every second, until the queue closes.
pub(crate) async fn spans_loop(
    channel: Channel,
    bearer: Bearer,
    me: Workload,
    mut rx: mpsc::Receiver<SpanRecord>,
    counters: Arc<Counters>,
) {
    let mut client = TraceServiceClient::with_interceptor(channel, bearer);
    let resource = resource(&me);
    let mut batch = Vec::with_capacity(SPAN_BATCH);
    loop {
        let deadline = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(deadline);
        let open = loop {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(r) => {
                        batch.push(span(&r));
                        if batch.len() >= SPAN_BATCH { break true; }
                    }
                    None => break false,
                },
                _ = &mut deadline => break true,
            }
        };
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let req = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope()),
                        spans: std::mem::take(&mut batch),
                        ..ScopeSpans::default()
                    }],
                    ..ResourceSpans::default()
                }],
            };
            let mut sent = false;
            for attempt in 0..SPAN_TRIES {
                match client.export(req.clone()).await {
                    Ok(_) => {
                        sent = true;
                        break;
                    }
                    Err(e) => {
                        counters.export_failures.add(1);
                        tracing::debug!(error = %e, attempt, "span export failed");
                        if open {
                            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        }
                    }
                }
            }
            if sent {
                counters.spans_exported.add(n);
            } else {
                counters.spans_dropped.add(n);
            }
        }
        if !open {
            return;
        }
    }
}
