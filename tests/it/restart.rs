//! Persistence: the real binary is killed with SIGKILL and restarted on the same data directory; the
//! graph, its window stats and the revisions are back, and revision numbers continue.

use serde_json::Value;
use tokio::process::Command;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

use crate::support::*;

async fn spawn(data_dir: &std::path::Path) -> Proc {
    spawn_ticking(data_dir, "100ms").await
}

async fn spawn_ticking(data_dir: &std::path::Path, tick: &str) -> Proc {
    let dir = data_dir.to_str().unwrap();
    collector_process(&["--tick", tick, "--data-dir", dir]).await
}

async fn export(p: &Proc, req: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest) {
    let mut client =
        opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(
            p.grpc.clone(),
        )
        .await
        .unwrap();
    client.export(req).await.unwrap();
}

async fn graph_with(api: &str, source: &str, target: &str, n: u64) -> Value {
    let url = format!("{api}/api/v1/graph");
    eventually("the edge in a published revision", 20, || async {
        let (status, g) = get_json(&url).await;
        let got = edge(&g, source, target).map(|e| e["stats"]["requests"].as_u64().unwrap_or(0)).unwrap_or(0);
        (status == 200 && got >= n && g["revision"].as_u64().unwrap_or(0) > 0).then_some(g)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_keeps_graph_stats_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = spawn(dir.path()).await;
    export(&first, pairs(1, ("a", "v1"), ("b", "v1"), 7, 503, 12)).await;
    let before = graph_with(&first.api, "default/a/v1", "default/b/v1", 7).await;
    let rev = before["revision"].as_u64().unwrap();
    let (_, revs_before) = get_json(&format!("{}/api/v1/revisions", first.api)).await;
    first.child.kill().await.unwrap(); // SIGKILL: no shutdown path runs

    let second = spawn(dir.path()).await;
    let (status, old) = get_json(&format!("{}/api/v1/graph?at={rev}", second.api)).await;
    assert_eq!(status, 200, "revision {rev} is back: {old}");
    assert_eq!(old["edges"], before["edges"]);
    let (_, revs_after) = get_json(&format!("{}/api/v1/revisions", second.api)).await;
    let n = revs_before["revisions"].as_array().unwrap().len();
    assert_eq!(
        revs_after["revisions"].as_array().unwrap()[..n],
        revs_before["revisions"].as_array().unwrap()[..],
        "the revision log is back"
    );

    // The window stats are back too: the live graph still counts the 7 requests.
    let live = graph_with(&second.api, "default/a/v1", "default/b/v1", 7).await;
    let e = &edge(&live, "default/a/v1", "default/b/v1").unwrap()["stats"];
    assert_eq!((e["requests"].as_u64(), e["errors"].as_u64()), (Some(7), Some(7)));
    assert!((e["latency_ms"]["p50"].as_f64().unwrap() - 12.0).abs() < 0.2);

    // New traffic makes new revisions, numbered after the old ones.
    export(&second, pairs(2, ("b", "v1"), ("c", "v1"), 1, 200, 1)).await;
    let after = graph_with(&second.api, "default/b/v1", "default/c/v1", 1).await;
    assert!(after["revision"].as_u64().unwrap() > rev);
    assert_eq!(edge(&after, "default/a/v1", "default/b/v1").unwrap()["stats"]["requests"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_keeps_nothing() {
    let c = collector().await;
    grpc_traces(&c, pairs(1, ("a", ""), ("b", ""), 1, 200, 1)).await.unwrap();
    wait_edge(&c, "", "default/a", "default/b", 1).await;
    c.shutdown().await.unwrap();
    let c = collector().await;
    let (_, revs) = get_json(&format!("{}/api/v1/revisions", c.api_url())).await;
    assert_eq!(revs["latest"], 0);
    c.shutdown().await.unwrap();
}

/// A store file truncated to nothing is not taken for a new store: the collector refuses to start
/// and says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_store_file_is_refused_not_started_over() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("meshlens.redb"), b"").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshlens"))
        .args(["collector", "--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is empty (0 bytes)") && err.contains("move it away"), "{err}");
    assert_eq!(std::fs::metadata(dir.path().join("meshlens.redb")).unwrap().len(), 0, "left as found");
}

/// Acknowledged means durable: a burst of exports answered 200 and the process killed at once
/// (before any tick stores them) loses nothing; a request whose client half was stored by a tick
/// before the kill and whose server half came after it is still paired after the restart (the warm
/// replay rebuilds the waiting halves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_the_answer_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = spawn_ticking(dir.path(), "1s").await;
    // 100 client halves, then a marker pair; once the marker is in a revision, a tick has stored
    // a checkpoint past the halves (the pipeline applies in order).
    let split = pairs(5, ("x", "v1"), ("y", "v1"), 100, 200, 2);
    let (clients, servers) = (split.resource_spans[0].clone(), split.resource_spans[1].clone());
    export(&first, ExportTraceServiceRequest { resource_spans: vec![clients] }).await;
    export(&first, pairs(6, ("m", "v1"), ("n", "v1"), 1, 200, 1)).await;
    graph_with(&first.api, "default/m/v1", "default/n/v1", 1).await;
    // The server halves and a burst of 3,000 spans in 12 concurrent exports, then SIGKILL as soon as
    // the last answer is in: the next tick is up to a second away.
    let mut burst = vec![ExportTraceServiceRequest { resource_spans: vec![servers] }];
    burst.extend((0..12).map(|i| pairs(100 + i, ("c", "v1"), ("d", "v1"), 125, 200, 3)));
    let grpc = first.grpc.clone();
    let sends = burst.into_iter().map(|req| {
        let grpc = grpc.clone();
        tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(grpc).await.unwrap();
            client.export(req).await.unwrap();
        })
    });
    for s in futures_util::future::join_all(sends).await {
        s.unwrap();
    }
    first.child.kill().await.unwrap();

    let second = spawn_ticking(dir.path(), "100ms").await;
    let g = graph_with(&second.api, "default/c/v1", "default/d/v1", 1500).await;
    let count = |a: &str, b: &str| edge(&g, a, b).map(|e| e["stats"]["requests"].as_u64().unwrap_or(0));
    assert_eq!(count("default/c/v1", "default/d/v1"), Some(1500), "every acknowledged pair is back");
    let g = graph_with(&second.api, "default/x/v1", "default/y/v1", 100).await;
    let count = |a: &str, b: &str| edge(&g, a, b).map(|e| e["stats"]["requests"].as_u64().unwrap_or(0));
    assert_eq!(count("default/x/v1", "default/y/v1"), Some(100), "halves across the checkpoint pair");
    assert_eq!(count("default/m/v1", "default/n/v1"), Some(1), "what the store held is not counted twice");
    let (_, m) = (200, http().get(format!("{}/metrics", second.api)).send().await.unwrap().text().await.unwrap());
    assert!(m.contains("meshlens_collector_wal_segments "), "{m}");
}

/// A flood of junk names fills `--max-nodes`; once they have been idle for the retention they are
/// evicted (counted), a real service gets in, and a restart on the same store does not bring the
/// junk back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_junk_is_evicted_so_the_node_cap_does_not_fill_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let config = |cfg: &mut meshlens_collector::CollectorConfig| {
        cfg.data_dir = Some(dir.path().to_owned());
        cfg.engine.max_nodes = 50;
        cfg.window = std::time::Duration::from_secs(10);
        cfg.engine.idle_retention_secs = 10;
    };
    let c = collector_with(config).await;
    let junk = (0..60u64)
        .map(|i| {
            let name = format!("junk-{i}");
            (resource("", &name, ""), vec![span(SpanKind::Server, 7, i + 1, None, 1, 1, vec![], false)])
        })
        .collect();
    assert_eq!(http_traces(&c, &traces(junk)).await.status(), 200);
    let api = std::sync::Mutex::new(c.api_url());
    let value = |name: &'static str| {
        let url = format!("{}/metrics", api.lock().unwrap());
        async move {
            let text = http().get(&url).send().await.unwrap().text().await.unwrap();
            prom_value(&text, name)
        }
    };
    eventually("the cap to fill", 20, || async {
        (value("meshlens_collector_nodes").await == Some(50.0)).then_some(())
    })
    .await;
    let real = |seed| pairs(seed, ("real", "v1"), ("db", "v1"), 3, 200, 1);
    grpc_traces(&c, real(1)).await.unwrap();
    let dropped = "meshlens_collector_dropped_total{signal=\"spans\",reason=\"cardinality\"}";
    eventually("the real service refused at the cap", 20, || async {
        (value(dropped).await >= Some(11.0 + 6.0)).then_some(())
    })
    .await;
    // Ten idle seconds later the junk is gone.
    eventually("the junk evicted", 30, || async {
        (value("meshlens_collector_evicted_total{kind=\"node\"}").await >= Some(49.0)).then_some(())
    })
    .await;
    grpc_traces(&c, real(2)).await.unwrap();
    wait_edge(&c, "", "default/real/v1", "default/db/v1", 3).await;
    c.shutdown().await.unwrap();

    let c = collector_with(config).await;
    *api.lock().unwrap() = c.api_url();
    let (_, g) = get_json(&format!("{}/api/v1/graph", c.api_url())).await;
    assert!(edge(&g, "default/real/v1", "default/db/v1").is_some(), "the real edge is back: {g}");
    let nodes = value("meshlens_collector_nodes").await.unwrap();
    assert!(nodes <= 3.0, "only user, real and db come back, not the junk: {nodes}");
    c.shutdown().await.unwrap();
}
