//! Request stats of a node side or an edge, and health (the `stats` and `health` of `/api/v1/graph`; `collector/src/openapi.json`).

use serde::{Deserialize, Serialize};

/// Requests by status class. `none` counts requests that got no response (timeout, reset, refused).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Codes {
    /// 1xx and 2xx responses (and successful non-HTTP calls).
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    /// 3xx responses.
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    /// 4xx responses (counted, not failures).
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    /// 5xx responses.
    #[serde(rename = "5xx")]
    pub c5xx: u64,
    /// No response at all.
    pub none: u64,
}

/// A status class, the index into [`Codes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CodeClass {
    /// 1xx/2xx.
    Ok = 0,
    /// 3xx.
    Redirect = 1,
    /// 4xx.
    ClientError = 2,
    /// 5xx.
    ServerError = 3,
    /// No response.
    NoResponse = 4,
}

impl CodeClass {
    /// The class of an HTTP status code.
    pub fn from_http(status: i64) -> Self {
        match status {
            300..=399 => Self::Redirect,
            400..=499 => Self::ClientError,
            500..=599 => Self::ServerError,
            _ => Self::Ok,
        }
    }

    /// From the index stored in compact slices.
    pub fn from_index(i: usize) -> Self {
        match i {
            1 => Self::Redirect,
            2 => Self::ClientError,
            3 => Self::ServerError,
            4 => Self::NoResponse,
            _ => Self::Ok,
        }
    }
}

/// gRPC status codes that are the server's fault, as OpenTelemetry's semantic conventions mark a
/// SERVER span failed: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
pub const GRPC_SERVER_FAULTS: [i64; 6] = [2, 4, 12, 13, 14, 15];

/// What one request's report says, read by [`outcome`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// HTTP status (`http.response.status_code` or `http.status_code`).
    pub http_status: Option<i64>,
    /// gRPC status code (`rpc.grpc.status_code`).
    pub grpc_code: Option<i64>,
    /// Marked as an error by its sender (a span's status ERROR, a metric point's `error.type`).
    pub error: bool,
    /// Reported by the callee (a SERVER/CONSUMER span, a server-side metric), not the caller.
    pub server_side: bool,
}

/// The one failure rule, for spans and metrics alike: the status class of a request and whether it
/// failed. A request failed when the callee answered 5xx, answered a gRPC code that is the
/// server's fault ([`GRPC_SERVER_FAULTS`]), or never answered. A 4xx, or a gRPC code the caller
/// caused (NOT_FOUND, INVALID_ARGUMENT, …), is an answer, counted and not a failure, even when a
/// client span marks it ERROR (as OpenTelemetry's HTTP and gRPC client conventions do) — so spans
/// and agent metrics give the same traffic the same success rate. gRPC codes are classed like HTTP:
/// OK as `2xx`, a server fault as `5xx`, any other code as `4xx`.
pub fn outcome(r: Report) -> (CodeClass, bool) {
    let grpc = r.grpc_code.map(|c| match c {
        0 => CodeClass::Ok,
        c if GRPC_SERVER_FAULTS.contains(&c) => CodeClass::ServerError,
        _ => CodeClass::ClientError,
    });
    let class = match (r.http_status.map(CodeClass::from_http), grpc) {
        // An HTTP error status says more than a gRPC code that mirrors it; on a 200 the gRPC code
        // is the answer.
        (Some(h @ (CodeClass::ServerError | CodeClass::ClientError)), _) => h,
        (_, Some(g)) => g,
        (Some(h), None) => h,
        // No status at all: an error the callee reports is its own answer; the caller's means no
        // answer came.
        (None, None) if r.error && r.server_side => CodeClass::ServerError,
        (None, None) if r.error => CodeClass::NoResponse,
        (None, None) => CodeClass::Ok,
    };
    (class, matches!(class, CodeClass::ServerError | CodeClass::NoResponse))
}

impl Codes {
    /// Builds codes from a per-class array indexed by [`CodeClass`].
    pub fn from_array(a: [u64; 5]) -> Self {
        Self { c2xx: a[0], c3xx: a[1], c4xx: a[2], c5xx: a[3], none: a[4] }
    }

    /// Sum over all classes.
    pub fn total(&self) -> u64 {
        self.c2xx + self.c3xx + self.c4xx + self.c5xx + self.none
    }
}

/// Latency percentiles in milliseconds, from merged histograms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    /// 50th percentile (median).
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value seen, exact.
    pub max: f64,
}

/// The stats of a node side (inbound or outbound) or an edge, over a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests in the window.
    pub requests: u64,
    /// Failed requests: 5xx, no response, or a gRPC server-fault code ([`outcome`]).
    pub errors: u64,
    /// Requests per second over the window.
    pub rps: f64,
    /// Lowest per-step rate in the window.
    pub rps_min: f64,
    /// Highest per-step rate in the window.
    pub rps_max: f64,
    /// Percent of requests that did not fail; absent when there was no traffic.
    pub success_pct: Option<f64>,
    /// Percent of requests that failed; `success_pct + error_pct = 100`.
    pub error_pct: Option<f64>,
    /// Requests per status class.
    pub codes: Codes,
    /// Latency percentiles; absent when no latency was recorded.
    pub latency_ms: Option<LatencyMs>,
    /// Percent of requests carried over mutual TLS; absent when there was no traffic.
    pub mtls_pct: Option<f64>,
    /// Retries an agent made (edges an agent reported only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub retries: Option<u64>,
    /// Timeouts an agent saw (edges an agent reported only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timeouts: Option<u64>,
    /// gRPC requests per status code name (`OK`, `NOT_FOUND`, `UNAVAILABLE`, …), codes seen only;
    /// absent when no request carried a gRPC status.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grpc_codes: Option<std::collections::BTreeMap<String, u64>>,
}

