//! Windowed request stats: rings of time slices per edge, and their aggregation into [`Stats`].
//!
//! Each edge keeps two rings of slices, keyed by when requests *arrived at the collector* (span clocks
//! can be skewed, so span timestamps are not used to place requests in time):
//!
//! - a fine ring of 1 s slices covering the last 120 s, used for windows up to 2 minutes, and
//! - a coarse ring of 30 s slices covering the last hour and a half-filled slice, for longer windows.
//!
//! A slice holds counters and a sparse latency histogram, so any window from 10 s to 1 h of any set of
//! edges merges exactly. Memory: a slice is 64 bytes plus 8 bytes per occupied latency bucket; an
//! edge's rings are 241 slices (about 15 KiB) plus its histogram buckets. See docs/PERFORMANCE.md.

use meshlens_model::hist::{Merger, SparseHist};
use meshlens_model::stats::{CodeClass, Codes, Stats, round2};

/// Width of a fine slice, seconds.
pub(crate) const FINE_WIDTH: u64 = 1;
/// Number of fine slices.
pub(crate) const FINE_SLOTS: usize = 120;
/// Width of a coarse slice, seconds.
pub(crate) const COARSE_WIDTH: u64 = 30;
/// Number of coarse slices: one hour plus the slice being filled.
pub(crate) const COARSE_SLOTS: usize = 121;
/// Shortest window the API answers.
pub(crate) const MIN_WINDOW_SECS: u64 = 10;
/// Longest window the API answers.
pub(crate) const MAX_WINDOW_SECS: u64 = 3600;

/// Counters and latency of the requests that arrived in one slice of time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Slice {
    /// Slice number (`unix_seconds / width`); 0 means empty.
    pub epoch: u64,
    pub requests: u32,
    /// Failed requests.
    pub errors: u32,
    /// Requests per [`CodeClass`].
    pub codes: [u32; 5],
    /// Requests over mTLS.
    pub mtls: u32,
    /// Retries reported by agents.
    pub retries: u32,
    /// Timeouts reported by agents.
    pub timeouts: u32,
    /// Latency (the callee's when known, else the caller's).
    pub hist: SparseHist,
    /// gRPC requests per status code, on edges that carry gRPC only (8 bytes elsewhere).
    pub grpc: Option<Box<[u32; 17]>>,
}

impl Slice {
    fn reset(&mut self, epoch: u64) {
        let hist = std::mem::take(&mut self.hist);
        let grpc = self.grpc.take().map(|mut g| {
            *g = [0; 17];
            g
        });
        *self = Slice { epoch, hist, grpc, ..Slice::default() };
        self.hist.clear();
    }
}

/// What one observation adds to an edge.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Obs {
    /// Status class.
    pub class: CodeClass,
    /// Whether the requests failed.
    pub failed: bool,
    /// Latency of each request, µs.
    pub latency_us: Option<u64>,
    /// How many requests this observation stands for.
    pub count: u32,
    /// Carried over mTLS.
    pub mtls: bool,
    /// The gRPC status code (0–16), when the request carried one.
    pub grpc: Option<u8>,
    /// The trace it belongs to, when it came from a span (for exemplars).
    pub trace: Option<[u8; 16]>,
}

/// A ring of slices of one width.
#[derive(Clone, Debug)]
pub struct Ring {
    width: u64,
    slots: Box<[Slice]>,
}

impl Ring {
    /// A ring of `len` empty slices of `width` seconds.
    pub fn new(width: u64, len: usize) -> Self {
        Self { width, slots: vec![Slice::default(); len].into_boxed_slice() }
    }

    /// Slice width in seconds.
    pub fn width(&self) -> u64 {
        self.width
    }

