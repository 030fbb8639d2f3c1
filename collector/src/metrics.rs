//! Agent metrics to edges: `http.server.request.duration` and `http.client.request.duration`
//! histograms carrying `meshlens.source.*` / `meshlens.destination.*`, and the retry and timeout sums;
//! and the per-route histograms and retries to [`crate::routes`].
//!
//! Only points with those mesh attributes make edges. An OpenTelemetry SDK sends the same metric
//! names by default (and the old-semconv `http.server.duration` / `http.client.duration`), with no
//! word of who called whom: a server point cannot tell its caller, a client point names a host at
//! best. Read as edges they drew phantom `user→X` and `X→unknown` edges and doubled the spans that
//! already carry the same requests exactly, so they are left to the spans and counted
//! (`meshlens_collector_data_points_ignored_total{reason="no_mesh_attributes"}`).
//!
//! Each request is counted once although both agents of a hop report it: the callee's
//! (server-side) report is the count, status and latency; the caller's report adds only requests
//! that the callee never saw — connect failures, and anything at all when the callee has no agent —
//! and always adds client latency to the `/metrics` client histogram. A meshlens agent says which
//! requests reached the callee (`meshlens.reached`), so the order in which the two agents' exports
//! arrive does not matter; for other senders the callee is taken to have no agent until its first
//! server-side point arrives, and within one export the server points are applied first.
//!
//! Cumulative series become deltas against the last point seen for the same series (a counter that
//! goes down, or a new start time, is a reset: the new value is the delta). The first point of a
//! cumulative series counts from zero only if the series started after this collector did;
//! otherwise it is only remembered, so a restarted collector does not count history twice.
//! Exponential histograms put each bucket's count at its geometric midpoint; a cumulative series
//! whose scale drops (as SDKs rescale) has its previous point merged down before the delta.
//! Explicit-bucket histograms put each bucket's count at the bucket's midpoint (the open-ended last
//! bucket at the point's `max`, or its lower bound), clamped to the point's `min`/`max`.

use hashbrown::HashMap;
use meshlens_model::names::{
    CLIENT_DURATION, CLIENT_RETRIES, CLIENT_TIMEOUTS, DESTINATION_PREFIX, ERROR_TYPE, GRPC_STATUS, HTTP_ROUTE,
    HTTP_STATUS, MTLS, REACHED, ROUTE_DURATION, ROUTE_RETRIES, SERVER_DURATION, SOURCE_PREFIX, SUCCESS,
};
use meshlens_model::stats::{CodeClass, Report, outcome};
use meshlens_model::{Peer, Workload};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogramDataPoint, HistogramDataPoint, NumberDataPoint, metric::Data,
    number_data_point,
};
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::attrs::{get_bool, get_int, get_str, prefixed_workload, resource_workload};
use crate::graph::{Graph, LimitHit, Protocol};
use crate::window::Obs;

/// The last cumulative point of each series.
pub struct SeriesStore {
    last: HashMap<u64, Prev>,
    /// Most series remembered.
    max_series: usize,
    /// Unix nanoseconds when this collector process started (cumulative series that started before
    /// it are not counted from zero).
    started_unix_nanos: u64,
}

struct Prev {
    start: u64,
    count: u64,
    buckets: Vec<u64>,
    /// For an exponential histogram: its scale and the index of `buckets[1]` (`buckets[0]` is the
    /// zero bucket).
    exp: Option<(i32, i32)>,
    /// The second (Unix) of its last point, for eviction.
    seen: u64,
}

impl SeriesStore {
    /// An empty store of at most `max_series` series, for a process started at `started_unix_nanos`.
    pub fn new(max_series: usize, started_unix_nanos: u64) -> Self {
        Self { last: HashMap::new(), max_series, started_unix_nanos }
    }

    /// Merges an export of agent metrics into `graph` at time `now` (Unix seconds).
    pub fn ingest(&mut self, graph: &mut Graph, req: &ExportMetricsServiceRequest, now: f64) {
        Merge { g: graph, series: self }.ingest_metrics(req, now);
    }

