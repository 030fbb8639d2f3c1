//! The traffic policy schema shared by the agent and the simulator (README, "Simulating a policy"; docs/ARCHITECTURE.md, "Policy semantics"), so
//! what is simulated is what is deployed.
//!
//! Two layers, as config should be: [`PolicyFile`] is plain serde (unknown fields refused, durations
//! as text such as `500ms`), and [`PolicyFile::resolve`] checks every value and returns
//! [`Policies`] with durations, normalised split weights and defaults filled in, or a
//! [`PolicyError`] that names the field by its path (`services.reviews.retries.per_try_timeout`).
//! Parsing a file format (YAML) is the caller's business, so this crate stays free of IO.
//!
//! Field names and defaults follow Istio where the concept is Istio's. Where meshlens differs: a
//! service without a `retries` block makes no retries (Istio retries twice by default), because a
//! policy should say everything it does.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A policy file as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Policies by service (app) name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
}

/// One service's policy as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Weights per version; normalised.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub split: BTreeMap<String, f64>,
    /// Whole-request timeout, all attempts included; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::time::text_opt")]
    pub timeout: Option<Duration>,
    /// Retries; none when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetriesSpec>,
    /// Ejecting endpoints that keep failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierSpec>,
    /// `round_robin` or `p2c` (`least_request`); p2c when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Injected delays and aborts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultSpec>,
    /// The service's routes, tried in order (the first whose match fits names the request); a
    /// request no route fits is `[default]`. Each may set its own timeout and retries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
}

/// One route as written: Gateway API's HTTPRoute rule (its `matches`, with `timeout` and `retries`
/// beside them as this schema writes them for a service).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Its name in metrics and in `meshlens routes`; `METHOD path` of its first match when absent
    /// (`GET /books/{id}`), as Linkerd names routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any one of these fits; every request fits a route with none (Gateway API's default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchSpec>,
    /// The whole-request timeout on this route; the service's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::time::text_opt")]
    pub timeout: Option<Duration>,
    /// Retries on this route; the service's when absent (`attempts: 0` turns them off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetriesSpec>,
}

/// One match as written (Gateway API's `HTTPRouteMatch`): every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// The path; any path when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatchSpec>,
    /// The method (`GET`); any when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Headers that must be present with these values (names case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchSpec>,
}

/// A path match as written: `{type: PathPrefix, value: /api}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatchSpec {
    /// How `value` is compared; `PathPrefix` when absent (Gateway API's default).
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    /// The path, prefix or template; starts with `/`.
    pub value: String,
}

/// How a path is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatchType {
    /// The whole path, exactly.
    Exact,
    /// Whole segments: `/books` fits `/books` and `/books/7`, not `/bookshelf`.
    #[default]
    PathPrefix,
    /// Segments, where `{name}` stands for any one segment: `/books/{id}/reviews`.
    Template,
}

/// A header match as written (Gateway API's `Exact` type).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchSpec {
    /// Header name, any case.
    pub name: String,
    /// Its value, exactly.
    pub value: String,
}

/// Retries as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetriesSpec {
    /// Retries after the first try; 0 is off.
    pub attempts: u32,
    /// Timeout of each try.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::time::text_opt")]
    pub per_try_timeout: Option<Duration>,
    /// Which outcomes are retried; `5xx`, `connect-failure` and `reset` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<RetryOn>>,
    /// Exponential backoff with full jitter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
    /// How much load retries may add.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
}

/// Backoff as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffSpec {
    /// First interval.
    #[serde(with = "crate::time::text")]
    pub base: Duration,
    /// Largest interval.
    #[serde(with = "crate::time::text")]
    pub max: Duration,
}

/// Retry budget as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Retries may add at most this fraction of the requests.
    pub ratio: f64,
    /// Plus this many retries a second.
    pub min_per_second: f64,
}

/// Outlier detection as written (Istio's names).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSpec {
    /// Consecutive 5xx that eject an endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    /// How often ejections are reconsidered.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::time::text_opt")]
    pub interval: Option<Duration>,
    /// First ejection time; it grows with each ejection.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::time::text_opt")]
    pub base_ejection_time: Option<Duration>,
    /// Most endpoints ejected at once, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<f64>,
}

