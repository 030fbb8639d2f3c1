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
    // Both are the server side of `b`, for `traces_service_graph_unpaired_spans_total{server="b"}`.
    assert_eq!(e.pairing.unpaired.values().copied().collect::<Vec<_>>(), vec![[0, 2]]);
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
    // Produced (ended) at T0 + 1 ms, consumed from T0 + 6 ms: 5 ms in the queue.
    let p = span(SpanKind::Producer, 8, 80, Some(1), T0, 1_000, vec![], false);
    let c = span(SpanKind::Consumer, 8, 81, Some(80), T0 + 6_000_000, 1_000, vec![], false);
    e.ingest_traces(&traces(vec![(resource("", "sub", ""), vec![c]), (resource("", "pub", ""), vec![p])]), NOW);
    let g = graph(&e, NOW);
    assert_eq!(g.edge("default/pub", "default/sub").unwrap().protocol, "messaging");
    let q = &e.edges()[0].totals.messaging;
    assert_eq!(q.count, 1);
    assert!((q.sum - 0.005).abs() < 1e-6, "{}", q.sum);
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

/// What SDKs send, across semantic-convention versions: one name for one thing.
#[test]
fn databases_are_named_alike_under_old_and_new_conventions() {
    let mut e = engine();
    let old = vec![kv("db.system", "redis"), kv("net.peer.name", "cache.local"), kv("db.statement", "GET k")];
    let new = vec![kv("db.system.name", "redis"), kv("server.address", "cache.local"), kv("db.query.text", "GET k")];
    let only_name = vec![kv("db.name", "inventory")];
    let only_ns =
        vec![kv("db.namespace", "billing"), kv("network.peer.address", "10.1.2.3"), kv_int("network.peer.port", 5432)];
    let spans = [old, new, only_name, only_ns]
        .into_iter()
        .enumerate()
        .map(|(i, a)| span(SpanKind::Client, 30, 300 + i as u64, Some(1), T0, 1_000, a, false))
        .collect();
    e.ingest_traces(&traces(vec![(resource("", "api", ""), spans)]), NOW);
    let g = graph(&e, NOW);
    assert_eq!(edge_requests(&g, "default/api", "db:cache.local"), 2);
    assert_eq!(edge_requests(&g, "default/api", "db:inventory"), 1, "db.name alone is a database (as in Tempo)");
    assert_eq!(edge_requests(&g, "default/api", "db:10.1.2.3:5432"), 1, "an address with its port, as Tempo names it");
    assert_eq!(g.edges.len(), 3, "{:?}", g.edges.iter().map(|e| &e.id).collect::<Vec<_>>());
    assert!(g.edges.iter().all(|x| x.protocol == "database"));
}

#[test]
fn an_uninstrumented_callee_is_named_by_its_url_host() {
    let mut e = engine();
    let new = span(
        SpanKind::Client,
        31,
        310,
        Some(1),
        T0,
        1_000,
        vec![kv("url.full", "https://api.stripe.com:443/v1/charges?x=1")],
        false,
    );
    let old = span(
        SpanKind::Client,
        31,
        311,
        Some(1),
        T0,
        1_000,
        vec![kv("http.url", "http://user@geo.example.org/q")],
        false,
    );
    e.ingest_traces(&traces(vec![(resource("", "shop", ""), vec![new, old])]), NOW);
    e.expire(NOW + 2.5);
    let g = graph(&e, NOW + 2.5);
    assert_eq!(edge_requests(&g, "default/shop", "ext:api.stripe.com"), 1);
    assert_eq!(edge_requests(&g, "default/shop", "ext:geo.example.org"), 1);
    assert!(g.edge("default/shop", "unknown").is_none());
}

