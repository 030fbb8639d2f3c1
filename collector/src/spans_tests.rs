//! One test per pairing case of the servicegraph connector, on the engine directly.

use std::sync::Arc;

use meshlens_model::graph::{GraphSnapshot, View};
use meshlens_model::hist::Merger;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::counters::Counters;
use crate::engine::{Engine, EngineConfig};
use crate::testkit::{kv, kv_int, resource, span, traces};
use crate::views::snapshot;

const NOW: f64 = 1_800_000_000.5;
const T0: u64 = 1_800_000_000_000_000_000;

fn engine() -> Engine {
    Engine::new(
        EngineConfig { pairing_ttl_secs: 2.0, ..EngineConfig::default() },
        Arc::new(Counters::default()),
        NOW - 100.0,
    )
}

fn graph(e: &Engine, now: f64) -> GraphSnapshot {
    snapshot(e, View::Versioned, 60, now, &mut Merger::default())
}

fn edge_requests(g: &GraphSnapshot, s: &str, t: &str) -> u64 {
    g.edge(s, t)
        .unwrap_or_else(|| panic!("no edge {s}->{t} in {:?}", g.edges.iter().map(|e| &e.id).collect::<Vec<_>>()))
        .stats
        .requests
}

#[test]
fn client_then_server_pair_into_one_request() {
    let mut e = engine();
    let client = span(SpanKind::Client, 1, 10, Some(1), T0, 30_000, vec![], false);
    let server =
        span(SpanKind::Server, 1, 11, Some(10), T0, 20_000, vec![kv_int("http.response.status_code", 200)], false);
    e.ingest_traces(&traces(vec![(resource("", "a", "v1"), vec![client])]), NOW);
    e.ingest_traces(&traces(vec![(resource("", "b", "v2"), vec![server])]), NOW);
    let g = graph(&e, NOW);
    assert_eq!(edge_requests(&g, "default/a/v1", "default/b/v2"), 1);
    let lat = g.edge("default/a/v1", "default/b/v2").unwrap().stats.latency_ms.unwrap();
    assert!((lat.p50 - 20.0).abs() < 0.2, "server latency wins: {lat:?}");
    assert_eq!(g.edges.len(), 1);
    assert_eq!(e.counters.spans_paired.get(), 2);
    assert!(e.pairing.is_empty());
}

#[test]
fn server_then_client_pair_too_and_errors_count() {
    let mut e = engine();
    let server =
        span(SpanKind::Server, 2, 21, Some(20), T0, 5_000, vec![kv_int("http.response.status_code", 503)], false);
    let client = span(SpanKind::Client, 2, 20, None, T0, 6_000, vec![], false);
    e.ingest_traces(
        &traces(vec![(resource("shop", "b", ""), vec![server]), (resource("shop", "a", ""), vec![client])]),
        NOW,
    );
    let g = graph(&e, NOW);
    let edge = g.edge("shop/a", "shop/b").unwrap();
    assert_eq!(edge.stats.requests, 1);
    assert_eq!(edge.stats.errors, 1);
    assert_eq!(edge.stats.codes.c5xx, 1);
    assert_eq!(edge.stats.error_pct, Some(100.0));
}

#[test]
fn database_call_is_a_one_span_edge_named_by_preference() {
    let mut e = engine();
    let by_peer = span(
        SpanKind::Client,
        3,
        30,
        Some(1),
        T0,
        1_000,
        vec![kv("db.system", "mysql"), kv("peer.service", "orders-db"), kv("server.address", "10.0.0.1")],
        false,
    );
    let by_addr = span(
        SpanKind::Client,
        3,
        31,
        Some(1),
        T0,
        1_000,
        vec![kv("db.system", "redis"), kv("server.address", "cache.local"), kv("db.namespace", "0")],
        false,
    );
    let by_ns = span(
        SpanKind::Client,
        3,
        32,
        Some(1),
        T0,
        1_000,
        vec![kv("db.system.name", "postgresql"), kv("db.namespace", "billing")],
        false,
    );
    let by_name = span(
        SpanKind::Client,
        3,
        33,
        Some(1),
        T0,
        1_000,
        vec![kv("db.system", "mongodb"), kv("db.name", "catalog")],
        false,
    );
    let by_system = span(SpanKind::Client, 3, 34, Some(1), T0, 1_000, vec![kv("db.system", "sqlite")], false);
    e.ingest_traces(&traces(vec![(resource("", "api", ""), vec![by_peer, by_addr, by_ns, by_name, by_system])]), NOW);
    let g = graph(&e, NOW);
    for db in ["orders-db", "cache.local", "billing", "catalog", "sqlite"] {
        let target = format!("db:{db}");
        assert_eq!(edge_requests(&g, "default/api", &target), 1, "{db}");
        assert_eq!(g.edge("default/api", &target).unwrap().protocol, "database");
    }
    assert!(e.pairing.is_empty(), "database spans do not wait for a server");
}

#[test]
fn root_server_is_called_by_user_or_its_peer_service() {
    let mut e = engine();
    let root = span(SpanKind::Server, 4, 40, None, T0, 1_000, vec![], false);
    let from_peer = span(SpanKind::Server, 4, 41, None, T0, 1_000, vec![kv("peer.service", "partner-gw")], false);
    e.ingest_traces(&traces(vec![(resource("", "front", "v1"), vec![root, from_peer])]), NOW);
    let g = graph(&e, NOW);
    assert_eq!(edge_requests(&g, "user", "default/front/v1"), 1);
    assert_eq!(edge_requests(&g, "ext:partner-gw", "default/front/v1"), 1);
    assert_eq!(g.node("user").unwrap().kind, meshlens_model::NodeKind::User);
}

