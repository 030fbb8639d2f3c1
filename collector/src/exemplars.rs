//! Exemplars: per edge, the trace ids of its newest failed requests and of its slowest recent ones,
//! so a panel that shows an edge at 3% errors or a p99 of 800 ms can name the requests behind it
//! (`/api/v1/exemplars`). A node's are its edges', in and out, merged on read.
//!
//! Kept apart from the trace store ([`crate::traces`]): an exemplar outlives its trace there (the
//! store is bounded by spans and drops the oldest traces whole) and then still names the trace for
//! the user's Jaeger or Tempo (`--trace-link`). Each edge keeps at most [`KEEP`] of each kind, boxed
//! so an edge that never carried a trace id pays one pointer. Fed by every paired span with a trace
//! id, including the spans of edges whose counts come from agent metrics. Not stored: a restart
//! starts without (as the OpenMetrics exemplars on `/metrics`).

use hashbrown::HashMap;
use meshlens_model::Peer;

use crate::graph::Graph;

/// Failed and slow requests kept per edge, of each kind.
pub(crate) const KEEP: usize = 5;

/// The slowest requests are those of the last this many seconds: an old outlier gives way to a
/// recent one even when it was slower.
pub(crate) const SLOW_HORIZON_SECS: u64 = 300;

/// One request behind an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Its trace.
    pub trace_id: [u8; 16],
    /// Its latency, microseconds (the server's, or the client's when no server span paired).
    pub latency_us: u64,
    /// When it arrived, Unix seconds.
    pub sec: u64,
    /// Whether it failed by the graph's rule.
    pub failed: bool,
}

/// The exemplars of one edge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exemplars {
    /// The newest failed requests, a ring (`next` is the slot written next).
    failed: [Option<Sample>; KEEP],
    next: usize,
    /// The slowest requests within [`SLOW_HORIZON_SECS`] of the newest offered.
    slow: [Option<Sample>; KEEP],
}

impl Exemplars {
    /// Offers one request: kept if it failed (the newest [`KEEP`] failed ones are) or if it is among
    /// the slowest recent ones. A trace already kept is not kept twice (a retried call pairs once
    /// per attempt with the same trace id).
    pub fn offer(&mut self, s: Sample) {
        if s.failed && !self.failed.iter().flatten().any(|x| x.trace_id == s.trace_id) {
            self.failed[self.next] = Some(s);
            self.next = (self.next + 1) % KEEP;
        }
        let horizon = s.sec.saturating_sub(SLOW_HORIZON_SECS);
        for x in &mut self.slow {
            match x {
                Some(k) if k.trace_id == s.trace_id => {
                    k.latency_us = k.latency_us.max(s.latency_us);
                    k.sec = k.sec.max(s.sec);
                    return;
                }
                Some(k) if k.sec < horizon => *x = None,
                _ => {}
            }
        }
        if let Some(free) = self.slow.iter_mut().find(|x| x.is_none()) {
            *free = Some(s);
        } else if let Some(fastest) = self.slow.iter_mut().flatten().min_by_key(|k| k.latency_us)
            && fastest.latency_us < s.latency_us
        {
            *fastest = s;
        }
    }

    /// The failed ones, newest first.
    pub fn failed(&self) -> impl Iterator<Item = &Sample> {
        (0..KEEP).rev().map(move |k| (self.next + k) % KEEP).filter_map(|i| self.failed[i].as_ref())
    }

    /// The slowest ones of the last [`SLOW_HORIZON_SECS`] before `now_sec`, in no order.
    pub fn slowest(&self, now_sec: u64) -> impl Iterator<Item = &Sample> {
        let horizon = now_sec.saturating_sub(SLOW_HORIZON_SECS);
        self.slow.iter().flatten().filter(move |s| s.sec >= horizon)
    }
}

/// Whether `id`, a node id of some graph view, names `peer` or a group it is in: a workload's own
/// id, its app's (`ns/app`, the app and versioned views) or its namespace's (`ns:NAME`).
pub(crate) fn names(id: &str, peer: &Peer) -> bool {
    match peer {
        Peer::Workload(w) => {
            id.strip_prefix("ns:").is_some_and(|ns| ns == w.namespace) || w.id() == id || w.app_id() == id
        }
        other => other.id() == id,
    }
}

