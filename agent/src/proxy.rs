//! The two proxies: inbound (callers → the local app) and outbound (the app → the service named in
//! its request's host, by policy). Both speak HTTP/1.1 and HTTP/2 (h2c, so gRPC) on one port, stream
//! bodies both ways, strip hop-by-hop headers, pool upstream connections and continue the W3C trace
//! context.
//!
//! The outbound side applies the policy of [`crate::route`]: faults first, then for each attempt a
//! version by the split and an endpoint by the load balancer; the attempt's outcome feeds outlier
//! detection; a retriable outcome is retried after a full-jitter backoff while attempts, the retry
//! budget and the whole-request timeout allow. Bodies over [`MAX_REPLAY`] stream once and are not
//! retried. Each attempt is recorded once on the outbound side, each request once on the inbound side.
//!
//! A caller's request body that sends nothing for `limits.body_idle_timeout` ends its request with
//! 408. Every answer the agent makes up itself (400 Host rules, 403 authz, 429, 408, 502, 503, 504)
//! comes from one mapping, `Refusal::response`; the outbound path is split into faults, the body,
//! one attempt (`try_once`) and the retry decision (`retry_pause`).

use meshlens_model::tap::{Direction as TapDirection, TapEvent};
use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

// The tokio clock (the std one unless a test pauses it), so `start_paused` tests drive deadlines,
// outlier detection and the rate limiter.
use tokio::time::Instant;

use arc_swap::ArcSwap;

use crate::discovery::Found;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use meshlens_model::policy::Retries;
use meshlens_model::policy_core::{self, Outcome as Class};
use parking_lot::Mutex;
use std::collections::HashMap;

use crate::config::{AgentConfig, RateLimit};
use crate::counters::Counters;
use crate::normalize::normalize_path;
use crate::pool::{ProxyBody, SendError, Stalled, TimedBody, Upstream};
use crate::route::{InFlight, NoEndpoint, Plan, Route, Routes, VersionRoute, now_ms};
use crate::telemetry::{Direction, ErrorKind, Outcome, PeerMetrics, Registry};
use crate::tls::{MeshTls, workload_of};
use crate::trace::{SpanKind, SpanRecord, SpanSink, TraceContext};

/// The body type both proxies forward.
pub(crate) type Body = ProxyBody;

/// Request bodies up to this size are kept so that the request can be retried.
pub(crate) const MAX_REPLAY: u64 = 64 * 1024;
/// The header that carries the caller's workload id from the outbound agent to the inbound one.
pub(crate) const SOURCE_HEADER: &str = "x-meshlens-source";

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static SOURCE: HeaderName = HeaderName::from_static(SOURCE_HEADER);

/// The active config and what is built from it; swapped whole on reload.
pub(crate) struct Runtime {
    /// The config.
    pub config: AgentConfig,
    /// The outbound routing table.
    pub routes: Routes,
    /// This workload's id as a header value.
    pub source: HeaderValue,
    /// Fraction of new traces sampled.
    pub sampling: f64,
    /// The local app's connections.
    pub app: Arc<Upstream>,
}

impl Runtime {
    /// Builds the runtime for `config`, keeping endpoint state and connections from `old`; agents
    /// are reached over `tls` when given.
    pub(crate) fn new(
        config: AgentConfig,
        registry: &Registry,
        old: Option<&Runtime>,
        tls: Option<&Arc<MeshTls>>,
        found: &Found,
    ) -> Self {
        let routes = Routes::build(&config, registry, old.map(|o| &o.routes), tls, found);
        let source = HeaderValue::from_str(&config.workload.id()).unwrap_or(HeaderValue::from_static(""));
        let sampling = config.telemetry.as_ref().map_or(0.0, |t| t.sampling);
        let app = match old {
            Some(o) if *o.app.addr == *config.app => o.app.clone(),
            _ => Arc::new(Upstream::new(&config.app)),
        };
        Self { config, routes, source, sampling, app }
    }
}

/// What both proxies share.
pub(crate) struct Shared {
    /// The active runtime.
    pub runtime: ArcSwap<Runtime>,
    /// Request telemetry.
    pub registry: Registry,
    /// The agent's own counters.
    pub counters: Arc<Counters>,
    /// Finished spans go here.
    pub spans: SpanSink,
    /// Inbound requests from callers without an agent.
    unknown_caller: Arc<PeerMetrics>,
    /// Outbound requests for services not in the config.
    unknown_service: Arc<PeerMetrics>,
    connect_timeout: Duration,
    origin: Instant,
    /// Mutual TLS, when configured.
    pub tls: Option<Arc<MeshTls>>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    /// Open taps.
    pub tap: Arc<crate::tap::Tapper>,
    /// What discovery sources found (`crate::discovery`).
    pub found: Arc<Found>,
    /// Held while a runtime is rebuilt, so a reload and a discovery change do not undo each other.
    rebuilding: Mutex<()>,
}

