//! OTLP in: gRPC and HTTP (protobuf, JSON, gzip), partial success, and bad input of every kind.

use prost::Message;
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_and_encoding_builds_the_graph() {
    let c = collector().await;
    // gRPC
    let resp = grpc_traces(&c, pairs(1, ("a", "v1"), ("b", "v1"), 5, 200, 10)).await.unwrap();
    assert!(resp.partial_success.is_none());
    // HTTP protobuf
    let r = http_traces(&c, &pairs(2, ("a", "v1"), ("c", "v1"), 4, 200, 10)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    // HTTP protobuf, gzip
    let r = post(
        &c,
        "/v1/traces",
        "application/x-protobuf",
        true,
        gzip(&pairs(3, ("a", "v1"), ("d", "v1"), 3, 500, 10).encode_to_vec()),
    )
    .await;
    assert_eq!(r.status(), 200);
    // HTTP JSON: hex ids, integer enums, int64 as strings, as the OTLP spec writes them.
    let body = json!({"resourceSpans": [
        {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "a"}}, {"key": "service.version", "value": {"stringValue": "v1"}}]},
         "scopeSpans": [{"spans": [{"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "parentSpanId": "eee19b7ec3c1b173",
            "name": "GET /e", "kind": 3, "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000"}]}]},
        {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "e"}}, {"key": "service.version", "value": {"stringValue": "v1"}}]},
         "scopeSpans": [{"spans": [{"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b175", "parentSpanId": "eee19b7ec3c1b174",
            "name": "GET /e", "kind": 2, "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712660500000000",
            "attributes": [{"key": "http.response.status_code", "value": {"intValue": "200"}}]}]}]}
    ]});
    let r = post(&c, "/v1/traces", "application/json", false, serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");

    for (target, n) in [("default/b/v1", 5), ("default/c/v1", 4), ("default/d/v1", 3), ("default/e/v1", 1)] {
        let g = wait_edge(&c, "", "default/a/v1", target, n).await;
        let stats = &edge(&g, "default/a/v1", target).unwrap()["stats"];
        assert_eq!(stats["requests"], n, "{target}");
        match target {
            "default/d/v1" => assert_eq!(stats["error_pct"], 100.0),
            "default/e/v1" => assert_eq!(stats["latency_ms"]["p50"].as_f64().unwrap().round(), 500.0),
            _ => assert_eq!(stats["error_pct"], 0.0),
        }
    }
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_without_service_name_is_a_partial_success() {
    let c = collector().await;
    let mut req = pairs(1, ("a", ""), ("b", ""), 2, 200, 1);
    req.resource_spans[1].resource.as_mut().unwrap().attributes.clear();
    let resp = grpc_traces(&c, req.clone()).await.unwrap();
    let ps = resp.partial_success.expect("partial success");
    assert_eq!(ps.rejected_spans, 2);
    assert!(ps.error_message.contains("service.name"), "{}", ps.error_message);
    assert!(ps.error_message.contains("resource index 1"), "{}", ps.error_message);

    let r = http_traces(&c, &req).await;
    assert_eq!(r.status(), 200);
    let body =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(r.bytes().await.unwrap())
            .unwrap();
    assert_eq!(body.partial_success.unwrap().rejected_spans, 2);

    let mut m = metrics(vec![(
        resource("", "", ""),
        vec![hist_metric("http.server.request.duration", false, vec![hist_point(vec![], 0, 1, &[1])])],
    )]);
    m.resource_metrics[0].resource.as_mut().unwrap().attributes.clear();
    let resp = grpc_metrics(&c, m).await.unwrap();
    assert_eq!(resp.partial_success.unwrap().rejected_data_points, 1);
    let text = http().get(format!("{}/metrics", c.api_url())).send().await.unwrap().text().await.unwrap();
    assert_eq!(prom_value(&text, "meshlens_collector_rejected_total{signal=\"spans\"}"), Some(4.0));
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_the_collector_keeps_serving() {
    let c = collector_with(|cfg| cfg.max_request_bytes = 1 << 20).await;
    // (what, content type, gzip, body, expected status, text the answer contains)
    type Case = (&'static str, &'static str, bool, Vec<u8>, u16, &'static str);
    let cases: Vec<Case> = vec![
        (
            "garbage protobuf",
            "application/x-protobuf",
            false,
            b"\xff\xff\xff\xff garbage".to_vec(),
            400,
            "not a valid OTLP protobuf",
        ),
        (
            "absurd length prefix",
            "application/x-protobuf",
            false,
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01],
            400,
            "not a valid OTLP protobuf",
        ),
        ("garbage JSON", "application/json", false, b"{\"resourceSpans\": [".to_vec(), 400, "not a valid OTLP JSON"),
        (
            "bad hex id",
            "application/json",
            false,
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"01"}]}]}]}"#.to_vec(),
            400,
            "not a valid OTLP JSON",
        ),
        ("wrong content type", "text/plain", false, b"hello".to_vec(), 415, "unsupported content-type"),
        (
            "truncated gzip",
            "application/x-protobuf",
            true,
            gzip(&pairs(1, ("a", ""), ("b", ""), 50, 200, 1).encode_to_vec())[..40].to_vec(),
            400,
            "gzip",
        ),
        ("over the cap", "application/x-protobuf", false, vec![0u8; (1 << 20) + 1], 413, "cap"),
        ("over the cap once decompressed", "application/x-protobuf", true, gzip(&vec![0u8; 4 << 20]), 413, "cap"),
    ];
    for (what, ctype, gz, body, status, needle) in cases {
        let r = post(&c, "/v1/traces", ctype, gz, body).await;
        assert_eq!(r.status().as_u16(), status, "{what}");
        let text = r.text().await.unwrap();
        assert!(text.contains(needle), "{what}: {text}");
    }
    // gRPC, framed by hand: a frame announcing 2 GiB is refused without reading it, and a
    // well-framed message that is not protobuf is refused by either service.
    let cases: [(&str, u32, &[u8]); 3] = [
        ("trace.v1.TraceService", 0x7fff_ffff, b"short"),
        ("trace.v1.TraceService", 5, &[0xff; 5]),
        ("metrics.v1.MetricsService", 5, &[0xff; 5]),
    ];
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    for (service, announced, payload) in cases {
        let mut frame = vec![0u8];
        frame.extend_from_slice(&announced.to_be_bytes());
        frame.extend_from_slice(payload);
        let r = h2
            .post(format!("http://{}/opentelemetry.proto.collector.{service}/Export", c.otlp_grpc_addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(frame)
            .send()
            .await
            .unwrap();
        let grpc_status = r.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
        assert!(
            matches!(grpc_status.as_deref(), Some(s) if s != "0"),
            "{service} refuses a {announced}-byte frame: {:?}",
            r.headers()
        );
    }

    // Still serving: a good export lands.
    let r = http_traces(&c, &pairs(9, ("ok", ""), ("fine", ""), 2, 200, 1)).await;
    assert_eq!(r.status(), 200);
    wait_edge(&c, "", "default/ok", "default/fine", 2).await;
    let text = http().get(format!("{}/metrics", c.api_url())).send().await.unwrap().text().await.unwrap();
    // Two HTTP bodies and a gRPC frame were too large; six HTTP bodies and two gRPC messages could
    // not be decoded.
    assert_eq!(prom_value(&text, "meshlens_collector_refused_requests_total{reason=\"too_large\"}"), Some(3.0));
    assert_eq!(prom_value(&text, "meshlens_collector_refused_requests_total{reason=\"malformed\"}"), Some(8.0));
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_service_names_hit_a_counted_limit() {
    let c = collector_with(|cfg| cfg.engine.max_nodes = 1000).await;
    for batch in 0..20u64 {
        let resources = (0..5000u64)
            .map(|i| {
                let name = format!("svc-{}", batch * 5000 + i);
                (resource("", &name, ""), vec![span(SpanKind::Server, batch + 1, i + 1, None, 1, 1, vec![], false)])
            })
            .collect();
        let r = http_traces(&c, &traces(resources)).await;
        assert_eq!(r.status(), 200);
    }
    let url = format!("{}/metrics", c.api_url());
    let dropped = eventually("all spans processed", 30, || async {
        let text = http().get(&url).send().await.unwrap().text().await.unwrap();
        let dropped = prom_value(&text, "meshlens_collector_dropped_total{signal=\"spans\",reason=\"cardinality\"}")?;
        let root = prom_value(&text, "meshlens_collector_spans_single_total{kind=\"root_server\"}")?;
        (dropped + root == 100_000.0).then_some(dropped)
    })
    .await;
    assert_eq!(dropped, 100_000.0 - 999.0, "`user` takes one node of the 1000");
    let (status, g) = get_json(&format!("{}/api/v1/graph?window=10s", c.api_url())).await;
    assert_eq!(status, 200);
    assert_eq!(g["nodes"].as_array().unwrap().len(), 1000);
    assert_eq!(get_json(&format!("{}/readyz", c.api_url())).await.0, 200);
    c.shutdown().await.unwrap();
}

// Holding the graph lock across awaits is the point: it stalls the pipeline.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_with_retry_after() {
    let c = collector_with(|cfg| cfg.max_queue_bytes = 1).await;
    // Hold the graph lock so the pipeline cannot finish the first batch.
    let guard = c.hub.engine.lock();
    let first = http_traces(&c, &pairs(1, ("a", ""), ("b", ""), 1, 200, 1)).await;
    assert_eq!(first.status(), 200, "an empty queue takes one batch");
    let second = http_traces(&c, &pairs(2, ("a", ""), ("b", ""), 1, 200, 1)).await;
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "1");
    let status = grpc_traces(&c, pairs(3, ("a", ""), ("b", ""), 1, 200, 1)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    use tonic_types::StatusExt;
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert_eq!(retry.retry_delay, Some(std::time::Duration::from_secs(1)));
    drop(guard);
    // The accepted batch is not lost.
    wait_edge(&c, "?window=10s", "default/a", "default/b", 1).await;
    let text = http().get(format!("{}/metrics", c.api_url())).send().await.unwrap().text().await.unwrap();
    assert_eq!(prom_value(&text, "meshlens_collector_refused_requests_total{reason=\"queue_full\"}"), Some(2.0));
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_accepts_gzip() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let c = collector().await;
    let mut client = TraceServiceClient::connect(format!("http://{}", c.otlp_grpc_addr))
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    client.export(pairs(1, ("a", ""), ("b", ""), 6, 200, 2)).await.unwrap();
    wait_edge(&c, "", "default/a", "default/b", 6).await;
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_metrics_count_each_request_once_over_grpc_and_http() {
    use meshlens_model::names::{CLIENT_DURATION, CLIENT_RETRIES, CLIENT_TIMEOUTS, SERVER_DURATION};
    let c = collector().await;
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let a = ("productpage", "v1");
    let b = ("reviews", "v3");
    // Both agents of the hop report the same 20 requests (4 of them 503), cumulatively, twice:
    // the second export adds 10 more. The caller also saw 2 connect failures and made 3 retries.
    for (round, ok, failed) in [(1u64, 16u64, 4u64), (2, 26, 4)] {
        let server = hist_metric(
            SERVER_DURATION,
            true,
            vec![
                hist_point(edge_attrs(a, b, Some(200)), start, round, &[0, ok]),
                hist_point(edge_attrs(a, b, Some(503)), start, round, &[0, failed]),
            ],
        );
        let mut refused = edge_attrs(a, b, None);
        refused.push(kv("error.type", "connect_failure"));
        let client = hist_metric(
            CLIENT_DURATION,
            true,
            vec![
                hist_point(edge_attrs(a, b, Some(200)), start, round, &[0, 0, ok]),
                hist_point(edge_attrs(a, b, Some(503)), start, round, &[0, 0, failed]),
                hist_point(refused, start, round, &[2]),
            ],
        );
        let retries = sum_metric(CLIENT_RETRIES, true, edge_attrs(a, b, None), start, 3);
        let timeouts = sum_metric(CLIENT_TIMEOUTS, true, edge_attrs(a, b, None), start, 0);
        let req = metrics(vec![
            (resource("", "reviews", "v3"), vec![server]),
            (resource("", "productpage", "v1"), vec![client, retries, timeouts]),
        ]);
        if round == 1 {
            let resp = grpc_metrics(&c, req).await.unwrap();
            assert!(resp.partial_success.is_none());
        } else {
            let r = post(&c, "/v1/metrics", "application/x-protobuf", false, req.encode_to_vec()).await;
            assert_eq!(r.status(), 200);
        }
    }
    let g = wait_edge(&c, "", "default/productpage/v1", "default/reviews/v3", 32).await;
    let s = &edge(&g, "default/productpage/v1", "default/reviews/v3").unwrap()["stats"];
    // 30 served (26 ok + 4 failed) + 2 refused before reaching the callee.
    assert_eq!(s["requests"], 32, "{s}");
    assert_eq!(s["errors"], 6);
    assert_eq!(s["codes"]["5xx"], 4);
    assert_eq!(s["codes"]["none"], 2);
    assert_eq!(s["retries"], 3);
    assert_eq!(s["timeouts"], 0);
    let p50 = s["latency_ms"]["p50"].as_f64().unwrap();
    assert!((5.0..=10.0).contains(&p50), "the callee's 5-10 ms bucket: {p50}");
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_histogram_point_of_the_wrong_shape_is_rejected_and_the_rest_lands() {
    use meshlens_model::names::SERVER_DURATION;
    let c = collector().await;
    let good = hist_point(edge_attrs(("a", "v1"), ("b", "v1"), Some(200)), 0, 1, &[3]);
    let mut too_many_buckets = hist_point(edge_attrs(("a", "v1"), ("c", "v1"), Some(200)), 0, 1, &[1]);
    too_many_buckets.bucket_counts = vec![1; 40];
    let mut unordered_bounds = hist_point(edge_attrs(("a", "v1"), ("d", "v1"), Some(200)), 0, 1, &[1]);
    unordered_bounds.explicit_bounds.swap(0, 5);
    let m = hist_metric(SERVER_DURATION, false, vec![good, too_many_buckets, unordered_bounds]);
    let req = metrics(vec![(resource("", "b", "v1"), vec![m])]);
    let r = post(&c, "/v1/metrics", "application/json", false, serde_json::to_vec(&req).unwrap()).await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["partialSuccess"]["rejectedDataPoints"], 2, "{body}");
    let msg = body["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(msg.contains(SERVER_DURATION) && msg.contains("bucket_counts") && msg.contains("explicit_bounds"), "{msg}");
    // The good point lands, and the collector keeps working after the bad ones.
    wait_edge(&c, "", "default/a/v1", "default/b/v1", 3).await;
    grpc_traces(&c, pairs(1, ("x", ""), ("y", ""), 1, 200, 1)).await.unwrap();
    let g = wait_edge(&c, "", "default/x", "default/y", 1).await;
    assert!(edge(&g, "default/a/v1", "default/c/v1").is_none() && edge(&g, "default/a/v1", "default/d/v1").is_none());
    c.shutdown().await.unwrap();
}

/// A 1 MB service name (and a 1 MB peer.service) is refused at the door with a partial success
/// that says why, counted, and never reaches the graph.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_name_is_refused_and_counted() {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let c = collector().await;
    let huge = "n".repeat(1 << 20);
    let mut req = pairs(1, ("a", "v1"), ("b", "v1"), 3, 200, 1);
    req.resource_spans[1].resource = Some(resource("", &huge, "v1"));
    let r = http_traces(&c, &req).await;
    assert_eq!(r.status(), 200);
    let body =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(r.bytes().await.unwrap())
            .unwrap();
    let ps = body.partial_success.expect("partial success");
    assert_eq!(ps.rejected_spans, 3);
    assert!(
        ps.error_message.contains("longer than 253 bytes") && ps.error_message.contains("resource index 1"),
        "{}",
        ps.error_message
    );
    assert!(ps.error_message.len() < 500, "the message does not echo the name");

    // A client span naming a 1 MB peer: the unknown peer, counted.
    let client = span(SpanKind::Client, 9, 90, None, 1, 1_000, vec![kv("peer.service", &huge)], false);
    grpc_traces(&c, traces(vec![(resource("", "a", "v1"), vec![client])])).await.unwrap();
    let text = eventually("the counter", 20, || async {
        let text = http().get(format!("{}/metrics", c.api_url())).send().await.unwrap().text().await.unwrap();
        (prom_value(&text, "meshlens_collector_names_too_long_total") == Some(2.0)).then_some(text)
    })
    .await;
    assert!(text.contains("meshlens_collector_rejected_total{signal=\"spans\"} 3"), "{text}");
    let (_, g) = get_json(&format!("{}/api/v1/graph", c.api_url())).await;
    assert!(g["nodes"].as_array().unwrap().iter().all(|n| n["id"].as_str().unwrap().len() < 300), "{g}");
}

/// Trace and span ids of the wrong length (or all zero), in JSON as in protobuf, are refused with a
/// partial success and counted; the valid span of the same export is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_the_wrong_length_are_refused() {
    let c = collector().await;
    let span = |trace: &str, id: &str| {
        json!({"traceId": trace, "spanId": id, "name": "GET /", "kind": 2,
        "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712660500000000"})
    };
    let body = json!({"resourceSpans": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "a"}}]},
    "scopeSpans": [{"spans": [
        span("", "eee19b7ec3c1b174"),
        span("5b", "eee19b7ec3c1b174"),
        span("5b8efff798038103d269b633813fc60c0d", "eee19b7ec3c1b174"),
        span("00000000000000000000000000000000", "eee19b7ec3c1b174"),
        span("5b8efff798038103d269b633813fc60c", "ee"),
        span("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"),
    ]}]}]});
    let r = post(&c, "/v1/traces", "application/json", false, serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], json!(5), "{answer}");
    assert!(
        answer["partialSuccess"]["errorMessage"].as_str().unwrap().contains("trace_id must be 16 bytes"),
        "{answer}"
    );
    let text = http().get(format!("{}/metrics", c.api_url())).send().await.unwrap().text().await.unwrap();
    assert_eq!(prom_value(&text, "meshlens_collector_spans_bad_ids_total"), Some(5.0), "{text}");
    assert_eq!(prom_value(&text, "meshlens_collector_received_total{signal=\"spans\"}"), Some(1.0), "{text}");
}

