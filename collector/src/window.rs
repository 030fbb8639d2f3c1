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
    /// Epochs below this are summed by a kept window ([`Rings::window`]): a write into one is
    /// counted in `rewrites`, which makes those sums stale.
    sealed: u64,
    /// Writes into sealed epochs (a late batch, a store's replay, a restore), wrapping.
    rewrites: u32,
    /// The newest epoch written: slots of epochs `len` or more before it hold newer ones.
    newest: u64,
}

/// What a ring holds of one epoch.
enum Held<'a> {
    /// The epoch's slice.
    Slice(&'a Slice),
    /// Nothing was recorded in that epoch (its slot holds an older one).
    Empty,
    /// The slot has moved on to a newer epoch.
    Gone,
}

impl Ring {
    /// A ring of `len` empty slices of `width` seconds.
    pub fn new(width: u64, len: usize) -> Self {
        Self { width, slots: vec![Slice::default(); len].into_boxed_slice(), sealed: 0, rewrites: 0, newest: 0 }
    }

    /// Slice width in seconds.
    pub fn width(&self) -> u64 {
        self.width
    }

    /// The slice that holds second `sec`, reset if it held an older epoch.
    pub fn slot_mut(&mut self, sec: u64) -> &mut Slice {
        let epoch = sec / self.width;
        if epoch < self.sealed {
            self.rewrites = self.rewrites.wrapping_add(1);
        }
        self.newest = self.newest.max(epoch);
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

    fn held(&self, epoch: u64) -> Held<'_> {
        let slot = &self.slots[(epoch % self.slots.len() as u64) as usize];
        match slot.epoch.cmp(&epoch) {
            std::cmp::Ordering::Equal => Held::Slice(slot),
            std::cmp::Ordering::Less => Held::Empty,
            std::cmp::Ordering::Greater => Held::Gone,
        }
    }

    /// Puts a slice back (restore from the store); older epochs than what is held are ignored.
    pub fn restore(&mut self, slice: Slice) {
        let i = (slice.epoch % self.slots.len() as u64) as usize;
        if slice.epoch < self.sealed {
            self.rewrites = self.rewrites.wrapping_add(1);
        }
        self.newest = self.newest.max(slice.epoch);
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
    /// Windows kept summed between reads, one per window length read lately.
    kept: Vec<KeptSlot>,
}

impl Default for Rings {
    fn default() -> Self {
        Self {
            fine: Ring::new(FINE_WIDTH, FINE_SLOTS),
            coarse: Ring::new(COARSE_WIDTH, COARSE_SLOTS),
            kept: Vec::new(),
        }
    }
}

/// A kept window not read for this long (seconds) is dropped.
const KEPT_UNREAD_SECS: u64 = 120;
/// Most window lengths kept summed per edge (the live cache's 16 keys and the publisher's window).
const MAX_KEPT: usize = 17;

/// One window length's sums over its *completed* slices `[first, end)`, kept so the next read adds
/// the slices completed since and takes away those that left the window, instead of summing them
/// all again: a read costs the slices that changed, not the window's length. Only the slice being
/// filled is added per read. A maximum cannot be taken away, so `hist.max_us` is unused; the
/// window's maximum is read from its slices.
#[derive(Clone, Debug)]
struct Kept {
    first: u64,
    end: u64,
    /// The ring's `rewrites` when these sums were made: any other value means they are stale.
    rewrites: u32,
    sums: Sums,
    hist: SparseHist,
    /// Each summed epoch's requests, errors and largest latency, oldest first (`end - first` of
    /// them), so a read copies these instead of visiting every slice.
    steps: std::collections::VecDeque<Step>,
}

/// What a window needs of one slice per step.
#[derive(Clone, Copy, Debug, Default)]
struct Step {
    requests: u32,
    errors: u32,
    max_us: u64,
}

impl Step {
    fn of(s: &Slice) -> Self {
        Self { requests: s.requests, errors: s.errors, max_us: s.hist.max_us }
    }
}

/// A [`Kept`] with what finding it needs, so looking one up reads a few cache lines, not each.
#[derive(Clone, Debug)]
struct KeptSlot {
    window_secs: u64,
    /// The newest epoch's start (Unix seconds) of the last read.
    read_at: u64,
    kept: Box<Kept>,
}

impl Kept {
    /// Sums `[first, end)` from scratch.
    fn sum(ring: &Ring, first: u64, end: u64, merger: &mut Merger) -> Self {
        merger.reset();
        let mut sums = Sums::default();
        let mut steps = std::collections::VecDeque::with_capacity((end - first) as usize);
        for epoch in first..end {
            match ring.get(epoch) {
                Some(s) => {
                    sums.add_slice(s);
                    merger.add(&s.hist);
                    steps.push_back(Step::of(s));
                }
                None => steps.push_back(Step::default()),
            }
        }
        let hist = merger.to_sparse();
        Self { first, end, rewrites: ring.rewrites, sums, hist, steps }
    }

