//! The meshlens collector.
//!
//! It owns the OTLP receivers (gRPC with tonic, HTTP with axum), the pipeline ([`pipeline`]) that
//! turns spans and agent metrics into edges ([`spans`], [`metrics`]) of one bounded [`graph`], the
//! windowed stats ([`window`]), the graph views
//! ([`views`]), the revisions and their store ([`hub`], [`store`]), and the HTTP API ([`api`],
//! [`prom`]). It does not own the shared shapes (those are `meshlens-model`) and knows nothing of the
//! agent, the console or the web app, which talk to its API.
//!
//! Tasks and threads: each receiver is a tokio task that decodes, validates and queues; one pipeline
//! thread applies queued batches to the [`engine::Engine`] under its lock — with a data directory,
//! the write-ahead log's thread ([`wal`]) makes each batch durable first, and the receivers answer
//! only then; one publisher thread ticks
//! (default 1 s): expire, compute views, publish a revision if the graph changed, write the store,
//! notify SSE subscribers. See docs/ARCHITECTURE.md.

mod api;
mod attrs;
mod auth;
mod counters;
// Modules marked `allow(unreachable_pub)` without the `testkit` feature hold items it re-exports.
#[cfg_attr(not(feature = "testkit"), allow(unreachable_pub))]
mod engine;
mod exemplars;
mod graph;
mod hub;
mod live;
mod metrics;
#[cfg_attr(not(feature = "testkit"), allow(unreachable_pub))]
mod otlp;
mod pipeline;
mod prom;
pub mod remote_write;
mod routes;
mod serve;
pub mod source;
mod spans;
mod store;
mod tap;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use graph::PROM_BUCKETS;

/// The internals the criterion benchmark measures (`benches/collector.rs`) and the tests that
/// drive an engine or a store without a server; with the test kit, off in the binary.
#[cfg(feature = "testkit")]
pub mod bench {
    pub use crate::counters::Counters;
    pub use crate::engine::{Engine, EngineConfig, unix_now};
    pub use crate::otlp::lite;
    pub use crate::store::{Store, StoredRevision};
    pub use crate::views::{freeze, freeze_summed, snapshot, snapshots};
}
mod tls;
mod traces;
#[cfg_attr(not(feature = "testkit"), allow(unreachable_pub))]
mod views;
mod wal;
mod window;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::counters::Counters;
use crate::engine::{Engine, EngineConfig, unix_now};
use crate::hub::Hub;
use crate::otlp::Ingest;
use crate::store::{Store, StoreError};

/// HTTP/2 flow-control window per OTLP/gRPC stream.
pub const GRPC_STREAM_WINDOW: u32 = 2 << 20;
/// HTTP/2 flow-control window per OTLP/gRPC connection.
pub const GRPC_CONNECTION_WINDOW: u32 = 8 << 20;
/// Most OTLP/gRPC exports one connection may be sending at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
pub const GRPC_MAX_STREAMS: u32 = 16;

/// How a collector runs.
#[derive(Clone, Debug)]
pub struct CollectorConfig {
    /// OTLP/gRPC listen address.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP listen address.
    pub otlp_http: SocketAddr,
    /// API and web UI listen address.
    pub http: SocketAddr,
    /// Where the store lives; `None` keeps nothing (`--in-memory`).
    pub data_dir: Option<PathBuf>,
    /// How often a revision may be published.
    pub tick: Duration,
    /// The window revisions are published with.
    pub window: Duration,
    /// How many revisions the store keeps.
    pub retain_revisions: u64,
    /// Size cap of one export, after decompression.
    pub max_request_bytes: usize,
    /// Size cap of the ingest queue, in encoded bytes.
    pub max_queue_bytes: usize,
    /// Limits of the graph state.
    pub engine: EngineConfig,
    /// A bearer token every client must present (API, `/metrics`, OTLP); required beyond loopback.
    pub token: Option<String>,
    /// Most SSE subscribers (`/api/v1/stream`) at once; past it a new one is answered 503.
    pub max_sse_subscribers: usize,
    /// Most connections open at once on each listener (OTLP/gRPC, OTLP/HTTP, API).
    pub max_connections: usize,
    /// Time a client has to send a request's headers (HTTP/1), on both HTTP listeners.
    pub header_read_timeout: Duration,
    /// An HTTP connection with no request in flight for this long is closed (OTLP/HTTP and API).
    pub idle_timeout: Duration,
    /// Time an OTLP/HTTP upload has to deliver its whole body; past it the answer is 408.
    pub body_read_timeout: Duration,
    /// Bytes of OTLP/HTTP bodies being read at once, across all connections (by Content-Length,
    /// or the request cap when there is none); past it an upload is answered 503.
    pub max_inflight_bytes: usize,
    /// TLS on all three listeners (see [`tls`]); plaintext when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Write the graph to a Prometheus-compatible store ([`remote_write`]).
    pub remote_write: Option<remote_write::RemoteWriteConfig>,
    /// Read the graph from a Prometheus-compatible store ([`source`]).
    pub source: Option<source::SourceConfig>,
    /// A link to the user's trace UI (Jaeger, Tempo) with `{trace_id}` in it, given beside each
    /// kept trace ([`traces`]).
    pub trace_link: Option<String>,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            otlp_grpc: SocketAddr::from(([127, 0, 0, 1], 4317)),
            otlp_http: SocketAddr::from(([127, 0, 0, 1], 4318)),
            http: SocketAddr::from(([127, 0, 0, 1], 7420)),
            data_dir: Some(PathBuf::from("meshlens-data")),
            tick: Duration::from_secs(1),
            window: Duration::from_secs(60),
            retain_revisions: 3600,
            max_request_bytes: 64 << 20,
            max_queue_bytes: 256 << 20,
            engine: EngineConfig::default(),
            token: None,
            max_sse_subscribers: 1024,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            max_inflight_bytes: 256 << 20,
            tls: None,
            remote_write: None,
            trace_link: None,
            source: None,
        }
    }
}

