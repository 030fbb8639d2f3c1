//! A real Prometheus server (Debian's package, installed by `.ci/setup`) scrapes the collector's
//! `/metrics`, and a PromQL query returns the servicegraph series of a known edge.

use std::process::Stdio;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_service_graph() {
    let c = collector().await;
    grpc_traces(&c, pairs(1, ("productpage", "v1"), ("reviews", "v3"), 9, 200, 5)).await.unwrap();
    grpc_traces(&c, pairs(2, ("productpage", "v1"), ("reviews", "v3"), 3, 500, 5)).await.unwrap();
    wait_edge(&c, "", "default/productpage/v1", "default/reviews/v3", 12).await;

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
    c.shutdown().await.unwrap();
}
