//! The policy mechanisms, once: what the agent enforces and the simulator rehearses (docs/ARCHITECTURE.md,
//! "The simulator"). Everything here is pure and takes time as an argument (seconds or milliseconds on
//! the caller's clock) and randomness as a uniform number in `[0, 1)`, so the agent runs it on its
//! atomics and wall clock and the simulator on virtual time and its seeded RNG.
//!
//! It owns: the outcome classes ([`Outcome`]) and which of them fail, which a `retry_on` list
//! retries ([`retriable`]), the split pick ([`pick_weighted`]), full-jitter backoff ([`backoff`]),
//! the limit of one attempt ([`attempt_limit`]), which declared route a request is ([`match_route`]), the retry budget ([`RetryBudget`]), and outlier
//! detection per endpoint ([`Ejection`]: report, eject for a time that grows, the cap over every
//! endpoint of the service, decay per `interval`). What it does not own: the caller's loop (the
//! agent's `route_request`, the simulator's call events), which both write in the same order:
//! budget deposit, fault delay, fault abort (final, not retried), then per attempt a version by the
//! split and an endpoint; a version whose endpoints are all ejected answers [`Outcome::Proxy503`] at
//! once, with no retry; an attempt's outcome feeds [`Ejection::report`]; a retriable outcome is
//! retried after [`backoff`] while attempts, the budget and the whole-request timeout allow.

use std::time::Duration;

use crate::policy::{HttpRoute, OutlierDetection, PathMatch, Retries, RetryOn, RouteMatch, ServicePolicy};

/// Ejection time stops growing here (Envoy's `max_ejection_time` default).
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// The retry budget's window, seconds (one slot a second).
pub const BUDGET_WINDOW_S: u64 = 10;

/// What became of one attempt or request: the outcome classes that agent telemetry, the collector,
/// the simulator and the API name alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A response with this HTTP status, from the app or an injected abort.
    Status(u16),
    /// A gRPC response (HTTP 200) whose `grpc-status` is this code.
    Grpc(u8),
    /// The proxy answered 503 itself: no endpoint, every endpoint ejected.
    Proxy503,
    /// The connection could not be made (refused); the peer never saw the request.
    ConnectFailure,
    /// No response in time: a per-try or the whole-request timeout (answered 504).
    Timeout,
    /// The connection broke before a response.
    Reset,
    /// The caller went away first.
    Cancelled,
}

/// gRPC codes that are the server's fault (failures): UNKNOWN, DEADLINE_EXCEEDED,
/// RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
const GRPC_SERVER_ERRORS: [u8; 7] = [2, 4, 8, 12, 13, 14, 15];

impl Outcome {
    /// The class name (the outcome classes `retry_on` names): `2xx` … `5xx`, `proxy_503` (also for a refused
    /// connection, which the proxy answers with its own 503), `timeout`, `reset`, `cancelled`, or
    /// `grpc_N`. `ConnectFailure` stays its own variant because `retry_on: [connect-failure]`
    /// tells it apart.
    pub fn class(self) -> String {
        match self {
            Outcome::Status(s) => format!("{}xx", (s / 100).clamp(1, 5)),
            Outcome::Grpc(c) => format!("grpc_{c}"),
            other => other.fixed_class().to_owned(),
        }
    }

