//! The shared state behind the API, and the publisher: on each tick it expires span halves, computes
//! the five views, publishes a revision when the graph changed, writes the tick to the store and
//! announces the revision to SSE subscribers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use meshlens_model::graph::{GraphSnapshot, TopologyChanges, View};
use meshlens_model::hist::Merger;
use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;

use crate::counters::Counters;
use crate::engine::{Engine, unix_now};
use crate::graph::EdgeState;
use crate::live::{LiveAnswer, LiveCache, LiveKey};
use crate::store::{EdgeMeta, EdgeRecord, Store, StoreError, StoredRevision};
use crate::views::{Collapse, Frozen, freeze};
use crate::wal::Checkpoint;
use crate::window::{COARSE_WIDTH, FINE_SLOTS, FINE_WIDTH, Slice};

/// Everything the API and the publisher share.
pub struct Hub {
    /// The graph state.
    pub engine: Mutex<Engine>,
    /// The store.
    pub store: Store,
    /// The newest revision.
    latest: RwLock<Option<Arc<StoredRevision>>>,
    /// `(revision, generated_at_ms)` of stored revisions, for `at=<time>`.
    index: RwLock<Vec<(u64, i64)>>,
    last_key: Mutex<String>,
    /// New revisions, for SSE.
    pub events: broadcast::Sender<Arc<StoredRevision>>,
    /// Shared counters.
    pub counters: Arc<Counters>,
    /// Open taps and the agents subscribed to them.
    pub taps: Arc<crate::tap::TapHub>,
    /// The window revisions are published with.
    pub window_secs: u64,
    /// Ready once the store is loaded and the listeners are bound.
    pub ready: AtomicBool,
    retain_revisions: u64,
    /// The write-ahead log checkpoint in the store.
    checkpoint: Mutex<Checkpoint>,
    /// Where the log's writer reads the checkpoint, to delete what is no longer needed.
    wal_checkpoint: OnceLock<Arc<Mutex<Checkpoint>>>,
    /// Edge evictions done in memory and not yet in the store (a failed write keeps them for the
    /// next; see [`crate::graph::Evicted`]).
    pending_moves: Mutex<Vec<(u32, Option<u32>)>>,
    /// Live graph answers kept ready for their readers.
    live: LiveCache,
    /// The publisher's tick, ms (how old a kept live answer may be).
    tick_ms: AtomicU64,
}

fn graph_key(g: &GraphSnapshot) -> String {
    serde_json::to_string(&(&g.nodes, &g.edges)).unwrap_or_default()
}

impl Hub {
    /// Builds the hub and restores what the store holds.
    pub fn new(mut engine: Engine, store: Store, window_secs: u64, retain_revisions: u64) -> Result<Self, StoreError> {
        let loaded = store.load()?;
        if let Some(since) = loaded.data_since {
            engine.data_since = engine.data_since.min(since as f64);
        }
        for (_, meta, slices) in loaded.edges {
            let mut edge = EdgeState {
                source: 0,
                target: 0,
                protocol: meta.protocol,
                rings: Default::default(),
                totals: meta.totals,
                metrics_seen: meta.metrics_seen,
                server_metrics_seen: meta.server_metrics_seen,
                last_sec: meta.last_sec,
                dirty_from: None,
                exemplars: None,
            };
            for (ring, slice) in slices {
                if ring == 0 { edge.rings.fine.restore(slice) } else { edge.rings.coarse.restore(slice) }
            }
            if engine.restore_edge(&meta.source, &meta.target, edge).is_err() {
                tracing::warn!("edge limit reached while restoring the store; some edges were not restored");
                break;
            }
        }
        let last_key = loaded
            .latest
            .as_ref()
            .and_then(|r| r.views.first())
            .map(graph_key)
            .unwrap_or_else(|| graph_key(&GraphSnapshot::default()));
        let (events, _) = broadcast::channel(64);
        let counters = engine.counters.clone();
        Ok(Self {
            engine: Mutex::new(engine),
            store,
            latest: RwLock::new(loaded.latest.map(Arc::new)),
            index: RwLock::new(loaded.index),
            last_key: Mutex::new(last_key),
            events,
            taps: crate::tap::TapHub::new(counters.clone()),
            counters,
            window_secs,
            ready: AtomicBool::new(false),
            retain_revisions,
            checkpoint: Mutex::new(loaded.checkpoint),
            wal_checkpoint: OnceLock::new(),
            pending_moves: Mutex::new(Vec::new()),
            live: LiveCache::default(),
            tick_ms: AtomicU64::new(1000),
        })
    }

    /// The write-ahead log checkpoint the store holds.
    pub fn stored_checkpoint(&self) -> Checkpoint {
        *self.checkpoint.lock()
    }

    /// Connects the log's writer: each stored tick moves its checkpoint.
    pub fn attach_wal(&self, checkpoint: Arc<Mutex<Checkpoint>>) {
        *checkpoint.lock() = self.stored_checkpoint();
        let _ = self.wal_checkpoint.set(checkpoint);
    }

