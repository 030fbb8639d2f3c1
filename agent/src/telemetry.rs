//! Request telemetry on the hot path: one [`PeerMetrics`] per peer and direction, holding a
//! fixed-bucket latency histogram per outcome (status code, error type, reached) in atomics.
//!
//! Recording takes no lock and allocates nothing, as linkerd2-proxy's metrics do: the outbound
//! side's `PeerMetrics` are found when the config is built, and the inbound side's by the caller's
//! identity in a copy-on-write map read without a lock. Everything is cumulative from the agent's
//! start, so an export that fails loses nothing: the next one carries the totals. The export
//! itself lives in [`crate::export`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use meshlens_model::Workload;
use parking_lot::Mutex;

/// The bound after `b`: 3% wider (at least 1 µs), so a bucket's midpoint — what the collector
/// reads a bucket as — is within ±1.5% of any value in it, and an edge's percentiles within ±2%
/// with room for the hops a client's own measure adds.
const fn next_bound(b: u64) -> u64 {
    let step = b * 30 / 1000;
    if step == 0 { b + 1 } else { b + step }
}

/// How many bounds from 50 µs to the first at or past 60 s.
const fn bound_count() -> usize {
    let (mut b, mut n) = (50, 1);
    while b < 60_000_000 {
        b = next_bound(b);
        n += 1;
    }
    n
}

/// Number of latency bounds.
pub(crate) const BOUNDS_LEN: usize = bound_count();

/// Upper bounds of the latency buckets, in microseconds (the last bucket is open): geometric, 3%
/// apart, 50 µs to 60 s. The first round's 31 hand-picked bounds put percentiles at bucket
/// midpoints up to ±25% away (100–150 ms read as 125 ms); these keep the hot path a binary search
/// and a relaxed atomic add, at 8 bytes per bucket per outcome.
pub(crate) const BOUNDS_US: [u64; BOUNDS_LEN] = {
    let mut a = [0u64; BOUNDS_LEN];
    let (mut b, mut i) = (50, 0);
    while i < BOUNDS_LEN {
        a[i] = b;
        b = next_bound(b);
        i += 1;
    }
    a
};
const BUCKETS: usize = BOUNDS_US.len() + 1;
// The bounds end at the first past 60 s, and stay few enough to be cheap per outcome.
const _: () = assert!(BOUNDS_US[BOUNDS_LEN - 1] >= 60_000_000 && BOUNDS_US[BOUNDS_LEN - 2] < 60_000_000);
const _: () = assert!(BOUNDS_LEN < 520);
/// Outcomes tracked per peer; a further outcome is counted in `overflow` and not exported.
pub(crate) const SLOTS: usize = 16;
/// Callers tracked by identity on the inbound side; further callers share the unknown caller.
pub(crate) const MAX_PEERS: usize = 1024;

/// Why a request got no response, as `error.type` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorKind {
    /// A response came (its status tells the rest).
    None = 0,
    /// A timeout fired before the response.
    Timeout = 1,
    /// The connection could not be made.
    ConnectFailure = 2,
    /// The connection broke.
    Reset = 3,
    /// No endpoint could take it (unknown service, none configured, all ejected).
    NoEndpoint = 4,
    /// The caller went away first.
    Cancelled = 5,
}

impl ErrorKind {
    const ALL: [ErrorKind; 6] = [
        ErrorKind::None,
        ErrorKind::Timeout,
        ErrorKind::ConnectFailure,
        ErrorKind::Reset,
        ErrorKind::NoEndpoint,
        ErrorKind::Cancelled,
    ];

    /// The `error.type` value; empty for none.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::None => "",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ConnectFailure => "connect_failure",
            ErrorKind::Reset => "reset",
            ErrorKind::NoEndpoint => "no_endpoint",
            ErrorKind::Cancelled => "cancelled",
        }
    }
}

/// What became of one request (or one attempt) on one side of a hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// HTTP status, 0 when there was no response.
    pub status: u16,
    /// Why there was none.
    pub error: ErrorKind,
    /// Whether the request reached the peer.
    pub reached: bool,
    /// Whether the hop was mutual TLS.
    pub mtls: bool,
    /// The gRPC status code (0–16) of a gRPC response.
    pub grpc: Option<u8>,
}