    /// Moves these sums to `[first, end)`; false when they cannot be (stale, moved backwards, no
    /// overlap, or a slice summed or to take away is no longer held): then they are summed again.
    fn advance(&mut self, ring: &Ring, first: u64, end: u64, scratch: &mut Vec<(u16, u32)>) -> bool {
        let overwritten = ring.newest >= self.first.max(first) + ring.slots.len() as u64;
        if self.rewrites != ring.rewrites || first < self.first || end < self.end || first >= self.end || overwritten {
            return false;
        }
        for epoch in self.end..end {
            match ring.held(epoch) {
                Held::Slice(s) => {
                    self.sums.add_slice(s);
                    self.hist.add_buckets(&s.hist, scratch);
                    self.steps.push_back(Step::of(s));
                }
                Held::Empty => self.steps.push_back(Step::default()),
                Held::Gone => return false,
            }
        }
        for epoch in self.first..first {
            match ring.held(epoch) {
                Held::Slice(s) => {
                    self.sums.sub_slice(s);
                    self.hist.sub_buckets(&s.hist, scratch);
                }
                // Empty now means empty when it was added: slots only move to newer epochs.
                Held::Empty => {}
                Held::Gone => return false,
            }
            self.steps.pop_front();
        }
        (self.first, self.end) = (first, end);
        true
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

    /// This edge's window over `spec`, the same as [`Aggregate::add`] then [`Aggregate::to_window`]
    /// (`agent_reported`: agents report it), from sums kept for `spec`'s window length since the
    /// last read of it: a read adds what completed since and takes away what left, and sums the
    /// window only the first time or when a write landed in a slice already summed.
    pub(crate) fn window(
        &mut self,
        spec: &WindowSpec,
        agent_reported: bool,
        merger: &mut Merger,
        scratch: &mut Vec<(u16, u32)>,
    ) -> EdgeWindow {
        let ring = if spec.width == FINE_WIDTH { &mut self.fine } else { &mut self.coarse };
        let (first, end) = (spec.first, spec.last);
        let read_at = spec.last * spec.width;
        // Kept sums unread for a while go first (a scan of a few small slots).
        if self.kept.iter().any(|k| k.read_at + KEPT_UNREAD_SECS < read_at) {
            self.kept.retain(|k| k.read_at + KEPT_UNREAD_SECS >= read_at);
        }
        let i = match self.kept.iter().position(|k| k.window_secs == spec.secs) {
            Some(i) => {
                if !self.kept[i].kept.advance(ring, first, end, scratch) {
                    *self.kept[i].kept = Kept::sum(ring, first, end, merger);
                }
                i
            }
            None => {
                let kept = Box::new(Kept::sum(ring, first, end, merger));
                let slot = KeptSlot { window_secs: spec.secs, read_at, kept };
                if self.kept.len() < MAX_KEPT {
                    self.kept.push(slot);
                    self.kept.len() - 1
                } else {
                    // Full: the least recently read gives its place.
                    let oldest = self.kept.iter().enumerate().min_by_key(|(_, k)| k.read_at).map_or(0, |(j, _)| j);
                    self.kept[oldest] = slot;
                    oldest
                }
            }
        };
        ring.sealed = ring.sealed.max(end);
        self.kept[i].read_at = read_at;
        let kept = &self.kept[i].kept;
        let mut per_step = Vec::with_capacity(spec.steps());
        let mut max_us = 0;
        for s in &kept.steps {
            per_step.push((u64::from(s.requests), u64::from(s.errors)));
            max_us = max_us.max(s.max_us);
        }
        let mut counts = Counts { sums: kept.sums.clone(), agent_reported, per_step };
        let mut hist = kept.hist.clone();
        // The slice being filled.
        let now = ring.get(spec.last).map(|s| {
            counts.sums.add_slice(s);
            hist.add_buckets(&s.hist, scratch);
            Step::of(s)
        });
        let now = now.unwrap_or_default();
        counts.per_step.push((u64::from(now.requests), u64::from(now.errors)));
        hist.max_us = max_us.max(now.max_us);
        EdgeWindow { counts, hist }
    }

    /// Drops the sums kept for a window length (the edge is idle in it).
    pub(crate) fn forget(&mut self, window_secs: u64) {
        self.kept.retain(|k| k.window_secs != window_secs);
    }

    /// Heap bytes of the kept sums.
    pub(crate) fn kept_heap_bytes(&self) -> usize {
        self.kept.capacity() * std::mem::size_of::<KeptSlot>()
            + self
                .kept
                .iter()
                .map(|k| {
                    std::mem::size_of::<Kept>()
                        + k.kept.hist.heap_bytes()
                        + k.kept.steps.capacity() * std::mem::size_of::<Step>()
                })
                .sum::<usize>()
    }
}

/// Which slices a query covers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowSpec {
    /// The window's length asked for, seconds.
    pub secs: u64,
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
        Self { secs: window_secs, width, first, last, covered_secs, first_full }
    }

