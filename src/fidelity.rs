//! `meshlens fidelity`: the simulator checked against its oracle, the real agents. Each case is a
//! mesh file (the shape `meshlens demo --mesh` runs): it runs once on real apps and agents on
//! loopback (the demo's engine, mTLS between agents, driven open-loop by `meshlens load` at the
//! entry) and once in `meshlens sim` on the same mesh turned into a scenario, and the two are put
//! side by side: the users' success, p50 and p99, attempts per second per version, retries per
//! second.
//!
//! The scenario is the mesh as the demo's apps behave: each version's service time a lognormal
//! around its `latency` (σ 0.4, as the demo draws it) plus its fixed `delay`, its `error_pct` as a
//! 500, a failed call answered with a 503, unbounded concurrency, one instance, constant arrivals,
//! the mesh's policy, and `request_overhead`: what the mesh adds to every request a version serves
//! (the agents on the way, the app's timer granularity), inside the callers' timeouts. It is
//! calibrated on the real agents first unless `--request-overhead` gives it: a one-call mesh with
//! no faults, whose real p50 minus the simulated p50 without overhead, over its two requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use meshlens_model::GraphSnapshot;
use meshlens_sim::engine::Sim;
use meshlens_sim::scenario::Scenario;
use serde::Serialize;

use crate::demo::{self, DemoError, MeshFile};

/// The one-call mesh the hop overhead is calibrated on.
pub const CALIBRATION: &str = "namespace: fidelity\nentry: front\napps:\n  front:\n    versions:\n      v1: {latency: 1ms, calls: [back]}\n  back:\n    versions:\n      v1: {latency: 2ms}\n";

/// What one side (real or simulated) measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Side {
    /// Users' requests.
    pub requests: u64,
    /// Users' success, percent.
    pub success_pct: f64,
    /// Users' median latency, ms.
    pub p50_ms: f64,
    /// Users' 99th percentile, ms.
    pub p99_ms: f64,
    /// Attempts per second by callee version (`app/version`).
    pub version_rps: BTreeMap<String, f64>,
    /// Retries per second, all edges.
    pub retries_per_s: f64,
}

/// A case, both ways.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// The mesh file.
    pub name: String,
    /// On the real agents.
    pub real: Side,
    /// In the simulator.
    pub sim: Side,
    /// Simulated success minus real, percentage points.
    pub success_diff_pp: f64,
    /// Simulated p99 over real, minus one, percent.
    pub p99_diff_pct: f64,
}

/// How to run the cases.
#[derive(Clone, Debug)]
pub struct FidelityConfig {
    /// Users' requests per second.
    pub rate: f64,
    /// How long the real run lasts.
    pub duration: Duration,
    /// Seeds of the simulation, each as long as the real run: a longer run would change what
    /// grows with time (ejection multipliers, budget windows).
    pub seeds: u64,
}

/// Turns a mesh file into the scenario that rehearses it, with `overhead` seconds per request.
pub fn scenario_of(mesh: &MeshFile, rate: f64, seconds: f64, overhead: f64) -> Result<Scenario, String> {
    let mut services = serde_json::Map::new();
    let mut faults = Vec::new();
    for (app, spec) in &mesh.apps {
        let mut versions = serde_json::Map::new();
        for (name, v) in &spec.versions {
            let median = meshlens_model::time::parse_duration(&v.latency).map_err(|e| e.to_string())?.as_secs_f64();
            // The demo draws median · e^(0.4·N): its p99 is median · e^(0.4 · 2.326).
            let time = if median > 0.0 {
                serde_json::json!({"lognormal": {"p50": format!("{}us", (median * 1e6).round()), "p99": format!("{}us", (median * 1e6 * (0.4f64 * 2.326_347_874).exp()).round())}})
            } else {
                serde_json::json!({"constant": "0ms"})
            };
            versions.insert(
                name.clone(),
                serde_json::json!({"service_time": time, "error_pct": v.error_pct, "calls": v.calls, "concurrency": 1_000_000}),
            );
            if let Some(d) = &v.delay {
                faults.push(serde_json::json!({"service": app, "version": name, "from": "0s", "to": format!("{}s", seconds + 3600.0), "delay": d}));
            }
        }
        services.insert(app.clone(), serde_json::json!({ "versions": versions }));
    }
    let file = serde_json::json!({
        "duration": format!("{seconds}s"),
        "arrivals": {"rate": rate, "process": "constant"},
        "entry": mesh.entry,
        "services": services,
        "policy": mesh.policy,
        "faults": faults,
        "request_overhead": format!("{}us", (overhead * 1e6).round()),
        // The demo's apps sleep, and its agents time out, on tokio's 1 ms timer wheel.
        "timer_granularity": "1ms",
    });
    let text = serde_yaml_ng::to_string(&file).map_err(|e| e.to_string())?;
    Scenario::parse(&text, "the mesh as a scenario").map_err(|e| e.to_string())
}