/// What the inbound side knows of a connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnInfo {
    /// The caller's SPIFFE id from its certificate.
    pub peer: Option<Arc<str>>,
    /// Whether the connection is mutual TLS.
    pub mtls: bool,
    /// `ns/app` of the caller's SPIFFE id, worked out once per connection.
    pub peer_app: Option<Arc<str>>,
    /// The caller's IP address, as text: whom a rate limit counts when no certificate says.
    pub remote: Arc<str>,
}

impl ConnInfo {
    /// A mutual TLS connection from the caller with SPIFFE id `peer` (if it showed one).
    pub(crate) fn mtls(peer: Option<String>, trust_domain: &str, remote: std::net::IpAddr) -> Self {
        let peer_app =
            peer.as_deref().and_then(|p| workload_of(p, trust_domain)).map(|(ns, app)| format!("{ns}/{app}").into());
        Self { mtls: peer.is_some(), peer: peer.map(Into::into), peer_app, remote: remote.to_string().into() }
    }

    /// A plaintext connection from `remote`.
    pub(crate) fn plain(remote: std::net::IpAddr) -> Self {
        Self { remote: remote.to_string().into(), ..Self::default() }
    }
}

/// Whether a version from `x-meshlens-source` is one: 1 to 63 of `A-Z a-z 0-9 . _ -` (a
/// Kubernetes label value's characters), so a header cannot put markup or paths on the graph.
fn valid_version(v: &str) -> bool {
    (1..=63).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Callers tracked by the rate limiter; past it the oldest state is dropped.
const MAX_BUCKETS: usize = 4096;

impl Shared {
    /// Everything the proxies need, for `config`.
    pub(crate) fn new(
        config: AgentConfig,
        counters: Arc<Counters>,
        spans: SpanSink,
        tls: Option<Arc<MeshTls>>,
    ) -> Self {
        let registry = Registry::default();
        let config_connect_timeout = config.limits.connect_timeout;
        let found = Arc::new(Found::default());
        let runtime = Runtime::new(config, &registry, None, tls.as_ref(), &found);
        let counters_for_tap = counters.clone();
        Self {
            unknown_caller: registry.peer(Direction::Inbound, ""),
            unknown_service: registry.peer(Direction::Outbound, ""),
            runtime: ArcSwap::from_pointee(runtime),
            registry,
            counters,
            spans,
            connect_timeout: config_connect_timeout,
            origin: Instant::now(),
            tls,
            buckets: Mutex::new(HashMap::new()),
            tap: Arc::new(crate::tap::Tapper::new(counters_for_tap)),
            found,
            rebuilding: Mutex::new(()),
        }
    }

    /// Builds the runtime again — for `config` (a reload), or the same config with what discovery
    /// found now — keeping endpoint state and connections, and swaps it in. In-flight requests
    /// finish on the runtime they started with.
    pub(crate) fn rebuild(&self, config: Option<AgentConfig>) {
        let _one_at_a_time = self.rebuilding.lock();
        let old = self.runtime.load_full();
        let config = config.unwrap_or_else(|| old.config.clone());
        let next = Runtime::new(config, &self.registry, Some(&old), self.tls.as_ref(), &self.found);
        self.runtime.store(Arc::new(next));
    }

    /// Takes a token from `caller`'s bucket; `Err(seconds)` says when the next one comes.
    fn take_token(&self, caller: &str, limit: &RateLimit) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(caller) {
            buckets.clear();
        }
        let (tokens, last) = buckets.entry(caller.to_owned()).or_insert((limit.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * limit.per_second).min(limit.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / limit.per_second).ceil().max(1.0) as u64)
        }
    }

    /// Sends `req` to `upstream`: HTTP/2 requests over the multiplexing client (absolute URI), the
    /// rest over the endpoint's own HTTP/1.1 pool (origin form).
    async fn send(
        &self,
        upstream: &Arc<Upstream>,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, (ErrorKind, String)> {
        if req.version() == Version::HTTP_2 {
            return upstream.send_h2(req, self.connect_timeout).await.map_err(|e| match e {
                SendError::Connect(m) => (ErrorKind::ConnectFailure, m),
                SendError::Reset(e) => (ErrorKind::Reset, format!("{}: {e:#}", upstream.addr)),
            });
        }
        *req.version_mut() = Version::HTTP_11;
        if req.uri().authority().is_some() {
            let pq = req.uri().path_and_query().cloned();
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(pq.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
            *req.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
        }
        upstream.send(req, self.connect_timeout).await.map_err(|e| match e {
            SendError::Connect(m) => (ErrorKind::ConnectFailure, m),
            SendError::Reset(e) => (ErrorKind::Reset, format!("{}: {e:#}", upstream.addr)),
        })
    }
}

/// Records one request or attempt when dropped: its outcome if one was set, else "cancelled" (the
/// caller went away first), so a request is counted whatever ends it.
struct Recorder<'a> {
    metrics: &'a PeerMetrics,
    start: Instant,
    outcome: Option<Outcome>,
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or(Outcome::failed(ErrorKind::Cancelled, true));
        self.metrics.record(outcome, self.start.elapsed());
    }
}

