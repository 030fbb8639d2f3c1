//! `--prometheus URL`: the graph from a Prometheus-compatible query API (Prometheus,
//! VictoriaMetrics, Thanos, Mimir) instead of, or beside, OTLP — meshlens's own
//! `traces_service_graph_*` series remote-written by any number of collectors
//! ([`crate::remote_write`]), Istio's standard metrics, and Linkerd's proxy metrics.
//!
//! The store's series are read into the same [`Graph`] OTLP feeds, so revisions, windows, views,
//! health, diff and `at=` work unchanged. Every poll runs one instant query per metric (the raw
//! series, no aggregation, so nothing is extrapolated) and turns each series' increase since the
//! last poll into requests at the poll's time, then adds up the series of one edge (the
//! collectors', the pods', the response codes'). A value lower than the last is a counter reset
//! (the new value is the increase); a series first seen after the first poll counts from zero; a
//! series absent from a poll's answer is forgotten. Counts are therefore exact, not `increase()`'s
//! extrapolation. Latency comes from the histograms' buckets, each bucket's increase put at its
//! midpoint ([`crate::metrics`]'s rule for agent histograms), so a percentile is within the width of
//! the bucket it falls in.
//!
//! On start, the source reads the last `backfill` (the collector's window) at poll steps with one
//! range query per metric, so the first graph already has a window of traffic.
//!
//! What each dialect reads (see docs/ARCHITECTURE.md for the queries):
//! - **meshlens / Tempo**: `traces_service_graph_request_total` and `_failed_total` (`client`,
//!   `server`, `*_service_namespace`, `*_service_version`, `connection_type`), server-side latency
//!   from `traces_service_graph_request_server_seconds_bucket` (the client-side histogram where an
//!   edge has no server side).
//! - **Istio**: `istio_requests_total` and `istio_request_duration_milliseconds_bucket`. As Kiali
//!   does, each request counts once: the destination's report (`reporter="destination"`) where
//!   the destination has a proxy, the source's where it has none (`destination_workload="unknown"`)
//!   or for requests that never reached it (`response_flags` UH, UF, UO, NR, NC); the query asks
//!   only for those source reports, which halves what the store sends. Nodes are canonical service and revision in
//!   the workload's namespace; success follows the one failure rule (5xx, a gRPC server fault, no
//!   response); mTLS is `connection_security_policy="mutual_tls"`.
//! - **Linkerd**: `response_total` and `response_latency_ms_bucket` as `linkerd viz` reads them:
//!   the caller's proxy (`direction="outbound"`, `deployment` → `dst_deployment`, or stateful sets,
//!   daemon sets) for meshed traffic, the callee's (`direction="inbound"`) only for callers without
//!   an identity (`tls!="true"`, drawn from `user`); success is `classification="success"`, mTLS is
//!   `tls="true"`.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use hashbrown::{HashMap, HashSet};
use meshlens_model::stats::{CodeClass, Report, outcome};
use meshlens_model::{Peer, Workload};
use tokio::sync::watch;

use crate::graph::{Graph, Protocol};
use crate::hub::Hub;
use crate::metrics::bucket_midpoint;
use crate::window::Obs;

/// Which series a source reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// `traces_service_graph_*` (meshlens collectors, Tempo, the servicegraph connector).
    Meshlens,
    /// Istio's standard metrics.
    Istio,
    /// Linkerd's proxy metrics.
    Linkerd,
}

impl Dialect {
    /// Every dialect, as `auto` reads them.
    pub const ALL: [Dialect; 3] = [Dialect::Meshlens, Dialect::Istio, Dialect::Linkerd];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Meshlens => "meshlens",
            Dialect::Istio => "istio",
            Dialect::Linkerd => "linkerd",
        }
    }

    /// The queries a poll runs for it.
    pub fn queries(self) -> &'static [Query] {
        match self {
            Dialect::Meshlens => &[
                Query { promql: "traces_service_graph_request_total", role: Role::Count },
                Query { promql: "traces_service_graph_request_failed_total", role: Role::Failed },
                Query { promql: "meshlens_grpc_requests_total", role: Role::Grpc },
                Query { promql: "meshlens_mtls_requests_total", role: Role::Mtls },
                Query { promql: "traces_service_graph_request_server_seconds_bucket", role: Role::Buckets(1.0) },
                Query { promql: "traces_service_graph_request_client_seconds_bucket", role: Role::Buckets(1.0) },
            ],
            Dialect::Istio => &[
                // The source proxy's reports only where they count (see the module docs): half
                // the series, and most of the bytes, are the other reporter's.
                Query {
                    promql: "istio_requests_total{reporter=\"destination\"} or istio_requests_total{reporter=\"source\",destination_workload=\"unknown\"} or istio_requests_total{reporter=\"source\",response_flags=~\"(.*,)?(UH|UF|UO|NR|NC)(,.*)?\"}",
                    role: Role::Count,
                },
                Query {
                    promql: "istio_request_duration_milliseconds_bucket{reporter=\"destination\"} or istio_request_duration_milliseconds_bucket{reporter=\"source\",destination_workload=\"unknown\"}",
                    role: Role::Buckets(1e-3),
                },
            ],
            Dialect::Linkerd => &[
                Query { promql: "response_total", role: Role::Count },
                Query { promql: "response_latency_ms_bucket", role: Role::Buckets(1e-3) },
            ],
        }
    }
}

