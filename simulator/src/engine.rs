//! The discrete-event engine: virtual time, a seeded RNG, a binary-heap event queue, and slabs of
//! jobs (one attempt at one version) and calls (one caller's request to a service, with its
//! attempts), reused through free lists so steady-state events allocate nothing.
//!
//! A job waits for one of its version's `concurrency` slots (FIFO), does its own work (the service
//! time), fails with the version's error share (answering 500), then makes its calls one after
//! another, holding its slot throughout (as a thread-per-request server does); a failed call makes
//! it answer 503, as the demo's apps do. Faults (from the scenario) raise a version's failure share
//! and add to its service time while they last. A version has `instances`, each with its own slots
//! and queue; the load balancer (round robin, or p2c on busy plus queued) picks one.
//!
//! A call follows the agent's policy through `meshlens_model::policy_core`, in the agent's order:
//! the budget deposit, the policy's fault delay, the fault abort (final), then per attempt a version
//! by the split and an instance, skipping those outlier detection ejected; a version with every
//! instance ejected answers `proxy_503` at once, unretried. An attempt's outcome class feeds outlier
//! detection (the cap over every instance of the service, the multiplier decaying per `interval`),
//! and is retried when `retry_on` names its class, after full-jitter backoff, while attempts, the
//! budget (one per calling instance and callee, as each agent keeps one per route) and the whole
//! timeout allow. An attempt abandoned by a timeout keeps its callee busy until it finishes, which
//! is how retries and timeouts overload a service; the callee counts it `cancelled`, and its late
//! answer is not the call's.

use meshlens_model::rng::SplitMix64;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use hdrhistogram::Histogram;
use meshlens_model::policy_core::{self, Ejection, Outcome, Reported, RetryBudget, RoutePlan};

use crate::scenario::{Dist, Scenario};

/// A small, fast, seedable RNG: the model's SplitMix64, with the simulator's distributions.
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator seeded with `seed`; the same seed gives the same run.
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }

    #[inline]
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn f64(&mut self) -> f64 {
        self.0.f64()
    }

    /// Exponential with `mean`, by the ziggurat (rand_distr's `Exp1`): a table look-up and a
    /// compare on nearly every draw, where inverting the CDF takes a logarithm each time.
    fn exp(&mut self, mean: f64) -> f64 {
        let e: f64 = rand_distr::Distribution::sample(&rand_distr::Exp1, self);
        mean * e
    }

    fn normal(&mut self) -> f64 {
        rand_distr::Distribution::sample(&rand_distr::StandardNormal, self)
    }

    fn sample(&mut self, d: Dist, tables: &[Vec<(f64, f64)>]) -> f64 {
        match d {
            Dist::Constant(v) => v,
            Dist::Exponential(m) => self.exp(m),
            Dist::Lognormal(mu, sigma) => (mu + sigma * self.normal()).exp(),
            Dist::Empirical(i) => {
                let Some(t) = tables.get(i) else { return 0.0 };
                let u = self.f64();
                let k = t.partition_point(|(c, _)| *c < u).min(t.len().saturating_sub(1));
                t.get(k).map_or(0.0, |p| p.1)
            }
        }
    }
}

impl rand_core::RngCore for Rng {
    fn next_u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.next()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Counters and latency of one version (as a callee) or of the users' requests.
pub struct Tally {
    /// Attempts that arrived.
    pub offered: u64,
    /// Attempts that succeeded.
    pub ok: u64,
    /// Failed (an error, or a call it made failed).
    pub failed: u64,
    /// Latency in microseconds of finished attempts.
    pub latency: Histogram<u64>,
    /// Attempts to it that timed out at the caller.
    pub timeouts: u64,
    /// Retries sent to it.
    pub retries: u64,
    /// Retries to it the budget refused.
    pub budget_denied: u64,
    /// Instances of it ejected by outlier detection.
    pub ejections: u64,
    /// Attempts its callers abandoned (a timeout) before it answered.
    pub cancelled: u64,
    /// Attempts the caller's proxy answered 503 itself because every instance was ejected.
    pub proxy_503: u64,
    /// Requests the policy's fault block aborted before they were sent (counted on the version
    /// the split picked, as the agent records them).
    pub aborted: u64,
}

impl Tally {
    // 1 µs to ~3 h, 3 significant digits: constant bounds hdrhistogram always accepts.
    #[allow(clippy::expect_used)]
    fn new() -> Self {
        Self {
            offered: 0,
            ok: 0,
            failed: 0,
            latency: Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid constant bounds"),
            timeouts: 0,
            retries: 0,
            budget_denied: 0,
            ejections: 0,
            cancelled: 0,
            proxy_503: 0,
            aborted: 0,
        }
    }