/// A gzip body of two members (as `cat a.gz b.gz` makes, and RFC 1952 allows) is read whole: the
/// spans of both members count, not only the first's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_of_a_concatenated_gzip_body_is_read() {
    let c = collector().await;
    // Two encoded exports concatenated are one export holding both (protobuf appends repeated fields).
    let mut body = gzip(&pairs(1, ("a", "v1"), ("b", "v1"), 3, 200, 1).encode_to_vec());
    body.extend(gzip(&pairs(2, ("a", "v1"), ("c", "v1"), 4, 200, 1).encode_to_vec()));
    let r = post(&c, "/v1/traces", "application/x-protobuf", true, body).await;
    assert_eq!(r.status(), 200);
    let text = http().get(format!("{}/metrics", c.api_url())).send().await.unwrap().text().await.unwrap();
    assert_eq!(prom_value(&text, "meshlens_collector_received_total{signal=\"spans\"}"), Some(14.0), "{text}");
    wait_edge(&c, "", "default/a/v1", "default/c/v1", 4).await;
}

/// Uploads that stall are bounded: the in-flight byte budget admits as many as it holds (here two
/// uploads declaring 50 MiB of a 100 MiB budget) and answers the rest 503 at once; an admitted
/// upload whose body does not arrive within the body read timeout is answered 408; then exports
/// flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_are_bounded_by_the_inflight_budget_and_time_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = collector_with(|cfg| {
        cfg.max_inflight_bytes = 100 << 20;
        cfg.body_read_timeout = std::time::Duration::from_secs(3);
        cfg.max_request_bytes = 64 << 20;
    })
    .await;
    // Each declares 50 MiB, sends its headers and stalls. No timing decides who is admitted: the
    // collector's own counter says when it has answered the 18 the budget cannot hold.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(c.otlp_http_addr).await.unwrap();
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            50 << 20
        );
        s.write_all(head.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    let counters = c.hub.counters.clone();
    eventually("18 uploads refused", 20, || async { (counters.requests_refused_inflight.get() == 18).then_some(()) })
        .await;
    let mut answers = Vec::new();
    for mut s in stalled {
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), s.read(&mut buf)).await.unwrap().unwrap_or(0);
        answers.push(String::from_utf8_lossy(&buf[..n]).split("\r\n").next().unwrap_or("").to_owned());
    }
    let refused = answers.iter().filter(|a| a.contains(" 503 ")).count();
    let timed_out = answers.iter().filter(|a| a.contains(" 408 ")).count();
    assert_eq!((refused, timed_out), (18, 2), "{answers:?}");
    let text = http().get(format!("{}/metrics", c.api_url())).send().await.unwrap().text().await.unwrap();
    assert_eq!(prom_value(&text, "meshlens_collector_uploads_refused_total{reason=\"inflight_budget\"}"), Some(18.0));
    assert_eq!(prom_value(&text, "meshlens_collector_uploads_refused_total{reason=\"body_timeout\"}"), Some(2.0));
    // The budget is given back: a real export goes through.
    assert_eq!(http_traces(&c, &pairs(1, ("a", "v1"), ("b", "v1"), 2, 200, 1)).await.status(), 200);
}