impl std::str::FromStr for Dialect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Dialect::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown dialect {s:?}: use meshlens, istio or linkerd"))
    }
}

/// What a query's series are.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Role {
    /// Requests (by status, for Istio and Linkerd).
    Count,
    /// Failed requests (meshlens's `_failed_total`).
    Failed,
    /// Requests by gRPC status code (meshlens's `meshlens_grpc_requests_total`): the edge is gRPC.
    Grpc,
    /// Requests over mutual TLS (meshlens's `meshlens_mtls_requests_total`).
    Mtls,
    /// Histogram buckets (`le`), in units of this many seconds.
    Buckets(f64),
}

/// One instant query of a poll.
#[derive(Clone, Copy, Debug)]
pub struct Query {
    /// The PromQL (a bare metric name: raw series).
    pub promql: &'static str,
    /// What its series are.
    pub role: Role,
}

/// Where and how a source reads.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// The query API's base URL (`http://HOST:9090`; `/api/v1/query` is appended).
    pub url: String,
    /// The dialects read.
    pub dialects: Vec<Dialect>,
    /// How often the store is polled.
    pub interval: Duration,
    /// How much history the first graph reads.
    pub backfill: Duration,
    /// A bearer token for the store.
    pub token: Option<String>,
    /// Most series remembered (the rest are dropped and counted).
    pub max_series: usize,
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The store could not be reached.
    #[error("cannot query {url}: {source}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// The store answered with an error.
    #[error("{url} refused {query:?}: {message}")]
    Refused {
        /// The URL.
        url: String,
        /// The query.
        query: String,
        /// Its message.
        message: String,
    },
    /// The store's answer is not the query API's JSON.
    #[error("{url} did not answer as a Prometheus query API: {message}")]
    NotPrometheus {
        /// The URL.
        url: String,
        /// What was wrong.
        message: String,
    },
}

/// One series of an answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Its labels, `__name__` among them (shared by the steps of a range answer).
    pub labels: Arc<BTreeMap<String, String>>,
    /// A hash of the labels ([`series_id`]), computed once per series.
    pub id: u64,
    /// Its value.
    pub value: f64,
}

#[derive(serde::Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<AnswerData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(serde::Deserialize)]
struct AnswerData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<AnswerSeries>,
}

#[derive(serde::Deserialize)]
struct AnswerSeries {
    metric: BTreeMap<String, String>,
    /// An instant query's sample.
    #[serde(default)]
    value: Option<(f64, String)>,
    /// A range query's samples.
    #[serde(default)]
    values: Vec<(f64, String)>,
}

/// One series of a range answer: its labels and its samples, oldest first.
#[derive(Clone, Debug)]
pub struct RangeSeries {
    /// Its labels.
    pub labels: Arc<BTreeMap<String, String>>,
    /// Their hash.
    pub id: u64,
    /// `(Unix seconds, value)`.
    pub samples: Vec<(f64, f64)>,
}

fn number(v: &str) -> Option<f64> {
    v.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// A client of the Prometheus HTTP query API.
#[derive(Clone)]
pub struct PromApi {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl PromApi {
    /// A client of the API at `base`.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, SourceError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| SourceError::Unreachable { url: base.to_owned(), source })?;
        Ok(Self { client, base: base.trim_end_matches('/').to_owned(), token })
    }

    /// Runs an instant query at `time` (Unix seconds).
    pub async fn instant(&self, query: &str, time: f64) -> Result<Vec<Row>, SourceError> {
        let time = format!("{time:.3}");
        let data = self.get("query", "vector", &[("query", query), ("time", &time)]).await?;
        Ok(data
            .result
            .into_iter()
            .filter_map(|s| {
                let value = number(&s.value?.1)?;
                let id = series_id(&s.metric);
                Some(Row { labels: Arc::new(s.metric), id, value })
            })
            .collect())
    }

    /// Runs a range query from `start` to `end` every `step` seconds (one answer for a whole
    /// backfill: each series' labels once, not once per step).
    pub async fn range(&self, query: &str, start: f64, end: f64, step: f64) -> Result<Vec<RangeSeries>, SourceError> {
        let (start, end, step) = (format!("{start:.3}"), format!("{end:.3}"), format!("{step:.3}"));
        let params = [("query", query), ("start", &start), ("end", &end), ("step", &step)];
        let data = self.get("query_range", "matrix", &params).await?;
        Ok(data
            .result
            .into_iter()
            .map(|s| RangeSeries {
                id: series_id(&s.metric),
                labels: Arc::new(s.metric),
                samples: s.values.iter().filter_map(|(t, v)| Some((*t, number(v)?))).collect(),
            })
            .collect())
    }

    async fn get(&self, endpoint: &str, kind: &str, params: &[(&str, &str)]) -> Result<AnswerData, SourceError> {
        let url = format!("{}/api/v1/{endpoint}", self.base);
        let mut r = self.client.get(&url).query(params);
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.map_err(|source| SourceError::Unreachable { url: url.clone(), source })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|source| SourceError::Unreachable { url: url.clone(), source })?;
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| SourceError::NotPrometheus {
            url: url.clone(),
            message: format!("HTTP {status}: {e}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])),
        })?;
        let query = params.first().map(|(_, q)| (*q).to_owned()).unwrap_or_default();
        if answer.status != "success" {
            return Err(SourceError::Refused {
                url,
                query,
                message: answer.error.unwrap_or_else(|| format!("status {}", answer.status)),
            });
        }
        let data = answer
            .data
            .ok_or_else(|| SourceError::NotPrometheus { url: url.clone(), message: "no data in a success".into() })?;
        if data.result_type != kind {
            return Err(SourceError::NotPrometheus {
                url,
                message: format!("{query:?} answered a {}, not a {kind}", data.result_type),
            });
        }
        Ok(data)
    }
}

