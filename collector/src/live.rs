//! Answers of `GET /api/v1/graph` for the live graph, kept ready while someone reads them.
//!
//! The publisher's own window (its five views) is computed every tick anyway; any other window, and
//! any collapse, was computed on each request: every edge's slices summed under the engine lock
//! (the pipeline waits meanwhile), then the view built and serialised — ~40 ms at 5,000 edges. A
//! console or browser watching `window=15m` asks for it again after every revision.
//!
//! So each answer is kept here under its [`LiveKey`] with its serialised body, and every tick
//! recomputes the keys read in the last [`WATCH_SECS`] — one freeze per window under the lock, the
//! views and their JSON after it. A read of a watched key is a lookup and takes no engine lock; the
//! first read of a key (or one after it went unwatched) computes it as before. At most
//! [`MAX_KEYS`] keys are kept (the least recently read goes first), so what a tick spends on them
//! is bounded. See docs/PERFORMANCE.md, "Live windows".

use std::sync::Arc;

use bytes::Bytes;
use hashbrown::HashMap;
use meshlens_model::graph::{GraphSnapshot, View};
use parking_lot::Mutex;

/// A key unread for this long is no longer recomputed by the tick, and is dropped.
pub(crate) const WATCH_SECS: f64 = 60.0;
/// Most keys kept (and so recomputed per tick).
pub(crate) const MAX_KEYS: usize = 16;

/// What one live answer is of: a window, a view and what it collapses.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LiveKey {
    /// Window, seconds.
    pub window_secs: u64,
    pub view: View,
    /// Collapsed namespaces and apps, sorted, without repeats.
    pub collapse: Vec<String>,
}

impl LiveKey {
    /// The key of a read (the collapse list in any order, with repeats).
    pub fn new(window_secs: u64, view: View, collapse: &[String]) -> Self {
        let mut collapse = collapse.to_vec();
        collapse.sort();
        collapse.dedup();
        Self { window_secs, view, collapse }
    }
}

/// One computed answer.
#[derive(Debug)]
pub struct LiveAnswer {
    /// When it was computed (Unix seconds).
    pub computed_at: f64,
    /// The snapshot (a namespace filter is applied to a copy).
    pub snapshot: Arc<GraphSnapshot>,
    /// The snapshot as JSON.
    pub body: Bytes,
}

impl LiveAnswer {
    /// Serialises `snapshot`.
    pub fn new(computed_at: f64, snapshot: GraphSnapshot) -> Result<Self, serde_json::Error> {
        let body = Bytes::from(serde_json::to_vec(&snapshot)?);
        Ok(Self { computed_at, snapshot: Arc::new(snapshot), body })
    }
}

struct Slot {
    answer: Option<Arc<LiveAnswer>>,
    last_read: f64,
}

/// The kept answers, and which keys are being read.
#[derive(Default)]
pub(crate) struct LiveCache {
    slots: Mutex<HashMap<LiveKey, Slot>>,
}

impl LiveCache {
    /// The answer for `key` if one computed at or after `fresh_since` is kept; either way the key
    /// counts as read at `now` (a miss is computed by the caller and [`put`](Self::put) here).
    pub(crate) fn get(&self, key: &LiveKey, now: f64, fresh_since: f64) -> Option<Arc<LiveAnswer>> {
        let mut slots = self.slots.lock();
        let slot = slots.get_mut(key)?;
        slot.last_read = now;
        slot.answer.clone().filter(|a| a.computed_at >= fresh_since)
    }

    /// Keeps `answer` for `key`, read at `now`; returns whether another key had to go to make room.
    pub(crate) fn put(&self, key: LiveKey, answer: Arc<LiveAnswer>, now: f64) -> bool {
        let mut slots = self.slots.lock();
        let mut evicted = false;
        if !slots.contains_key(&key)
            && slots.len() >= MAX_KEYS
            && let Some(oldest) =
                slots.iter().min_by(|a, b| a.1.last_read.total_cmp(&b.1.last_read)).map(|(k, _)| k.clone())
        {
            slots.remove(&oldest);
            evicted = true;
        }
        let slot = slots.entry(key).or_insert(Slot { answer: None, last_read: now });
        slot.last_read = slot.last_read.max(now);
        slot.answer = Some(answer);
        evicted
    }

    /// Stores a tick's recomputed answer, unless its key went unwatched meanwhile.
    pub(crate) fn refresh(&self, key: &LiveKey, answer: Arc<LiveAnswer>) {
        if let Some(slot) = self.slots.lock().get_mut(key) {
            slot.answer = Some(answer);
        }
    }

    /// Drops keys unread since `now - WATCH_SECS` and returns the others: what a tick recomputes.
    pub(crate) fn watched(&self, now: f64) -> Vec<LiveKey> {
        let mut slots = self.slots.lock();
        slots.retain(|_, s| now - s.last_read <= WATCH_SECS);
        slots.keys().cloned().collect()
    }

    /// Number of keys kept (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().len()
    }

    /// Whether no key is kept (tests).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(at: f64) -> Arc<LiveAnswer> {
        Arc::new(LiveAnswer::new(at, GraphSnapshot::default()).unwrap())
    }

    #[test]
    fn a_key_is_kept_while_read_and_dropped_after() {
        let c = LiveCache::default();
        let k = LiveKey::new(900, View::App, &["b".into(), "a".into(), "a".into()]);
        assert_eq!(k.collapse, ["a", "b"]);
        assert!(c.get(&k, 100.0, 0.0).is_none());
        c.put(k.clone(), answer(100.0), 100.0);
        assert!(c.get(&k, 101.0, 100.0).is_some());
        // Too old for the reader: a miss, though the key stays watched.
        assert!(c.get(&k, 102.0, 101.5).is_none());
        assert_eq!(c.watched(102.0 + WATCH_SECS), vec![k.clone()]);
        c.refresh(&k, answer(160.0));
        assert!(c.get(&k, 161.0, 160.0).is_some());
        assert!(c.watched(161.1 + WATCH_SECS).is_empty());
        // An unwatched key is not brought back by a late refresh.
        c.refresh(&k, answer(230.0));
        assert!(c.is_empty());
    }

    #[test]
    fn the_least_recently_read_key_makes_room() {
        let c = LiveCache::default();
        for w in 0..MAX_KEYS as u64 {
            assert!(!c.put(LiveKey::new(10 + w, View::App, &[]), answer(1.0), w as f64));
        }
        c.get(&LiveKey::new(10, View::App, &[]), 50.0, 0.0);
        assert!(c.put(LiveKey::new(999, View::App, &[]), answer(1.0), 51.0));
        assert_eq!(c.len(), MAX_KEYS);
        assert!(c.get(&LiveKey::new(10, View::App, &[]), 52.0, 0.0).is_some(), "read recently: kept");
        assert!(c.get(&LiveKey::new(11, View::App, &[]), 52.0, 0.0).is_none(), "least recently read: gone");
    }
}
