//! The agent's side of a live tap (`meshlens tap`): which requests it sends to the collector, and
//! the two loops that talk to it.
//!
//! [`Tapper::record`] is on the hot path: while no tap is open it is one atomic load; while taps
//! are open, the request is matched against each tap's `--find` expression and sent only while that
//! tap's per-second budget ([`meshlens_model::tap::TapSpec::max_rps`]) lasts, into a queue of at most
//! [`AGENT_TAP_QUEUE`] events (past it, dropped and counted). So a busy agent pays a fixed cost per
//! second whatever its request rate. [`run`] holds the subscription to the collector (the interest,
//! one JSON line per change) and sends the queue every [`FLUSH`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use meshlens_model::find::Expr;
use meshlens_model::identity::Workload;
use meshlens_model::tap::{
    AGENT_TAP_QUEUE, MAX_TAP_METHOD, MAX_TAP_PATH, TapBatch, TapEvent, TapField, TapInterest, Tapped, clip, parse_find,
};
use parking_lot::Mutex;
use tokio::sync::watch;
use tonic::transport::Channel;
use tower::ServiceExt;

use crate::counters::Counters;

/// How often the queue is sent while a tap is open.
pub(crate) const FLUSH: Duration = Duration::from_millis(100);
/// The longest wait between two tries to subscribe.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

struct Active {
    id: u64,
    find: Option<Expr<TapField>>,
    max_rps: u32,
    /// `(second, sent in it)`.
    budget: Mutex<(u64, u32)>,
}

impl Active {
    fn admits(&self, e: &TapEvent, second: u64) -> bool {
        if self.find.as_ref().is_some_and(|f| !e.matches(f)) {
            return false;
        }
        let mut b = self.budget.lock();
        if b.0 != second {
            *b = (second, 0);
        }
        if b.1 >= self.max_rps {
            return false;
        }
        b.1 += 1;
        true
    }
}

#[derive(Default)]
struct Queue {
    events: Vec<Tapped>,
    acked: Vec<u64>,
    dropped: u64,
}

/// The open taps this agent applies, and what it has to send.
pub(crate) struct Tapper {
    on: AtomicBool,
    taps: arc_swap::ArcSwap<Vec<Active>>,
    queue: Mutex<Queue>,
    counters: Arc<Counters>,
}

