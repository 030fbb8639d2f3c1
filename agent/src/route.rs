//! Where an outbound request goes: the routing table built from the config ([`Routes`]), the
//! version split, load balancing (round robin, or least-request of two random choices), outlier
//! detection (ejection after consecutive 5xx, for a time that grows with each ejection, capped by
//! `max_ejection_percent`) and the retry budget.
//!
//! The rules themselves (split pick, ejection, cap, decay, budget) are `meshlens_model::policy_core`,
//! which the simulator runs too; this module holds their state per endpoint and route, on the
//! agent's clock, behind locks held for a few instructions.
//!
//! A reload builds a new table and keeps each endpoint's state (in-flight count, ejection) and each
//! service's budget where the same endpoint or service is still configured, so a reload neither
//! forgets an ejection nor lets a budget start over.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use tokio::time::Instant;

use meshlens_model::Workload;
use meshlens_model::policy::{DEFAULT_ROUTE, LoadBalancer, Retries, ServicePolicy};
use meshlens_model::policy_core::{self, Ejection, Outcome, Reported, RetryBudget};
use parking_lot::Mutex;

use crate::config::AgentConfig;
use crate::counters::Counters;
use crate::discovery::Found;
use crate::pool::{TlsTarget, Upstream};
use crate::telemetry::{Direction, PeerMetrics, Registry, RouteMetrics};
use crate::tls::MeshTls;

/// One instance of a service version: the address of its agent.
pub(crate) struct Endpoint {
    /// `host:port`.
    pub authority: Arc<str>,
    /// Its connections.
    pub upstream: Arc<Upstream>,
    in_flight: AtomicU64,
    /// Outlier detection's state for it (the core's rules).
    ejection: Mutex<Ejection>,
    /// A copy of `ejection.ejected_until_ms`, so picking an endpoint takes no lock.
    ejected_until_ms: AtomicU64,
}

impl Endpoint {
    fn new(authority: &str, tls: Option<TlsTarget>) -> Self {
        Self {
            authority: authority.into(),
            upstream: Arc::new(Upstream::with_tls(authority, tls)),
            in_flight: AtomicU64::new(0),
            ejection: Mutex::new(Ejection::default()),
            ejected_until_ms: AtomicU64::new(0),
        }
    }

    fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Relaxed) > now_ms
    }

    /// Requests in flight to this endpoint.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }
}

/// Counts a request in flight to an endpoint until dropped.
pub(crate) struct InFlight(Arc<Endpoint>);

impl InFlight {
    /// The endpoint.
    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// One version of a service.
pub(crate) struct VersionRoute {
    /// Version name.
    pub name: Arc<str>,
    /// Share of the traffic, summing to 1 over the versions.
    pub weight: f64,
    /// Its endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Outbound telemetry towards this version.
    pub metrics: Arc<PeerMetrics>,
}

/// A retry budget (Linkerd's and Finagle's): the core's [`RetryBudget`] on the agent's clock, one
/// per route (this caller and that service), kept across reloads.
#[derive(Default)]
pub(crate) struct Budget(Mutex<RetryBudget>);

impl Budget {
    /// Counts a request (not a retry) in second `sec`.
    pub(crate) fn deposit(&self, sec: u64) {
        self.0.lock().deposit(sec);
    }

    /// Takes a retry in second `sec` if the budget allows it.
    pub(crate) fn withdraw(&self, sec: u64, retries: &Retries) -> bool {
        self.0.lock().withdraw(sec, retries)
    }
}

/// One service, as the outbound side routes it.
pub(crate) struct Route {
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
    /// Metrics of each declared route in `policy.routes` order, then of `[default]`.
    pub http: Box<[Arc<RouteMetrics>]>,
    rr: AtomicUsize,
    all_ejected_warned: AtomicBool,
}

/// Why no endpoint was picked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoEndpoint {
    /// The version has no endpoints configured.
    NoneConfigured(Arc<str>),
    /// Every endpoint of the version is ejected.
    AllEjected(Arc<str>),
}

/// The declared route a request is, with the timeout and retries it runs under.
pub(crate) struct Plan<'r> {
    /// Whole-request timeout: the route's, else the service's.
    pub timeout: Option<std::time::Duration>,
    /// Retries: the route's, else the service's.
    pub retries: Option<&'r Retries>,
    /// Where the request is counted.
    pub metrics: &'r RouteMetrics,
}