/// Faults as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Delay some requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelaySpec>,
    /// Answer some requests with an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortSpec>,
}

/// A delay fault as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelaySpec {
    /// How long.
    #[serde(with = "crate::time::text")]
    pub fixed: Duration,
    /// Of which requests, percent.
    pub percent: f64,
}

/// An abort fault as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortSpec {
    /// HTTP status to answer.
    pub status: u16,
    /// Of which requests, percent.
    pub percent: f64,
}

/// A value in a policy that cannot be used, with the path of its field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PolicyError {
    /// Dotted path: `services.reviews.retries.per_try_timeout`.
    pub path: String,
    /// What is wrong and what would be right.
    pub message: String,
}

/// What a retry reacts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// Any 5xx, and no response at all.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503, 504.
    GatewayError,
    /// The connection was reset or the request timed out.
    Reset,
    /// The connection could not be made.
    ConnectFailure,
    /// 409.
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    /// HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// gRPC UNAVAILABLE.
    Unavailable,
}

/// Load balancing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    /// In turn.
    RoundRobin,
    /// Least request of two random choices (Envoy's and Linkerd's default).
    #[default]
    #[serde(alias = "least_request")]
    P2c,
}

/// Resolved retries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Retries {
    /// Retries after the first try.
    pub attempts: u32,
    /// Timeout of each try.
    pub per_try_timeout: Option<Duration>,
    /// What is retried.
    pub retry_on: Vec<RetryOn>,
    /// Backoff base.
    pub backoff_base: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// Budget ratio.
    pub budget_ratio: f64,
    /// Budget floor, retries a second.
    pub budget_min_per_second: f64,
}

/// Resolved outlier detection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutlierDetection {
    /// Consecutive 5xx that eject.
    pub consecutive_5xx: u32,
    /// Sweep interval.
    pub interval: Duration,
    /// First ejection time.
    pub base_ejection_time: Duration,
    /// Most ejected at once, percent.
    pub max_ejection_percent: f64,
}

/// Resolved faults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// `(delay, fraction of requests)`.
    pub delay: Option<(Duration, f64)>,
    /// `(status, fraction of requests)`.
    pub abort: Option<(u16, f64)>,
}

/// One service's resolved policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServicePolicy {
    /// Versions and their shares, summing to 1; empty means "every version alike".
    pub split: Vec<(String, f64)>,
    /// Whole-request timeout.
    pub timeout: Option<Duration>,
    /// Retries, if any.
    pub retries: Option<Retries>,
    /// Outlier detection, if any.
    pub outlier_detection: Option<OutlierDetection>,
    /// Load balancing.
    pub load_balancer: LoadBalancer,
    /// Injected delays and aborts.
    pub faults: Faults,
    /// Routes in the order they are tried; each carries its effective timeout and retries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<HttpRoute>,
}

/// The name of the route that stands for every request no declared route fits.
pub const DEFAULT_ROUTE: &str = "[default]";
/// Most routes one service may declare, so per-route series stay bounded.
pub const MAX_ROUTES: usize = 50;
/// Longest route name, bytes.
pub const MAX_ROUTE_NAME: usize = 128;

/// A call an app makes, as a mesh or scenario file writes it: a service's name alone (the request
/// `GET /SERVICE`, what the demo's apps send), or `{service, method, path, headers}`, so the call
/// meets the service's routes as a real request would.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CallSpec {
    /// `GET /SERVICE`.
    Service(String),
    /// A request of its own.
    Request(CallRequest),
}

