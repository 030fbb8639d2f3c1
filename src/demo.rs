//! `meshlens demo`: a live mesh on loopback in one process — Istio's bookinfo (or any mesh file of
//! the same shape), each app version a small HTTP service behind its own agent, an embedded
//! collector, and a constant-rate load on the entry service.
//!
//! The mesh comes from `examples/bookinfo/mesh.yaml` (compiled in) or `--mesh FILE`: apps, their
//! versions' service times, the calls each makes, and the policy every caller's agent applies.
//! `--fault` and `--delay` change apps at start (a version that fails a share of its requests, a
//! slower service). Everything runs in this process on 127.0.0.1, so stopping it leaves nothing
//! behind. Agents talk mutual TLS with certificates from a mesh CA the demo creates at start in a
//! temporary directory (the entry also takes plaintext users, as an ingress would).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use meshlens_agent::config::{
    AgentFile, EndpointSpec, InboundSpec, ListenSpec, ServiceSpec, TelemetrySpec, TlsMode, TlsSpec, WorkloadSpec,
};
use meshlens_agent::{ProxyBody, Upstream};
use meshlens_model::policy::{CallSpec, PolicyFile};
use meshlens_model::time::parse_duration;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The bookinfo mesh, as shipped in `examples/bookinfo/mesh.yaml`.
pub const BOOKINFO: &str = include_str!("../examples/bookinfo/mesh.yaml");

/// A mesh file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    /// Namespace of every app.
    pub namespace: String,
    /// The service the load generator calls.
    pub entry: String,
    /// Apps by name.
    pub apps: BTreeMap<String, AppSpec>,
    /// The policy every caller's agent applies.
    #[serde(default)]
    pub policy: PolicyFile,
}

/// One app as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Its versions.
    pub versions: BTreeMap<String, VersionSpec>,
}

/// One version as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionSpec {
    /// Median service time of the app itself.
    pub latency: String,
    /// Services it calls, in order: a name (the request `GET /NAME`), or `{service, method, path,
    /// headers}` to call one of the service's routes.
    #[serde(default)]
    pub calls: Vec<CallSpec>,
    /// Percent of requests it fails with a 500.
    #[serde(default)]
    pub error_pct: f64,
    /// A fixed time added to every request, before its own work (as `--delay` does).
    pub delay: Option<String>,
}

/// A mesh file or a flag that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DemoError(pub String);

/// One app version, resolved.
#[derive(Clone, Debug)]
struct Version {
    app: String,
    version: String,
    latency: Duration,
    extra_delay: Duration,
    error_pct: f64,
    calls: Vec<CallSpec>,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// The mesh file's text and its name for errors.
    pub mesh: (String, String),
    /// Requests per second to the entry service.
    pub rate: f64,
    /// `APP[-VERSION]=PCT%` faults.
    pub faults: Vec<String>,
    /// `APP[-VERSION]=DURATION` delays.
    pub delays: Vec<String>,
    /// Collector API address (port 0: any free port).
    pub http: SocketAddr,
    /// OTLP/gRPC address.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP address.
    pub otlp_http: SocketAddr,
    /// How often agents export.
    pub export_interval: Duration,
    /// Whether the demo sends its own load at `rate` (off when a caller drives the entry itself,
    /// as `meshlens fidelity` does).
    pub load: bool,
}

/// Which versions `target` (`app` or `app-version`) names.
fn matches(target: &str, v: &Version) -> bool {
    target == v.app || target == format!("{}-{}", v.app, v.version)
}

/// Checks the mesh file and the flags of `config` as [`start`] would, naming what is wrong in the
/// file's terms; the mesh when it is good.
pub(crate) fn check(config: &DemoConfig) -> Result<MeshFile, DemoError> {
    resolve(config).map(|(mesh, _)| mesh)
}