fn text_response(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(ProxyBody::full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert("x-meshlens-agent", HeaderValue::from_static("1"));
    r
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the `Connection` header names.
/// `TE: trailers` stays, since gRPC needs it end to end.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass of cheap comparisons instead of a hashed remove per name.
    let hop = |n: &HeaderName| {
        n == header::CONNECTION
            || n == header::TE
            || n == header::TRANSFER_ENCODING
            || n == header::UPGRADE
            || n == header::TRAILER
            || n == header::PROXY_AUTHENTICATE
            || n == header::PROXY_AUTHORIZATION
            || n.as_str() == "keep-alive"
            || n.as_str() == "proxy-connection"
    };
    if !headers.keys().any(hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        // `Connection: host` would strip the target's name: Host is end-to-end, never hop-by-hop.
        .filter(|n| n != header::HOST)
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    let te_trailers = headers.get_all(header::TE).iter().any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Why a request's `Host` headers break RFC 9112 §3.2: an HTTP/1.1 request carries exactly one;
/// any request at most one (two would let the agent route by one and the app read the other).
fn host_problem<B>(req: &Request<B>) -> Option<&'static str> {
    let hosts = req.headers().get_all(header::HOST).iter().count();
    match (req.version(), hosts) {
        (_, n) if n > 1 => Some("a request may carry one Host header, not several (RFC 9112 section 3.2)"),
        (Version::HTTP_11, 0) => Some("an HTTP/1.1 request needs a Host header (RFC 9112 section 3.2)"),
        _ => None,
    }
}

/// Replaces the request target's path, keeping its query.
fn set_path<B>(req: &mut Request<B>, path: &str) -> Result<(), http::Error> {
    let target = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(target.parse()?);
    *req.uri_mut() = Uri::from_parts(parts)?;
    Ok(())
}

fn span_for(ctx: &TraceContext) -> Option<(TraceContext, SystemTime)> {
    ctx.sampled.then(|| (*ctx, SystemTime::now()))
}

/// Serves one inbound request: forwards it to the local app.
pub(crate) async fn inbound(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    conn: Arc<ConnInfo>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let rt = shared.runtime.load();
    if let Some(why) = host_problem(&req) {
        shared.counters.bad_requests.add(1);
        return Ok(Refusal::BadHost(why).response());
    }
    let header = req.headers_mut().remove(&SOURCE);
    let claimed = header.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
    // With a certificate, the caller is who the certificate says (the header may add the version of
    // that same app, nothing more); without one, the header is taken at its word. No allocation:
    // the certificate's `ns/app` was worked out when the connection was accepted.
    let source: &str = match conn.peer_app.as_deref() {
        Some(app) => match claimed.strip_prefix(app).and_then(|rest| rest.strip_prefix('/')) {
            Some(version) if valid_version(version) => claimed,
            _ => app,
        },
        None if rt.config.source_header == crate::config::SourceHeader::Ignore => "",
        None => claimed,
    };
    let metrics = if source.is_empty() {
        shared.unknown_caller.clone()
    } else {
        shared.registry.peer(Direction::Inbound, source)
    };
    let mut rec = Recorder { metrics: &metrics, start, outcome: None };
    let identity = conn.peer.as_deref().unwrap_or("");
    if let Some(authz) = &rt.config.authz {
        // Rules see the path normalised, and the app receives what the rules saw.
        match normalize_path(req.uri().path()) {
            Ok(Cow::Borrowed(_)) => {}
            Ok(Cow::Owned(normal)) => {
                if let Err(e) = set_path(&mut req, &normal) {
                    rec.outcome = Some(Outcome::status(400).with_mtls(conn.mtls));
                    return Ok(Refusal::BadPath(e.to_string()).response());
                }
            }
            Err(e) => {
                shared.counters.authz_denied.add(1);
                rec.outcome = Some(Outcome::status(400).with_mtls(conn.mtls));
                return Ok(Refusal::BadPath(e.to_string()).response());
            }
        }
        let (rule, allow) = authz.decide(identity, req.method().as_str(), req.uri().path());
        if !allow {
            shared.counters.authz_denied.add(1);
            rec.outcome = Some(Outcome::status(403).with_mtls(conn.mtls));
            let by = rule.map_or("the default".to_owned(), |i| format!("rule {i}"));
            let who = if identity.is_empty() { "an unauthenticated caller" } else { identity };
            let what = format!("{} {}", req.method(), req.uri().path());
            return Ok(Refusal::Denied { by, who: who.to_owned(), what }.response());
        }
    }
    if let Some(limit) = &rt.config.rate_limit {
        // A header is anyone's to write: without a certificate the caller is its address.
        let caller = if identity.is_empty() { &conn.remote } else { identity };
        if let Err(wait) = shared.take_token(caller, limit) {
            shared.counters.rate_limited.add(1);
            rec.outcome = Some(Outcome::status(429).with_mtls(conn.mtls));
            let (per_second, caller) = (limit.per_second, caller.to_string());
            return Ok(Refusal::RateLimited { per_second, caller, retry_after: wait }.response());
        }
    }
    let parent = req.headers().get(&TRACEPARENT).and_then(|v| TraceContext::parse(v.as_bytes()));
    let ctx = parent.unwrap_or_else(|| TraceContext::root(rt.sampling)).child();
    let span = span_for(&ctx);
    let tapped = shared.tap.begin(req.method(), req.uri().path());
    let method = req.method().clone();
    let path = span.is_some().then(|| req.uri().path().to_owned());

    strip_hop_by_hop(req.headers_mut());
    req.headers_mut().insert(&TRACEPARENT, ctx.header());
    let (parts, body) = req.into_parts();
    let (body, stalled) = timed(&rt, body);
    let response = shared.send(&rt.app, Request::from_parts(parts, body)).await;
    let (resp, outcome, error) = match response {
        Ok(mut resp) => {
            strip_hop_by_hop(resp.headers_mut());
            let status = resp.status().as_u16();
            let grpc = grpc_status(&resp);
            (resp, Outcome::status(status).with_grpc(grpc), "")
        }
        Err(_) if stalled.get() => {
            shared.counters.bodies_timed_out.add(1);
            let outcome = Outcome { status: 408, error: ErrorKind::None, reached: true, mtls: false, grpc: None };
            (Refusal::BodyStalled(rt.config.limits.body_idle_timeout).response(), outcome, "")
        }
        Err((kind, message)) => {
            let outcome = Outcome { status: 502, error: kind, reached: true, mtls: false, grpc: None };
            (Refusal::App { kind, message }.response(), outcome, kind.as_str())
        }
    };
    rec.outcome = Some(outcome.with_mtls(conn.mtls));
    if let Some((time_unix_ms, method, path)) = tapped {
        shared.tap.record(TapEvent {
            time_unix_ms,
            direction: TapDirection::Inbound,
            source: if source.is_empty() { "unknown".to_owned() } else { source.to_owned() },
            destination: rt.config.workload.id(),
            destination_version: None,
            method,
            path,
            route: None,
            status: outcome.status,
            grpc_status: outcome.grpc,
            latency_ms: start.elapsed().as_secs_f64() * 1000.0,
            retries: 0,
            trace_id: ctx.trace_id_hex(),
            sampled: ctx.sampled,
        });
    }
    if let Some((ctx, wall)) = span {
        shared.spans.send(SpanRecord {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent_span_id: parent.map_or([0; 8], |p| p.span_id),
            kind: SpanKind::Server,
            method,
            path,
            peer_service: None,
            server_address: None,
            start: wall,
            end: SystemTime::now(),
            status: outcome.status,
            error,
        });
    }
    Ok(resp)
}

/// The service a request names: its URI authority (absolute form) or its Host header, without port.
fn target_host(req: &Request<Incoming>) -> Option<&str> {
    let authority = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    Some(host.trim_end_matches('.'))
}

/// What an attempt came to.
enum Attempt {
    Response(Response<Body>),
    Failed(ErrorKind, String),
}

/// The gRPC status of a response, as far as its head tells: the `grpc-status` header of a
/// trailers-only answer (how gRPC servers answer an error without a message), else OK for a 200
/// of `content-type: application/grpc…`, whose status comes in trailers the agent does not wait
/// for (a stream that fails after its first message is counted OK here; the SDK's span has the
/// true code). `None` for anything not gRPC.
fn grpc_status<B>(r: &Response<B>) -> Option<u8> {
    // Only a 200 can carry a gRPC status, so other answers skip the header look-ups.
    if r.status() != StatusCode::OK {
        return None;
    }
    // A `grpc-status` that is not a code is UNKNOWN, as gRPC's clients read it.
    let header = r
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().ok().and_then(|t| t.trim().parse::<u8>().ok()).filter(|&c| c <= 16).unwrap_or(2));
    let grpc =
        r.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    header.or(grpc.then_some(0))
}

impl Attempt {
    /// Its outcome class, for the policy core.
    fn class(&self) -> Class {
        match self {
            Attempt::Response(r) => match grpc_status(r) {
                Some(code) if code != 0 => Class::Grpc(code),
                _ => Class::Status(r.status().as_u16()),
            },
            Attempt::Failed(kind, _) => match kind {
                ErrorKind::Timeout => Class::Timeout,
                ErrorKind::ConnectFailure => Class::ConnectFailure,
                ErrorKind::NoEndpoint => Class::Proxy503,
                ErrorKind::Cancelled => Class::Cancelled,
                ErrorKind::Reset | ErrorKind::None => Class::Reset,
            },
        }
    }
}

/// Serves one outbound request: routes it to a version and endpoint of the service it names.
pub(crate) async fn outbound(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let rt = shared.runtime.load_full();
    if let Some(why) = host_problem(&req) {
        shared.counters.bad_requests.add(1);
        return Ok(Refusal::BadHost(why).response());
    }
    let unroutable = |status| {
        let outcome = Outcome { status, error: ErrorKind::NoEndpoint, reached: false, mtls: false, grpc: None };
        drop(Recorder { metrics: &shared.unknown_service, start, outcome: Some(outcome) });
    };
    let me = || rt.config.workload.id();
    let Some(host) = target_host(&req) else {
        unroutable(400);
        return Ok(Refusal::NoService { me: me() }.response());
    };
    let Some(route) = rt.routes.lookup(host).cloned() else {
        shared.counters.unroutable_unknown_service.add(1);
        unroutable(502);
        let known = if rt.routes.names.is_empty() { "none".to_owned() } else { rt.routes.names.clone() };
        return Ok(Refusal::UnknownService { me: me(), host: host.to_owned(), known }.response());
    };
    let plan = if route.policy.routes.is_empty() {
        // Nothing to match: every request is `[default]`, and its path is not read.
        route.plan("", "", |_| None)
    } else {
        let path = req.uri().path();
        let path = crate::normalize::normalize_path(path).unwrap_or(std::borrow::Cow::Borrowed(path));
        let headers = req.headers();
        route.plan(req.method().as_str(), &path, |h| headers.get(h).and_then(|v| v.to_str().ok()))
    };
    let tapped = shared.tap.begin(req.method(), req.uri().path());
    let mut seen = Seen::default();
    let resp = route_request(&shared, &rt, &route, &plan, req, start, &mut seen).await;
    if let Some((time_unix_ms, method, path)) = tapped {
        let (trace_id, sampled) = seen.trace.map(|t| (t.trace_id_hex(), t.sampled)).unwrap_or_default();
        shared.tap.record(TapEvent {
            time_unix_ms,
            direction: TapDirection::Outbound,
            source: rt.config.workload.id(),
            destination: route.name.to_string(),
            destination_version: seen.version.map(str::to_owned),
            method,
            path,
            route: Some(plan.metrics.route.to_string()),
            status: resp.status().as_u16(),
            grpc_status: grpc_status(&resp),
            latency_ms: start.elapsed().as_secs_f64() * 1000.0,
            retries: seen.retries,
            trace_id,
            sampled,
        });
    }
    Ok(resp)
}

/// What routing did to a request, for a tap.
#[derive(Default)]
struct Seen<'a> {
    /// The version of the last attempt.
    version: Option<&'a str>,
    retries: u32,
    trace: Option<TraceContext>,
}