    /// The slice that holds second `sec`, reset if it held an older epoch.
    pub fn slot_mut(&mut self, sec: u64) -> &mut Slice {
        let epoch = sec / self.width;
        let len = self.slots.len() as u64;
        let i = (epoch % len) as usize;
        if self.slots[i].epoch != epoch {
            // A new epoch begins: the one before it is complete, so its latency buckets will not
            // grow again and their spare capacity (up to half, from doubling) can go.
            let prev = ((epoch + len - 1) % len) as usize;
            if self.slots[prev].epoch + 1 == epoch {
                self.slots[prev].hist.buckets.shrink_to_fit();
            }
            self.slots[i].reset(epoch);
        }
        &mut self.slots[i]
    }

    /// The slice with exactly this epoch, if held.
    pub fn get(&self, epoch: u64) -> Option<&Slice> {
        let slot = &self.slots[(epoch % self.slots.len() as u64) as usize];
        (slot.epoch == epoch).then_some(slot)
    }

    /// Puts a slice back (restore from the store); older epochs than what is held are ignored.
    pub fn restore(&mut self, slice: Slice) {
        let i = (slice.epoch % self.slots.len() as u64) as usize;
        if self.slots[i].epoch <= slice.epoch {
            self.slots[i] = slice;
        }
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slice>() + self.slots.iter().map(|s| s.hist.heap_bytes()).sum::<usize>()
    }
}

/// The fine and coarse rings of one edge.
#[derive(Clone, Debug)]
pub struct Rings {
    /// 1 s slices.
    pub fine: Ring,
    /// 30 s slices.
    pub coarse: Ring,
}

impl Default for Rings {
    fn default() -> Self {
        Self { fine: Ring::new(FINE_WIDTH, FINE_SLOTS), coarse: Ring::new(COARSE_WIDTH, COARSE_SLOTS) }
    }
}

impl Rings {
    /// Records an observation that arrived at second `sec`.
    pub fn record(&mut self, sec: u64, obs: &Obs) {
        for ring in [&mut self.fine, &mut self.coarse] {
            let s = ring.slot_mut(sec);
            s.requests = s.requests.saturating_add(obs.count);
            if obs.failed {
                s.errors = s.errors.saturating_add(obs.count);
            }
            let c = &mut s.codes[obs.class as usize];
            *c = c.saturating_add(obs.count);
            if obs.mtls {
                s.mtls = s.mtls.saturating_add(obs.count);
            }
            if let Some(l) = obs.latency_us {
                s.hist.record_n(l, obs.count);
            }
            if let Some(code) = obs.grpc.filter(|&c| c <= 16) {
                let g = s.grpc.get_or_insert_with(Box::default);
                g[usize::from(code)] = g[usize::from(code)].saturating_add(obs.count);
            }
        }
    }

    /// Adds `n` latencies of requests counted apart (a store's histogram beside its counters) at
    /// second `sec`: the percentiles see them, the request counts do not.
    pub fn record_latency(&mut self, sec: u64, latency_us: u64, n: u32) {
        for ring in [&mut self.fine, &mut self.coarse] {
            ring.slot_mut(sec).hist.record_n(latency_us, n);
        }
    }

    /// Adds agent-reported retries and timeouts at second `sec`.
    pub fn record_retries(&mut self, sec: u64, retries: u32, timeouts: u32) {
        for ring in [&mut self.fine, &mut self.coarse] {
            let s = ring.slot_mut(sec);
            s.retries = s.retries.saturating_add(retries);
            s.timeouts = s.timeouts.saturating_add(timeouts);
        }
    }

    /// The ring a window reads from.
    pub fn ring_for(&self, window_secs: u64) -> &Ring {
        if window_secs <= FINE_SLOTS as u64 * FINE_WIDTH { &self.fine } else { &self.coarse }
    }
}

/// Which slices a query covers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowSpec {
    /// Slice width.
    pub width: u64,
    /// First epoch included.
    pub first: u64,
    /// Last epoch included (the one being filled).
    pub last: u64,
    /// Seconds of real time the included slices cover (capped by how long there has been data).
    pub covered_secs: f64,
    /// First epoch that counts for rps min/max (slices before the data began do not).
    pub first_full: u64,
}