fn resolve(config: &DemoConfig) -> Result<(MeshFile, Vec<Version>), DemoError> {
    let (text, origin) = &config.mesh;
    let mesh: MeshFile = serde_yaml_ng::from_str(text).map_err(|e| DemoError(format!("{origin}: {e}")))?;
    if !mesh.apps.contains_key(&mesh.entry) {
        return Err(DemoError(format!("{origin}: entry: no app {:?} under apps", mesh.entry)));
    }
    mesh.policy.resolve().map_err(|e| DemoError(format!("{origin}: policy.{e}")))?;
    let mut versions = Vec::new();
    for (app, spec) in &mesh.apps {
        if spec.versions.is_empty() {
            return Err(DemoError(format!("{origin}: apps.{app}.versions: needs at least one version")));
        }
        for (version, v) in &spec.versions {
            let at = format!("{origin}: apps.{app}.versions.{version}");
            let latency = parse_duration(&v.latency).map_err(|e| DemoError(format!("{at}.latency: {e}")))?;
            if !(0.0..=100.0).contains(&v.error_pct) {
                return Err(DemoError(format!("{at}.error_pct: {} is not a percent", v.error_pct)));
            }
            for (i, call) in v.calls.iter().enumerate() {
                let callee = call.service();
                if !mesh.apps.contains_key(callee) || callee == app {
                    return Err(DemoError(format!("{at}.calls[{i}]: no other app {callee:?} under apps")));
                }
                call.check().map_err(|e| DemoError(format!("{at}.calls[{i}]: {e}")))?;
            }
            let extra_delay = match &v.delay {
                Some(d) => parse_duration(d).map_err(|e| DemoError(format!("{at}.delay: {e}")))?,
                None => Duration::ZERO,
            };
            versions.push(Version {
                app: app.clone(),
                version: version.clone(),
                latency,
                extra_delay,
                error_pct: v.error_pct,
                calls: v.calls.clone(),
            });
        }
    }
    apply(
        &mut versions,
        "--fault",
        "PCT%",
        &config.faults,
        |pct| {
            pct.trim_end_matches('%')
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
                .ok_or_else(|| format!("{pct:?} is not a percent such as 20%"))
        },
        |v, pct| v.error_pct = pct,
    )?;
    apply(
        &mut versions,
        "--delay",
        "DURATION",
        &config.delays,
        |d| parse_duration(d).map_err(|e| e.to_string()),
        |v, d| v.extra_delay = d,
    )?;
    // Callers need their callees' agents first: refuse call cycles.
    let mut order: Vec<String> = Vec::new();
    while order.len() < mesh.apps.len() {
        let before = order.len();
        for app in mesh.apps.keys() {
            if order.contains(app) {
                continue;
            }
            let ready = versions
                .iter()
                .filter(|v| &v.app == app)
                .all(|v| v.calls.iter().all(|c| order.iter().any(|o| o == c.service())));
            if ready {
                order.push(app.clone());
            }
        }
        if order.len() == before {
            return Err(DemoError(format!("{origin}: apps call each other in a cycle")));
        }
    }
    versions.sort_by_key(|v| order.iter().position(|a| *a == v.app));
    Ok((mesh, versions))
}

/// Applies `APP[-VERSION]=VALUE` flags to the versions they name.
fn apply<T: Copy>(
    versions: &mut [Version],
    flag: &str,
    what: &str,
    values: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
    set: impl Fn(&mut Version, T),
) -> Result<(), DemoError> {
    for text in values {
        let (target, value) =
            text.split_once('=').ok_or_else(|| DemoError(format!("{flag} {text}: expected APP[-VERSION]={what}")))?;
        let value = parse(value).map_err(|e| DemoError(format!("{flag} {text}: {e}")))?;
        let mut hit = false;
        for v in versions.iter_mut().filter(|v| matches(target, v)) {
            set(v, value);
            hit = true;
        }
        if !hit {
            return Err(DemoError(format!("{flag} {text}: no app or app-version {target:?} in the mesh")));
        }
    }
    Ok(())
}

/// A service time around `median`, with a tail (lognormal, σ = 0.4).
fn draw(median: Duration) -> Duration {
    let (u1, u2) = (fastrand::f64().max(1e-12), fastrand::f64());
    let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    median.mul_f64((0.4 * normal).exp().min(20.0))
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// An app version. It calls its callees through its agent's outbound listener, which is known
/// only once the agent is up (after the app, which the agent forwards to).
struct App {
    v: Version,
    outbound: std::sync::OnceLock<Arc<Upstream>>,
}

async fn serve_app(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let v = &app.v;
    tokio::time::sleep(draw(v.latency) + v.extra_delay).await;
    if v.error_pct > 0.0 && fastrand::f64() * 100.0 < v.error_pct {
        return Ok(reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{}-{} failed (demo fault)\n", v.app, v.version)));
    }
    let traceparent = req.headers().get("traceparent").cloned();
    let mut parts = Vec::new();
    for spec in &v.calls {
        let Some(outbound) = app.outbound.get() else { break };
        let callee = spec.service();
        let mut call = Request::new(ProxyBody::empty());
        *call.uri_mut() = spec.path().parse().unwrap_or_default();
        *call.method_mut() = spec.method().parse().unwrap_or_default();
        if let Ok(host) = callee.parse() {
            call.headers_mut().insert(http::header::HOST, host);
        }
        if let CallSpec::Request(r) = spec {
            for (name, value) in &r.headers {
                if let (Ok(n), Ok(v)) =
                    (http::HeaderName::try_from(name.as_str()), http::HeaderValue::try_from(value.as_str()))
                {
                    call.headers_mut().insert(n, v);
                }
            }
        }
        if let Some(tp) = &traceparent {
            call.headers_mut().insert("traceparent", tp.clone());
        }
        let status = match outbound.send(call, Duration::from_secs(1)).await {
            Ok(resp) => {
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                status
            }
            Err(_) => StatusCode::BAD_GATEWAY,
        };
        if status.is_server_error() {
            return Ok(reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}-{}: {callee} answered {status}\n", v.app, v.version),
            ));
        }
        parts.push(format!("\"{callee}\":{}", status.as_u16()));
    }
    Ok(reply(StatusCode::OK, format!("{{\"app\":\"{}\",\"version\":\"{}\",{}}}\n", v.app, v.version, parts.join(","))))
}

