//! The `meshlens` binary's text outputs against a live collector, and its errors.

use std::process::Output;

use crate::support::*;

/// Runs the binary to its end.
pub(crate) async fn meshlens(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_meshlens")).args(args).output().await.unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_and_graph_print_what_the_api_holds() {
    let c = collector().await;
    grpc_traces(&c, pairs(1, ("productpage", "v1"), ("reviews", "v2"), 20, 200, 25)).await.unwrap();
    wait_edge(&c, "", "default/productpage/v1", "default/reviews/v2", 20).await;
    let url = c.api_url();

    let o = meshlens(&["stat", "--collector", &url]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = stdout(&o);
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("NAMESPACE   APP           VERSION   SUCCESS"), "{text}");
    let reviews = text.lines().find(|l| l.contains("reviews")).unwrap();
    assert!(reviews.contains("100.00%") && reviews.contains("25ms"), "{reviews}");

    let o = meshlens(&["stat", "--collector", &url, "-o", "wide"]).await;
    assert!(stdout(&o).lines().next().unwrap().contains("5XX"));
    let o = meshlens(&["stat", "--collector", &url, "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["workloads"].as_array().unwrap().len(), 2);

    let o = meshlens(&["graph", "--collector", &url, "-o", "dot"]).await;
    assert!(stdout(&o).contains("\"default/productpage/v1\" -> \"default/reviews/v2\""), "{}", stdout(&o));
    let o = meshlens(&["graph", "--collector", &url, "-o", "mermaid", "--view", "app"]).await;
    assert!(stdout(&o).starts_with("flowchart LR"));
    assert!(stdout(&o).contains("default/reviews"));
    let o = meshlens(&["graph", "--collector", &url, "-o", "json"]).await;
    let g: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(edge(&g, "default/productpage/v1", "default/reviews/v2").unwrap()["stats"]["requests"], 20);
    let o = meshlens(&["graph", "--collector", &url]).await;
    assert!(stdout(&o).starts_with("SOURCE"));

    // A bad window is the API's 400, reported on one line with exit code 1.
    let o = meshlens(&["stat", "--collector", &url, "--window", "5s"]).await;
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("parameter window") && err.trim().lines().count() == 1, "{err}");
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_with_the_right_exit_code() {
    // Nothing listens on a port we just released.
    let url = format!("http://127.0.0.1:{}", free_port());
    let o = meshlens(&["stat", "--collector", &url]).await;
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach the collector") && err.contains(&url), "{err}");

    let o = meshlens(&["graph", "-o", "pdf"]).await;
    assert_eq!(o.status.code(), Some(2), "usage errors exit 2");
    let o = meshlens(&["collector", "--in-memory", "--http", "0.0.0.0:0"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("beyond loopback the collector needs a token"));
    // A token of spaces is no token: refused, and it does not open 0.0.0.0.
    let o = meshlens(&["collector", "--in-memory", "--token", "   ", "--http", "0.0.0.0:0"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("invalid setting token"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = meshlens(&["collector", "--in-memory", "--window", "soon"]).await;
    assert_eq!(o.status.code(), Some(2));
    // Stores: what is wrong with a URL, a label or a dialect is named, exit 2.
    for (args, needle) in [
        (
            &["collector", "--in-memory", "--remote-write", "https://vm:8428/api/v1/write"][..],
            "https is not supported yet",
        ),
        (
            &[
                "collector",
                "--in-memory",
                "--remote-write",
                "http://vm/api/v1/write",
                "--remote-write-label",
                "__name__=x",
            ][..],
            "a label name is",
        ),
        (
            &[
                "collector",
                "--in-memory",
                "--remote-write",
                "http://vm/api/v1/write",
                "--remote-write-label",
                "cluster",
            ][..],
            "write KEY=VALUE",
        ),
        (&["graph", "--prometheus", "prometheus:9090"][..], "give an http://HOST:PORT URL"),
        (&["stat", "--prometheus", "http://p:9090", "--prometheus-dialect", "kiali"][..], "unknown dialect \"kiali\""),
    ] {
        let o = meshlens(args).await;
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle) && err.trim().lines().count() == 1, "{args:?}: {err}");
    }
    let o = meshlens(&["--help"]).await;
    assert!(stdout(&o).contains("collector") && stdout(&o).contains("stat"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_bad_config_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(
        &path,
        "workload: {app: a}\ninbound: {listen: '127.0.0.1:0', app: '127.0.0.1:9'}\nadmin: {listen: '127.0.0.1:0'}\n\
         services: {b: {versions: {v1: ['127.0.0.1:9']}}}\npolicy: {services: {b: {retries: {attempts: 2, per_try_timeout: 5s}, timeout: 1s}}}\n",
    )
    .unwrap();
    let o = meshlens(&["agent", "--config", path.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("agent.yaml") && err.contains("policy.services.b.retries.per_try_timeout"), "{err}");
}

/// `meshlens load` against a backend that counts what it received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_what_the_backend_received() {
    let backend = crate::backend::Backend::start().await;
    let url = format!("http://{}/ok", backend.addr);
    let o = meshlens(&["load", &url, "--rate", "200", "--duration", "2s", "-c", "4", "-o", "json"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["responses"], 400, "{r}");
    assert_eq!(r["responses"].as_u64(), Some(backend.hits()));
    assert_eq!((r["errors"].as_u64(), r["unsent"].as_u64()), (Some(0), Some(0)));
    assert_eq!(r["codes"]["200"], 400);
    let achieved = r["achieved_rps"].as_f64().unwrap();
    assert!((150.0..=205.0).contains(&achieved), "{achieved}");
    assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 0.0);

    // A stalled server shows in the corrected latency, not only in the service time.
    let slow = format!("http://{}/sleep/300", backend.addr);
    let o = meshlens(&["load", &slow, "--rate", "10", "--duration", "1s", "-c", "1", "-o", "json"]).await;
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (corrected, service) =
        (r["latency_ms"]["p99"].as_f64().unwrap(), r["service_time_ms"]["p99"].as_f64().unwrap());
    assert!(corrected > 2.0 * service, "one connection, 300 ms each, 10 due a second: {corrected} vs {service}");

    let o = meshlens(&["load", "ftp://x/", "--rate", "1"]).await;
    assert_eq!(o.status.code(), Some(2));
}

fn api_port(stdout: &str) -> u16 {
    let line = stdout.lines().find(|l| l.contains("API and UI")).unwrap_or_else(|| panic!("{stdout}"));
    line.rsplit(':').next().unwrap().trim().parse().unwrap()
}

fn agent_ports(stdout: &str) -> Vec<u16> {
    stdout
        .lines()
        .filter(|l| l.contains(" agent http://"))
        .map(|l| l.split("agent http://127.0.0.1:").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

fn free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_for_its_duration_and_leaves_nothing_bound() {
    let any = "127.0.0.1:0";
    let o =
        meshlens(&["demo", "--headless", "--duration", "2s", "--http", any, "--otlp-grpc", any, "--otlp-http", any])
            .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = stdout(&o);
    assert_eq!(agent_ports(&text).len(), 6, "{text}");
    assert!(text.contains("meshlens stat --collector http://127.0.0.1:"), "{text}");
    assert!(text.lines().last().unwrap().starts_with("sent "), "{text}");
    assert!(free(api_port(&text)) && agent_ports(&text).into_iter().all(free));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_stops_cleanly_on_ctrl_c() {
    use tokio::io::AsyncBufReadExt;
    let any = "127.0.0.1:0";
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshlens"))
        .args(["demo", "--headless", "--http", any, "--otlp-grpc", any, "--otlp-http", any])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut text = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        text.push_str(&line);
        text.push('\n');
        if line.contains("Ctrl-C stops it") {
            break;
        }
    }
    // Stopped mid-traffic: once its graph has an edge, the demo's load is running.
    let graph = format!("http://127.0.0.1:{}/api/v1/graph", api_port(&text));
    crate::support::eventually("the demo's traffic on its graph", 20, || async {
        let (_, g) = crate::support::get_json(&graph).await;
        (!g["edges"].as_array()?.is_empty()).then_some(())
    })
    .await;
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(15), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    while let Some(line) = lines.next_line().await.unwrap() {
        text.push_str(&line);
        text.push('\n');
    }
    assert!(text.contains("sent "), "{text}");
    assert!(free(api_port(&text)) && agent_ports(&text).into_iter().all(free));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_init_and_issue_write_a_mesh_identity() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let o = meshlens(&["ca", "init", "--dir", d, "--trust-domain", "example.org"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = meshlens(&["ca", "issue", "--dir", d, "--workload", "shop/reviews/v2", "--ttl", "1h"]).await;
    assert!(stdout(&o).starts_with("spiffe://example.org/ns/shop/sa/reviews"), "{}", stdout(&o));
    assert!(dir.path().join("shop-reviews-v2.pem").exists() && dir.path().join("shop-reviews-v2.key").exists());
    let o = meshlens(&["ca", "init", "--dir", d]).await;
    assert_eq!(o.status.code(), Some(2), "a CA is not overwritten");
    let o = meshlens(&["ca", "issue", "--dir", d, "--workload", "reviews"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("expected NS/APP/VERSION"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_sends_the_token() {
    let c = collector_with(|cfg| cfg.token = Some("s3cret".into())).await;
    let url = c.api_url();
    let o = meshlens(&["stat", "--collector", &url]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("401"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = meshlens(&["stat", "--collector", &url, "--token", "s3cret"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_shows_what_a_retry_budget_does() {
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sim/retry-storm.yaml");
    let budget = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sim/budget.yaml");
    let run = |args: Vec<&'static str>| async move {
        let o = meshlens(&args).await;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let ratings = r["rows"].as_array().unwrap().iter().find(|row| row["name"] == "ratings v1").unwrap().clone();
        (r["rows"][0]["success_pct"]["median"].as_f64().unwrap(), ratings["offered_rps"]["median"].as_f64().unwrap())
    };
    let (storm_ok, storm_load) = run(vec!["sim", scenario, "--seeds", "2", "--duration", "60s", "-o", "json"]).await;
    let (budget_ok, budget_load) =
        run(vec!["sim", scenario, "--seeds", "2", "--duration", "60s", "--policy", budget, "-o", "json"]).await;
    assert!(storm_load > 2.0 * budget_load, "retries amplify load without a budget: {storm_load} vs {budget_load}");
    assert!(budget_ok > storm_ok + 20.0, "the budget keeps more requests succeeding: {budget_ok} vs {storm_ok}");
    let o = meshlens(&["sim", budget]).await;
    assert_eq!(o.status.code(), Some(2), "a policy file alone is not a scenario");
    assert!(String::from_utf8_lossy(&o.stderr).contains("budget.yaml"));
}

/// `GET /api/v1/profile` and `meshlens sim --from`: the simulator starts from what the mesh does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_replays_a_running_collectors_profile() {
    let c = collector().await;
    let (mut front, mut back) = (Vec::new(), Vec::new());
    // catalog fails one request in four, and frontend passes each failure on to its user.
    for i in 0..40u64 {
        let (root, call, served) = (i * 3 + 1, i * 3 + 2, i * 3 + 3);
        let failed = i % 4 == 0;
        let code = vec![kv_int("http.response.status_code", if failed { 500 } else { 200 })];
        front.push(span(SpanKind::Server, 9, root, None, 1, 30_000, code.clone(), failed));
        front.push(span(SpanKind::Client, 9, call, Some(root), 1, 12_000, code.clone(), failed));
        back.push(span(SpanKind::Server, 9, served, Some(call), 1, 10_000, code, failed));
    }
    grpc_traces(&c, traces(vec![(resource("", "frontend", "v1"), front), (resource("", "catalog", "v1"), back)]))
        .await
        .unwrap();
    wait_edge(&c, "", "default/frontend/v1", "default/catalog/v1", 40).await;
    let (status, p) = get_json(&format!("{}/api/v1/profile", c.api_url())).await;
    assert_eq!(status, 200, "{p}");
    let front = p["versions"].as_array().unwrap().iter().find(|v| v["app"] == "frontend").unwrap();
    assert!(front["user_rps"].as_f64().unwrap() > 0.0, "{p}");
    let edge = &p["edges"][0];
    assert_eq!(
        (edge["source"].as_str(), edge["target"].as_str()),
        (Some("default/frontend/v1"), Some("default/catalog/v1"))
    );
    assert!((edge["calls_per_request"].as_f64().unwrap() - 1.0).abs() < 0.01, "{edge}");
    // Both fail a quarter of their requests; only catalog's failures are its own.
    let catalog = p["versions"].as_array().unwrap().iter().find(|v| v["app"] == "catalog").unwrap();
    assert!((front["error_pct"].as_f64().unwrap() - 25.0).abs() < 0.5, "{p}");
    assert!(front["own_error_pct"].as_f64().unwrap() < 0.5, "frontend's failures are catalog's: {p}");
    assert!((catalog["own_error_pct"].as_f64().unwrap() - 25.0).abs() < 0.5, "{p}");

    let o = meshlens(&["sim", "--from", &c.api_url(), "--seeds", "1", "--duration", "20s", "-o", "json"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = r["rows"].as_array().unwrap();
    let rate =
        |name: &str| rows.iter().find(|row| row["name"] == name).unwrap()["offered_rps"]["median"].as_f64().unwrap();
    let users = rate("users");
    assert!(users > 0.0 && (rate("default/catalog v1") - users).abs() < 0.2 * users, "{r}");
    // Replayed, the users see catalog's quarter once, not compounded by frontend's own copy of it
    // (which would be 1 − 0.75² ≈ 44%).
    let users_ok = rows.iter().find(|row| row["name"] == "users").unwrap()["success_pct"]["median"].as_f64().unwrap();
    assert!((users_ok - 75.0).abs() < 8.0, "{r}");
}

/// A service named with escape sequences and a newline (anyone who can send a span names it):
/// `stat`, `graph -o table`, DOT and Mermaid print it escaped, and no control byte reaches stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_escape_sequences_print_escaped() {
    let c = collector().await;
    let evil = "evil\u{1b}[2J\u{1b}]52;c;aGk=\u{7}\nfake   row";
    grpc_traces(&c, pairs(1, ("web", "v1"), (evil, "v1"), 5, 200, 5)).await.unwrap();
    let url = c.api_url();
    eventually("the edge", 20, || async {
        let (_, g) = get_json(&format!("{url}/api/v1/graph")).await;
        (g["edges"].as_array().map_or(0, Vec::len) == 1).then_some(())
    })
    .await;
    for args in [
        vec!["stat", "--collector", &url],
        vec!["graph", "--collector", &url, "-o", "table"],
        vec!["graph", "--collector", &url, "-o", "dot"],
        vec!["graph", "--collector", &url, "-o", "mermaid"],
    ] {
        let o = meshlens(&args).await;
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        let text = stdout(&o);
        assert!(!text.bytes().any(|b| b == 0x1b || b == 0x07), "{args:?} printed a control byte: {text:?}");
        assert!(!text.lines().any(|l| l.starts_with("fake")), "{args:?}: the newline made a row: {text}");
        assert!(
            text.contains("\\x1b[2J") || text.contains("\\\\x1b[2J") || text.contains("\\x1b#91;2J"),
            "{args:?}: {text}"
        );
        if args.last() == Some(&"mermaid") {
            assert!(!text.contains("%%") && text.lines().all(|l| l.matches('"').count() % 2 == 0), "{text}");
        }
    }
    let o = meshlens(&["stat", "--collector", &url]).await;
    assert_eq!(stdout(&o).lines().count(), 3, "a header and two rows: {}", stdout(&o));
}