impl Route {
    /// The route a request is and its plan (`policy_core::plan`, the simulator's rule too).
    pub(crate) fn plan<'h>(&self, method: &str, path: &str, header: impl Fn(&str) -> Option<&'h str>) -> Plan<'_> {
        let p = policy_core::plan(&self.policy, method, path, header);
        let metrics = &self.http[p.route.unwrap_or(self.http.len() - 1)];
        Plan { timeout: p.timeout, retries: p.retries, metrics }
    }

    /// Picks a version by the split: weighted, random.
    pub(crate) fn pick_version(&self) -> &VersionRoute {
        let i = policy_core::pick_weighted(self.versions.iter().map(|v| v.weight), fastrand::f64());
        &self.versions[i]
    }

    /// Picks an endpoint of `version` by the load balancer, skipping ejected ones.
    pub(crate) fn pick_endpoint(&self, version: &VersionRoute, now_ms: u64) -> Result<InFlight, NoEndpoint> {
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
                let nth = |k: usize| eps.iter().filter(|e| !e.ejected(now_ms)).nth(k);
                (healthy > 0)
                    .then(|| {
                        let k = policy_core::p2c(healthy, fastrand::f64(), fastrand::f64(), |k| {
                            nth(k).map_or(u64::MAX, |e| e.in_flight())
                        });
                        nth(k)
                    })
                    .flatten()
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

    /// Tells outlier detection how an attempt to `endpoint` went. Returns true when this ejected
    /// the endpoint.
    pub(crate) fn report(&self, endpoint: &Endpoint, outcome: Outcome, now_ms: u64, counters: &Counters) -> bool {
        let Some(od) = &self.policy.outlier_detection else { return false };
        // The cap counts every endpoint of the service, as Envoy's cluster does.
        let total = self.versions.iter().map(|v| v.endpoints.len()).sum();
        // Counted only for a failure: a success never ejects.
        let ejected = if outcome.counts_for_ejection() {
            self.versions.iter().flat_map(|v| &v.endpoints).filter(|e| e.ejected(now_ms)).count()
        } else {
            0
        };
        let mut state = endpoint.ejection.lock();
        let reported = state.report(od, outcome, now_ms, ejected, total);
        endpoint.ejected_until_ms.store(state.ejected_until_ms, Relaxed);
        let times = state.ejections;
        drop(state);
        match reported {
            Reported::Nothing => false,
            Reported::Capped => {
                counters.ejections_capped.add(1);
                false
            }
            Reported::Ejected(time) => {
                counters.ejections.add(1);
                self.all_ejected_warned.store(false, Relaxed);
                tracing::info!(service = %self.name, endpoint = %endpoint.authority, ejection = times, ?time, "ejected endpoint");
                true
            }
        }
    }
}

/// Every outbound service by name.
pub(crate) struct Routes {
    /// By service name.
    pub services: HashMap<String, Arc<Route>>,
    /// The known names, for error messages.
    pub names: String,
}