async fn start_app(app: Arc<App>) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| serve_app(app.clone(), req));
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok((addr, task))
}

/// One workload of a running demo.
#[derive(Clone, Debug)]
pub struct DemoWorkload {
    /// `ns/app/version`.
    pub id: String,
    /// The agent's inbound address.
    pub inbound: SocketAddr,
    /// The agent's admin address.
    pub admin: SocketAddr,
}

/// A running demo.
pub struct RunningDemo {
    /// The collector.
    pub collector: meshlens_collector::Running,
    /// The workloads, callees first.
    pub workloads: Vec<DemoWorkload>,
    /// Load requests sent, answered below 500, and failed.
    pub load: Arc<[AtomicU64; 3]>,
    agents: Vec<meshlens_agent::Running>,
    tasks: Vec<JoinHandle<()>>,
    /// The load generator: it returns once `stop` is sent (its requests in flight finish in the
    /// agents' drain).
    generator: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    _certs: Certs,
}

impl RunningDemo {
    /// The collector's API URL.
    pub fn api_url(&self) -> String {
        self.collector.api_url()
    }

    /// Stops the load, then the agents (each drains its open requests and exports once more, waiting
    /// for the collector's answer), then the collector (which takes in all it has acknowledged).
    pub async fn shutdown(self) -> Result<(), DemoError> {
        let _ = self.stop.send(true);
        if let Some(g) = self.generator {
            let _ = g.await;
        }
        for a in self.agents.into_iter().rev() {
            a.shutdown().await;
        }
        for t in self.tasks {
            t.abort();
        }
        self.collector.shutdown().await.map_err(DemoError)
    }
}

fn agent_config(
    namespace: &str,
    v: &Version,
    app: SocketAddr,
    (otlp, interval): (SocketAddr, Duration),
    callees: &BTreeMap<String, Vec<(String, SocketAddr)>>,
    policy: &PolicyFile,
    tls: Option<TlsSpec>,
) -> Result<meshlens_agent::AgentConfig, DemoError> {
    let mut file = AgentFile {
        workload: WorkloadSpec {
            namespace: Some(namespace.to_owned()),
            app: v.app.clone(),
            version: Some(v.version.clone()),
        },
        inbound: InboundSpec { listen: "127.0.0.1:0".into(), app: app.to_string(), ..InboundSpec::default() },
        admin: Some(ListenSpec { listen: "127.0.0.1:0".into() }),
        outbound: (!v.calls.is_empty()).then(|| ListenSpec { listen: "127.0.0.1:0".into() }),
        telemetry: Some(TelemetrySpec {
            collector: format!("http://{otlp}"),
            interval: Some(interval),
            sampling: Some(0.05),
            ..TelemetrySpec::default()
        }),
        tls,
        policy: Some(PolicyFile::default()),
        ..AgentFile::default()
    };
    for callee in v.calls.iter().map(CallSpec::service) {
        let versions = callees
            .get(callee)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|(version, addr)| (version.clone(), vec![EndpointSpec::Address(addr.to_string())]))
            .collect();
        file.services.insert(callee.to_owned(), ServiceSpec { namespace: None, versions });
        if let (Some(p), Some(policies)) = (policy.services.get(callee), file.policy.as_mut()) {
            policies.services.insert(callee.to_owned(), p.clone());
        }
    }
    meshlens_agent::AgentConfig::from_file(&file, &format!("the agent of {}-{}", v.app, v.version))
        .map_err(|e| DemoError(e.to_string()))
}