    fn record(&mut self, seconds: f64) {
        let _ = self.latency.record((seconds * 1e6).max(1.0) as u64);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival,
    ServiceDone(u32, u32),
    TryTimeout(u32, u32, u32),
    WholeTimeout(u32, u32),
    Backoff(u32, u32),
    FaultDelayDone(u32, u32),
}

#[derive(Clone, Copy)]
struct Job {
    generation: u32,
    version: usize,
    /// The call this attempt belongs to (`u32::MAX` for a user's request).
    call: u32,
    call_gen: u32,
    arrived: f64,
    next_call: usize,
    /// Calls still out (parallel calls).
    pending: u32,
    /// What it answers: 200, 500 (its own error) or 503 (a call failed).
    status: u16,
    instance: u32,
}

#[derive(Clone, Copy)]
struct Call<'a> {
    generation: u32,
    /// The job that makes it.
    parent: u32,
    parent_gen: u32,
    service: usize,
    attempt: u32,
    child: u32,
    child_gen: u32,
    child_version: usize,
    child_instance: u32,
    /// An attempt is out (not in backoff or a fault delay).
    in_flight: bool,
    /// The caller's retry budget for this callee (index into `budgets`).
    budget: u32,
    /// The timeout and retries of the callee's route this call's request matched.
    plan: RoutePlan<'a>,
    done: bool,
}

/// One instance of a version: its slots, queue, and outlier-detection state.
struct Instance {
    busy: usize,
    queue: VecDeque<u32>,
    ejection: Ejection,
}

struct VersionState<'a> {
    instances: Vec<Instance>,
    rr: usize,
    /// Where this version's instances' budgets start in `budgets`, and its distinct callees.
    budget_base: usize,
    callees: Vec<usize>,
    /// Each call's plan: its request matched against the callee's routes, as the agent plans it.
    plans: Vec<RoutePlan<'a>>,
}

/// Virtual time in milliseconds, the clock outlier detection runs on.
fn ms(t: f64) -> u64 {
    (t * 1000.0) as u64
}

/// A simulation run.
pub struct Sim<'a> {
    sc: &'a Scenario,
    rng: Rng,
    now: f64,
    seq: u64,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    /// The one pending arrival `(ticks, seq)`, kept out of the heap: half of all events are
    /// arrivals, and each has exactly one successor.
    next_arrival: Option<(u64, u64)>,
    jobs: Vec<Job>,
    free_jobs: Vec<u32>,
    calls: Vec<Call<'a>>,
    free_calls: Vec<u32>,
    versions: Vec<Vec<VersionState<'a>>>,
    /// Split weights by version index, per service.
    weights: Vec<Vec<f64>>,
    budgets: Vec<RetryBudget>,
    /// Per service, per version.
    pub tallies: Vec<Vec<Tally>>,
    /// The users' requests.
    pub root: Tally,
    /// The users' requests by the 10-second period they arrived in: (succeeded, failed).
    pub timeline: Vec<(u64, u64)>,
    /// Events processed.
    pub events_processed: u64,
    replayed: usize,
}

fn ticks(t: f64) -> u64 {
    (t * 1e9) as u64
}

