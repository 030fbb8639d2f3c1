//! The real OpenTelemetry Python SDK (from PyPI, in the venv `.ci/setup` makes) exports a small shop's
//! traces over OTLP/gRPC and OTLP/HTTP; the graph read back through the API has the right edges,
//! exact request counts, error rates and latencies. And flask, requests and grpcio instrumented with
//! their defaults and metrics on (tests/python/sdk_apps.py), in the old and the new HTTP conventions,
//! give exactly the graph of their spans.

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
        // The requests behind the failing edge, from the SDK's own spans: its newest failed ones
        // (five kept, of ten), each a trace the collector holds, and the slowest beside them.
        let q = format!("{}/api/v1/exemplars?from={}&to={}", c.api_url(), id("checkout", "v2"), id("payments", "v1"));
        let (status, ex) = crate::support::get_json(&q).await;
        assert_eq!(status, 200, "{ex}");
        let failed = ex["failed"].as_array().unwrap();
        assert_eq!(failed.len(), 5, "{ns}: {ex:#}");
        assert!(failed.iter().all(|x| x["failed"] == true && x["kept"] == true), "{ns}: {ex:#}");
        assert_eq!(ex["slowest"].as_array().unwrap().len(), 5, "{ns}: {ex:#}");
        // A root request's edge (user → frontend) has them too.
        let (_, ex) =
            crate::support::get_json(&format!("{}/api/v1/exemplars?node={}", c.api_url(), id("frontend", "v1"))).await;
        assert!(ex["slowest"].as_array().unwrap().iter().any(|x| x["source"] == "user"), "{ns}: {ex:#}");
    }
    c.shutdown().await.unwrap();
}

/// One instrumented Python service (tests/python/sdk_apps.py), listening; its port.
async fn start_app(
    role: &str,
    endpoint: &str,
    namespace: &str,
    new_semconv: bool,
    extra: &[String],
) -> (tokio::process::Child, u16) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/sdk_apps.py");
    let mut cmd = tokio::process::Command::new(tool(
        "MESHLENS_PYTHON",
        "/var/tmp/meshlens-venv/bin/python",
        "the Python venv with the OpenTelemetry SDK",
    ));
    cmd.arg(script).args([role, "--endpoint", endpoint, "--namespace", namespace]).args(extra);
    if new_semconv {
        cmd.env("OTEL_SEMCONV_STABILITY_OPT_IN", "http");
    }
    let mut child = cmd.stdout(std::process::Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let port = listening_port(&mut child).await;
    (child, port)
}

/// flask, requests and grpcio instrumented with their defaults and metrics on, in the old HTTP
/// conventions (Python's default) and the new: exactly the graph of the spans, gRPC codes read
/// as the conventions say, the same Redis named alike under both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instrumented_python_apps_with_metrics_on_old_and_new_semconv() {
    let c = collector().await;
    let endpoint = format!("http://{}", c.otlp_grpc_addr);
    let n = 20u64;
    for (ns, new) in [("old", false), ("new", true)] {
        let (inventory, inv) = start_app("inventory", &endpoint, ns, new, &[]).await;
        let (users, usr) = start_app("users", &endpoint, ns, new, &[]).await;
        let extra = [
            "--inventory".to_owned(),
            format!("http://127.0.0.1:{inv}/items"),
            "--users".to_owned(),
            format!("127.0.0.1:{usr}"),
        ];
        let (web, port) = start_app("web", &endpoint, ns, new, &extra).await;
        for _ in 0..n {
            let r = http().get(format!("http://127.0.0.1:{port}/")).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        for child in [web, users, inventory] {
            stop_app(child).await;
        }
    }
    for ns in ["old", "new"] {
        let id = |app: &str| format!("{ns}/{app}/v1");
        wait_edge(&c, "", &id("web"), "db:cache.local", n).await;
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let (_, g) = get_json(&format!("{}/api/v1/graph", c.api_url())).await;
        let mut got: Vec<(String, String, String, u64, u64, [u64; 3])> = namespace_edges(&g, ns)
            .into_iter()
            .map(|e| {
                let s = &e["stats"];
                let code = |k: &str| s["codes"][k].as_u64().unwrap();
                (
                    e["source"].as_str().unwrap().to_owned(),
                    e["target"].as_str().unwrap().to_owned(),
                    e["protocol"].as_str().unwrap().to_owned(),
                    s["requests"].as_u64().unwrap(),
                    s["errors"].as_u64().unwrap(),
                    [code("2xx"), code("4xx"), code("5xx")],
                )
            })
            .collect();
        got.sort();
        let mut want = vec![
            ("user".to_owned(), id("web"), "http".to_owned(), n, 0, [n, 0, 0]),
            (id("web"), id("inventory"), "http".to_owned(), n, 0, [n, 0, 0]),
            // Every 5th call UNAVAILABLE (a failure), every other 4th NOT_FOUND (an answer).
            (id("web"), id("users"), "grpc".to_owned(), n, 4, [12, 4, 4]),
            (id("web"), "db:cache.local".to_owned(), "database".to_owned(), n, 0, [n, 0, 0]),
        ];
        want.sort();
        assert_eq!(got, want, "{ns}");
        let users = &edge(&g, &id("web"), &id("users")).unwrap()["stats"]["grpc_codes"];
        assert_eq!(users, &serde_json::json!({"OK": 12, "NOT_FOUND": 4, "UNAVAILABLE": 4}), "{ns}");
    }
    c.shutdown().await.unwrap();
}
