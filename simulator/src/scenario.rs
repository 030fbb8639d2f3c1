//! Scenario files: services with versions (concurrency, service time, error share, the calls they
//! make), arrivals at an entry service, and the policy block the agent reads too. Plain serde
//! structs, then [`Scenario::resolve`] checks every value and names the field of what is wrong.

use std::collections::BTreeMap;
use std::time::Duration;

use meshlens_model::policy::{CallSpec, PolicyFile, ServicePolicy};
use meshlens_model::time::parse_duration;
use serde::Deserialize;

/// A scenario as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Simulated time.
    pub duration: String,
    /// Arrivals at the entry service.
    pub arrivals: ArrivalsSpec,
    /// The service users call.
    pub entry: String,
    /// Services by name.
    pub services: BTreeMap<String, ServiceSpec>,
    /// The policy (`meshlens_model::policy`'s schema).
    #[serde(default)]
    pub policy: PolicyFile,
    /// A canary plan (read by `--canary`; see [`crate::canary`]).
    pub canary: Option<serde_yaml_ng::Value>,
    /// Faults that start and stop.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// What the mesh adds to every request a version serves, inside its callers' timeouts: the
    /// agents on the way and the app's own timer granularity; 0 when absent. `meshlens fidelity`
    /// measures it on the real agents.
    pub request_overhead: Option<String>,
    /// Timers (service times, timeouts, backoff, fault delays) end on ticks of this granularity,
    /// as a 1 ms timer wheel (tokio's, Envoy's) makes them; exact when absent.
    pub timer_granularity: Option<String>,
}

/// A fault as written: a service (or one version) fails a share of its requests and/or slows
/// down between two times.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// The service.
    pub service: String,
    /// One version; all when absent.
    pub version: Option<String>,
    /// When the fault starts (a duration from the scenario's start).
    pub from: String,
    /// When it ends.
    pub to: String,
    /// Percent of requests failed meanwhile.
    #[serde(default)]
    pub error_pct: f64,
    /// Added to every request's service time meanwhile.
    pub delay: Option<String>,
}

/// A resolved fault.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// Service index.
    pub service: usize,
    /// Version index; all when `None`.
    pub version: Option<usize>,
    /// Start, seconds.
    pub from: f64,
    /// End, seconds.
    pub to: f64,
    /// Failure probability meanwhile.
    pub error_p: f64,
    /// Seconds added meanwhile.
    pub delay: f64,
}

/// Arrivals as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrivalsSpec {
    /// Requests per second.
    pub rate: f64,
    /// `poisson` (default) or `constant`.
    pub process: Option<String>,
    /// Periods of another rate: `[{from: 30s, to: 40s, rate: 300}]`.
    #[serde(default)]
    pub spikes: Vec<SpikeSpec>,
    /// Linear changes of rate: `[{from: 0s, to: 60s, from_rate: 10, to_rate: 100}]`.
    #[serde(default)]
    pub ramps: Vec<RampSpec>,
    /// A recorded arrival log: a file with one arrival time (seconds from the start) per line,
    /// relative to the scenario file. Replaces the rate.
    pub replay: Option<String>,
}

/// A linear ramp of the arrival rate, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RampSpec {
    /// When the ramp starts (a duration from the scenario's start).
    pub from: String,
    /// When it ends.
    pub to: String,
    /// Rate at the start.
    pub from_rate: f64,
    /// Rate at the end.
    pub to_rate: f64,
}

/// A period of another arrival rate, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpikeSpec {
    /// When the spike starts (a duration from the scenario's start).
    pub from: String,
    /// When it ends.
    pub to: String,
    /// Requests per second meanwhile.
    pub rate: f64,
}

/// A service as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Its versions.
    pub versions: BTreeMap<String, VersionSpec>,
}

/// A version as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionSpec {
    /// Requests served at once per instance; more wait in the instance's FIFO queue. 1,000,000
    /// when absent.
    pub concurrency: Option<usize>,
    /// Instances (endpoints) the load balancer spreads requests over; 1 when absent.
    pub instances: Option<usize>,
    /// The time of its own work.
    pub service_time: TimeSpec,
    /// Percent of requests it fails by itself.
    #[serde(default)]
    pub error_pct: f64,
    /// Services it calls, one after another, after its own work: a name (the request `GET /NAME`)
    /// or `{service, method, path, headers}`, which meets the service's routes as the agent matches them.
    #[serde(default)]
    pub calls: Vec<CallSpec>,
    /// Make the calls all at once and go on when the last one answers.
    #[serde(default)]
    pub parallel: bool,
}

