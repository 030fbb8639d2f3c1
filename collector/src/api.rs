//! The HTTP API (`/api/v1/*`, `/metrics`, `/healthz`, `/readyz`, `/`; described in
//! `collector/src/openapi.json`), as an axum router over the [`Hub`].
//!
//! Handlers return `Result<_, ApiError>`: a client's mistake gets 400 with a message that names the
//! parameter, an unknown workload or revision 404, a collector that is not ready 503, and an
//! internal failure is logged and answered with a plain JSON body.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use meshlens_model::api::{
    ErrorBody, ErrorDetail, ExemplarsBody, Profile, RoutesBody, TraceBody, TracesBody, WorkloadRow, WorkloadsBody,
};
use meshlens_model::graph::{DiffBody, GraphSnapshot, RevisionsBody, View};
use meshlens_model::hist::Merger;
use meshlens_model::time::{parse_duration, parse_rfc3339_ms};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::engine::unix_now;
use crate::hub::Hub;
use crate::store::StoredRevision;
use crate::views;
use crate::window::{MAX_WINDOW_SECS, MIN_WINDOW_SECS};

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// A query parameter is wrong.
    #[error("{0}")]
    BadParameter(String),
    /// Nothing by that name or number.
    #[error("{0}")]
    NotFound(String),
    /// The collector is starting.
    #[error("collector is not ready yet")]
    NotReady,
    /// A limit on concurrent use is reached; try again later.
    #[error("{0}")]
    Busy(String),
    /// Something broke inside.
    #[error("internal error")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadParameter(_) => (StatusCode::BAD_REQUEST, "bad_parameter"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "API request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let busy = matches!(self, ApiError::Busy(_));
        let body = ErrorBody { error: ErrorDetail { code: code.to_owned(), message: self.to_string() } };
        let mut r = (status, Json(body)).into_response();
        if busy {
            r.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
        }
        r
    }
}

fn bad(name: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::BadParameter(format!("parameter {name}: {detail}"))
}

/// A query string read into `T` (serde, unknown parameters refused); a bad one is a 400 that says
/// what is wrong and which parameters the endpoint takes.
type Query<T> = Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>;

fn query<T>(q: Query<T>, takes: &str) -> Result<T, ApiError> {
    q.map(|q| q.0).map_err(|e| ApiError::BadParameter(format!("{}: {takes}", e.body_text())))
}

/// Where `at=` points.
#[derive(Clone, Copy, Debug, PartialEq)]
enum At {
    Revision(u64),
    Time(i64),
}

#[derive(Debug, Default)]
struct Params {
    view: Option<View>,
    window: Option<u64>,
    namespaces: Vec<String>,
    collapse: Vec<String>,
    at: Option<At>,
    numbers: Vec<(String, u64)>,
    /// Named workloads: `service`, `from`.
    names: Vec<(&'static str, String)>,
}

impl Params {
    fn number(&self, name: &str) -> Option<u64> {
        self.numbers.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }

