//! Live taps: the collector's side of `meshlens tap`.
//!
//! Agents hold one long request open on the OTLP/gRPC listener ([`agent_router`]:
//! `POST /meshlens.tap.v1.Tap/Subscribe`, authenticated like OTLP), on which the collector writes,
//! one JSON line each time it changes, the [`TapInterest`] for that agent's workload: every open tap
//! that targets it. The agent sends what matched in batches (`POST /meshlens.tap.v1.Tap/Events`,
//! at most [`MAX_BATCH_BYTES`]); the collector hands each event to its taps' streams, bounded at
//! [`TAP_STREAM_QUEUE`] each, and counts what it drops. A user's tap is [`TapHub::open`]; it ends
//! when its [`OpenTap`] is dropped (the client went away), and the agents are told at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use meshlens_model::identity::Workload;
use meshlens_model::tap::{MAX_TAPS, TAP_STREAM_QUEUE, TapBatch, TapEvent, TapInterest, TapSpec, TapStatus, targets};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::counters::Counters;

/// The largest batch an agent may send.
pub(crate) const MAX_BATCH_BYTES: usize = 4 << 20;

/// Most agents subscribed at once (one per workload replica; the graph's node limit is 10,000).
/// Each holds one response stream open; past it a subscription is refused with 503 and counted
/// (`meshlens_collector_tap_agents_refused_total`), and the agent tries again later.
pub(crate) const MAX_TAP_AGENTS: usize = 10_000;
/// How often a subscribed agent is sent its interest even when nothing changed (a keep-alive that
/// also repairs a line lost to a bug).
const RESEND: Duration = Duration::from_secs(10);

/// Why a tap could not open.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// [`MAX_TAPS`] are open.
    #[error("{MAX_TAPS} taps are open, the limit; close one or try again later")]
    TooMany,
}

struct Tap {
    target: String,
    spec: TapSpec,
    tx: mpsc::Sender<TapEvent>,
    shared: Arc<TapShared>,
}

/// What a tap's stream and the hub both update.
#[derive(Default)]
struct TapShared {
    live: AtomicUsize,
    events: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Default)]
struct Inner {
    next_tap: u64,
    next_agent: u64,
    taps: HashMap<u64, Tap>,
    agents: HashMap<u64, Workload>,
}

/// The open taps and the subscribed agents.
pub struct TapHub {
    inner: Mutex<Inner>,
    /// Bumped whenever the set of taps changes; every agent's subscription wakes on it.
    changed: watch::Sender<u64>,
    counters: Arc<Counters>,
    closed: std::sync::atomic::AtomicBool,
}

/// A tap the caller holds open; dropping it closes the tap.
pub struct OpenTap {
    hub: Arc<TapHub>,
    id: u64,
    target: String,
    /// The tap's events.
    pub events: mpsc::Receiver<TapEvent>,
    shared: Arc<TapShared>,
}

impl OpenTap {
    /// The tap's status now.
    pub fn status(&self) -> TapStatus {
        let agents = self.hub.inner.lock().agents.values().filter(|w| targets(&self.target, w)).count();
        TapStatus {
            agents,
            live: self.shared.live.load(Ordering::Relaxed).min(agents),
            events: self.shared.events.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }

    /// Counts an event handed to the client.
    pub fn sent(&self) {
        self.shared.events.fetch_add(1, Ordering::Relaxed);
    }

    /// Its id.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for OpenTap {
    fn drop(&mut self) {
        self.hub.inner.lock().taps.remove(&self.id);
        self.hub.changed.send_modify(|g| *g += 1);
    }
}

impl TapHub {
    /// No taps, no agents.
    pub fn new(counters: Arc<Counters>) -> Arc<Self> {
        Arc::new(Self { inner: Mutex::default(), changed: watch::channel(0).0, counters, closed: Default::default() })
    }

    /// Opens a tap on `target` (an app, `ns/app` or a node id); `find` is already checked.
    pub fn open(self: &Arc<Self>, target: &str, find: Option<String>, max_rps: u32) -> Result<OpenTap, TapError> {
        let (tx, events) = mpsc::channel(TAP_STREAM_QUEUE);
        let shared = Arc::new(TapShared::default());
        let id = {
            let mut inner = self.inner.lock();
            if inner.taps.len() >= MAX_TAPS {
                self.counters.taps_refused.add(1);
                return Err(TapError::TooMany);
            }
            inner.next_tap += 1;
            let id = inner.next_tap;
            let spec = TapSpec { id, find, max_rps };
            inner.taps.insert(id, Tap { target: target.to_owned(), spec, tx, shared: shared.clone() });
            id
        };
        self.changed.send_modify(|g| *g += 1);
        Ok(OpenTap { hub: self.clone(), id, target: target.to_owned(), events, shared })
    }

    /// Ends every agent's subscription (the collector is shutting down).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.changed.send_modify(|g| *g += 1);
    }

