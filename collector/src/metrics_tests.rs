//! Agent metrics: each request counted once, cumulative and delta temporality, resets.

use std::sync::Arc;

use meshlens_model::graph::{GraphSnapshot, View};
use meshlens_model::hist::Merger;
use meshlens_model::names::{CLIENT_DURATION, CLIENT_RETRIES, CLIENT_TIMEOUTS, REACHED, SERVER_DURATION};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::counters::Counters;
use crate::engine::{Engine, EngineConfig};
use crate::testkit::{edge_attrs, hist_metric, hist_point, kv, kv_bool, metrics, resource, span, sum_metric, traces};
use crate::views::snapshot;

const NOW: f64 = 1_800_000_000.5;

fn engine() -> Engine {
    Engine::new(EngineConfig::default(), Arc::new(Counters::default()), NOW - 100.0)
}

/// A start time after the engine started: counted from zero.
fn start() -> u64 {
    ((NOW - 50.0) * 1e9) as u64
}

fn graph(e: &Engine) -> GraphSnapshot {
    snapshot(e, View::Versioned, 60, NOW, &mut Merger::default())
}

const A: (&str, &str) = ("productpage", "v1");
const B: (&str, &str) = ("reviews", "v2");

#[test]
fn both_sides_report_and_each_request_counts_once() {
    let mut e = engine();
    // 10 requests in the 10–25 ms bucket, 2 of them 503; both agents report them.
    let server = hist_metric(
        SERVER_DURATION,
        true,
        vec![
            hist_point(edge_attrs(A, B, Some(200)), start(), 1, &[0, 0, 8]),
            hist_point(edge_attrs(A, B, Some(503)), start(), 1, &[0, 0, 2]),
        ],
    );
    let client = hist_metric(
        CLIENT_DURATION,
        true,
        vec![
            hist_point(edge_attrs(A, B, Some(200)), start(), 1, &[0, 0, 0, 8]),
            hist_point(edge_attrs(A, B, Some(503)), start(), 1, &[0, 0, 0, 2]),
        ],
    );
    // The client side comes first in the export; server points are applied first anyway.
    e.ingest_metrics(
        &metrics(vec![
            (resource("", "productpage", "v1"), vec![client]),
            (resource("", "reviews", "v2"), vec![server]),
        ]),
        NOW,
    );
    let g = graph(&e);
    let s = &g.edge("default/productpage/v1", "default/reviews/v2").unwrap().stats;
    assert_eq!((s.requests, s.errors, s.codes.c5xx), (10, 2, 2));
    assert_eq!(s.success_pct, Some(80.0));
    let p50 = s.latency_ms.unwrap().p50;
    assert!((10.0..=25.0).contains(&p50), "server latency bucket: {p50}");
    assert_eq!(s.retries, Some(0), "an agent reported this edge");
    let edge = &e.edges()[0];
    assert_eq!(edge.totals.client.count, 10, "client latency still reaches /metrics");
}

#[test]
fn cumulative_points_become_deltas_and_resets_restart() {
    let mut e = engine();
    let send = |e: &mut Engine, start_ns: u64, n: u64| {
        let m = hist_metric(SERVER_DURATION, true, vec![hist_point(edge_attrs(A, B, Some(200)), start_ns, 1, &[n])]);
        e.ingest_metrics(&metrics(vec![(resource("", "reviews", "v2"), vec![m])]), NOW);
    };
    send(&mut e, start(), 5);
    send(&mut e, start(), 5); // a repeat adds nothing
    send(&mut e, start(), 12);
    send(&mut e, start(), 3); // went down: a reset, 3 new
    send(&mut e, start() + 1, 4); // a new start time: a reset, 4 new
    let s = graph(&e).edge("default/productpage/v1", "default/reviews/v2").unwrap().stats.clone();
    assert_eq!(s.requests, 12 + 3 + 4);
    assert_eq!(e.counters.counter_resets.get(), 2);
}