    fn name(&self, name: &str) -> Option<&str> {
        self.names.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
    let mut p = Params::default();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if !allowed.contains(&key.as_ref()) {
            return Err(bad(&key, format!("unknown parameter; this endpoint takes {}", allowed.join(", "))));
        }
        match key.as_ref() {
            "view" => p.view = Some(value.parse::<View>().map_err(|e| bad("view", e))?),
            "window" => {
                let d = parse_duration(&value).map_err(|e| bad("window", e))?;
                let secs = d.as_secs();
                if !(MIN_WINDOW_SECS..=MAX_WINDOW_SECS).contains(&secs) {
                    return Err(bad("window", format!("{value:?} is outside 10s..1h")));
                }
                p.window = Some(secs);
            }
            "namespace" => {
                if value.is_empty() {
                    return Err(bad("namespace", "must not be empty"));
                }
                p.namespaces.push(value.into_owned());
            }
            "collapse" => {
                if value.is_empty() {
                    return Err(bad("collapse", "must not be empty: a namespace, or an app as ns/app"));
                }
                p.collapse.push(value.into_owned());
            }
            "at" => {
                p.at = Some(match value.parse::<u64>() {
                    Ok(n) => At::Revision(n),
                    Err(_) => At::Time(parse_rfc3339_ms(&value).map_err(|e| bad("at", e))?),
                });
            }
            // `from` names a caller where a service is asked for (routes); elsewhere it is a number (diff).
            key @ ("service" | "from") if allowed.contains(&"service") => {
                let key = if key == "service" { "service" } else { "from" };
                if value.is_empty() || value.len() > 512 || value.split('/').count() > 3 {
                    return Err(bad(key, format!("{value:?} is not an app, namespace/app or namespace/app/version")));
                }
                p.names.push((key, value.into_owned()));
            }
            name => {
                let n =
                    value.parse::<u64>().map_err(|_| bad(name, format!("{value:?} is not a non-negative integer")))?;
                p.numbers.push((name.to_owned(), n));
            }
        }
    }
    Ok(p)
}

type ApiState = State<Arc<Api>>;

/// The API's state.
pub(crate) struct Api {
    hub: Arc<Hub>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    subscribers: Arc<tokio::sync::Semaphore>,
    max_sse_subscribers: usize,
    trace_link: Option<String>,
}

fn ready(hub: &Hub) -> Result<(), ApiError> {
    if hub.is_ready() { Ok(()) } else { Err(ApiError::NotReady) }
}

/// The revision number `at` names (a number, or the newest published at or before a time).
fn revision_number(hub: &Hub, at: At) -> Result<u64, ApiError> {
    match at {
        At::Revision(n) => Ok(n),
        At::Time(t) => hub.revision_at_time(t).ok_or_else(|| {
            ApiError::NotFound(format!("no revision at or before {}", meshlens_model::time::format_rfc3339_ms(t)))
        }),
    }
}

fn not_stored(hub: &Hub, n: u64) -> ApiError {
    ApiError::NotFound(format!("revision {n} is not stored (oldest kept: {})", hub.oldest()))
}

/// One view of the revision `at` names, with the window it was published with: the latest from
/// memory, another from the store (that view only is read and parsed).
fn stored(hub: &Hub, at: At, view: View) -> Result<(u64, GraphSnapshot), ApiError> {
    let n = revision_number(hub, at)?;
    if let Some(latest) = hub.latest().filter(|l| l.revision == n) {
        return Ok((latest.window_seconds, view_of(&latest, view)?));
    }
    let internal = |e: &dyn std::fmt::Display| ApiError::Internal(e.to_string());
    let (head, json) = hub.store.revision_view(n, view).map_err(|e| internal(&e))?.ok_or_else(|| not_stored(hub, n))?;
    Ok((head.window_seconds, serde_json::from_slice(&json).map_err(|e| internal(&e))?))
}

fn other_window(rev: u64, stored: u64, w: u64) -> ApiError {
    bad(
        "window",
        format!(
            "revision {rev} was published with a {stored}s window; a past revision cannot be read with another window ({w}s)"
        ),
    )
}

/// A past revision's view as the store holds it, its JSON sent as stored (no parse, no
/// serialisation); the latest is served as the live answer kept for it.
async fn stored_view(hub: &Arc<Hub>, at: At, view: View, window: Option<u64>) -> Result<Bytes, ApiError> {
    let n = revision_number(hub, at)?;
    // (A latest revision published with another window, before a restart, is read from the store.)
    if let Some(latest) = hub.latest().filter(|l| l.revision == n && l.window_seconds == hub.window_secs) {
        if let Some(w) = window.filter(|&w| w != latest.window_seconds) {
            return Err(other_window(n, latest.window_seconds, w));
        }
        let key = crate::live::LiveKey::new(latest.window_seconds, view, &[]);
        let answer = hub.live_graph(key, unix_now()).map_err(|e| ApiError::Internal(e.to_string()))?;
        // The live answer may be of a newer revision by now; then read the one asked for.
        if answer.snapshot.revision == n {
            return Ok(answer.body.clone());
        }
    }
    let h = hub.clone();
    let read = tokio::task::spawn_blocking(move || h.store.revision_view(n, view))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (head, json) = read.ok_or_else(|| not_stored(hub, n))?;
    if let Some(w) = window.filter(|&w| w != head.window_seconds) {
        return Err(other_window(n, head.window_seconds, w));
    }
    Ok(Bytes::from(json))
}

fn view_of(rev: &StoredRevision, view: View) -> Result<GraphSnapshot, ApiError> {
    rev.view(view).cloned().ok_or_else(|| ApiError::Internal(format!("revision {} lacks view {view}", rev.revision)))
}

/// What a graph read answers with: a live answer as kept (served as its bytes), or a snapshot built
/// for this read (a stored revision, or a namespace filter applied to a copy).
enum Resolved {
    Kept(Arc<crate::live::LiveAnswer>),
    Built(GraphSnapshot),
}

impl Resolved {
    fn snapshot(&self) -> &GraphSnapshot {
        match self {
            Resolved::Kept(a) => &a.snapshot,
            Resolved::Built(g) => g,
        }
    }
}

/// The snapshot a read asks for: a stored revision, or the live graph for a window (see [`crate::live`]).
fn resolve(hub: &Hub, p: &Params) -> Result<Resolved, ApiError> {
    let view = p.view.unwrap_or_default();
    let mut g = if let Some(at) = p.at {
        if !p.collapse.is_empty() {
            return Err(bad(
                "collapse",
                "a past revision keeps its views' figures, not the histograms a collapsed node's percentiles merge; \
                 collapse the live graph, or read view=namespace at that revision",
            ));
        }
        let (window, g) = stored(hub, at, view)?;
        if let Some(w) = p.window.filter(|&w| w != window) {
            return Err(other_window(g.revision, window, w));
        }
        g
    } else {
        let key = crate::live::LiveKey::new(p.window.unwrap_or(hub.window_secs), view, &p.collapse);
        let answer = hub.live_graph(key, unix_now()).map_err(|e| ApiError::Internal(e.to_string()))?;
        if p.namespaces.is_empty() {
            return Ok(Resolved::Kept(answer));
        }
        (*answer.snapshot).clone()
    };
    g.retain_namespaces(&p.namespaces);
    Ok(Resolved::Built(g))
}

async fn graph(State(api): ApiState, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    ready(&api.hub)?;
    let p = parse(q.as_deref(), &["view", "window", "namespace", "collapse", "at"])?;
    if let Some(at) = p.at.filter(|_| p.namespaces.is_empty() && p.collapse.is_empty()) {
        let body = stored_view(&api.hub, at, p.view.unwrap_or_default(), p.window).await?;
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    Ok(match resolve(&api.hub, &p)? {
        Resolved::Kept(a) => ([(header::CONTENT_TYPE, "application/json")], a.body.clone()).into_response(),
        Resolved::Built(g) => Json(g).into_response(),
    })
}

async fn revisions(State(api): ApiState, RawQuery(q): RawQuery) -> Result<Json<RevisionsBody>, ApiError> {
    ready(&api.hub)?;
    let p = parse(q.as_deref(), &["since", "limit"])?;
    let since = p.number("since").unwrap_or(0);
    let limit = p.number("limit").unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(bad("limit", "must be between 1 and 10000"));
    }
    // Store reads block: off the async threads, so a long list never holds up ingest or /healthz.
    let hub = api.hub.clone();
    let list = tokio::task::spawn_blocking(move || hub.store.revisions_after(since, limit as usize))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let latest = api.hub.latest().map(|r| r.revision).unwrap_or(0);
    // The cursor of the next page, when this one stopped short of the latest.
    let next = list.last().map(|r| r.revision).filter(|&r| list.len() as u64 == limit && r < latest);
    Ok(Json(RevisionsBody { latest, oldest: api.hub.oldest(), revisions: list, next }))
}

async fn diff(State(api): ApiState, RawQuery(q): RawQuery) -> Result<Json<DiffBody>, ApiError> {
    ready(&api.hub)?;
    let p = parse(q.as_deref(), &["from", "to", "view"])?;
    let from = p.number("from").ok_or_else(|| bad("from", "is required (a revision number)"))?;
    let to = match p.number("to") {
        Some(t) => t,
        None => api
            .hub
            .latest()
            .map(|r| r.revision)
            .ok_or_else(|| ApiError::NotFound("no revision published yet".into()))?,
    };
    let view = p.view.unwrap_or_default();
    let (_, a) = stored(&api.hub, At::Revision(from), view)?;
    let (_, b) = stored(&api.hub, At::Revision(to), view)?;
    Ok(Json(DiffBody::between(&a, &b)))
}

fn workload_rows(g: &GraphSnapshot) -> Vec<WorkloadRow> {
    WorkloadRow::from_graph(g)
}

async fn workloads(State(api): ApiState, RawQuery(q): RawQuery) -> Result<Json<WorkloadsBody>, ApiError> {
    ready(&api.hub)?;
    let mut p = parse(q.as_deref(), &["window", "namespace", "at"])?;
    p.view = Some(View::Workload);
    let r = resolve(&api.hub, &p)?;
    let g = r.snapshot();
    Ok(Json(WorkloadsBody { revision: g.revision, window_seconds: g.window_seconds, workloads: workload_rows(g) }))
}

async fn profile(State(api): ApiState, RawQuery(q): RawQuery) -> Result<Json<Profile>, ApiError> {
    ready(&api.hub)?;
    let mut p = parse(q.as_deref(), &["window", "namespace", "at"])?;
    p.view = Some(View::Versioned);
    Ok(Json(Profile::from_graph(resolve(&api.hub, &p)?.snapshot())))
}

async fn app(
    State(api): ApiState,
    Path((namespace, app)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    ready(&api.hub)?;
    let p = parse(q.as_deref(), &["window"])?;
    let window = p.window.unwrap_or(api.hub.window_secs);
    let mut merger = Merger::default();
    let detail = {
        let engine = api.hub.engine.lock();
        views::app_detail(&engine, &namespace, &app, window, unix_now(), &mut merger)
    };
    match detail {
        Some(d) => Ok(Json(d).into_response()),
        None => Err(ApiError::NotFound(format!("no workload {namespace}/{app} with traffic in the last {window}s"))),
    }
}

/// `/api/v1/routes?service=&from=&window=`: a service's routes as its callers' agents saw them.
async fn routes(State(api): ApiState, RawQuery(q): RawQuery) -> Result<Json<RoutesBody>, ApiError> {
    ready(&api.hub)?;
    let p = parse(q.as_deref(), &["service", "from", "window"])?;
    let Some(wanted) = p.name("service") else {
        return Err(bad("service", "missing: name the service, as app or namespace/app"));
    };
    let window = p.window.unwrap_or(api.hub.window_secs);
    let mut merger = Merger::default();
    let engine = api.hub.engine.lock();
    let table = &engine.graph.routes;
    let service = match table.service(wanted) {
        Ok(s) => s,
        Err(crate::routes::NoService::Unknown) => {
            return Err(ApiError::NotFound(format!(
                "no routes of {wanted:?} are known: no caller's agent has reported a request to it in the last hour"
            )));
        }
        Err(crate::routes::NoService::Ambiguous(all)) => {
            return Err(bad("service", format!("{wanted:?} is in several namespaces: {}; name one", all.join(", "))));
        }
    };
    let spec = crate::window::WindowSpec::new(unix_now(), window, engine.data_since);
    let from = p.name("from").map(str::to_owned);
    let routes = table.rows(&service, from.as_deref(), spec, &mut merger);
    Ok(Json(RoutesBody { service, from, window_seconds: window, routes }))
}

/// `/api/v1/traces?from=&to=&failed=&sort=&limit=`: the query, as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TracesQuery {
    from: Option<String>,
    to: Option<String>,
    #[serde(default)]
    failed: bool,
    sort: Option<String>,
    limit: Option<usize>,
}

async fn traces(State(api): ApiState, q: Query<TracesQuery>) -> Result<Json<TracesBody>, ApiError> {
    let q = query(q, "from, to, failed, sort, limit")?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return Err(bad("limit", "must be between 1 and 1000"));
    }
    let slowest = match q.sort.as_deref() {
        None | Some("newest") => false,
        Some("slowest") => true,
        Some(other) => return Err(bad("sort", format!("unknown {other:?}: expected newest or slowest"))),
    };
    let search = crate::traces::Search { from: q.from, to: q.to, failed: q.failed, slowest, limit };
    let engine = api.hub.engine.lock();
    let store = &engine.traces;
    Ok(Json(TracesBody {
        traces: store.search(&search, api.trace_link.as_deref()),
        kept: store.len(),
        spans_kept: store.spans(),
        spans_bound: store.bound(),
    }))
}