/// Starts the collector, the apps and their agents, and the load.
pub async fn start(config: DemoConfig) -> Result<RunningDemo, DemoError> {
    let (mesh, versions) = resolve(&config)?;
    if config.load && !(config.rate > 0.0 && config.rate.is_finite()) {
        return Err(DemoError(format!("--rate {}: must be more than 0", config.rate)));
    }
    let collector = meshlens_collector::start(meshlens_collector::CollectorConfig {
        otlp_grpc: config.otlp_grpc,
        otlp_http: config.otlp_http,
        http: config.http,
        data_dir: None,
        ..meshlens_collector::CollectorConfig::default()
    })
    .await
    .map_err(|e| DemoError(format!("starting the collector: {e}")))?;
    let certs = Certs::new()?;
    let mut callees: BTreeMap<String, Vec<(String, SocketAddr)>> = BTreeMap::new();
    let (mut agents, mut tasks, mut workloads) = (Vec::new(), Vec::new(), Vec::new());
    for v in &versions {
        let app = Arc::new(App { v: v.clone(), outbound: std::sync::OnceLock::new() });
        let (app_addr, task) = start_app(app.clone()).await.map_err(|e| DemoError(format!("starting an app: {e}")))?;
        tasks.push(task);
        let agent_cfg = agent_config(
            &mesh.namespace,
            v,
            app_addr,
            (collector.otlp_grpc_addr, config.export_interval),
            &callees,
            &mesh.policy,
            Some(tls_for(&certs, &mesh.namespace, v, v.app == mesh.entry)?),
        )?;
        let id = agent_cfg.workload.id();
        let agent = meshlens_agent::start(agent_cfg, meshlens_agent::Options::default())
            .await
            .map_err(|e| DemoError(format!("starting the agent of {id}: {e}")))?;
        if let Some(out) = agent.outbound {
            let _ = app.outbound.set(Arc::new(Upstream::new(&out.to_string())));
        }
        callees.entry(v.app.clone()).or_default().push((v.version.clone(), agent.inbound));
        workloads.push(DemoWorkload { id, inbound: agent.inbound, admin: agent.admin });
        agents.push(agent);
    }
    let (stop, stop_rx) = watch::channel(false);
    let load: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let entry = callees.get(&mesh.entry).cloned().unwrap_or_default();
    let targets: Vec<Arc<Upstream>> = entry.iter().map(|(_, a)| Arc::new(Upstream::new(&a.to_string()))).collect();
    let generator =
        config.load.then(|| tokio::spawn(generate(targets, mesh.entry.clone(), config.rate, load.clone(), stop_rx)));
    Ok(RunningDemo { collector, workloads, load, agents, tasks, generator, stop, _certs: certs })
}

/// The demo's own mesh CA and certificates, in a directory removed when the demo stops.
struct Certs {
    dir: std::path::PathBuf,
}