#[test]
fn a_series_older_than_the_collector_sets_a_baseline_only() {
    let mut e = engine();
    let old = ((NOW - 3600.0) * 1e9) as u64;
    let send = |e: &mut Engine, n: u64| {
        let m = hist_metric(SERVER_DURATION, true, vec![hist_point(edge_attrs(A, B, Some(200)), old, 1, &[n])]);
        e.ingest_metrics(&metrics(vec![(resource("", "reviews", "v2"), vec![m])]), NOW);
    };
    send(&mut e, 1000);
    assert!(graph(&e).edges.is_empty(), "history before this collector is not counted");
    send(&mut e, 1007);
    assert_eq!(graph(&e).edges[0].stats.requests, 7);
}

#[test]
fn delta_points_add_up() {
    let mut e = engine();
    for _ in 0..3 {
        let m = hist_metric(SERVER_DURATION, false, vec![hist_point(edge_attrs(A, B, Some(200)), 0, 1, &[1, 1])]);
        e.ingest_metrics(&metrics(vec![(resource("", "reviews", "v2"), vec![m])]), NOW);
    }
    assert_eq!(graph(&e).edges[0].stats.requests, 6);
}

#[test]
fn the_caller_adds_what_the_callee_never_saw() {
    let mut e = engine();
    let server = hist_metric(SERVER_DURATION, false, vec![hist_point(edge_attrs(A, B, Some(200)), 0, 1, &[4])]);
    let mut refused = edge_attrs(A, B, None);
    refused.push(kv("error.type", "connect_failure"));
    let mut timeout = edge_attrs(A, B, None);
    timeout.push(kv("error.type", "timeout"));
    let client = hist_metric(
        CLIENT_DURATION,
        false,
        vec![
            hist_point(edge_attrs(A, B, Some(200)), 0, 1, &[4]),
            hist_point(refused, 0, 1, &[3]),
            hist_point(timeout, 0, 1, &[0, 0, 0, 0, 0, 0, 0, 1]),
        ],
    );
    let timeouts = sum_metric(CLIENT_TIMEOUTS, false, edge_attrs(A, B, None), 0, 1);
    let retries = sum_metric(CLIENT_RETRIES, false, edge_attrs(A, B, None), 0, 2);
    e.ingest_metrics(
        &metrics(vec![
            (resource("", "reviews", "v2"), vec![server]),
            (resource("", "productpage", "v1"), vec![client, timeouts, retries]),
        ]),
        NOW,
    );
    let s = graph(&e).edges[0].stats.clone();
    // 4 served + 3 refused; the timed-out request reached the callee, which reported it.
    assert_eq!((s.requests, s.errors, s.codes.none), (7, 3, 3));
    assert_eq!((s.retries, s.timeouts), (Some(2), Some(1)));
}

#[test]
fn an_abort_the_caller_answered_itself_is_counted_from_the_caller() {
    let mut e = engine();
    let server = hist_metric(SERVER_DURATION, false, vec![hist_point(edge_attrs(A, B, Some(200)), 0, 1, &[5])]);
    let mut aborted = edge_attrs(A, B, Some(503));
    aborted.push(kv_bool(REACHED, false));
    let client = hist_metric(
        CLIENT_DURATION,
        false,
        vec![hist_point(edge_attrs(A, B, Some(200)), 0, 1, &[5]), hist_point(aborted, 0, 1, &[2])],
    );
    e.ingest_metrics(
        &metrics(vec![
            (resource("", "reviews", "v2"), vec![server]),
            (resource("", "productpage", "v1"), vec![client]),
        ]),
        NOW,
    );
    let s = graph(&e).edges[0].stats.clone();
    assert_eq!((s.requests, s.errors, s.codes.c5xx), (7, 2, 2));
}

#[test]
fn an_agent_saying_reached_is_counted_once_whichever_export_comes_first() {
    let mut e = engine();
    let mut reached = edge_attrs(A, B, Some(200));
    reached.push(kv_bool(REACHED, true));
    let client = hist_metric(CLIENT_DURATION, false, vec![hist_point(reached, 0, 1, &[6])]);
    e.ingest_metrics(&metrics(vec![(resource("", "productpage", "v1"), vec![client])]), NOW);
    let server = hist_metric(SERVER_DURATION, false, vec![hist_point(edge_attrs(A, B, Some(200)), 0, 1, &[6])]);
    e.ingest_metrics(&metrics(vec![(resource("", "reviews", "v2"), vec![server])]), NOW);
    assert_eq!(graph(&e).edges[0].stats.requests, 6);
}