impl Routes {
    /// Builds the table for `config`, reusing endpoint and budget state from `old`.
    /// A version's endpoints are its static ones, then what its discovery sources found (`found`).
    pub(crate) fn build(
        config: &AgentConfig,
        registry: &Registry,
        old: Option<&Routes>,
        tls: Option<&Arc<MeshTls>>,
        found: &Found,
    ) -> Self {
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
                        cluster: None,
                    };
                    VersionRoute {
                        name: version.as_str().into(),
                        weight: if weights.is_empty() {
                            even
                        } else {
                            weights.get(version.as_str()).copied().unwrap_or(0.0)
                        },
                        endpoints: {
                            let mut all: Vec<&str> = endpoints.iter().map(String::as_str).collect();
                            let discovered: Vec<Arc<[String]>> = svc
                                .sources
                                .iter()
                                .filter(|(v, _)| v == version)
                                .filter_map(|(_, source)| found.get(source))
                                .collect();
                            for eps in &discovered {
                                all.extend(
                                    eps.iter().map(String::as_str).filter(|a| !endpoints.iter().any(|s| s == a)),
                                );
                            }
                            all.dedup();
                            all.iter()
                                .map(|a| {
                                    find_old(version, a).unwrap_or_else(|| Arc::new(Endpoint::new(a, target.clone())))
                                })
                                .collect()
                        },
                        metrics: registry.peer(Direction::Outbound, &workload.id()),
                    }
                })
                .collect();
            let service_id = format!("{}/{name}", svc.namespace);
            let http = svc
                .policy
                .routes
                .iter()
                .map(|r| r.name.as_str())
                .chain([DEFAULT_ROUTE])
                .map(|n| registry.route(&service_id, n))
                .collect();
            let route = Route {
                http,
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
    pub(crate) fn lookup(&self, host: &str) -> Option<&Arc<Route>> {
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
pub(crate) fn now_ms(origin: Instant) -> u64 {
    origin.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn routes(policy: &str) -> (Routes, Registry) {
        let text = format!(
            "workload: {{app: a}}\ninbound: {{listen: '127.0.0.1:0', app: '127.0.0.1:1'}}\nservices:\n  b:\n    versions:\n      v1: ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3', '127.0.0.1:4']\n      v2: ['127.0.0.1:5']\npolicy:\n  services:\n    b: {policy}\n"
        );
        let config = AgentConfig::parse(&text, "t").unwrap();
        let registry = Registry::default();
        (Routes::build(&config, &registry, None, None, &Found::default()), registry)
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
        let fail = Outcome::Status(500);
        let e1 = b.versions[0].endpoints[0].clone();
        assert!(!b.report(&e1, fail, 0, &c));
        assert!(b.report(&e1, fail, 0, &c), "second consecutive 5xx ejects");
        assert!(e1.ejected(999) && !e1.ejected(1000));
        // 40% of 5 endpoints is 2.
        let e2 = b.versions[0].endpoints[1].clone();
        let e3 = b.versions[0].endpoints[2].clone();
        b.report(&e2, fail, 0, &c);
        assert!(b.report(&e2, fail, 0, &c));
        b.report(&e3, fail, 0, &c);
        assert!(!b.report(&e3, fail, 0, &c), "the cap holds");
        assert_eq!((c.ejections.get(), c.ejections_capped.get()), (2, 1));
        // Back after 1 s; the second ejection lasts 2 s.
        b.report(&e1, fail, 1000, &c);
        assert!(b.report(&e1, fail, 1000, &c));
        assert!(e1.ejected(2999) && !e1.ejected(3000));
    }

    /// Discovery changes a version's endpoints: one still listed keeps its ejection (and its
    /// connections), a new one starts healthy, one removed and listed again starts over.
    #[test]
    fn endpoint_state_follows_discovery_changes() {
        let text = "workload: {app: a}\ninbound: {listen: '127.0.0.1:0', app: '127.0.0.1:1'}\nservices:\n  b:\n    \
                    versions:\n      v1: ['127.0.0.1:1', {file: /eps}]\npolicy:\n  services:\n    \
                    b: {outlier_detection: {consecutive_5xx: 1, base_ejection_time: 10s, max_ejection_percent: 100}}\n";
        let config = AgentConfig::parse(text, "t").unwrap();
        let (registry, found, c) = (Registry::default(), Found::default(), Counters::default());
        let source = crate::discovery::Source::File("/eps".into());
        let list = |r: &Routes| -> Vec<String> {
            r.lookup("b").unwrap().versions[0].endpoints.iter().map(|e| e.authority.to_string()).collect()
        };
        let before = Routes::build(&config, &registry, None, None, &found);
        assert_eq!(list(&before), ["127.0.0.1:1"], "nothing found yet: the static endpoint only");
        found.set_for_test(&source, &["10.0.0.1:80", "10.0.0.2:80"]);
        let r1 = Routes::build(&config, &registry, Some(&before), None, &found);
        assert_eq!(list(&r1), ["127.0.0.1:1", "10.0.0.1:80", "10.0.0.2:80"]);
        let b1 = r1.lookup("b").unwrap();
        let ejected = b1.versions[0].endpoints[1].clone();
        assert!(b1.report(&ejected, Outcome::Status(503), 0, &c));
        // 10.0.0.2 goes, 10.0.0.3 comes: 10.0.0.1 is the same endpoint, still ejected.
        found.set_for_test(&source, &["10.0.0.1:80", "10.0.0.3:80"]);
        let r2 = Routes::build(&config, &registry, Some(&r1), None, &found);
        assert_eq!(list(&r2), ["127.0.0.1:1", "10.0.0.1:80", "10.0.0.3:80"]);
        let eps = &r2.lookup("b").unwrap().versions[0].endpoints;
        assert!(Arc::ptr_eq(&eps[1], &ejected) && eps[1].ejected(5_000), "kept with its state");
        assert!(!eps[2].ejected(0), "a new endpoint starts healthy");
        // Gone, then back: its state was dropped with it.
        found.set_for_test(&source, &["10.0.0.3:80"]);
        let r3 = Routes::build(&config, &registry, Some(&r2), None, &found);
        found.set_for_test(&source, &["10.0.0.1:80", "10.0.0.3:80"]);
        let r4 = Routes::build(&config, &registry, Some(&r3), None, &found);
        let back = &r4.lookup("b").unwrap().versions[0].endpoints[1];
        assert_eq!(&*back.authority, "10.0.0.1:80");
        assert!(!back.ejected(5_000) && !Arc::ptr_eq(back, &ejected));
    }

    #[test]
    fn every_endpoint_ejected_is_an_error() {
        let (r, _) = routes("{outlier_detection: {consecutive_5xx: 1, max_ejection_percent: 100}}");
        let b = r.lookup("b").unwrap();
        let c = Counters::default();
        b.report(&b.versions[1].endpoints[0], Outcome::Reset, 0, &c);
        assert_eq!(b.pick_endpoint(&b.versions[1], 0).err(), Some(NoEndpoint::AllEjected("v2".into())));
    }

    /// The core's ejection table, through the agent's endpoints: a config with the case's versions
    /// and endpoints, each step reported on the endpoint it names.
    #[test]
    fn the_shared_ejection_table_holds_for_the_agent() {
        for case in policy_core::cases::ejections() {
            let od = &case.od;
            let mut port = 0;
            let versions: String = case
                .versions
                .iter()
                .enumerate()
                .map(|(v, n)| {
                    let eps: Vec<String> = (0..*n)
                        .map(|_| {
                            port += 1;
                            format!("'127.0.0.1:{port}'")
                        })
                        .collect();
                    format!("      v{v}: [{}]\n", eps.join(", "))
                })
                .collect();
            let text = format!(
                "workload: {{app: a}}\ninbound: {{listen: '127.0.0.1:0', app: '127.0.0.1:1'}}\nservices:\n  b:\n    versions:\n{versions}policy:\n  services:\n    b: {{outlier_detection: {{consecutive_5xx: {}, interval: {}ms, base_ejection_time: {}ms, max_ejection_percent: {}}}}}\n",
                od.consecutive_5xx,
                od.interval.as_millis(),
                od.base_ejection_time.as_millis(),
                od.max_ejection_percent
            );
            let config = AgentConfig::parse(&text, "t").unwrap();
            let routes = Routes::build(&config, &Registry::default(), None, None, &Found::default());
            let b = routes.lookup("b").unwrap();
            let endpoints: Vec<Arc<Endpoint>> = b.versions.iter().flat_map(|v| v.endpoints.clone()).collect();
            let c = Counters::default();
            for (i, step) in case.steps.iter().enumerate() {
                let (ejections, capped) = (c.ejections.get(), c.ejections_capped.get());
                let ejected = b.report(&endpoints[step.endpoint], step.outcome, step.at_ms, &c);
                let got = match (ejected, c.ejections_capped.get() > capped) {
                    (true, _) => Reported::Ejected(Duration::ZERO),
                    (false, true) => Reported::Capped,
                    (false, false) => Reported::Nothing,
                };
                let want = match step.expect {
                    Reported::Ejected(t) => {
                        assert!(
                            endpoints[step.endpoint].ejected(step.at_ms + t.as_millis() as u64 - 1),
                            "{}: step {i}",
                            case.name
                        );
                        assert!(
                            !endpoints[step.endpoint].ejected(step.at_ms + t.as_millis() as u64),
                            "{}: step {i}",
                            case.name
                        );
                        Reported::Ejected(Duration::ZERO)
                    }
                    other => other,
                };
                assert_eq!(got, want, "{}: step {i} {step:?}", case.name);
                assert_eq!(c.ejections.get() - ejections, u64::from(ejected));
            }
        }
    }
}