    fn fixed_class(self) -> &'static str {
        match self {
            Outcome::Status(_) | Outcome::Grpc(_) => "",
            Outcome::Proxy503 => "proxy_503",
            Outcome::ConnectFailure => "proxy_503",
            Outcome::Timeout => "timeout",
            Outcome::Reset => "reset",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// Whether the request failed: a 5xx, no response, or a gRPC server-error code. 4xx is not a
    /// failure.
    pub fn is_failure(self) -> bool {
        match self {
            Outcome::Status(s) => s >= 500,
            Outcome::Grpc(c) => GRPC_SERVER_ERRORS.contains(&c),
            _ => true,
        }
    }

    /// Whether there was no response at all.
    pub fn no_response(self) -> bool {
        !matches!(self, Outcome::Status(_) | Outcome::Grpc(_) | Outcome::Proxy503)
    }

    /// The HTTP status the caller sees for it (0 when the caller went away).
    pub fn status(self) -> u16 {
        match self {
            Outcome::Status(s) => s,
            Outcome::Grpc(_) => 200,
            Outcome::Proxy503 | Outcome::ConnectFailure | Outcome::Reset => 503,
            Outcome::Timeout => 504,
            Outcome::Cancelled => 0,
        }
    }

    /// What outlier detection counts as a consecutive 5xx: a 5xx or no response from the endpoint
    /// (Envoy's default, local-origin errors not split out).
    pub fn counts_for_ejection(self) -> bool {
        match self {
            Outcome::Status(s) => s >= 500,
            Outcome::Grpc(_) | Outcome::Proxy503 | Outcome::Cancelled => false,
            Outcome::ConnectFailure | Outcome::Timeout | Outcome::Reset => true,
        }
    }
}

/// Whether `retry_on` retries `outcome` (Envoy's meanings): `5xx` any 5xx and no response;
/// `gateway-error` 502–504 and no response; `reset` a reset or a timeout; `connect-failure` a refused
/// connection; `retriable-4xx` 409; `refused-stream` as reset; `unavailable` gRPC 14. A proxy 503
/// and a cancelled request are never retried.
pub fn retriable(retry_on: &[RetryOn], outcome: Outcome) -> bool {
    if matches!(outcome, Outcome::Proxy503 | Outcome::Cancelled) {
        return false;
    }
    retry_on.iter().any(|on| match (on, outcome) {
        (RetryOn::ServerError, Outcome::Status(s)) => s >= 500,
        (RetryOn::GatewayError, Outcome::Status(s)) => (502..=504).contains(&s),
        (RetryOn::Retriable4xx, Outcome::Status(s)) => s == 409,
        (RetryOn::Unavailable, Outcome::Grpc(c)) => c == 14,
        (RetryOn::ServerError | RetryOn::GatewayError, o) => o.no_response(),
        (RetryOn::Reset | RetryOn::RefusedStream, Outcome::Reset | Outcome::Timeout) => true,
        (RetryOn::ConnectFailure, Outcome::ConnectFailure) => true,
        _ => false,
    })
}

/// Least request of two choices (Envoy's and Linkerd's p2c) among `count` endpoints: two different
/// ones drawn uniformly by `r1` and `r2` in `[0, 1)`, and of those the one with less `load`; on a
/// tie the first drawn, so no position in the list is favoured. (Taking the lower index of the two
/// on a tie, as the agent once did, never picks the last endpoint while the loads are equal.)
pub fn p2c(count: usize, r1: f64, r2: f64, load: impl Fn(usize) -> u64) -> usize {
    if count <= 1 {
        return 0;
    }
    let a = ((r1 * count as f64) as usize).min(count - 1);
    let mut b = ((r2 * (count - 1) as f64) as usize).min(count - 2);
    if b >= a {
        b += 1;
    }
    if load(b) < load(a) { b } else { a }
}

/// The index a split picks for the uniform `u` in `[0, 1)`, by `weights` that sum to 1. Rounding
/// that leaves `u` past the last weight goes to the last positive weight (index 0 when none is).
pub fn pick_weighted(weights: impl IntoIterator<Item = f64> + Clone, u: f64) -> usize {
    let mut r = u;
    let mut last_positive = 0;
    for (i, w) in weights.into_iter().enumerate() {
        if r < w {
            return i;
        }
        r -= w;
        if w > 0.0 {
            last_positive = i;
        }
    }
    last_positive
}

/// Full jitter (AWS's "exponential backoff and jitter") before retry number `retry` (0 for the
/// first retry): `u · min(max, base · 2^retry)`, with `u` uniform in `[0, 1)`.
pub fn backoff(retries: &Retries, retry: u32, u: f64) -> Duration {
    let cap = retries.backoff_base.saturating_mul(1u32 << retry.min(20)).min(retries.backoff_max);
    cap.mul_f64(u.clamp(0.0, 1.0))
}

/// How long one attempt may take: the per-try timeout, cut to what is left of the whole-request
/// timeout; `None` when neither applies.
pub fn attempt_limit(per_try: Option<Duration>, remaining: Option<Duration>) -> Option<Duration> {
    match (per_try, remaining) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A retry budget (Linkerd's and Finagle's): retries may add `budget_ratio` of the requests of the
/// last [`BUDGET_WINDOW_S`] seconds, plus `budget_min_per_second` a second. One budget per caller
/// and callee service: the agent keeps one per route, the simulator one per caller instance and
/// callee.
#[derive(Clone, Copy, Debug)]
pub struct RetryBudget {
    /// (second, requests, retries) per slot; `u64::MAX` marks an unused slot.
    slots: [(u64, u64, u64); BUDGET_WINDOW_S as usize],
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self { slots: [(u64::MAX, 0, 0); BUDGET_WINDOW_S as usize] }
    }
}

impl RetryBudget {
    fn slot(&mut self, sec: u64) -> &mut (u64, u64, u64) {
        let s = &mut self.slots[(sec % BUDGET_WINDOW_S) as usize];
        if s.0 != sec {
            *s = (sec, 0, 0);
        }
        s
    }

