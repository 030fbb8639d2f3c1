//! The idle rule every meshlens listener applies to a connection (the collector's and the agent's):
//! a connection with no request in flight for the idle timeout is closed — as Envoy's
//! `idle_timeout` ("no active streams") does. Bytes do not count: an HTTP/2 connection that sent
//! only its preface, or answers only pings, has no stream and is closed; one with a request still
//! in flight (a long download, a slow backend) is not.
//!
//! No runtime here: [`Streams::wait_idle`] takes the caller's sleep.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One connection's requests in flight, and since when it has had none.
#[derive(Clone, Debug)]
pub struct Streams(Arc<State>);

#[derive(Debug)]
struct State {
    active: AtomicUsize,
    idle_since: std::sync::Mutex<Instant>,
}

/// A request in flight; dropping it ends the request.
#[derive(Debug)]
pub struct Active(Streams);

impl Drop for Active {
    fn drop(&mut self) {
        let s = &self.0.0;
        if s.active.fetch_sub(1, Ordering::AcqRel) == 1
            && let Ok(mut since) = s.idle_since.lock()
        {
            *since = Instant::now();
        }
    }
}

impl Default for Streams {
    fn default() -> Self {
        Self::new()
    }
}

impl Streams {
    /// A connection just accepted: idle from now.
    pub fn new() -> Self {
        Self(Arc::new(State { active: AtomicUsize::new(0), idle_since: std::sync::Mutex::new(Instant::now()) }))
    }

    /// A request begins.
    pub fn start(&self) -> Active {
        self.0.active.fetch_add(1, Ordering::AcqRel);
        Active(self.clone())
    }

    /// How long until the connection has been idle for `timeout`: `None` while a request is in
    /// flight, zero once it is due to close.
    pub fn remaining(&self, timeout: Duration) -> Option<Duration> {
        if self.0.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.0.idle_since.lock().map(|s| *s).unwrap_or_else(|_| Instant::now());
        Some(timeout.saturating_sub(since.elapsed()))
    }

    /// Resolves once the connection has had no request in flight for `timeout`.
    pub async fn wait_idle<F, S>(&self, timeout: Duration, sleep: S)
    where
        S: Fn(Duration) -> F,
        F: Future<Output = ()>,
    {
        loop {
            match self.remaining(timeout) {
                Some(left) if left.is_zero() => return,
                Some(left) => sleep(left).await,
                // Busy: look again after at most a timeout (a request that ends resets the clock).
                None => sleep(timeout).await,
            }
        }
    }
}

/// A response body that keeps its request in flight until it is read to the end or dropped: a
/// long download is a request in flight, not an idle connection.
#[cfg(feature = "server")]
#[derive(Debug)]
pub struct Held<B> {
    body: B,
    _active: Active,
}

#[cfg(feature = "server")]
impl<B> Held<B> {
    /// `body`, holding `active` until it ends.
    pub fn new(body: B, active: Active) -> Self {
        Self { body, _active: active }
    }
}

#[cfg(feature = "server")]
impl<B: http_body::Body + Unpin> http_body::Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_in_flight_holds_the_connection_and_its_end_restarts_the_clock() {
        let s = Streams::new();
        let t = Duration::from_secs(60);
        assert!(s.remaining(t).is_some_and(|d| d > Duration::from_secs(59)));
        let a = s.start();
        let b = s.start();
        assert_eq!(s.remaining(t), None);
        drop(a);
        assert_eq!(s.remaining(t), None, "one still in flight");
        drop(b);
        assert!(s.remaining(t).is_some_and(|d| d > Duration::from_secs(59)));
        assert_eq!(s.remaining(Duration::ZERO), Some(Duration::ZERO));
    }
}