/// A call's request, as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRequest {
    /// The service called.
    pub service: String,
    /// HTTP method; GET when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The request target; `/SERVICE` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Headers sent (names matched case-insensitively, as routes match them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl CallSpec {
    /// The service called.
    pub fn service(&self) -> &str {
        match self {
            CallSpec::Service(s) => s,
            CallSpec::Request(r) => &r.service,
        }
    }

    /// The method, upper-case.
    pub fn method(&self) -> String {
        match self {
            CallSpec::Request(CallRequest { method: Some(m), .. }) => m.to_ascii_uppercase(),
            _ => "GET".to_owned(),
        }
    }

    /// The request target.
    pub fn path(&self) -> String {
        match self {
            CallSpec::Request(CallRequest { path: Some(p), .. }) => p.clone(),
            _ => format!("/{}", self.service()),
        }
    }

    /// A header's value by name, any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        match self {
            CallSpec::Service(_) => None,
            CallSpec::Request(r) => {
                r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
            }
        }
    }

    /// Checks what a request cannot carry: a path not starting with `/`, a method or header that is
    /// not a token.
    pub fn check(&self) -> Result<(), String> {
        let CallSpec::Request(r) = self else { return Ok(()) };
        let token =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if let Some(m) = &r.method
            && !token(m)
        {
            return Err(format!("method {m:?} is not an HTTP method"));
        }
        if let Some(p) = &r.path
            && (!p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f))
        {
            return Err(format!("path {p:?} must start with / and hold no spaces or control characters"));
        }
        for (k, v) in &r.headers {
            if !token(k) || v.bytes().any(|b| b < b' ' && b != b'\t' || b == 0x7f) {
                return Err(format!("header {k:?}: not a header name and value"));
            }
        }
        Ok(())
    }
}

/// One resolved route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpRoute {
    /// Its name.
    pub name: String,
    /// Any one of these fits (none: every request fits).
    pub matches: Vec<RouteMatch>,
    /// Whole-request timeout: the route's, else the service's.
    pub timeout: Option<Duration>,
    /// Retries: the route's, else the service's.
    pub retries: Option<Retries>,
}

/// One resolved match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteMatch {
    /// Upper-case method, if one is required.
    pub method: Option<String>,
    /// The path condition, if any.
    pub path: Option<PathMatch>,
    /// `(lower-case name, value)` pairs that must all be present.
    pub headers: Vec<(String, String)>,
}

/// A resolved path condition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// Whole leading segments (kept without a trailing `/`; empty for `/`).
    Prefix(String),
    /// Segments; `None` stands for any one segment.
    Template(Vec<Option<String>>),
}

/// All services' resolved policies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Policies {
    /// By service name.
    pub services: BTreeMap<String, ServicePolicy>,
}

fn err(path: &str, message: impl Into<String>) -> PolicyError {
    PolicyError { path: path.to_owned(), message: message.into() }
}

/// A duration as read, checked: zero is no duration any setting here can use.
fn duration(path: &str, d: Duration) -> Result<Duration, PolicyError> {
    if d.is_zero() {
        return Err(err(path, "must be longer than zero"));
    }
    Ok(d)
}

fn percent(path: &str, v: f64) -> Result<f64, PolicyError> {
    if !(0.0..=100.0).contains(&v) || v.is_nan() {
        return Err(err(path, format!("{v} is not a percent between 0 and 100")));
    }
    Ok(v)
}

impl PolicyFile {
    /// Checks every value and fills in defaults.
    pub fn resolve(&self) -> Result<Policies, PolicyError> {
        let mut services = BTreeMap::new();
        for (name, spec) in &self.services {
            services.insert(name.clone(), spec.resolve(&format!("services.{name}"))?);
        }
        Ok(Policies { services })
    }
}

impl ServiceSpec {
    fn resolve(&self, at: &str) -> Result<ServicePolicy, PolicyError> {
        let mut split = Vec::new();
        let mut total = 0.0;
        for (version, &w) in &self.split {
            if !(w >= 0.0 && w.is_finite()) {
                return Err(err(&format!("{at}.split.{version}"), format!("weight {w} must be zero or more")));
            }
            total += w;
        }
        if !self.split.is_empty() && total <= 0.0 {
            return Err(err(&format!("{at}.split"), "weights sum to 0: at least one version needs a positive weight"));
        }
        for (version, &w) in &self.split {
            split.push((version.clone(), w / total));
        }
        let timeout = self.timeout.map(|t| duration(&format!("{at}.timeout"), t)).transpose()?;
        let retries =
            self.retries.as_ref().map(|r| r.resolve(&format!("{at}.retries"), timeout)).transpose()?.flatten();
        let outlier_detection =
            self.outlier_detection.as_ref().map(|o| o.resolve(&format!("{at}.outlier_detection"))).transpose()?;
        let load_balancer = self.load_balancer.unwrap_or_default();
        let mut faults = Faults::default();
        if let Some(f) = &self.fault {
            if let Some(d) = &f.delay {
                let p = format!("{at}.fault.delay");
                faults.delay = Some((
                    duration(&format!("{p}.fixed"), d.fixed)?,
                    percent(&format!("{p}.percent"), d.percent)? / 100.0,
                ));
            }
            if let Some(a) = &f.abort {
                let p = format!("{at}.fault.abort");
                if !(200..=599).contains(&a.status) {
                    return Err(err(
                        &format!("{p}.status"),
                        format!("{} is not an HTTP status between 200 and 599", a.status),
                    ));
                }
                faults.abort = Some((a.status, percent(&format!("{p}.percent"), a.percent)? / 100.0));
            }
        }
        let routes = self.resolve_routes(at, timeout, retries.as_ref())?;
        Ok(ServicePolicy { split, timeout, retries, outlier_detection, load_balancer, faults, routes })
    }