impl<'a> Sim<'a> {
    /// A run of `sc` with `seed`.
    pub fn new(sc: &'a Scenario, seed: u64) -> Self {
        Self {
            sc,
            rng: Rng::new(seed),
            now: 0.0,
            seq: 0,
            events: BinaryHeap::with_capacity(1024),
            next_arrival: None,
            jobs: Vec::with_capacity(1024),
            free_jobs: Vec::new(),
            calls: Vec::with_capacity(1024),
            free_calls: Vec::new(),
            versions: Vec::new(),
            weights: sc
                .services
                .iter()
                .map(|svc| {
                    let n = svc.versions.len();
                    if svc.policy.split.is_empty() {
                        return vec![1.0 / n as f64; n];
                    }
                    svc.versions
                        .iter()
                        .map(|v| svc.policy.split.iter().find(|(name, _)| *name == v.name).map_or(0.0, |(_, w)| *w))
                        .collect()
                })
                .collect(),
            budgets: Vec::new(),
            tallies: sc.services.iter().map(|s| s.versions.iter().map(|_| Tally::new()).collect()).collect(),
            root: Tally::new(),
            timeline: vec![(0, 0); (sc.duration / 10.0).ceil() as usize + 1],
            events_processed: 0,
            replayed: 0,
        }
    }

    /// Instances with their outlier state, and one retry budget per calling instance and callee.
    fn build_state(&mut self) {
        let mut budgets = 0;
        let sc = self.sc;
        self.versions = sc
            .services
            .iter()
            .map(|svc| {
                svc.versions
                    .iter()
                    .map(|v| {
                        let mut callees = v.calls.clone();
                        callees.sort_unstable();
                        callees.dedup();
                        let budget_base = budgets;
                        budgets += callees.len() * v.instances;
                        let plans = v
                            .calls
                            .iter()
                            .enumerate()
                            .map(|(k, &callee)| {
                                let policy = &sc.services[callee].policy;
                                match v.requests.get(k) {
                                    Some(r) => policy_core::plan(policy, &r.method(), &r.path(), |h| r.header(h)),
                                    None => policy_core::plan(
                                        policy,
                                        "GET",
                                        &format!("/{}", sc.services[callee].name),
                                        |_| None,
                                    ),
                                }
                            })
                            .collect();
                        VersionState {
                            instances: (0..v.instances)
                                .map(|_| Instance { busy: 0, queue: VecDeque::new(), ejection: Ejection::default() })
                                .collect(),
                            rr: 0,
                            budget_base,
                            callees,
                            plans,
                        }
                    })
                    .collect()
            })
            .collect();
        self.budgets = vec![RetryBudget::default(); budgets];
    }

    /// Schedules what a timer ends: at `t`, or at the first tick of the scenario's timer
    /// granularity at or after it, as tokio's 1 ms timer wheel fires sleeps and timeouts.
    fn at_timer(&mut self, t: f64, ev: Ev) {
        let g = self.sc.timer_granularity;
        let t = if g > 0.0 { (t / g - 1e-9).ceil() * g } else { t };
        self.at(t, ev);
    }

    fn at(&mut self, t: f64, ev: Ev) {
        self.seq += 1;
        if ev == Ev::Arrival {
            self.next_arrival = Some((ticks(t), self.seq));
        } else {
            self.events.push(Reverse((ticks(t), self.seq, ev)));
        }
    }