/// An edge, as the store's labels name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EdgeKey {
    /// The caller.
    pub source: Peer,
    /// The callee.
    pub target: Peer,
    /// What it carries.
    pub protocol: Protocol,
}

/// Who reported a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reporter {
    /// The callee's side (or the only report there is).
    Callee,
    /// The caller's side: counted where the callee does not report, or when the request never
    /// reached it.
    Caller { never_reached: bool },
}

/// What one series says about its edge.
#[derive(Clone, Debug, PartialEq)]
struct Reading {
    key: EdgeKey,
    reporter: Reporter,
    class: CodeClass,
    failed: bool,
    mtls: bool,
    grpc: Option<u8>,
}

fn label<'a>(l: &'a BTreeMap<String, String>, k: &str) -> &'a str {
    l.get(k).map(String::as_str).unwrap_or("")
}

fn known(v: &str) -> Option<&str> {
    let v = v.trim();
    (!v.is_empty() && v != "unknown").then_some(v)
}

fn workload(namespace: &str, app: &str, version: &str) -> Option<Peer> {
    let app = known(app)?;
    if app.len() > meshlens_model::identity::MAX_NAME_BYTES
        || namespace.len() > meshlens_model::identity::MAX_NAME_BYTES
    {
        return None;
    }
    Workload::from_resource(Some(namespace), Some(app), Some(version)).map(Peer::Workload)
}

/// A workload peer placed in a cluster (none for an empty or `unknown` one, or Istio's default).
fn in_cluster(p: Peer, cluster: &str) -> Peer {
    match p {
        // Istio names a cluster `Kubernetes` when nobody named it: one cluster, no name to show.
        Peer::Workload(w) if cluster != "Kubernetes" => Peer::Workload(w.in_cluster(Some(cluster))),
        other => other,
    }
}

/// Status class and failure of a request the labels describe, by the one failure rule.
fn status(http: &str, grpc: &str, server_side: bool) -> (CodeClass, bool, Option<u8>) {
    let http_status = http.parse::<i64>().ok().filter(|&c| c > 0);
    let grpc_code = grpc.parse::<i64>().ok().filter(|c| (0..=16).contains(c));
    // Envoy's and Linkerd's status 0: no response came.
    let no_response = http == "0" && grpc_code.is_none();
    let (class, failed) = outcome(Report { http_status, grpc_code, error: no_response, server_side });
    (class, failed, grpc_code.and_then(|c| u8::try_from(c).ok()))
}

/// Reads a meshlens / Tempo `traces_service_graph_*` series.
fn meshlens_reading(l: &BTreeMap<String, String>, role: Role) -> Option<Reading> {
    let conn = label(l, "connection_type");
    let end = |side: &str| {
        let name = label(l, side);
        let ns = label(l, &format!("{side}_service_namespace"));
        let version = label(l, &format!("{side}_service_version"));
        if !ns.is_empty() {
            return workload(ns, name, version).map(|p| in_cluster(p, label(l, &format!("{side}_cluster"))));
        }
        Some(match (side, name) {
            (_, "") => return None,
            ("client", "user") => Peer::User,
            ("server", "unknown") => Peer::Unknown,
            ("server", _) if conn == "database" => Peer::Database { name: name.to_owned() },
            _ => Peer::External { name: name.to_owned() },
        })
    };
    let protocol = match conn {
        "database" => Protocol::Database,
        "messaging_system" => Protocol::Messaging,
        _ => Protocol::Http,
    };
    let key = EdgeKey { source: end("client")?, target: end("server")?, protocol };
    let client_side = label(l, "__name__").starts_with("traces_service_graph_request_client_seconds");
    let reporter = if client_side { Reporter::Caller { never_reached: false } } else { Reporter::Callee };
    let failed = role == Role::Failed;
    let class = if failed { CodeClass::ServerError } else { CodeClass::Ok };
    let grpc = (role == Role::Grpc).then(|| status("", label(l, "grpc_response_status"), true).2).flatten();
    if role == Role::Grpc && grpc.is_none() {
        return None;
    }
    Some(Reading { key, reporter, class, failed, mtls: false, grpc })
}

