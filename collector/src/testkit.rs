//! Builders of OTLP requests for tests and benchmarks: resources, spans and agent metric points.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status::StatusCode};

/// A string attribute.
pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(Value::StringValue(value.into())) }),
        ..KeyValue::default()
    }
}

/// An integer attribute.
pub fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(Value::IntValue(value)) }), ..KeyValue::default() }
}

/// A boolean attribute.
pub fn kv_bool(key: &str, value: bool) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(Value::BoolValue(value)) }), ..KeyValue::default() }
}

/// A resource for `namespace/app/version` (empty strings are left out).
pub fn resource(namespace: &str, app: &str, version: &str) -> Resource {
    let mut attributes = Vec::new();
    for (k, v) in [("service.namespace", namespace), ("service.name", app), ("service.version", version)] {
        if !v.is_empty() {
            attributes.push(kv(k, v));
        }
    }
    Resource { attributes, ..Resource::default() }
}

/// A span: `kind`, trace `trace`, span id `id`, parent `parent`, lasting `dur_us` µs from `start_ns`.
#[allow(clippy::too_many_arguments)]
pub fn span(
    kind: SpanKind,
    trace: u64,
    id: u64,
    parent: Option<u64>,
    start_ns: u64,
    dur_us: u64,
    attrs: Vec<KeyValue>,
    error: bool,
) -> Span {
    let mut trace_id = vec![0u8; 8];
    trace_id.extend_from_slice(&trace.to_be_bytes());
    Span {
        trace_id,
        span_id: id.to_be_bytes().to_vec(),
        parent_span_id: parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
        name: "GET /".into(),
        kind: kind as i32,
        start_time_unix_nano: start_ns,
        end_time_unix_nano: start_ns + dur_us * 1000,
        attributes: attrs,
        status: error.then(|| Status { code: StatusCode::Error as i32, message: "boom".into() }),
        ..Span::default()
    }
}

/// An export holding each resource's spans.
pub fn traces(batches: Vec<(Resource, Vec<Span>)>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: batches
            .into_iter()
            .map(|(r, spans)| ResourceSpans {
                resource: Some(r),
                scope_spans: vec![ScopeSpans { spans, ..ScopeSpans::default() }],
                ..ResourceSpans::default()
            })
            .collect(),
    }
}

/// Attributes naming an edge's source and destination workloads (`app/version`, namespace default).
pub fn edge_attrs(source: (&str, &str), destination: (&str, &str), status: Option<i64>) -> Vec<KeyValue> {
    let mut a = vec![
        kv("meshlens.source.namespace", "default"),
        kv("meshlens.source.app", source.0),
        kv("meshlens.source.version", source.1),
        kv("meshlens.destination.namespace", "default"),
        kv("meshlens.destination.app", destination.0),
        kv("meshlens.destination.version", destination.1),
        kv("http.request.method", "GET"),
    ];
    if let Some(s) = status {
        a.push(kv_int("http.response.status_code", s));
    }
    a
}

/// Default OTel SDK histogram bounds for request durations, seconds.
pub const BOUNDS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// A histogram point with `counts` per bucket of [`BOUNDS`] (15 buckets).
pub fn hist_point(attrs: Vec<KeyValue>, start_ns: u64, time_ns: u64, counts: &[u64]) -> HistogramDataPoint {
    let mut bucket_counts = counts.to_vec();
    bucket_counts.resize(BOUNDS.len() + 1, 0);
    HistogramDataPoint {
        attributes: attrs,
        start_time_unix_nano: start_ns,
        time_unix_nano: time_ns,
        count: bucket_counts.iter().sum(),
        sum: Some(0.0),
        bucket_counts,
        explicit_bounds: BOUNDS.to_vec(),
        ..HistogramDataPoint::default()
    }
}

/// A histogram metric.
pub fn hist_metric(name: &str, cumulative: bool, points: Vec<HistogramDataPoint>) -> Metric {
    let t = if cumulative { AggregationTemporality::Cumulative } else { AggregationTemporality::Delta };
    Metric {
        name: name.into(),
        unit: "s".into(),
        data: Some(Data::Histogram(Histogram { data_points: points, aggregation_temporality: t as i32 })),
        ..Metric::default()
    }
}

/// A monotonic integer sum metric with one point.
pub fn sum_metric(name: &str, cumulative: bool, attrs: Vec<KeyValue>, start_ns: u64, value: i64) -> Metric {
    let t = if cumulative { AggregationTemporality::Cumulative } else { AggregationTemporality::Delta };
    Metric {
        name: name.into(),
        data: Some(Data::Sum(Sum {
            data_points: vec![NumberDataPoint {
                attributes: attrs,
                start_time_unix_nano: start_ns,
                time_unix_nano: start_ns + 1,
                value: Some(number_data_point::Value::AsInt(value)),
                ..NumberDataPoint::default()
            }],
            aggregation_temporality: t as i32,
            is_monotonic: true,
        })),
        ..Metric::default()
    }
}

/// An export holding each resource's metrics.
pub fn metrics(batches: Vec<(Resource, Vec<Metric>)>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: batches
            .into_iter()
            .map(|(r, metrics)| ResourceMetrics {
                resource: Some(r),
                scope_metrics: vec![ScopeMetrics { metrics, ..ScopeMetrics::default() }],
                ..ResourceMetrics::default()
            })
            .collect(),
    }
}
