//! The agent against real backends, agents and a real collector on loopback: one test per
//! behaviour of the proxy, its policy, its telemetry and its handling of bad input.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::*;
use crate::support::{edge, eventually, get_json, prom_value};

fn metric(text: &str, name: &str) -> f64 {
    prom_value(text, &format!("meshlens_agent_{name} ")).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

async fn admin(agent: &meshlens_agent::Running) -> String {
    reqwest::get(format!("http://{}/metrics", agent.admin)).await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_per_try_timeouts_are_counted_exactly() {
    let backend = Backend::start().await;
    let b = callee("v1", &backend, None).await;
    let a = caller(
        &[("v1", vec![b.inbound])],
        "{retries: {attempts: 3, per_try_timeout: 100ms, backoff: {base: 1ms, max: 5ms}}}",
        None,
    )
    .await;
    let app = App::via(&a);

    // Two 503s, then success on the third try.
    let (status, body) = app.get("b", "/flaky/2").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(backend.hits(), 3);
    assert_eq!(a.counters.retries.get(), 2);

    // Every try times out: the first try and 3 retries, then 504.
    let (status, body) = app.get("b", "/sleep/400").await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("timeout") && body.contains("after 3 retries"), "{body}");
    assert!(body.contains("no response within 100ms"), "each try was cut at the per-try timeout: {body}");
    assert_eq!(backend.hits(), 3 + 4);
    assert_eq!((a.counters.retries.get(), a.counters.per_try_timeouts.get()), (5, 4));

    // Nothing retriable: one try.
    let (status, _) = app.get("b", "/status/404").await;
    assert_eq!(status, 404);
    assert_eq!(backend.hits(), 8);
    let text = admin(&a).await;
    assert_eq!(metric(&text, "retries_total"), 5.0);
    assert!(text.contains("meshlens_agent_peer_timeouts_total{peer=\"shop/b/v1\"} 4"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_request_timeout_bounds_every_attempt_and_backoff() {
    let backend = Backend::start().await;
    let b = callee("v1", &backend, None).await;
    let a = caller(
        &[("v1", vec![b.inbound])],
        "{timeout: 250ms, retries: {attempts: 5, per_try_timeout: 100ms, backoff: {base: 1ms, max: 2ms}}}",
        None,
    )
    .await;
    let (status, body) = App::via(&a).get("b", "/sleep/2000").await;
    assert_eq!(status, 504, "{body}");
    // The agent answered (the backend's 2 s sleep never finished), after retrying within 250 ms.
    assert!(body.contains("timeout") && !body.contains("slept"), "{body}");
    assert!(a.counters.retries.get() >= 1, "per-try timeouts were retried before the whole one");
    assert_eq!(a.counters.request_timeouts.get(), 1);
    assert_eq!(backend.hits(), a.counters.retries.get() + 1);
    assert!(backend.hits() <= 3, "at most three tries fit in 250 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries() {
    let backend = Backend::start().await;
    let b = callee("v1", &backend, None).await;
    let a = caller(
        &[("v1", vec![b.inbound])],
        "{retries: {attempts: 3, backoff: {base: 1ms, max: 1ms}, budget: {ratio: 0.2, min_per_second: 0}}}",
        None,
    )
    .await;
    let app = App::via(&a);
    for _ in 0..50 {
        assert_eq!(app.get("b", "/status/500").await.0, 500);
    }
    // Without a budget: 150 retries. With 20% of 50 requests: 10.
    assert_eq!(a.counters.retries.get(), 10);
    assert_eq!(backend.hits(), 60);
    assert!(a.counters.retries_budget_denied.get() >= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_sends_each_version_its_share() {
    let (b1, b2) = (Backend::start().await, Backend::start().await);
    let (v1, v2) = (callee("v1", &b1, None).await, callee("v2", &b2, None).await);
    let a = caller(&[("v1", vec![v1.inbound]), ("v2", vec![v2.inbound])], "{split: {v1: 80, v2: 20}}", None).await;
    let app = App::via(&a);
    let n = 1000;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let app = App::via(&a);
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / 4 {
                assert_eq!(app.get("b", "/ok").await.0, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    drop(app);
    assert_eq!(b1.hits() + b2.hits(), n);
    // Binomial(1000, 0.2): sd 12.6; four sd either side.
    let share = b2.hits() as i64;
    assert!((share - 200).abs() <= 51, "v2 got {share} of {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_comes_back() {
    let (good, bad) = (Backend::start().await, Backend::start().await);
    let (g, x) = (callee("v1", &good, None).await, callee("v1", &bad, None).await);
    bad.fail.store(true, Ordering::SeqCst);
    let a = caller(
        &[("v1", vec![g.inbound, x.inbound])],
        "{load_balancer: round_robin, outlier_detection: {consecutive_5xx: 3, base_ejection_time: 600ms, max_ejection_percent: 50}}",
        None,
    )
    .await;
    let app = App::via(&a);
    let mut failures = 0;
    for _ in 0..20 {
        if app.get("b", "/ok").await.0 == 500 {
            failures += 1;
        }
    }
    assert_eq!((failures, bad.hits()), (3, 3), "three failures eject it");
    assert_eq!(a.counters.ejections.get(), 1);
    assert_eq!(good.hits(), 17);

    // Healed and back once the ejection time has passed: round robin reaches it again, then gives it
    // half of what follows.
    bad.fail.store(false, Ordering::SeqCst);
    eventually("the healed endpoint back in rotation", 10, || async {
        assert_eq!(app.get("b", "/ok").await.0, 200);
        (bad.hits() > 3).then_some(())
    })
    .await;
    let before = bad.hits();
    for _ in 0..10 {
        assert_eq!(app.get("b", "/ok").await.0, 200);
    }
    assert_eq!(bad.hits(), before + 5, "round robin gives it half again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_abort_and_delay_at_their_rates() {
    let backend = Backend::start().await;
    let b = callee("v1", &backend, None).await;
    let a = caller(&[("v1", vec![b.inbound])], "{fault: {abort: {status: 503, percent: 30}}}", None).await;
    let app = App::via(&a);
    let n = 600;
    let mut aborted = 0;
    for _ in 0..n {
        let (status, body) = app.get("b", "/ok").await;
        if status == 503 {
            assert!(body.contains("fault injected"), "{body}");
            aborted += 1;
        }
    }
    // Binomial(600, 0.3): sd 11.2; four sd.
    assert!((aborted as i64 - 180).abs() <= 45, "{aborted} aborted");
    assert_eq!(backend.hits(), n - aborted);
    assert_eq!(a.counters.faults_aborted.get(), aborted);

    let d = caller(&[("v1", vec![b.inbound])], "{fault: {delay: {fixed: 120ms, percent: 100}}}", None).await;
    assert_eq!(App::via(&d).get("b", "/ok").await.0, 200);
    assert_eq!(d.counters.faults_delayed.get(), 1);
    assert_eq!(d.counters.faults_aborted.get(), 0, "a delay fault delays and still delivers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_grpc_pass_through_two_agents() {
    // HTTP/2 (prior knowledge) end to end.
    let backend = Backend::start().await;
    let b = callee("v1", &backend, None).await;
    let a = caller(&[("v1", vec![b.inbound])], "", None).await;
    // The app resolves the service name to its agent's outbound listener, as a sidecar's DNS would.
    let out = a.outbound.unwrap();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().resolve("b", out).build().unwrap();
    let r = h2.get(format!("http://b:{}/headers", out.port())).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.headers()["x-version"], "HTTP/2.0", "the backend was reached over h2 too");

    // gRPC: a tonic client through both agents to the collector's tonic OTLP server as the app;
    // the agents report to the same collector.
    let c = crate::support::collector().await;
    let telemetry = format!("http://{}", c.otlp_grpc_addr);
    let g = agent(&agent_yaml("shop/otlp/v1", c.otlp_grpc_addr, "", "", Some(&telemetry))).await;
    let caller = agent(&agent_yaml(
        "shop/a/v1",
        "127.0.0.1:9".parse().unwrap(),
        &format!("otlp:\n  versions:\n    v1: ['{}']", g.inbound),
        "",
        Some(&telemetry),
    ))
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", caller.outbound.unwrap()))
        .unwrap()
        .origin("http://otlp".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut client =
        opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::new(channel);
    let spans = crate::support::pairs(1, ("productpage", "v1"), ("reviews", "v2"), 10, 200, 5);
    // tonic fails a call whose grpc-status trailer went missing: this one passed both agents whole.
    client.export(spans).await.expect("gRPC through two agents");
    crate::support::wait_edge(&c, "", "default/productpage/v1", "default/reviews/v2", 10).await;
    // A method the server does not have: a trailers-only UNIMPLEMENTED, through both agents.
    let out = caller.outbound.unwrap();
    let h2c = reqwest::Client::builder().http2_prior_knowledge().resolve("otlp", out).build().unwrap();
    let r = h2c
        .post(format!("http://otlp:{}/shop.Nope/Missing", out.port()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), r.headers().get("grpc-status").map(|v| v.to_str().unwrap())), (200, Some("12")));
    // The agents' own metrics carry the codes: one OK export, one UNIMPLEMENTED — a failure, the
    // server's fault as OpenTelemetry's conventions class it.
    let g = crate::support::eventually("the agents' gRPC edge with its codes", 20, || async {
        let (_, g) = crate::support::get_json(&format!("{}/api/v1/graph", c.api_url())).await;
        let e = crate::support::edge(&g, "shop/a/v1", "shop/otlp/v1")?;
        (e["stats"]["grpc_codes"]["UNIMPLEMENTED"] == 1).then(|| e["stats"].clone())
    })
    .await;
    assert_eq!(g["grpc_codes"], serde_json::json!({"OK": 1, "UNIMPLEMENTED": 1}), "{g}");
    assert_eq!(
        (g["requests"].as_u64(), g["errors"].as_u64(), g["codes"]["5xx"].as_u64()),
        (Some(2), Some(1), Some(1)),
        "{g}"
    );
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_bounded_memory() {
    let backend = Backend::start().await;
    let b = callee("v1", &backend, None).await;
    // A retry policy too: a large body must not be buffered for replay.
    let a = caller(&[("v1", vec![b.inbound])], "{retries: {attempts: 2}}", None).await;
    let app = App::via(&a);
    let size: u64 = 256 << 20;
    let before = rss_kib();

    let chunk = bytes::Bytes::from(vec![b'y'; 256 * 1024]);
    let stream =
        futures_util::stream::iter((0..size / chunk.len() as u64).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let r = app
        .request(reqwest::Method::POST, "b", "/upload")
        .header("content-length", size)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), size.to_string());

    let mut r = app.request(reqwest::Method::GET, "b", &format!("/bytes/{size}")).send().await.unwrap();
    let mut got = 0u64;
    while let Some(c) = r.chunk().await.unwrap() {
        got += c.len() as u64;
    }
    assert_eq!(got, size);
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 64, "memory grew by {grown_mib} MiB for 2 x 256 MiB through two agents");
    assert_eq!(backend.uploaded.load(Ordering::SeqCst), size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_and_traceparent_continued() {
    let backend = Backend::start().await;
    let b = callee("v1", &backend, None).await;
    let a = caller(&[("v1", vec![b.inbound])], "", None).await;
    let app = App::via(&a);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = app
        .request(reqwest::Method::GET, "b", "/headers")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("proxy-authorization", "Basic Zm9v")
        .header("keep-alive", "timeout=5")
        .header("x-kept", "yes")
        .header("traceparent", tp)
        .header("tracestate", "vendor=1")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("x-backend-private").is_none(), "response hop-by-hop headers go too");
    let seen: serde_json::Value = r.json().await.unwrap();
    for gone in ["x-private", "proxy-authorization", "keep-alive", "x-meshlens-source"] {
        assert!(seen.get(gone).is_none(), "{gone} reached the app: {seen}");
    }
    assert_eq!(seen["x-kept"], "yes");
    assert_eq!(seen["tracestate"], "vendor=1");
    let continued = seen["traceparent"].as_str().unwrap();
    assert_eq!(&continued[..36], &tp[..36], "same trace");
    assert_ne!(&continued[36..52], &tp[36..52], "a new span (the inbound agent's)");
    assert!(continued.ends_with("-01"));

    // Without one, the app gets a fresh trace context.
    let seen: serde_json::Value =
        app.request(reqwest::Method::GET, "b", "/headers").send().await.unwrap().json().await.unwrap();
    assert!(seen["traceparent"].as_str().unwrap().starts_with("00-"));
}

/// Bad input: malformed HTTP, oversized headers, a client that never finishes its headers, an
/// unknown service. Each gets a clear answer and the agent keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_answer_and_the_agent_keeps_serving() {
    let backend = Backend::start().await;
    let b = callee("v1", &backend, None).await;
    let a = caller(&[("v1", vec![b.inbound])], "", None).await;
    let app = App::via(&a);

    /// Sends bytes and reads until the agent closes: the answer, and whether the agent closed the
    /// connection (rather than this side giving up after 30 s).
    async fn raw_closed(addr: std::net::SocketAddr, bytes: &[u8]) -> (String, bool) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await.is_ok();
        (String::from_utf8_lossy(&out).into_owned(), closed)
    }
    async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
        raw_closed(addr, bytes).await.0
    }
    let answer = raw(b.inbound, b"GARBAGE GARBAGE\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");

    let big = format!("GET /ok HTTP/1.1\r\nhost: b\r\nx-big: {}\r\n\r\n", "a".repeat(40_000));
    let answer = raw(b.inbound, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");

    // Headers never finished: the connection is closed after header_read_timeout (500 ms).
    let errors_before = b.counters.connection_errors.get();
    let (answer, closed) = raw_closed(b.inbound, b"GET /ok HTTP/1.1\r\nhost: b\r\n").await;
    assert!(closed && !answer.contains("200 OK"), "the agent closed the slow client: {answer:?}");
    assert_eq!(b.counters.connection_errors.get(), errors_before + 1, "and counted it");

    let (status, body) = app.get("nope", "/ok").await;
    assert_eq!(status, 502);
    assert!(body.contains("no service \"nope\"") && body.contains("known services: b"), "{body}");
    assert_eq!(a.counters.unroutable_unknown_service.get(), 1);

    // An endpoint that refuses connections: 503 saying so.
    let dead = caller(&[("v1", vec!["127.0.0.1:9".parse().unwrap()])], "", None).await;
    let (status, body) = App::via(&dead).get("b", "/ok").await;
    assert_eq!(status, 503);
    assert!(body.contains("connect_failure"), "{body}");

    let text = admin(&b).await;
    assert!(metric(&text, "connection_errors_total") >= 2.0, "{text}");
    assert_eq!(app.get("b", "/ok").await, (200, "ok".into()));
    assert_eq!(reqwest::get(format!("http://{}/ready", a.admin)).await.unwrap().status(), 200);
}

/// Replaces a file as editors and Kubernetes ConfigMap updates do (a new file renamed over the
/// old), so the agent's poller never reads half of one.
fn write_atomic(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_is_refused_and_a_reload_drops_no_request() {
    let (b1, b2) = (Backend::start().await, Backend::start().await);
    let (v1, v2) = (callee("v1", &b1, None).await, callee("v2", &b2, None).await);
    let services = format!("b:\n  versions:\n    v1: ['{}']\n    v2: ['{}']", v1.inbound, v2.inbound);
    let yaml = |policy: &str| agent_yaml("shop/a/v1", "127.0.0.1:9".parse().unwrap(), &services, policy, None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, yaml("b: {split: {v1: 100, v2: 0}}")).unwrap();
    let config = meshlens_agent::load_config(&path).unwrap();
    let options = meshlens_agent::Options { watch: Some(path.clone()), reload_every: Duration::from_millis(50) };
    let a = meshlens_agent::start(config, options).await.unwrap();
    let app = App::via(&a);

    // Requests flow while the file flips between two valid splits: each flip is waited for (the
    // reload counted), then a request of the test's own goes where the new split says, while a
    // second client keeps sending and never sees a failure.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = {
        let (done, app) = (done.clone(), App::via(&a));
        tokio::spawn(async move {
            let mut n = 0u32;
            loop {
                assert_eq!(app.get("b", "/ok").await.0, 200, "a request during a reload failed");
                n += 1;
                if done.load(Ordering::SeqCst) {
                    return n;
                }
            }
        })
    };
    let (to_v2, to_v1) = (yaml("b: {split: {v1: 0, v2: 100}}"), yaml("b: {split: {v1: 100, v2: 0}}"));
    for i in 0..10u64 {
        let reloads = a.counters.reloads.get();
        let (file, hits) = if i % 2 == 0 { (&to_v2, &b2) } else { (&to_v1, &b1) };
        write_atomic(&path, file);
        eventually("the flip reloaded", 5, || async { (a.counters.reloads.get() > reloads).then_some(()) }).await;
        let before = hits.hits();
        assert_eq!(app.get("b", "/ok").await.0, 200);
        assert!(hits.hits() > before, "flip {i}: the request went to the new split's version");
    }
    done.store(true, Ordering::SeqCst);
    let n = background.await.unwrap();
    assert!(n >= 1 && a.counters.reloads.get() >= 10, "{n} requests beside, {} reloads", a.counters.reloads.get());

    // A broken file is refused, named, and the last good config keeps serving (all to v1).
    let before = b1.hits();
    write_atomic(&path, &yaml("b: {split: {v1: 100, v9: 1}}"));
    eventually("reload refused", 5, || async { (a.counters.reload_errors.get() == 1).then_some(()) }).await;
    let (_, cfg) = get_json(&format!("http://{}/config", a.admin)).await;
    let why = cfg["last_reload_error"].as_str().unwrap();
    assert!(why.contains("agent.yaml") && why.contains("policy.services.b.split.v9"), "{why}");
    assert_eq!(cfg["config"]["services"]["b"]["policy"]["split"][0][0], "v1");
    for _ in 0..5 {
        assert_eq!(app.get("b", "/ok").await.0, 200);
    }
    assert_eq!(b1.hits(), before + 5);
}

/// Two agents and a real collector: N requests make an edge of exactly N requests (attempts), with
/// the errors, retries and timeouts the agents saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_counts_each_request_once_in_the_collector() {
    let c = crate::support::collector().await;
    let otlp = format!("http://{}", c.otlp_grpc_addr);
    let backend = Backend::start().await;
    let b = callee("v1", &backend, Some(&otlp)).await;
    let services = format!("b:\n  versions:\n    v1: ['{}']", b.inbound);
    let policy = "b: {retries: {attempts: 1, per_try_timeout: 150ms, backoff: {base: 1ms, max: 1ms}}}";
    let a = agent(&agent_yaml("shop/a/v1", "127.0.0.1:9".parse().unwrap(), &services, policy, Some(&otlp))).await;
    let app = App::via(&a);
    for _ in 0..40 {
        assert_eq!(app.get("b", "/ok").await.0, 200);
    }
    for _ in 0..10 {
        assert_eq!(app.get("b", "/status/500").await.0, 500);
    }
    for _ in 0..3 {
        assert_eq!(app.get("b", "/sleep/400").await.0, 504);
    }
    for _ in 0..4 {
        assert_eq!(app.get("b", "/status/404").await.0, 404);
    }
    // 40 + 4 single tries, 10 + 3 requests tried twice: 70 attempts, 13 retries, 6 timeouts.
    assert_eq!(backend.hits(), 70);
    a.shutdown().await;
    b.shutdown().await;
    let url = format!("{}/api/v1/graph", c.api_url());
    let g = eventually("the edge with every attempt", 20, || async {
        let (_, g) = get_json(&url).await;
        let e = edge(&g, "shop/a/v1", "shop/b/v1")?;
        (e["stats"]["requests"] == 70 && e["stats"]["retries"] == 13).then_some(g)
    })
    .await;
    let s = &edge(&g, "shop/a/v1", "shop/b/v1").unwrap()["stats"];
    assert_eq!(s["timeouts"], 6, "{s}");
    assert_eq!(s["codes"]["4xx"], 4, "{s}");
    assert_eq!(s["codes"]["5xx"], 20, "{s}");
    // The timed-out tries reached the callee: its agent counts them as cancelled (no response).
    assert_eq!(s["codes"]["none"], 6, "{s}");
    assert_eq!(s["errors"], 26, "{s}");
    assert_eq!(s["codes"]["2xx"], 40, "{s}");
    // Sampled at 100%: the spans paired too, and did not add to the agent-reported counts.
    let (_, m) = get_json(&format!("{}/api/v1/workloads", c.api_url())).await;
    assert!(m["workloads"].as_array().unwrap().iter().any(|w| w["app"] == "b"), "{m}");
    let prom = reqwest::get(format!("{}/metrics", c.api_url())).await.unwrap().text().await.unwrap();
    assert!(prom_value(&prom, "meshlens_collector_received_total{signal=\"spans\"}").unwrap_or(0.0) >= 70.0, "{prom}");
    // Each attempt's CLIENT span paired with the callee agent's SERVER span (only the 6 timed-out
    // attempts, whose SERVER spans ended as cancelled, could miss their partner's end).
    let paired = prom_value(&prom, "meshlens_collector_spans_paired_total").unwrap_or(0.0);
    assert!(paired >= 2.0 * 64.0, "{paired} span halves paired\n{prom}");
}

/// The collector down: traffic flows as fast as ever, spans beyond the queue are dropped and
/// counted, failed exports are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_slows_nothing_and_drops_are_counted() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let backend = Backend::start().await;
    // The endpoint by DNS name, as configs may give it.
    let b = callee("v1", &backend, None).await;
    let services = format!("b:\n  versions:\n    v1: ['localhost:{}']", b.inbound.port());
    let mut yaml =
        agent_yaml("shop/a/v1", "127.0.0.1:9".parse().unwrap(), &services, "", Some(&format!("http://{dead}")));
    yaml = yaml.replace("sampling: 1.0}", "sampling: 1.0, span_queue: 4}");
    let a = agent(&yaml).await;
    let app = App::via(&a);
    for _ in 0..200 {
        assert_eq!(app.get("b", "/ok").await.0, 200);
    }
    // Every request succeeded while exports failed; none was held for the collector.
    assert_eq!(a.counters.request_timeouts.get() + a.counters.per_try_timeouts.get(), 0);
    eventually("drops and failures counted", 10, || async {
        let c = &a.counters;
        (c.spans_dropped.get() > 0 && c.export_failures.get() > 0).then_some(())
    })
    .await;
    let text = admin(&a).await;
    assert!(metric(&text, "spans_dropped_total") > 0.0, "{text}");
    assert_eq!(metric(&text, "spans_exported_total"), 0.0);
}

/// The agents' latency histograms are fine enough that an edge's percentiles in the collector are
/// within 2% of the true ones: `meshlens load`'s HdrHistogram (3 significant digits) on the same
/// traffic, through two agents, 1–3 s spread (long enough that the few milliseconds the load's own
/// measure adds — two agent hops and its client — stay well inside 2%). The first round's buckets
/// read this p99 at the 2–3 s bucket's midpoint, 2.5 s (16% low).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edges_percentiles_are_within_two_percent_of_the_true_ones() {
    use meshlens_agent::load::{LoadConfig, run};
    let c = crate::support::collector().await;
    let otlp = format!("http://{}", c.otlp_grpc_addr);
    let backend = Backend::start().await;
    let b = callee("v1", &backend, Some(&otlp)).await;
    let services = format!("b:\n  versions:\n    v1: ['{}']", b.inbound);
    let a = agent(&agent_yaml("shop/a/v1", "127.0.0.1:9".parse().unwrap(), &services, "{}", Some(&otlp))).await;
    let report = run(LoadConfig {
        url: format!("http://{}/jitter/1000/3000", a.outbound.unwrap()).parse().unwrap(),
        rate: 50.0,
        duration: Duration::from_secs(6),
        connections: 192,
        timeout: Duration::from_secs(5),
        host: Some("b".into()),
    })
    .await
    .unwrap();
    assert_eq!((report.sent, report.errors), (300, 0), "{report:?}");
    a.shutdown().await;
    b.shutdown().await;
    let url = format!("{}/api/v1/graph", c.api_url());
    let g = eventually("the edge with every request", 20, || async {
        let (_, g) = get_json(&url).await;
        (edge(&g, "shop/a/v1", "shop/b/v1")?["stats"]["requests"] == 300).then_some(g)
    })
    .await;
    let lat = &edge(&g, "shop/a/v1", "shop/b/v1").unwrap()["stats"]["latency_ms"];
    // The service time (from each actual send) is what the callee's agent measured plus the hops
    // before it (a few milliseconds here): a bucket's ±1.5% leaves room for them within 2%.
    let truth = &report.service_time_ms;
    println!("precision: edge {lat}; load p50 {} ms, p99 {} ms", truth.p50, truth.p99);
    for (name, got, want) in [("p50", &lat["p50"], truth.p50), ("p99", &lat["p99"], truth.p99)] {
        let got = got.as_f64().unwrap();
        assert!((got - want).abs() <= 0.02 * want, "{name}: edge {got} ms, load {want} ms ({lat})");
    }
}

/// RFC 9112's Host rules (400 for an HTTP/1.1 request with none, any request with two), a
/// `Connection: host` that does not strip the target's name, a connection that sends nothing
/// closed at the header read timeout, and past `max_connections` a new one closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_rules_idle_connections_and_the_connection_cap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start().await;
    let y = agent_yaml("shop/b/v1", backend.addr, "", "", None).replace(
        "limits: {header_read_timeout: 500ms, max_header_bytes: 16384}",
        "limits: {header_read_timeout: 500ms, max_header_bytes: 16384, max_connections: 3}",
    );
    let b = agent(&y).await;
    async fn send(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }
    let none = send(b.inbound, b"GET /ok HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert!(none.starts_with("HTTP/1.1 400") && none.contains("needs a Host header"), "{none}");
    let two = send(b.inbound, b"GET /ok HTTP/1.1\r\nhost: b\r\nhost: evil\r\nconnection: close\r\n\r\n").await;
    assert!(two.starts_with("HTTP/1.1 400") && two.contains("not several"), "{two}");
    let hop = send(b.inbound, b"GET /headers HTTP/1.1\r\nhost: b\r\nconnection: host, close\r\n\r\n").await;
    assert!(hop.starts_with("HTTP/1.1 200") && hop.contains("\"host\""), "Host survives Connection: host: {hop}");
    assert_eq!(backend.hits(), 1);
    assert_eq!(b.counters.bad_requests.get(), 2);

    // Nothing sent: closed after the 500 ms header read timeout.
    let mut quiet = tokio::net::TcpStream::connect(b.inbound).await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), quiet.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "an idle connection is closed");
    assert!(b.counters.idle_connections_closed.get() >= 1);

    // Three connections that have begun a request hold every slot; a fourth is closed at once.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(b.inbound).await.unwrap();
        s.write_all(b"GET /sleep/3000 HTTP/1.1\r\nhost: b\r\n\r\n").await.unwrap();
        held.push(s);
    }
    // Accepted in arrival order (the kernel's queue): the three hold their slots first.
    let refused = send(b.inbound, b"GET /ok HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n").await;
    assert!(refused.is_empty(), "{refused}");
    assert_eq!(b.counters.connections_refused.get(), 1);
    drop(held);
}

/// With no timeout in its policy, a request to a backend that never answers ends at the agent's
/// default timeout with 504, as a policy timeout does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_timeout_bounds_a_request_with_no_policy_timeout() {
    let backend = Backend::start().await;
    let b = callee("v1", &backend, None).await;
    let services = format!("b:\n  versions:\n    v1: ['{}']", b.inbound);
    let y = agent_yaml("shop/a/v1", "127.0.0.1:9".parse().unwrap(), &services, "", None).replace(
        "limits: {header_read_timeout: 500ms, max_header_bytes: 16384}",
        "limits: {header_read_timeout: 500ms, max_header_bytes: 16384, default_timeout: 300ms}",
    );
    let a = agent(&y).await;
    let (status, body) = App::via(&a).get("b", "/sleep/5000").await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(a.counters.request_timeouts.get(), 1);
}

/// `limits.idle_timeout`: a connection that sent only the HTTP/2 preface, and a keep-alive
/// connection left open after its request, are closed once no request has been in flight for the
/// timeout; a request slower than the timeout is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_with_no_request_in_flight_are_closed_at_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start().await;
    let y = agent_yaml("shop/b/v1", backend.addr, "", "", None).replace(
        "limits: {header_read_timeout: 500ms, max_header_bytes: 16384}",
        "limits: {header_read_timeout: 500ms, max_header_bytes: 16384, idle_timeout: 1s}",
    );
    let b = agent(&y).await;
    async fn closed_within(s: &mut tokio::net::TcpStream, secs: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(secs), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the agent closed the connection within {secs}s: {out:?}");
        out
    }
    // The preface and an empty SETTINGS frame, then nothing: a GOAWAY and the close.
    let mut h2 = tokio::net::TcpStream::connect(b.inbound).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let frames = closed_within(&mut h2, 10).await;
    assert!(frames.windows(2).any(|w| w == [0x07, 0x00]), "a GOAWAY frame (type 7) was sent: {frames:?}");
    // One request answered, then the connection left open (hyper's header read timeout, 500 ms here,
    // also runs while an HTTP/1 connection waits for its next request, so it may close first).
    let mut h1 = tokio::net::TcpStream::connect(b.inbound).await.unwrap();
    h1.write_all(b"GET /ok HTTP/1.1\r\nhost: b\r\n\r\n").await.unwrap();
    let answered = String::from_utf8_lossy(&closed_within(&mut h1, 10).await).into_owned();
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    // A request that takes twice the idle timeout is in flight the whole time: answered.
    let slow = crate::support::http()
        .get(format!("http://{}/sleep/2000", b.inbound))
        .header("host", "b")
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    assert!(b.counters.idle_connections_closed.get() >= 1, "the HTTP/2 connection counted");
}

/// `limits.body_idle_timeout`: a request body that stops arriving ends its request with 408 —
/// inbound (towards the app) and outbound (towards another agent, a request that may be retried
/// and one that may not) — and the agent keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_is_answered_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start().await;
    let short = |y: String| {
        y.replace(
            "limits: {header_read_timeout: 500ms, max_header_bytes: 16384}",
            "limits: {header_read_timeout: 500ms, max_header_bytes: 16384, body_idle_timeout: 1s}",
        )
    };
    let b = agent(&short(agent_yaml("shop/b/v1", backend.addr, "", "", None))).await;
    let services = format!("b:\n  versions:\n    v1: ['{}']\n", b.inbound);
    let unused: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let plain = agent(&short(agent_yaml("shop/a/v1", unused, &services, "", None))).await;
    let retrying = agent(&short(agent_yaml("shop/a/v1", unused, &services, "b: {retries: {attempts: 2}}", None))).await;
    async fn stall(addr: std::net::SocketAddr) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nhost: b\r\ncontent-length: 1000\r\n\r\n0123456789").await.unwrap();
        let mut out = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut out)).await.expect("an answer").unwrap();
        String::from_utf8_lossy(&out[..n]).into_owned()
    }
    for (what, addr, counters) in [
        ("inbound", b.inbound, &b.counters),
        ("outbound", plain.outbound.unwrap(), &plain.counters),
        ("outbound with retries", retrying.outbound.unwrap(), &retrying.counters),
    ] {
        let answer = stall(addr).await;
        assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("body_idle_timeout"), "{what}: {answer}");
        assert_eq!(counters.bodies_timed_out.get(), 1, "{what}");
    }
    let ok = App::via(&plain).get("b", "/ok").await;
    assert_eq!(ok.0, 200, "still serving");
}