/// `/api/v1/exemplars?node=` or `?from=&to=`, with `limit=`: the query, as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExemplarsQuery {
    node: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
}

async fn exemplars(State(api): ApiState, q: Query<ExemplarsQuery>) -> Result<Json<ExemplarsBody>, ApiError> {
    let q = query(q, "node, from, to, limit")?;
    let limit = q.limit.unwrap_or(crate::exemplars::KEEP);
    if !(1..=100).contains(&limit) {
        return Err(bad("limit", "must be between 1 and 100"));
    }
    let of = match (&q.node, &q.from, &q.to) {
        (Some(n), None, None) => crate::exemplars::Of::Node(n),
        (None, Some(f), Some(t)) => crate::exemplars::Of::Edge(f, t),
        (Some(_), _, _) => return Err(bad("node", "give node, or from and to (an edge), not both")),
        _ => return Err(bad("from", "missing: give node=ID, or from=ID and to=ID for an edge")),
    };
    let engine = api.hub.engine.lock();
    let (failed, slowest) = crate::exemplars::collect(&engine.graph, of, unix_now() as u64, limit);
    let item = |(s, t, x): (u32, u32, crate::exemplars::Sample)| {
        let trace_id = crate::traces::hex(&x.trace_id);
        meshlens_model::api::Exemplar {
            link: crate::traces::link_for(api.trace_link.as_deref(), &trace_id),
            kept: engine.traces.contains(&x.trace_id),
            trace_id,
            source: engine.graph.peer_at(s).id(),
            target: engine.graph.peer_at(t).id(),
            latency_ms: x.latency_us as f64 / 1e3,
            time_unix: x.sec,
            failed: x.failed,
        }
    };
    Ok(Json(ExemplarsBody {
        failed: failed.into_iter().map(item).collect(),
        slowest: slowest.into_iter().map(item).collect(),
    }))
}

