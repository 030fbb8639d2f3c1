//! Fuzz tests of the OTLP decoders on stable, bounded by count (`meshlens_model::mutate`): mutants
//! of valid exports — protobuf traces (the lean decoder the receivers use), protobuf metrics,
//! OTLP/JSON traces — go through decoding, the door's checks and the engine, as a received export
//! does. Nothing may panic; a mutant that decodes is ingested.

use std::sync::Arc;

use meshlens_model::mutate::Mutator;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

use super::{lite, reject_unidentified_traces, reject_unusable_metrics};
use crate::counters::Counters;
use crate::engine::{Engine, EngineConfig};
use crate::testkit::*;

/// Mutants per decoder: about a second each in a debug build.
const ROUNDS: usize = 20_000;
const NOW: f64 = 1_800_000_000.0;

fn engine() -> Engine {
    Engine::new(
        EngineConfig { max_nodes: 200, max_edges: 400, ..EngineConfig::default() },
        Arc::new(Counters::default()),
        NOW - 100.0,
    )
}

fn trace_seeds() -> Vec<ExportTraceServiceRequest> {
    let client = span(
        SpanKind::Client,
        1,
        10,
        Some(1),
        1,
        30,
        vec![kv("http.request.method", "GET"), kv("server.address", "db")],
        false,
    );
    let server = span(
        SpanKind::Server,
        1,
        11,
        Some(10),
        1,
        20,
        vec![kv_int("http.response.status_code", 503), kv_int("rpc.grpc.status_code", 14)],
        true,
    );
    let db = span(SpanKind::Client, 2, 20, None, 1, 5, vec![kv("db.system", "redis"), kv("db.namespace", "0")], false);
    vec![
        traces(vec![(resource("shop", "a", "v1"), vec![client, db]), (resource("shop", "b", "v2"), vec![server])]),
        traces(vec![(resource("", "solo", ""), vec![span(SpanKind::Server, 3, 30, None, 1, 1, vec![], false)])]),
    ]
}

#[test]
fn mutated_protobuf_traces_never_panic() {
    let seeds: Vec<Vec<u8>> = trace_seeds().iter().map(Message::encode_to_vec).collect();
    let (mut e, counters) = (engine(), Counters::default());
    let mut m = Mutator::new(&seeds, 1);
    let mut decoded = 0;
    for i in 0..ROUNDS {
        let input = m.next_input();
        if let Ok(mut req) = lite::TraceRequest::decode(input.as_slice()) {
            decoded += 1;
            reject_unidentified_traces(&mut req, &counters);
            e.ingest_lean_traces(&req, NOW + i as f64 / 1000.0);
        }
    }
    e.expire(NOW + 100.0);
    assert!(decoded > ROUNDS / 50, "the mutants reach the engine: {decoded} decoded");
}

#[test]
fn mutated_protobuf_metrics_never_panic() {
    let attrs = edge_attrs(("a", "v1"), ("b", "v1"), Some(200));
    let seeds: Vec<Vec<u8>> = [
        metrics(vec![(
            resource("shop", "a", "v1"),
            vec![
                hist_metric(
                    "http.server.request.duration",
                    true,
                    vec![hist_point(attrs.clone(), 1, 2, &[1, 2, 3, 0, 1])],
                ),
                sum_metric("meshlens.retries", true, attrs.clone(), 1, 3),
            ],
        )]),
        metrics(vec![(
            resource("shop", "b", ""),
            vec![hist_metric("http.client.request.duration", false, vec![hist_point(attrs, 5, 6, &[0, 9])])],
        )]),
    ]
    .iter()
    .map(Message::encode_to_vec)
    .collect();
    let (mut e, counters) = (engine(), Counters::default());
    let mut m = Mutator::new(&seeds, 2);
    for i in 0..ROUNDS {
        if let Ok(mut req) = ExportMetricsServiceRequest::decode(m.next_input().as_slice()) {
            reject_unusable_metrics(&mut req, &counters);
            e.ingest_metrics(&req, NOW + i as f64 / 1000.0);
        }
    }
}

#[test]
fn mutated_json_traces_never_panic() {
    let seeds: Vec<Vec<u8>> = trace_seeds().iter().map(|r| serde_json::to_vec(r).unwrap_or_default()).collect();
    let (mut e, counters) = (engine(), Counters::default());
    let mut m = Mutator::new(&seeds, 3);
    for i in 0..ROUNDS {
        if let Ok(full) = serde_json::from_slice::<ExportTraceServiceRequest>(&m.next_input()) {
            let mut req = lite::TraceRequest::from_full(&full);
            reject_unidentified_traces(&mut req, &counters);
            e.ingest_lean_traces(&req, NOW + i as f64 / 1000.0);
        }
    }
}
