//! The meshlens agent: a sidecar L7 proxy beside one workload.
//!
//! It owns the proxy ([`proxy`]: inbound to the local app, outbound to other services by policy;
//! [`pool`]: upstream connections per endpoint),
//! routing and policy enforcement ([`route`]: split, load balancing, outlier detection, retry
//! budget), request telemetry on the hot path ([`telemetry`]), trace context and spans ([`trace`]),
//! OTLP export to the collector ([`export`]), its own counters ([`counters`]) and its config file
//! with reload ([`config`]); and the constant-rate load generator behind `meshlens load` ([`load`]),
//! which drives traffic through agents. It does not own the policy schema, which lives in `meshlens-model` so
//! the simulator reads the same types, nor anything of the collector's.
//!
//! [`start`] binds the listeners and returns a [`Running`] agent; tests run agents in-process on
//! `127.0.0.1:0`.

pub mod config;
mod counters;
mod discovery;
mod endpointslice;
// Modules marked `allow(unreachable_pub)` without the `bench` feature hold items it re-exports.
#[cfg_attr(not(feature = "bench"), allow(unreachable_pub))]
mod export;
mod kubernetes;
pub mod load;
mod normalize;
mod pool;
mod proxy;
mod route;
mod tap;
#[cfg_attr(not(feature = "bench"), allow(unreachable_pub))]
mod telemetry;
pub mod tls;
#[cfg_attr(not(feature = "bench"), allow(unreachable_pub))]
mod trace;

/// The hot-path pieces the criterion benchmark measures (`benches/agent.rs`); off in the binary.
#[cfg(feature = "bench")]
pub mod bench {
    pub use crate::export::metrics_request;
    pub use crate::telemetry::{Direction, ErrorKind, Outcome, Registry};
    pub use crate::trace::TraceContext;
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use meshlens_model::idle::{Held, Streams};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use config::{AgentConfig, ConfigError};
use counters::Counters;
/// The agent's pooled HTTP/1 client towards one address (its connections to an endpoint), which
/// `meshlens load` and the demo's apps send with too.
pub use pool::{ProxyBody, Upstream};
use proxy::Shared;
use trace::SpanSink;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Reading the config file.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A listener.
    #[error("binding the {what} listener on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address it was to bind.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The collector endpoint.
    #[error("telemetry.collector: {0}")]
    Collector(#[from] tonic::transport::Error),
    #[error("tls: {0}")]
    /// The mesh certificates could not be loaded.
    Tls(#[from] tls::TlsError),
}

/// How to run an agent beyond its config.
#[derive(Clone, Debug)]
pub struct Options {
    /// The config file to watch for changes; `None` never reloads.
    pub watch: Option<PathBuf>,
    /// How often the file is checked.
    pub reload_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { watch: None, reload_every: Duration::from_secs(1) }
    }
}

/// A running agent.
pub struct Running {
    /// Inbound listener.
    pub inbound: SocketAddr,
    /// Outbound listener.
    pub outbound: Option<SocketAddr>,
    /// Admin listener.
    pub admin: SocketAddr,
    /// The agent's counters.
    pub counters: Arc<Counters>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    export_stop: watch::Sender<bool>,
    drained: mpsc::Receiver<()>,
    tasks: Vec<JoinHandle<()>>,
    exporters: Vec<JoinHandle<()>>,
}

impl Running {
    /// The active config.
    pub fn config(&self) -> AgentConfig {
        self.shared.runtime.load().config.clone()
    }