    /// The newest revision.
    pub fn latest(&self) -> Option<Arc<StoredRevision>> {
        self.latest.read().clone()
    }

    /// The revision in force at Unix ms `t`: the newest published at or before it.
    pub fn revision_at_time(&self, t_ms: i64) -> Option<u64> {
        let idx = self.index.read();
        let pos = idx.partition_point(|&(_, at)| at <= t_ms);
        (pos > 0).then(|| idx[pos - 1].0)
    }

    /// The oldest revision kept.
    pub fn oldest(&self) -> u64 {
        self.index.read().first().map(|&(r, _)| r).unwrap_or(0)
    }

    /// Whether the API may answer.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// One tick at `now`: returns the new revision if one was published.
    pub fn tick(&self, now: f64, merger: &mut Merger) -> Result<Option<Arc<StoredRevision>>, StoreError> {
        let watched = self.live.watched(now);
        let (frozen, others, records, data_since, applied, moves) = {
            let mut engine = self.engine.lock();
            engine.expire(now);
            let moves = {
                let mut pending = self.pending_moves.lock();
                pending.extend(engine.evict_idle(now));
                pending.clone()
            };
            let frozen = freeze(&mut engine, self.window_secs, now, merger);
            // The other windows someone is reading: summed now, so their readers need no lock.
            let mut windows: Vec<u64> =
                watched.iter().map(|k| k.window_secs).filter(|&w| w != self.window_secs).collect();
            windows.sort_unstable();
            windows.dedup();
            let others: Vec<(u64, Frozen)> =
                windows.into_iter().map(|w| (w, freeze(&mut engine, w, now, merger))).collect();
            let records = dirty_records(&mut engine, now as u64);
            (frozen, others, records, engine.data_since, engine.applied.seq, moves)
        };
        // Built after the lock is released: the pipeline ingests meanwhile.
        let views = frozen.views(&View::ALL, merger);
        let key = graph_key(&views[0]);
        let mut published = None;
        {
            let last_key = self.last_key.lock();
            if *last_key != key {
                let prev = self.latest();
                let revision = prev.as_ref().map(|r| r.revision).unwrap_or(0) + 1;
                let changes = match prev.as_ref().and_then(|p| p.views.first()) {
                    Some(before) => TopologyChanges::between(before, &views[0]),
                    None => TopologyChanges::between(&GraphSnapshot::default(), &views[0]),
                };
                let mut views = views;
                for v in &mut views {
                    v.revision = revision;
                }
                let rec = StoredRevision {
                    revision,
                    generated_at_ms: (now * 1000.0) as i64,
                    window_seconds: self.window_secs,
                    changes,
                    views,
                };
                published = Some(Arc::new(rec));
            }
        }
        // An idle tick writes nothing (no transaction, no fsync).
        let checkpoint = Checkpoint { seq: applied, at: now };
        if published.is_some() || !records.is_empty() || !moves.is_empty() || applied != self.stored_checkpoint().seq {
            let (rev, since) = (published.as_deref(), data_since as u64);
            if let Err(e) = self.store.write_tick(rev, &records, now as u64, since, checkpoint, &moves) {
                self.counters.store_errors.add(1);
                // What was not written is written by the next tick that works.
                let mut engine = self.engine.lock();
                for r in &records {
                    engine.edges_mut()[r.index as usize].dirty_from = Some(0);
                }
                return Err(e);
            }
            // Written: the store's edge indices match memory again.
            self.pending_moves.lock().drain(..moves.len());
            if applied > 0 {
                *self.checkpoint.lock() = checkpoint;
                if let Some(wal) = self.wal_checkpoint.get() {
                    *wal.lock() = checkpoint;
                }
            }
        }
        if let Some(rec) = &published {
            // Only a stored revision counts as published: after a failed write the next tick tries again.
            *self.last_key.lock() = key;
            *self.latest.write() = Some(rec.clone());
            let mut idx = self.index.write();
            idx.push((rec.revision, rec.generated_at_ms));
            let excess = idx.len().saturating_sub(self.retain_revisions as usize);
            idx.drain(..excess);
            drop(idx);
            self.counters.revisions_published.add(1);
            let _ = self.events.send(rec.clone());
        }
        self.refresh_live(&watched, now, published.as_deref(), &frozen, &others, merger);
        Ok(published)
    }