    /// Forgets series with no point since `cutoff_sec`, so series from a flood do not hold
    /// `max_series` for good; returns how many. A series that comes back starts a new baseline.
    pub fn evict_idle(&mut self, cutoff_sec: u64) -> usize {
        let before = self.last.len();
        self.last.retain(|_, p| p.seen >= cutoff_sec);
        before - self.last.len()
    }

    /// Series remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// True when none are.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

fn series_key(metric: &str, reporter: &Workload, attrs: &[KeyValue]) -> u64 {
    let mut h = DefaultHasher::new();
    metric.hash(&mut h);
    reporter.hash(&mut h);
    let mut kv: Vec<(&str, String)> = attrs.iter().map(|kv| (kv.key.as_str(), format!("{:?}", kv.value))).collect();
    kv.sort_unstable();
    kv.hash(&mut h);
    h.finish()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

/// Whether the callee's own report counts a client-side point's requests. A meshlens agent says so
/// with `meshlens.reached` (it sends only to agents, which count what reaches them). Other senders
/// leave it out: then the callee counts it if it has reported this edge at all and `error.type` does
/// not say the request never got there.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CalleeCounts {
    /// Said by the reporter.
    Said(bool),
    /// Guessed from `error.type`.
    Guessed(bool),
}

/// Classifies a point: status class, failure, and whether the callee counts it.
fn classify(attrs: &[KeyValue]) -> (CodeClass, bool, CalleeCounts) {
    let (class, failed, reached) = classify_status(attrs);
    let counts = match get_bool(attrs, REACHED) {
        Some(r) => CalleeCounts::Said(r),
        None => CalleeCounts::Guessed(reached),
    };
    (class, failed, counts)
}

/// Status class, failure (the one rule of [`outcome`], as for spans) and whether the request
/// reached the callee.
fn classify_status(attrs: &[KeyValue]) -> (CodeClass, bool, bool) {
    let (http_status, grpc_code) = (get_int(attrs, HTTP_STATUS), get_int(attrs, GRPC_STATUS));
    let error = get_str(attrs, ERROR_TYPE).unwrap_or("");
    if http_status.is_none() && grpc_code.is_none() && !error.is_empty() {
        let never_reached = matches!(
            error,
            "connect_failure" | "connect-failure" | "connection_refused" | "no_endpoint" | "no_healthy_upstream"
        );
        return (CodeClass::NoResponse, true, !never_reached);
    }
    let (class, failed) = outcome(Report { http_status, grpc_code, error: !error.is_empty(), server_side: false });
    (class, failed, true)
}

/// The value an explicit bucket's observations are put at: its midpoint, or its lower bound when it
/// is open-ended (and nothing better is known). The one rule for agent histograms and for a
/// Prometheus store's buckets ([`crate::source`]).
pub(crate) fn bucket_midpoint(lower: f64, upper: Option<f64>) -> f64 {
    match upper {
        Some(u) => (lower.max(0.0) + u) / 2.0,
        None => lower,
    }
}

/// Latency value (µs) standing for bucket `i` of an explicit-bucket histogram in seconds; the point's
/// shape has been checked by [`crate::otlp::histogram_shape_error`].
fn bucket_value_us(p: &HistogramDataPoint, i: usize, scale: f64) -> u64 {
    let bounds = &p.explicit_bounds;
    let lower = match i.checked_sub(1) {
        None => p.min.unwrap_or(0.0).min(bounds.first().copied().unwrap_or(0.0)),
        Some(below) => bounds.get(below).copied().unwrap_or(0.0),
    };
    let v = match bounds.get(i) {
        Some(&upper) => bucket_midpoint(lower, Some(upper)),
        None => p.max.unwrap_or(lower),
    };
    let v = match (p.min, p.max) {
        (Some(lo), Some(hi)) if lo <= hi => v.clamp(lo, hi),
        _ => v,
    };
    (v.max(0.0) * scale * 1e6) as u64
}

/// The HTTP duration metrics OpenTelemetry's semantic conventions name, current and old.
fn is_http_duration(name: &str) -> bool {
    matches!(name, SERVER_DURATION | CLIENT_DURATION | "http.server.duration" | "http.client.duration")
}

/// Whether a point carries meshlens's mesh attributes (`meshlens.source.*` or
/// `meshlens.destination.*`), as a meshlens agent's always do and an SDK's never do.
fn mesh_point(attrs: &[KeyValue]) -> bool {
    attrs.iter().any(|kv| kv.key.starts_with(SOURCE_PREFIX) || kv.key.starts_with(DESTINATION_PREFIX))
}

/// Whether any point of a metric is a mesh point; points without are ignored one by one.
fn from_mesh(metric: &opentelemetry_proto::tonic::metrics::v1::Metric) -> bool {
    match &metric.data {
        Some(Data::Histogram(h)) => h.data_points.iter().any(|p| mesh_point(&p.attributes)),
        Some(Data::Sum(s)) => s.data_points.iter().any(|p| mesh_point(&p.attributes)),
        Some(Data::ExponentialHistogram(h)) => h.data_points.iter().any(|p| mesh_point(&p.attributes)),
        Some(Data::Gauge(g)) => g.data_points.iter().any(|p| mesh_point(&p.attributes)),
        _ => false,
    }
}

/// One call's worth of merging: the graph it writes and the series it remembers.
struct Merge<'a> {
    g: &'a mut Graph,
    series: &'a mut SeriesStore,
}