/// A service-time distribution as written: exactly one of the three.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSpec {
    /// Always this.
    pub constant: Option<String>,
    /// Exponential with this mean.
    pub exponential: Option<String>,
    /// Lognormal with these percentiles.
    pub lognormal: Option<LognormalSpec>,
    /// An empirical histogram: `[[10ms, 60], [20ms, 30], [200ms, 10]]` (value, weight).
    pub empirical: Option<Vec<(String, f64)>>,
}

/// A lognormal distribution as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LognormalSpec {
    /// Median (a duration).
    pub p50: String,
    /// 99th percentile.
    pub p99: String,
}

/// A resolved distribution, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dist {
    /// Always this many seconds.
    Constant(f64),
    /// Exponential with this mean, seconds.
    Exponential(f64),
    /// ln-space mean and sigma.
    Lognormal(f64, f64),
    /// Index into [`Scenario::tables`].
    Empirical(usize),
}

/// A resolved version.
#[derive(Clone, Debug, PartialEq)]
pub struct Version {
    /// The version's name.
    pub name: String,
    /// Concurrency per instance.
    pub concurrency: usize,
    /// Instances (replicas) serving it.
    pub instances: usize,
    /// Service time.
    pub dist: Dist,
    /// Failure probability.
    pub error_p: f64,
    /// Called services, by index.
    pub calls: Vec<usize>,
    /// The request of each call (its method, path and headers pick the callee's route).
    pub requests: Vec<CallSpec>,
    /// The calls are made at once.
    pub parallel: bool,
}

/// A resolved service.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// The service's name.
    pub name: String,
    /// Its versions.
    pub versions: Vec<Version>,
    /// Its policy (as a callee).
    pub policy: ServicePolicy,
}

/// A resolved scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Seconds simulated.
    pub duration: f64,
    /// Requests per second.
    pub rate: f64,
    /// Poisson (else constant).
    pub poisson: bool,
    /// `(from, to, rate)` periods of another rate.
    pub spikes: Vec<(f64, f64, f64)>,
    /// `(from, to, from_rate, to_rate)` linear ramps.
    pub ramps: Vec<(f64, f64, f64, f64)>,
    /// Recorded arrival times (seconds), ascending; when given, they are the arrivals.
    pub replay: Vec<f64>,
    /// Faults over time.
    pub faults: Vec<Fault>,
    /// Empirical distributions: (cumulative share, seconds), ascending.
    pub tables: Vec<Vec<(f64, f64)>>,
    /// Entry service index.
    pub entry: usize,
    /// Seconds added to every request a version serves.
    pub overhead: f64,
    /// Seconds between timer ticks; 0 for exact timers.
    pub timer_granularity: f64,
    /// The services, the entry among them.
    pub services: Vec<Service>,
}

/// A scenario that cannot be run: the file, the field, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ScenarioError {
    /// The file.
    pub origin: String,
    /// What and where.
    pub message: String,
}

fn secs(path: &str, t: &str) -> Result<f64, String> {
    let d: Duration = parse_duration(t).map_err(|e| format!("{path}: {e}"))?;
    Ok(d.as_secs_f64())
}

impl Scenario {
    /// The fault on version `v` of service `s` at time `t`: (failure probability, added seconds).
    pub fn fault_at(&self, s: usize, v: usize, t: f64) -> (f64, f64) {
        self.faults
            .iter()
            .filter(|f| f.service == s && f.version.is_none_or(|x| x == v) && t >= f.from && t < f.to)
            .fold((0.0, 0.0), |(e, d), f| (e.max(f.error_p), d + f.delay))
    }

    /// The arrival rate at time `t`: a spike's, else a ramp's, else the base rate.
    pub fn rate_at(&self, t: f64) -> f64 {
        if let Some(s) = self.spikes.iter().find(|(a, b, _)| t >= *a && t < *b) {
            return s.2;
        }
        if let Some((a, b, r0, r1)) = self.ramps.iter().find(|(a, b, _, _)| t >= *a && t < *b) {
            return (r0 + (r1 - r0) * (t - a) / (b - a)).max(1e-3);
        }
        self.rate
    }

