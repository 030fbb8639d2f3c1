//! Per-route metrics through real agents: a route table of three routes (Gateway API matches on
//! method, path template, prefix and header) gets exact per-route counts and retries, over the API
//! and with `meshlens routes`, and each route runs under its own retry policy.

use serde_json::Value;

use crate::backend::{App, Backend, agent, agent_yaml, callee};
use crate::cli::meshlens;
use crate::support::{eventually, get_json};

const POLICY: &str = "\
b:
  retries: {attempts: 1, retry_on: [5xx], backoff: {base: 1ms, max: 1ms}, budget: {ratio: 1.0, min_per_second: 100}}
  routes:
    - matches: [{method: GET, path: {type: Template, value: '/status/{code}'}}]
      retries: {attempts: 2, retry_on: [5xx], backoff: {base: 1ms, max: 1ms}, budget: {ratio: 1.0, min_per_second: 100}}
    - name: upload
      matches: [{method: POST, path: {type: Exact, value: /upload}}]
      retries: {attempts: 0}
    - name: flaky
      matches: [{path: {type: PathPrefix, value: /flaky}, headers: [{name: X-Test, value: 'yes'}]}]
      retries: {attempts: 3, retry_on: [5xx], backoff: {base: 1ms, max: 1ms}, budget: {ratio: 1.0, min_per_second: 100}}";

fn row<'a>(body: &'a Value, route: &str) -> &'a Value {
    body["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == route)
        .unwrap_or_else(|| panic!("{route}: {body:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_routes_get_exact_counts_and_their_own_retries() {
    let c = crate::support::collector().await;
    let otlp = format!("http://{}", c.otlp_grpc_addr);
    let backend = Backend::start().await;
    let b = callee("v1", &backend, Some(&otlp)).await;
    let services = format!("b:\n  versions:\n    v1: ['{}']", b.inbound);
    let a = agent(&agent_yaml("shop/a/v1", "127.0.0.1:9".parse().unwrap(), &services, POLICY, Some(&otlp))).await;
    let app = App::via(&a);
    // GET /status/{code}: 5 pass; 2 fail after 2 retries each (the route's policy).
    for _ in 0..5 {
        assert_eq!(app.get("b", "/status/200").await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(app.get("b", "/status/500?why=test").await.0, 500);
    }
    // upload: 3 (the route turns retries off).
    for _ in 0..3 {
        let r = app.request(reqwest::Method::POST, "b", "/upload").body("abc").send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // flaky: 503, 503, then 200 — one request, two retries.
    let r = app.request(reqwest::Method::GET, "b", "/flaky/2").header("x-test", "yes").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // [default]: no route fits (a POST to /status/..., and /ok); the service's one retry applies.
    let r = app.request(reqwest::Method::POST, "b", "/status/500").send().await.unwrap();
    assert_eq!(r.status(), 500);
    for _ in 0..4 {
        assert_eq!(app.get("b", "/ok").await.0, 200);
    }
    // 7 + 2·2 + 3 + 3 + 2 + 4 attempts reached the app.
    assert_eq!(backend.hits(), 23);

    let api = c.api_url();
    let body: Value = eventually("every route's requests", 20, || async {
        let (status, body) = get_json(&format!("{api}/api/v1/routes?service=b&window=1m")).await;
        let total: u64 = body["routes"].as_array()?.iter().map(|r| r["stats"]["requests"].as_u64().unwrap_or(0)).sum();
        let retries: u64 = body["routes"].as_array()?.iter().map(|r| r["stats"]["retries"].as_u64().unwrap_or(0)).sum();
        (status == 200 && total == 16 && retries == 7).then_some(body)
    })
    .await;
    assert_eq!(body["service"], "shop/b");
    let names: Vec<&str> = body["routes"].as_array().unwrap().iter().map(|r| r["route"].as_str().unwrap()).collect();
    assert_eq!(names, ["GET /status/{code}", "flaky", "upload", "[default]"]);
    let expect = [
        // route, requests, errors, retries, effective success, actual success
        ("GET /status/{code}", 7, 2, 4, 71.43, 45.45),
        ("upload", 3, 0, 0, 100.0, 100.0),
        ("flaky", 1, 0, 2, 100.0, 33.33),
        ("[default]", 5, 1, 1, 80.0, 66.67),
    ];
    for (route, requests, errors, retries, success, actual) in expect {
        let r = row(&body, route);
        let s = &r["stats"];
        assert_eq!(
            (s["requests"].as_u64(), s["errors"].as_u64(), s["retries"].as_u64()),
            (Some(requests), Some(errors), Some(retries)),
            "{route}: {r:#}"
        );
        assert_eq!(s["success_pct"].as_f64(), Some(success), "{route}");
        assert_eq!(r["actual_success_pct"].as_f64(), Some(actual), "{route}");
        assert_eq!(r["callers"], serde_json::json!(["shop/a/v1"]));
        assert!(s["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{route}");
    }
    // The edge still counts each attempt once, from the callee's report: routes add nothing to it.
    let (_, g) = get_json(&format!("{api}/api/v1/graph?view=versioned")).await;
    let edge = g["edges"].as_array().unwrap().iter().find(|e| e["source"] == "shop/a/v1").unwrap().clone();
    assert_eq!(edge["stats"]["requests"], 23, "{edge:#}");

    // The same through the binary, in linkerd viz routes' columns (retries happened: wide).
    let out = meshlens(&["routes", "b", "--collector", &api]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ROUTE",
            "SERVICE",
            "EFFECTIVE_SUCCESS",
            "EFFECTIVE_RPS",
            "ACTUAL_SUCCESS",
            "ACTUAL_RPS",
            "LATENCY_P50",
            "LATENCY_P95",
            "LATENCY_P99"
        ],
        "{text}"
    );
    let status_row = lines.iter().find(|l| l.starts_with("GET /status/{code}")).expect("the template route's row");
    assert!(status_row.contains(" b ") && status_row.contains("71.43%") && status_row.contains("45.45%"), "{text}");
    assert!(lines.last().unwrap().starts_with("[default]"), "{text}");
    // A caller filter, an unknown service, a missing one.
    let out = meshlens(&["routes", "shop/b", "--from", "shop/x", "--collector", &api]).await;
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("No requests to shop/b"), "{out:?}");
    let (status, body) = get_json(&format!("{api}/api/v1/routes?service=nope")).await;
    assert_eq!(status, 404);
    assert!(body["error"]["message"].as_str().unwrap().contains("no routes of \"nope\""), "{body}");
    let (status, body) = get_json(&format!("{api}/api/v1/routes")).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("parameter service"), "{body}");
    a.shutdown().await;
    b.shutdown().await;
}