/// Why the agent answered a request itself. Every answer the agent makes up goes through
/// [`Refusal::response`]: one place that maps a cause to its status and its text.
enum Refusal<'a> {
    /// `Host` headers against RFC 9112 (400).
    BadHost(&'static str),
    /// A path authz cannot judge: an encoded `/` or `\\` (400).
    BadPath(String),
    /// Authz denied it (403).
    Denied { by: String, who: String, what: String },
    /// The caller's rate limit is spent (429 with `Retry-After`).
    RateLimited { per_second: f64, caller: String, retry_after: u64 },
    /// An outbound request that names no service (400).
    NoService { me: String },
    /// An outbound request for a service not in the config (502).
    UnknownService { me: String, host: String, known: String },
    /// An injected abort.
    Fault { route: &'a Route, status: u16 },
    /// The request body could not be read (400).
    BodyUnreadable(String),
    /// The request body sent nothing for the body idle timeout (408).
    BodyStalled(Duration),
    /// No endpoint to send to (503).
    NoEndpoint { route: &'a Route, why: NoEndpoint },
    /// The local app could not be reached or broke the connection (502).
    App { kind: ErrorKind, message: String },
    /// The last attempt failed: 504 for a timeout, else 503.
    Upstream { route: &'a Route, version: &'a str, kind: ErrorKind, message: String, retries: u32 },
}

impl Refusal<'_> {
    fn response(self) -> Response<Body> {
        let mut retry_after = None;
        let (status, text) = match self {
            Refusal::BadHost(why) => (StatusCode::BAD_REQUEST, format!(": {why}")),
            Refusal::BadPath(why) => (StatusCode::BAD_REQUEST, format!(": {why}")),
            Refusal::Denied { by, who, what } => {
                (StatusCode::FORBIDDEN, format!(": denied by {by}: {who} may not {what}"))
            }
            Refusal::RateLimited { per_second, caller, retry_after: wait } => {
                retry_after = Some(wait);
                (StatusCode::TOO_MANY_REQUESTS, format!(": rate limit of {per_second}/s for {caller:?} reached"))
            }
            Refusal::NoService { me } => (
                StatusCode::BAD_REQUEST,
                format!(" ({me}): the request names no service: send it to http://SERVICE/..."),
            ),
            Refusal::UnknownService { me, host, known } => (
                StatusCode::BAD_GATEWAY,
                format!(" ({me}): no service {host:?} in this agent's config; known services: {known}"),
            ),
            Refusal::Fault { route, status } => (
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                format!(": fault injected for {}", route.name),
            ),
            Refusal::BodyUnreadable(e) => (StatusCode::BAD_REQUEST, format!(": reading the request body: {e}")),
            Refusal::BodyStalled(idle) => (
                StatusCode::REQUEST_TIMEOUT,
                format!(": the request body sent nothing for {idle:?} (limits.body_idle_timeout)"),
            ),
            Refusal::NoEndpoint { route, why } => (
                StatusCode::SERVICE_UNAVAILABLE,
                match why {
                    NoEndpoint::NoneConfigured(v) => format!(": {} {v} has no endpoints in the config", route.name),
                    NoEndpoint::AllEjected(v) => {
                        format!(": every endpoint of {} {v} is ejected by outlier detection", route.name)
                    }
                },
            ),
            Refusal::App { kind, message } => (
                StatusCode::BAD_GATEWAY,
                match kind {
                    ErrorKind::ConnectFailure => format!(": cannot connect to the app: {message}"),
                    _ => format!(": the app broke the connection: {message}"),
                },
            ),
            Refusal::Upstream { route, version, kind, message, retries } => {
                let status = if kind == ErrorKind::Timeout {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let after = if retries > 0 { format!(" after {retries} retries") } else { String::new() };
                (status, format!(": upstream {} {version} failed{after}: {}: {message}", route.name, kind.as_str()))
            }
        };
        let mut r = text_response(status, format!("meshlens agent{text}\n"));
        if let Some(wait) = retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
        }
        r
    }
}

/// A caller's request body, timed by `limits.body_idle_timeout` ([`TimedBody`]).
fn timed(rt: &Runtime, body: Incoming) -> (ProxyBody, Stalled) {
    let (body, stalled) = TimedBody::new(body, rt.config.limits.body_idle_timeout);
    (ProxyBody::Timed(body), stalled)
}

/// Delays and aborts of the policy's fault injection; an abort is recorded and answered.
async fn inject_faults<'a>(shared: &Shared, route: &'a Route, start: Instant) -> Result<(), Refusal<'a>> {
    let (faults, counters) = (&route.policy.faults, &shared.counters);
    if let Some((delay, p)) = faults.delay
        && fastrand::f64() < p
    {
        counters.faults_delayed.add(1);
        tokio::time::sleep(delay).await;
    }
    if let Some((status, p)) = faults.abort
        && fastrand::f64() < p
    {
        counters.faults_aborted.add(1);
        let _rec = Recorder {
            metrics: &route.pick_version().metrics,
            start,
            outcome: Some(Outcome { status, error: ErrorKind::None, reached: false, mtls: false, grpc: None }),
        };
        return Err(Refusal::Fault { route, status });
    }
    Ok(())
}

