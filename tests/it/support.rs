//! Shared helpers: an in-process collector on `127.0.0.1:0`, an HTTP client, and polling the API
//! until the pipeline has caught up (bounded in time).

use std::future::Future;
use std::time::{Duration, Instant};

use meshlens_collector::{CollectorConfig, Running};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use serde_json::Value;

pub(crate) use meshlens_collector::testkit::*;
pub(crate) use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// A collector with test settings.
pub(crate) async fn collector() -> Running {
    collector_with(|_| {}).await
}

/// A collector with test settings, adjusted.
pub(crate) async fn collector_with(adjust: impl FnOnce(&mut CollectorConfig)) -> Running {
    let mut config = CollectorConfig::ephemeral();
    adjust(&mut config);
    meshlens_collector::start(config).await.expect("collector starts")
}

/// An HTTP client.
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

/// GET a URL: status and JSON body (`Value::Null` if not JSON).
pub(crate) async fn get_json(url: &str) -> (u16, Value) {
    let r = http().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Polls `f` every 50 ms until it returns `Some`, failing after `secs` seconds with `what`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the latest graph has an edge `source -> target` with at least `requests` requests,
/// and returns the graph.
pub(crate) async fn wait_edge(c: &Running, query: &str, source: &str, target: &str, requests: u64) -> Value {
    let url = format!("{}/api/v1/graph{query}", c.api_url());
    eventually(&format!("edge {source}->{target} with {requests} requests"), 20, || async {
        let (status, g) = get_json(&url).await;
        let n = edge(&g, source, target).map(|e| e["stats"]["requests"].as_u64().unwrap_or(0)).unwrap_or(0);
        (status == 200 && n >= requests && g["revision"].as_u64().unwrap_or(0) >= 1).then_some(g)
    })
    .await
}

/// The edge `source -> target` of a graph body.
pub(crate) fn edge<'a>(g: &'a Value, source: &str, target: &str) -> Option<&'a Value> {
    g["edges"].as_array()?.iter().find(|e| e["source"] == source && e["target"] == target)
}

/// The node `id` of a graph body.
pub(crate) fn node<'a>(g: &'a Value, id: &str) -> Option<&'a Value> {
    g["nodes"].as_array()?.iter().find(|n| n["id"] == id)
}

/// `n` client/server span pairs from `a` to `b` (apps in namespace `default`, versions given), the
/// server answering `status`, lasting `server_ms`.
pub(crate) fn pairs(
    trace: u64,
    a: (&str, &str),
    b: (&str, &str),
    n: u64,
    status: i64,
    server_ms: u64,
) -> ExportTraceServiceRequest {
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for i in 0..n {
        let id = trace * 1_000_000 + i * 2 + 1;
        clients.push(span(SpanKind::Client, trace, id, Some(7), 1, server_ms * 1000 + 500, vec![], false));
        servers.push(span(
            SpanKind::Server,
            trace,
            id + 1,
            Some(id),
            1,
            server_ms * 1000,
            vec![kv_int("http.response.status_code", status)],
            false,
        ));
    }
    traces(vec![(resource("", a.0, a.1), clients), (resource("", b.0, b.1), servers)])
}

/// Exports spans over OTLP/gRPC.
pub(crate) async fn grpc_traces(
    c: &Running,
    req: ExportTraceServiceRequest,
) -> Result<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse, tonic::Status> {
    let mut client = TraceServiceClient::connect(format!("http://{}", c.otlp_grpc_addr)).await.unwrap();
    client.export(req).await.map(|r| r.into_inner())
}

/// Exports metrics over OTLP/gRPC.
pub(crate) async fn grpc_metrics(
    c: &Running,
    req: ExportMetricsServiceRequest,
) -> Result<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse, tonic::Status> {
    let mut client = MetricsServiceClient::connect(format!("http://{}", c.otlp_grpc_addr)).await.unwrap();
    client.export(req).await.map(|r| r.into_inner())
}

/// POSTs a body to an OTLP/HTTP path.
pub(crate) async fn post(c: &Running, path: &str, content_type: &str, gzip: bool, body: Vec<u8>) -> reqwest::Response {
    let mut rb = http().post(format!("http://{}{path}", c.otlp_http_addr)).header("content-type", content_type);
    if gzip {
        rb = rb.header("content-encoding", "gzip");
    }
    rb.body(body).send().await.unwrap()
}

/// POSTs spans as protobuf over OTLP/HTTP.
pub(crate) async fn http_traces(c: &Running, req: &ExportTraceServiceRequest) -> reqwest::Response {
    post(c, "/v1/traces", "application/x-protobuf", false, req.encode_to_vec()).await
}

/// Gzip-compresses bytes.
pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The value of a Prometheus sample line starting with `prefix`.
pub(crate) fn prom_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

/// A free loopback port for a server that must be told its port (Prometheus): bind `:0`, read it,
/// release it.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An external program a test needs: `$env` if set, else `default`; fails with how to install it.
pub(crate) fn tool(env: &str, default: &str, what: &str) -> std::path::PathBuf {
    let p = std::env::var_os(env).map(std::path::PathBuf::from).unwrap_or_else(|| default.into());
    assert!(p.exists(), "{} is missing: run .ci/setup (or .ci/test), which installs {what}", p.display());
    p
}

/// Waits for a test app (tests/node, tests/python) to print `listening PORT` on stdout; its port.
pub(crate) async fn listening_port(child: &mut tokio::process::Child) -> u16 {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the app listens within 30 s")
        .unwrap()
        .unwrap_or_default();
    line.strip_prefix("listening ").and_then(|p| p.trim().parse().ok()).expect("listening PORT")
}

/// Stops a test app with SIGTERM (its SDK flushes every span and metric point) and asserts it
/// exited cleanly.
pub(crate) async fn stop_app(mut child: tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
    }
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "the app exited with {status}");
}

/// The edges of a graph body with an end in namespace `ns`.
pub(crate) fn namespace_edges<'a>(g: &'a Value, ns: &str) -> Vec<&'a Value> {
    let prefix = format!("{ns}/");
    g["edges"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| {
                    [&e["source"], &e["target"]]
                        .iter()
                        .any(|end| end.as_str().is_some_and(|id| id.starts_with(&prefix)))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The real `meshlens collector` binary, killed when dropped.
pub(crate) struct Proc {
    /// The process.
    pub child: tokio::process::Child,
    /// `http://` address of OTLP/gRPC.
    pub grpc: String,
    /// `http://` address of the API.
    pub api: String,
    /// `host:port` of OTLP/HTTP.
    pub otlp_http: String,
}

impl Proc {
    /// A line of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`).
    pub(crate) fn status_bytes(&self, key: &str) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {status}"));
        kb * 1024
    }
}

/// Starts the binary's collector on loopback ports with `args` added, and reads its addresses.
pub(crate) async fn collector_process(args: &[&str]) -> Proc {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshlens"))
        .args(["collector", "--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut grpc, mut api, mut otlp_http) = (String::new(), String::new(), String::new());
    while let Some(line) = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap().unwrap() {
        let last = line.split_whitespace().last().unwrap_or_default().to_owned();
        if line.starts_with("  OTLP/gRPC") {
            grpc = format!("http://{last}");
        } else if line.starts_with("  OTLP/HTTP") {
            otlp_http = last.trim_start_matches("http://").trim_end_matches('/').to_owned();
        } else if line.starts_with("  API and UI") {
            api = last;
        } else if line.starts_with("Ctrl-C") {
            break;
        }
    }
    assert!(!grpc.is_empty() && !api.is_empty(), "the collector printed its addresses");
    Proc { child, grpc, api, otlp_http }
}