impl WindowSpec {
    /// The slices of a `window_secs` window ending at `now` (Unix seconds), when data has been
    /// collected since `data_since`.
    pub fn new(now: f64, window_secs: u64, data_since: f64) -> Self {
        let width = if window_secs <= FINE_SLOTS as u64 * FINE_WIDTH { FINE_WIDTH } else { COARSE_WIDTH };
        let now_sec = now.max(0.0) as u64;
        let last = now_sec / width;
        let start = now_sec.saturating_sub(window_secs) + 1;
        let first = start.div_ceil(width).max(1).min(last);
        let window_start = (first * width) as f64;
        let begin = window_start.max(data_since);
        let covered_secs = (now - begin).max(1.0);
        let first_full = ((data_since.max(0.0) as u64).div_ceil(width)).max(first);
        Self { width, first, last, covered_secs, first_full }
    }

    /// Number of steps in the window.
    pub fn steps(&self) -> usize {
        (self.last - self.first + 1) as usize
    }
}

/// Counters summed over a window, per step too.
#[derive(Clone, Debug, Default)]
struct Counts {
    requests: u64,
    errors: u64,
    codes: [u64; 5],
    mtls: u64,
    retries: u64,
    timeouts: u64,
    grpc: Option<[u64; 17]>,
    agent_reported: bool,
    per_step: Vec<(u64, u64)>,
}

fn add_grpc<T: Copy + Into<u64>>(into: &mut Option<[u64; 17]>, from: Option<&[T; 17]>) {
    if let Some(from) = from {
        let into = into.get_or_insert([0; 17]);
        for (a, &b) in into.iter_mut().zip(from) {
            *a += b.into();
        }
    }
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.agent_reported |= o.agent_reported;
        self.requests += o.requests;
        self.errors += o.errors;
        for (a, b) in self.codes.iter_mut().zip(o.codes) {
            *a += b;
        }
        self.mtls += o.mtls;
        self.retries += o.retries;
        self.timeouts += o.timeouts;
        add_grpc(&mut self.grpc, o.grpc.as_ref());
        for (a, b) in self.per_step.iter_mut().zip(&o.per_step) {
            a.0 += b.0;
            a.1 += b.1;
        }
    }
}

/// One edge's window summed once, so the five views of a tick can merge edges without walking
/// their slices again.
#[derive(Clone, Debug, Default)]
pub(crate) struct EdgeWindow {
    counts: Counts,
    hist: SparseHist,
}

/// Sums slices of many edges and turns them into [`Stats`].
pub(crate) struct Aggregate<'m> {
    spec: WindowSpec,
    counts: Counts,
    merger: &'m mut Merger,
}

impl<'m> Aggregate<'m> {
    /// An empty aggregate over `spec`, merging latency into `merger` (which is reset first).
    pub(crate) fn new(spec: WindowSpec, merger: &'m mut Merger) -> Self {
        merger.reset();
        Self { spec, counts: Counts { per_step: vec![(0, 0); spec.steps()], ..Counts::default() }, merger }
    }

    /// Adds one edge's rings.
    pub(crate) fn add(&mut self, rings: &Rings, agent_reported: bool) {
        let c = &mut self.counts;
        c.agent_reported |= agent_reported;
        let ring = if self.spec.width == FINE_WIDTH { &rings.fine } else { &rings.coarse };
        for epoch in self.spec.first..=self.spec.last {
            let Some(s) = ring.get(epoch) else { continue };
            c.requests += u64::from(s.requests);
            c.errors += u64::from(s.errors);
            for (a, b) in c.codes.iter_mut().zip(s.codes) {
                *a += u64::from(b);
            }
            c.mtls += u64::from(s.mtls);
            c.retries += u64::from(s.retries);
            c.timeouts += u64::from(s.timeouts);
            add_grpc(&mut c.grpc, s.grpc.as_deref());
            let step = &mut c.per_step[(epoch - self.spec.first) as usize];
            step.0 += u64::from(s.requests);
            step.1 += u64::from(s.errors);
            self.merger.add(&s.hist);
        }
    }