/// The body to send: kept in memory when the request may be retried and it is small (so it can be
/// replayed), else streamed once.
async fn take_body<'a>(
    body: ProxyBody,
    stalled: &Stalled,
    retriable: bool,
    idle: Duration,
) -> Result<(Option<Bytes>, Option<ProxyBody>), Refusal<'a>> {
    let small = body.is_end_stream() || body.size_hint().upper().is_some_and(|n| n <= MAX_REPLAY);
    if !(retriable && small) {
        return Ok((None, Some(body)));
    }
    match Limited::new(body, MAX_REPLAY as usize).collect().await {
        Ok(collected) => Ok((Some(collected.to_bytes()), None)),
        Err(_) if stalled.get() => Err(Refusal::BodyStalled(idle)),
        Err(e) => Err(Refusal::BodyUnreadable(e.to_string())),
    }
}

/// One attempt's request: the kept parts, a fresh trace context, and the body.
fn attempt_request(parts: &mut http::request::Parts, keep: bool, ctx: &TraceContext, body: ProxyBody) -> Request<Body> {
    // Only a request that may be retried needs its headers kept for another attempt.
    let mut headers = if keep { parts.headers.clone() } else { std::mem::take(&mut parts.headers) };
    headers.insert(&TRACEPARENT, ctx.header());
    let mut upstream = Request::new(body);
    *upstream.method_mut() = parts.method.clone();
    *upstream.uri_mut() = parts.uri.clone();
    *upstream.version_mut() = parts.version;
    *upstream.headers_mut() = headers;
    upstream
}