    /// Stops accepting, lets open connections finish their requests (for up to [`DRAIN`]), exports
    /// once more, and waits for the exporters.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
        }
        // Every connection task holds a sender; the channel closes when the last one is done.
        let _ = tokio::time::timeout(DRAIN, self.drained.recv()).await;
        let _ = self.export_stop.send(true);
        // The span queue closes when the last sender (in `shared`) goes.
        drop(self.shared);
        for t in self.exporters {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// How long [`Running::shutdown`] waits for open requests.
pub const DRAIN: Duration = Duration::from_secs(5);

struct Admin {
    shared: Arc<Shared>,
    ready: AtomicBool,
    last_reload_error: Mutex<Option<String>>,
    /// The discovery sources' tasks (none run while no version names a source).
    discovery: Arc<discovery::Discovery>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr).await.map_err(|source| AgentError::Bind { what, addr, source })
}

fn local(l: &TcpListener, what: &'static str, addr: SocketAddr) -> Result<SocketAddr, AgentError> {
    l.local_addr().map_err(|source| AgentError::Bind { what, addr, source })
}

/// Reads and parses a config file.
pub fn load_config(path: &std::path::Path) -> Result<AgentConfig, AgentError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| AgentError::Read { path: path.display().to_string(), source })?;
    Ok(AgentConfig::parse(&text, &path.display().to_string())?)
}

/// Binds the listeners and starts serving.
pub async fn start(config: AgentConfig, options: Options) -> Result<Running, AgentError> {
    let counters = Arc::new(Counters::default());
    let (stop, stop_rx) = watch::channel(false);
    let (export_stop, export_stop_rx) = watch::channel(false);
    let (drain_token, drained) = mpsc::channel::<()>(1);
    let telemetry = config.telemetry.clone();
    let mesh_tls = match &config.tls {
        Some(t) => Some(Arc::new(tls::MeshTls::load(&t.cert, &t.key, &t.ca, &t.trust_domain, t.strict)?)),
        None => None,
    };
    let mut exporters = Vec::new();
    let (span_tx, channel) = match &telemetry {
        Some(t) => {
            let channel = export::channel(&t.collector, mesh_tls.clone(), Some(Duration::from_secs(5)))?;
            let (tx, rx) = mpsc::channel(t.span_queue);
            exporters.push(tokio::spawn(export::spans_loop(
                channel.clone(),
                export::Bearer::new(t.token.as_deref()),
                config.workload.clone(),
                rx,
                counters.clone(),
            )));
            (Some(tx), Some(channel))
        }
        None => (None, None),
    };
    let inbound_l = bind("inbound", config.inbound_listen).await?;
    let outbound_l = match config.outbound_listen {
        Some(a) => Some(bind("outbound", a).await?),
        None => None,
    };
    let admin_l = bind("admin", config.admin_listen).await?;
    let inbound = local(&inbound_l, "inbound", config.inbound_listen)?;
    let outbound = match (&outbound_l, config.outbound_listen) {
        (Some(l), Some(a)) => Some(local(l, "outbound", a)?),
        _ => None,
    };
    let admin_addr = local(&admin_l, "admin", config.admin_listen)?;

    let mut tasks_early = Vec::new();
    let shared =
        Arc::new(Shared::new(config, counters.clone(), SpanSink::new(span_tx, counters.clone()), mesh_tls.clone()));
    if let Some(t) = &telemetry {
        let channel = export::channel(&t.collector, mesh_tls.clone(), None)?;
        let (token, workload) = (t.token.clone(), shared.runtime.load().config.workload.clone());
        tasks_early.push(tokio::spawn(tap::run(channel, token, workload, shared.tap.clone(), stop_rx.clone())));
    }
    if let (Some(t), Some(channel)) = (&telemetry, channel) {
        let started = SystemTime::now();
        let s = shared.clone();
        let build = move || {
            let rt = s.runtime.load();
            export::metrics_request(&rt.config.workload, &s.registry, started, SystemTime::now())
        };
        exporters.push(tokio::spawn(export::metrics_loop(
            channel,
            export::Bearer::new(t.token.as_deref()),
            build,
            t.interval,
            counters.clone(),
            export_stop_rx,
        )));
    }

    // Discovery: a task per source the versions name; each change rebuilds the routing table.
    let discovery = {
        let rt = shared.runtime.load();
        let weak = Arc::downgrade(&shared);
        let changed: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some(shared) = weak.upgrade() {
                shared.rebuild(None);
            }
        });
        let d = discovery::Discovery::new(shared.found.clone(), counters.clone(), &rt.config, changed);
        d.sync(&rt.config);
        for source in d.warm(&rt.config, discovery::WARM_LIMIT).await {
            tracing::warn!(%source, "no first answer yet; serving without its endpoints until it answers");
        }
        Arc::new(d)
    };
    let admin = Arc::new(Admin {
        shared: shared.clone(),
        ready: AtomicBool::new(false),
        last_reload_error: Mutex::new(None),
        discovery,
    });
    let mut tasks = tasks_early;
    tasks.push(tokio::spawn(serve(inbound_l, shared.clone(), Side::Inbound, stop_rx.clone(), drain_token.clone())));
    if let Some(l) = outbound_l {
        tasks.push(tokio::spawn(serve(l, shared.clone(), Side::Outbound, stop_rx.clone(), drain_token)));
    }
    let router = axum::Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/config", get(active_config))
        .with_state(admin.clone());
    let mut admin_stop = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        let shutdown = async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(admin_l, router).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "admin listener failed");
        }
    }));
    if let Some(path) = options.watch.clone() {
        // Read now, not when the task first runs: a change written once `start` has returned is
        // then always a change (a busy runtime could otherwise start the task after it and miss it).
        let last = std::fs::read(&path).ok();
        tasks.push(tokio::spawn(reload_loop(path, last, options.reload_every, admin.clone())));
    }
    if shared.tls.is_some() {
        let (shared, every) = (shared.clone(), options.reload_every);
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                reload_certs(&shared);
            }
        }));
    }
    admin.ready.store(true, Ordering::Release);
    tracing::info!(%inbound, ?outbound, admin = %admin_addr, "agent started");
    Ok(Running { inbound, outbound, admin: admin_addr, counters, shared, stop, export_stop, drained, tasks, exporters })
}