impl CollectorConfig {
    /// A configuration for tests and embedding: every listener on `127.0.0.1:0`, nothing kept,
    /// fast ticks.
    pub fn ephemeral() -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            otlp_grpc: any,
            otlp_http: any,
            http: any,
            data_dir: None,
            tick: Duration::from_millis(100),
            ..Self::default()
        }
    }
}

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A non-loopback address without authentication.
    #[error(
        "refusing to listen on {addr} ({what}): beyond loopback the collector needs a token; pass --token (or MESHLENS_TOKEN), or use 127.0.0.1 or ::1"
    )]
    NotLoopback {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The write-ahead log could not be read or started.
    #[error(transparent)]
    Wal(#[from] wal::WalError),
    /// The `--prometheus` store could not be read.
    #[error("the --prometheus store: {0}")]
    Source(#[from] source::SourceError),
    /// A setting is out of range.
    #[error("invalid setting {name}: {message}")]
    Config {
        /// The setting.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// A running collector.
pub struct Running {
    /// Where OTLP/gRPC listens.
    pub otlp_grpc_addr: SocketAddr,
    /// Where OTLP/HTTP listens.
    pub otlp_http_addr: SocketAddr,
    /// Where the API listens.
    pub http_addr: SocketAddr,
    /// The shared state.
    pub hub: Arc<Hub>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), String>>>,
    stop: Arc<AtomicBool>,
    publisher: Option<std::thread::JoinHandle<()>>,
    pipeline: Option<std::thread::JoinHandle<()>>,
    remote_write: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

async fn bind(what: &'static str, addr: SocketAddr, token: bool) -> Result<TcpListener, CollectorError> {
    if !addr.ip().is_loopback() && !token {
        return Err(CollectorError::NotLoopback { what, addr });
    }
    TcpListener::bind(addr).await.map_err(|source| CollectorError::Bind { what, addr, source })
}

/// Starts a collector: opens the store, binds the listeners, starts the pipeline and the publisher.
pub async fn start(config: CollectorConfig) -> Result<Running, CollectorError> {
    let window = config.window.as_secs();
    if !(window::MIN_WINDOW_SECS..=window::MAX_WINDOW_SECS).contains(&window) {
        return Err(CollectorError::Config { name: "window", message: "must be between 10s and 1h".into() });
    }
    if config.engine.idle_retention_secs < window
        || (config.engine.idle_retention_secs as f64) < config.engine.pairing_ttl_secs + 2.0
    {
        return Err(CollectorError::Config {
            name: "idle-retention",
            message: format!(
                "{}s is shorter than the window ({window}s) or a span half's time to live ({}s)",
                config.engine.idle_retention_secs, config.engine.pairing_ttl_secs
            ),
        });
    }
    if config.tick < Duration::from_millis(10) {
        return Err(CollectorError::Config { name: "tick", message: "must be at least 10ms".into() });
    }
    let counters = Arc::new(Counters::default());
    let engine = Engine::new(config.engine.clone(), counters.clone(), unix_now());
    let store = match &config.data_dir {
        Some(dir) => {
            let dir = dir.clone();
            let keep = config.retain_revisions;
            tokio::task::spawn_blocking(move || Store::open(&dir, keep))
                .await
                .map_err(|e| CollectorError::Config { name: "data-dir", message: e.to_string() })??
        }
        None => Store::in_memory(config.retain_revisions)?,
    };
    let hub = Arc::new(Hub::new(engine, store, window, config.retain_revisions)?);

    if let Some(t) = &config.token {
        let b64token = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
        if t.is_empty() || !t.chars().all(b64token) {
            return Err(CollectorError::Config {
                name: "token",
                message: "a bearer token is one or more of A-Z a-z 0-9 - . _ ~ + / = (RFC 6750), with no spaces".into(),
            });
        }
    }
    let token = config.token.as_deref().map(Arc::<str>::from);
    let grpc_l = bind("OTLP/gRPC", config.otlp_grpc, token.is_some()).await?;
    let http_l = bind("OTLP/HTTP", config.otlp_http, token.is_some()).await?;
    let api_l = bind("API", config.http, token.is_some()).await?;
    let guard = |r: axum::Router| match &token {
        Some(t) => r.layer(axum::middleware::from_fn_with_state(t.clone(), auth::require_token)),
        // Over TLS a rebound name fails the handshake's name check, so the Host guard is for
        // plaintext only.
        None if config.tls.is_none() => r.layer(axum::middleware::from_fn(auth::require_loopback_host)),
        None => r,
    };
    let addr =
        |l: &TcpListener, what, a| l.local_addr().map_err(|source| CollectorError::Bind { what, addr: a, source });
    let (otlp_grpc_addr, otlp_http_addr, http_addr) = (
        addr(&grpc_l, "OTLP/gRPC", config.otlp_grpc)?,
        addr(&http_l, "OTLP/HTTP", config.otlp_http)?,
        addr(&api_l, "API", config.http)?,
    );

    let uploads = otlp::UploadLimits {
        body_read_timeout: config.body_read_timeout,
        max_inflight_bytes: config.max_inflight_bytes,
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = match &config.data_dir {
        Some(dir) => {
            let (dir, hub2, ttl) = (dir.join("wal"), hub.clone(), config.engine.pairing_ttl_secs);
            let recovered = tokio::task::spawn_blocking(move || {
                let mut engine = hub2.engine.lock();
                wal::replay(&dir, hub2.stored_checkpoint(), &mut engine)
            })
            .await
            .map_err(|e| CollectorError::Config { name: "data-dir", message: e.to_string() })??;
            if recovered.replayed + recovered.warmed + recovered.torn + recovered.undecodable > 0 {
                tracing::info!(
                    replayed = recovered.replayed,
                    warmed = recovered.warmed,
                    torn = recovered.torn,
                    undecodable = recovered.undecodable,
                    "write-ahead log replayed"
                );
            }
            let (wal, checkpoint) = wal::Wal::start(recovered, ttl, tx, counters.clone())?;
            hub.attach_wal(checkpoint);
            otlp::Sink::Log(wal)
        }
        None => otlp::Sink::Direct(tx),
    };
    let ingest = Ingest::new(config.max_queue_bytes, config.max_request_bytes, uploads, counters.clone(), sink);
    let pipeline = pipeline::spawn(hub.clone(), rx)
        .map_err(|e| CollectorError::Config { name: "threads", message: e.to_string() })?;

    let stop = Arc::new(AtomicBool::new(false));
    let publisher_hub = hub.clone();
    let publisher_stop = stop.clone();
    let tick = config.tick;
    let publisher = std::thread::Builder::new()
        .name("meshlens-publisher".into())
        .spawn(move || publisher_hub.run_publisher(tick, publisher_stop))
        .map_err(|e| CollectorError::Config { name: "threads", message: e.to_string() })?;

    let (shutdown, rx_shutdown) = watch::channel(false);
    let signal = move || {
        let mut rx = rx_shutdown.clone();
        async move {
            let _ = rx.wait_for(|&s| s).await;
        }
    };
    let mut tasks = Vec::new();
    let body_read_timeout = config.body_read_timeout;
    let grpc_routes = tonic::service::Routes::from(guard(
        otlp::grpc::router(ingest.clone()).into_axum_router().merge(tap::agent_router(hub.taps.clone())),
    ));
    let sig = signal();
    let grpc_conns = (
        config.tls.clone(),
        config.header_read_timeout,
        config.max_connections,
        counters.clone(),
        shutdown.subscribe(),
    );
    tasks.push(tokio::spawn(async move {
        // Exports are large (a 512-span batch is 50-250 KB); HTTP/2's default 64 KiB windows would cost
        // several round trips per export.
        let server = tonic::transport::Server::builder()
            // A stalled export is cut off like an OTLP/HTTP upload, and one connection holds at
            // most GRPC_MAX_STREAMS exports being received.
            .timeout(body_read_timeout)
            .max_concurrent_streams(Some(GRPC_MAX_STREAMS))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .initial_stream_window_size(Some(GRPC_STREAM_WINDOW))
            .initial_connection_window_size(Some(GRPC_CONNECTION_WINDOW))
            .add_routes(grpc_routes);
        let (tls_config, timeout, max_connections, counters, stop) = grpc_conns;
        server
            .serve_with_incoming_shutdown(
                tls::incoming(grpc_l, tls_config, timeout, max_connections, counters, stop),
                sig,
            )
            .await
            .map_err(|e| format!("OTLP/gRPC server: {e}"))
    }));
    let limits = serve::ListenerLimits {
        max_connections: config.max_connections,
        header_read_timeout: config.header_read_timeout,
        idle_timeout: config.idle_timeout,
        tls: config.tls.clone(),
    };
    let otlp_router = guard(otlp::http::router(ingest));
    let otlp_limits = limits.clone();
    let (c, quit) = (counters.clone(), shutdown.subscribe());
    tasks.push(tokio::spawn(async move {
        serve::serve(http_l, otlp_router, otlp_limits, c, quit).await.map_err(|e| format!("OTLP/HTTP server: {e}"))
    }));
    let api_router =
        guard(api::router(hub.clone(), shutdown.subscribe(), config.max_sse_subscribers, config.trace_link.clone()));
    let (c, quit) = (counters.clone(), shutdown.subscribe());
    tasks.push(tokio::spawn(async move {
        serve::serve(api_l, api_router, limits, c, quit).await.map_err(|e| format!("API server: {e}"))
    }));
    if let Some(sc) = config.source.clone() {
        let api = source::PromApi::new(&sc.url, sc.token.clone())?;
        let mut reader = source::Reader::new(sc.dialects.clone(), sc.max_series);
        source::backfill(&mut reader, &api, &hub, &sc).await?;
        let (hub, quit) = (hub.clone(), shutdown.subscribe());
        let url = sc.url.clone();
        tasks.push(tokio::spawn(async move {
            source::run(hub, reader, api, sc, quit).await;
            Ok(())
        }));
        tracing::info!(%url, "reading the graph from a Prometheus-compatible store");
    }
    let remote_write = config.remote_write.clone().map(|rw| {
        let (tx, rx) = watch::channel(false);
        let mut rw = rw;
        if rw.labels.is_empty() {
            rw.labels = remote_write::default_labels(http_addr.port());
        }
        (tx, tokio::spawn(remote_write::run(hub.clone(), rw, rx)))
    });
    hub.ready.store(true, Ordering::Release);
    tracing::info!(%otlp_grpc_addr, %otlp_http_addr, %http_addr, "collector ready");
    Ok(Running {
        otlp_grpc_addr,
        otlp_http_addr,
        http_addr,
        hub,
        shutdown,
        tasks,
        stop,
        publisher: Some(publisher),
        pipeline: Some(pipeline),
        remote_write,
    })
}

impl Running {
    /// The API base URL, `http://addr`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Waits until a server task ends (an error) — for the CLI, which otherwise runs until Ctrl-C.
    pub async fn wait_any(&mut self) -> Result<(), String> {
        let tasks = std::mem::take(&mut self.tasks);
        let (res, _, rest) = futures_util::future::select_all(tasks).await;
        self.tasks = rest;
        res.map_err(|e| e.to_string())?
    }

    /// Stops the servers, drains the queue, publishes and stores a last tick, and joins everything.
    pub async fn shutdown(mut self) -> Result<(), String> {
        let _ = self.shutdown.send(true);
        // Agents' tap subscriptions are requests that never end on their own.
        self.hub.taps.close();
        let mut first_err = Ok(());
        for t in std::mem::take(&mut self.tasks) {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_err = first_err.and(Err(e)),
                Err(e) => first_err = first_err.and(Err(e.to_string())),
            }
        }
        if let Some(p) = self.pipeline.take() {
            let _ = tokio::task::spawn_blocking(move || p.join()).await;
        }
        self.stop.store(true, Ordering::Release);
        if let Some(p) = self.publisher.take() {
            p.thread().unpark();
            let _ = tokio::task::spawn_blocking(move || p.join()).await;
        }
        let hub = self.hub.clone();
        let _ = tokio::task::spawn_blocking(move || hub.tick(unix_now(), &mut meshlens_model::hist::Merger::default()))
            .await;
        // The last totals, after the queue drained.
        if let Some((stop, task)) = self.remote_write.take() {
            let _ = stop.send(true);
            let _ = task.await;
        }
        first_err
    }
}