/// Envoy response flags that mean the request never reached the upstream.
const NEVER_REACHED_FLAGS: [&str; 5] = ["UH", "UF", "UO", "NR", "NC"];

/// Reads an Istio standard-metrics series.
fn istio_reading(l: &BTreeMap<String, String>) -> Option<Reading> {
    let reporter_is_destination = match label(l, "reporter") {
        "destination" => true,
        "source" => false,
        _ => return None,
    };
    let source = match known(label(l, "source_workload")) {
        None => Peer::User,
        Some(w) => {
            let app = known(label(l, "source_canonical_service")).or(known(label(l, "source_app"))).unwrap_or(w);
            let w = workload(label(l, "source_workload_namespace"), app, label(l, "source_canonical_revision"))?;
            in_cluster(w, label(l, "source_cluster"))
        }
    };
    let target = match known(label(l, "destination_workload")) {
        Some(w) => {
            let app =
                known(label(l, "destination_canonical_service")).or(known(label(l, "destination_app"))).unwrap_or(w);
            let w =
                workload(label(l, "destination_workload_namespace"), app, label(l, "destination_canonical_revision"))?;
            in_cluster(w, label(l, "destination_cluster"))
        }
        None => match known(label(l, "destination_service")).or(known(label(l, "destination_service_name"))) {
            Some(host) if host.len() <= meshlens_model::identity::MAX_NAME_BYTES => {
                Peer::External { name: host.to_owned() }
            }
            _ => Peer::Unknown,
        },
    };
    let protocol = if label(l, "request_protocol") == "grpc" { Protocol::Grpc } else { Protocol::Http };
    let (class, failed, grpc) =
        status(label(l, "response_code"), label(l, "grpc_response_status"), reporter_is_destination);
    let reporter = if reporter_is_destination {
        Reporter::Callee
    } else {
        let flags = label(l, "response_flags");
        Reporter::Caller { never_reached: flags.split(',').any(|f| NEVER_REACHED_FLAGS.contains(&f)) }
    };
    let mtls = label(l, "connection_security_policy") == "mutual_tls";
    Some(Reading { key: EdgeKey { source, target, protocol }, reporter, class, failed, mtls, grpc })
}

/// The workload a Linkerd proxy's labels name (`deployment`, `statefulset`, `daemonset`, …, with a
/// `dst_` prefix for the callee).
fn linkerd_workload(l: &BTreeMap<String, String>, prefix: &str) -> Option<Peer> {
    let ns = label(l, &format!("{prefix}namespace"));
    ["deployment", "statefulset", "daemonset", "replicaset", "job", "cronjob", "pod"]
        .iter()
        .find_map(|k| known(label(l, &format!("{prefix}{k}"))))
        .and_then(|name| workload(ns, name, ""))
}

/// Reads a Linkerd proxy series.
fn linkerd_reading(l: &BTreeMap<String, String>, role: Role) -> Option<Reading> {
    let tls = label(l, "tls") == "true";
    let (source, target) = match label(l, "direction") {
        "outbound" => {
            let source = linkerd_workload(l, "")?;
            let target = linkerd_workload(l, "dst_").unwrap_or_else(|| match known(label(l, "authority")) {
                Some(a) if a.len() <= meshlens_model::identity::MAX_NAME_BYTES => Peer::External { name: a.to_owned() },
                _ => Peer::Unknown,
            });
            (source, target)
        }
        // A meshed caller's requests are its own proxy's outbound series.
        "inbound" if !tls => (Peer::User, linkerd_workload(l, "")?),
        _ => return None,
    };
    let (class, http_failed, grpc) = status(label(l, "status_code"), label(l, "grpc_status"), true);
    let failed = match (role, label(l, "classification")) {
        (Role::Count, "failure") => true,
        (Role::Count, "success") => false,
        _ => http_failed,
    };
    let protocol = if grpc.is_some() { Protocol::Grpc } else { Protocol::Http };
    Some(Reading {
        key: EdgeKey { source, target, protocol },
        reporter: Reporter::Callee,
        class,
        failed,
        mtls: tls,
        grpc,
    })
}

fn reading(dialect: Dialect, l: &BTreeMap<String, String>, role: Role) -> Option<Reading> {
    match dialect {
        Dialect::Meshlens => meshlens_reading(l, role),
        Dialect::Istio => istio_reading(l),
        Dialect::Linkerd => linkerd_reading(l, role),
    }
}