    /// Recomputes the live answers being read, after the tick's freeze (no lock held).
    fn refresh_live(
        &self,
        watched: &[LiveKey],
        now: f64,
        published: Option<&StoredRevision>,
        frozen: &Frozen,
        others: &[(u64, Frozen)],
        merger: &mut Merger,
    ) {
        let revision = self.latest().map(|r| r.revision).unwrap_or(0);
        for key in watched {
            let snapshot = if self.is_published(key) {
                // An unchanged graph keeps its kept answer: it is of the latest revision still.
                match published.and_then(|r| r.view(key.view)) {
                    Some(g) => g.clone(),
                    None => continue,
                }
            } else {
                let from = if key.window_secs == self.window_secs {
                    Some(frozen)
                } else {
                    others.iter().find(|(w, _)| *w == key.window_secs).map(|(_, f)| f)
                };
                let Some(from) = from else { continue };
                let mut g = from.view(key.view, &Collapse::new(&key.collapse), merger);
                g.revision = revision;
                g
            };
            match LiveAnswer::new(now, snapshot) {
                Ok(a) => self.live.refresh(key, Arc::new(a)),
                Err(error) => tracing::warn!(%error, "serialising a live graph answer failed"),
            }
        }
    }

    /// Whether `key` is what the revisions hold (the publisher's window, nothing collapsed).
    fn is_published(&self, key: &LiveKey) -> bool {
        key.window_secs == self.window_secs && key.collapse.is_empty()
    }

    /// The live answer for `key` at `now`: as a tick kept it when fresh (the latest revision's for the
    /// publisher's window; else computed within the last two ticks), otherwise computed here — for
    /// another window, each edge's window summed under the engine lock — and kept for the ticks to
    /// come.
    pub fn live_graph(&self, key: LiveKey, now: f64) -> Result<Arc<LiveAnswer>, serde_json::Error> {
        let latest = self.latest();
        let revision = latest.as_ref().map(|r| r.revision).unwrap_or(0);
        let fresh_since = now - 2.0 * self.tick_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        if let Some(a) = self.live.get(&key, now, f64::NEG_INFINITY) {
            let fresh =
                if self.is_published(&key) { a.snapshot.revision == revision } else { a.computed_at >= fresh_since };
            if fresh {
                self.counters.live_served.add(1);
                return Ok(a);
            }
        }
        self.counters.live_computed.add(1);
        let kept = latest.as_ref().filter(|_| self.is_published(&key)).and_then(|r| r.view(key.view));
        let snapshot = match kept {
            Some(g) => g.clone(),
            None => {
                let mut merger = Merger::default();
                // Only the windows' sums are taken under the lock; the view is built after it.
                let frozen = freeze(&mut self.engine.lock(), key.window_secs, now, &mut merger);
                let mut g = frozen.view(key.view, &Collapse::new(&key.collapse), &mut merger);
                g.revision = revision;
                g
            }
        };
        let answer = Arc::new(LiveAnswer::new(now, snapshot)?);
        if self.live.put(key, answer.clone(), now) {
            self.counters.live_evicted.add(1);
        }
        Ok(answer)
    }

    /// Runs ticks every `every` until `stop` is set (on a thread of its own: store writes block).
    pub fn run_publisher(self: Arc<Self>, every: std::time::Duration, stop: Arc<AtomicBool>) {
        self.tick_ms.store(every.as_millis().max(1) as u64, Ordering::Relaxed);
        let mut merger = Merger::default();
        while !stop.load(Ordering::Acquire) {
            std::thread::park_timeout(every);
            if stop.load(Ordering::Acquire) {
                break;
            }
            if let Err(error) = self.tick(unix_now(), &mut merger) {
                tracing::error!(%error, "publishing a revision failed");
            }
        }
    }
}

/// Takes the dirty marks of every edge and copies the slices that changed.
fn dirty_records(engine: &mut Engine, now_sec: u64) -> Vec<EdgeRecord> {
    let mut out = Vec::new();
    let edges = engine.edges().len();
    for i in 0..edges {
        let (from, meta) = {
            let e = &engine.edges()[i];
            let Some(from) = e.dirty_from else { continue };
            (
                from,
                EdgeMeta {
                    source: engine.peer_at(e.source).clone(),
                    target: engine.peer_at(e.target).clone(),
                    protocol: e.protocol,
                    totals: e.totals.clone(),
                    metrics_seen: e.metrics_seen,
                    server_metrics_seen: e.server_metrics_seen,
                    last_sec: e.last_sec,
                },
            )
        };
        let e = &mut engine.edges_mut()[i];
        e.dirty_from = None;
        let from = from.max(now_sec.saturating_sub(FINE_SLOTS as u64 - 1));
        let mut slices: Vec<(u8, Slice)> = Vec::new();
        for epoch in (from / FINE_WIDTH)..=(now_sec / FINE_WIDTH) {
            if let Some(s) = e.rings.fine.get(epoch) {
                slices.push((0, s.clone()));
            }
        }
        for epoch in (from / COARSE_WIDTH)..=(now_sec / COARSE_WIDTH) {
            if let Some(s) = e.rings.coarse.get(epoch) {
                slices.push((1, s.clone()));
            }
        }
        out.push(EdgeRecord { index: i as u32, meta, slices });
    }
    out
}