/// The demo runs the mesh with no load of its own (the harness drives the entry), any free ports.
fn demo_config(text: &str, origin: &str, rate: f64) -> demo::DemoConfig {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    demo::DemoConfig {
        mesh: (text.to_owned(), origin.to_owned()),
        rate,
        faults: Vec::new(),
        delays: Vec::new(),
        http: any,
        otlp_grpc: any,
        otlp_http: any,
        export_interval: Duration::from_millis(500),
        load: false,
    }
}

/// Checks a case before anything runs: the mesh parses and makes a valid scenario.
pub fn check_case(text: &str, origin: &str, config: &FidelityConfig) -> Result<(), DemoError> {
    // The demo's own checks first: they name the field in the mesh file's terms.
    let mesh = demo::check(&demo_config(text, origin, config.rate))?;
    scenario_of(&mesh, config.rate, config.duration.as_secs_f64(), 0.0)
        .map(|_| ())
        .map_err(|e| DemoError(format!("{origin}: {e}")))
}

/// Runs the scenario over `seeds` seeds: means of success and percentiles, rates per second.
pub fn simulate(sc: &Scenario, seeds: u64) -> Side {
    let n = seeds.max(1);
    let mut side = Side::default();
    let mut retries = 0.0;
    for seed in 1..=n {
        let s = Sim::new(sc, seed).run();
        let q = |p: f64| s.root.latency.value_at_quantile(p) as f64 / 1000.0;
        side.requests += s.root.offered;
        side.success_pct += 100.0 * s.root.ok as f64 / s.root.offered.max(1) as f64 / n as f64;
        side.p50_ms += q(0.5) / n as f64;
        side.p99_ms += q(0.99) / n as f64;
        for (svc, tallies) in sc.services.iter().zip(&s.tallies) {
            for (v, t) in svc.versions.iter().zip(tallies) {
                // As the agent records them: attempts sent, the proxy's own 503s and aborts.
                if svc.name != sc.services[sc.entry].name {
                    *side.version_rps.entry(format!("{}/{}", svc.name, v.name)).or_default() +=
                        (t.offered + t.proxy_503 + t.aborted) as f64 / sc.duration / n as f64;
                }
                retries += t.retries as f64 / sc.duration / n as f64;
            }
        }
    }
    side.retries_per_s = retries;
    side
}

/// The versioned graph over the last `window_s` seconds, through the API client the console uses.
async fn graph_of(api: &str, window_s: u64) -> Result<GraphSnapshot, DemoError> {
    let client = meshlens_console::Client::new(api).map_err(|e| DemoError(format!("{api}: {e}")))?;
    client
        .get(&format!("/api/v1/graph?view=versioned&window={window_s}s"))
        .await
        .map_err(|e| DemoError(format!("GET /api/v1/graph: {e}")))
}

/// Runs the mesh on real agents on loopback, with `rate` users' requests a second for `duration`.
pub async fn run_real(text: &str, origin: &str, rate: f64, duration: Duration) -> Result<Side, DemoError> {
    let mesh: MeshFile = serde_yaml_ng::from_str(text).map_err(|e| DemoError(format!("{origin}: {e}")))?;
    let running = demo::start(demo_config(text, origin, rate)).await?;
    let prefix = format!("{}/{}/", mesh.namespace, mesh.entry);
    let entry = running
        .workloads
        .iter()
        .find(|w| w.id.starts_with(&prefix))
        .map(|w| w.inbound)
        .ok_or_else(|| DemoError(format!("{origin}: no workload of the entry {}", mesh.entry)))?;
    let report = meshlens_agent::load::run(meshlens_agent::load::LoadConfig {
        url: format!("http://{entry}/{}", mesh.entry).parse().map_err(|e| DemoError(format!("{e}")))?,
        rate,
        duration,
        connections: 512,
        timeout: Duration::from_secs(5),
        host: Some(mesh.entry.clone()),
    })
    .await
    .map_err(|e| DemoError(e.to_string()))?;
    // Two export intervals, so the last attempts are in the collector.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let graph = graph_of(&running.api_url(), duration.as_secs() + 30).await;
    running.shutdown().await?;
    let graph = graph?;
    let seconds = duration.as_secs_f64();
    let mut side = Side {
        requests: report.sent,
        success_pct: report.success_pct,
        p50_ms: report.latency_ms.p50,
        p99_ms: report.latency_ms.p99,
        ..Side::default()
    };
    let ns = format!("{}/", mesh.namespace);
    for e in &graph.edges {
        let Some(target) = e.target.strip_prefix(&ns) else { continue };
        if e.source == "user" || e.source.starts_with("unknown") {
            continue;
        }
        *side.version_rps.entry(target.to_owned()).or_default() += e.stats.requests as f64 / seconds;
        side.retries_per_s += e.stats.retries.unwrap_or(0) as f64 / seconds;
    }
    Ok(side)
}