    /// Requests and retries of the window that ends in second `sec`.
    pub fn totals(&self, sec: u64) -> (u64, u64) {
        self.slots
            .iter()
            .filter(|s| s.0 != u64::MAX && s.0 <= sec && s.0 + BUDGET_WINDOW_S > sec)
            .fold((0, 0), |(q, r), s| (q + s.1, r + s.2))
    }

    /// Counts a request (not a retry) in second `sec`.
    pub fn deposit(&mut self, sec: u64) {
        self.slot(sec).1 += 1;
    }

    /// Takes a retry in second `sec` if the budget allows it.
    pub fn withdraw(&mut self, sec: u64, retries: &Retries) -> bool {
        let (requests, used) = self.totals(sec);
        let allowed = retries.budget_ratio * requests as f64 + retries.budget_min_per_second * BUDGET_WINDOW_S as f64;
        if (used as f64) < allowed {
            self.slot(sec).2 += 1;
            true
        } else {
            false
        }
    }
}

/// What a report to outlier detection did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reported {
    /// Nothing changed state visibly.
    Nothing,
    /// The endpoint is ejected now, for this long.
    Ejected(Duration),
    /// It would have been ejected, but the cap was reached.
    Capped,
}

/// One endpoint's outlier-detection state. Times are milliseconds on the caller's clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ejection {
    /// Consecutive failures so far.
    pub consecutive: u32,
    /// Ejected until this time; 0 when never ejected.
    pub ejected_until_ms: u64,
    /// The ejection multiplier: ejections not yet decayed.
    pub ejections: u32,
}