impl Merge<'_> {
    /// Merges an export of agent metrics at time `now` (Unix seconds).
    fn ingest_metrics(&mut self, req: &ExportMetricsServiceRequest, now: f64) {
        for pass in [Side::Server, Side::Client] {
            for rm in &req.resource_metrics {
                let Some(reporter) = resource_workload(rm.resource.as_ref()) else { continue };
                for metric in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
                    let scale = match metric.unit.as_str() {
                        "ms" => 1e-3,
                        "us" | "µs" => 1e-6,
                        _ => 1.0,
                    };
                    if !from_mesh(metric) {
                        if pass == Side::Server && is_http_duration(&metric.name) {
                            self.g.counters.points_ignored_sdk.add(crate::otlp::point_count(metric) as u64);
                        }
                        continue;
                    }
                    match (metric.name.as_str(), &metric.data, pass) {
                        (SERVER_DURATION, Some(Data::Histogram(h)), Side::Server)
                        | (CLIENT_DURATION, Some(Data::Histogram(h)), Side::Client) => {
                            let cumulative = h.aggregation_temporality == AggregationTemporality::Cumulative as i32;
                            for p in &h.data_points {
                                if self
                                    .histogram_point(&metric.name, &reporter, p, cumulative, pass, scale, now)
                                    .is_err()
                                {
                                    self.g.counters.points_dropped_cardinality.add(1);
                                }
                            }
                        }
                        (SERVER_DURATION, Some(Data::ExponentialHistogram(h)), Side::Server)
                        | (CLIENT_DURATION, Some(Data::ExponentialHistogram(h)), Side::Client) => {
                            let cumulative = h.aggregation_temporality == AggregationTemporality::Cumulative as i32;
                            for p in &h.data_points {
                                if self.exp_point(&metric.name, &reporter, p, cumulative, pass, scale, now).is_err() {
                                    self.g.counters.points_dropped_cardinality.add(1);
                                }
                            }
                        }
                        (CLIENT_RETRIES | CLIENT_TIMEOUTS, Some(Data::Sum(s)), Side::Client) => {
                            let cumulative = s.aggregation_temporality == AggregationTemporality::Cumulative as i32;
                            let retries = metric.name == CLIENT_RETRIES;
                            for p in &s.data_points {
                                if self.sum_point(&metric.name, &reporter, p, cumulative, retries, now).is_err() {
                                    self.g.counters.points_dropped_cardinality.add(1);
                                }
                            }
                        }
                        (ROUTE_DURATION, Some(Data::Histogram(h)), Side::Server) => {
                            let cumulative = h.aggregation_temporality == AggregationTemporality::Cumulative as i32;
                            for p in &h.data_points {
                                if self.route_point(&reporter, p, cumulative, scale, now).is_err() {
                                    self.g.counters.points_dropped_cardinality.add(1);
                                }
                            }
                        }
                        (ROUTE_RETRIES, Some(Data::Sum(s)), Side::Server) => {
                            let cumulative = s.aggregation_temporality == AggregationTemporality::Cumulative as i32;
                            for p in &s.data_points {
                                if self.route_retries_point(&reporter, p, cumulative, now).is_err() {
                                    self.g.counters.points_dropped_cardinality.add(1);
                                }
                            }
                        }
                        // A metric meshlens reads, in a shape it does not (an exponential histogram, a
                        // gauge): counted, so the gap shows, once (in the server pass).
                        (
                            SERVER_DURATION | CLIENT_DURATION | CLIENT_RETRIES | CLIENT_TIMEOUTS,
                            Some(data),
                            Side::Server,
                        ) => {
                            let readable = match data {
                                Data::Histogram(_) | Data::ExponentialHistogram(_) => {
                                    matches!(metric.name.as_str(), SERVER_DURATION | CLIENT_DURATION)
                                }
                                Data::Sum(_) => matches!(metric.name.as_str(), CLIENT_RETRIES | CLIENT_TIMEOUTS),
                                _ => false,
                            };
                            if !readable {
                                self.g.counters.points_unsupported.add(crate::otlp::point_count(metric) as u64);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        self.g.counters.series.set(self.series.last.len() as u64);
    }

    fn ends(&mut self, reporter: &Workload, attrs: &[KeyValue], side: Side) -> Result<(u32, u32), LimitHit> {
        let src = prefixed_workload(attrs, SOURCE_PREFIX);
        let dst = prefixed_workload(attrs, DESTINATION_PREFIX);
        let (source, target) = match side {
            Side::Server => {
                (src.map(Peer::Workload).unwrap_or(Peer::User), Peer::Workload(dst.unwrap_or_else(|| reporter.clone())))
            }
            Side::Client => (
                Peer::Workload(src.unwrap_or_else(|| reporter.clone())),
                dst.map(Peer::Workload).unwrap_or(Peer::Unknown),
            ),
        };
        Ok((self.g.peer(&source)?, self.g.peer(&target)?))
    }

    /// The delta of a cumulative series, or `None` when this point only sets the baseline.
    fn delta(&mut self, key: u64, start: u64, count: u64, buckets: &[u64]) -> Result<Option<Vec<u64>>, LimitHit> {
        let started_after_us = start >= self.series.started_unix_nanos;
        match self.series.last.get_mut(&key) {
            Some(prev) => {
                let reset = prev.start != start
                    || count < prev.count
                    || prev.buckets.len() != buckets.len()
                    || buckets.iter().zip(&prev.buckets).any(|(c, p)| c < p);
                let delta = if reset {
                    self.g.counters.counter_resets.add(1);
                    buckets.to_vec()
                } else {
                    buckets.iter().zip(&prev.buckets).map(|(c, p)| c - p).collect()
                };
                prev.start = start;
                prev.count = count;
                prev.seen = self.g.now_sec;
                prev.buckets.clear();
                prev.buckets.extend_from_slice(buckets);
                Ok(Some(delta))
            }
            None => {
                if self.series.last.len() >= self.series.max_series {
                    return Err(LimitHit::Series);
                }
                let seen = self.g.now_sec;
                self.series.last.insert(key, Prev { start, count, buckets: buckets.to_vec(), exp: None, seen });
                Ok(started_after_us.then(|| buckets.to_vec()))
            }
        }
    }

    /// The bucket counts a histogram point adds: its delta when cumulative (`None` while it only
    /// sets the baseline), or `None` for a point whose shape is broken (counted as rejected).
    fn histogram_counts(
        &mut self,
        name: &str,
        reporter: &Workload,
        p: &HistogramDataPoint,
        cumulative: bool,
    ) -> Result<Option<Vec<u64>>, LimitHit> {
        if crate::otlp::histogram_shape_error(p).is_some() {
            self.g.counters.points_rejected.add(1);
            return Ok(None);
        }
        if !cumulative {
            return Ok(Some(p.bucket_counts.clone()));
        }
        let key = series_key(name, reporter, &p.attributes);
        self.delta(key, p.start_time_unix_nano, p.count, &p.bucket_counts)
    }

    #[allow(clippy::too_many_arguments)]
    fn histogram_point(
        &mut self,
        name: &str,
        reporter: &Workload,
        p: &HistogramDataPoint,
        cumulative: bool,
        side: Side,
        scale: f64,
        now: f64,
    ) -> Result<(), LimitHit> {
        if !mesh_point(&p.attributes) {
            self.g.counters.points_ignored_sdk.add(1);
            return Ok(());
        }
        let Some(counts) = self.histogram_counts(name, reporter, p, cumulative)? else { return Ok(()) };
        if counts.iter().all(|&c| c == 0) {
            return Ok(());
        }
        let observed: Vec<(u64, u64)> = counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, &c)| (bucket_value_us(p, i, scale), c))
            .collect();
        self.record_latencies(reporter, &p.attributes, side, &observed, now)
    }

    /// Records requests of known latencies (`(µs, count)`) from one point on its edge.
    fn record_latencies(
        &mut self,
        reporter: &Workload,
        attrs: &[KeyValue],
        side: Side,
        observed: &[(u64, u64)],
        now: f64,
    ) -> Result<(), LimitHit> {
        let (source, target) = self.ends(reporter, attrs, side)?;
        let (class, failed, callee_saw_it) = classify(attrs);
        let mtls = get_bool(attrs, MTLS).unwrap_or(false);
        let grpc = get_int(attrs, GRPC_STATUS).and_then(|c| u8::try_from(c).ok()).filter(|&c| c <= 16);
        let sec = now as u64;
        let edge = self.g.edge_mut(source, target, Protocol::Http)?;
        edge.metrics_seen = true;
        let counts_requests = match side {
            Side::Server => {
                edge.server_metrics_seen = true;
                true
            }
            Side::Client => match callee_saw_it {
                CalleeCounts::Said(reached) => !reached,
                CalleeCounts::Guessed(reached) => !edge.server_metrics_seen || !reached,
            },
        };
        for &(latency_us, c) in observed {
            let n = u32::try_from(c).unwrap_or(u32::MAX);
            match side {
                Side::Server => edge.record_server_latency(latency_us, c),
                Side::Client => edge.record_client_latency(latency_us, c),
            }
            if counts_requests {
                edge.record(
                    sec,
                    &Obs { class, failed, latency_us: Some(latency_us), count: n, mtls, grpc, trace: None },
                );
            }
        }
        Ok(())
    }

    /// An exponential histogram point (OTLP's base-2 buckets: bucket `i` holds
    /// `(base^i, base^(i+1)]`, `base = 2^(2^-scale)`), read at each bucket's geometric midpoint.
    #[allow(clippy::too_many_arguments)]
    fn exp_point(
        &mut self,
        name: &str,
        reporter: &Workload,
        p: &ExponentialHistogramDataPoint,
        cumulative: bool,
        side: Side,
        unit: f64,
        now: f64,
    ) -> Result<(), LimitHit> {
        if !mesh_point(&p.attributes) {
            self.g.counters.points_ignored_sdk.add(1);
            return Ok(());
        }
        let positive = p.positive.as_ref();
        let offset = positive.map_or(0, |b| b.offset);
        let mut buckets = vec![p.zero_count];
        buckets.extend(positive.map_or(&[][..], |b| &b.bucket_counts[..]));
        // The scale OTLP allows, a bounded bucket count, and indexes that fit in i32 to the last.
        let last_fits = i32::try_from(buckets.len()).ok().and_then(|n| offset.checked_add(n)).is_some();
        if !(-10..=20).contains(&p.scale) || buckets.len() > 1 + 16_384 || !last_fits {
            self.g.counters.points_rejected.add(1);
            return Ok(());
        }
        let (offset, counts) = if cumulative {
            let key = series_key(name, reporter, &p.attributes);
            match self.exp_delta(key, p.start_time_unix_nano, p.count, p.scale, offset, buckets)? {
                Some(d) => d,
                None => return Ok(()),
            }
        } else {
            (offset, buckets)
        };
        let step = 2f64.powi(-p.scale);
        let observed: Vec<(u64, u64)> = counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(k, &c)| {
                let secs = match k {
                    0 => 0.0,
                    k => 2f64.powf((f64::from(offset) + (k - 1) as f64 + 0.5) * step),
                };
                ((secs * unit * 1e6) as u64, c)
            })
            .collect();
        if observed.is_empty() {
            return Ok(());
        }
        self.record_latencies(reporter, &p.attributes, side, &observed, now)
    }

    /// The delta of a cumulative exponential histogram (`buckets[0]` the zero bucket, the rest from
    /// index `offset`), or `None` when this point only sets the baseline. SDKs lower a series'
    /// scale as its range grows; the previous point is then merged down to the new scale (exact:
    /// a bucket at scale `s` is two at `s + 1`) before subtracting.
    fn exp_delta(
        &mut self,
        key: u64,
        start: u64,
        count: u64,
        scale: i32,
        offset: i32,
        buckets: Vec<u64>,
    ) -> Result<Option<(i32, Vec<u64>)>, LimitHit> {
        let started_after_us = start >= self.series.started_unix_nanos;
        let Some(prev) = self.series.last.get_mut(&key) else {
            if self.series.last.len() >= self.series.max_series {
                return Err(LimitHit::Series);
            }
            let fresh = started_after_us.then(|| (offset, buckets.clone()));
            let seen = self.g.now_sec;
            self.series.last.insert(key, Prev { start, count, buckets, exp: Some((scale, offset)), seen });
            return Ok(fresh);
        };
        let delta = match prev.exp {
            Some((ps, po)) if prev.start == start && ps >= scale && count >= prev.count => {
                let shift = (ps - scale) as u32;
                let base = po >> shift;
                let mut merged: Vec<u64> = Vec::new();
                for (k, &c) in prev.buckets.iter().enumerate().skip(1) {
                    let i = ((po + (k - 1) as i32) >> shift) - base;
                    let i = i as usize;
                    if merged.len() <= i {
                        merged.resize(i + 1, 0);
                    }
                    merged[i] += c;
                }
                let zero = buckets[0].checked_sub(prev.buckets[0]);
                let mut d = vec![zero.unwrap_or(u64::MAX)];
                let mut ok = zero.is_some();
                for (j, &c) in merged.iter().enumerate() {
                    let at = base + j as i32 - offset;
                    let now_c = if at >= 0 { buckets.get(at as usize + 1).copied() } else { None };
                    ok &= c == 0 || now_c.is_some_and(|n| n >= c);
                }
                for (k, &c) in buckets.iter().enumerate().skip(1) {
                    let j = offset + (k - 1) as i32 - base;
                    let before = if j >= 0 { merged.get(j as usize).copied().unwrap_or(0) } else { 0 };
                    d.push(c.saturating_sub(before));
                }
                ok.then_some(d)
            }
            _ => None,
        };
        let delta = match delta {
            Some(d) => d,
            None => {
                self.g.counters.counter_resets.add(1);
                buckets.clone()
            }
        };
        *prev = Prev { start, count, buckets, exp: Some((scale, offset)), seen: self.g.now_sec };
        Ok(Some((offset, delta)))
    }

    /// Which route of which service a route point is about, and who called it.
    fn route_key(reporter: &Workload, attrs: &[KeyValue]) -> Option<crate::routes::RouteKey> {
        let caller = prefixed_workload(attrs, SOURCE_PREFIX).unwrap_or_else(|| reporter.clone());
        let service = prefixed_workload(attrs, DESTINATION_PREFIX)?;
        let route = get_str(attrs, HTTP_ROUTE)?;
        if route.is_empty() || route.len() > meshlens_model::policy::MAX_ROUTE_NAME {
            return None;
        }
        Some(crate::routes::RouteKey {
            caller: caller.id().into(),
            service: format!("{}/{}", service.namespace, service.app).into(),
            route: route.into(),
        })
    }

    /// The value of a sum point: its delta when cumulative (`None` while it sets the baseline).
    fn sum_value(
        &mut self,
        name: &str,
        reporter: &Workload,
        p: &NumberDataPoint,
        cumulative: bool,
    ) -> Result<Option<u64>, LimitHit> {
        let value = match p.value {
            Some(number_data_point::Value::AsInt(i)) => u64::try_from(i).unwrap_or(0),
            Some(number_data_point::Value::AsDouble(d)) if d >= 0.0 => d as u64,
            _ => 0,
        };
        if !cumulative {
            return Ok(Some(value));
        }
        let key = series_key(name, reporter, &p.attributes);
        Ok(self.delta(key, p.start_time_unix_nano, value, &[value])?.map(|d| d[0]))
    }

    /// A per-route request histogram point: its requests on the route's rings.
    fn route_point(
        &mut self,
        reporter: &Workload,
        p: &HistogramDataPoint,
        cumulative: bool,
        scale: f64,
        now: f64,
    ) -> Result<(), LimitHit> {
        let Some(key) = Self::route_key(reporter, &p.attributes) else {
            self.g.counters.points_rejected.add(1);
            return Ok(());
        };
        let Some(counts) = self.histogram_counts(ROUTE_DURATION, reporter, p, cumulative)? else { return Ok(()) };
        let failed = get_bool(&p.attributes, SUCCESS) == Some(false);
        for (i, &c) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            let n = u32::try_from(c).unwrap_or(u32::MAX);
            self.g.routes.record(key.clone(), now as u64, failed, bucket_value_us(p, i, scale), n)?;
        }
        Ok(())
    }

    /// A per-route retries point.
    fn route_retries_point(
        &mut self,
        reporter: &Workload,
        p: &NumberDataPoint,
        cumulative: bool,
        now: f64,
    ) -> Result<(), LimitHit> {
        let Some(key) = Self::route_key(reporter, &p.attributes) else {
            self.g.counters.points_rejected.add(1);
            return Ok(());
        };
        match self.sum_value(ROUTE_RETRIES, reporter, p, cumulative)? {
            Some(n) if n > 0 => self.g.routes.record_retries(key, now as u64, u32::try_from(n).unwrap_or(u32::MAX)),
            _ => Ok(()),
        }
    }

    fn sum_point(
        &mut self,
        name: &str,
        reporter: &Workload,
        p: &NumberDataPoint,
        cumulative: bool,
        retries: bool,
        now: f64,
    ) -> Result<(), LimitHit> {
        if !mesh_point(&p.attributes) {
            return Ok(());
        }
        let Some(n) = self.sum_value(name, reporter, p, cumulative)?.filter(|&n| n > 0) else {
            return Ok(());
        };
        let (source, target) = self.ends(reporter, &p.attributes, Side::Client)?;
        let edge = self.g.edge_mut(source, target, Protocol::Http)?;
        edge.metrics_seen = true;
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if retries {
            edge.record_retries(now as u64, n, 0);
        } else {
            edge.record_retries(now as u64, 0, n);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