/// A series' identity: a hash of all its labels.
pub fn series_id(labels: &BTreeMap<String, String>) -> u64 {
    let mut h = DefaultHasher::new();
    labels.hash(&mut h);
    h.finish()
}

/// The increases one poll found, by edge, before they are applied.
#[derive(Default)]
struct Poll {
    /// Requests by what they were.
    counts: HashMap<CountKey, u64>,
    /// meshlens `_failed_total` increases by edge (subtracted from its `_total`).
    failed: HashMap<EdgeKey, u64>,
    /// meshlens gRPC increases by edge and status code (a part of its `_total`).
    grpc: HashMap<EdgeKey, [u64; 17]>,
    /// meshlens mTLS increases by edge (a part of its `_total`).
    mtls: HashMap<EdgeKey, u64>,
    /// Bucket increases of each histogram (its series but `le`): its edge, callee side, unit and
    /// the increase by upper bound, cumulative in `le`.
    buckets: HashMap<u64, (EdgeKey, bool, f64, BTreeMap<OrdF64, u64>)>,
}

/// Requests of one edge alike in every way the graph records.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CountKey {
    key: EdgeKey,
    /// Reported by the callee.
    callee: bool,
    /// Never reached the callee (counted even where the callee reports).
    never_reached: bool,
    class: CodeClass,
    failed: bool,
    mtls: bool,
    grpc: Option<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct OrdF64(f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// What the reader keeps of one series: its last value, and what its labels say (read once).
struct Last {
    value: f64,
    /// What its query reads.
    role: Role,
    /// `None`: labels that name no edge.
    reading: Option<Reading>,
    /// A bucket's upper bound and its histogram (the labels but `le`).
    bucket: Option<(f64, u64)>,
}

fn histogram_of(labels: &BTreeMap<String, String>) -> Option<(f64, u64)> {
    let le = parse_le(labels.get("le")?)?;
    let mut h = DefaultHasher::new();
    labels.iter().filter(|(k, _)| k.as_str() != "le").for_each(|kv| kv.hash(&mut h));
    Some((le, h.finish()))
}

/// The source's memory between polls: each series' last value, and which edges their callee
/// reports.
pub struct Reader {
    dialects: Vec<Dialect>,
    last: HashMap<u64, Last>,
    primed: bool,
    callee_reported: HashSet<EdgeKey>,
    callee_latency: HashSet<EdgeKey>,
    /// Edges (caller, callee) a gRPC series names: recorded as gRPC.
    grpc_edges: HashSet<(Peer, Peer)>,
    max_series: usize,
}

impl Reader {
    /// A reader of these dialects remembering at most `max_series` series.
    pub fn new(dialects: Vec<Dialect>, max_series: usize) -> Self {
        Self {
            dialects,
            last: HashMap::new(),
            primed: false,
            callee_reported: HashSet::new(),
            callee_latency: HashSet::new(),
            grpc_edges: HashSet::new(),
            max_series,
        }
    }

    /// Runs one poll at `time` and applies what it found to the hub's graph at that second; the
    /// first poll only sets each series' baseline. A query that fails leaves the whole poll
    /// unapplied (the next one reads the increase since).
    pub async fn poll(&mut self, api: &PromApi, hub: &Hub, time: f64) -> Result<(), SourceError> {
        let mut answers = Vec::new();
        for &d in &self.dialects {
            for q in d.queries() {
                // A poll applies whole or not at all: a series missing because its query failed
                // would be forgotten and then counted from zero. Unapplied, the increases wait in
                // the store's counters for the next poll.
                let rows = api.instant(q.promql, time).await.inspect_err(|_| hub.counters.source_failures.add(1))?;
                hub.counters.source_queries.add(1);
                answers.push((d, *q, rows));
            }
        }
        let mut engine = hub.engine.lock();
        self.apply(&mut engine.graph, &answers, time, &hub.counters);
        Ok(())
    }

    /// Applies the answers of one poll (each query's rows) to `graph` at `time`.
    pub fn apply(
        &mut self,
        graph: &mut Graph,
        answers: &[(Dialect, Query, Vec<Row>)],
        time: f64,
        counters: &crate::counters::Counters,
    ) {
        let mut poll = Poll::default();
        let primed = self.primed;
        let mut seen: HashSet<u64> = HashSet::new();
        for (dialect, q, rows) in answers {
            for row in rows {
                let id = row.id;
                seen.insert(id);
                let full = self.last.len() >= self.max_series;
                let (increase, last) = match self.last.get_mut(&id) {
                    Some(last) => {
                        let increase = if row.value >= last.value {
                            row.value - last.value
                        } else {
                            // A counter that went down was reset: its value is what it counted since.
                            counters.counter_resets.add(1);
                            row.value
                        };
                        last.value = row.value;
                        (increase, &*last)
                    }
                    None if full => {
                        counters.points_dropped_cardinality.add(1);
                        continue;
                    }
                    None => {
                        let reading = reading(*dialect, &row.labels, q.role);
                        if reading.is_none() {
                            counters.source_series_ignored.add(1);
                        }
                        let bucket = matches!(q.role, Role::Buckets(_)).then(|| histogram_of(&row.labels)).flatten();
                        let last = self
                            .last
                            .entry(id)
                            .insert(Last { value: row.value, role: q.role, reading, bucket })
                            .into_mut();
                        (if primed { row.value } else { 0.0 }, &*last)
                    }
                };
                let Some(r) = &last.reading else { continue };
                let n = increase.round() as u64;
                match q.role {
                    Role::Count if n > 0 => {
                        let k = CountKey {
                            key: r.key.clone(),
                            callee: r.reporter == Reporter::Callee,
                            never_reached: matches!(r.reporter, Reporter::Caller { never_reached: true }),
                            class: r.class,
                            failed: r.failed,
                            mtls: r.mtls,
                            grpc: r.grpc,
                        };
                        *poll.counts.entry(k).or_default() += n;
                    }
                    Role::Failed if n > 0 => *poll.failed.entry(r.key.clone()).or_default() += n,
                    Role::Mtls if n > 0 => *poll.mtls.entry(r.key.clone()).or_default() += n,
                    Role::Grpc => {
                        self.grpc_edges.insert((r.key.source.clone(), r.key.target.clone()));
                        if let Some(code) = r.grpc.filter(|_| n > 0) {
                            poll.grpc.entry(r.key.clone()).or_insert([0; 17])[usize::from(code)] += n;
                        }
                    }
                    Role::Buckets(unit) => {
                        let Some((le, histogram)) = last.bucket else { continue };
                        let callee = r.reporter == Reporter::Callee;
                        let e = poll
                            .buckets
                            .entry(histogram)
                            .or_insert_with(|| (r.key.clone(), callee, unit, BTreeMap::new()));
                        *e.3.entry(OrdF64(le)).or_default() += n;
                    }
                    _ => {}
                }
            }
        }
        // Series no longer answered are gone (a pod, a collector, an evicted edge).
        let held = self.last.len();
        self.last.retain(|id, _| seen.contains(id));
        if self.last.len() < held {
            self.forget_gone_edges();
        }
        self.primed = true;
        let sec = time as u64;
        graph.now_sec = sec;
        for k in poll.counts.keys().filter(|k| k.callee) {
            self.callee_reported.insert(k.key.clone());
        }
        for (key, callee, _, _) in poll.buckets.values() {
            if *callee {
                self.callee_latency.insert(key.clone());
            }
        }
        for (CountKey { key, callee, never_reached, class, failed, mtls, grpc }, n) in poll.counts {
            if !callee && !never_reached && self.callee_reported.contains(&key) {
                continue;
            }
            let mut n = n;
            let mut failed_n = 0;
            if let Some(f) = poll.failed.get(&key) {
                failed_n = (*f).min(n);
                n -= failed_n;
            }
            // Of those, the ones with a gRPC status, classed by the one failure rule.
            let mut parts = Vec::new();
            for (code, &g) in
                poll.grpc.get(&key).into_iter().flat_map(|g| g.iter().enumerate()).filter(|(_, g)| **g > 0)
            {
                let (class, failed, grpc) = status("", &code.to_string(), true);
                let budget = if failed { &mut failed_n } else { &mut n };
                let take = g.min(*budget);
                *budget -= take;
                parts.push((take, class, failed, grpc));
            }
            parts.push((n, class, failed, grpc));
            parts.push((failed_n, CodeClass::ServerError, true, grpc));
            // And of all of them, those over mTLS (the store does not say which: any, in order).
            let mut over_mtls = poll.mtls.get(&key).copied().unwrap_or(0);
            let mut split = Vec::new();
            for (count, class, failed, grpc) in parts {
                let m = count.min(over_mtls);
                over_mtls -= m;
                split.push((m, class, failed, grpc, true));
                split.push((count - m, class, failed, grpc, mtls));
            }
            let key = self.upgrade(key);
            for (count, class, failed, grpc, mtls) in split {
                if count > 0
                    && record(graph, &key, |e| {
                        for chunk in chunks(count) {
                            e.record(
                                sec,
                                &Obs { class, failed, latency_us: None, count: chunk, mtls, grpc, trace: None },
                            );
                        }
                    })
                    .is_err()
                {
                    counters.points_dropped_cardinality.add(1);
                }
            }
        }
        for (key, callee, unit, cumulative) in poll.buckets.into_values() {
            if !callee && self.callee_latency.contains(&key) {
                continue;
            }
            let key = self.upgrade(key);
            let mut lower = 0.0;
            let mut below = 0u64;
            let mut observed = Vec::new();
            for (OrdF64(le), cum) in cumulative {
                let n = cum.saturating_sub(below);
                below = below.max(cum);
                if n > 0 {
                    let upper = le.is_finite().then_some(le);
                    observed.push(((bucket_midpoint(lower, upper) * unit * 1e6) as u64, n));
                }
                if le.is_finite() {
                    lower = le;
                }
            }
            let ok = record(graph, &key, |e| {
                for &(us, n) in &observed {
                    if callee {
                        e.record_server_latency(us, n);
                    } else {
                        e.record_client_latency(us, n);
                    }
                    for chunk in chunks(n) {
                        e.record_latency(sec, us, chunk);
                    }
                }
            });
            if ok.is_err() {
                counters.points_dropped_cardinality.add(1);
            }
        }
    }
}

fn parse_le(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" | "inf" => Some(f64::INFINITY),
        v => v.parse().ok().filter(|x: &f64| !x.is_nan()),
    }
}