#[test]
fn lone_client_calls_a_virtual_node_once_its_ttl_passes() {
    let mut e = engine();
    let named = span(SpanKind::Client, 5, 50, Some(1), T0, 1_000, vec![kv("peer.service", "payments")], false);
    let addr = span(SpanKind::Client, 5, 51, Some(1), T0, 1_000, vec![kv("server.address", "api.example.com")], true);
    let anon = span(SpanKind::Client, 5, 52, Some(1), T0, 1_000, vec![], false);
    e.ingest_traces(&traces(vec![(resource("", "a", ""), vec![named, addr, anon])]), NOW);
    assert!(graph(&e, NOW).edges.is_empty(), "not before the TTL");
    e.expire(NOW + 1.0);
    assert!(graph(&e, NOW + 1.0).edges.is_empty(), "not before the TTL");
    e.expire(NOW + 2.5);
    let g = graph(&e, NOW + 2.5);
    assert_eq!(edge_requests(&g, "default/a", "ext:payments"), 1);
    assert_eq!(edge_requests(&g, "default/a", "unknown"), 1);
    let failed = g.edge("default/a", "ext:api.example.com").unwrap();
    assert_eq!(
        (failed.stats.errors, failed.stats.codes.none),
        (1, 1),
        "an errored client span with no status had no response"
    );
    assert_eq!(e.counters.unpaired_client.get(), 3);
}

#[test]
fn lone_server_with_a_parent_expires_without_an_edge() {
    let mut e = engine();
    let orphan = span(SpanKind::Server, 6, 61, Some(60), T0, 1_000, vec![], false);
    let consumer = span(SpanKind::Consumer, 6, 62, Some(63), T0, 1_000, vec![], false);
    e.ingest_traces(&traces(vec![(resource("", "b", ""), vec![orphan, consumer])]), NOW);
    e.expire(NOW + 3.0);
    assert!(graph(&e, NOW + 3.0).edges.is_empty());
    assert_eq!(e.counters.expired_server.get(), 1);
    assert_eq!(e.counters.expired_consumer.get(), 1);
    assert!(e.pairing.is_empty());
}

#[test]
fn self_edges_count() {
    let mut e = engine();
    let c = span(SpanKind::Client, 7, 70, Some(1), T0, 1_000, vec![], false);
    let s = span(SpanKind::Server, 7, 71, Some(70), T0, 1_000, vec![], false);
    e.ingest_traces(&traces(vec![(resource("", "loop", "v1"), vec![c, s])]), NOW);
    let g = graph(&e, NOW);
    assert_eq!(edge_requests(&g, "default/loop/v1", "default/loop/v1"), 1);
}

#[test]
fn producer_and_consumer_pair_as_messaging() {
    let mut e = engine();
    let p = span(SpanKind::Producer, 8, 80, Some(1), T0, 1_000, vec![], false);
    let c = span(SpanKind::Consumer, 8, 81, Some(80), T0, 1_000, vec![], false);
    e.ingest_traces(&traces(vec![(resource("", "pub", ""), vec![p]), (resource("", "sub", ""), vec![c])]), NOW);
    let g = graph(&e, NOW);
    assert_eq!(g.edge("default/pub", "default/sub").unwrap().protocol, "messaging");
}

#[test]
fn spans_count_when_they_arrive_not_when_they_say() {
    let mut e = engine();
    let hour_ago = T0 - 3_600_000_000_000;
    let c = span(SpanKind::Client, 9, 90, Some(1), hour_ago, 1_000, vec![], false);
    let s = span(SpanKind::Server, 9, 91, Some(90), hour_ago + 7_200_000_000_000, 1_000, vec![], false);
    e.ingest_traces(&traces(vec![(resource("", "a", ""), vec![c]), (resource("", "b", ""), vec![s])]), NOW);
    let g = snapshot(&e, View::Versioned, 10, NOW, &mut Merger::default());
    assert_eq!(edge_requests(&g, "default/a", "default/b"), 1);
}

#[test]
fn a_full_store_drops_new_halves_and_counts_them() {
    let mut e = Engine::new(
        EngineConfig { pairing_capacity: 2, ..EngineConfig::default() },
        Arc::new(Counters::default()),
        NOW,
    );
    let halves: Vec<_> =
        (0..3).map(|i| span(SpanKind::Client, 10, 100 + i, Some(1), T0, 1_000, vec![], false)).collect();
    e.ingest_traces(&traces(vec![(resource("", "a", ""), halves)]), NOW);
    assert_eq!(e.pairing.len(), 2);
    assert_eq!(e.counters.spans_dropped_store_full.get(), 1);
}

#[test]
fn the_node_limit_drops_and_counts() {
    let mut e =
        Engine::new(EngineConfig { max_nodes: 3, ..EngineConfig::default() }, Arc::new(Counters::default()), NOW);
    let batches = (0..10)
        .map(|i| {
            (resource("", &format!("svc{i}"), ""), vec![span(SpanKind::Server, 11, i, None, T0, 1, vec![], false)])
        })
        .collect();
    e.ingest_traces(&traces(batches), NOW);
    // svc0, then `user` (its caller), then svc1 fill the three nodes; the other eight are counted.
    assert_eq!(graph(&e, NOW).edges.len(), 2);
    assert_eq!(e.counters.spans_dropped_cardinality.get(), 8);
}