    /// Runs to the scenario's duration, then lets what is in flight finish.
    pub fn run(mut self) -> Self {
        self.build_state();
        let first = self.sc.replay.first().copied().unwrap_or(0.0);
        self.at(first, Ev::Arrival);
        while let Some((t, ev)) = self.next_event() {
            self.now = t as f64 / 1e9;
            self.events_processed += 1;
            match ev {
                Ev::Arrival => {
                    if self.now < self.sc.duration {
                        if self.sc.replay.is_empty() {
                            let next = if self.sc.poisson {
                                // Thinning (Lewis and Shedler): candidates at the highest rate,
                                // each kept with the rate at its time over that maximum.
                                let max = self.sc.max_rate();
                                let mut t = self.now;
                                loop {
                                    t += self.rng.exp(1.0 / max);
                                    if t >= self.sc.duration || self.rng.f64() * max <= self.sc.rate_at(t) {
                                        break t;
                                    }
                                }
                            } else {
                                self.now + 1.0 / self.sc.rate_at(self.now)
                            };
                            self.at(next, Ev::Arrival);
                        } else {
                            // The recorded log: the next arrival is the next recorded time.
                            self.replayed += 1;
                            if let Some(&t) = self.sc.replay.get(self.replayed) {
                                self.at(t.max(self.now), Ev::Arrival);
                            }
                        }
                        // The users have no agent: no policy, and no ejection stops them.
                        let v = self.pick_version(self.sc.entry);
                        let i = self.pick_instance(self.sc.entry, v, false).unwrap_or(0);
                        self.root.offered += 1;
                        self.tallies[self.sc.entry][v].offered += 1;
                        self.start_job(self.sc.entry, v, i, u32::MAX, 0);
                    }
                }
                Ev::ServiceDone(j, g) => {
                    if self.jobs[j as usize].generation == g {
                        let job = self.jobs[j as usize];
                        let (s, v) = self.locate(job.version);
                        let p = self.sc.services[s].versions[v].error_p.max(self.sc.fault_at(s, v, self.now).0);
                        if self.rng.f64() < p {
                            self.jobs[j as usize].status = 500;
                            self.finish_job(j);
                        } else {
                            self.next_call(j);
                        }
                    }
                }
                Ev::TryTimeout(c, g, attempt) => {
                    let call = self.calls[c as usize];
                    if call.generation == g && !call.done && call.attempt == attempt && call.in_flight {
                        self.tallies[call.service][call.child_version].timeouts += 1;
                        self.abandon(c);
                        self.attempt_done(c, Outcome::Timeout);
                    }
                }
                Ev::WholeTimeout(c, g) => {
                    let call = self.calls[c as usize];
                    if call.generation == g && !call.done {
                        self.tallies[call.service][call.child_version].timeouts += 1;
                        if call.in_flight {
                            self.abandon(c);
                            self.outlier(
                                call.service,
                                call.child_version,
                                call.child_instance as usize,
                                Outcome::Timeout,
                            );
                        }
                        self.call_done(c, Outcome::Timeout);
                    }
                }
                Ev::Backoff(c, g) => {
                    if self.calls[c as usize].generation == g && !self.calls[c as usize].done {
                        self.send_attempt(c);
                    }
                }
                Ev::FaultDelayDone(c, g) => {
                    if self.calls[c as usize].generation == g && !self.calls[c as usize].done {
                        self.after_fault_delay(c);
                    }
                }
            }
        }
        self
    }

    /// The earliest event, the pending arrival or the heap's first, in (time, sequence) order.
    fn next_event(&mut self) -> Option<(u64, Ev)> {
        let heap = self.events.peek().map(|Reverse((t, seq, _))| (*t, *seq));
        match (self.next_arrival, heap) {
            (Some(a), h) if h.is_none_or(|h| a < h) => {
                self.next_arrival = None;
                Some((a.0, Ev::Arrival))
            }
            _ => self.events.pop().map(|Reverse((t, _, ev))| (t, ev)),
        }
    }

    /// Versions are numbered across services: `service * 4096 + version`.
    fn locate(&self, packed: usize) -> (usize, usize) {
        (packed / 4096, packed % 4096)
    }

    fn pick_version(&mut self, service: usize) -> usize {
        policy_core::pick_weighted(self.weights[service].iter().copied(), self.rng.f64())
    }

    fn alloc_job(&mut self, job: Job) -> (u32, u32) {
        match self.free_jobs.pop() {
            Some(i) => {
                let generation = self.jobs[i as usize].generation.wrapping_add(1);
                self.jobs[i as usize] = Job { generation, ..job };
                (i, generation)
            }
            None => {
                self.jobs.push(Job { generation: 0, ..job });
                ((self.jobs.len() - 1) as u32, 0)
            }
        }
    }

    fn start_job(&mut self, service: usize, v: usize, i: usize, call: u32, call_gen: u32) -> (u32, u32) {
        let job = Job {
            generation: 0,
            version: service * 4096 + v,
            call,
            call_gen,
            arrived: self.now,
            next_call: 0,
            pending: 0,
            status: 200,
            instance: i as u32,
        };
        let (j, g) = self.alloc_job(job);
        let conc = self.sc.services[service].versions[v].concurrency;
        let st = &mut self.versions[service][v].instances[i];
        if st.busy < conc {
            st.busy += 1;
            self.begin_service(j);
        } else {
            st.queue.push_back(j);
        }
        (j, g)
    }