/// What one attempt came to, and whether the whole-request deadline passed during it.
struct Tried {
    attempt: Attempt,
    class: Class,
    whole_timed_out: bool,
}

/// Where an attempt goes and under which trace.
struct Target<'r> {
    route: &'r Route,
    retries: Option<&'r Retries>,
    version: &'r VersionRoute,
    endpoint: &'r InFlight,
    ctx: TraceContext,
    parent: Option<TraceContext>,
}

/// Sends one attempt within its time limit, and records it: metrics, outlier detection, a CLIENT
/// span.
async fn try_once(shared: &Shared, to: &Target<'_>, request: Request<Body>, deadline: Option<Instant>) -> Tried {
    let (counters, route, version, endpoint) = (&shared.counters, to.route, to.version, to.endpoint.endpoint());
    let per_try = to.retries.and_then(|r| r.per_try_timeout);
    let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let limit = policy_core::attempt_limit(per_try, remaining);
    let method = request.method().clone();
    let wall = SystemTime::now();
    let mut rec = Recorder { metrics: &version.metrics, start: Instant::now(), outcome: None };
    let send = shared.send(&endpoint.upstream, request);
    let result = match limit {
        Some(limit) => tokio::time::timeout(limit, send).await.ok(),
        None => Some(send.await),
    };
    let whole_timed_out = result.is_none() && deadline.is_some_and(|d| Instant::now() >= d);
    let attempt = match result {
        None => {
            version.metrics.add_timeouts(1);
            if whole_timed_out {
                counters.request_timeouts.add(1);
            } else {
                counters.per_try_timeouts.add(1);
            }
            Attempt::Failed(ErrorKind::Timeout, format!("no response within {:?}", limit.unwrap_or_default()))
        }
        Some(Ok(resp)) => Attempt::Response(resp),
        Some(Err((kind, message))) => Attempt::Failed(kind, message),
    };
    let outcome = match &attempt {
        Attempt::Response(r) => Outcome::status(r.status().as_u16()).with_grpc(grpc_status(r)),
        Attempt::Failed(kind, _) => Outcome::failed(*kind, *kind != ErrorKind::ConnectFailure),
    };
    rec.outcome = Some(outcome.with_mtls(endpoint.upstream.tls.is_some() && outcome.reached));
    drop(rec);
    let class = attempt.class();
    route.report(endpoint, class, now_ms(shared.origin), counters);
    if to.ctx.sampled {
        shared.spans.send(SpanRecord {
            trace_id: to.ctx.trace_id,
            span_id: to.ctx.span_id,
            parent_span_id: to.parent.map_or([0; 8], |p| p.span_id),
            kind: SpanKind::Client,
            method,
            path: None,
            peer_service: Some(route.name.clone()),
            server_address: Some(endpoint.authority.clone()),
            start: wall,
            end: SystemTime::now(),
            status: outcome.status,
            error: outcome.error.as_str(),
        });
    }
    Tried { attempt, class, whole_timed_out }
}

