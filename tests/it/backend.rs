//! A small programmable HTTP/1.1 + h2c backend on `127.0.0.1:0` for the agent tests, and helpers to
//! put agents in front of it.
//!
//! Paths: `/ok`; `/status/CODE`; `/sleep/MS`; `/flaky/N` (503 for this backend's first N hits of
//! that path, then 200); `/headers` (the request headers as JSON); `/bytes/N` (N bytes, streamed);
//! `/upload` (reads the body, answers its length). Any path answers 500 while `fail` is set.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use meshlens_agent::{AgentConfig, Options, Running};

/// A running backend.
pub(crate) struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests it received.
    pub hits: Arc<AtomicU64>,
    /// Bytes of request bodies it read.
    pub uploaded: Arc<AtomicU64>,
    /// Answer 500 to everything while set.
    pub fail: Arc<AtomicBool>,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: u16, text: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(text.into()).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

struct State {
    hits: Arc<AtomicU64>,
    uploaded: Arc<AtomicU64>,
    fail: Arc<AtomicBool>,
    flaky: AtomicU64,
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    if state.fail.load(Ordering::SeqCst) {
        return Ok(full(500, "failing on purpose"));
    }
    let path = req.uri().path().to_owned();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (verb, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    Ok(match verb {
        "ok" | "" => full(200, "ok"),
        "status" => full(arg.parse().unwrap_or(400), format!("status {arg}")),
        "sleep" => {
            tokio::time::sleep(Duration::from_millis(arg.parse().unwrap_or(0))).await;
            full(200, "slept")
        }
        // `/jitter/LO/HI`: sleeps a spread of LO..=HI ms, the same sequence every run.
        "jitter" => {
            let mut bounds = arg.split('/').map(|v| v.parse::<u64>().unwrap_or(0));
            let (lo, hi) = (bounds.next().unwrap_or(0), bounds.next().unwrap_or(0));
            let n = state.hits.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(lo + n.wrapping_mul(7919) % (hi.saturating_sub(lo) + 1))).await;
            full(200, "jittered")
        }
        "flaky" => {
            let n: u64 = arg.parse().unwrap_or(0);
            if state.flaky.fetch_add(1, Ordering::SeqCst) < n { full(503, "flaky") } else { full(200, "ok") }
        }
        "headers" => {
            let map: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.to_str().unwrap_or(""))))
                .collect();
            let mut r = full(200, serde_json::to_vec(&map).unwrap());
            r.headers_mut().insert("connection", "x-backend-private".parse().unwrap());
            r.headers_mut().insert("x-backend-private", "1".parse().unwrap());
            r.headers_mut().insert("x-version", format!("{:?}", req.version()).parse().unwrap());
            r
        }
        "bytes" => {
            let total: u64 = arg.parse().unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(total, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let n = left.min(chunk.len() as u64);
                    Some((Ok::<_, Infallible>(Frame::data(chunk.slice(..n as usize))), left - n))
                }
            });
            Response::new(StreamBody::new(stream).boxed())
        }
        "upload" => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return Ok(full(400, "broken upload")) };
                if let Some(d) = frame.data_ref() {
                    n += d.len() as u64;
                    state.uploaded.fetch_add(d.len() as u64, Ordering::SeqCst);
                }
            }
            full(200, n.to_string())
        }
        _ => full(404, "no such path"),
    })
}

impl Backend {
    /// Starts a backend on `127.0.0.1:0`.
    pub(crate) async fn start() -> Backend {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts a backend on `addr`.
    pub(crate) async fn start_on(addr: SocketAddr) -> Backend {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            hits: Arc::default(),
            uploaded: Arc::default(),
            fail: Arc::default(),
            flaky: AtomicU64::new(0),
        });
        let backend =
            Backend { addr, hits: state.hits.clone(), uploaded: state.uploaded.clone(), fail: state.fail.clone() };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        backend
    }

    /// Requests received so far.
    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