impl Outcome {
    /// A response with `status` from the peer.
    pub fn status(status: u16) -> Self {
        Self { status, error: ErrorKind::None, reached: true, mtls: false, grpc: None }
    }

    /// No response, for `error`; `reached` says whether the peer got the request.
    pub fn failed(error: ErrorKind, reached: bool) -> Self {
        Self { status: 0, error, reached, mtls: false, grpc: None }
    }

    /// The same outcome, over mutual TLS or not.
    pub fn with_mtls(self, mtls: bool) -> Self {
        Self { mtls, ..self }
    }

    /// The same outcome with a gRPC status code (codes above 16 are dropped).
    pub fn with_grpc(self, grpc: Option<u8>) -> Self {
        Self { grpc: grpc.filter(|&c| c <= 16), ..self }
    }

    fn key(self) -> u32 {
        // Never 0: 0 marks a free slot.
        1 + u32::from(self.status.min(999))
            + 1000 * (self.error as u32)
            + 10_000 * u32::from(self.reached)
            + 20_000 * u32::from(self.mtls)
            + 40_000 * self.grpc.map_or(0, |c| u32::from(c) + 1)
    }

    fn from_key(key: u32) -> Self {
        let k = key - 1;
        let error = ErrorKind::ALL.get(((k / 1000) % 10) as usize).copied().unwrap_or(ErrorKind::None);
        Self {
            status: (k % 1000) as u16,
            error,
            reached: (k / 10_000) % 2 == 1,
            mtls: (k / 20_000) % 2 == 1,
            grpc: (k / 40_000).checked_sub(1).and_then(|c| u8::try_from(c).ok()),
        }
    }
}

/// Which side of a hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Requests into this workload (the callee's report).
    Inbound,
    /// Requests this workload made (the caller's report).
    Outbound,
}

/// A cumulative latency histogram in atomics.
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_us: AtomicU64::new(0) }
    }
}

/// The bucket of a latency.
pub(crate) fn bucket_of(us: u64) -> usize {
    BOUNDS_US.partition_point(|&b| b < us)
}

impl Histogram {
    /// Adds one observation.
    pub(crate) fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some(b) = self.buckets.get(bucket_of(us)) {
            b.fetch_add(1, Relaxed);
        }
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Bucket counts, sum in seconds and count.
    pub(crate) fn read(&self) -> (Vec<u64>, f64, u64) {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let count = counts.iter().sum();
        (counts, self.sum_us.load(Relaxed) as f64 / 1e6, count)
    }
}

struct Slot {
    key: AtomicU32,
    hist: Histogram,
}

/// Everything recorded about one peer on one side.
pub struct PeerMetrics {
    /// Which side.
    pub direction: Direction,
    /// The peer: the caller inbound, the callee version outbound; `None` when unknown.
    pub peer: Option<Workload>,
    slots: [Slot; SLOTS],
    retries: AtomicU64,
    timeouts: AtomicU64,
    overflow: AtomicU64,
}

/// One outcome's totals, for export.
pub struct OutcomeTotals {
    /// The outcome.
    pub outcome: Outcome,
    /// Bucket counts (one more than [`BOUNDS_US`]).
    pub buckets: Vec<u64>,
    /// Sum of latencies, seconds.
    pub sum_s: f64,
    pub count: u64,
}

impl PeerMetrics {
    fn new(direction: Direction, peer: Option<Workload>) -> Self {
        Self {
            direction,
            peer,
            slots: std::array::from_fn(|_| Slot { key: AtomicU32::new(0), hist: Histogram::default() }),
            retries: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
        }
    }

    /// Records one request: no lock, no allocation.
    pub fn record(&self, outcome: Outcome, latency: Duration) {
        let key = outcome.key();
        for slot in &self.slots {
            let k = slot.key.load(Relaxed);
            if k == key {
                slot.hist.record(latency);
                return;
            }
            if k == 0 {
                match slot.key.compare_exchange(0, key, Relaxed, Relaxed) {
                    Ok(_) => {
                        slot.hist.record(latency);
                        return;
                    }
                    Err(now) if now == key => {
                        slot.hist.record(latency);
                        return;
                    }
                    Err(_) => continue,
                }
            }
        }
        self.overflow.fetch_add(1, Relaxed);
    }