/// Stalled OTLP/gRPC exports (a message declared 60 MiB, 1 MiB sent, then nothing) on one
/// connection: the server allows 16 at once on it and ends each at the body read timeout with
/// DEADLINE_EXCEEDED or CANCELLED, not holding them for ever; a real export then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_grpc_streams_are_cut_off() {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    let c = collector_with(|cfg| cfg.body_read_timeout = std::time::Duration::from_secs(2)).await;
    let tcp = tokio::net::TcpStream::connect(c.otlp_grpc_addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut holds = Vec::new();
    let mut pending = Vec::new();
    for _ in 0..20 {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<bytes::Bytes>, std::convert::Infallible>>(4);
        let mut first = vec![0u8];
        first.extend_from_slice(&(60u32 << 20).to_be_bytes());
        first.extend(vec![0u8; 1 << 20]);
        tx.send(Ok(Frame::data(first.into()))).await.unwrap();
        holds.push(tx);
        let body = StreamBody::new(Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|f| (f, rx))
        })));
        let req = hyper::Request::post(format!(
            "http://{}/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            c.otlp_grpc_addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
        sender.ready().await.unwrap();
        pending.push(tokio::spawn(sender.send_request(req)));
    }
    let mut statuses = Vec::new();
    for p in pending {
        let resp =
            tokio::time::timeout(std::time::Duration::from_secs(20), p).await.expect("answered in time").unwrap();
        let status = match resp {
            Ok(r) => {
                let head = r.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
                let trailers = r.into_body().collect().await.ok().and_then(|b| b.trailers().cloned());
                head.or_else(|| trailers.and_then(|t| t.get("grpc-status").map(|v| v.to_str().unwrap().to_owned())))
                    .unwrap_or_default()
            }
            Err(e) => format!("reset: {e}"),
        };
        statuses.push(status);
    }
    drop(holds);
    // DEADLINE_EXCEEDED (4) or CANCELLED (1) from the timeout; never OK.
    assert!(statuses.iter().all(|s| s == "4" || s == "1" || s.starts_with("reset")), "{statuses:?}");
    grpc_traces(&c, pairs(1, ("a", "v1"), ("b", "v1"), 2, 200, 1)).await.unwrap();
}