    /// The highest arrival rate at any time.
    pub fn max_rate(&self) -> f64 {
        self.spikes.iter().map(|s| s.2).chain(self.ramps.iter().flat_map(|r| [r.2, r.3])).fold(self.rate, f64::max)
    }

    /// Reads a scenario file, with its replay log if it names one (relative to the file).
    pub fn load(path: &std::path::Path) -> Result<Self, ScenarioError> {
        let origin = path.display().to_string();
        let err = |message: String| ScenarioError { origin: origin.clone(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("reading: {e}")))?;
        let (file, mut sc) = Self::parse_file(&text, &origin)?;
        if let Some(log) = &file.arrivals.replay {
            let log_path = path.parent().unwrap_or(std::path::Path::new(".")).join(log);
            let body = std::fs::read_to_string(&log_path)
                .map_err(|e| err(format!("arrivals.replay: reading {}: {e}", log_path.display())))?;
            let mut times = Vec::new();
            for (i, line) in body.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let t: f64 = line.trim().parse().map_err(|_| {
                    err(format!(
                        "arrivals.replay: {} line {}: {:?} is not a time in seconds",
                        log_path.display(),
                        i + 1,
                        line
                    ))
                })?;
                times.push(t);
            }
            times.sort_by(f64::total_cmp);
            sc.replay = times;
        }
        Ok(sc)
    }

    /// Parses and checks a scenario; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        Self::parse_file(text, origin).map(|(_, sc)| sc)
    }

    /// Parses once: the file as written (for what [`Scenario::load`] reads beside it) and the
    /// checked scenario.
    fn parse_file(text: &str, origin: &str) -> Result<(ScenarioFile, Self), ScenarioError> {
        let err = |message: String| ScenarioError { origin: origin.to_owned(), message };
        let file: ScenarioFile = serde_yaml_ng::from_str(text).map_err(|e| err(e.to_string()))?;
        let sc = file.resolve().map_err(|message| {
            // Checks after parsing name the field by its path; add the line it is on.
            let path = message.split(':').next().unwrap_or("");
            match line_of(text, path) {
                Some(line) => err(format!("line {line}: {message}")),
                None => err(message),
            }
        })?;
        Ok((file, sc))
    }
}