    /// The taps that target `w`, by id.
    fn interest(&self, w: &Workload) -> TapInterest {
        let inner = self.inner.lock();
        let mut taps: Vec<TapSpec> =
            inner.taps.values().filter(|t| targets(&t.target, w)).map(|t| t.spec.clone()).collect();
        taps.sort_by_key(|t| t.id);
        TapInterest { taps }
    }

    /// Hands an agent's batch to the taps it names.
    fn deliver(&self, batch: TapBatch) {
        let inner = self.inner.lock();
        for id in &batch.acked {
            if let Some(t) = inner.taps.get(id) {
                t.shared.live.fetch_add(1, Ordering::Relaxed);
            }
        }
        if batch.dropped > 0 {
            self.counters.tap_dropped_agent.add(batch.dropped);
            for t in inner.taps.values().filter(|t| targets(&t.target, &batch.workload)) {
                t.shared.dropped.fetch_add(batch.dropped, Ordering::Relaxed);
            }
        }
        for tapped in batch.events {
            self.counters.tap_events.add(1);
            for id in &tapped.taps {
                let Some(t) = inner.taps.get(id) else { continue };
                if t.tx.try_send(tapped.event.clone()).is_err() {
                    self.counters.tap_dropped_stream.add(1);
                    t.shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn subscribe(self: &Arc<Self>, w: Workload) -> Option<Subscription> {
        let mut inner = self.inner.lock();
        if inner.agents.len() >= MAX_TAP_AGENTS {
            self.counters.tap_agents_refused.add(1);
            return None;
        }
        inner.next_agent += 1;
        let id = inner.next_agent;
        inner.agents.insert(id, w);
        self.counters.tap_agents.set(inner.agents.len() as u64);
        Some(Subscription { hub: self.clone(), id })
    }
}

/// An agent's subscription; dropped when its request ends.
struct Subscription {
    hub: Arc<TapHub>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut inner = self.hub.inner.lock();
        inner.agents.remove(&self.id);
        self.hub.counters.tap_agents.set(inner.agents.len() as u64);
    }
}

type Hub = State<Arc<TapHub>>;

fn refuse(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

async fn subscribe(State(hub): Hub, body: Bytes) -> Response {
    let workload: Workload = match serde_json::from_slice(&body) {
        Ok(w) => w,
        Err(e) => {
            return refuse(StatusCode::BAD_REQUEST, format!("the body must be the agent's workload as JSON: {e}"));
        }
    };
    let Some(sub) = hub.subscribe(workload.clone()) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_TAP_AGENTS} agents are subscribed for taps, the limit; try again later"),
        );
    };
    let mut changed = hub.changed.subscribe();
    changed.mark_unchanged();
    let lines =
        futures_util::stream::unfold((sub, changed, workload, true), |(sub, mut changed, w, first)| async move {
            if !first {
                // A change, or the resend interval: either way the current interest goes out.
                let _ = tokio::time::timeout(RESEND, changed.changed()).await;
            }
            if sub.hub.closed.load(Ordering::Acquire) {
                return None;
            }
            let mut line = serde_json::to_vec(&sub.hub.interest(&w)).unwrap_or_default();
            line.push(b'\n');
            Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), (sub, changed, w, false)))
        });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn events(State(hub): Hub, body: Bytes) -> Response {
    if body.len() > MAX_BATCH_BYTES {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("a tap batch is at most {MAX_BATCH_BYTES} bytes"));
    }
    match serde_json::from_slice::<TapBatch>(&body) {
        Ok(batch) => {
            hub.deliver(batch);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, format!("not a tap batch: {e}")),
    }
}

/// The agents' side, served on the OTLP/gRPC listener (HTTP/2, the same token as OTLP).
pub(crate) fn agent_router(hub: Arc<TapHub>) -> Router {
    Router::new()
        .route("/meshlens.tap.v1.Tap/Subscribe", post(subscribe))
        .route("/meshlens.tap.v1.Tap/Events", post(events))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BATCH_BYTES))
        .with_state(hub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_past_the_limit_are_refused_and_counted() {
        let counters = Arc::new(Counters::default());
        let hub = TapHub::new(counters.clone());
        let w = Workload { namespace: "shop".into(), app: "a".into(), version: None, cluster: None };
        let subs: Vec<Subscription> = (0..MAX_TAP_AGENTS).map_while(|_| hub.subscribe(w.clone())).collect();
        assert_eq!(subs.len(), MAX_TAP_AGENTS);
        assert_eq!(counters.tap_agents.get(), MAX_TAP_AGENTS as u64);
        assert!(hub.subscribe(w.clone()).is_none());
        assert_eq!(counters.tap_agents_refused.get(), 1);
        drop(subs);
        assert_eq!(counters.tap_agents.get(), 0);
        assert!(hub.subscribe(w).is_some(), "a place again once agents left");
    }
}