/// The OTLP/gRPC listener is capped like the HTTP ones: past `max_connections` a new connection is
/// closed at once and counted; when one closes, exports connect again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_are_capped() {
    use tokio::io::AsyncReadExt;
    let c = collector_with(|cfg| cfg.max_connections = 2).await;
    let held = [
        tokio::net::TcpStream::connect(c.otlp_grpc_addr).await.unwrap(),
        tokio::net::TcpStream::connect(c.otlp_grpc_addr).await.unwrap(),
    ];
    let mut third = tokio::net::TcpStream::connect(c.otlp_grpc_addr).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), third.read_to_end(&mut out)).await;
    assert!(closed.is_ok() && out.is_empty(), "the third connection is closed at once");
    assert_eq!(c.hub.counters.connections_refused.get(), 1);
    drop(held);
    eventually("an export once a slot is free", 20, || async {
        grpc_traces(&c, pairs(1, ("a", "v1"), ("b", "v1"), 1, 200, 1)).await.ok()
    })
    .await;
}

/// The process's peak memory stays within its stated bound under the attacks that once took it to
/// gigabytes: a 1 MB service name, 20 stalled 50 MiB OTLP/HTTP uploads and 40 stalled gRPC streams
/// each 50 MiB into a declared 60 MiB message. OTLP/HTTP bodies are charged by their declared
/// length, gRPC bodies by the frames that arrive, both against one `--max-inflight-mib`; what the
/// budget does not take is refused as retryable. The peak (VmHWM) stays under the baseline plus the
/// budget plus 96 MiB of slack (connection buffers, HTTP/2 windows, allocator), and the API answers
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_within_the_inflight_budget_under_stalled_uploads() {
    use tokio::io::AsyncWriteExt;
    const BUDGET_MIB: u64 = 128;
    let p = collector_process(&["--in-memory", "--max-inflight-mib", "128", "--body-read-timeout", "30s"]).await;
    let baseline = p.status_bytes("VmRSS");

    // A 1 MB name: refused at the door, not stored.
    let name = "n".repeat(1 << 20);
    let req = traces(vec![(resource("", &name, ""), vec![span(SpanKind::Server, 1, 1, None, 1, 1, vec![], false)])]);
    let r = http()
        .post(format!("http://{}/v1/traces", p.otlp_http))
        .header("content-type", "application/x-protobuf")
        .body(prost::Message::encode_to_vec(&req))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // 20 uploads declaring 50 MiB that send all but the last KiB, then stall.
    let chunk = bytes::Bytes::from(vec![0u8; 1 << 20]);
    let mut held = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..20 {
        let addr = p.otlp_http.clone();
        let chunk = chunk.clone();
        writers.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST /v1/traces HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
                50u64 << 20
            );
            if s.write_all(head.as_bytes()).await.is_err() {
                return s;
            }
            for i in 0..50 {
                let part = if i == 49 { chunk.slice(..chunk.len() - 1024) } else { chunk.clone() };
                if s.write_all(&part).await.is_err() {
                    break;
                }
            }
            s
        }));
    }
    // 40 gRPC streams on 4 connections, each 50 MiB into a declared 60 MiB message.
    let grpc = p.grpc.trim_start_matches("http://").to_owned();
    let mut streams = Vec::new();
    for _ in 0..4 {
        let tcp = tokio::net::TcpStream::connect(&grpc).await.unwrap();
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        for _ in 0..10 {
            let (tx, rx) =
                tokio::sync::mpsc::channel::<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>>(2);
            let body =
                http_body_util::StreamBody::new(Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|f| (f, rx))
                })));
            let req = hyper::Request::post(format!(
                "http://{grpc}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .unwrap();
            let mut sender = sender.clone();
            let chunk = chunk.clone();
            streams.push(tokio::spawn(async move {
                let _ = sender.ready().await;
                let answer = tokio::spawn(sender.send_request(req));
                let mut head = vec![0u8];
                head.extend_from_slice(&(60u32 << 20).to_be_bytes());
                if tx.send(Ok(hyper::body::Frame::data(head.into()))).await.is_ok() {
                    for _ in 0..50 {
                        if tx.send(Ok(hyper::body::Frame::data(chunk.clone()))).await.is_err() {
                            break;
                        }
                    }
                }
                (tx, answer)
            }));
        }
    }
    // Every writer has sent what it could (or was refused); the stalled ones are still held.
    for w in writers {
        held.push(tokio::time::timeout(std::time::Duration::from_secs(60), w).await.expect("writers finish").unwrap());
    }
    let mut answers = Vec::new();
    for s in streams {
        answers.push(tokio::time::timeout(std::time::Duration::from_secs(60), s).await.expect("streams sent").unwrap());
    }
    assert_eq!(get_json(&format!("{}/healthz", p.api)).await.0, 200, "the API answers while uploads stall");
    let peak = p.status_bytes("VmHWM");
    let bound = baseline + (BUDGET_MIB << 20) + (96 << 20);
    eprintln!("peak {} MiB, baseline {} MiB, bound {} MiB", peak >> 20, baseline >> 20, bound >> 20);
    assert!(
        peak < bound,
        "peak RSS {} MiB over the bound {} MiB (baseline {} MiB + budget {BUDGET_MIB} MiB + 96 MiB)",
        peak >> 20,
        bound >> 20,
        baseline >> 20
    );
    let text = http().get(format!("{}/metrics", p.api)).send().await.unwrap().text().await.unwrap();
    let refused =
        prom_value(&text, "meshlens_collector_uploads_refused_total{reason=\"inflight_budget\"}").unwrap_or(0.0);
    assert!(refused >= 1.0, "uploads past the budget were refused and counted: {text}");
    drop(answers);
    drop(held);
}
