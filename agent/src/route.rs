//! Where an outbound request goes: the routing table built from the config ([`Routes`]), the
//! version split, load balancing (round robin, or least-request of two random choices), outlier
//! detection (ejection after consecutive 5xx, for a time that grows with each ejection, capped by
//! `max_ejection_percent`) and the retry budget.
//!
//! A reload builds a new table and keeps each endpoint's state (in-flight count, ejection) and each
//! service's budget where the same endpoint or service is still configured, so a reload neither
//! forgets an ejection nor lets a budget start over.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use meshlens_model::Workload;
use meshlens_model::policy::{LoadBalancer, OutlierDetection, Retries, ServicePolicy};

use crate::config::AgentConfig;
use crate::counters::Counters;
use crate::pool::{TlsTarget, Upstream};
use crate::telemetry::{Direction, PeerMetrics, Registry};
use crate::tls::MeshTls;

/// Ejection time stops growing here (Envoy's `max_ejection_time` default).
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// One instance of a service version: the address of its agent.
pub struct Endpoint {
    /// `host:port`.
    pub authority: Arc<str>,
    /// Its connections.
    pub upstream: Arc<Upstream>,
    in_flight: AtomicU64,
    consecutive_5xx: AtomicU32,
    /// Milliseconds since the clock's origin until which the endpoint is ejected; 0 when not.
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
    last_ejection_ms: AtomicU64,
}

impl Endpoint {
    fn new(authority: &str, tls: Option<TlsTarget>) -> Self {
        Self {
            authority: authority.into(),
            upstream: Arc::new(Upstream::with_tls(authority, tls)),
            in_flight: AtomicU64::new(0),
            consecutive_5xx: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            last_ejection_ms: AtomicU64::new(0),
        }
    }

    fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Relaxed) > now_ms
    }

    /// Requests in flight to this endpoint.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }
}

/// Counts a request in flight to an endpoint until dropped.
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    /// The endpoint.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// One version of a service.
pub struct VersionRoute {
    /// Version name.
    pub name: Arc<str>,
    /// Share of the traffic, summing to 1 over the versions.
    pub weight: f64,
    /// Its endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Outbound telemetry towards this version.
    pub metrics: Arc<PeerMetrics>,
}

/// A retry budget (Linkerd's and Finagle's): retries may add `ratio` of the requests of the last
/// ten seconds, plus `min_per_second`. Lock-free, one-second slots.
pub struct Budget {
    slots: [(AtomicU64, AtomicU64, AtomicU64); 10],
}

impl Default for Budget {
    fn default() -> Self {
        Self { slots: std::array::from_fn(|_| (AtomicU64::new(u64::MAX), AtomicU64::new(0), AtomicU64::new(0))) }
    }
}

const BUDGET_WINDOW_S: u64 = 10;

impl Budget {
    fn slot(&self, sec: u64) -> &(AtomicU64, AtomicU64, AtomicU64) {
        let slot = &self.slots[(sec % BUDGET_WINDOW_S) as usize];
        let stamp = slot.0.load(Relaxed);
        if stamp != sec && slot.0.compare_exchange(stamp, sec, Relaxed, Relaxed).is_ok() {
            slot.1.store(0, Relaxed);
            slot.2.store(0, Relaxed);
        }
        slot
    }

    fn totals(&self, sec: u64) -> (u64, u64) {
        let (mut requests, mut retries) = (0, 0);
        for s in &self.slots {
            let stamp = s.0.load(Relaxed);
            if stamp != u64::MAX && stamp + BUDGET_WINDOW_S > sec {
                requests += s.1.load(Relaxed);
                retries += s.2.load(Relaxed);
            }
        }
        (requests, retries)
    }

    /// Counts a request (not a retry).
    pub fn deposit(&self, sec: u64) {
        self.slot(sec).1.fetch_add(1, Relaxed);
    }

    /// Takes a retry if the budget allows it.
    pub fn withdraw(&self, sec: u64, retries: &Retries) -> bool {
        let (requests, used) = self.totals(sec);
        let allowed = retries.budget_ratio * requests as f64 + retries.budget_min_per_second * BUDGET_WINDOW_S as f64;
        if (used as f64) < allowed {
            self.slot(sec).2.fetch_add(1, Relaxed);
            true
        } else {
            false
        }
    }
}