    /// Number of steps in the window.
    pub fn steps(&self) -> usize {
        (self.last - self.first + 1) as usize
    }
}

/// A window's counters, summed over its slices.
#[derive(Clone, Debug, Default, PartialEq)]
struct Sums {
    requests: u64,
    errors: u64,
    codes: [u64; 5],
    mtls: u64,
    retries: u64,
    timeouts: u64,
    grpc: Option<[u64; 17]>,
}

impl Sums {
    /// Applies `op` to each counter and the slice's matching one.
    fn apply(&mut self, s: &Slice, op: impl Fn(u64, u64) -> u64) {
        self.requests = op(self.requests, u64::from(s.requests));
        self.errors = op(self.errors, u64::from(s.errors));
        for (a, b) in self.codes.iter_mut().zip(s.codes) {
            *a = op(*a, u64::from(b));
        }
        self.mtls = op(self.mtls, u64::from(s.mtls));
        self.retries = op(self.retries, u64::from(s.retries));
        self.timeouts = op(self.timeouts, u64::from(s.timeouts));
        if let Some(from) = s.grpc.as_deref() {
            let into = self.grpc.get_or_insert([0; 17]);
            for (a, &b) in into.iter_mut().zip(from) {
                *a = op(*a, u64::from(b));
            }
        }
    }

    fn add_slice(&mut self, s: &Slice) {
        self.apply(s, |a, b| a + b);
    }

    /// Takes away a slice added before.
    fn sub_slice(&mut self, s: &Slice) {
        self.apply(s, u64::saturating_sub);
    }

    fn add(&mut self, o: &Sums) {
        self.requests += o.requests;
        self.errors += o.errors;
        for (a, b) in self.codes.iter_mut().zip(o.codes) {
            *a += b;
        }
        self.mtls += o.mtls;
        self.retries += o.retries;
        self.timeouts += o.timeouts;
        if let Some(from) = &o.grpc {
            let into = self.grpc.get_or_insert([0; 17]);
            for (a, &b) in into.iter_mut().zip(from) {
                *a += b;
            }
        }
    }
}

/// Counters summed over a window, per step too.
#[derive(Clone, Debug, Default, PartialEq)]
struct Counts {
    sums: Sums,
    agent_reported: bool,
    per_step: Vec<(u64, u64)>,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.agent_reported |= o.agent_reported;
        self.sums.add(&o.sums);
        for (a, b) in self.per_step.iter_mut().zip(&o.per_step) {
            a.0 += b.0;
            a.1 += b.1;
        }
    }
}