    fn resolve_routes(
        &self,
        at: &str,
        timeout: Option<Duration>,
        retries: Option<&Retries>,
    ) -> Result<Vec<HttpRoute>, PolicyError> {
        if self.routes.len() > MAX_ROUTES {
            return Err(err(
                &format!("{at}.routes"),
                format!(
                    "{} routes is more than {MAX_ROUTES}; each route is a series per caller, so a service keeps few",
                    self.routes.len()
                ),
            ));
        }
        let mut out: Vec<HttpRoute> = Vec::with_capacity(self.routes.len());
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("{at}.routes[{i}]");
            let mut matches = Vec::with_capacity(r.matches.len());
            for (j, m) in r.matches.iter().enumerate() {
                matches.push(m.resolve(&format!("{at}.matches[{j}]"))?);
            }
            let name = match &r.name {
                Some(n) => n.trim().to_owned(),
                None => r.matches.first().map(MatchSpec::default_name).unwrap_or_else(|| "*".to_owned()),
            };
            if name.is_empty() || name.len() > MAX_ROUTE_NAME || name.chars().any(char::is_control) {
                return Err(err(
                    &format!("{at}.name"),
                    format!("{name:?} must be 1 to {MAX_ROUTE_NAME} bytes with no control characters"),
                ));
            }
            if name == DEFAULT_ROUTE || out.iter().any(|o| o.name == name) {
                return Err(err(
                    &format!("{at}.name"),
                    format!("{name:?} names another route of this service (or the one no route fits): give it a name"),
                ));
            }
            let route_timeout = r.timeout.map(|t| duration(&format!("{at}.timeout"), t)).transpose()?;
            let timeout = route_timeout.or(timeout);
            let retries = match &r.retries {
                Some(spec) => spec.resolve(&format!("{at}.retries"), timeout)?,
                None => retries.cloned(),
            };
            out.push(HttpRoute { name, matches, timeout, retries });
        }
        Ok(out)
    }
}

impl MatchSpec {
    fn default_name(&self) -> String {
        let path = self.path.as_ref().map_or("/", |p| p.value.as_str());
        match &self.method {
            Some(m) => format!("{} {path}", m.to_ascii_uppercase()),
            None => path.to_owned(),
        }
    }

    fn resolve(&self, at: &str) -> Result<RouteMatch, PolicyError> {
        let method = match &self.method {
            Some(m) if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) => {
                return Err(err(&format!("{at}.method"), format!("{m:?} is not an HTTP method (GET, POST, ...)")));
            }
            m => m.as_ref().map(|m| m.to_ascii_uppercase()),
        };
        let path = match &self.path {
            None => None,
            Some(p) => {
                if !p.value.starts_with('/') || p.value.contains(['?', '#']) || p.value.chars().any(char::is_whitespace)
                {
                    return Err(err(
                        &format!("{at}.path.value"),
                        format!("{:?} is not a path: it starts with / and holds no ?, # or spaces", p.value),
                    ));
                }
                Some(match p.kind {
                    PathMatchType::Exact => PathMatch::Exact(p.value.clone()),
                    PathMatchType::PathPrefix => PathMatch::Prefix(p.value.trim_end_matches('/').to_owned()),
                    PathMatchType::Template => {
                        let mut segments = Vec::new();
                        for seg in p.value.trim_matches('/').split('/').filter(|s| !s.is_empty()) {
                            if seg.starts_with('{') && seg.ends_with('}') && seg.len() > 2 {
                                segments.push(None);
                            } else if seg.contains(['{', '}']) {
                                return Err(err(
                                    &format!("{at}.path.value"),
                                    format!("segment {seg:?}: a parameter is a whole segment, as {{id}}"),
                                ));
                            } else {
                                segments.push(Some(seg.to_owned()));
                            }
                        }
                        PathMatch::Template(segments)
                    }
                })
            }
        };
        let mut headers = Vec::with_capacity(self.headers.len());
        for (k, h) in self.headers.iter().enumerate() {
            if h.name.is_empty()
                || !h.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b))
            {
                return Err(err(&format!("{at}.headers[{k}].name"), format!("{:?} is not a header name", h.name)));
            }
            headers.push((h.name.to_ascii_lowercase(), h.value.clone()));
        }
        Ok(RouteMatch { method, path, headers })
    }
}