impl Ejection {
    /// Whether the endpoint is ejected at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms > now_ms
    }

    /// The most endpoints of a service with `total` endpoints that may be ejected at once: the
    /// percent of all of the service's endpoints (every version), at least one, as Envoy does.
    pub fn cap(od: &OutlierDetection, total: usize) -> usize {
        ((od.max_ejection_percent / 100.0) * total as f64).floor().max(1.0) as usize
    }

    /// Reports an attempt's outcome at `now_ms`; `ejected` is how many of the service's `total`
    /// endpoints are ejected now (this one included, if it is).
    pub fn report(
        &mut self,
        od: &OutlierDetection,
        outcome: Outcome,
        now_ms: u64,
        ejected: usize,
        total: usize,
    ) -> Reported {
        if !outcome.counts_for_ejection() {
            if outcome != Outcome::Cancelled {
                self.consecutive = 0;
            }
            self.decay(od, now_ms);
            return Reported::Nothing;
        }
        self.consecutive += 1;
        if self.consecutive < od.consecutive_5xx || self.is_ejected(now_ms) {
            return Reported::Nothing;
        }
        if ejected >= Self::cap(od, total) {
            return Reported::Capped;
        }
        self.decay(od, now_ms);
        self.ejections += 1;
        let time =
            od.base_ejection_time.saturating_mul(self.ejections).min(MAX_EJECTION_TIME.max(od.base_ejection_time));
        self.ejected_until_ms = now_ms + time.as_millis() as u64;
        self.consecutive = 0;
        Reported::Ejected(time)
    }

    /// Envoy lowers the ejection multiplier by one for each `interval` an endpoint stays healthy
    /// after its ejection ended.
    fn decay(&mut self, od: &OutlierDetection, now_ms: u64) {
        if self.ejections == 0 || self.is_ejected(now_ms) {
            return;
        }
        let since = now_ms.saturating_sub(self.ejected_until_ms);
        let steps = since / (od.interval.as_millis().max(1) as u64);
        if steps > 0 {
            self.ejections = self.ejections.saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX));
            // The healthy time counted is used up: the next decay counts from here.
            self.ejected_until_ms += steps * od.interval.as_millis().max(1) as u64;
        }
    }
}

/// A table of outlier-detection cases that the core's tests, the agent's endpoints and the
/// simulator's instances all run, so the three cannot drift apart.
#[doc(hidden)]
pub mod cases {
    use std::time::Duration;

    use super::{Outcome, Reported};
    use crate::policy::OutlierDetection;

    /// One report to one endpoint.
    #[derive(Clone, Copy, Debug)]
    pub struct Step {
        /// Which endpoint, counted over the whole service.
        pub endpoint: usize,
        /// The attempt's outcome.
        pub outcome: Outcome,
        /// When, milliseconds.
        pub at_ms: u64,
        /// What the report must do.
        pub expect: Reported,
    }

    /// A service with `endpoints` endpoints (split over versions as `versions` says) and steps.
    #[derive(Clone, Debug)]
    pub struct Case {
        /// What it shows.
        pub name: &'static str,
        /// The policy.
        pub od: OutlierDetection,
        /// Endpoints of the service, all versions.
        pub endpoints: usize,
        /// How many of them each version has, in order (they sum to `endpoints`).
        pub versions: Vec<usize>,
        /// The reports.
        pub steps: Vec<Step>,
    }

    fn od(consecutive_5xx: u32, base_ms: u64, max_pct: f64) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_millis(base_ms),
            max_ejection_percent: max_pct,
        }
    }

    fn step(endpoint: usize, outcome: Outcome, at_ms: u64, expect: Reported) -> Step {
        Step { endpoint, outcome, at_ms, expect }
    }

    /// The cases.
    pub fn ejections() -> Vec<Case> {
        use Outcome::*;
        use Reported::*;
        let ej = |ms| Ejected(Duration::from_millis(ms));
        vec![
            Case {
                name: "consecutive failures eject, a success in between resets the count",
                od: od(2, 1_000, 100.0),
                endpoints: 2,
                versions: vec![1, 1],
                steps: vec![
                    step(0, Status(500), 0, Nothing),
                    step(0, Status(200), 1, Nothing),
                    step(0, Status(503), 2, Nothing),
                    step(0, Timeout, 3, ej(1_000)),
                    step(1, Status(404), 4, Nothing),
                    step(1, Status(404), 5, Nothing),
                ],
            },
            Case {
                name: "the cap counts every endpoint of the service, not one version's",
                // 40% of 5 endpoints (4 in v1, 1 in v2) is 2.
                od: od(1, 1_000, 40.0),
                endpoints: 5,
                versions: vec![4, 1],
                steps: vec![
                    step(4, Status(500), 0, ej(1_000)),
                    step(0, Reset, 0, ej(1_000)),
                    step(1, Status(502), 0, Capped),
                    // Both back after a second: room again.
                    step(1, Status(502), 1_000, ej(1_000)),
                ],
            },
            Case {
                name: "ejection time grows with each ejection; at least one may be ejected",
                od: od(1, 1_000, 1.0),
                endpoints: 3,
                versions: vec![3],
                steps: vec![
                    step(0, Status(500), 0, ej(1_000)),
                    step(1, Status(500), 500, Capped),
                    step(0, Status(500), 1_000, ej(2_000)),
                    step(0, Status(500), 2_500, Nothing),
                    step(0, ConnectFailure, 3_000, ej(3_000)),
                ],
            },
            Case {
                name: "4xx, gRPC answers and the proxy's own 503 do not count",
                od: od(1, 1_000, 100.0),
                endpoints: 1,
                versions: vec![1],
                steps: vec![
                    step(0, Status(429), 0, Nothing),
                    step(0, Grpc(14), 0, Nothing),
                    step(0, Proxy503, 0, Nothing),
                    step(0, Status(500), 0, ej(1_000)),
                ],
            },
        ]
    }
}