    /// Counts `n` retries.
    pub fn add_retries(&self, n: u64) {
        self.retries.fetch_add(n, Relaxed);
    }

    /// Counts `n` timeouts.
    pub fn add_timeouts(&self, n: u64) {
        self.timeouts.fetch_add(n, Relaxed);
    }

    /// Retries so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Relaxed)
    }

    /// Timeouts so far.
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Relaxed)
    }

    /// Requests not recorded because every slot held another outcome.
    pub fn overflow(&self) -> u64 {
        self.overflow.load(Relaxed)
    }

    /// Totals per outcome seen.
    pub fn outcomes(&self) -> Vec<OutcomeTotals> {
        let mut out = Vec::new();
        for slot in &self.slots {
            let key = slot.key.load(Relaxed);
            if key == 0 {
                continue;
            }
            let (buckets, sum_s, count) = slot.hist.read();
            out.push(OutcomeTotals { outcome: Outcome::from_key(key), buckets, sum_s, count });
        }
        out
    }
}

/// One declared route of one service this workload calls (or its `[default]`): requests as the
/// caller saw them — one per request, whatever its retries, with its whole latency — and the
/// retries sent, so `meshlens routes` can tell effective from actual success.
pub struct RouteMetrics {
    /// `ns/app` of the service.
    pub service: Box<str>,
    /// The route's name.
    pub route: Box<str>,
    succeeded: Histogram,
    failed: Histogram,
    retries: AtomicU64,
}

impl RouteMetrics {
    /// Records one request's final outcome: no lock, no allocation.
    pub fn record(&self, failed: bool, latency: Duration) {
        if failed { &self.failed } else { &self.succeeded }.record(latency);
    }

    /// Counts one retry.
    pub fn add_retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// Bucket counts, sum in seconds and count of the requests that succeeded (`true`) or failed.
    pub fn read(&self, succeeded: bool) -> (Vec<u64>, f64, u64) {
        if succeeded { self.succeeded.read() } else { self.failed.read() }
    }

    /// Retries so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Relaxed)
    }
}

/// `(service, route)`.
type RouteId = (Box<str>, Box<str>);

/// All peers, by side and identity (`ns/app/version`, or empty for an unknown peer), and the
/// routes of the services called.
#[derive(Default)]
pub struct Registry {
    inbound: ArcSwap<HashMap<Box<str>, Arc<PeerMetrics>>>,
    outbound: ArcSwap<HashMap<Box<str>, Arc<PeerMetrics>>>,
    routes: Mutex<HashMap<RouteId, Arc<RouteMetrics>>>,
    write: Mutex<()>,
}

impl Registry {
    fn map(&self, direction: Direction) -> &ArcSwap<HashMap<Box<str>, Arc<PeerMetrics>>> {
        match direction {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        }
    }

    /// The metrics of the peer with node id `id`: read without a lock; the first request from a
    /// new peer copies the map. Past [`MAX_PEERS`] callers, new ones share the unknown peer.
    pub fn peer(&self, direction: Direction, id: &str) -> Arc<PeerMetrics> {
        let map = self.map(direction);
        if let Some(m) = map.load().get(id) {
            return m.clone();
        }
        let _guard = self.write.lock();
        let current = map.load_full();
        if let Some(m) = current.get(id) {
            return m.clone();
        }
        let (id, workload) = match parse_id(id) {
            Some(w) if current.len() < MAX_PEERS => (id, Some(w)),
            _ => ("", None),
        };
        if let Some(m) = current.get(id) {
            return m.clone();
        }
        let metrics = Arc::new(PeerMetrics::new(direction, workload));
        let mut next = HashMap::clone(&current);
        next.insert(id.into(), metrics.clone());
        map.store(Arc::new(next));
        metrics
    }