/// An agent config: `workload` as `ns/app/version`, its app at `app`, calling `services` (YAML
/// under `services:`), with `policy` (YAML under `policy: services:`), exporting to `collector`.
pub(crate) fn agent_yaml(
    workload: &str,
    app: SocketAddr,
    services: &str,
    policy: &str,
    collector: Option<&str>,
) -> String {
    let mut w = workload.split('/');
    let (ns, name, version) = (w.next().unwrap(), w.next().unwrap(), w.next().unwrap());
    let mut y = format!(
        "workload: {{namespace: {ns}, app: {name}, version: {version}}}\n\
         inbound: {{listen: '127.0.0.1:0', app: '{app}'}}\n\
         outbound: {{listen: '127.0.0.1:0'}}\n\
         admin: {{listen: '127.0.0.1:0'}}\n\
         limits: {{header_read_timeout: 500ms, max_header_bytes: 16384}}\n"
    );
    if let Some(c) = collector {
        y.push_str(&format!("telemetry: {{collector: '{c}', interval: 200ms, sampling: 1.0}}\n"));
    }
    if !services.is_empty() {
        y.push_str("services:\n");
        for line in services.lines() {
            y.push_str(&format!("  {line}\n"));
        }
    }
    if !policy.is_empty() {
        y.push_str("policy:\n  services:\n");
        for line in policy.lines() {
            y.push_str(&format!("    {line}\n"));
        }
    }
    y
}

/// Starts an agent from YAML.
pub(crate) async fn agent(yaml: &str) -> Running {
    let config = AgentConfig::parse(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    meshlens_agent::start(config, Options::default()).await.unwrap()
}

/// A caller agent `shop/a/v1` whose service `b` has the given versions (`(version, [endpoints])`),
/// with `policy` for `b` (the YAML map after `b: `).
pub(crate) async fn caller(versions: &[(&str, Vec<SocketAddr>)], policy: &str, collector: Option<&str>) -> Running {
    let mut services = String::from("b:\n  versions:\n");
    for (v, eps) in versions {
        let list: Vec<String> = eps.iter().map(|a| format!("'{a}'")).collect();
        services.push_str(&format!("    {v}: [{}]\n", list.join(", ")));
    }
    let policy = if policy.is_empty() { String::new() } else { format!("b: {policy}") };
    let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
    agent(&agent_yaml("shop/a/v1", unused, &services, &policy, collector)).await
}

/// An agent `shop/b/VERSION` in front of `backend`.
pub(crate) async fn callee(version: &str, backend: &Backend, collector: Option<&str>) -> Running {
    agent(&agent_yaml(&format!("shop/b/{version}"), backend.addr, "", "", collector)).await
}

/// One hop reporting to a collector: an app calls `b` through agent `shop/a/v1` (with `policy`, the
/// policy YAML), whose agent `shop/b/v1` fronts a backend.
pub(crate) struct Hop {
    pub backend: Backend,
    pub a: Running,
    pub b: Running,
    pub app: App,
}

impl Hop {
    /// Starts both agents, exporting to `collector`.
    pub(crate) async fn start(collector: &meshlens_collector::Running, policy: &str) -> Hop {
        let otlp = format!("http://{}", collector.otlp_grpc_addr);
        let backend = Backend::start().await;
        let b = callee("v1", &backend, Some(&otlp)).await;
        let services = format!("b:\n  versions:\n    v1: ['{}']", b.inbound);
        let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let a = agent(&agent_yaml("shop/a/v1", unused, &services, policy, Some(&otlp))).await;
        let app = App::via(&a);
        Hop { backend, a, b, app }
    }

    /// Stops both agents.
    pub(crate) async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

/// A client for the app side: requests go to the agent's outbound listener, naming the service in
/// the Host header, as an app using the agent as its HTTP proxy would.
pub(crate) struct App {
    client: reqwest::Client,
}

impl App {
    /// Sends through `agent`'s outbound listener.
    pub(crate) fn via(agent: &Running) -> App {
        App {
            client: reqwest::Client::builder()
                .proxy(reqwest::Proxy::http(format!("http://{}", agent.outbound.unwrap())).unwrap())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// GET `http://SERVICE{path}`: status and body.
    pub(crate) async fn get(&self, service: &str, path: &str) -> (u16, String) {
        let r = self.client.get(format!("http://{service}{path}")).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// A request builder for `http://SERVICE{path}`.
    pub(crate) fn request(&self, method: reqwest::Method, service: &str, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("http://{service}{path}"))
    }
}