/// Whether to try again, and after how long: only a retriable outcome, within the attempts, with a
/// replayable body, a token from the retry budget and time left before the deadline. Counts why not.
fn retry_pause(
    shared: &Shared,
    route: &Route,
    retries: Option<&Retries>,
    tried: &Tried,
    retry: u32,
    replayable: bool,
    deadline: Option<Instant>,
) -> Option<Duration> {
    let retries = retries?;
    if retry >= retries.attempts || tried.whole_timed_out || !policy_core::retriable(&retries.retry_on, tried.class) {
        return None;
    }
    let counters = &shared.counters;
    if !replayable {
        counters.retries_body_too_large.add(1);
        return None;
    }
    if !route.budget.withdraw(shared.origin.elapsed().as_secs(), retries) {
        counters.retries_budget_denied.add(1);
        return None;
    }
    counters.retries.add(1);
    let pause = policy_core::backoff(retries, retry, fastrand::f64());
    Some(match deadline {
        Some(d) => pause.min(d.saturating_duration_since(Instant::now())),
        None => pause,
    })
}

/// Routes an outbound request by its service's policy and its route's plan: faults, then attempts
/// (a version by the split, an endpoint by the balancer) until one answers or the retry policy says
/// stop; the answer is counted on its route, once, with its whole latency.
async fn route_request<'a>(
    shared: &Shared,
    rt: &Runtime,
    route: &'a Route,
    plan: &Plan<'a>,
    req: Request<Incoming>,
    start: Instant,
    seen: &mut Seen<'a>,
) -> Response<Body> {
    let resp = match route_attempts(shared, rt, route, plan, req, start, seen).await {
        Ok(resp) => resp,
        Err(refusal) => refusal.response(),
    };
    let outcome = match grpc_status(&resp) {
        Some(code) => Class::Grpc(code),
        None => Class::Status(resp.status().as_u16()),
    };
    plan.metrics.record(outcome.is_failure(), start.elapsed());
    resp
}