#[test]
fn a_callee_without_an_agent_is_counted_from_the_caller() {
    let mut e = engine();
    let client = hist_metric(
        CLIENT_DURATION,
        false,
        vec![hist_point(edge_attrs(A, ("ratings", "v1"), Some(500)), 0, 1, &[0, 2])],
    );
    e.ingest_metrics(&metrics(vec![(resource("", "productpage", "v1"), vec![client])]), NOW);
    let s = graph(&e).edge("default/productpage/v1", "default/ratings/v1").unwrap().stats.clone();
    assert_eq!((s.requests, s.errors), (2, 2));
}

#[test]
fn spans_are_not_added_where_metrics_cover_the_edge() {
    let mut e = engine();
    let m = hist_metric(SERVER_DURATION, false, vec![hist_point(edge_attrs(A, B, Some(200)), 0, 1, &[5])]);
    e.ingest_metrics(&metrics(vec![(resource("", "reviews", "v2"), vec![m])]), NOW);
    let c = span(SpanKind::Client, 1, 10, Some(1), 0, 1_000, vec![], false);
    let s = span(SpanKind::Server, 1, 11, Some(10), 0, 1_000, vec![], false);
    e.ingest_traces(
        &traces(vec![(resource("", "productpage", "v1"), vec![c]), (resource("", "reviews", "v2"), vec![s])]),
        NOW,
    );
    assert_eq!(graph(&e).edges[0].stats.requests, 5);
    assert_eq!(e.counters.spans_covered_by_metrics.get(), 1);
}

#[test]
fn misshapen_or_unreadable_points_are_counted_not_fatal() {
    use opentelemetry_proto::tonic::metrics::v1::{Gauge, Metric, NumberDataPoint, metric::Data};
    let mut e = engine();
    let mut bad = hist_point(edge_attrs(A, B, Some(200)), 0, 1, &[1]);
    bad.bucket_counts = vec![1; 40];
    let exp = Metric {
        name: SERVER_DURATION.into(),
        data: Some(Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint { attributes: edge_attrs(A, B, Some(200)), ..Default::default() }; 2],
        })),
        ..Metric::default()
    };
    let m = hist_metric(SERVER_DURATION, false, vec![bad]);
    e.ingest_metrics(&metrics(vec![(resource("", "reviews", "v2"), vec![m, exp])]), NOW);
    assert!(graph(&e).edges.is_empty());
    assert_eq!(e.counters.points_rejected.get(), 1);
    assert_eq!(e.counters.points_unsupported.get(), 2);
}

/// What an OpenTelemetry SDK sends by default beside its spans: the same metric names, no mesh
/// attributes. No edge, no doubled span counts; counted as ignored.
#[test]
fn an_sdks_own_http_metrics_make_no_edge_and_double_nothing() {
    let mut e = engine();
    let sdk = |name: &str, status: i64| {
        let attrs = vec![
            kv("http.request.method", "GET"),
            crate::testkit::kv_int("http.response.status_code", status),
            kv("server.address", "inventory"),
        ];
        hist_metric(name, true, vec![hist_point(attrs, start(), 1, &[0, 0, 10])])
    };
    let mut old = sdk("http.server.duration", 200);
    old.unit = "ms".into();
    e.ingest_metrics(
        &metrics(vec![
            (resource("", "frontend", "v1"), vec![sdk(CLIENT_DURATION, 503), old]),
            (resource("", "inventory", "v1"), vec![sdk(SERVER_DURATION, 200)]),
        ]),
        NOW,
    );
    assert!(graph(&e).edges.is_empty(), "{:?}", graph(&e).edges);
    assert_eq!(e.counters.points_ignored_sdk.get(), 3);
    // The spans of the same requests count once, not hidden behind the metrics.
    let c = span(SpanKind::Client, 1, 10, Some(1), 0, 1_000, vec![], false);
    let s = span(SpanKind::Server, 1, 11, Some(10), 0, 1_000, vec![], false);
    e.ingest_traces(
        &traces(vec![(resource("", "frontend", "v1"), vec![c]), (resource("", "inventory", "v1"), vec![s])]),
        NOW,
    );
    e.ingest_metrics(&metrics(vec![(resource("", "inventory", "v1"), vec![sdk(SERVER_DURATION, 200)])]), NOW);
    let g = graph(&e);
    assert_eq!(g.edges.len(), 1);
    assert_eq!(g.edge("default/frontend/v1", "default/inventory/v1").unwrap().stats.requests, 1);
    assert_eq!(e.counters.spans_covered_by_metrics.get(), 0);
}