/// One service, as the outbound side routes it.
pub struct Route {
    /// Service name.
    pub name: Arc<str>,
    /// Its namespace.
    pub namespace: String,
    /// Versions with their weights.
    pub versions: Vec<VersionRoute>,
    /// Its policy.
    pub policy: ServicePolicy,
    /// Its retry budget.
    pub budget: Arc<Budget>,
    rr: AtomicUsize,
    all_ejected_warned: AtomicBool,
}

/// Why no endpoint was picked.
#[derive(Debug, PartialEq, Eq)]
pub enum NoEndpoint {
    /// The version has no endpoints configured.
    NoneConfigured(Arc<str>),
    /// Every endpoint of the version is ejected.
    AllEjected(Arc<str>),
}

impl Route {
    /// Picks a version by the split: weighted, random.
    pub fn pick_version(&self) -> &VersionRoute {
        let mut r = fastrand::f64();
        for v in &self.versions {
            if r < v.weight {
                return v;
            }
            r -= v.weight;
        }
        // Rounding left `r` past the last weight; the last version with weight takes it.
        self.versions.iter().rev().find(|v| v.weight > 0.0).unwrap_or(&self.versions[0])
    }

    /// Picks an endpoint of `version` by the load balancer, skipping ejected ones.
    pub fn pick_endpoint(&self, version: &VersionRoute, now_ms: u64) -> Result<InFlight, NoEndpoint> {
        let eps = &version.endpoints;
        if eps.is_empty() {
            return Err(NoEndpoint::NoneConfigured(version.name.clone()));
        }
        let chosen = match self.policy.load_balancer {
            LoadBalancer::RoundRobin => {
                let start = self.rr.fetch_add(1, Relaxed);
                (0..eps.len()).map(|i| &eps[(start + i) % eps.len()]).find(|e| !e.ejected(now_ms))
            }
            LoadBalancer::P2c => {
                let healthy = eps.iter().filter(|e| !e.ejected(now_ms)).count();
                match healthy {
                    0 => None,
                    1 => eps.iter().find(|e| !e.ejected(now_ms)),
                    n => {
                        let a = fastrand::usize(..n);
                        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                        let mut it = eps.iter().filter(|e| !e.ejected(now_ms));
                        let (first, second) = if a < b { (a, b) } else { (b, a) };
                        let x = it.nth(first);
                        let y = it.nth(second - first - 1);
                        match (x, y) {
                            (Some(x), Some(y)) => Some(if y.in_flight() < x.in_flight() { y } else { x }),
                            (x, y) => x.or(y),
                        }
                    }
                }
            }
        };
        match chosen {
            Some(e) => {
                e.in_flight.fetch_add(1, Relaxed);
                Ok(InFlight(e.clone()))
            }
            None => {
                if !self.all_ejected_warned.swap(true, Relaxed) {
                    tracing::warn!(service = %self.name, version = %version.name, "every endpoint is ejected");
                }
                Err(NoEndpoint::AllEjected(version.name.clone()))
            }
        }
    }

    /// Tells outlier detection how an attempt to `endpoint` went: `server_error` for a 5xx or no
    /// response. Returns true when this ejected the endpoint.
    pub fn report(&self, endpoint: &Endpoint, server_error: bool, now_ms: u64, counters: &Counters) -> bool {
        let Some(od) = &self.policy.outlier_detection else { return false };
        if !server_error {
            endpoint.consecutive_5xx.store(0, Relaxed);
            self.decay(endpoint, od, now_ms);
            return false;
        }
        let n = endpoint.consecutive_5xx.fetch_add(1, Relaxed) + 1;
        if n < od.consecutive_5xx || endpoint.ejected(now_ms) {
            return false;
        }
        let total: usize = self.versions.iter().map(|v| v.endpoints.len()).sum();
        let ejected: usize = self.versions.iter().flat_map(|v| &v.endpoints).filter(|e| e.ejected(now_ms)).count();
        // Envoy ejects at least one endpoint whatever the percent says.
        let cap = ((od.max_ejection_percent / 100.0) * total as f64).floor().max(1.0) as usize;
        if ejected >= cap {
            counters.ejections_capped.add(1);
            return false;
        }
        self.decay(endpoint, od, now_ms);
        let times = endpoint.ejections.fetch_add(1, Relaxed) + 1;
        let time = od.base_ejection_time.saturating_mul(times).min(MAX_EJECTION_TIME.max(od.base_ejection_time));
        endpoint.ejected_until_ms.store(now_ms + time.as_millis() as u64, Relaxed);
        endpoint.last_ejection_ms.store(now_ms, Relaxed);
        endpoint.consecutive_5xx.store(0, Relaxed);
        counters.ejections.add(1);
        self.all_ejected_warned.store(false, Relaxed);
        tracing::info!(service = %self.name, endpoint = %endpoint.authority, ejection = times, ?time, "ejected endpoint");
        true
    }

