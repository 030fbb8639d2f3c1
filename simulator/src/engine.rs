//! The discrete-event engine: virtual time, a seeded RNG, a binary-heap event queue, and slabs of
//! jobs (one attempt at one version) and calls (one caller's request to a service, with its
//! attempts), reused through free lists so steady-state events allocate nothing.
//!
//! A job waits for one of its version's `concurrency` slots (FIFO), does its own work (the service
//! time), fails with the version's error share, then makes its calls one after another, holding its
//! slot throughout (as a thread-per-request server does). A call follows the agent's policy: a
//! version by the split, a per-try timeout within the whole timeout, and on a failure or timeout a
//! retry after full-jitter backoff while attempts and the retry budget allow. An abandoned attempt
//! keeps its callee busy until it finishes, which is how retries and timeouts overload a service.
//! Faults (from the scenario) raise a version's failure share and add to its service time while
//! they last. A version has `instances`, each with its own slots and queue; the load balancer (round
//! robin, or p2c on busy plus queued) picks one, skipping instances outlier detection ejected.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use hdrhistogram::Histogram;

use crate::scenario::{Dist, Scenario};

/// A small, fast, seedable RNG (SplitMix64).
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).ln()
    }

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.f64().max(1e-300), self.f64());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
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

/// Counters and latency of one version (as a callee) or of the users' requests.
pub struct Tally {
    /// Attempts that arrived.
    pub offered: u64,
    /// Succeeded.
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
    failed: bool,
    instance: u32,
}

#[derive(Clone, Copy)]
struct Call {
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
    done: bool,
}

/// One instance of a version: its slots, queue, and outlier-detection state.
struct Instance {
    busy: usize,
    queue: VecDeque<u32>,
    consecutive: u32,
    ejected_until: f64,
    ejections: u32,
}

struct VersionState {
    instances: Vec<Instance>,
    rr: usize,
}

/// Retry budget: the last 10 s of requests and retries in one-second slots.
#[derive(Clone, Copy, Default)]
struct Budget {
    slots: [(i64, f64, f64); 10],
}

impl Budget {
    fn slot(&mut self, sec: i64) -> &mut (i64, f64, f64) {
        let s = &mut self.slots[(sec.rem_euclid(10)) as usize];
        if s.0 != sec {
            *s = (sec, 0.0, 0.0);
        }
        s
    }

    fn allows(&mut self, sec: i64, ratio: f64, min_per_second: f64) -> bool {
        let (mut req, mut ret) = (0.0, 0.0);
        for s in &self.slots {
            if s.0 > sec - 10 {
                req += s.1;
                ret += s.2;
            }
        }
        if ret < ratio * req + min_per_second * 10.0 {
            self.slot(sec).2 += 1.0;
            true
        } else {
            false
        }
    }
}