async fn route_attempts<'a>(
    shared: &Shared,
    rt: &Runtime,
    route: &'a Route,
    plan: &Plan<'a>,
    req: Request<Incoming>,
    start: Instant,
    seen: &mut Seen<'a>,
) -> Result<Response<Body>, Refusal<'a>> {
    if plan.retries.is_some() {
        route.budget.deposit(shared.origin.elapsed().as_secs());
    }
    inject_faults(shared, route, start).await?;

    let parent = req.headers().get(&TRACEPARENT).and_then(|v| TraceContext::parse(v.as_bytes()));
    let trace = parent.unwrap_or_else(|| TraceContext::root(rt.sampling));
    seen.trace = Some(trace);
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(&SOURCE, rt.source.clone());
    let (body, stalled) = timed(rt, body);
    let idle = rt.config.limits.body_idle_timeout;
    let (replay, mut once) = take_body(body, &stalled, plan.retries.is_some(), idle).await.inspect_err(|r| {
        if matches!(r, Refusal::BodyStalled(_)) {
            shared.counters.bodies_timed_out.add(1);
        }
    })?;

    let deadline = plan.timeout.or(rt.config.limits.default_timeout).map(|t| start + t);
    let keep_headers = plan.retries.is_some_and(|r| r.attempts > 0);
    let mut retry = 0u32;
    loop {
        let version: &VersionRoute = route.pick_version();
        seen.version = Some(&version.name);
        seen.retries = retry;
        let endpoint = match route.pick_endpoint(version, now_ms(shared.origin)) {
            Ok(e) => e,
            Err(why) => {
                shared.counters.unroutable_no_endpoint.add(1);
                let _rec = Recorder {
                    metrics: &version.metrics,
                    start: Instant::now(),
                    outcome: Some(Outcome {
                        status: 503,
                        error: ErrorKind::NoEndpoint,
                        reached: false,
                        mtls: false,
                        grpc: None,
                    }),
                };
                return Err(Refusal::NoEndpoint { route, why });
            }
        };
        if retry > 0 {
            version.metrics.add_retries(1);
            plan.metrics.add_retry();
        }
        let to = Target { route, retries: plan.retries, version, endpoint: &endpoint, ctx: trace.child(), parent };
        let body = match (&replay, once.take()) {
            (Some(bytes), _) => ProxyBody::full(bytes.clone()),
            (None, Some(b)) => b,
            (None, None) => ProxyBody::empty(),
        };
        let request = attempt_request(&mut parts, keep_headers, &to.ctx, body);
        let tried = try_once(shared, &to, request, deadline).await;
        drop(endpoint);
        if stalled.get() {
            shared.counters.bodies_timed_out.add(1);
            return Err(Refusal::BodyStalled(idle));
        }
        if let Some(pause) = retry_pause(shared, route, plan.retries, &tried, retry, replay.is_some(), deadline) {
            retry += 1;
            tokio::time::sleep(pause).await;
            if deadline.is_none_or(|d| Instant::now() < d) {
                continue;
            }
            shared.counters.request_timeouts.add(1);
            version.metrics.add_timeouts(1);
            let (kind, message) = (ErrorKind::Timeout, "the whole-request timeout passed".to_owned());
            return Err(Refusal::Upstream { route, version: &version.name, kind, message, retries: retry });
        }
        return match tried.attempt {
            Attempt::Response(mut resp) => {
                strip_hop_by_hop(resp.headers_mut());
                Ok(resp)
            }
            Attempt::Failed(kind, message) => {
                Err(Refusal::Upstream { route, version: &version.name, kind, message, retries: retry })
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        let text = "workload: {app: a}\ninbound: {listen: '127.0.0.1:0', app: '127.0.0.1:1'}\n\
                    services: {b: {versions: {v1: ['127.0.0.1:2']}}}\n\
                    policy: {services: {b: {outlier_detection: {consecutive_5xx: 1, base_ejection_time: 30s}}}}\n";
        let config = AgentConfig::parse(text, "t").unwrap();
        let counters = Arc::new(Counters::default());
        Shared::new(config, counters.clone(), SpanSink::new(None, counters), None)
    }

    /// On tokio's paused clock (as linkerd2-proxy's breaker tests run): the rate limiter refills
    /// and an ejection ends when the clock says, with no test waiting in real time.
    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_and_ejections_run_on_the_tokio_clock() {
        let s = shared();
        let limit = RateLimit { per_second: 1.0, burst: 2.0 };
        assert_eq!((s.take_token("c", &limit), s.take_token("c", &limit)), (Ok(()), Ok(())));
        assert_eq!(s.take_token("c", &limit), Err(1), "the burst is spent");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(s.take_token("c", &limit).is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(s.take_token("c", &limit), Ok(()), "one token a second");

        let rt = s.runtime.load();
        let b = rt.routes.lookup("b").unwrap();
        let ep = b.versions[0].endpoints[0].clone();
        let now = || crate::route::now_ms(s.origin);
        assert!(b.report(&ep, meshlens_model::policy_core::Outcome::Status(503), now(), &s.counters));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(b.pick_endpoint(&b.versions[0], now()).is_err(), "ejected for 30 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.pick_endpoint(&b.versions[0], now()).is_ok(), "back after 30 s of the tokio clock");
    }

    #[test]
    fn a_responses_grpc_status_is_read_from_its_head() {
        let resp = |status: u16, headers: &[(&'static str, &'static str)]| {
            let mut r = Response::new(());
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            for (k, v) in headers {
                r.headers_mut().insert(HeaderName::from_static(k), HeaderValue::from_static(v));
            }
            r
        };
        assert_eq!(grpc_status(&resp(200, &[("grpc-status", "14")])), Some(14));
        assert_eq!(grpc_status(&resp(200, &[("content-type", "application/grpc")])), Some(0), "status in trailers");
        assert_eq!(grpc_status(&resp(200, &[("grpc-status", "banana")])), Some(2), "not a code: UNKNOWN");
        assert_eq!(grpc_status(&resp(200, &[("grpc-status", "99")])), Some(2), "out of range: UNKNOWN");
        assert_eq!(grpc_status(&resp(200, &[])), None, "not gRPC");
        assert_eq!(grpc_status(&resp(503, &[("grpc-status", "14")])), None, "an HTTP error answers first");
    }

    #[test]
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "secret"),
            ("te", "trailers"),
            ("x-kept", "yes"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["te", "x-kept"]);
    }
}