    /// Envoy lowers the ejection multiplier by one for each `interval` an endpoint stays healthy
    /// after its ejection ended.
    fn decay(&self, endpoint: &Endpoint, od: &OutlierDetection, now_ms: u64) {
        let times = endpoint.ejections.load(Relaxed);
        if times == 0 || endpoint.ejected(now_ms) {
            return;
        }
        let since = now_ms.saturating_sub(endpoint.ejected_until_ms.load(Relaxed));
        let steps = (since / od.interval.as_millis().max(1) as u64) as u32;
        if steps > 0 {
            endpoint.ejections.store(times.saturating_sub(steps), Relaxed);
            endpoint.ejected_until_ms.store(now_ms.min(endpoint.ejected_until_ms.load(Relaxed)), Relaxed);
        }
    }
}

/// Every outbound service by name.
pub struct Routes {
    /// By service name.
    pub services: HashMap<String, Arc<Route>>,
    /// The known names, for error messages.
    pub names: String,
}

impl Routes {
    /// Builds the table for `config`, reusing endpoint and budget state from `old`.
    pub fn build(config: &AgentConfig, registry: &Registry, old: Option<&Routes>, tls: Option<&Arc<MeshTls>>) -> Self {
        let mut services = HashMap::new();
        for (name, svc) in &config.services {
            // A name that is no valid TLS server name cannot be reached over mTLS; its requests fail
            // the handshake and say so.
            let target = tls.and_then(|t| {
                crate::tls::server_name(&svc.namespace, name).ok().map(|n| TlsTarget { tls: t.clone(), name: n })
            });
            let old_route = old.and_then(|o| o.services.get(name));
            let find_old = |version: &str, authority: &str| {
                old_route
                    .and_then(|r| r.versions.iter().find(|v| &*v.name == version))
                    .and_then(|v| v.endpoints.iter().find(|e| &*e.authority == authority))
                    .cloned()
            };
            let weights: HashMap<&str, f64> = svc.policy.split.iter().map(|(v, w)| (v.as_str(), *w)).collect();
            let even = 1.0 / svc.versions.len() as f64;
            let versions = svc
                .versions
                .iter()
                .map(|(version, endpoints)| {
                    let workload = Workload {
                        namespace: svc.namespace.clone(),
                        app: name.clone(),
                        version: Some(version.clone()),
                    };
                    VersionRoute {
                        name: version.as_str().into(),
                        weight: if weights.is_empty() {
                            even
                        } else {
                            weights.get(version.as_str()).copied().unwrap_or(0.0)
                        },
                        endpoints: endpoints
                            .iter()
                            .map(|a| find_old(version, a).unwrap_or_else(|| Arc::new(Endpoint::new(a, target.clone()))))
                            .collect(),
                        metrics: registry.peer(Direction::Outbound, &workload.id()),
                    }
                })
                .collect();
            let route = Route {
                name: name.as_str().into(),
                namespace: svc.namespace.clone(),
                versions,
                policy: svc.policy.clone(),
                budget: old_route.map(|r| r.budget.clone()).unwrap_or_default(),
                rr: AtomicUsize::new(0),
                all_ejected_warned: AtomicBool::new(false),
            };
            services.insert(name.clone(), Arc::new(route));
        }
        let names = config.services.keys().cloned().collect::<Vec<_>>().join(", ");
        Self { services, names }
    }

    /// The service a request's host names: the exact name, or its first label when the rest is
    /// the service's namespace (`reviews.shop`, `reviews.shop.svc.cluster.local`).
    pub fn lookup(&self, host: &str) -> Option<&Arc<Route>> {
        if let Some(r) = self.services.get(host) {
            return Some(r);
        }
        let (first, rest) = host.split_once('.')?;
        let r = self.services.get(first)?;
        let ns = rest.split('.').next().unwrap_or("");
        (ns == r.namespace).then_some(r)
    }
}