impl Reader {
    /// Rebuilds what is known of edges from the series still held, so edges whose series are gone
    /// do not stay remembered (the sets are bounded by the series, as the series are by
    /// `max_series`).
    fn forget_gone_edges(&mut self) {
        self.callee_reported.clear();
        self.callee_latency.clear();
        self.grpc_edges.clear();
        for last in self.last.values() {
            let Some(r) = &last.reading else { continue };
            match last.role {
                Role::Count if r.reporter == Reporter::Callee => {
                    self.callee_reported.insert(r.key.clone());
                }
                Role::Buckets(_) if r.reporter == Reporter::Callee => {
                    self.callee_latency.insert(r.key.clone());
                }
                Role::Grpc => {
                    self.grpc_edges.insert((r.key.source.clone(), r.key.target.clone()));
                }
                _ => {}
            }
        }
    }

    /// The edge as recorded: gRPC where a gRPC series names it.
    fn upgrade(&self, mut key: EdgeKey) -> EdgeKey {
        if key.protocol == Protocol::Http && self.grpc_edges.contains(&(key.source.clone(), key.target.clone())) {
            key.protocol = Protocol::Grpc;
        }
        key
    }
}

/// `n` split into `u32` observations.
fn chunks(n: u64) -> impl Iterator<Item = u32> {
    let full = n / u64::from(u32::MAX);
    let rest = (n % u64::from(u32::MAX)) as u32;
    std::iter::repeat_n(u32::MAX, full as usize).chain((rest > 0).then_some(rest))
}