impl ScenarioFile {
    fn resolve(&self) -> Result<Scenario, String> {
        let duration = secs("duration", &self.duration)?;
        if duration <= 0.0 {
            return Err("duration: must be longer than zero".into());
        }
        if !(self.arrivals.rate > 0.0 && self.arrivals.rate.is_finite()) {
            return Err(format!("arrivals.rate: {} must be more than 0 requests a second", self.arrivals.rate));
        }
        let poisson = match self.arrivals.process.as_deref() {
            None | Some("poisson") => true,
            Some("constant") => false,
            Some(o) => return Err(format!("arrivals.process: unknown {o:?}: expected poisson or constant")),
        };
        let names: Vec<&String> = self.services.keys().collect();
        let index = |n: &str| names.iter().position(|k| k.as_str() == n);
        let entry = index(&self.entry).ok_or_else(|| format!("entry: no service {:?} under services", self.entry))?;
        let policies = self.policy.resolve().map_err(|e| format!("policy.{e}"))?;
        for name in policies.services.keys() {
            if index(name).is_none() {
                return Err(format!("policy.services.{name}: no such service under services"));
            }
        }
        let mut services = Vec::new();
        let mut tables = Vec::new();
        for (name, spec) in &self.services {
            if spec.versions.is_empty() {
                return Err(format!("services.{name}.versions: needs at least one version"));
            }
            let mut versions = Vec::new();
            for (vname, v) in &spec.versions {
                let at = format!("services.{name}.versions.{vname}");
                let st = &v.service_time;
                let dist = match (&st.constant, &st.exponential, &st.lognormal, &st.empirical) {
                    (None, None, None, Some(points)) => {
                        let total: f64 = points.iter().map(|p| p.1).sum();
                        let bad_weight = points.iter().any(|p| p.1.is_nan() || p.1 < 0.0);
                        if points.is_empty() || total.is_nan() || total <= 0.0 || bad_weight {
                            return Err(format!(
                                "{at}.service_time.empirical: needs [value, weight] pairs with weights above 0"
                            ));
                        }
                        let mut acc = 0.0;
                        let mut table = Vec::new();
                        for (i, (value, w)) in points.iter().enumerate() {
                            acc += w / total;
                            table.push((acc, secs(&format!("{at}.service_time.empirical[{i}]"), value)?));
                        }
                        tables.push(table);
                        Dist::Empirical(tables.len() - 1)
                    }
                    (Some(t), None, None, None) => Dist::Constant(secs(&format!("{at}.service_time.constant"), t)?),
                    (None, Some(t), None, None) => {
                        Dist::Exponential(secs(&format!("{at}.service_time.exponential"), t)?)
                    }
                    (None, None, Some(LognormalSpec { p50, p99 }), None) => {
                        let (m, q) = (
                            secs(&format!("{at}.service_time.lognormal.p50"), p50)?,
                            secs(&format!("{at}.service_time.lognormal.p99"), p99)?,
                        );
                        if !(m > 0.0 && q > m) {
                            return Err(format!(
                                "{at}.service_time.lognormal: p99 must be longer than p50, and p50 above 0"
                            ));
                        }
                        // z(0.99) = 2.326.
                        Dist::Lognormal(m.ln(), (q / m).ln() / 2.326_347_874)
                    }
                    _ => {
                        return Err(format!(
                            "{at}.service_time: give exactly one of constant, exponential, lognormal {{p50, p99}} or empirical"
                        ));
                    }
                };
                if !(0.0..=100.0).contains(&v.error_pct) {
                    return Err(format!("{at}.error_pct: {} is not a percent between 0 and 100", v.error_pct));
                }
                let concurrency = v.concurrency.unwrap_or(1_000_000);
                if concurrency == 0 {
                    return Err(format!("{at}.concurrency: must be 1 or more"));
                }
                let instances = v.instances.unwrap_or(1);
                if !(1..=1000).contains(&instances) {
                    return Err(format!("{at}.instances: {instances} is outside 1..=1000"));
                }
                let mut calls = Vec::new();
                for (i, c) in v.calls.iter().enumerate() {
                    let name = c.service();
                    calls.push(
                        index(name).ok_or_else(|| format!("{at}.calls[{i}]: no service {name:?} under services"))?,
                    );
                    c.check().map_err(|e| format!("{at}.calls[{i}]: {e}"))?;
                }
                versions.push(Version {
                    name: vname.clone(),
                    concurrency,
                    instances,
                    dist,
                    error_p: v.error_pct / 100.0,
                    calls,
                    requests: v.calls.clone(),
                    parallel: v.parallel,
                });
            }
            let policy = policies.services.get(name).cloned().unwrap_or_default();
            for (v, _) in &policy.split {
                if !spec.versions.contains_key(v) {
                    return Err(format!("policy.services.{name}.split.{v}: {name} has no version {v:?}"));
                }
            }
            services.push(Service { name: name.clone(), versions, policy });
        }
        let mut spikes = Vec::new();
        for (i, sp) in self.arrivals.spikes.iter().enumerate() {
            let at = format!("arrivals.spikes[{i}]");
            let (from, to) = (secs(&format!("{at}.from"), &sp.from)?, secs(&format!("{at}.to"), &sp.to)?);
            if from >= to || !(sp.rate > 0.0 && sp.rate.is_finite()) {
                return Err(format!("{at}: needs from < to and a rate above 0"));
            }
            spikes.push((from, to, sp.rate));
        }
        let mut ramps = Vec::new();
        for (i, r) in self.arrivals.ramps.iter().enumerate() {
            let at = format!("arrivals.ramps[{i}]");
            let (from, to) = (secs(&format!("{at}.from"), &r.from)?, secs(&format!("{at}.to"), &r.to)?);
            if from >= to || r.from_rate < 0.0 || r.to_rate < 0.0 || r.from_rate.max(r.to_rate) <= 0.0 {
                return Err(format!("{at}: needs from < to and rates of 0 or more, not both 0"));
            }
            ramps.push((from, to, r.from_rate, r.to_rate));
        }
        let mut faults = Vec::new();
        for (i, f) in self.faults.iter().enumerate() {
            let at = format!("faults[{i}]");
            let service = index(&f.service).ok_or_else(|| format!("{at}.service: no service {:?}", f.service))?;
            let version = match &f.version {
                None => None,
                Some(v) => Some(
                    services[service]
                        .versions
                        .iter()
                        .position(|x: &Version| &x.name == v)
                        .ok_or_else(|| format!("{at}.version: {} has no version {v:?}", f.service))?,
                ),
            };
            let (from, to) = (secs(&format!("{at}.from"), &f.from)?, secs(&format!("{at}.to"), &f.to)?);
            if from >= to {
                return Err(format!("{at}: from must come before to"));
            }
            if !(0.0..=100.0).contains(&f.error_pct) {
                return Err(format!("{at}.error_pct: {} is not a percent", f.error_pct));
            }
            let delay = f.delay.as_deref().map(|d| secs(&format!("{at}.delay"), d)).transpose()?.unwrap_or(0.0);
            faults.push(Fault { service, version, from, to, error_p: f.error_pct / 100.0, delay });
        }
        let overhead =
            self.request_overhead.as_deref().map(|h| secs("request_overhead", h)).transpose()?.unwrap_or(0.0);
        let timer_granularity =
            self.timer_granularity.as_deref().map(|h| secs("timer_granularity", h)).transpose()?.unwrap_or(0.0);
        Ok(Scenario {
            overhead,
            timer_granularity,
            duration,
            rate: self.arrivals.rate,
            poisson,
            spikes,
            ramps,
            replay: Vec::new(),
            faults,
            tables,
            entry,
            services,
        })
    }
}