/// One edge's window summed once, so the five views of a tick can merge edges without walking
/// their slices again.
#[derive(Clone, Debug, Default, PartialEq)]
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
            c.sums.add_slice(s);
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
    #[cfg(any(test, feature = "testkit"))]
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
        let c = &self.counts.sums;
        let rps = c.requests as f64 / self.spec.covered_secs;
        let w = self.spec.width as f64;
        let full: Vec<f64> = self
            .counts
            .per_step
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let e = self.spec.first + *i as u64;
                e >= self.spec.first_full && e < self.spec.last
            })
            .map(|(_, &(r, _))| r as f64 / w)
            .collect();
        let agent_reported = self.counts.agent_reported;
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
            retries: agent_reported.then_some(c.retries),
            timeouts: agent_reported.then_some(c.timeouts),
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

    /// The kept sums against summing every slice again, over a long random history: steady
    /// seconds, bursts, gaps longer than the rings, late writes into summed slices, restores,
    /// reads going back a little in time, and many window lengths read in turn.
    #[test]
    fn kept_windows_equal_a_full_sum_whatever_the_history() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut r = Rings::default();
        let (mut m, mut m2, mut scratch) = (Merger::default(), Merger::default(), Vec::new());
        let windows = [10u64, 30, 60, 119, 120, 121, 300, 900, 3600];
        let mut now = 1_800_000_000u64;
        let (mut kept_hits, mut reads) = (0, 0);
        for step in 0..6000 {
            now += match rand(100) {
                0 => 200 + rand(4000),
                1..=10 => 0,
                _ => 1,
            };
            for _ in 0..rand(4) {
                let sec = if rand(20) == 0 { now.saturating_sub(1 + rand(200)) } else { now };
                let mut o = obs(rand(7) == 0, 50 + rand(400_000));
                o.count = 1 + rand(3) as u32;
                o.grpc = (rand(5) == 0).then(|| rand(17) as u8);
                o.mtls = rand(2) == 0;
                r.record(sec, &o);
            }
            if rand(50) == 0 {
                r.record_retries(now - rand(30), 1 + rand(3) as u32, rand(2) as u32);
            }
            if rand(300) == 0 {
                let mut s = Slice { epoch: now / FINE_WIDTH - rand(50), requests: 3, ..Slice::default() };
                s.hist.record(777);
                r.fine.restore(s);
            }
            let read_at = if rand(30) == 0 { now as f64 - rand(3) as f64 } else { now as f64 + 0.5 };
            for (i, &w) in windows.iter().enumerate() {
                if (step + i) % 3 == 0 && rand(4) != 0 {
                    continue;
                }
                let spec = WindowSpec::new(read_at, w, 1_800_000_000.0);
                let before = r.kept.iter().find(|k| k.window_secs == w).map(|k| (k.kept.first, k.kept.end));
                // gRPC counts of all zeros read as none (reused slices keep a zeroed array).
                let norm = |mut w: EdgeWindow| {
                    w.counts.sums.grpc = w.counts.sums.grpc.filter(|g| g.iter().any(|&n| n > 0));
                    w
                };
                let got = norm(r.window(&spec, step % 2 == 0, &mut m, &mut scratch));
                let mut agg = Aggregate::new(spec, &mut m2);
                agg.add(&r, step % 2 == 0);
                assert_eq!(got, norm(agg.to_window()), "step {step}, window {w}s at {read_at}");
                reads += 1;
                if before.is_some_and(|(f, e)| (f, e) != (spec.first, spec.last) && f <= spec.first && e <= spec.last) {
                    kept_hits += 1;
                }
            }
        }
        // The kept sums were moved forward most of the time, not summed again.
        assert!(kept_hits * 2 > reads, "{kept_hits} of {reads}");
        assert!(r.kept.len() <= MAX_KEPT);
    }

    #[test]
    fn a_window_unread_for_two_minutes_is_dropped() {
        let mut r = Rings::default();
        let (mut m, mut scratch) = (Merger::default(), Vec::new());
        r.record(1000, &obs(false, 5));
        r.window(&WindowSpec::new(1000.5, 60, 0.0), false, &mut m, &mut scratch);
        r.window(&WindowSpec::new(1000.5, 30, 0.0), false, &mut m, &mut scratch);
        assert_eq!(r.kept.len(), 2);
        r.window(&WindowSpec::new(1200.5, 30, 0.0), false, &mut m, &mut scratch);
        assert_eq!(r.kept.iter().map(|k| k.window_secs).collect::<Vec<_>>(), [30]);
        r.forget(30);
        assert!(r.kept.is_empty());
        // More window lengths than are kept: the least recently read gives its place.
        for (i, w) in (10..10 + MAX_KEPT as u64 + 3).enumerate() {
            r.window(&WindowSpec::new(1300.5 + i as f64, w, 0.0), false, &mut m, &mut scratch);
        }
        assert_eq!(r.kept.len(), MAX_KEPT);
        assert!(r.kept.iter().any(|k| k.window_secs == 10 + MAX_KEPT as u64 + 2));
        assert!(!r.kept.iter().any(|k| k.window_secs == 10));
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