#[derive(Clone, Copy)]
enum Side {
    Inbound,
    Outbound,
}

async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    side: Side,
    stop: watch::Receiver<bool>,
    drain_token: mpsc::Sender<()>,
) {
    let limits = shared.runtime.load().config.limits.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(limits.max_header_bytes as u32);
    let builder = Arc::new(builder);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match side {
            Side::Inbound => shared.counters.inbound_connections.add(1),
            Side::Outbound => shared.counters.outbound_connections.add(1),
        }
        let shared = shared.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        let token = drain_token.clone();
        let tls = match side {
            Side::Inbound => {
                shared.tls.clone().map(|t| (t, shared.runtime.load().config.tls.as_ref().is_none_or(|c| c.strict)))
            }
            Side::Outbound => None,
        };
        let timeout = limits.header_read_timeout;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.counters.connections_refused.add(1);
            drop(stream);
            continue;
        };
        tokio::spawn(async move {
            let _token = token;
            let _slot = slot;
            // A connection that sends nothing is closed at the header read timeout (hyper's own
            // timeout starts only once a request begins).
            let mut first = [0u8; 1];
            if !matches!(tokio::time::timeout(timeout, stream.peek(&mut first)).await, Ok(Ok(1))) {
                shared.counters.idle_connections_closed.add(1);
                return;
            }
            let Some((tls, strict)) = tls else {
                let info = Arc::new(proxy::ConnInfo::plain(peer.ip()));
                return serve_io(TokioIo::new(stream), peer, shared, builder, side, info, stop).await;
            };
            // Permissive: a TLS handshake starts with a handshake record (0x16); anything else is
            // plaintext HTTP.
            if !strict && first[0] != 0x16 {
                let info = Arc::new(proxy::ConnInfo::plain(peer.ip()));
                return serve_io(TokioIo::new(stream), peer, shared, builder, side, info, stop).await;
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    let id = tls::peer_id(tls_stream.get_ref().1);
                    let td = shared.runtime.load().config.tls.as_ref().map(|t| t.trust_domain.clone());
                    let info = proxy::ConnInfo::mtls(id, td.as_deref().unwrap_or(tls::TRUST_DOMAIN), peer.ip());
                    serve_io(TokioIo::new(tls_stream), peer, shared, builder, side, Arc::new(info), stop).await;
                }
                Ok(Err(e)) => {
                    shared.counters.tls_handshake_errors.add(1);
                    tracing::debug!(%peer, error = %e, "TLS handshake refused");
                }
                Err(_) => {
                    shared.counters.tls_handshake_errors.add(1);
                    tracing::debug!(%peer, "no TLS handshake in time");
                }
            }
        });
    }
}