impl Scenario {
    /// A scenario from a running collector's traffic profile, simulated for `duration` seconds:
    /// one service per app (`ns/app`), versions split by their observed rates, each version's own
    /// service time as a lognormal of the profile's p50 and p99, its own error share (what its
    /// callees' failures do not explain: the simulator propagates those itself), and its calls
    /// (first attempts per request to each callee app, summed over its versions, rounded); users
    /// arrive (Poisson) at the app that receives the most user traffic. No policy: add one with [`Scenario::with_policy`].
    pub fn from_profile(p: &meshlens_model::api::Profile, duration: f64) -> Result<Self, ScenarioError> {
        let err = |message: String| ScenarioError { origin: "the collector's profile".into(), message };
        let mut apps: Vec<String> = p.versions.iter().map(|v| format!("{}/{}", v.namespace, v.app)).collect();
        apps.sort();
        apps.dedup();
        let app_of = |id: &str| id.rsplit_once('/').map(|(a, _)| a.to_owned()).unwrap_or_default();
        let mut services = Vec::new();
        for app in &apps {
            let mut versions = Vec::new();
            let mut split = Vec::new();
            let total: f64 =
                p.versions.iter().filter(|v| format!("{}/{}", v.namespace, v.app) == *app).map(|v| v.rps).sum();
            for v in p.versions.iter().filter(|v| format!("{}/{}", v.namespace, v.app) == *app) {
                let id = format!("{app}/{}", v.version);
                // Calls per request to each callee app, summed over its versions (the split picks
                // the version), then rounded: productpage's third of a call to each of three
                // reviews versions is one call to reviews.
                let mut per_app: Vec<(usize, f64)> = Vec::new();
                for e in p.edges.iter().filter(|e| e.source == id) {
                    let Some(k) = apps.iter().position(|a| *a == app_of(&e.target)) else { continue };
                    match per_app.iter_mut().find(|(a, _)| *a == k) {
                        Some((_, n)) => *n += e.calls_per_request,
                        None => per_app.push((k, e.calls_per_request)),
                    }
                }
                let mut calls = Vec::new();
                for (k, n) in per_app {
                    calls.extend(std::iter::repeat_n(k, (n.round() as usize).min(20)));
                }
                let requests = calls.iter().map(|&k| CallSpec::Service(apps[k].clone())).collect();
                let (m, q) = (v.service_p50_ms / 1e3, v.service_p99_ms.max(v.service_p50_ms * 1.01) / 1e3);
                versions.push(Version {
                    name: v.version.clone(),
                    concurrency: 1_000_000,
                    instances: 1,
                    dist: Dist::Lognormal(m.max(1e-6).ln(), (q / m.max(1e-6)).ln() / 2.326_347_874),
                    error_p: (v.own_error_pct / 100.0).clamp(0.0, 1.0),
                    calls,
                    requests,
                    parallel: false,
                });
                if total > 0.0 {
                    split.push((v.version.clone(), v.rps / total));
                }
            }
            let policy =
                ServicePolicy { split: if versions.len() > 1 { split } else { Vec::new() }, ..Default::default() };
            services.push(Service { name: app.clone(), versions, policy });
        }
        let mut by_users: Vec<(usize, f64)> = apps
            .iter()
            .enumerate()
            .map(|(i, a)| {
                (i, p.versions.iter().filter(|v| format!("{}/{}", v.namespace, v.app) == *a).map(|v| v.user_rps).sum())
            })
            .collect();
        by_users.sort_by(|a, b| b.1.total_cmp(&a.1));
        let (entry, rate) = by_users
            .first()
            .copied()
            .filter(|(_, r)| *r > 0.0)
            .ok_or_else(|| err("no user traffic in the profile: nothing to replay".into()))?;
        Ok(Scenario {
            overhead: 0.0,
            timer_granularity: 0.0,
            duration,
            rate,
            poisson: true,
            spikes: Vec::new(),
            ramps: Vec::new(),
            replay: Vec::new(),
            faults: Vec::new(),
            tables: Vec::new(),
            entry,
            services,
        })
    }