#[test]
fn grpc_status_codes_decide_failure_as_the_conventions_say() {
    let mut e = engine();
    let grpc = |code: i64| vec![kv("rpc.system", "grpc"), kv_int("rpc.grpc.status_code", code)];
    let mut spans = Vec::new();
    // UNAVAILABLE with the span status UNSET; NOT_FOUND answered (client ERROR per the conventions);
    // OK; and an HTTP 404 on a client span marked ERROR.
    for (i, (code, error)) in [(14, false), (5, true), (0, false)].into_iter().enumerate() {
        let id = 320 + 2 * i as u64;
        spans.push((
            span(SpanKind::Client, 32, id, Some(1), T0, 1_000, grpc(code), error),
            span(SpanKind::Server, 32, id + 1, Some(id), T0, 900, grpc(code), false),
        ));
    }
    let (c, s): (Vec<_>, Vec<_>) = spans.into_iter().unzip();
    let not_found_http =
        span(SpanKind::Client, 32, 330, Some(1), T0, 1_000, vec![kv_int("http.response.status_code", 404)], true);
    let not_found_server =
        span(SpanKind::Server, 32, 331, Some(330), T0, 900, vec![kv_int("http.response.status_code", 404)], false);
    e.ingest_traces(
        &traces(vec![
            (resource("", "web", ""), c.into_iter().chain([not_found_http]).collect()),
            (resource("", "users", ""), s.into_iter().chain([not_found_server]).collect()),
        ]),
        NOW,
    );
    let g = graph(&e, NOW);
    let st = &g.edge("default/web", "default/users").unwrap().stats;
    assert_eq!(st.requests, 4);
    assert_eq!(st.errors, 1, "only UNAVAILABLE failed: {st:?}");
    assert_eq!((st.codes.c2xx, st.codes.c4xx, st.codes.c5xx, st.codes.none), (1, 2, 1, 0), "{st:?}");
    assert_eq!(g.edge("default/web", "default/users").unwrap().protocol, "grpc");
    let codes: Vec<(String, u64)> = st.grpc_codes.clone().unwrap().into_iter().collect();
    assert_eq!(
        codes,
        [("NOT_FOUND".into(), 1), ("OK".into(), 1), ("UNAVAILABLE".into(), 1)],
        "the 404 has no gRPC code"
    );
}

/// A batch consumer with no parent, linked to the producers of the messages it takes.
#[test]
fn a_batch_consumer_pairs_with_every_producer_it_links_to() {
    use crate::otlp::lite::TraceRequest;
    use opentelemetry_proto::tonic::trace::v1::span::Link;
    let mut e = engine();
    let producers: Vec<_> = (0..10u64)
        .map(|i| {
            span(
                SpanKind::Producer,
                40 + i,
                400 + i,
                Some(1),
                T0,
                500,
                vec![kv("messaging.system", "kafka"), kv("messaging.destination.name", "events")],
                false,
            )
        })
        .collect();
    let mut consumer = span(SpanKind::Consumer, 99, 499, None, T0, 5_000, vec![kv("messaging.system", "kafka")], false);
    consumer.links = (0..10u64)
        .map(|i| {
            let mut trace_id = vec![0u8; 8];
            trace_id.extend_from_slice(&(40 + i).to_be_bytes());
            Link { trace_id, span_id: (400 + i).to_be_bytes().to_vec(), ..Link::default() }
        })
        .collect();
    let req = traces(vec![(resource("", "indexer", ""), vec![consumer]), (resource("", "ingest", ""), producers)]);
    assert_eq!(TraceRequest::from_full(&req).resource_spans[0].scope_spans[0].spans[0].links.len(), 10);
    e.ingest_traces(&req, NOW);
    e.expire(NOW + 2.5);
    let g = graph(&e, NOW + 2.5);
    assert_eq!(edge_requests(&g, "default/ingest", "default/indexer"), 10);
    assert_eq!(
        g.edges.len(),
        1,
        "no user→indexer, no ingest→unknown: {:?}",
        g.edges.iter().map(|e| &e.id).collect::<Vec<_>>()
    );
    assert_eq!(g.edges[0].protocol, "messaging");
}

#[test]
fn a_producer_with_no_consumer_names_its_destination() {
    let mut e = engine();
    let p = span(
        SpanKind::Producer,
        50,
        500,
        Some(1),
        T0,
        500,
        vec![
            kv("messaging.system", "rabbitmq"),
            kv("server.address", "broker.local"),
            kv("messaging.destination.name", "orders"),
        ],
        false,
    );
    e.ingest_traces(&traces(vec![(resource("", "shop", ""), vec![p])]), NOW);
    e.expire(NOW + 2.5);
    let g = graph(&e, NOW + 2.5);
    assert_eq!(edge_requests(&g, "default/shop", "ext:orders"), 1);
}