/// `/api/v1/tap?target=&find=&max_rps=`: the query, as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TapQuery {
    target: Option<String>,
    find: Option<String>,
    max_rps: Option<u32>,
}

/// The longest tap target (`ns/app/version@cluster`).
const MAX_TAP_TARGET: usize = 4 * meshlens_model::identity::MAX_NAME_BYTES;

/// `/api/v1/tap`: a live stream of the requests the target's agents see (`event: request`), and
/// once a second `event: status` (agents connected and live, events, dropped).
async fn tap(
    State(api): ApiState,
    q: Query<TapQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    use meshlens_model::tap::{MAX_TAP_RPS, parse_find};
    ready(&api.hub)?;
    let q = query(q, "target, find, max_rps")?;
    let target = match q.target {
        None => return Err(bad("target", "missing: name a workload as app, namespace/app or its node id")),
        Some(t) if t.is_empty() || t.len() > MAX_TAP_TARGET => {
            return Err(bad("target", format!("must be 1 to {MAX_TAP_TARGET} bytes")));
        }
        Some(t) => t,
    };
    let find = q.find.filter(|f| !f.trim().is_empty());
    if let Some(f) = &find {
        parse_find(f).map_err(|e| bad("find", e))?;
    }
    let max_rps = q.max_rps.unwrap_or(MAX_TAP_RPS);
    if !(1..=MAX_TAP_RPS).contains(&max_rps) {
        return Err(bad("max_rps", format!("must be between 1 and {MAX_TAP_RPS}")));
    }
    let open = api.hub.taps.open(&target, find, max_rps).map_err(|e| ApiError::Busy(e.to_string()))?;
    let status = |t: &crate::tap::OpenTap| {
        Event::default().event("status").json_data(t.status()).unwrap_or_else(|_| Event::default())
    };
    let first = status(&open);
    let tick = tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
    let updates = futures_util::stream::unfold((open, tick), move |(mut open, mut tick)| async move {
        let event = tokio::select! {
            e = open.events.recv() => {
                let e = e?;
                open.sent();
                Event::default().event("request").json_data(e).unwrap_or_else(|_| Event::default())
            }
            _ = tick.tick() => status(&open),
        };
        Some((Ok(event), (open, tick)))
    });
    let mut shutdown = api.shutdown.clone();
    let stop = async move {
        let _ = shutdown.wait_for(|&s| s).await;
    };
    let events = futures_util::StreamExt::take_until(tokio_stream::iter([Ok(first)]).chain(updates), Box::pin(stop));
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

async fn trace(State(api): ApiState, Path(trace_id): Path<String>) -> Result<Json<TraceBody>, ApiError> {
    let Some(id) = crate::traces::parse_trace_id(&trace_id) else {
        return Err(bad("trace_id", format!("{trace_id:?} is not a trace id of 32 hex digits")));
    };
    let engine = api.hub.engine.lock();
    let store = &engine.traces;
    match store.get(&id, api.trace_link.as_deref()) {
        Some(body) => Ok(Json(body)),
        None => Err(ApiError::NotFound(format!(
            "trace {trace_id} is not kept here: the collector keeps the last {} spans ({} traces now){}",
            store.bound(),
            store.len(),
            crate::traces::link_for(api.trace_link.as_deref(), &trace_id)
                .map_or(String::new(), |l| format!("; look in {l}"))
        ))),
    }
}

fn sse_event(rev: &StoredRevision, view: View, namespaces: &[String]) -> Option<Event> {
    let mut g = view_of(rev, view).ok()?;
    g.retain_namespaces(namespaces);
    let data = serde_json::to_string(&g).ok()?;
    Some(Event::default().event("graph").id(rev.revision.to_string()).data(data))
}

async fn stream(
    State(api): ApiState,
    RawQuery(q): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    ready(&api.hub)?;
    let p = parse(q.as_deref(), &["view", "namespace"])?;
    // One permit per open stream, held until the stream ends.
    let Ok(permit) = api.subscribers.clone().try_acquire_owned() else {
        api.hub.counters.sse_refused.add(1);
        return Err(ApiError::Busy(format!(
            "{} SSE subscribers are connected, the limit (--max-sse-subscribers); poll /api/v1/graph or try again later",
            api.max_sse_subscribers
        )));
    };
    let view = p.view.unwrap_or_default();
    let namespaces = p.namespaces;
    let rx = api.hub.events.subscribe();
    let first = api.hub.latest();
    let first_rev = first.as_ref().map(|r| r.revision).unwrap_or(0);
    let ns = namespaces.clone();
    let initial = tokio_stream::iter(first.and_then(|r| sse_event(&r, view, &ns)).map(Ok));
    let updates = BroadcastStream::new(rx).filter_map(move |item| match item {
        Ok(rev) if rev.revision > first_rev => {
            let _held = &permit;
            sse_event(&rev, view, &namespaces).map(Ok)
        }
        // A slow subscriber that lagged gets the next revision; the graph is a full snapshot.
        _ => None,
    });
    // Streams end when the collector shuts down, so open consoles do not hold it up.
    let mut shutdown = api.shutdown.clone();
    let stop = async move {
        let _ = shutdown.wait_for(|&s| s).await;
    };
    let events = futures_util::StreamExt::take_until(initial.chain(updates), Box::pin(stop));
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

async fn metrics(State(api): ApiState, headers: axum::http::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let format = crate::prom::Format::from_accept(accept);
    let body = {
        let engine = api.hub.engine.lock();
        crate::prom::render(&engine, &api.hub, format)
    };
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(api): ApiState) -> Result<&'static str, ApiError> {
    ready(&api.hub)?;
    Ok("ready\n")
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

async fn index() -> Html<&'static str> {
    Html(meshlens_web_bundle::INDEX_HTML)
}

async fn app_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], meshlens_web_bundle::APP_JS)
}

async fn app_wasm() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/wasm")], meshlens_web_bundle::APP_WASM)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; see /api/v1/openapi.json".into())
}

/// The API router.
pub(crate) fn router(
    hub: Arc<Hub>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    max_sse_subscribers: usize,
    trace_link: Option<String>,
) -> Router {
    let subscribers = Arc::new(tokio::sync::Semaphore::new(max_sse_subscribers));
    let api = Arc::new(Api { hub, shutdown, subscribers, max_sse_subscribers, trace_link });
    Router::new()
        .route("/api/v1/graph", get(graph))
        .route("/api/v1/revisions", get(revisions))
        .route("/api/v1/diff", get(diff))
        .route("/api/v1/workloads", get(workloads))
        .route("/api/v1/profile", get(profile))
        .route("/api/v1/workloads/{namespace}/{app}", get(app))
        .route("/api/v1/stream", get(stream))
        .route("/api/v1/routes", get(routes))
        .route("/api/v1/traces", get(traces))
        .route("/api/v1/exemplars", get(exemplars))
        .route("/api/v1/traces/{trace_id}", get(trace))
        .route("/api/v1/tap", get(tap))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/app_bg.wasm", get(app_wasm))
        .fallback(not_found)
        .with_state(api)
}