    /// Replaces the policies of the services a policy file names: meshlens's schema (`policy:` or
    /// bare `services:`, or any file with a `policy:` block) or Istio's VirtualService and
    /// DestinationRule documents. Returns what could not be carried over, each naming where.
    pub fn with_policy(&mut self, text: &str, origin: &str) -> Result<Vec<String>, ScenarioError> {
        let input = crate::policy_input::read_policy(text, origin)?;
        self.apply_policy(&input.policy, origin)?;
        Ok(input.warnings)
    }

    /// Replaces the policies of the services `policy` names.
    pub fn apply_policy(&mut self, policy: &PolicyFile, origin: &str) -> Result<(), ScenarioError> {
        let err = |message: String| ScenarioError { origin: origin.to_owned(), message };
        let resolved = policy.resolve().map_err(|e| err(format!("policy.{e}")))?;
        for (name, sp) in resolved.services {
            let svc = self
                .services
                .iter_mut()
                .find(|s| s.name == name || s.name.rsplit_once('/').is_some_and(|(_, app)| app == name))
                .ok_or_else(|| err(format!("policy.services.{name}: no such service in the scenario")))?;
            for (v, _) in &sp.split {
                if !svc.versions.iter().any(|x| &x.name == v) {
                    return Err(err(format!("policy.services.{name}.split.{v}: {name} has no version {v:?}")));
                }
            }
            svc.policy = sp;
        }
        Ok(())
    }
}