/// OTLP exponential histograms, cumulative, as an SDK sends them: the second point at a lower
/// scale (the SDK rescaled as the range grew) still yields exactly the new requests.
#[test]
fn exponential_histograms_are_read_across_a_rescale() {
    use opentelemetry_proto::tonic::metrics::v1::{
        ExponentialHistogram, ExponentialHistogramDataPoint, Metric, exponential_histogram_data_point::Buckets,
        metric::Data,
    };
    let point = |scale: i32, offset: i32, counts: Vec<u64>| ExponentialHistogramDataPoint {
        attributes: edge_attrs(A, B, Some(200)),
        start_time_unix_nano: start(),
        time_unix_nano: 1,
        count: counts.iter().sum(),
        scale,
        positive: Some(Buckets { offset, bucket_counts: counts }),
        ..Default::default()
    };
    let send = |e: &mut Engine, p: ExponentialHistogramDataPoint| {
        let m = Metric {
            name: SERVER_DURATION.into(),
            unit: "s".into(),
            data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![p],
                aggregation_temporality: 2,
            })),
            ..Metric::default()
        };
        e.ingest_metrics(&metrics(vec![(resource("", "reviews", "v2"), vec![m])]), NOW);
    };
    let mut e = engine();
    // Scale 3 (base 2^(1/8)): index -53 holds (2^(-53/8), 2^(-52/8)] s, about (10.2, 11.1] ms.
    send(&mut e, point(3, -53, vec![6, 0, 4]));
    let s = graph(&e).edges[0].stats.clone();
    assert_eq!(s.requests, 10);
    let p50 = s.latency_ms.unwrap().p50;
    assert!((10.2..=11.1).contains(&p50), "{p50}");
    // Rescaled to 2: the old buckets -53, -51 become -27, -26; 5 more requests at index -26.
    send(&mut e, point(2, -27, vec![6, 9]));
    assert_eq!(graph(&e).edges[0].stats.requests, 15, "only the 5 new ones were added");
    assert_eq!(e.counters.counter_resets.get(), 0);
    // The same point again adds nothing.
    send(&mut e, point(2, -27, vec![6, 9]));
    assert_eq!(graph(&e).edges[0].stats.requests, 15);
    // Indexes past i32 (an offset near its end): refused and counted, not a panic or a wrap.
    let rejected = e.counters.points_rejected.get();
    send(&mut e, point(2, i32::MAX - 1, vec![1, 1, 1]));
    assert_eq!(e.counters.points_rejected.get(), rejected + 1);
    assert_eq!(graph(&e).edges[0].stats.requests, 15);
}

/// Idle series, nodes and edges are evicted after the retention; fresh ones stay.
#[test]
fn idle_series_nodes_and_edges_are_evicted_after_the_retention() {
    let mut e = engine();
    let m = hist_metric(SERVER_DURATION, true, vec![hist_point(edge_attrs(A, B, Some(200)), start(), 1, &[5])]);
    e.ingest_metrics(&metrics(vec![(resource("", "reviews", "v2"), vec![m])]), NOW);
    assert_eq!((e.series.len(), e.graph.edges().len()), (1, 1));
    e.evict_idle(NOW + e.config.idle_retention_secs as f64 - 1.0);
    assert_eq!((e.series.len(), e.graph.edges().len()), (1, 1), "not yet idle for the retention");
    e.evict_idle(NOW + e.config.idle_retention_secs as f64 + 1.0);
    assert_eq!((e.series.len(), e.graph.edges().len()), (0, 0));
    assert_eq!(e.counters.series_evicted.get(), 1);
    assert_eq!((e.counters.nodes_evicted.get(), e.counters.edges_evicted.get()), (2, 1));
}
