//! A mergeable log-linear latency histogram, in microseconds.
//!
//! Values below 64 µs are exact; above, each power of two is split into 64 buckets, so a bucket is at
//! most 1/64 of its value wide and a reported percentile (the bucket's midpoint) is within ±0.8% of the
//! true value. The layout is the one HdrHistogram uses with two significant digits, but it is stored
//! sparsely ([`SparseHist`]: only occupied buckets), because the collector keeps hundreds of
//! per-second slices per edge. Merging is exact: adding the buckets of two histograms gives the
//! histogram of the union, so any aggregate has exact merged percentiles.

use serde::{Deserialize, Serialize};

use crate::stats::LatencyMs;

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Number of bucket indexes: enough for any `u64` value.
pub const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// The bucket index of a value.
#[inline]
pub fn index_of(value_us: u64) -> u16 {
    if value_us < SUB {
        return value_us as u16;
    }
    let exp = 63 - value_us.leading_zeros();
    let shift = exp - SUB_BITS;
    let mantissa = value_us >> shift;
    ((u64::from(shift) + 1) * SUB + (mantissa - SUB)) as u16
}

/// The lowest and highest value a bucket holds.
#[inline]
pub fn bounds_of(index: u16) -> (u64, u64) {
    let index = u64::from(index);
    if index < SUB {
        return (index, index);
    }
    let shift = index / SUB - 1;
    let mantissa = index % SUB + SUB;
    let low = mantissa << shift;
    let high = low.saturating_add((1u64 << shift) - 1);
    (low, high)
}

/// The value reported for a bucket: its midpoint.
#[inline]
pub fn value_of(index: u16) -> u64 {
    let (low, high) = bounds_of(index);
    low + (high - low) / 2
}

/// A sparse histogram: occupied buckets in index order, with the exact maximum.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SparseHist {
    /// `(bucket index, count)`, sorted by index, no zero counts.
    pub buckets: Vec<(u16, u32)>,
    /// The largest value recorded, exact.
    pub max_us: u64,
}

impl SparseHist {
    /// Records `count` values of `value_us`.
    #[inline]
    pub fn record_n(&mut self, value_us: u64, count: u32) {
        if count == 0 {
            return;
        }
        let idx = index_of(value_us);
        match self.buckets.binary_search_by_key(&idx, |&(i, _)| i) {
            Ok(pos) => self.buckets[pos].1 = self.buckets[pos].1.saturating_add(count),
            Err(pos) => self.buckets.insert(pos, (idx, count)),
        }
        self.max_us = self.max_us.max(value_us);
    }

    /// Records one value.
    #[inline]
    pub fn record(&mut self, value_us: u64) {
        self.record_n(value_us, 1);
    }

    /// Total count.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|&(_, c)| u64::from(c)).sum()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Empties the histogram, keeping its allocation.
    pub fn clear(&mut self) {
        self.buckets.clear();
        self.max_us = 0;
    }

    /// Bytes of heap this histogram holds.
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<(u16, u32)>()
    }

    /// Adds `other`'s buckets to these (`max_us` is left as it is: a maximum cannot be taken back, so
    /// a sum kept by adding and [subtracting](Self::sub_buckets) tracks its maximum apart).
    /// `scratch` is reused between calls.
    pub fn add_buckets(&mut self, other: &SparseHist, scratch: &mut Vec<(u16, u32)>) {
        self.merge_buckets(other, scratch, |a, b| a.saturating_add(b));
    }

    /// Takes away buckets [added](Self::add_buckets) before; a bucket that reaches zero goes.
    pub fn sub_buckets(&mut self, other: &SparseHist, scratch: &mut Vec<(u16, u32)>) {
        self.merge_buckets(other, scratch, |a, b| a.saturating_sub(b));
    }

    fn merge_buckets(&mut self, other: &SparseHist, scratch: &mut Vec<(u16, u32)>, op: impl Fn(u32, u32) -> u32) {
        match other.buckets.as_slice() {
            [] => {}
            // One bucket (the common slice at low rates): in place.
            &[(idx, n)] => match self.buckets.binary_search_by_key(&idx, |&(i, _)| i) {
                Ok(pos) => {
                    let v = op(self.buckets[pos].1, n);
                    if v == 0 {
                        self.buckets.remove(pos);
                    } else {
                        self.buckets[pos].1 = v;
                    }
                }
                Err(pos) => {
                    let v = op(0, n);
                    if v > 0 {
                        self.buckets.insert(pos, (idx, v));
                    }
                }
            },
            theirs => {
                scratch.clear();
                let (mut a, mut b) = (self.buckets.iter().peekable(), theirs.iter().peekable());
                loop {
                    let (idx, v) = match (a.peek(), b.peek()) {
                        (Some(&&(i, x)), Some(&&(j, y))) if i == j => {
                            a.next();
                            b.next();
                            (i, op(x, y))
                        }
                        (Some(&&(i, x)), Some(&&(j, _))) if i < j => {
                            a.next();
                            (i, x)
                        }
                        (Some(&&(i, x)), None) => {
                            a.next();
                            (i, x)
                        }
                        (_, Some(&&(j, y))) => {
                            b.next();
                            (j, op(0, y))
                        }
                        (None, None) => break,
                    };
                    if v > 0 {
                        scratch.push((idx, v));
                    }
                }
                std::mem::swap(&mut self.buckets, scratch);
            }
        }
    }
}

/// A dense accumulator for merging many sparse histograms, reused across merges.
#[derive(Clone, Debug)]
pub struct Merger {
    counts: Vec<u64>,
    lo: usize,
    hi: usize,
    total: u64,
    max_us: u64,
}