    /// An instance by the service's load balancer, skipping ejected ones when `honour_ejection`;
    /// `None` when every instance is ejected (the agent answers 503 then).
    fn pick_instance(&mut self, s: usize, v: usize, honour_ejection: bool) -> Option<usize> {
        let now = ms(self.now);
        let st = &mut self.versions[s][v];
        let n = st.instances.len();
        let usable = |x: &Instance| !honour_ejection || !x.ejection.is_ejected(now);
        // No allocation: the k-th of the usable instances, counted in place.
        let count = st.instances.iter().filter(|x| usable(x)).count();
        if count == 0 {
            return None;
        }
        if n == 1 {
            return Some(0);
        }
        let nth = |st: &VersionState, k: usize| {
            st.instances.iter().enumerate().filter(|(_, x)| usable(x)).nth(k).map_or(0, |(i, _)| i)
        };
        Some(match self.sc.services[s].policy.load_balancer {
            meshlens_model::policy::LoadBalancer::RoundRobin => {
                st.rr = st.rr.wrapping_add(1);
                nth(st, st.rr % count)
            }
            meshlens_model::policy::LoadBalancer::P2c => {
                let (r1, r2) = (self.rng.f64(), self.rng.f64());
                let load = |i: usize| (st.instances[i].busy + st.instances[i].queue.len()) as u64;
                nth(st, meshlens_model::policy_core::p2c(count, r1, r2, |k| load(nth(st, k))))
            }
        })
    }

    /// Outlier detection (the policy core) on an attempt's outcome at instance `i` of version `v`
    /// of `s`; the cap counts every instance of the service.
    fn outlier(&mut self, s: usize, v: usize, i: usize, outcome: Outcome) {
        let sc = self.sc;
        let Some(od) = &sc.services[s].policy.outlier_detection else { return };
        let now = ms(self.now);
        let vs = &mut self.versions[s];
        let total: usize = vs.iter().map(|x| x.instances.len()).sum();
        let ejected = if outcome.counts_for_ejection() {
            vs.iter().flat_map(|x| &x.instances).filter(|x| x.ejection.is_ejected(now)).count()
        } else {
            0
        };
        if let Reported::Ejected(_) = vs[v].instances[i].ejection.report(od, outcome, now, ejected, total) {
            self.tallies[s][v].ejections += 1;
        }
    }

    /// The attempt out on call `c` no longer counts: its callee's answer, when it comes, is
    /// `cancelled`.
    fn abandon(&mut self, c: u32) {
        let call = &mut self.calls[c as usize];
        call.in_flight = false;
        call.child = u32::MAX;
    }

    fn begin_service(&mut self, j: u32) {
        let (s, v) = self.locate(self.jobs[j as usize].version);
        let d = self.rng.sample(self.sc.services[s].versions[v].dist, &self.sc.tables)
            + self.sc.fault_at(s, v, self.now).1
            + self.sc.overhead;
        let g = self.jobs[j as usize].generation;
        self.at_timer(self.now + d, Ev::ServiceDone(j, g));
    }

    fn next_call(&mut self, j: u32) {
        let job = self.jobs[j as usize];
        let (s, v) = self.locate(job.version);
        let version = &self.sc.services[s].versions[v];
        let n = version.calls.len();
        if version.parallel {
            if job.next_call == 0 && n > 0 && job.status < 500 {
                // Fan out: every call at once; the job goes on when the last one is done.
                self.jobs[j as usize].next_call = n;
                self.jobs[j as usize].pending = n as u32;
                for k in 0..n {
                    self.open_call(j, k);
                }
            } else if job.pending == 0 {
                self.finish_job(j);
            }
            return;
        }
        if job.status >= 500 || job.next_call >= n {
            self.finish_job(j);
            return;
        }
        self.jobs[j as usize].next_call += 1;
        self.open_call(j, job.next_call);
    }