fn record(
    graph: &mut Graph,
    key: &EdgeKey,
    f: impl FnOnce(&mut crate::graph::EdgeState),
) -> Result<(), crate::graph::LimitHit> {
    let s = graph.peer(&key.source)?;
    let t = graph.peer(&key.target)?;
    f(graph.edge_mut(s, t, key.protocol)?);
    Ok(())
}

/// Reads the last `backfill` at poll steps — one range query per metric, replayed step by step
/// (the first step sets the baselines) — then, if that took longer than a poll interval, polls once
/// at the time it is done, so the graph is current however long the history took to read. Fails
/// when the store cannot be read.
pub async fn backfill(reader: &mut Reader, api: &PromApi, hub: &Hub, config: &SourceConfig) -> Result<(), SourceError> {
    let now = crate::engine::unix_now();
    let step = config.interval.as_secs_f64().max(1.0);
    let steps = (config.backfill.as_secs_f64() / step).ceil().max(1.0) as usize;
    let t0 = now - steps as f64 * step;
    let mut ranges = Vec::new();
    for &d in &reader.dialects {
        for q in d.queries() {
            let series =
                api.range(q.promql, t0, now, step).await.inspect_err(|_| hub.counters.source_failures.add(1))?;
            hub.counters.source_queries.add(1);
            ranges.push((d, *q, series));
        }
    }
    // The graph holds data since then: rates divide by the window, not by this process's uptime.
    {
        let mut engine = hub.engine.lock();
        engine.data_since = engine.data_since.min(t0);
    }
    // Replay at the steps the store answered for (a store may align them to its own grid, as
    // VictoriaMetrics does), oldest first; the first sets the baselines.
    let mut times: Vec<i64> = ranges
        .iter()
        .flat_map(|(_, _, ss)| ss.iter().flat_map(|s| s.samples.iter().map(|(t, _)| (t * 1000.0) as i64)))
        .collect();
    times.sort_unstable();
    times.dedup();
    if times.first().is_none_or(|&first| first as f64 / 1000.0 > t0) {
        // Nothing at the first step: an empty baseline, so what appears later counts from zero.
        let mut engine = hub.engine.lock();
        reader.apply(&mut engine.graph, &[], t0, &hub.counters);
    }
    // Each series' samples are oldest first: one cursor per series walks them once.
    let mut cursors: Vec<Vec<usize>> = ranges.iter().map(|(_, _, ss)| vec![0; ss.len()]).collect();
    for ms in times {
        let answers: Vec<(Dialect, Query, Vec<Row>)> = ranges
            .iter()
            .zip(&mut cursors)
            .map(|((d, q, series), cursor)| {
                let rows = series
                    .iter()
                    .zip(cursor.iter_mut())
                    .filter_map(|(s, c)| {
                        let &(t, value) = s.samples.get(*c)?;
                        ((t * 1000.0) as i64 == ms).then(|| {
                            *c += 1;
                            Row { labels: s.labels.clone(), id: s.id, value }
                        })
                    })
                    .collect();
                (*d, *q, rows)
            })
            .collect();
        let mut engine = hub.engine.lock();
        reader.apply(&mut engine.graph, &answers, ms as f64 / 1000.0, &hub.counters);
    }
    // A history that took longer than a poll interval to read is caught up at once; otherwise the
    // first live poll, within an interval, does it.
    let done = crate::engine::unix_now();
    if done - now > step
        && let Err(e) = reader.poll(api, hub, done).await
    {
        tracing::warn!(error = %e, "polling the store after reading its history");
    }
    Ok(())
}