/// The index of the first route in `routes` that fits a request, `None` for `[default]`: a route
/// fits when any of its matches does (or it has none), a match when its method, path and every
/// header hold. `path` is the request target (a query is ignored); `header` looks a header up by
/// lower-case name. Routes are tried in order, as Istio's VirtualService and Linkerd's
/// ServiceProfile routes are, so a specific route goes before a broad one.
pub fn match_route<'h>(
    routes: &[HttpRoute],
    method: &str,
    path: &str,
    header: impl Fn(&str) -> Option<&'h str>,
) -> Option<usize> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    routes.iter().position(|r| r.matches.is_empty() || r.matches.iter().any(|m| fits(m, method, path, &header)))
}

/// What a request to a service is held to: the route it matched (`None` for `[default]`), and that
/// route's whole timeout and retries, else the service's. The agent plans each request by it, and
/// the simulator each call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoutePlan<'p> {
    /// Index of the matched route in the service's routes.
    pub route: Option<usize>,
    /// Whole-request timeout.
    pub timeout: Option<Duration>,
    /// The retries that apply: the route's, else the service's.
    pub retries: Option<&'p Retries>,
}

/// Plans a request to a service with `policy` ([`match_route`], then the route's figures).
pub fn plan<'p, 'h>(
    policy: &'p ServicePolicy,
    method: &str,
    path: &str,
    header: impl Fn(&str) -> Option<&'h str>,
) -> RoutePlan<'p> {
    let route = match_route(&policy.routes, method, path, header);
    match route.and_then(|i| policy.routes.get(i)) {
        Some(r) => RoutePlan { route, timeout: r.timeout, retries: r.retries.as_ref() },
        None => RoutePlan { route: None, timeout: policy.timeout, retries: policy.retries.as_ref() },
    }
}

fn fits<'h>(m: &RouteMatch, method: &str, path: &str, header: &impl Fn(&str) -> Option<&'h str>) -> bool {
    m.method.as_deref().is_none_or(|want| want == method)
        && m.path.as_ref().is_none_or(|p| path_fits(p, path))
        && m.headers.iter().all(|(name, value)| header(name) == Some(value.as_str()))
}

fn path_fits(want: &PathMatch, path: &str) -> bool {
    match want {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => {
            path.strip_prefix(p.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        }
        PathMatch::Template(segments) => {
            let mut got = path.trim_matches('/').split('/').filter(|s| !s.is_empty());
            segments.iter().all(|want| got.next().is_some_and(|g| want.as_deref().is_none_or(|w| w == g)))
                && got.next().is_none()
        }
    }
}

#[cfg(test)]
#[path = "policy_core_tests.rs"]
mod tests;