impl Tapper {
    /// No tap open; queued and dropped events are counted in `counters`.
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        Self { on: AtomicBool::new(false), taps: Default::default(), queue: Mutex::default(), counters }
    }

    /// Whether any tap is open: the proxy builds an event only then.
    #[inline]
    pub(crate) fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Whether a request that started at `unix_ms` may be sampled: a tap is open and one has budget
    /// left in that second. The proxy builds an event only then, so past a busy second's budget a
    /// request pays an atomic load and a lock per open tap, not an event.
    pub(crate) fn wants(&self, unix_ms: u64) -> bool {
        let second = unix_ms / 1000;
        self.on()
            && self.taps.load().iter().any(|t| {
                let b = t.budget.lock();
                b.0 != second || b.1 < t.max_rps
            })
    }

    /// A request starts: its time, method and path if a tap may sample it ([`Tapper::wants`]), to
    /// build its event from when it is answered. One atomic load while no tap is open.
    pub(crate) fn begin(&self, method: &http::Method, path: &str) -> Option<(u64, String, String)> {
        if !self.on() {
            return None;
        }
        let t = now_unix_ms();
        self.wants(t).then(|| (t, clip(method.to_string(), MAX_TAP_METHOD), clip(path.to_owned(), MAX_TAP_PATH)))
    }

    /// Offers a request to the open taps.
    pub(crate) fn record(&self, event: TapEvent) {
        let taps = self.taps.load();
        let second = event.time_unix_ms / 1000;
        let ids: Vec<u64> = taps.iter().filter(|t| t.admits(&event, second)).map(|t| t.id).collect();
        if ids.is_empty() {
            return;
        }
        let mut q = self.queue.lock();
        if q.events.len() >= AGENT_TAP_QUEUE {
            q.dropped += 1;
            self.counters.tap_events_dropped.add(1);
            return;
        }
        q.events.push(Tapped { taps: ids, event });
        self.counters.tap_events_queued.add(1);
    }

    /// Applies the collector's interest: new taps start with a fresh budget and are acknowledged;
    /// taps that are gone stop at once.
    fn apply(&self, interest: &TapInterest) {
        let old = self.taps.load_full();
        let mut next = Vec::with_capacity(interest.taps.len());
        let mut acked = Vec::new();
        for spec in &interest.taps {
            let find = spec.find.as_deref().and_then(|f| parse_find(f).ok());
            if spec.find.is_some() && find.is_none() {
                // The collector checked it; a collector of another version might not have.
                tracing::warn!(tap = spec.id, "tap expression not understood; tap ignored");
                continue;
            }
            let budget = old.iter().find(|a| a.id == spec.id).map_or((0, 0), |a| *a.budget.lock());
            if !old.iter().any(|a| a.id == spec.id) {
                acked.push(spec.id);
            }
            next.push(Active { id: spec.id, find, max_rps: spec.max_rps, budget: Mutex::new(budget) });
        }
        self.on.store(!next.is_empty(), Ordering::Relaxed);
        self.taps.store(Arc::new(next));
        let mut q = self.queue.lock();
        q.acked.extend(acked);
        if !self.on() {
            q.events.clear();
        }
    }

    fn take(&self, workload: &Workload) -> Option<TapBatch> {
        let mut q = self.queue.lock();
        if q.events.is_empty() && q.acked.is_empty() && q.dropped == 0 {
            return None;
        }
        let q = std::mem::take(&mut *q);
        Some(TapBatch { workload: workload.clone(), acked: q.acked, events: q.events, dropped: q.dropped })
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn request(path: &'static str, token: Option<&str>, body: Vec<u8>) -> http::Request<tonic::body::Body> {
    let mut req = http::Request::new(tonic::body::Body::new(Full::new(Bytes::from(body))));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::from_static(path);
    req.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    if let Some(v) = token.and_then(|t| http::HeaderValue::from_str(&format!("Bearer {t}")).ok()) {
        req.headers_mut().insert(http::header::AUTHORIZATION, v);
    }
    req
}

/// Holds the subscription (re-subscribing with a backoff when it breaks; every tap stops while it
/// is broken) and sends the queue every [`FLUSH`], until `stop` turns true.
pub(crate) async fn run(
    channel: Channel,
    token: Option<String>,
    workload: Workload,
    tapper: Arc<Tapper>,
    mut stop: watch::Receiver<bool>,
) {
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    // Aborted with this task, however it ends.
    let _flusher = {
        let (channel, token, workload, tapper) = (channel.clone(), token.clone(), workload.clone(), tapper.clone());
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH);
            loop {
                tick.tick().await;
                let Some(batch) = tapper.take(&workload) else { continue };
                let body = serde_json::to_vec(&batch).unwrap_or_default();
                let call = channel.clone().oneshot(request("/meshlens.tap.v1.Tap/Events", token.as_deref(), body));
                match tokio::time::timeout(Duration::from_secs(5), call).await {
                    Ok(Ok(r)) if r.status().is_success() => {}
                    Ok(Ok(r)) => {
                        tapper.counters.tap_send_errors.add(1);
                        tracing::debug!(status = %r.status(), "tap batch refused");
                    }
                    _ => tapper.counters.tap_send_errors.add(1),
                }
            }
        }))
    };
    let mut backoff = Duration::from_millis(200);
    let body = serde_json::to_vec(&workload).unwrap_or_default();
    loop {
        let subscribed = async {
            let resp = channel
                .clone()
                .oneshot(request("/meshlens.tap.v1.Tap/Subscribe", token.as_deref(), body.clone()))
                .await
                .map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("subscribe answered {}", resp.status()));
            }
            backoff = Duration::from_millis(200);
            let mut body = resp.into_body();
            let mut line = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| e.to_string())?;
                let Some(data) = frame.data_ref() else { continue };
                line.extend_from_slice(data);
                while let Some(end) = line.iter().position(|&b| b == b'\n') {
                    let one: Vec<u8> = line.drain(..=end).collect();
                    match serde_json::from_slice::<TapInterest>(&one) {
                        Ok(interest) => tapper.apply(&interest),
                        Err(e) => tracing::warn!(error = %e, "tap interest not understood"),
                    }
                }
                if line.len() > 1 << 20 {
                    return Err("a tap interest line over 1 MiB".to_owned());
                }
            }
            Err::<(), String>("the collector ended the tap subscription".to_owned())
        };
        let result = tokio::select! {
            r = subscribed => r,
            _ = stop.wait_for(|&s| s) => break,
        };
        tapper.apply(&TapInterest::default());
        if let Err(e) = result {
            tracing::debug!(error = %e, "tap subscription broke; trying again");
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|&s| s) => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    tapper.apply(&TapInterest::default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlens_model::tap::TapSpec;

    fn event(ms: u64, status: u16) -> TapEvent {
        let (source, destination, method, path) = ("shop/a/v1".into(), "b".into(), "GET".into(), "/".into());
        TapEvent { time_unix_ms: ms, source, destination, method, path, status, latency_ms: 1.0, ..TapEvent::default() }
    }

    #[test]
    fn each_tap_sends_at_most_its_rate_a_second_and_only_what_it_finds() {
        let t = Tapper::new(Arc::default());
        assert!(!t.on());
        let interest = TapInterest {
            taps: vec![
                TapSpec { id: 1, find: None, max_rps: 3 },
                TapSpec { id: 2, find: Some("status >= 500".into()), max_rps: 100 },
            ],
        };
        t.apply(&interest);
        assert!(t.on());
        for i in 0..10 {
            t.record(event(5_000 + i, if i % 2 == 0 { 200 } else { 503 }));
        }
        t.record(event(6_000, 200));
        let w = Workload { namespace: "shop".into(), app: "a".into(), version: None, cluster: None };
        let b = t.take(&w).unwrap();
        assert_eq!(b.acked, vec![1, 2]);
        let one = b.events.iter().filter(|e| e.taps.contains(&1)).count();
        let two = b.events.iter().filter(|e| e.taps.contains(&2)).count();
        // Three in the first second, one in the next; the five 503s all.
        assert_eq!((one, two), (4, 5));
        // Applying the same interest again acknowledges nothing new; closing stops at once.
        t.apply(&interest);
        assert!(t.take(&w).is_none());
        // Past every tap's budget in a second, a request builds no event (tap 1 alone, its budget kept).
        t.apply(&TapInterest { taps: vec![TapSpec { id: 1, find: None, max_rps: 3 }] });
        assert!(t.wants(6_100), "one of three sent in second 6");
        t.record(event(6_100, 200));
        t.record(event(6_200, 200));
        assert!(!t.wants(6_500), "all three sent in second 6");
        assert!(t.wants(7_000));
        t.apply(&TapInterest::default());
        assert!(!t.on());
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let t = Tapper::new(Arc::default());
        t.apply(&TapInterest { taps: vec![TapSpec { id: 1, find: None, max_rps: u32::MAX }] });
        for i in 0..(AGENT_TAP_QUEUE as u64 + 10) {
            t.record(event(i, 200));
        }
        assert_eq!(t.counters.tap_events_dropped.get(), 10);
        let w = Workload { namespace: "shop".into(), app: "a".into(), version: None, cluster: None };
        let b = t.take(&w).unwrap();
        assert_eq!((b.events.len(), b.dropped), (AGENT_TAP_QUEUE, 10));
    }
}