async fn serve_io<I>(
    io: I,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    side: Side,
    info: Arc<proxy::ConnInfo>,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let s = shared.clone();
    let streams = Streams::new();
    let in_flight = streams.clone();
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let (s, info, active) = (s.clone(), info.clone(), in_flight.start());
        async move {
            let resp = match side {
                Side::Inbound => proxy::inbound(s, req, info).await,
                Side::Outbound => proxy::outbound(s, req).await,
            };
            resp.map(|r| r.map(|b| Held::new(b, active)))
        }
    });
    let idle_timeout = shared.runtime.load().config.limits.idle_timeout;
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = streams.wait_idle(idle_timeout, tokio::time::sleep) => {
            // No request in flight for the idle timeout (an HTTP/2 preface and nothing else, or a
            // keep-alive connection left open): GOAWAY, or close between requests.
            // A peer that does not answer the GOAWAY's ping is dropped after one more timeout.
            shared.counters.idle_connections_closed.add(1);
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(idle_timeout, conn).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        shared.counters.connection_errors.add(1);
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

async fn ready(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    if admin.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn metrics(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        counters::render(&admin.shared.counters, &admin.shared.registry),
    )
}

async fn active_config(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let rt = admin.shared.runtime.load();
    axum::Json(serde_json::json!({
        "config": rt.config,
        "last_reload_error": *admin.last_reload_error.lock(),
    }))
}

/// Picks up rotated certificate files: new handshakes use them, open connections keep going.
fn reload_certs(shared: &Shared) {
    let Some(tls) = &shared.tls else { return };
    match tls.certs.reload() {
        Ok(true) => {
            shared.counters.cert_reloads.add(1);
            tracing::info!("certificate rotated");
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "rotated certificate refused; the old one keeps serving"),
    }
}

/// Checks the file every `every` against `last` (its bytes when the agent started, then the last
/// ones read); applies a changed file that parses, keeps the old config and
/// says why otherwise. In-flight requests finish on the config they started with.
async fn reload_loop(path: PathBuf, mut last: Option<Vec<u8>>, every: Duration, admin: Arc<Admin>) {
    loop {
        tokio::time::sleep(every).await;
        let Ok(text) = tokio::fs::read(&path).await else { continue };
        if last.as_deref() == Some(&text[..]) {
            continue;
        }
        last = Some(text.clone());
        let shared = &admin.shared;
        let origin = path.display().to_string();
        let parsed = std::str::from_utf8(&text)
            .map_err(|e| format!("{origin}: not UTF-8: {e}"))
            .and_then(|t| AgentConfig::parse(t, &origin).map_err(|e| e.to_string()));
        let old = shared.runtime.load_full();
        let result = parsed.and_then(|config| match old.config.restart_needed(&config) {
            Some(part) => Err(format!(
                "{origin}: {part}: changing it needs a restart; nothing in this version of the file was applied"
            )),
            None => Ok(config),
        });
        match result {
            Ok(config) => {
                // New sources answer first, so the new table does not start without their endpoints.
                admin.discovery.sync(&config);
                admin.discovery.warm(&config, discovery::WARM_LIMIT).await;
                shared.rebuild(Some(config));
                *admin.last_reload_error.lock() = None;
                shared.counters.reloads.add(1);
                tracing::info!(file = %origin, "config reloaded");
            }
            Err(message) => {
                tracing::warn!(error = %message, "config reload refused; the old config keeps serving");
                // The reason first, then the count: whoever sees the count can read the reason.
                *admin.last_reload_error.lock() = Some(message);
                shared.counters.reload_errors.add(1);
            }
        }
    }
}