    /// Opens the `k`th call of job `j`'s version.
    fn open_call(&mut self, j: u32, k: usize) {
        let parent = self.jobs[j as usize];
        let (ps, pv) = self.locate(parent.version);
        let callee = self.sc.services[ps].versions[pv].calls[k];
        let st = &self.versions[ps][pv];
        let plan = st.plans[k];
        let slot = st.callees.iter().position(|&x| x == callee).unwrap_or(0);
        let budget = st.budget_base + parent.instance as usize * st.callees.len() + slot;
        let call = Call {
            generation: 0,
            parent: j,
            parent_gen: parent.generation,
            service: callee,
            attempt: 0,
            child: u32::MAX,
            child_gen: 0,
            child_version: 0,
            child_instance: 0,
            in_flight: false,
            budget: budget as u32,
            plan,
            done: false,
        };
        let (c, g) = match self.free_calls.pop() {
            Some(i) => {
                let generation = self.calls[i as usize].generation.wrapping_add(1);
                self.calls[i as usize] = Call { generation, ..call };
                (i, generation)
            }
            None => {
                self.calls.push(call);
                ((self.calls.len() - 1) as u32, 0)
            }
        };
        let sc = self.sc;
        let policy = &sc.services[callee].policy;
        // The agent deposits for a request that may be retried (one budget per service, whatever its route).
        if plan.retries.is_some()
            && let Some(b) = self.budgets.get_mut(budget)
        {
            b.deposit(self.now as u64);
        }
        if let Some(t) = plan.timeout {
            self.at_timer(self.now + t.as_secs_f64(), Ev::WholeTimeout(c, g));
        }
        if let Some((delay, p)) = policy.faults.delay
            && self.rng.f64() < p
        {
            self.at_timer(self.now + delay.as_secs_f64(), Ev::FaultDelayDone(c, g));
            return;
        }
        self.after_fault_delay(c);
    }

    /// The fault abort (final, never retried), else the first attempt.
    fn after_fault_delay(&mut self, c: u32) {
        let service = self.calls[c as usize].service;
        if let Some((status, p)) = self.sc.services[service].policy.faults.abort
            && self.rng.f64() < p
        {
            let v = self.pick_version(service);
            self.tallies[service][v].aborted += 1;
            self.call_done(c, Outcome::Status(status));
            return;
        }
        self.send_attempt(c);
    }

    fn send_attempt(&mut self, c: u32) {
        let call = self.calls[c as usize];
        let v = self.pick_version(call.service);
        let Some(i) = self.pick_instance(call.service, v, true) else {
            self.tallies[call.service][v].proxy_503 += 1;
            self.call_done(c, Outcome::Proxy503);
            return;
        };
        self.tallies[call.service][v].offered += 1;
        if call.attempt > 0 {
            self.tallies[call.service][v].retries += 1;
        }
        let (child, child_gen) = self.start_job(call.service, v, i, c, call.generation);
        let call = &mut self.calls[c as usize];
        call.child = child;
        call.child_gen = child_gen;
        call.child_version = v;
        call.child_instance = i as u32;
        call.in_flight = true;
        let (g, attempt) = (call.generation, call.attempt);
        if let Some(t) = call.plan.retries.and_then(|r| r.per_try_timeout) {
            self.at_timer(self.now + t.as_secs_f64(), Ev::TryTimeout(c, g, attempt));
        }
    }

    /// An attempt of call `c` ended with `outcome`: outlier detection hears of it, then it is
    /// retried if the policy retries its class and attempts and the budget allow, else the call ends.
    fn attempt_done(&mut self, c: u32, outcome: Outcome) {
        let call = self.calls[c as usize];
        self.outlier(call.service, call.child_version, call.child_instance as usize, outcome);
        let Some(r) = call.plan.retries else {
            self.call_done(c, outcome);
            return;
        };
        if call.attempt >= r.attempts || !policy_core::retriable(&r.retry_on, outcome) {
            self.call_done(c, outcome);
            return;
        }
        let granted = self.budgets.get_mut(call.budget as usize).is_some_and(|b| b.withdraw(self.now as u64, r));
        if !granted {
            self.tallies[call.service][call.child_version].budget_denied += 1;
            self.call_done(c, outcome);
            return;
        }
        self.calls[c as usize].attempt += 1;
        let pause = policy_core::backoff(r, call.attempt, self.rng.f64()).as_secs_f64();
        self.at_timer(self.now + pause, Ev::Backoff(c, call.generation));
    }