impl RetriesSpec {
    fn resolve(&self, at: &str, timeout: Option<Duration>) -> Result<Option<Retries>, PolicyError> {
        if self.attempts > 10 {
            return Err(err(
                &format!("{at}.attempts"),
                format!("{} retries is more than 10; a retry storm is not a policy", self.attempts),
            ));
        }
        let per_try_timeout =
            self.per_try_timeout.map(|t| duration(&format!("{at}.per_try_timeout"), t)).transpose()?;
        if let (Some(per_try), Some(whole)) = (per_try_timeout, timeout)
            && per_try > whole
        {
            return Err(err(
                &format!("{at}.per_try_timeout"),
                format!(
                    "{per_try:?} is longer than the whole-request timeout {whole:?}, which covers all attempts; no try could use it"
                ),
            ));
        }
        let retry_on = self
            .retry_on
            .clone()
            .unwrap_or_else(|| vec![RetryOn::ServerError, RetryOn::ConnectFailure, RetryOn::Reset]);
        let (backoff_base, backoff_max) = match &self.backoff {
            Some(b) => {
                (duration(&format!("{at}.backoff.base"), b.base)?, duration(&format!("{at}.backoff.max"), b.max)?)
            }
            None => (Duration::from_millis(25), Duration::from_millis(250)),
        };
        if backoff_base > backoff_max {
            return Err(err(
                &format!("{at}.backoff"),
                format!("base {backoff_base:?} is longer than max {backoff_max:?}"),
            ));
        }
        let (budget_ratio, budget_min_per_second) = match &self.budget {
            Some(b) => {
                if !(b.ratio >= 0.0 && b.ratio.is_finite()) {
                    return Err(err(
                        &format!("{at}.budget.ratio"),
                        format!("{} must be zero or more (0.2 lets retries add 20%)", b.ratio),
                    ));
                }
                if !(b.min_per_second >= 0.0 && b.min_per_second.is_finite()) {
                    return Err(err(
                        &format!("{at}.budget.min_per_second"),
                        format!("{} must be zero or more", b.min_per_second),
                    ));
                }
                (b.ratio, b.min_per_second)
            }
            None => (0.2, 10.0),
        };
        if self.attempts == 0 {
            return Ok(None);
        }
        Ok(Some(Retries {
            attempts: self.attempts,
            per_try_timeout,
            retry_on,
            backoff_base,
            backoff_max,
            budget_ratio,
            budget_min_per_second,
        }))
    }
}

impl OutlierSpec {
    fn resolve(&self, at: &str) -> Result<OutlierDetection, PolicyError> {
        let consecutive_5xx = self.consecutive_5xx.unwrap_or(5);
        if consecutive_5xx == 0 {
            return Err(err(&format!("{at}.consecutive_5xx"), "must be 1 or more"));
        }
        Ok(OutlierDetection {
            consecutive_5xx,
            interval: self
                .interval
                .map(|t| duration(&format!("{at}.interval"), t))
                .transpose()?
                .unwrap_or(Duration::from_secs(10)),
            base_ejection_time: self
                .base_ejection_time
                .map(|t| duration(&format!("{at}.base_ejection_time"), t))
                .transpose()?
                .unwrap_or(Duration::from_secs(30)),
            max_ejection_percent: percent(
                &format!("{at}.max_ejection_percent"),
                self.max_ejection_percent.unwrap_or(10.0),
            )?,
        })
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
