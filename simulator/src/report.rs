//! Runs a scenario over several seeds and reports per service version and for the users'
//! requests: offered load, attempts, success %, p50/p95/p99, timeouts, retries and budget denials,
//! each as the median over seeds with the range.

use serde::Serialize;

use crate::engine::{Sim, Tally};
use crate::scenario::Scenario;

/// One figure over seeds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Spread {
    /// Median over seeds.
    pub median: f64,
    /// Lowest over seeds.
    pub min: f64,
    /// Highest over seeds.
    pub max: f64,
}

impl Spread {
    fn of(mut xs: Vec<f64>) -> Self {
        xs.sort_by(f64::total_cmp);
        let median = xs.get(xs.len() / 2).copied().unwrap_or(0.0);
        Self { median, min: xs.first().copied().unwrap_or(0.0), max: xs.last().copied().unwrap_or(0.0) }
    }
}

/// The figures of one version (or of the users' requests).
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `service version`, or `users`.
    pub name: String,
    /// Attempts per second.
    pub offered_rps: Spread,
    /// Success, percent of finished attempts (those the caller gave up on count as failed).
    pub success_pct: Spread,
    /// Latency percentiles, ms.
    pub p50_ms: Spread,
    /// p95.
    pub p95_ms: Spread,
    /// p99.
    pub p99_ms: Spread,
    /// Mean latency, ms.
    pub mean_ms: Spread,
    /// Attempts that timed out at their caller.
    pub timeouts: Spread,
    /// Retries sent to it.
    pub retries: Spread,
    /// Retries the budget refused.
    pub budget_denied: Spread,
    /// Instances ejected by outlier detection.
    pub ejections: Spread,
    /// Attempts its callers abandoned before it answered (`cancelled` at the callee).
    pub cancelled: Spread,
    /// Attempts the caller's proxy answered 503 itself, every instance being ejected (`proxy_503`).
    pub proxy_503: Spread,
    /// Requests the policy's fault block aborted before they were sent.
    pub aborted: Spread,
}

/// A report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Seeds run.
    pub seeds: u64,
    /// The users' requests first, then each version.
    pub rows: Vec<Row>,
    /// Events processed in the first run.
    pub events: u64,
    /// The users' success percent per 10 seconds of arrival, first seed.
    pub timeline: Vec<f64>,
}

fn row(name: String, tallies: &[&Tally], duration: f64) -> Row {
    let f = |g: &dyn Fn(&Tally) -> f64| Spread::of(tallies.iter().map(|t| g(t)).collect());
    let q = |t: &Tally, q: f64| if t.latency.is_empty() { 0.0 } else { t.latency.value_at_quantile(q) as f64 / 1000.0 };
    Row {
        name,
        offered_rps: f(&|t| t.offered as f64 / duration),
        // An attempt its caller gave up on counts as failed, as the callee's agent records it
        // (`cancelled`, no response).
        success_pct: f(&|t| {
            let done = t.ok + t.failed + t.cancelled;
            if done == 0 { 100.0 } else { 100.0 * t.ok as f64 / done as f64 }
        }),
        p50_ms: f(&|t| q(t, 0.5)),
        p95_ms: f(&|t| q(t, 0.95)),
        p99_ms: f(&|t| q(t, 0.99)),
        mean_ms: f(&|t| t.latency.mean() / 1000.0),
        timeouts: f(&|t| t.timeouts as f64),
        retries: f(&|t| t.retries as f64),
        budget_denied: f(&|t| t.budget_denied as f64),
        ejections: f(&|t| t.ejections as f64),
        cancelled: f(&|t| t.cancelled as f64),
        proxy_503: f(&|t| t.proxy_503 as f64),
        aborted: f(&|t| t.aborted as f64),
    }
}

/// Runs `sc` with seeds `1..=seeds`.
pub fn run(sc: &Scenario, seeds: u64) -> Report {
    run_with_progress(sc, seeds, |_, _| {})
}

/// Runs `sc` with seeds `1..=seeds`, telling `progress(done, of)` after each seed.
pub fn run_with_progress(sc: &Scenario, seeds: u64, progress: impl Fn(u64, u64)) -> Report {
    run_seeds(sc, 1, seeds, progress)
}

/// Runs `sc` with `seeds` seeds from `first` on, telling `progress(done, of)` after each.
pub fn run_seeds(sc: &Scenario, first: u64, seeds: u64, progress: impl Fn(u64, u64)) -> Report {
    let n = seeds.max(1);
    let sims: Vec<Sim> = (0..n)
        .map(|k| {
            let s = Sim::new(sc, first + k).run();
            progress(k + 1, n);
            s
        })
        .collect();
    let events = sims.first().map_or(0, |s| s.events_processed);
    let timeline = sims.first().map_or(Vec::new(), |s| {
        s.timeline
            .iter()
            .filter(|(ok, failed)| ok + failed > 0)
            .map(|(ok, failed)| (100.0 * *ok as f64 / (ok + failed) as f64 * 10.0).round() / 10.0)
            .collect()
    });
    let mut rows = vec![row("users".into(), &sims.iter().map(|s| &s.root).collect::<Vec<_>>(), sc.duration)];
    for (si, svc) in sc.services.iter().enumerate() {
        for (vi, v) in svc.versions.iter().enumerate() {
            let tallies: Vec<&Tally> = sims.iter().map(|s| &s.tallies[si][vi]).collect();
            rows.push(row(format!("{} {}", svc.name, v.name), &tallies, sc.duration));
        }
    }
    Report { seeds: seeds.max(1), rows, events, timeline }
}

/// The report as a table.
pub fn write_table(out: &mut impl std::io::Write, r: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<24} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9}",
        "", "RPS", "SUCCESS", "P50", "P95", "P99", "TIMEOUTS", "RETRIES", "DENIED"
    )?;
    for row in &r.rows {
        writeln!(
            out,
            "{:<24} {:>10.1} {:>8.2}% {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>9.0} {:>8.0} {:>9.0}",
            row.name,
            row.offered_rps.median,
            row.success_pct.median,
            row.p50_ms.median,
            row.p95_ms.median,
            row.p99_ms.median,
            row.timeouts.median,
            row.retries.median,
            row.budget_denied.median
        )?;
    }
    let line: Vec<String> = r.timeline.iter().map(|p| format!("{p:.0}")).collect();
    writeln!(out, "users' success % per 10 s (seed 1): {}", line.join(" "))?;
    writeln!(out, "medians over {} seeds; ranges in -o json", r.seeds)
}

/// Baseline and candidate side by side, with the difference.
pub fn write_comparison(out: &mut impl std::io::Write, b: &Report, c: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<24} {:>22} {:>26} {:>26}",
        "", "RPS base/cand", "SUCCESS base/cand (diff)", "P99 base/cand (diff)"
    )?;
    for (rb, rc) in b.rows.iter().zip(&c.rows) {
        writeln!(
            out,
            "{:<24} {:>10.1} {:>10.1} {:>8.2}% {:>7.2}% {:>+7.2} {:>8.1}ms {:>8.1}ms {:>+8.1}",
            rb.name,
            rb.offered_rps.median,
            rc.offered_rps.median,
            rb.success_pct.median,
            rc.success_pct.median,
            rc.success_pct.median - rb.success_pct.median,
            rb.p99_ms.median,
            rc.p99_ms.median,
            rc.p99_ms.median - rb.p99_ms.median
        )?;
    }
    writeln!(out, "medians over {} seeds; candidate minus baseline in parentheses", c.seeds)
}