    fn call_done(&mut self, c: u32, outcome: Outcome) {
        let call = self.calls[c as usize];
        self.calls[c as usize].done = true;
        self.free_calls.push(c);
        let parent = &mut self.jobs[call.parent as usize];
        if parent.generation != call.parent_gen {
            return;
        }
        if outcome.is_failure() {
            parent.status = 503;
        }
        parent.pending = parent.pending.saturating_sub(1);
        self.next_call(call.parent);
    }

    fn finish_job(&mut self, j: u32) {
        let job = self.jobs[j as usize];
        let (s, v) = self.locate(job.version);
        let latency = self.now - job.arrived;
        let failed = job.status >= 500;
        // A callee's answer counts only while its caller still waits for it.
        let awaited = job.call == u32::MAX || {
            let call = self.calls[job.call as usize];
            call.generation == job.call_gen && !call.done && call.child == j && call.child_gen == job.generation
        };
        let t = &mut self.tallies[s][v];
        if !awaited {
            t.cancelled += 1;
        } else if failed {
            t.failed += 1;
        } else {
            t.ok += 1;
        }
        if awaited {
            t.record(latency);
        }
        // The slot goes to the next in line.
        let st = &mut self.versions[s][v].instances[job.instance as usize];
        match st.queue.pop_front() {
            Some(next) => {
                self.jobs[next as usize].arrived = self.jobs[next as usize].arrived.min(self.now);
                self.begin_service(next);
            }
            None => st.busy -= 1,
        }
        self.jobs[j as usize].generation = self.jobs[j as usize].generation.wrapping_add(1);
        self.free_jobs.push(j);
        if job.call == u32::MAX {
            if let Some(slot) = self.timeline.get_mut((job.arrived / 10.0) as usize) {
                if failed {
                    slot.1 += 1;
                } else {
                    slot.0 += 1;
                }
            }
            if failed {
                self.root.failed += 1
            } else {
                self.root.ok += 1
            }
            self.root.record(latency);
            return;
        }
        if !awaited {
            return;
        }
        self.calls[job.call as usize].in_flight = false;
        self.attempt_done(job.call, Outcome::Status(job.status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlens_model::policy_core::cases;

    /// The core's ejection table through the simulator's instances: a service whose versions have
    /// the case's instances, each step reported on the instance it names at its time.
    #[test]
    fn the_shared_ejection_table_holds_for_the_simulator() {
        for case in cases::ejections() {
            let od = &case.od;
            let versions: String = case
                .versions
                .iter()
                .enumerate()
                .map(|(v, n)| format!("      v{v}: {{instances: {n}, service_time: {{constant: 1ms}}}}\n"))
                .collect();
            let text = format!(
                "duration: 1s\narrivals: {{rate: 1}}\nentry: b\nservices:\n  b:\n    versions:\n{versions}policy:\n  services:\n    b: {{outlier_detection: {{consecutive_5xx: {}, interval: {}ms, base_ejection_time: {}ms, max_ejection_percent: {}}}}}\n",
                od.consecutive_5xx,
                od.interval.as_millis(),
                od.base_ejection_time.as_millis(),
                od.max_ejection_percent
            );
            let sc = Scenario::parse(&text, "t.yaml").unwrap();
            let mut sim = Sim::new(&sc, 1);
            sim.build_state();
            let at: Vec<(usize, usize)> =
                case.versions.iter().enumerate().flat_map(|(v, n)| (0..*n).map(move |i| (v, i))).collect();
            for (k, step) in case.steps.iter().enumerate() {
                let (v, i) = at[step.endpoint];
                sim.now = step.at_ms as f64 / 1000.0;
                let before = sim.tallies[0][v].ejections;
                sim.outlier(0, v, i, step.outcome);
                let ejected = sim.tallies[0][v].ejections - before;
                let e = sim.versions[0][v].instances[i].ejection;
                match step.expect {
                    Reported::Ejected(t) => {
                        assert_eq!(ejected, 1, "{}: step {k}", case.name);
                        assert_eq!(e.ejected_until_ms, step.at_ms + t.as_millis() as u64, "{}: step {k}", case.name);
                    }
                    _ => assert_eq!(ejected, 0, "{}: step {k} {step:?}", case.name),
                }
            }
        }
    }
}
