//! The real OpenTelemetry Node SDK (from npm, installed by `.ci/setup`) with its defaults on — its
//! own HTTP server and client metrics exported beside the traces — over OTLP/gRPC, OTLP/HTTP
//! protobuf and OTLP/HTTP JSON. Three processes per protocol (tests/node/shop.js): the graph read
//! back is exactly the one the spans describe, metrics adding no edge and no request.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::support::*;

/// One shop service, started and listening; its port.
async fn start(role: &str, protocol: &str, endpoint: &str, namespace: &str, callees: &[String]) -> (Child, u16) {
    let dir = tool("MESHLENS_NODE_SDK_DIR", "/var/tmp/meshlens-node-sdk", "the OpenTelemetry Node SDK");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node/shop.js");
    let mut child = Command::new("node")
        .arg(script)
        .arg(role)
        .arg("0")
        .args(callees)
        .env("NODE_PATH", dir.join("node_modules"))
        .env("OTEL_SERVICE_NAME", role)
        .env("OTEL_RESOURCE_ATTRIBUTES", format!("service.namespace={namespace},service.version=v1"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_METRICS_EXPORTER", "otlp")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_LOGS_EXPORTER", "none")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let port = listening_port(&mut child).await;
    (child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sdk_with_metrics_on_gives_exactly_the_graph_of_its_spans() {
    let c = collector().await;
    let n = 25u64;
    let grpc = format!("http://{}", c.otlp_grpc_addr);
    let http_ep = format!("http://{}", c.otlp_http_addr);
    let runs = [("grpc", grpc.as_str(), "grpc"), ("http/protobuf", &http_ep, "proto"), ("http/json", &http_ep, "json")];
    let client = http();
    for (protocol, endpoint, ns) in runs {
        let (inventory, inv_port) = start("inventory", protocol, endpoint, ns, &[]).await;
        let (orders, ord_port) = start("orders", protocol, endpoint, ns, &[]).await;
        let callees = [format!("http://127.0.0.1:{inv_port}/items"), format!("http://127.0.0.1:{ord_port}/orders")];
        let (frontend, front_port) = start("frontend", protocol, endpoint, ns, &callees).await;
        for _ in 0..n {
            let r = client.get(format!("http://127.0.0.1:{front_port}/")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{ns}");
        }
        // Several metric export intervals pass while the SDKs shut down and flush.
        tokio::time::sleep(Duration::from_millis(700)).await;
        for child in [frontend, orders, inventory] {
            stop_app(child).await;
        }
    }
    for (_, _, ns) in runs {
        let id = |app: &str| format!("{ns}/{app}/v1");
        let g = wait_edge(&c, "", &id("frontend"), "db:pg.shop.local", n).await;
        let g = {
            // Every export has arrived once the last edge has; read the graph once more after the
            // pipeline's next tick, so that a late metric point would show.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let (_, later) = get_json(&format!("{}/api/v1/graph", c.api_url())).await;
            if later.is_null() { g } else { later }
        };
        let mut got: Vec<(String, String, u64, u64, String)> = namespace_edges(&g, ns)
            .into_iter()
            .map(|e| {
                (
                    e["source"].as_str().unwrap().to_owned(),
                    e["target"].as_str().unwrap().to_owned(),
                    e["stats"]["requests"].as_u64().unwrap(),
                    e["stats"]["errors"].as_u64().unwrap(),
                    e["protocol"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        got.sort();
        let mut want = vec![
            ("user".to_owned(), id("frontend"), n, 0, "http".to_owned()),
            (id("frontend"), id("inventory"), n, 0, "http".to_owned()),
            (id("frontend"), id("orders"), n, n / 5, "http".to_owned()),
            (id("frontend"), "db:pg.shop.local".to_owned(), n, 0, "database".to_owned()),
        ];
        want.sort();
        assert_eq!(got, want, "{ns}: the graph of the spans, nothing more");
    }
    let m = http().get(format!("{}/metrics", c.api_url())).send().await.unwrap().text().await.unwrap();
    let ignored = m
        .lines()
        .find(|l| l.starts_with("meshlens_collector_data_points_ignored_total{reason=\"no_mesh_attributes\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(ignored > 0, "the SDKs' metrics arrived and were counted as ignored:\n{m}");
    c.shutdown().await.unwrap();
}
