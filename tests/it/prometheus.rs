//! A real Prometheus server (Debian's package, installed by `.ci/setup`) scrapes the collector's
//! `/metrics`, and the queries Tempo's and Grafana's service-graph documentation use return, for
//! every kind of edge (between workloads, to a database, over a queue, to and from virtual nodes),
//! the figures the API gives.

use std::process::Stdio;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_service_graph() {
    let c = collector_with(|cfg| cfg.engine.pairing_ttl_secs = 1.0).await;
    grpc_traces(&c, pairs(1, ("productpage", "v1"), ("reviews", "v3"), 9, 200, 5)).await.unwrap();
    grpc_traces(&c, pairs(2, ("productpage", "v1"), ("reviews", "v3"), 3, 500, 5)).await.unwrap();
    // A root span (from user), a database call, a producer and its consumer, and a call to a host
    // with no spans of its own.
    let mut front =
        vec![span(SpanKind::Server, 3, 30, None, 1, 40_000, vec![kv_int("http.response.status_code", 200)], false)];
    front.push(span(
        SpanKind::Client,
        3,
        31,
        Some(30),
        1,
        3_000,
        vec![kv("db.system.name", "postgresql"), kv("server.address", "pg.local")],
        false,
    ));
    front.push(span(
        SpanKind::Producer,
        3,
        32,
        Some(30),
        1,
        1_000,
        vec![kv("messaging.system", "kafka"), kv("messaging.destination.name", "orders")],
        false,
    ));
    front.push(span(
        SpanKind::Client,
        3,
        33,
        Some(30),
        1,
        9_000,
        vec![kv("url.full", "https://api.stripe.com/v1/charges")],
        false,
    ));
    let grpc = |code| vec![kv("rpc.system", "grpc"), kv_int("rpc.grpc.status_code", code)];
    front.push(span(SpanKind::Client, 3, 35, Some(30), 1, 2_000, grpc(14), true));
    // Consumed 2 ms after the producer span ended.
    let back =
        vec![span(SpanKind::Consumer, 3, 34, Some(32), 3_000_001, 2_000, vec![kv("messaging.system", "kafka")], false)];
    let users = vec![span(SpanKind::Server, 3, 36, Some(35), 1, 1_500, grpc(14), true)];
    grpc_traces(&c, traces(vec![(resource("", "users", "v1"), users)])).await.unwrap();
    grpc_traces(&c, traces(vec![(resource("", "frontend", "v1"), front), (resource("", "billing", "v1"), back)]))
        .await
        .unwrap();
    wait_edge(&c, "", "default/productpage/v1", "default/reviews/v3", 12).await;
    let g = wait_edge(&c, "", "default/frontend/v1", "ext:api.stripe.com", 1).await;
    for (s, t) in [
        ("user", "default/frontend/v1"),
        ("default/frontend/v1", "db:pg.local"),
        ("default/frontend/v1", "default/billing/v1"),
    ] {
        assert_eq!(edge(&g, s, t).unwrap_or_else(|| panic!("{s}->{t}"))["stats"]["requests"], 1);
    }

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: meshlens\n    static_configs:\n      - targets: ['{}']\n", c.http_addr),
    )
    .unwrap();
    let port = free_port();
    let _prom = tokio::process::Command::new(tool("MESHLENS_PROMETHEUS", "/usr/bin/prometheus", "Debian's prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--enable-feature=exemplar-storage")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let query =
        "traces_service_graph_request_total{client=\"productpage\",server=\"reviews\",server_service_version=\"v3\"}";
    let url = format!("http://127.0.0.1:{port}/api/v1/query");
    let result = eventually("Prometheus to scrape the edge", 60, || async {
        let r = http().get(&url).query(&[("query", query)]).send().await.ok()?;
        let body: serde_json::Value = r.json().await.ok()?;
        let first = body["data"]["result"].as_array()?.first()?.clone();
        Some(first)
    })
    .await;
    assert_eq!(result["metric"]["client_service_version"], "v1");
    assert_eq!(result["metric"]["job"], "meshlens");
    assert_eq!(result["value"][1], "12");
    let failed = http()
        .get(&url)
        .query(&[("query", "sum(traces_service_graph_request_failed_total{server=\"reviews\"})")])
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(failed["data"]["result"][0]["value"][1], "3");

    // Tempo's documented service-graph queries (and Grafana's node graph, which runs them): every
    // edge kind is there, labelled as Tempo labels it, with a server-side histogram.
    let q = |query: &'static str| {
        let url = url.clone();
        async move {
            let body: serde_json::Value =
                http().get(&url).query(&[("query", query)]).send().await.unwrap().json().await.unwrap();
            body["data"]["result"].as_array().cloned().unwrap_or_default()
        }
    };
    let rows = q("sum by (client, server, connection_type) (traces_service_graph_request_total)").await;
    let mut got: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| {
            let l = |k: &str| r["metric"][k].as_str().unwrap_or_default().to_owned();
            (l("client"), l("server"), l("connection_type"), r["value"][1].as_str().unwrap().to_owned())
        })
        .collect();
    got.sort();
    let want = [
        ("frontend", "api.stripe.com", "virtual_node", "1"),
        ("frontend", "billing", "messaging_system", "1"),
        ("frontend", "pg.local", "database", "1"),
        ("frontend", "users", "", "1"),
        ("productpage", "reviews", "", "12"),
        ("user", "frontend", "virtual_node", "1"),
    ];
    let want: Vec<(String, String, String, String)> =
        want.iter().map(|(a, b, c, d)| ((*a).into(), (*b).into(), (*c).into(), (*d).into())).collect();
    assert_eq!(got, want);
    let p50 =
        q("histogram_quantile(0.5, sum by (le, client, server) (traces_service_graph_request_server_seconds_bucket))")
            .await;
    let servers: std::collections::BTreeSet<&str> = p50.iter().filter_map(|r| r["metric"]["server"].as_str()).collect();
    for s in ["reviews", "pg.local", "billing", "frontend"] {
        assert!(servers.contains(s), "server-side latency of {s}: {p50:?}");
    }
    // gRPC codes, labelled as Istio's standard metrics label them.
    let unavailable = q("sum by (client, server) (meshlens_grpc_requests_total{grpc_response_status=\"14\"})").await;
    assert_eq!(unavailable.len(), 1, "{unavailable:?}");
    assert_eq!(
        (unavailable[0]["metric"]["server"].as_str(), unavailable[0]["value"][1].as_str()),
        (Some("users"), Some("1"))
    );
    // Scraped as OpenMetrics, the buckets carry exemplars: the trace behind a latency.
    let exemplars = eventually("an exemplar of the reviews edge", 30, || async {
        let r = http()
            .get(format!("http://127.0.0.1:{port}/api/v1/query_exemplars"))
            .query(&[
                ("query", "traces_service_graph_request_server_seconds_bucket{server=\"reviews\"}"),
                ("start", "0"),
                ("end", "4102444800"),
            ])
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = r.json().await.ok()?;
        let all = body["data"].as_array()?.iter().flat_map(|s| s["exemplars"].as_array().cloned().unwrap_or_default());
        let ids: Vec<String> = all.filter_map(|x| x["labels"]["trace_id"].as_str().map(str::to_owned)).collect();
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    let ours = ["00000000000000000000000000000001", "00000000000000000000000000000002"];
    assert!(exemplars.iter().all(|id| ours.contains(&id.as_str())), "{exemplars:?}");
    let queue = q("sum by (client, server) (traces_service_graph_request_messaging_system_seconds_sum)").await;
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(queue[0]["metric"]["server"], "billing");
    assert!((queue[0]["value"][1].as_str().unwrap().parse::<f64>().unwrap() - 0.002).abs() < 1e-6, "{queue:?}");
    // Grafana's node stats: requests served per node.
    let served = q("sum by (server) (traces_service_graph_request_server_seconds_count)").await;
    assert!(served.iter().any(|r| r["metric"]["server"] == "pg.local" && r["value"][1] == "1"), "{served:?}");
    c.shutdown().await.unwrap();
}