/// Milliseconds since `origin`, the clock outlier detection runs on.
pub fn now_ms(origin: Instant) -> u64 {
    origin.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(policy: &str) -> (Routes, Registry) {
        let text = format!(
            "workload: {{app: a}}\ninbound: {{listen: '127.0.0.1:0', app: '127.0.0.1:1'}}\nservices:\n  b:\n    versions:\n      v1: ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3', '127.0.0.1:4']\n      v2: ['127.0.0.1:5']\npolicy:\n  services:\n    b: {policy}\n"
        );
        let config = AgentConfig::parse(&text, "t").unwrap();
        let registry = Registry::default();
        (Routes::build(&config, &registry, None, None), registry)
    }

    #[test]
    fn the_split_follows_the_weights() {
        fastrand::seed(1);
        let (r, _) = routes("{split: {v1: 75, v2: 25}}");
        let b = r.lookup("b").unwrap();
        let v2 = (0..10_000).filter(|_| &*b.pick_version().name == "v2").count();
        // Binomial: sd = sqrt(10000 * .25 * .75) = 43; 4 sd.
        assert!((2500i64 - v2 as i64).abs() < 175, "{v2}");
        assert!(r.lookup("b.default.svc.cluster.local").is_some());
        assert!(r.lookup("b.other").is_none());
    }

    #[test]
    fn round_robin_takes_turns_and_p2c_prefers_the_idle() {
        let (r, _) = routes("{load_balancer: round_robin, split: {v1: 1}}");
        let b = r.lookup("b").unwrap();
        let picks: Vec<String> =
            (0..4).map(|_| b.pick_endpoint(&b.versions[0], 0).unwrap().endpoint().authority.to_string()).collect();
        assert_eq!(picks, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]);

        let (r, _) = routes("{load_balancer: p2c}");
        let b = r.lookup("b").unwrap();
        let v1 = &b.versions[0];
        // Three endpoints busy: the idle one wins whenever it is one of the two choices (half the time).
        let busy: Vec<InFlight> = (0..30).map(|i| InFlight(v1.endpoints[i % 3].clone())).collect();
        for e in &v1.endpoints[..3] {
            e.in_flight.fetch_add(10, Relaxed);
        }
        let idle =
            (0..1000).filter(|_| &*b.pick_endpoint(v1, 0).unwrap().endpoint().authority == "127.0.0.1:4").count();
        assert!((400..600).contains(&idle), "{idle}");
        drop(busy);
    }

    #[test]
    fn ejection_grows_is_capped_and_ends() {
        let (r, _) =
            routes("{outlier_detection: {consecutive_5xx: 2, base_ejection_time: 1s, max_ejection_percent: 40}}");
        let b = r.lookup("b").unwrap();
        let c = Counters::default();
        let e1 = b.versions[0].endpoints[0].clone();
        assert!(!b.report(&e1, true, 0, &c));
        assert!(b.report(&e1, true, 0, &c), "second consecutive 5xx ejects");
        assert!(e1.ejected(999) && !e1.ejected(1000));
        // 40% of 5 endpoints is 2.
        let e2 = b.versions[0].endpoints[1].clone();
        let e3 = b.versions[0].endpoints[2].clone();
        b.report(&e2, true, 0, &c);
        assert!(b.report(&e2, true, 0, &c));
        b.report(&e3, true, 0, &c);
        assert!(!b.report(&e3, true, 0, &c), "the cap holds");
        assert_eq!((c.ejections.get(), c.ejections_capped.get()), (2, 1));
        // Back after 1 s; the second ejection lasts 2 s.
        b.report(&e1, true, 1000, &c);
        assert!(b.report(&e1, true, 1000, &c));
        assert!(e1.ejected(2999) && !e1.ejected(3000));
    }

    #[test]
    fn every_endpoint_ejected_is_an_error() {
        let (r, _) = routes("{outlier_detection: {consecutive_5xx: 1, max_ejection_percent: 100}}");
        let b = r.lookup("b").unwrap();
        let c = Counters::default();
        b.report(&b.versions[1].endpoints[0], true, 0, &c);
        assert_eq!(b.pick_endpoint(&b.versions[1], 0).err(), Some(NoEndpoint::AllEjected("v2".into())));
    }

    #[test]
    fn the_budget_caps_retries_at_the_ratio() {
        let retries = Retries {
            attempts: 3,
            per_try_timeout: None,
            retry_on: vec![],
            backoff_base: Duration::ZERO,
            backoff_max: Duration::ZERO,
            budget_ratio: 0.2,
            budget_min_per_second: 0.0,
        };
        let b = Budget::default();
        let mut granted = 0;
        for _ in 0..100 {
            b.deposit(5);
            while b.withdraw(5, &retries) {
                granted += 1;
            }
        }
        assert_eq!(granted, 20);
        // Ten seconds later the window is empty again.
        assert!(!b.withdraw(16, &retries));
    }
}