    /// The metrics of route `route` of service `service` (`ns/app`), kept across reloads so its
    /// totals stay cumulative. Called when a config is built, never per request; routes are bounded
    /// by the policy (`MAX_ROUTES` a service).
    pub fn route(&self, service: &str, route: &str) -> Arc<RouteMetrics> {
        self.routes
            .lock()
            .entry((service.into(), route.into()))
            .or_insert_with(|| {
                Arc::new(RouteMetrics {
                    service: service.into(),
                    route: route.into(),
                    succeeded: Histogram::default(),
                    failed: Histogram::default(),
                    retries: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Every route, by service and name.
    pub fn routes(&self) -> Vec<Arc<RouteMetrics>> {
        let mut all: Vec<Arc<RouteMetrics>> = self.routes.lock().values().cloned().collect();
        all.sort_by(|a, b| (&a.service, &a.route).cmp(&(&b.service, &b.route)));
        all
    }

    /// Every peer of both sides.
    pub fn all(&self) -> Vec<Arc<PeerMetrics>> {
        let mut all: Vec<Arc<PeerMetrics>> =
            self.inbound.load().values().chain(self.outbound.load().values()).cloned().collect();
        all.sort_by_key(|p| (p.direction == Direction::Outbound, p.peer.as_ref().map(Workload::id)));
        all
    }
}

/// `ns/app/version` or `ns/app` to a workload; `None` for anything else.
pub(crate) fn parse_id(id: &str) -> Option<Workload> {
    let mut parts = id.split('/');
    let (ns, app, version) = (parts.next()?, parts.next()?, parts.next());
    if parts.next().is_some() || ns.is_empty() || app.is_empty() {
        return None;
    }
    Workload::from_resource(Some(ns), Some(app), version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_upper_bound() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(50), 0);
        assert_eq!(bucket_of(51), 1);
        assert_eq!(bucket_of(BOUNDS_US[BOUNDS_LEN - 1] + 1), BOUNDS_US.len());
        // Every bucket's midpoint is within 1.5% of both its ends.
        for w in BOUNDS_US.windows(2) {
            let (lo, hi) = (w[0] as f64, w[1] as f64);
            let mid = (lo + hi) / 2.0;
            assert!((mid - lo) / lo <= 0.0151 || hi - lo <= 1.0, "{lo}..{hi}");
        }
    }

    #[test]
    fn outcomes_round_trip_their_keys() {
        for o in [
            Outcome::status(200),
            Outcome::status(503),
            Outcome { status: 503, error: ErrorKind::NoEndpoint, reached: false, mtls: false, grpc: None },
            Outcome::status(200).with_mtls(true),
            Outcome::failed(ErrorKind::Timeout, false).with_mtls(true),
            Outcome::failed(ErrorKind::Timeout, true),
            Outcome::failed(ErrorKind::Cancelled, true),
            Outcome::failed(ErrorKind::ConnectFailure, false),
            Outcome::status(200).with_grpc(Some(0)),
            Outcome::status(200).with_grpc(Some(16)).with_mtls(true),
            Outcome::status(200).with_grpc(Some(14)),
        ] {
            assert_eq!(Outcome::from_key(o.key()), o);
        }
    }

    #[test]
    fn records_per_outcome_and_counts_overflow() {
        let p = PeerMetrics::new(Direction::Inbound, None);
        for _ in 0..3 {
            p.record(Outcome::status(200), Duration::from_micros(150));
        }
        p.record(Outcome::status(500), Duration::from_millis(2));
        let totals = p.outcomes();
        assert_eq!(totals.len(), 2);
        assert_eq!((totals[0].outcome.status, totals[0].count, totals[0].buckets[bucket_of(150)]), (200, 3, 3));
        assert!((totals[0].sum_s - 450e-6).abs() < 1e-9);
        for code in 0..SLOTS as u16 {
            p.record(Outcome::status(201 + code), Duration::ZERO);
        }
        assert_eq!(p.overflow(), 2);
    }

    #[test]
    fn the_registry_bounds_callers() {
        let r = Registry::default();
        let a = r.peer(Direction::Inbound, "shop/a/v1");
        assert!(Arc::ptr_eq(&a, &r.peer(Direction::Inbound, "shop/a/v1")));
        assert_eq!(a.peer.as_ref().map(Workload::id).as_deref(), Some("shop/a/v1"));
        assert!(r.peer(Direction::Inbound, "not an id").peer.is_none());
        for i in 0..MAX_PEERS + 5 {
            r.peer(Direction::Inbound, &format!("ns/app{i}"));
        }
        assert_eq!(r.inbound.load().len(), MAX_PEERS);
    }
}
