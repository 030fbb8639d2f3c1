//! The web view in a real browser: Debian's chromium driven by playwright-core (both installed by
//! `.ci/setup`) against a collector fed by test traffic. The browser script is tests/web/e2e.mjs;
//! this test feeds the collector, answers the script's "WAITING update" with new traffic, and
//! prints where the screenshot went.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topology_shows_the_graph_follows_it_live_and_renders_names_as_text() {
    let node = tool("MESHLENS_NODE", "/usr/bin/node", "Node.js");
    let modules = tool("MESHLENS_NODE_MODULES", "/var/tmp/meshlens-node/node_modules", "playwright-core (npm)");
    tool("MESHLENS_CHROMIUM", "/usr/bin/chromium", "chromium (Debian)");
    let c = collector().await;
    // frontend→catalog over mTLS (its label gets the lock).
    let mut catalog = pairs(1, ("frontend", "v1"), ("catalog", "v1"), 30, 200, 8);
    for s in catalog.resource_spans.iter_mut().flat_map(|r| r.scope_spans.iter_mut().flat_map(|s| s.spans.iter_mut())) {
        s.attributes.push(kv_bool("meshlens.mtls", true));
    }
    grpc_traces(&c, catalog).await.unwrap();
    grpc_traces(&c, pairs(2, ("frontend", "v1"), ("payments", "v1"), 20, 500, 20)).await.unwrap();
    grpc_traces(&c, pairs(3, ("frontend", "v1"), ("<img src=x onerror=alert(1)>", "v1"), 5, 200, 3)).await.unwrap();
    wait_edge(&c, "", "default/frontend/v1", "default/payments/v1", 20).await;
    // Real agents with a declared route, for the panel's routes: shop/a → shop/b, 4 of 5 on the
    // route succeed, two requests fall to [default].
    let hop = crate::backend::Hop::start(
        &c,
        "b:\n  routes:\n    - matches: [{method: GET, path: {type: Template, value: '/status/{code}'}}]",
    )
    .await;
    for path in ["/status/200", "/status/200", "/status/200", "/status/200", "/status/503", "/ok", "/ok"] {
        hop.app.get("b", path).await;
    }
    wait_edge(&c, "", "shop/a/v1", "shop/b/v1", 7).await;

    let shot = std::env::temp_dir().join(format!("meshlens-web-{}.png", std::process::id()));
    // ES modules find packages from the script's own folder (NODE_PATH is not read for imports), so
    // the script runs beside the installed node_modules.
    let script = modules.parent().unwrap().join("e2e.mjs");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web/e2e.mjs"), &script).unwrap();
    let mut child = tokio::process::Command::new(node)
        .arg(&script)
        .arg(format!("{}/", c.api_url()))
        .arg(&shot)
        .current_dir(modules.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    let result = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            eprintln!("e2e: {line}");
            if line == "WAITING update" {
                grpc_traces(&c, pairs(4, ("frontend", "v1"), ("shipping", "v1"), 5, 200, 4)).await.unwrap();
                stdin.write_all(b"go\n").await.unwrap();
            }
            said.push(line);
        }
        child.wait().await.unwrap()
    })
    .await
    .expect("the browser test finished in time");
    assert!(result.success() && said.last().map(String::as_str) == Some("OK"), "{said:#?}");
    println!("screenshot: {}", shot.display());
    hop.shutdown().await;
}

/// A 10-namespace, 300-service mesh (the model's synthetic generator, its spans through OTLP):
/// the browser opens it as namespaces, expands, focuses and collapses, and draws every service
/// legibly and pans over it (tests/web/large.mjs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_mesh_opens_as_namespaces_expands_and_pans() {
    use meshlens_model::NodeKind;
    let node = tool("MESHLENS_NODE", "/usr/bin/node", "Node.js");
    let modules = tool("MESHLENS_NODE_MODULES", "/var/tmp/meshlens-node/node_modules", "playwright-core (npm)");
    tool("MESHLENS_CHROMIUM", "/usr/bin/chromium", "chromium (Debian)");
    let c = collector().await;
    let g = meshlens_model::synth::mesh(meshlens_model::synth::Spec::new(10, 30, 1));
    let workload = |id: &str| g.node(id).filter(|n| n.kind == NodeKind::Workload);
    let mut batches: std::collections::BTreeMap<String, (opentelemetry_proto::tonic::resource::v1::Resource, Vec<_>)> =
        std::collections::BTreeMap::new();
    let mut id = 1u64;
    for e in &g.edges {
        let (Some(s), Some(t)) = (workload(&e.source), workload(&e.target)) else { continue };
        let res = |n: &meshlens_model::Node| resource(&n.namespace, &n.app, n.version.as_deref().unwrap_or(""));
        let client = span(SpanKind::Client, 7, id, Some(1), 1, 2_000, vec![], false);
        let server = span(
            SpanKind::Server,
            7,
            id + 1,
            Some(id),
            1,
            1_000,
            vec![kv_int("http.response.status_code", 200)],
            false,
        );
        id += 2;
        batches.entry(s.id.clone()).or_insert_with(|| (res(s), Vec::new())).1.push(client);
        batches.entry(t.id.clone()).or_insert_with(|| (res(t), Vec::new())).1.push(server);
    }
    grpc_traces(&c, traces(batches.into_values().collect())).await.unwrap();
    let url = format!("{}/api/v1/graph", c.api_url());
    eventually("the large mesh in the graph", 30, || async {
        let (_, g) = get_json(&url).await;
        (g["nodes"].as_array().map_or(0, Vec::len) >= 300).then_some(())
    })
    .await;
    let shot = std::env::temp_dir().join(format!("meshlens-web-large-{}.png", std::process::id()));
    let script = modules.parent().unwrap().join("large.mjs");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web/large.mjs"), &script).unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new(node)
            .arg(&script)
            .arg(format!("{}/", c.api_url()))
            .arg(&shot)
            .current_dir(modules.parent().unwrap())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser test finished in time")
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.trim_end().ends_with("OK"),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("screenshot: {}", shot.display());
}
