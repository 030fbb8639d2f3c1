//! The real OpenTelemetry Python SDK (from PyPI, in the venv `.ci/setup` makes) exports a small shop's
//! traces over OTLP/gRPC and OTLP/HTTP; the graph read back through the API has the right edges,
//! exact request counts, error rates and latencies.

use crate::support::*;

async fn run_shop(protocol: &str, endpoint: &str, namespace: &str, requests: u32) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/shop.py");
    let out = tokio::process::Command::new(tool(
        "MESHLENS_PYTHON",
        "/var/tmp/meshlens-venv/bin/python",
        "the Python venv with the OpenTelemetry SDK",
    ))
    .args([
        script,
        "--protocol",
        protocol,
        "--endpoint",
        endpoint,
        "--namespace",
        namespace,
        "--requests",
        &requests.to_string(),
    ])
    .output()
    .await
    .unwrap();
    assert!(out.status.success(), "shop.py failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_over_grpc_and_http() {
    let c = collector().await;
    let n = 50u64;
    run_shop("grpc", &format!("http://{}", c.otlp_grpc_addr), "grpc", n as u32).await;
    run_shop("http", &format!("http://{}", c.otlp_http_addr), "http", n as u32).await;
    for ns in ["grpc", "http"] {
        let id = |app: &str, v: &str| format!("{ns}/{app}/{v}");
        let edges = [
            ("user".to_owned(), id("frontend", "v1")),
            (id("frontend", "v1"), id("checkout", "v2")),
            (id("frontend", "v1"), id("catalog", "v1")),
            (id("checkout", "v2"), id("payments", "v1")),
        ];
        let mut g = serde_json::Value::Null;
        for (s, t) in &edges {
            g = wait_edge(&c, "", s, t, n).await;
        }
        for (s, t) in &edges[..3] {
            let e = edge(&g, s, t).unwrap_or_else(|| panic!("{ns}: edge {s}->{t}"));
            assert_eq!(e["stats"]["requests"], n, "{ns}: {s}->{t}");
            assert_eq!(e["stats"]["error_pct"], 0.0, "{ns}: {s}->{t}");
        }
        let pay = &edge(&g, &id("checkout", "v2"), &id("payments", "v1")).unwrap()["stats"];
        assert_eq!(pay["requests"], n);
        assert_eq!(pay["errors"], n / 5);
        assert_eq!(pay["error_pct"], 20.0);
        assert_eq!(pay["codes"]["5xx"], n / 5);
        let near = |v: &serde_json::Value, ms: f64| (v.as_f64().unwrap() - ms).abs() <= ms * 0.01;
        assert!(near(&pay["latency_ms"]["p50"], 20.0), "{ns}: {}", pay["latency_ms"]);
        assert!(near(&pay["latency_ms"]["p99"], 20.0), "{ns}: {}", pay["latency_ms"]);
        let catalog = &edge(&g, &id("frontend", "v1"), &id("catalog", "v1")).unwrap()["stats"];
        assert!(near(&catalog["latency_ms"]["p95"], 8.0), "{ns}: {}", catalog["latency_ms"]);
        let front = node(&g, &id("frontend", "v1")).unwrap();
        assert!(near(&front["inbound"]["latency_ms"]["p50"], 80.0), "{ns}: {}", front["inbound"]);
        assert_eq!(front["outbound"]["requests"], 2 * n);
        assert_eq!(node(&g, &id("payments", "v1")).unwrap()["health"], "failing");
    }
    c.shutdown().await.unwrap();
}