    /// Adds an edge's window summed earlier over the same [`WindowSpec`].
    pub(crate) fn add_window(&mut self, w: &EdgeWindow) {
        self.counts.add(&w.counts);
        self.merger.add(&w.hist);
    }

    /// This aggregate as an [`EdgeWindow`] for later merging.
    pub(crate) fn to_window(&self) -> EdgeWindow {
        EdgeWindow { counts: self.counts.clone(), hist: self.merger.to_sparse() }
    }

    /// Requests and errors per step, oldest first, with each step's start (Unix seconds).
    pub(crate) fn series(&self) -> impl Iterator<Item = (u64, f64, f64)> + '_ {
        let w = self.spec.width;
        self.counts
            .per_step
            .iter()
            .enumerate()
            .map(move |(i, &(r, e))| ((self.spec.first + i as u64) * w, r as f64 / w as f64, e as f64 / w as f64))
    }

    /// The stats.
    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counts;
        let rps = c.requests as f64 / self.spec.covered_secs;
        let w = self.spec.width as f64;
        let full: Vec<f64> = c
            .per_step
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let e = self.spec.first + *i as u64;
                e >= self.spec.first_full && e < self.spec.last
            })
            .map(|(_, &(r, _))| r as f64 / w)
            .collect();
        let (rps_min, rps_max) = if full.is_empty() {
            (rps, rps)
        } else {
            (full.iter().copied().fold(f64::INFINITY, f64::min), full.iter().copied().fold(0.0, f64::max))
        };
        let mut stats = Stats {
            requests: c.requests,
            errors: c.errors,
            rps: round2(rps),
            rps_min: round2(rps_min),
            rps_max: round2(rps_max),
            codes: Codes::from_array(c.codes),
            latency_ms: self.merger.latency_ms(),
            retries: c.agent_reported.then_some(c.retries),
            timeouts: c.agent_reported.then_some(c.timeouts),
            grpc_codes: c.grpc.as_ref().and_then(meshlens_model::stats::grpc_breakdown),
            ..Stats::default()
        };
        stats.set_percentages(c.mtls);
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(failed: bool, latency: u64) -> Obs {
        Obs {
            class: if failed { CodeClass::ServerError } else { CodeClass::Ok },
            failed,
            latency_us: Some(latency),
            count: 1,
            mtls: false,
            grpc: None,
            trace: None,
        }
    }

    #[test]
    fn a_window_counts_what_arrived_inside_it() {
        let mut r = Rings::default();
        let t0 = 1_800_000_000u64;
        for s in 0..120 {
            r.record(t0 + s, &obs(s % 10 == 0, 1000 + s));
        }
        let now = (t0 + 119) as f64 + 0.5;
        let mut m = Merger::default();
        let spec = WindowSpec::new(now, 60, t0 as f64);
        let mut a = Aggregate::new(spec, &mut m);
        a.add(&r, false);
        let s = a.stats();
        assert_eq!(s.requests, 60);
        assert_eq!(s.errors, 6);
        assert_eq!(s.success_pct, Some(90.0));
        assert_eq!(s.rps_min, 1.0);
        assert_eq!(s.rps_max, 1.0);
        assert!((s.rps - 60.0 / 59.5).abs() < 0.02, "{}", s.rps);
        assert_eq!(s.retries, None);

        let spec = WindowSpec::new(now, 3600, t0 as f64);
        let mut a = Aggregate::new(spec, &mut m);
        a.add(&r, true);
        let s = a.stats();
        assert_eq!(s.requests, 120);
        assert_eq!(s.retries, Some(0));
    }

    #[test]
    fn old_slices_are_reused() {
        let mut r = Rings::default();
        r.record(1000, &obs(false, 5));
        r.record(1000 + FINE_SLOTS as u64, &obs(false, 5));
        let spec = WindowSpec::new(1000.0 + FINE_SLOTS as f64, 120, 0.0);
        let mut m = Merger::default();
        let mut a = Aggregate::new(spec, &mut m);
        a.add(&r, false);
        assert_eq!(a.stats().requests, 1);
    }
}