/// gRPC status code names, indexed by code (0–16).
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The breakdown [`Stats::grpc_codes`] holds, from counts per code; `None` when all are zero.
pub fn grpc_breakdown(counts: &[u64; 17]) -> Option<std::collections::BTreeMap<String, u64>> {
    let map: std::collections::BTreeMap<String, u64> =
        counts.iter().zip(GRPC_CODE_NAMES).filter(|(n, _)| **n > 0).map(|(n, name)| (name.to_owned(), *n)).collect();
    (!map.is_empty()).then_some(map)
}

/// Rounds to two decimals, so JSON stays readable and comparisons stable.
pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

impl Stats {
    /// The gRPC codes in one line, most frequent first (`OK 12 · NOT_FOUND 4 · UNAVAILABLE 4`), for
    /// the console, the web view and `stat`; `None` without gRPC traffic.
    pub fn grpc_line(&self) -> Option<String> {
        let mut codes: Vec<(&String, &u64)> = self.grpc_codes.as_ref()?.iter().collect();
        codes.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        Some(codes.iter().map(|(name, n)| format!("{name} {n}")).collect::<Vec<_>>().join(" · "))
    }

    /// Fills `success_pct`, `error_pct` and `mtls_pct` from counts.
    pub fn set_percentages(&mut self, mtls_requests: u64) {
        if self.requests > 0 {
            let err = self.errors as f64 * 100.0 / self.requests as f64;
            self.error_pct = Some(round2(err));
            self.success_pct = Some(round2(100.0 - err));
            self.mtls_pct = Some(round2(mtls_requests as f64 * 100.0 / self.requests as f64));
        } else {
            self.error_pct = None;
            self.success_pct = None;
            self.mtls_pct = None;
        }
    }

    /// Health of these stats under the thresholds.
    pub fn health(&self, t: &HealthThresholds) -> Health {
        match self.error_pct {
            None => Health::Idle,
            Some(e) if e >= t.failing_pct => Health::Failing,
            Some(e) if e > t.degraded_pct => Health::Degraded,
            Some(_) => Health::Healthy,
        }
    }
}

/// Health of a node or an edge (Kiali's colours).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No traffic in the window.
    Idle,
    /// Error rate at or below the degraded threshold.
    Healthy,
    /// Error rate above the degraded threshold.
    Degraded,
    /// Error rate at or above the failing threshold.
    Failing,
}

/// Error-rate thresholds, in percent. Kiali's defaults: above 0% degraded, at or above 10% failing.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthThresholds {
    /// Above this error percent an item is degraded.
    pub degraded_pct: f64,
    /// At or above this error percent an item is failing.
    pub failing_pct: f64,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self { degraded_pct: 0.0, failing_pct: 10.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_read_in_one_line_most_frequent_first() {
        let mut counts = [0u64; 17];
        (counts[0], counts[5], counts[14]) = (12, 4, 4);
        let s = Stats { grpc_codes: grpc_breakdown(&counts), ..Stats::default() };
        assert_eq!(s.grpc_line().as_deref(), Some("OK 12 · NOT_FOUND 4 · UNAVAILABLE 4"));
        assert_eq!(Stats::default().grpc_line(), None);
        assert_eq!(grpc_breakdown(&[0; 17]), None);
    }

    #[test]
    fn one_failure_rule_for_http_grpc_and_bare_errors() {
        let r =
            |http_status, grpc_code, error, server_side| outcome(Report { http_status, grpc_code, error, server_side });
        // A 4xx is an answer, even on a client span marked ERROR.
        assert_eq!(r(Some(404), None, true, false), (CodeClass::ClientError, false));
        assert_eq!(r(Some(503), None, false, true), (CodeClass::ServerError, true));
        // gRPC on a 200: the code is the answer. UNAVAILABLE with the span's status UNSET still fails.
        assert_eq!(r(Some(200), Some(14), false, false), (CodeClass::ServerError, true));
        assert_eq!(r(None, Some(5), true, true), (CodeClass::ClientError, false), "NOT_FOUND was answered");
        assert_eq!(r(None, Some(0), false, false), (CodeClass::Ok, false));
        assert_eq!(r(None, Some(4), true, false), (CodeClass::ServerError, true), "DEADLINE_EXCEEDED");
        // No status: the callee's error is its own 5xx; the caller's is no answer.
        assert_eq!(r(None, None, true, true), (CodeClass::ServerError, true));
        assert_eq!(r(None, None, true, false), (CodeClass::NoResponse, true));
        assert_eq!(r(None, None, false, false), (CodeClass::Ok, false));
    }

    #[test]
    fn percentages_add_to_100_and_health_follows_kiali() {
        let mut s = Stats { requests: 3, errors: 1, ..Stats::default() };
        s.set_percentages(3);
        assert_eq!(s.success_pct.unwrap() + s.error_pct.unwrap(), 100.0);
        assert_eq!(s.mtls_pct, Some(100.0));
        let t = HealthThresholds::default();
        assert_eq!(s.health(&t), Health::Failing);
        let mut s = Stats { requests: 1000, errors: 1, ..Stats::default() };
        s.set_percentages(0);
        assert_eq!(s.health(&t), Health::Degraded);
        let mut s = Stats { requests: 1000, ..Stats::default() };
        s.set_percentages(0);
        assert_eq!(s.health(&t), Health::Healthy);
        assert_eq!(Stats::default().health(&t), Health::Idle);
    }
}