impl Default for Merger {
    fn default() -> Self {
        Self { counts: vec![0; BUCKETS], lo: BUCKETS, hi: 0, total: 0, max_us: 0 }
    }
}

impl Merger {
    /// Adds a sparse histogram.
    pub fn add(&mut self, hist: &SparseHist) {
        for &(idx, count) in &hist.buckets {
            let i = usize::from(idx);
            self.counts[i] += u64::from(count);
            self.lo = self.lo.min(i);
            self.hi = self.hi.max(i);
            self.total += u64::from(count);
        }
        self.max_us = self.max_us.max(hist.max_us);
    }

    /// Total count merged so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1), in microseconds; `None` when empty.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for i in self.lo..=self.hi {
            seen += self.counts[i];
            if seen >= rank {
                return Some(value_of(i as u16).min(self.max_us));
            }
        }
        Some(self.max_us)
    }

    /// p50, p95, p99 and max in milliseconds; `None` when empty. One pass over the occupied range.
    pub fn latency_ms(&self) -> Option<LatencyMs> {
        if self.total == 0 {
            return None;
        }
        let rank = |q: f64| ((q * self.total as f64).ceil() as u64).max(1);
        let ranks = [rank(0.50), rank(0.95), rank(0.99)];
        let mut found = [self.max_us; 3];
        let mut next = 0usize;
        let mut seen = 0u64;
        for i in self.lo..=self.hi {
            seen += self.counts[i];
            while next < 3 && seen >= ranks[next] {
                found[next] = value_of(i as u16).min(self.max_us);
                next += 1;
            }
            if next == 3 {
                break;
            }
        }
        let ms = |us: u64| (us as f64).round() / 1000.0;
        Some(LatencyMs { p50: ms(found[0]), p95: ms(found[1]), p99: ms(found[2]), max: ms(self.max_us) })
    }

    /// The merged histogram as a sparse one.
    pub fn to_sparse(&self) -> SparseHist {
        let mut out = SparseHist { buckets: Vec::new(), max_us: self.max_us };
        if self.total > 0 {
            for i in self.lo..=self.hi {
                if self.counts[i] > 0 {
                    out.buckets.push((i as u16, u32::try_from(self.counts[i]).unwrap_or(u32::MAX)));
                }
            }
        }
        out
    }

    /// Empties the merger for reuse; costs only the touched range.
    pub fn reset(&mut self) {
        if self.total > 0 {
            self.counts[self.lo..=self.hi].fill(0);
        }
        self.lo = BUCKETS;
        self.hi = 0;
        self.total = 0;
        self.max_us = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_added_then_taken_away_leave_what_was_there() {
        let mut sum = SparseHist::default();
        let mut scratch = Vec::new();
        let parts: Vec<SparseHist> = (0..6u64)
            .map(|k| {
                let mut h = SparseHist::default();
                for v in 0..(k * 3) {
                    h.record(100 + v * v * 37 * (k + 1));
                }
                h
            })
            .collect();
        for p in &parts {
            sum.add_buckets(p, &mut scratch);
        }
        let mut expected = SparseHist::default();
        for p in &parts[2..] {
            for &(i, n) in &p.buckets {
                expected.record_n(value_of(i), n);
            }
        }
        for p in &parts[..2] {
            sum.sub_buckets(p, &mut scratch);
        }
        assert_eq!(sum.buckets, expected.buckets);
        for p in &parts[2..] {
            sum.sub_buckets(p, &mut scratch);
        }
        assert!(sum.is_empty());
    }

    #[test]
    fn index_and_bounds_agree() {
        let mut prev_high = None;
        for idx in 0..(40 * SUB as u16) {
            let (low, high) = bounds_of(idx);
            assert!(low <= high);
            if let Some(p) = prev_high {
                assert_eq!(low, p + 1, "buckets are contiguous at {idx}");
            }
            prev_high = Some(high);
            assert_eq!(index_of(low), idx);
            assert_eq!(index_of(high), idx);
        }
        assert!(usize::from(index_of(u64::MAX)) < BUCKETS);
    }

    #[test]
    fn relative_error_is_bounded() {
        for v in [1u64, 63, 64, 65, 1000, 12_345, 999_999, 60_000_000] {
            let reported = value_of(index_of(v));
            let err = (reported as f64 - v as f64).abs() / v as f64;
            assert!(err <= 0.008, "{v} -> {reported}");
        }
    }

    #[test]
    fn merged_percentiles_equal_the_union() {
        let mut a = SparseHist::default();
        let mut b = SparseHist::default();
        for v in 1..=500u64 {
            a.record(v * 100);
        }
        for v in 501..=1000u64 {
            b.record(v * 100);
        }
        let mut m = Merger::default();
        m.add(&a);
        m.add(&b);
        assert_eq!(m.total(), 1000);
        let p50 = m.quantile_us(0.5).unwrap() as f64;
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.01, "{p50}");
        let p99 = m.quantile_us(0.99).unwrap() as f64;
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.01, "{p99}");
        let l = m.latency_ms().unwrap();
        assert_eq!(l.max, 100.0);
        assert_eq!(l.p50, m.quantile_us(0.5).unwrap() as f64 / 1000.0);
        assert_eq!(l.p95, m.quantile_us(0.95).unwrap() as f64 / 1000.0);
        assert_eq!(l.p99, m.quantile_us(0.99).unwrap() as f64 / 1000.0);
        let sparse = m.to_sparse();
        assert_eq!(sparse.count(), 1000);
        m.reset();
        assert_eq!(m.total(), 0);
        assert!(m.quantile_us(0.5).is_none());
    }
}
