//! The traces behind an edge: a failed request through real agents is found on its edge and
//! opened as the hops it took, over the API and with `meshlens trace`.

use serde_json::Value;

use crate::backend::Hop;
use crate::cli::meshlens;
use crate::support::{eventually, get_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_requests_trace_on_its_edge_shows_every_hop_it_took() {
    let c = crate::support::collector().await;
    let policy = "b: {retries: {attempts: 1, retry_on: [5xx], backoff: {base: 1ms, max: 1ms}}}";
    let hop = Hop::start(&c, policy).await;
    let (app, backend) = (&hop.app, &hop.backend);
    for _ in 0..6 {
        assert_eq!(app.get("b", "/ok").await.0, 200);
    }
    // The one failure: answered 500 by the app twice (the retry too).
    assert_eq!(app.get("b", "/status/500").await.0, 500);
    assert_eq!(backend.hits(), 8);

    let api = c.api_url();
    let edge = format!("{api}/api/v1/traces?from=shop/a/v1&to=shop/b/v1");
    let failed: Value = eventually("the failed trace on the a → b edge", 20, || async {
        let (status, body) = get_json(&format!("{edge}&failed=true")).await;
        (status == 200 && body["traces"].as_array()?.len() == 1).then_some(body)
    })
    .await;
    let t = &failed["traces"][0];
    assert_eq!(t["failed"], true);
    assert_eq!(t["workloads"], serde_json::json!(["shop/a/v1", "shop/b/v1"]));
    let id = t["trace_id"].as_str().unwrap().to_owned();
    // Every request is on the edge, the six that passed too (kept whole, newest first).
    let all: Value = eventually("all seven traces on the edge", 20, || async {
        let (_, body) = get_json(&edge).await;
        (body["traces"].as_array()?.len() == 7).then_some(body)
    })
    .await;
    assert_eq!(all["traces"][0]["trace_id"], id.as_str(), "the failure came last: newest first");
    assert_eq!(all["traces"].as_array().unwrap().iter().filter(|t| t["failed"] == true).count(), 1);

    // The edge's exemplars name the same failed request, once for its two attempts; the node's (the
    // edges into and out of it) and its app's and namespace's too. The seven requests' traces, five slowest first.
    let ex: Value = eventually("the exemplars of the a → b edge", 20, || async {
        let (_, body) = get_json(&format!("{api}/api/v1/exemplars?from=shop/a/v1&to=shop/b/v1")).await;
        (body["failed"].as_array()?.len() == 1 && body["slowest"].as_array()?.len() == 5).then_some(body)
    })
    .await;
    let f = &ex["failed"][0];
    assert_eq!(
        (f["trace_id"].as_str(), &f["source"], &f["target"]),
        (Some(id.as_str()), &"shop/a/v1".into(), &"shop/b/v1".into())
    );
    assert_eq!((&f["failed"], &f["kept"]), (&true.into(), &true.into()), "{ex:#}");
    let slow: Vec<f64> = ex["slowest"].as_array().unwrap().iter().map(|x| x["latency_ms"].as_f64().unwrap()).collect();
    assert!(slow.windows(2).all(|w| w[0] >= w[1]) && slow[4] > 0.0, "slowest first: {slow:?}");
    let mut ids: Vec<&str> =
        ex["slowest"].as_array().unwrap().iter().map(|x| x["trace_id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 5, "a trace once: {ex:#}");
    for q in ["node=shop/b/v1", "node=shop/b", "node=ns:shop", "from=shop/a&to=shop/b"] {
        let (status, body) = get_json(&format!("{api}/api/v1/exemplars?{q}")).await;
        assert_eq!((status, body["failed"][0]["trace_id"].as_str()), (200, Some(id.as_str())), "{q}: {body}");
    }
    // The caller's too (a node's calls are its exemplars as much as what it serves); not the user's.
    let (_, body) = get_json(&format!("{api}/api/v1/exemplars?node=shop/a/v1")).await;
    assert_eq!(body["failed"][0]["trace_id"].as_str(), Some(id.as_str()), "{body}");
    let (_, body) = get_json(&format!("{api}/api/v1/exemplars?node=user")).await;
    assert_eq!(body["failed"], serde_json::json!([]), "{body}");
    for (q, names) in [("", "from"), ("node=x&from=y", "node"), ("node=x&limit=0", "limit"), ("nodes=x", "nodes")] {
        let (status, body) = get_json(&format!("{api}/api/v1/exemplars?{q}")).await;
        assert_eq!(status, 400, "{q}");
        assert!(body["error"]["message"].as_str().unwrap().contains(names), "{q}: {body}");
    }

    // The trace: two attempts, each a CLIENT span of a and the SERVER span of b under it.
    let body: Value = eventually("all four spans of the failed trace", 20, || async {
        let (_, body) = get_json(&format!("{api}/api/v1/traces/{id}")).await;
        (body["spans"].as_array()?.len() == 4).then_some(body)
    })
    .await;
    let spans = body["spans"].as_array().unwrap();
    let clients: Vec<&Value> = spans.iter().filter(|s| s["kind"] == "client").collect();
    let servers: Vec<&Value> = spans.iter().filter(|s| s["kind"] == "server").collect();
    assert_eq!((clients.len(), servers.len()), (2, 2), "{body:#}");
    for c in &clients {
        assert_eq!(c["workload"], "shop/a/v1");
        assert_eq!(c["parent_span_id"], "", "the app sent no trace context: each attempt is a root");
        assert_eq!(c["http_status"], 500);
        assert_eq!(c["failed"], true);
        assert_eq!(c["peer"], "b");
    }
    for s in &servers {
        assert_eq!(s["workload"], "shop/b/v1");
        assert_eq!(s["http_status"], 500);
        assert!(clients.iter().any(|c| c["span_id"] == s["parent_span_id"]), "{s} has no client parent");
    }

    // The same through the binary: the waterfall, and the edge's failed traces.
    let out = meshlens(&["trace", &id, "--collector", &api]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(&format!("trace {id}  4 spans")), "{text}");
    assert_eq!(text.matches("shop/a/v1 client").count(), 2, "{text}");
    assert_eq!(text.matches("  shop/b/v1 server").count(), 2, "each server span indented under its client: {text}");
    assert_eq!(text.matches("500 ✗").count(), 4, "{text}");
    let out = meshlens(&["trace", "--from", "shop/a/v1", "--to", "shop/b/v1", "--failed", "--collector", &api]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.lines().count() == 2 && text.contains(&id), "{text}");

    // A trace not kept, and a bad id, are named.
    let (status, body) = get_json(&format!("{api}/api/v1/traces/{}", "ab".repeat(16))).await;
    assert_eq!(status, 404);
    assert!(body["error"]["message"].as_str().unwrap().contains("keeps the last 200000 spans"), "{body}");
    let (status, body) = get_json(&format!("{api}/api/v1/traces/nope")).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("32 hex digits"), "{body}");
    let (status, _) = get_json(&format!("{api}/api/v1/traces?sort=fastest")).await;
    assert_eq!(status, 400);
    let out = meshlens(&["trace", "nope", "--collector", &api]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("32 hex digits"));
    hop.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_link_sends_users_to_their_tempo() {
    let c = crate::support::collector_with(|cfg| {
        cfg.trace_link = Some("http://tempo.example:3200/api/traces/{trace_id}".into());
        cfg.engine.trace_store_spans = 3;
    })
    .await;
    let hop = Hop::start(&c, "").await;
    let app = &hop.app;
    for _ in 0..4 {
        assert_eq!(app.get("b", "/ok").await.0, 200);
    }
    let api = c.api_url();
    // Three spans kept at most: whole traces (two spans each), the oldest gone first.
    let body: Value = eventually("traces past the bound evicted whole", 20, || async {
        let m = reqwest::get(format!("{api}/metrics")).await.ok()?.text().await.ok()?;
        let evicted = crate::support::prom_value(&m, "meshlens_collector_traces_evicted_total")?;
        let (_, body) = get_json(&format!("{api}/api/v1/traces")).await;
        (evicted >= 3.0).then_some(body)
    })
    .await;
    assert!(body["spans_kept"].as_u64().unwrap() <= 3, "{body}");
    assert_eq!(body["spans_bound"], 3);
    let t = &body["traces"][0];
    let id = t["trace_id"].as_str().unwrap();
    assert_eq!(t["link"], format!("http://tempo.example:3200/api/traces/{id}"));
    // The exemplars outlive the store: the oldest request's is still named, not kept here, and links
    // to Tempo.
    let (_, body) = get_json(&format!("{api}/api/v1/exemplars?node=shop/b/v1&limit=10")).await;
    let slowest = body["slowest"].as_array().unwrap();
    assert_eq!(slowest.len(), 4, "{body:#}");
    let gone = slowest.iter().find(|x| x["kept"] == false).expect("an exemplar whose trace was evicted");
    let gone_id = gone["trace_id"].as_str().unwrap();
    assert_eq!(gone["link"], format!("http://tempo.example:3200/api/traces/{gone_id}"));
    let (status, _) = get_json(&format!("{api}/api/v1/traces/{gone_id}")).await;
    assert_eq!(status, 404);
    hop.shutdown().await;
}