impl Certs {
    fn new() -> Result<Self, DemoError> {
        let dir = std::env::temp_dir().join(format!("meshlens-demo-{}-{}", std::process::id(), fastrand::u64(..)));
        meshlens_agent::tls::init_ca(&dir, meshlens_agent::tls::TRUST_DOMAIN)
            .map_err(|e| DemoError(format!("creating the demo's mesh CA: {e}")))?;
        Ok(Self { dir })
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An app version's `tls:` block: its own certificate; strict, except at the entry, which takes
/// users without certificates too (permissive), as a mesh's ingress does.
fn tls_for(certs: &Certs, namespace: &str, v: &Version, entry: bool) -> Result<TlsSpec, DemoError> {
    let stem = format!("{namespace}-{}-{}", v.app, v.version);
    let issued = meshlens_agent::tls::issue(
        &certs.dir,
        namespace,
        &v.app,
        &stem,
        std::time::SystemTime::now() - Duration::from_secs(60),
        Duration::from_secs(7 * 24 * 3600),
    )
    .map_err(|e| DemoError(format!("issuing {}-{}'s certificate: {e}", v.app, v.version)))?;
    Ok(TlsSpec {
        cert: issued.cert.display().to_string(),
        key: issued.key.display().to_string(),
        ca: certs.dir.join("ca.pem").display().to_string(),
        mode: Some(if entry { TlsMode::Permissive } else { TlsMode::Strict }),
        trust_domain: None,
    })
}

/// Sends GET /ENTRY at `rate` to the entry service's agents (as users with no agent of their own),
/// on time whatever the answers: open loop.
async fn generate(
    targets: Vec<Arc<Upstream>>,
    entry: String,
    rate: f64,
    counts: Arc<[AtomicU64; 3]>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut i = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(target) = targets.get(i % targets.len().max(1)).cloned() else { return };
        i += 1;
        let (counts, entry) = (counts.clone(), entry.clone());
        tokio::spawn(async move {
            counts[0].fetch_add(1, Ordering::Relaxed);
            let mut req = Request::new(ProxyBody::empty());
            *req.uri_mut() = format!("/{entry}").parse().unwrap_or_default();
            if let Ok(host) = entry.parse() {
                req.headers_mut().insert(http::header::HOST, host);
            }
            let ok = match target.send(req, Duration::from_secs(1)).await {
                Ok(resp) => {
                    let ok = !resp.status().is_server_error();
                    let _ = resp.into_body().collect().await;
                    ok
                }
                Err(_) => false,
            };
            counts[if ok { 1 } else { 2 }].fetch_add(1, Ordering::Relaxed);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mesh: &str, faults: &[&str], delays: &[&str]) -> DemoConfig {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        DemoConfig {
            mesh: (mesh.to_owned(), "mesh.yaml".to_owned()),
            rate: 1.0,
            faults: faults.iter().map(|s| s.to_string()).collect(),
            delays: delays.iter().map(|s| s.to_string()).collect(),
            http: any,
            otlp_grpc: any,
            otlp_http: any,
            export_interval: Duration::from_secs(1),
            load: true,
        }
    }

    #[test]
    fn bookinfo_resolves_callees_first_and_takes_faults() {
        let (_, versions) = resolve(&config(BOOKINFO, &["reviews-v3=20%"], &["ratings=100ms"])).unwrap();
        let ids: Vec<String> = versions.iter().map(|v| format!("{}-{}", v.app, v.version)).collect();
        assert_eq!(ids.len(), 6);
        let pos = |id: &str| ids.iter().position(|x| x == id).unwrap();
        assert!(pos("ratings-v1") < pos("reviews-v2") && pos("reviews-v1") < pos("productpage-v1"));
        let v3 = versions.iter().find(|v| v.app == "reviews" && v.version == "v3").unwrap();
        assert_eq!(v3.error_pct, 20.0);
        assert!(versions.iter().filter(|v| v.app == "reviews" && v.version != "v3").all(|v| v.error_pct == 0.0));
        assert_eq!(versions.iter().find(|v| v.app == "ratings").unwrap().extra_delay, Duration::from_millis(100));
    }

    /// The real topologies in examples/ are meshes the demo runs: every callee exists, no cycle.
    #[test]
    fn the_real_topologies_resolve() {
        for (file, text, apps) in [
            ("online-boutique", include_str!("../examples/online-boutique/mesh.yaml"), 11),
            ("social-network", include_str!("../examples/social-network/mesh.yaml"), 27),
            ("train-ticket", include_str!("../examples/train-ticket/mesh.yaml"), 42),
        ] {
            let (mesh, versions) = resolve(&config(text, &[], &[])).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!((mesh.apps.len(), versions.len()), (apps, apps), "{file}");
        }
    }

    #[test]
    fn bad_meshes_and_flags_are_explained() {
        let cases = [
            (config(BOOKINFO, &["reviews-v9=20%"], &[]), "--fault reviews-v9=20%: no app or app-version"),
            (config(BOOKINFO, &["reviews=120%"], &[]), "is not a percent"),
            (config(BOOKINFO, &[], &["ratings"]), "expected APP[-VERSION]=DURATION"),
            (config(&BOOKINFO.replace("latency: 2ms}", "latency: fast}"), &[], &[]), "latency"),
            (
                config(&BOOKINFO.replace("calls: [details, reviews]", "calls: [details, shipping]"), &[], &[]),
                "calls[1]",
            ),
            (config(&BOOKINFO.replace("entry: productpage", "entry: frontpage"), &[], &[]), "entry"),
            (
                config(
                    &BOOKINFO.replace(
                        "v1: {latency: 2ms}\n  reviews",
                        "v1: {latency: 2ms, calls: [productpage]}\n  reviews",
                    ),
                    &[],
                    &[],
                ),
                "cycle",
            ),
        ];
        for (c, needle) in cases {
            let e = resolve(&c).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
    }

    #[test]
    fn service_times_have_the_median_asked_for() {
        fastrand::seed(3);
        let mut draws: Vec<Duration> = (0..2001).map(|_| draw(Duration::from_millis(10))).collect();
        draws.sort();
        let median = draws[1000].as_secs_f64() * 1000.0;
        assert!((9.0..11.0).contains(&median), "{median}");
    }
}