/// One step of a field path: a mapping key, or a sequence index (`spikes[0]`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next().filter(|k| !k.is_empty()) {
            out.push(Seg::Key(key.to_owned()));
        }
        for idx in pieces {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

/// Every parse event with where it starts.
struct Events(Vec<(yaml_rust2::Event, yaml_rust2::scanner::Marker)>);

impl yaml_rust2::parser::MarkedEventReceiver for Events {
    fn on_event(&mut self, ev: yaml_rust2::Event, mark: yaml_rust2::scanner::Marker) {
        self.0.push((ev, mark));
    }
}

/// The line (1-based) of the field at a dotted path (`services.b.versions.v1.latency`,
/// `arrivals.spikes[0].rate`), read from the YAML's own structure (a parser's events and their
/// positions), so a key of the same name elsewhere is never taken for it; when the field itself is
/// not written, the line of its nearest written parent.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    use yaml_rust2::Event;
    let want = segments(path);
    if want.is_empty() {
        return None;
    }
    let mut events = Events(Vec::new());
    yaml_rust2::parser::Parser::new_from_str(text).load(&mut events, false).ok()?;
    // Per open container: a mapping waiting for a key (`None`) or holding the key of its value, or
    // a sequence with the index of its next item.
    enum Frame {
        Map(Option<String>),
        Seq(usize),
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut best: Option<(usize, usize)> = None; // (depth matched, line)
    let here = |stack: &[Frame]| -> Vec<Seg> {
        stack
            .iter()
            .filter_map(|f| match f {
                Frame::Map(Some(k)) => Some(Seg::Key(k.clone())),
                Frame::Seq(i) => Some(Seg::Index(*i)),
                Frame::Map(None) => None,
            })
            .collect()
    };
    let mut note = |at: &[Seg], line: usize| {
        let depth = at.len();
        if depth <= want.len() && want[..depth] == *at && best.is_none_or(|(d, _)| depth > d) {
            best = Some((depth, line));
        }
    };
    for (ev, mark) in events.0 {
        // A node in a sequence is its next item.
        let item =
            matches!(ev, Event::Scalar(..) | Event::MappingStart(..) | Event::SequenceStart(..) | Event::Alias(_));
        if item && let Some(Frame::Seq(_)) = stack.last() {
            note(&here(&stack), mark.line());
        }
        match ev {
            Event::Scalar(value, ..) if matches!(stack.last(), Some(Frame::Map(None))) => {
                if let Some(Frame::Map(key)) = stack.last_mut() {
                    *key = Some(value);
                }
                note(&here(&stack), mark.line());
                continue;
            }
            Event::MappingStart(..) => {
                stack.push(Frame::Map(None));
                continue;
            }
            Event::SequenceStart(..) => {
                stack.push(Frame::Seq(0));
                continue;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            _ => {}
        }
        // A value (scalar, alias, or a container just closed) ends: the parent moves on.
        if matches!(ev, Event::Scalar(..) | Event::Alias(_) | Event::MappingEnd | Event::SequenceEnd) {
            match stack.last_mut() {
                Some(Frame::Map(key)) => *key = None,
                Some(Frame::Seq(i)) => *i += 1,
                None => {}
            }
        }
    }
    best.map(|(_, line)| line)
}

#[cfg(test)]
mod fuzz_tests {
    use super::Scenario;

    /// Fuzz test, bounded by count: mutants of the example scenarios parse to a scenario or a
    /// `ScenarioError` with its line, never a panic.
    #[test]
    fn mutated_scenarios_never_panic() {
        let seeds = [
            include_str!("../../examples/sim/canary.yaml"),
            include_str!("../../examples/sim/retry-storm.yaml"),
            include_str!("../../examples/sim/budget.yaml"),
            include_str!("../../examples/fidelity/split-outlier.yaml"),
        ];
        let ok = meshlens_model::mutate::count_parsed(&seeds, 5, 5_000, |t| Scenario::parse(t, "fuzz.yaml").is_ok());
        assert!(ok > 0 && ok < 5_000, "{ok} of the mutants parse");
    }
}

#[cfg(test)]
mod line_tests {
    use super::line_of;

    #[test]
    fn lines_follow_the_structure_not_the_first_key_of_that_name() {
        let text = "services:\n  a:\n    versions:\n      v1: {latency: 1ms, calls: [b]}\n  b:\n    versions:\n      v1:\n        latency: 2ms\narrivals:\n  spikes:\n    - {at: 1s, rate: 5}\n    - at: 2s\n      rate: 9\n";
        assert_eq!(line_of(text, "services.b.versions.v1.latency"), Some(8), "b's, not a's on line 4");
        assert_eq!(line_of(text, "services.a.versions.v1.latency"), Some(4), "inside a flow mapping");
        assert_eq!(line_of(text, "arrivals.spikes[1].rate"), Some(13));
        assert_eq!(line_of(text, "arrivals.spikes[0]"), Some(11));
        assert_eq!(line_of(text, "services.b.versions.v1.error_pct"), Some(7), "not written: its parent's line");
        assert_eq!(line_of(text, "services.a.versions.v1.calls[0]"), Some(4));
        // a's v1 writes no error_pct and no service_time: its own line, not b's `latency` below.
        assert_eq!(line_of(text, "services.a.versions.v1.service_time"), Some(4));
        let b_later = text.replace("latency: 2ms", "service_time: 2ms");
        assert_eq!(line_of(&b_later, "services.a.versions.v1.service_time"), Some(4), "not b's on line 8");
        assert_eq!(line_of(text, "nowhere.at.all"), None);
        assert_eq!(line_of("a: [unclosed", "a"), None, "a file that does not parse has no lines");
    }
}