/// Polls every interval until `stop` turns true.
pub async fn run(
    hub: Arc<Hub>,
    mut reader: Reader,
    api: PromApi,
    config: SourceConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|&s| s) => return,
        }
        match reader.poll(&api, &hub, crate::engine::unix_now()).await {
            Ok(()) if failing => {
                tracing::info!(url = %config.url, "the store answers again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "polling the store failed; the next poll reads the increase since");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use meshlens_model::graph::View;
    use meshlens_model::hist::Merger;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

    use super::*;
    use crate::counters::Counters;
    use crate::engine::{Engine, EngineConfig};
    use crate::testkit::{kv, kv_int, resource, span, traces};

    const NOW: f64 = 1_800_000_000.5;

    /// What `/metrics` and remote write say of an engine, as a store would answer it.
    fn rows(e: &Engine) -> Vec<(Dialect, Query, Vec<Row>)> {
        let fams = crate::prom::graph_families(e);
        Dialect::Meshlens
            .queries()
            .iter()
            .map(|q| {
                let rows = fams
                    .iter()
                    .flat_map(|f| f.samples.iter().map(move |s| (format!("{}{}", f.name, s.suffix), s)))
                    .filter(|(name, _)| name == q.promql)
                    .map(|(name, s)| {
                        let mut labels: BTreeMap<String, String> = s
                            .labels
                            .iter()
                            .filter(|(_, v)| !v.is_empty())
                            .map(|(k, v)| ((*k).to_owned(), v.clone()))
                            .collect();
                        labels.insert("__name__".into(), name);
                        Row { id: series_id(&labels), labels: Arc::new(labels), value: s.value }
                    })
                    .collect();
                (Dialect::Meshlens, *q, rows)
            })
            .collect()
    }

    #[test]
    fn the_servicegraph_series_read_back_as_the_same_graph_clusters_included() {
        let counters = Arc::new(Counters::default());
        let mut one = Engine::new(EngineConfig::default(), counters.clone(), NOW - 100.0);
        let mut r = resource("shop", "cart", "v1");
        r.attributes.push(kv("k8s.cluster.name", "west"));
        for (trace, status) in [(1, 200), (2, 200), (3, 503)] {
            let client = span(SpanKind::Client, trace, 10, Some(1), 1, 30_000, vec![], false);
            let server = span(
                SpanKind::Server,
                trace,
                11,
                Some(10),
                1,
                20_000,
                vec![kv_int("http.response.status_code", status)],
                false,
            );
            one.ingest_traces(
                &traces(vec![(resource("shop", "web", "v1"), vec![client]), (r.clone(), vec![server])]),
                NOW,
            );
        }
        let mut reader = Reader::new(vec![Dialect::Meshlens], 1000);
        let mut graph = Graph::new(counters.clone(), 100, 100);
        reader.apply(&mut graph, &[], NOW - 60.0, &counters);
        reader.apply(&mut graph, &rows(&one), NOW, &counters);
        // Read again: nothing new is counted.
        reader.apply(&mut graph, &rows(&one), NOW, &counters);
        let mut read = Engine::new(EngineConfig::default(), counters, NOW - 100.0);
        read.graph = graph;
        let snap = |e: &Engine| crate::views::snapshot(e, View::Versioned, 60, NOW, &mut Merger::default());
        let (want, got) = (snap(&one), snap(&read));
        let (w, g) = (
            want.edge("shop/web/v1", "shop/cart/v1@west").unwrap(),
            got.edge("shop/web/v1", "shop/cart/v1@west").unwrap(),
        );
        assert_eq!((g.stats.requests, g.stats.errors), (w.stats.requests, w.stats.errors));
        assert_eq!((g.stats.requests, g.stats.errors), (3, 1));
        // 20 ms is in the servicegraph's (10 ms, 50 ms] bucket: read at its midpoint.
        assert_eq!(g.stats.latency_ms.as_ref().map(|l| l.p50.round()), Some(30.0));
    }
}