/// A simulation run.
pub struct Sim<'a> {
    sc: &'a Scenario,
    rng: Rng,
    now: f64,
    seq: u64,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    jobs: Vec<Job>,
    free_jobs: Vec<u32>,
    calls: Vec<Call>,
    free_calls: Vec<u32>,
    versions: Vec<Vec<VersionState>>,
    budgets: Vec<Budget>,
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
            jobs: Vec::with_capacity(1024),
            free_jobs: Vec::new(),
            calls: Vec::with_capacity(1024),
            free_calls: Vec::new(),
            versions: sc
                .services
                .iter()
                .map(|s| {
                    s.versions
                        .iter()
                        .map(|v| VersionState {
                            instances: (0..v.instances)
                                .map(|_| Instance {
                                    busy: 0,
                                    queue: VecDeque::new(),
                                    consecutive: 0,
                                    ejected_until: 0.0,
                                    ejections: 0,
                                })
                                .collect(),
                            rr: 0,
                        })
                        .collect()
                })
                .collect(),
            budgets: vec![Budget::default(); sc.services.len()],
            tallies: sc.services.iter().map(|s| s.versions.iter().map(|_| Tally::new()).collect()).collect(),
            root: Tally::new(),
            timeline: vec![(0, 0); (sc.duration / 10.0).ceil() as usize + 1],
            events_processed: 0,
            replayed: 0,
        }
    }

    fn at(&mut self, t: f64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((ticks(t), self.seq, ev)));
    }

    /// Runs to the scenario's duration, then lets what is in flight finish.
    pub fn run(mut self) -> Self {
        let first = self.sc.replay.first().copied().unwrap_or(0.0);
        self.at(first, Ev::Arrival);
        while let Some(Reverse((t, _, ev))) = self.events.pop() {
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
                        let v = self.pick_version(self.sc.entry);
                        self.root.offered += 1;
                        self.tallies[self.sc.entry][v].offered += 1;
                        self.start_job(self.sc.entry, v, u32::MAX, 0);
                    }
                }
                Ev::ServiceDone(j, g) => {
                    if self.jobs[j as usize].generation == g {
                        let job = self.jobs[j as usize];
                        let (s, v) = self.locate(job.version);
                        let p = self.sc.services[s].versions[v].error_p.max(self.sc.fault_at(s, v, self.now).0);
                        if self.rng.f64() < p {
                            self.jobs[j as usize].failed = true;
                            self.finish_job(j);
                        } else {
                            self.next_call(j);
                        }
                    }
                }
                Ev::TryTimeout(c, g, attempt) => {
                    let call = self.calls[c as usize];
                    if call.generation == g && !call.done && call.attempt == attempt {
                        self.tallies[call.service][call.child_version].timeouts += 1;
                        self.outlier(call.service, call.child_version, call.child_instance as usize, true);
                        self.attempt_failed(c);
                    }
                }
                Ev::WholeTimeout(c, g) => {
                    let call = self.calls[c as usize];
                    if call.generation == g && !call.done {
                        self.tallies[call.service][call.child_version].timeouts += 1;
                        self.call_done(c, false);
                    }
                }
                Ev::Backoff(c, g) => {
                    if self.calls[c as usize].generation == g && !self.calls[c as usize].done {
                        self.send_attempt(c);
                    }
                }
            }
        }
        self
    }

    /// Versions are numbered across services: `service * 4096 + version`.
    fn locate(&self, packed: usize) -> (usize, usize) {
        (packed / 4096, packed % 4096)
    }

    fn pick_version(&mut self, service: usize) -> usize {
        let svc = &self.sc.services[service];
        if svc.policy.split.is_empty() {
            let n = svc.versions.len();
            return ((self.rng.f64() * n as f64) as usize).min(n - 1);
        }
        let mut r = self.rng.f64();
        for (name, w) in &svc.policy.split {
            if r < *w {
                return svc.versions.iter().position(|v| &v.name == name).unwrap_or(0);
            }
            r -= w;
        }
        svc.versions.len() - 1
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

    fn start_job(&mut self, service: usize, v: usize, call: u32, call_gen: u32) -> (u32, u32) {
        let job = Job {
            generation: 0,
            version: service * 4096 + v,
            call,
            call_gen,
            arrived: self.now,
            next_call: 0,
            pending: 0,
            failed: false,
            instance: 0,
        };
        let (j, g) = self.alloc_job(job);
        let i = self.pick_instance(service, v);
        self.jobs[j as usize].instance = i as u32;
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

    /// An instance by the service's load balancer, skipping ejected ones (all of them when every
    /// one is ejected, where the agent would answer 503 — written down in ARCHITECTURE.md).
    fn pick_instance(&mut self, s: usize, v: usize) -> usize {
        let now = self.now;
        let st = &mut self.versions[s][v];
        let n = st.instances.len();
        if n == 1 {
            return 0;
        }
        // No allocation: the k-th of the usable instances, counted in place.
        let healthy = st.instances.iter().filter(|x| x.ejected_until <= now).count();
        let usable = |x: &Instance| healthy == 0 || x.ejected_until <= now;
        let count = if healthy == 0 { n } else { healthy };
        let nth = |st: &VersionState, k: usize| {
            st.instances.iter().enumerate().filter(|(_, x)| usable(x)).nth(k).map_or(0, |(i, _)| i)
        };
        match self.sc.services[s].policy.load_balancer {
            meshlens_model::policy::LoadBalancer::RoundRobin => {
                st.rr = st.rr.wrapping_add(1);
                nth(st, st.rr % count)
            }
            meshlens_model::policy::LoadBalancer::P2c => {
                let a = nth(st, ((self.rng.f64() * count as f64) as usize).min(count - 1));
                let b = nth(st, ((self.rng.f64() * count as f64) as usize).min(count - 1));
                let load = |i: usize| st.instances[i].busy + st.instances[i].queue.len();
                if load(b) < load(a) { b } else { a }
            }
        }
    }

    /// Outlier detection on an attempt's result at instance `i` of version `v` of `s`.
    fn outlier(&mut self, s: usize, v: usize, i: usize, failed: bool) {
        let Some(od) = self.sc.services[s].policy.outlier_detection.clone() else { return };
        let now = self.now;
        let st = &mut self.versions[s][v];
        if !failed {
            st.instances[i].consecutive = 0;
            return;
        }
        st.instances[i].consecutive += 1;
        if st.instances[i].consecutive < od.consecutive_5xx || st.instances[i].ejected_until > now {
            return;
        }
        let total = st.instances.len();
        let ejected = st.instances.iter().filter(|x| x.ejected_until > now).count();
        let cap = ((od.max_ejection_percent / 100.0) * total as f64).floor().max(1.0) as usize;
        if ejected >= cap {
            return;
        }
        let inst = &mut st.instances[i];
        inst.ejections += 1;
        inst.consecutive = 0;
        inst.ejected_until = now + (od.base_ejection_time.as_secs_f64() * f64::from(inst.ejections)).min(300.0);
        self.tallies[s][v].ejections += 1;
    }

    fn begin_service(&mut self, j: u32) {
        let (s, v) = self.locate(self.jobs[j as usize].version);
        let d =
            self.rng.sample(self.sc.services[s].versions[v].dist, &self.sc.tables) + self.sc.fault_at(s, v, self.now).1;
        let g = self.jobs[j as usize].generation;
        self.at(self.now + d, Ev::ServiceDone(j, g));
    }

    fn next_call(&mut self, j: u32) {
        let job = self.jobs[j as usize];
        let (s, v) = self.locate(job.version);
        let version = &self.sc.services[s].versions[v];
        let n = version.calls.len();
        if version.parallel {
            if job.next_call == 0 && n > 0 && !job.failed {
                // Fan out: every call at once; the job goes on when the last one is done.
                self.jobs[j as usize].next_call = n;
                self.jobs[j as usize].pending = n as u32;
                for k in 0..n {
                    let callee = self.sc.services[s].versions[v].calls[k];
                    self.open_call(j, callee);
                }
            } else if job.pending == 0 {
                self.finish_job(j);
            }
            return;
        }
        if job.failed || job.next_call >= n {
            self.finish_job(j);
            return;
        }
        let callee = version.calls[job.next_call];
        self.jobs[j as usize].next_call += 1;
        self.open_call(j, callee);
    }

    fn open_call(&mut self, j: u32, callee: usize) {
        let call = Call {
            generation: 0,
            parent: j,
            parent_gen: self.jobs[j as usize].generation,
            service: callee,
            attempt: 0,
            child: 0,
            child_gen: 0,
            child_version: 0,
            child_instance: 0,
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
        let sec = self.now.floor() as i64;
        self.budgets[callee].slot(sec).1 += 1.0;
        if let Some(t) = self.sc.services[callee].policy.timeout {
            self.at(self.now + t.as_secs_f64(), Ev::WholeTimeout(c, g));
        }
        self.send_attempt(c);
    }

    fn send_attempt(&mut self, c: u32) {
        let call = self.calls[c as usize];
        let v = self.pick_version(call.service);
        self.tallies[call.service][v].offered += 1;
        if call.attempt > 0 {
            self.tallies[call.service][v].retries += 1;
        }
        let (child, child_gen) = self.start_job(call.service, v, c, call.generation);
        let call = &mut self.calls[c as usize];
        call.child = child;
        call.child_gen = child_gen;
        call.child_version = v;
        call.child_instance = self.jobs[child as usize].instance;
        let (g, attempt) = (call.generation, call.attempt);
        if let Some(t) = self.sc.services[call.service].policy.retries.as_ref().and_then(|r| r.per_try_timeout) {
            self.at(self.now + t.as_secs_f64(), Ev::TryTimeout(c, g, attempt));
        }
    }

    fn attempt_failed(&mut self, c: u32) {
        let call = self.calls[c as usize];
        let Some(r) = self.sc.services[call.service].policy.retries.clone() else {
            self.call_done(c, false);
            return;
        };
        if call.attempt >= r.attempts {
            self.call_done(c, false);
            return;
        }
        let sec = self.now.floor() as i64;
        if !self.budgets[call.service].allows(sec, r.budget_ratio, r.budget_min_per_second) {
            self.tallies[call.service][call.child_version].budget_denied += 1;
            self.call_done(c, false);
            return;
        }
        self.calls[c as usize].attempt += 1;
        let cap =
            (r.backoff_base.as_secs_f64() * f64::from(1u32 << call.attempt.min(20))).min(r.backoff_max.as_secs_f64());
        let pause = cap * self.rng.f64();
        self.at(self.now + pause, Ev::Backoff(c, call.generation));
    }

    fn call_done(&mut self, c: u32, ok: bool) {
        let call = self.calls[c as usize];
        self.calls[c as usize].done = true;
        self.free_calls.push(c);
        let parent = &mut self.jobs[call.parent as usize];
        if parent.generation != call.parent_gen {
            return;
        }
        if !ok {
            parent.failed = true;
        }
        parent.pending = parent.pending.saturating_sub(1);
        self.next_call(call.parent);
    }

    fn finish_job(&mut self, j: u32) {
        let job = self.jobs[j as usize];
        let (s, v) = self.locate(job.version);
        let latency = self.now - job.arrived;
        let t = &mut self.tallies[s][v];
        if job.failed {
            t.failed += 1
        } else {
            t.ok += 1
        }
        t.record(latency);
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
                if job.failed {
                    slot.1 += 1;
                } else {
                    slot.0 += 1;
                }
            }
            if job.failed {
                self.root.failed += 1
            } else {
                self.root.ok += 1
            }
            self.root.record(latency);
            return;
        }
        let call = self.calls[job.call as usize];
        if call.generation != job.call_gen || call.done || call.child != j || call.child_gen != job.generation {
            return;
        }
        self.outlier(s, v, job.instance as usize, job.failed);
        if job.failed {
            self.attempt_failed(job.call);
        } else {
            self.call_done(job.call, true);
        }
    }
}