/// The request overhead, calibrated: the real p50 of [`CALIBRATION`] minus its simulated p50
/// without overhead, over the two requests of its path (the entry's and its one call), in
/// seconds, never below 0.
pub async fn calibrate(config: &FidelityConfig) -> Result<f64, DemoError> {
    let real = run_real(CALIBRATION, "calibration", config.rate, config.duration).await?;
    let mesh: MeshFile = serde_yaml_ng::from_str(CALIBRATION).map_err(|e| DemoError(e.to_string()))?;
    let seconds = config.duration.as_secs_f64();
    let sc = scenario_of(&mesh, config.rate, seconds, 0.0).map_err(DemoError)?;
    let sim = simulate(&sc, config.seeds);
    Ok(((real.p50_ms - sim.p50_ms) / 1000.0 / 2.0).max(0.0))
}

/// Runs one case both ways with `overhead` seconds per request.
pub async fn run_case(
    text: &str,
    origin: &str,
    config: &FidelityConfig,
    overhead: f64,
) -> Result<CaseResult, DemoError> {
    let mesh: MeshFile = serde_yaml_ng::from_str(text).map_err(|e| DemoError(format!("{origin}: {e}")))?;
    let seconds = config.duration.as_secs_f64();
    let sc = scenario_of(&mesh, config.rate, seconds, overhead).map_err(|e| DemoError(format!("{origin}: {e}")))?;
    let real = run_real(text, origin, config.rate, config.duration).await?;
    let sim = simulate(&sc, config.seeds);
    Ok(CaseResult {
        name: origin.to_owned(),
        success_diff_pp: sim.success_pct - real.success_pct,
        p99_diff_pct: if real.p99_ms > 0.0 { 100.0 * (sim.p99_ms / real.p99_ms - 1.0) } else { 0.0 },
        real,
        sim,
    })
}

/// Writes the results as a table: one line per case, then each case's versions.
pub fn write_table(out: &mut impl std::io::Write, overhead: f64, results: &[CaseResult]) -> std::io::Result<()> {
    writeln!(out, "request overhead {:.2}ms", overhead * 1000.0)?;
    writeln!(
        out,
        "{:<28} {:>8} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>9}",
        "CASE", "SUCCESS", "SIM", "DIFF", "P50", "SIM", "P99", "SIM", "DIFF", "RETRY/S", "SIM"
    )?;
    for r in results {
        let name =
            std::path::Path::new(&r.name).file_stem().map_or(r.name.clone(), |s| s.to_string_lossy().into_owned());
        writeln!(
            out,
            "{:<28} {:>7.2}% {:>7.2}% {:>+6.2}pp {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>+6.1}% {:>9.1} {:>9.1}",
            name,
            r.real.success_pct,
            r.sim.success_pct,
            r.success_diff_pp,
            r.real.p50_ms,
            r.sim.p50_ms,
            r.real.p99_ms,
            r.sim.p99_ms,
            r.p99_diff_pct,
            r.real.retries_per_s,
            r.sim.retries_per_s
        )?;
        let versions: Vec<String> = r
            .real
            .version_rps
            .iter()
            .map(|(v, rps)| format!("{v} {rps:.1}/{:.1}", r.sim.version_rps.get(v).copied().unwrap_or(0.0)))
            .collect();
        writeln!(out, "  attempts/s real/sim: {}", versions.join("  "))?;
    }
    Ok(())
}