/// Which edges' exemplars are wanted.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Of<'a> {
    /// Every edge into or out of this node (the requests it served and the calls it made).
    Node(&'a str),
    /// The edges from one node to another (several, when either names a group).
    Edge(&'a str, &'a str),
}

/// An exemplar and its edge's ends (peer indexes).
pub(crate) type OnEdge = (u32, u32, Sample);

/// The exemplars of the edges `of` names: up to `limit` failed ones, newest first, and up to `limit`
/// slowest ones, slowest first, each with its edge's ends, a trace once.
pub(crate) fn collect(graph: &Graph, of: Of<'_>, now_sec: u64, limit: usize) -> (Vec<OnEdge>, Vec<OnEdge>) {
    let mut is: HashMap<u32, (bool, bool)> = HashMap::new();
    let mut role = |i: u32| -> (bool, bool) {
        *is.entry(i).or_insert_with(|| {
            let p = graph.peer_at(i);
            match of {
                Of::Node(n) => (names(n, p), names(n, p)),
                Of::Edge(from, to) => (names(from, p), names(to, p)),
            }
        })
    };
    let mut failed = Vec::new();
    let mut slow = Vec::new();
    for e in graph.edges() {
        let Some(ex) = e.exemplars.as_deref() else { continue };
        let wanted = match of {
            Of::Node(_) => role(e.target).1 || role(e.source).0,
            Of::Edge(..) => role(e.source).0 && role(e.target).1,
        };
        if wanted {
            failed.extend(ex.failed().map(|s| (e.source, e.target, *s)));
            slow.extend(ex.slowest(now_sec).map(|s| (e.source, e.target, *s)));
        }
    }
    failed.sort_by_key(|x| std::cmp::Reverse(x.2.sec));
    slow.sort_by_key(|x| std::cmp::Reverse(x.2.latency_us));
    for list in [&mut failed, &mut slow] {
        let mut seen = hashbrown::HashSet::new();
        list.retain(|x| seen.insert(x.2.trace_id));
        list.truncate(limit);
    }
    (failed, slow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u8, latency_us: u64, sec: u64, failed: bool) -> Sample {
        Sample { trace_id: [n; 16], latency_us, sec, failed }
    }

    #[test]
    fn keeps_the_newest_failed_newest_first() {
        let mut e = Exemplars::default();
        for n in 1..=8 {
            e.offer(s(n, 10, 100, n % 2 == 0));
        }
        let ids: Vec<u8> = e.failed().map(|x| x.trace_id[0]).collect();
        assert_eq!(ids, vec![8, 6, 4, 2]);
        for n in 9..=20 {
            e.offer(s(n, 10, 100, true));
        }
        let ids: Vec<u8> = e.failed().map(|x| x.trace_id[0]).collect();
        assert_eq!(ids, vec![20, 19, 18, 17, 16]);
        // The same trace again (a retry's second attempt) is not kept twice.
        e.offer(s(20, 10, 100, true));
        assert_eq!(e.failed().count(), KEEP);
        assert_eq!(e.failed().filter(|x| x.trace_id[0] == 20).count(), 1);
    }

    #[test]
    fn keeps_the_slowest_recent() {
        let mut e = Exemplars::default();
        for (n, us) in [(1, 50), (2, 900), (3, 10), (4, 300), (5, 70), (6, 20), (7, 800), (8, 5)] {
            e.offer(s(n, us, 1000, false));
        }
        let mut lat: Vec<u64> = e.slowest(1000).map(|x| x.latency_us).collect();
        lat.sort_unstable();
        assert_eq!(lat, vec![50, 70, 300, 800, 900]);
        // Past the horizon the old outliers give way to recent, faster requests.
        e.offer(s(9, 1, 1000 + SLOW_HORIZON_SECS + 1, false));
        let lat: Vec<u64> = e.slowest(1000 + SLOW_HORIZON_SECS + 1).map(|x| x.latency_us).collect();
        assert_eq!(lat, vec![1]);
        // A trace seen again keeps one entry, at its slowest.
        e.offer(s(9, 40, 1000 + SLOW_HORIZON_SECS + 2, false));
        let lat: Vec<u64> = e.slowest(1000 + SLOW_HORIZON_SECS + 2).map(|x| x.latency_us).collect();
        assert_eq!(lat, vec![40]);
    }
}
