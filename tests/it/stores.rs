//! The graph through a Prometheus-compatible store, on real stores started here (Debian's
//! Prometheus with its remote-write receiver, and VictoriaMetrics): collectors remote-write,
//! a collector reading the store with `--prometheus` gives the graph one collector gives for all
//! the traffic; Istio- and Linkerd-shaped series, scraped by Prometheus from a small exporter
//! written from their published metric definitions, give the graph, success, percentiles and mTLS
//! Kiali and Linkerd viz would show.

use std::process::Stdio;
use std::time::Duration;

use meshlens_collector::remote_write::RemoteWriteConfig;
use meshlens_collector::source::{Dialect, SourceConfig};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

struct Store {
    _child: tokio::process::Child,
    url: String,
}

async fn ready(what: &str, url: String) {
    eventually(what, 60, || {
        let url = url.clone();
        async move { http().get(&url).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
    })
    .await;
}

/// Prometheus with the remote-write receiver on, scraping what `scrape` lists every second.
async fn prometheus(dir: &std::path::Path, scrape: &[String]) -> Store {
    prometheus_with(dir, scrape, &[]).await
}

/// The same, with more flags.
async fn prometheus_with(dir: &std::path::Path, scrape: &[String], flags: &[&str]) -> Store {
    let config = dir.join("prometheus.yml");
    let mut yaml = "global:\n  scrape_interval: 1s\n".to_owned();
    if !scrape.is_empty() {
        let targets: Vec<String> = scrape.iter().map(|t| format!("'{t}'")).collect();
        yaml += &format!(
            "scrape_configs:\n  - job_name: mesh\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
    }
    std::fs::write(&config, yaml).unwrap();
    let port = free_port();
    let prom = tool("MESHLENS_PROMETHEUS", "/usr/bin/prometheus", "Debian's prometheus");
    let mut args = vec![
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", dir.join("prom-data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--web.enable-remote-write-receiver".to_owned(),
    ];
    args.extend(flags.iter().map(|f| (*f).to_owned()));
    spawn_store("Prometheus", prom, &args, port, "/-/ready").await
}

/// VictoriaMetrics (single node), answering queries up to now (no latency offset, no cache).
async fn victoria_metrics(dir: &std::path::Path) -> Store {
    let port = free_port();
    let vm = tool("MESHLENS_VICTORIA_METRICS", "/usr/bin/victoria-metrics", "Debian's victoria-metrics");
    let args = [
        format!("-httpListenAddr=127.0.0.1:{port}"),
        format!("-storageDataPath={}", dir.join("vm-data").display()),
        "-search.latencyOffset=0s".to_owned(),
        "-search.disableCache".to_owned(),
    ];
    spawn_store("VictoriaMetrics", vm, &args, port, "/health").await
}

/// Starts a store on `port` and waits until `health` answers.
async fn spawn_store(what: &str, program: std::path::PathBuf, args: &[String], port: u16, health: &str) -> Store {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    ready(&format!("{what} to start"), format!("{url}{health}")).await;
    Store { _child: child, url }
}

async fn query_value(store: &str, q: &str) -> Option<f64> {
    let r = http().get(format!("{store}/api/v1/query")).query(&[("query", q)]).send().await.ok()?;
    let body: Value = r.json().await.ok()?;
    body["data"]["result"].as_array()?.first()?["value"][1].as_str()?.parse().ok()
}

fn source(url: &str, dialect: Dialect) -> SourceConfig {
    SourceConfig {
        url: url.to_owned(),
        dialects: vec![dialect],
        interval: Duration::from_millis(500),
        backfill: Duration::from_secs(60),
        token: None,
        max_series: 100_000,
    }
}

async fn graph(c: &meshlens_collector::Running) -> Value {
    get_json(&format!("{}/api/v1/graph", c.api_url())).await.1
}

/// The bucket of the servicegraph histograms (ms) a latency falls in: its width.
fn bucket_width_ms(ms: f64) -> f64 {
    let bounds: Vec<f64> = meshlens_collector::PROM_BUCKETS.iter().map(|b| b * 1000.0).collect();
    let i = bounds.iter().position(|&b| ms <= b).unwrap_or(bounds.len() - 1);
    bounds[i] - if i == 0 { 0.0 } else { bounds[i - 1] }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_through_prometheus_and_victoria_metrics_give_one_collectors_graph() {
    let dir = tempfile::tempdir().unwrap();
    let (prom, vm) = tokio::join!(prometheus(dir.path(), &[]), victoria_metrics(dir.path()));
    let urls = vec![format!("{}/api/v1/write", prom.url), format!("{}/api/v1/write", vm.url)];
    let writer = |urls: Vec<String>| {
        collector_with(move |cfg| {
            cfg.engine.pairing_ttl_secs = 1.0;
            cfg.remote_write =
                Some(RemoteWriteConfig { urls, interval: Duration::from_millis(300), labels: vec![], token: None });
        })
    };
    let (a, b) = (writer(urls.clone()).await, writer(urls).await);
    let one = collector_with(|cfg| cfg.engine.pairing_ttl_secs = 1.0).await;

    // Traces of bookinfo's calls at four latencies, 1 in 6 failing; each trace whole to one of the
    // two collectors by its id (as an OTLP load-balancing exporter routes), and all to `one`.
    let calls = [
        (("productpage", "v1"), ("reviews", "v1")),
        (("productpage", "v1"), ("reviews", "v2")),
        (("reviews", "v2"), ("ratings", "v1")),
        (("productpage", "v1"), ("details", "v1")),
    ];
    let latencies_ms = [3, 25, 120, 700];
    let mut total = 0;
    for t in 1..=48u64 {
        let (from, to) = calls[(t % 4) as usize];
        let n = t % 5 + 1;
        let status = if t % 6 == 0 { 503 } else { 200 };
        let req = pairs(t, from, to, n, status, latencies_ms[((t / 4) % 4) as usize]);
        let half = if t % 2 == 0 { &a } else { &b };
        grpc_traces(half, req.clone()).await.unwrap();
        grpc_traces(&one, req).await.unwrap();
        total += n;
    }
    // gRPC calls, 1 in 3 UNAVAILABLE: through the store the edge is still gRPC, with its codes.
    for t in 100..=111u64 {
        let code = if t % 3 == 0 { 14 } else { 0 };
        // Over mTLS, as agents say of their spans.
        let attrs =
            || vec![kv("rpc.system", "grpc"), kv_int("rpc.grpc.status_code", code), kv_bool("meshlens.mtls", true)];
        let id = t * 1_000_000 + 1;
        let client = span(SpanKind::Client, t, id, Some(7), 1, 4_500, attrs(), code != 0);
        let server = span(SpanKind::Server, t, id + 1, Some(id), 1, 4_000, attrs(), code != 0);
        let req =
            traces(vec![(resource("", "reviews", "v3"), vec![client]), (resource("", "ratings", "v1"), vec![server])]);
        grpc_traces(if t % 2 == 0 { &a } else { &b }, req.clone()).await.unwrap();
        grpc_traces(&one, req).await.unwrap();
        total += 1;
    }
    wait_edge(&one, "", "default/productpage/v1", "default/details/v1", 1).await;
    let want = eventually("one collector to pair every span", 30, || async {
        let g = graph(&one).await;
        let sum: u64 = g["edges"].as_array()?.iter().filter_map(|e| e["stats"]["requests"].as_u64()).sum();
        (sum == total).then_some(g)
    })
    .await;
    for store in [&prom.url, &vm.url] {
        eventually("both collectors' totals in the store", 60, || async {
            let v = query_value(store, "sum(traces_service_graph_request_total)").await?;
            let collectors =
                query_value(store, "count(count by (meshlens_collector) (traces_service_graph_request_total))").await?;
            (v == total as f64 && collectors == 2.0).then_some(())
        })
        .await;
    }

    for (name, store) in [("Prometheus", &prom.url), ("VictoriaMetrics", &vm.url)] {
        let reader = collector_with(|cfg| cfg.source = Some(source(store, Dialect::Meshlens))).await;
        let got = eventually("the store's graph", 30, || async {
            let g = graph(&reader).await;
            (g["edges"].as_array()?.len() == want["edges"].as_array()?.len()).then_some(g)
        })
        .await;
        let compare = |got: &Value| {
            for w in want["edges"].as_array().unwrap() {
                let (s, t) = (w["source"].as_str().unwrap(), w["target"].as_str().unwrap());
                let g = edge(got, s, t).unwrap_or_else(|| panic!("{name}: edge {s} -> {t} missing: {got}"));
                for k in ["requests", "errors", "grpc_codes", "mtls_pct"] {
                    assert_eq!(g["stats"][k], w["stats"][k], "{name}: {s} -> {t} {k}");
                }
                assert_eq!(g["protocol"], w["protocol"], "{name}: {s} -> {t} protocol");
                for p in ["p50", "p95", "p99"] {
                    let (gp, wp) =
                        (g["stats"]["latency_ms"][p].as_f64().unwrap(), w["stats"]["latency_ms"][p].as_f64().unwrap());
                    assert!(
                        (gp - wp).abs() <= bucket_width_ms(wp),
                        "{name}: {s} -> {t} {p}: {gp} ms from the store, {wp} ms from one collector"
                    );
                }
            }
        };
        compare(&got);
        let grpc = edge(&got, "default/reviews/v3", "default/ratings/v1").unwrap();
        assert_eq!((grpc["protocol"].as_str(), grpc["stats"]["errors"].as_u64()), (Some("grpc"), Some(4)), "{grpc}");
        assert_eq!(grpc["stats"]["mtls_pct"].as_f64(), Some(100.0), "{grpc}");
        // Polls after the first add nothing: nothing is counted twice.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        compare(&graph(&reader).await);
        let metrics = http().get(format!("{}/metrics", reader.api_url())).send().await.unwrap().text().await.unwrap();
        assert!(prom_value(&metrics, "meshlens_collector_source_queries_total{result=\"ok\"}").unwrap() > 4.0);
        assert_eq!(prom_value(&metrics, "meshlens_collector_source_queries_total{result=\"error\"}"), Some(0.0));
        reader.shutdown().await.unwrap();
    }
    for c in [a, b, one] {
        c.shutdown().await.unwrap();
    }
}

/// Serves `body` as Prometheus text exposition to every request (a stand-in for the mesh's proxies'
/// metrics endpoints); returns `host:port`. What it serves can be changed through `body`.
async fn exporter(body: std::sync::Arc<std::sync::Mutex<String>>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let body = body.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    addr
}

/// A cumulative histogram's series: `counts` are (latency, requests) observations.
fn histogram(name: &str, labels: &str, bounds: &[f64], counts: &[(f64, u64)]) -> String {
    let mut out = String::new();
    for le in bounds.iter().copied().chain([f64::INFINITY]) {
        let c: u64 = counts.iter().filter(|(v, _)| *v <= le).map(|(_, n)| n).sum();
        let le = if le.is_infinite() { "+Inf".to_owned() } else { le.to_string() };
        out += &format!("{name}_bucket{{{labels},le=\"{le}\"}} {c}\n");
    }
    let sum: f64 = counts.iter().map(|(v, n)| v * *n as f64).sum();
    let n: u64 = counts.iter().map(|(_, n)| n).sum();
    out += &format!("{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {n}\n");
    out
}

/// Istio's default buckets for istio_request_duration_milliseconds.
const ISTIO_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// The labels of an Istio standard metric (docs: istio.io "Istio Standard Metrics").
fn istio_labels(
    reporter: &str,
    src: (&str, &str),
    dst: Option<(&str, &str)>,
    code: u16,
    flags: &str,
    mtls: bool,
) -> String {
    let (sw, sv) = src;
    let source = if sw == "unknown" {
        "source_workload=\"unknown\",source_workload_namespace=\"unknown\",source_canonical_service=\"unknown\",source_canonical_revision=\"latest\",source_app=\"unknown\",source_version=\"unknown\",source_principal=\"unknown\",source_cluster=\"unknown\"".to_owned()
    } else {
        format!(
            "source_workload=\"{sw}-{sv}\",source_workload_namespace=\"bookinfo\",source_canonical_service=\"{sw}\",source_canonical_revision=\"{sv}\",source_app=\"{sw}\",source_version=\"{sv}\",source_principal=\"spiffe://cluster.local/ns/bookinfo/sa/bookinfo-{sw}\",source_cluster=\"Kubernetes\""
        )
    };
    let destination = match dst {
        Some((dw, dv)) => format!(
            "destination_workload=\"{dw}-{dv}\",destination_workload_namespace=\"bookinfo\",destination_canonical_service=\"{dw}\",destination_canonical_revision=\"{dv}\",destination_app=\"{dw}\",destination_version=\"{dv}\",destination_service=\"{dw}.bookinfo.svc.cluster.local\",destination_service_name=\"{dw}\",destination_service_namespace=\"bookinfo\",destination_principal=\"spiffe://cluster.local/ns/bookinfo/sa/bookinfo-{dw}\",destination_cluster=\"Kubernetes\""
        ),
        None => "destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",destination_canonical_service=\"unknown\",destination_canonical_revision=\"latest\",destination_app=\"unknown\",destination_version=\"unknown\",destination_service=\"api.stripe.com\",destination_service_name=\"api.stripe.com\",destination_service_namespace=\"unknown\",destination_principal=\"unknown\",destination_cluster=\"unknown\"".to_owned(),
    };
    let policy = if reporter == "source" {
        "unknown"
    } else if mtls {
        "mutual_tls"
    } else {
        "none"
    };
    format!(
        "reporter=\"{reporter}\",{source},{destination},request_protocol=\"http\",response_code=\"{code}\",grpc_response_status=\"\",response_flags=\"{flags}\",connection_security_policy=\"{policy}\""
    )
}

async fn store_graph(store: &Store, dialect: Dialect, series: &str, want: f64) -> (meshlens_collector::Running, Value) {
    eventually("Prometheus to scrape the exporter", 60, || async {
        (query_value(&store.url, &format!("count({series})")).await? >= want).then_some(())
    })
    .await;
    let reader = collector_with(|cfg| cfg.source = Some(source(&store.url, dialect))).await;
    let g = eventually("the first revision", 10, || async {
        let g = graph(&reader).await;
        (g["edges"].as_array()?.len() >= 3 && g["revision"].as_u64()? >= 1).then_some(g)
    })
    .await;
    (reader, g)
}

fn stats<'a>(g: &'a Value, s: &str, t: &str) -> &'a Value {
    &edge(g, s, t).unwrap_or_else(|| panic!("edge {s} -> {t} in {g}"))["stats"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_standard_metrics_give_kialis_graph() {
    let pp = ("productpage", "v1");
    let mut text = "# TYPE istio_requests_total counter\n".to_owned();
    let mut hist = "# TYPE istio_request_duration_milliseconds histogram\n".to_owned();
    let h = "istio_request_duration_milliseconds";
    // productpage -> reviews v2: 90 ok at 20 ms and 10 503s at 300 ms, reported by both proxies
    // (counted once, from the destination), and 4 that never reached reviews (UF, source only).
    for reporter in ["destination", "source"] {
        let ok = istio_labels(reporter, pp, Some(("reviews", "v2")), 200, "-", true);
        let bad = istio_labels(reporter, pp, Some(("reviews", "v2")), 503, "-", true);
        text += &format!("istio_requests_total{{{ok}}} 90\nistio_requests_total{{{bad}}} 10\n");
        hist += &histogram(h, &ok, &ISTIO_BUCKETS, &[(20.0, 90)]);
        hist += &histogram(h, &bad, &ISTIO_BUCKETS, &[(300.0, 10)]);
    }
    let uf = istio_labels("source", pp, Some(("reviews", "v2")), 503, "UF,URX", true);
    text += &format!("istio_requests_total{{{uf}}} 4\n");
    // The ingress's calls from outside the mesh, in plaintext.
    let user = istio_labels("destination", ("unknown", ""), Some(pp), 200, "-", false);
    text += &format!("istio_requests_total{{{user}}} 50\n");
    hist += &histogram(h, &user, &ISTIO_BUCKETS, &[(40.0, 50)]);
    // A call out of the mesh: only the source proxy reports it.
    let out = istio_labels("source", pp, None, 200, "-", false);
    text += &format!("istio_requests_total{{{out}}} 6\n");
    // Multi-cluster: reviews v3 in cluster east calls ratings in cluster west (every other series
    // is in the cluster Istio calls `Kubernetes` when nobody named it: no cluster to show).
    let across = istio_labels("destination", ("reviews", "v3"), Some(("ratings", "v1")), 200, "-", true)
        .replace("source_cluster=\"Kubernetes\"", "source_cluster=\"east\"")
        .replace("destination_cluster=\"Kubernetes\"", "destination_cluster=\"west\"");
    text += &format!("istio_requests_total{{{across}}} 20\n");
    text += &hist;
    let dir = tempfile::tempdir().unwrap();
    let target = exporter(std::sync::Arc::new(std::sync::Mutex::new(text))).await;
    let store = prometheus(dir.path(), &[target]).await;
    let (reader, g) = store_graph(&store, Dialect::Istio, "istio_requests_total", 8.0).await;

    let reviews = stats(&g, "bookinfo/productpage/v1", "bookinfo/reviews/v2");
    assert_eq!((reviews["requests"].as_u64(), reviews["errors"].as_u64()), (Some(104), Some(14)), "{reviews}");
    assert_eq!(reviews["success_pct"].as_f64(), Some(86.54), "{reviews}");
    // Over the window the store was read for (a minute), not since this collector started.
    assert!(reviews["rps"].as_f64().unwrap() < 2.0, "{reviews}");
    // mTLS as the destination reports it; the source proxy says "unknown" of the 4 it alone saw.
    assert_eq!(reviews["mtls_pct"].as_f64(), Some(96.15), "{reviews}");
    let p = &reviews["latency_ms"];
    let (p50, p99) = (p["p50"].as_f64().unwrap(), p["p99"].as_f64().unwrap());
    assert!(p50 > 10.0 && p50 <= 25.0, "p50 in the 10-25 ms bucket: {p}");
    assert!(p99 > 250.0 && p99 <= 500.0, "p99 in the 250-500 ms bucket: {p}");
    let user = stats(&g, "user", "bookinfo/productpage/v1");
    assert_eq!((user["requests"].as_u64(), user["mtls_pct"].as_f64()), (Some(50), Some(0.0)), "{user}");
    let out = stats(&g, "bookinfo/productpage/v1", "ext:api.stripe.com");
    assert_eq!(out["requests"].as_u64(), Some(6), "{out}");
    let across = stats(&g, "bookinfo/reviews/v3@east", "bookinfo/ratings/v1@west");
    assert_eq!((across["requests"].as_u64(), across["mtls_pct"].as_f64()), (Some(20), Some(100.0)), "{across}");
    assert_eq!(node(&g, "bookinfo/ratings/v1@west").unwrap()["cluster"], "west");
    assert_eq!(g["edges"].as_array().unwrap().len(), 4, "{g}");
    reader.shutdown().await.unwrap();

    // The binary, with no collector running: `graph --prometheus` reads the store itself.
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshlens"))
        .args(["graph", "--prometheus", &store.url, "--prometheus-dialect", "istio", "-o", "json"])
        .output()
        .await
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let g: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(stats(&g, "bookinfo/productpage/v1", "bookinfo/reviews/v2")["requests"], 104, "{g}");
    let stat = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshlens"))
        .args(["stat", "--prometheus", &store.url])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&stat.stdout);
    assert!(stat.status.success() && table.contains("reviews") && table.contains("86.54"), "{table}");
    // An unreachable store is named, with exit code 1.
    let down = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshlens"))
        .args(["graph", "--prometheus", &format!("http://127.0.0.1:{}", free_port())])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&down.stderr);
    assert_eq!(down.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot query http://127.0.0.1:"), "{err}");
}

/// Linkerd's default latency buckets (ms).
const LINKERD_BUCKETS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 1000.0, 2000.0, 3000.0,
    4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linkerd_proxy_metrics_give_linkerd_viz_graph() {
    let outbound = |from: &str, to: &str, status: &str, grpc: &str| {
        format!(
            "direction=\"outbound\",authority=\"{to}-svc.emojivoto.svc.cluster.local:8080\",dst_control_plane_ns=\"linkerd\",dst_deployment=\"{to}\",dst_namespace=\"emojivoto\",dst_pod_template_hash=\"5f8c9d\",dst_serviceaccount=\"{to}\",tls=\"true\",server_id=\"{to}.emojivoto.serviceaccount.identity.linkerd.cluster.local\",status_code=\"{status}\",grpc_status=\"{grpc}\",deployment=\"{from}\",namespace=\"emojivoto\",pod=\"{from}-7d9f-abcde\",control_plane_ns=\"linkerd\",serviceaccount=\"{from}\""
        )
    };
    let inbound = |to: &str, tls: &str, status: &str| {
        format!(
            "direction=\"inbound\",authority=\"{to}-svc.emojivoto:80\",tls=\"{tls}\",status_code=\"{status}\",grpc_status=\"\",deployment=\"{to}\",namespace=\"emojivoto\",pod=\"{to}-6c6b-fghij\",control_plane_ns=\"linkerd\",serviceaccount=\"{to}\""
        )
    };
    let mut text = "# TYPE response_total counter\n".to_owned();
    let mut hist = "# TYPE response_latency_ms histogram\n".to_owned();
    // vote-bot -> web: 50 ok (and web's own inbound view of them, not counted twice).
    let vb = outbound("vote-bot", "web", "200", "");
    text += &format!("response_total{{{vb},classification=\"success\",error=\"\"}} 50\n");
    hist += &histogram("response_latency_ms", &vb, &LINKERD_BUCKETS, &[(8.0, 50)]);
    let web_in = inbound("web", "true", "200");
    text += &format!(
        "response_total{{{web_in},client_id=\"default.emojivoto.serviceaccount.identity.linkerd.cluster.local\",classification=\"success\",error=\"\"}} 50\n"
    );
    // web -> emoji over gRPC: 30 OK, 3 UNKNOWN (Linkerd classifies a non-OK gRPC status as failure).
    let ok = outbound("web", "emoji", "200", "0");
    let bad = outbound("web", "emoji", "200", "2");
    text += &format!("response_total{{{ok},classification=\"success\",error=\"\"}} 30\n");
    text += &format!("response_total{{{bad},classification=\"failure\",error=\"\"}} 3\n");
    hist += &histogram("response_latency_ms", &ok, &LINKERD_BUCKETS, &[(15.0, 30)]);
    hist += &histogram("response_latency_ms", &bad, &LINKERD_BUCKETS, &[(150.0, 3)]);
    // An unmeshed client's calls to web, seen only by web's proxy.
    let plain = inbound("web", "no_identity", "200");
    text += &format!(
        "response_total{{{plain},no_tls_reason=\"no_tls_from_remote\",classification=\"success\",error=\"\"}} 7\n"
    );
    text += &hist;
    let dir = tempfile::tempdir().unwrap();
    let body = std::sync::Arc::new(std::sync::Mutex::new(text.clone()));
    let target = exporter(body.clone()).await;
    let store = prometheus(dir.path(), &[target]).await;
    let (reader, g) = store_graph(&store, Dialect::Linkerd, "response_total", 5.0).await;

    let web = stats(&g, "emojivoto/vote-bot", "emojivoto/web");
    assert_eq!((web["requests"].as_u64(), web["errors"].as_u64()), (Some(50), Some(0)), "{web}");
    assert_eq!(web["mtls_pct"].as_f64(), Some(100.0), "{web}");
    let p50 = web["latency_ms"]["p50"].as_f64().unwrap();
    assert!(p50 > 5.0 && p50 <= 10.0, "p50 in the 5-10 ms bucket: {web}");
    let emoji = stats(&g, "emojivoto/web", "emojivoto/emoji");
    assert_eq!((emoji["requests"].as_u64(), emoji["errors"].as_u64()), (Some(33), Some(3)), "{emoji}");
    assert_eq!(emoji["success_pct"].as_f64(), Some(90.91), "{emoji}");
    let p99 = emoji["latency_ms"]["p99"].as_f64().unwrap();
    assert!(p99 > 100.0 && p99 <= 200.0, "p99 in the 100-200 ms bucket: {emoji}");
    let user = stats(&g, "user", "emojivoto/web");
    assert_eq!((user["requests"].as_u64(), user["mtls_pct"].as_f64()), (Some(7), Some(0.0)), "{user}");
    assert_eq!(g["edges"].as_array().unwrap().len(), 3, "{g}");

    // Live: web starts calling voting; the next revisions have the edge, the diff says so, and
    // the revision before it still reads without it.
    let before = g["revision"].as_u64().unwrap();
    let voting = outbound("web", "voting", "200", "0");
    *body.lock().unwrap() = format!("{text}response_total{{{voting},classification=\"success\",error=\"\"}} 12\n");
    let after = eventually("the new edge", 30, || async {
        let g = graph(&reader).await;
        (edge(&g, "emojivoto/web", "emojivoto/voting")?["stats"]["requests"] == 12).then_some(g)
    })
    .await;
    let r2 = after["revision"].as_u64().unwrap();
    let base = reader.api_url();
    let (status, diff) = get_json(&format!("{base}/api/v1/diff?from={before}&to={r2}")).await;
    assert_eq!(status, 200, "{diff}");
    assert!(
        diff["topology"]["edges_added"].as_array().unwrap().iter().any(|e| e == "emojivoto/web->emojivoto/voting"),
        "{diff}"
    );
    let (_, old) = get_json(&format!("{base}/api/v1/graph?at={before}")).await;
    assert!(edge(&old, "emojivoto/web", "emojivoto/voting").is_none(), "{old}");
    assert_eq!(stats(&old, "emojivoto/web", "emojivoto/emoji")["requests"], 33);
    reader.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_remote_writes_with_its_labels_and_once_more_when_stopped() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let prom = prometheus(dir.path(), &[]).await;
    let write = format!("{}/api/v1/write", prom.url);
    // An interval longer than the test: only the write at shutdown can bring the series.
    let mut p = collector_process(&[
        "--in-memory",
        "--remote-write",
        &write,
        "--remote-write-interval",
        "1h",
        "--remote-write-label",
        "region=test-1",
    ])
    .await;
    let mut client = TraceServiceClient::connect(p.grpc.clone()).await.unwrap();
    client.export(pairs(1, ("a", ""), ("b", ""), 6, 200, 2)).await.unwrap();
    eventually("the edge in the collector", 20, || async {
        let (_, g) = get_json(&format!("{}/api/v1/graph", p.api)).await;
        (edge(&g, "default/a", "default/b")?["stats"]["requests"] == 6).then_some(())
    })
    .await;
    let pid = p.child.id().unwrap();
    let _ = std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status();
    let status = tokio::time::timeout(Duration::from_secs(20), p.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    let q = "traces_service_graph_request_total{region=\"test-1\",client=\"a\",server=\"b\"}";
    let v = eventually("the last write in Prometheus", 20, || async { query_value(&prom.url, q).await }).await;
    assert_eq!(v, 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_the_queries_is_named_with_its_reason() {
    // A Prometheus that may load only 10 samples a query refuses the bucket queries.
    let mut text = "# TYPE response_latency_ms histogram\n".to_owned();
    let labels =
        "direction=\"inbound\",tls=\"no_identity\",status_code=\"200\",deployment=\"web\",namespace=\"emojivoto\"";
    text += &histogram("response_latency_ms", labels, &LINKERD_BUCKETS, &[(8.0, 5)]);
    let dir = tempfile::tempdir().unwrap();
    let target = exporter(std::sync::Arc::new(std::sync::Mutex::new(text))).await;
    let store = prometheus_with(dir.path(), &[target], &["--query.max-samples=10"]).await;
    eventually("Prometheus to scrape the exporter", 60, || async {
        (query_value(&store.url, "count(up == 1)").await? >= 1.0).then_some(())
    })
    .await;
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshlens"))
        .args(["graph", "--prometheus", &store.url, "--prometheus-dialect", "linkerd"])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("refused \"response_latency_ms_bucket\"") && err.contains("too many samples"), "{err}");
}