/// The namespace view and a collapsed namespace merge their members' counts and histograms: the
/// merged p50 is the p50 of all the requests, not a mean of the members' p50s.
#[test]
fn namespace_view_and_collapse_merge_counts_and_histograms() {
    use crate::views::{Collapse, collapsed};
    let mut e = engine();
    let mut id = 100u64;
    let mut call = |e: &mut Engine, from: (&str, &str, &str), to: (&str, &str, &str), ms: u64, code: i64| {
        id += 2;
        let client = span(SpanKind::Client, id, id, None, T0, ms * 1_000, vec![], false);
        let server = span(
            SpanKind::Server,
            id,
            id + 1,
            Some(id),
            T0,
            ms * 1_000,
            vec![kv_int("http.response.status_code", code)],
            false,
        );
        e.ingest_traces(
            &traces(vec![(resource(from.0, from.1, from.2), vec![client]), (resource(to.0, to.1, to.2), vec![server])]),
            NOW,
        );
    };
    // shop/web calls pay/card (v1 fast, v2 slow and failing), and shop/web calls shop/cart.
    for _ in 0..30 {
        call(&mut e, ("shop", "web", "v1"), ("pay", "card", "v1"), 10, 200);
    }
    for _ in 0..10 {
        call(&mut e, ("shop", "web", "v1"), ("pay", "card", "v2"), 100, 503);
    }
    for _ in 0..5 {
        call(&mut e, ("shop", "web", "v1"), ("shop", "cart", "v1"), 20, 200);
    }
    let g = snapshot(&e, View::Namespace, 60, NOW, &mut Merger::default());
    let ids: Vec<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["ns:pay", "ns:shop"]);
    assert!(g.nodes.iter().all(|n| n.kind == meshlens_model::graph::NodeKind::Namespace));
    let cross = g.edge("ns:shop", "ns:pay").unwrap();
    assert_eq!((cross.stats.requests, cross.stats.errors), (40, 10));
    let lat = cross.stats.latency_ms.unwrap();
    assert!((lat.p50 - 10.0).abs() < 0.5 && (lat.p99 - 100.0).abs() < 3.0, "merged from histograms: {lat:?}");
    assert_eq!(g.edge("ns:shop", "ns:shop").unwrap().stats.requests, 5, "inside a namespace: its self-edge");
    // Collapse one namespace over the versioned view: the other keeps its versions.
    let c = collapsed(&e, View::Versioned, &Collapse::new(&["pay"]), 60, NOW, &mut Merger::default());
    assert_eq!(c.edge("shop/web/v1", "ns:pay").unwrap().stats.requests, 40);
    assert_eq!(c.edge("shop/web/v1", "shop/cart/v1").unwrap().stats.requests, 5);
    // Collapse an app: its versions merge into the app node.
    let a = collapsed(&e, View::Versioned, &Collapse::new(&["pay/card"]), 60, NOW, &mut Merger::default());
    let card = a.node("pay/card").unwrap();
    assert_eq!(
        (card.kind, card.inbound.requests, card.group.clone()),
        (meshlens_model::graph::NodeKind::App, 40, None)
    );
    assert!(a.node("pay/card/v1").is_none());
}

#[test]
fn k8s_cluster_name_makes_one_app_in_two_clusters_two_nodes() {
    let mut e = engine();
    let in_cluster = |app: &str, cluster: &str| {
        let mut r = resource("shop", app, "v1");
        r.attributes.push(kv("k8s.cluster.name", cluster));
        r
    };
    for (trace, cluster) in [(1, "east"), (2, "west")] {
        let client = span(SpanKind::Client, trace, 10, Some(1), T0, 30_000, vec![], false);
        let server = span(
            SpanKind::Server,
            trace,
            11,
            Some(10),
            T0,
            20_000,
            vec![kv_int("http.response.status_code", 200)],
            false,
        );
        e.ingest_traces(
            &traces(vec![(in_cluster("web", "east"), vec![client]), (in_cluster("cart", cluster), vec![server])]),
            NOW,
        );
    }
    let g = graph(&e, NOW);
    assert_eq!(edge_requests(&g, "shop/web/v1@east", "shop/cart/v1@east"), 1);
    assert_eq!(edge_requests(&g, "shop/web/v1@east", "shop/cart/v1@west"), 1);
    let west = g.nodes.iter().find(|n| n.id == "shop/cart/v1@west").unwrap();
    assert_eq!((west.cluster.as_deref(), west.group.as_deref()), (Some("west"), Some("shop/cart@west")));
    assert!(meshlens_model::find::parse("cluster = west").unwrap().matches_node(west));
    let app = snapshot(&e, View::App, 60, NOW, &mut Merger::default());
    assert!(app.edge("shop/web@east", "shop/cart@west").is_some(), "{:?}", app.edges);
    let ns = snapshot(&e, View::Namespace, 60, NOW, &mut Merger::default());
    assert!(ns.edge("ns:shop@east", "ns:shop@west").is_some(), "{:?}", ns.edges);
}
