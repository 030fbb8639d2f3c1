//! A canary plan in Flagger's terms — step weight, max weight, interval, success-rate minimum, p99
//! maximum, failed-check threshold — run step by step: at each weight the canary version gets that
//! share of the service's traffic for one interval, over several seeds, and the step passes when
//! the canary's median success rate and p99 are within the limits. A rollback fires when failed
//! checks reach the threshold. Flagger's own Canary YAML (`spec.targetRef`, `spec.analysis`) is
//! accepted as well as meshlens's `canary:` block.

use serde::{Deserialize, Serialize};

use crate::report::{Row, run};
use crate::scenario::{Scenario, ScenarioError};
use meshlens_model::time::parse_duration;

/// A plan, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Service index.
    pub service: usize,
    /// Baseline version index.
    pub baseline: usize,
    /// Canary version index.
    pub canary: usize,
    /// Weight added per step, percent.
    pub step_weight: f64,
    /// Last weight before promotion, percent.
    pub max_weight: f64,
    /// Seconds per step.
    pub interval: f64,
    /// Failed checks that trigger a rollback.
    pub threshold: u32,
    /// Minimum success rate, percent.
    pub success_min: f64,
    /// Maximum p99, ms.
    pub p99_max_ms: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MeshlensPlan {
    service: String,
    baseline: Option<String>,
    canary: Option<String>,
    step_weight: f64,
    max_weight: f64,
    interval: String,
    threshold: u32,
    success_rate_min: Option<f64>,
    p99_max: Option<String>,
}

#[derive(Deserialize)]
struct FlaggerCanary {
    spec: FlaggerSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FlaggerSpec {
    target_ref: FlaggerRef,
    analysis: FlaggerAnalysis,
}

#[derive(Deserialize)]
struct FlaggerRef {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FlaggerAnalysis {
    interval: String,
    threshold: u32,
    max_weight: f64,
    step_weight: f64,
    #[serde(default)]
    metrics: Vec<FlaggerMetric>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FlaggerMetric {
    name: String,
    threshold_range: FlaggerRange,
}

#[derive(Deserialize)]
struct FlaggerRange {
    min: Option<f64>,
    max: Option<f64>,
}

#[derive(Deserialize)]
struct Wrapper {
    canary: Option<serde_yaml_ng::Value>,
    spec: Option<serde_yaml_ng::Value>,
}

impl Plan {
    /// Reads a plan (`canary:` block or Flagger's Canary) for `sc`.
    pub fn parse(text: &str, origin: &str, sc: &Scenario) -> Result<Self, ScenarioError> {
        let err = |message: String| ScenarioError { origin: origin.to_owned(), message };
        let w: Wrapper = serde_yaml_ng::from_str(text).map_err(|e| err(e.to_string()))?;
        let p = match (w.canary, w.spec) {
            (Some(c), _) => serde_yaml_ng::from_value::<MeshlensPlan>(c).map_err(|e| err(format!("canary: {e}")))?,
            (None, Some(_)) => {
                let f: FlaggerCanary = serde_yaml_ng::from_str(text).map_err(|e| err(e.to_string()))?;
                let a = f.spec.analysis;
                let metric = |name: &str| a.metrics.iter().find(|m| m.name == name);
                MeshlensPlan {
                    service: f.spec.target_ref.name,
                    baseline: None,
                    canary: None,
                    step_weight: a.step_weight,
                    max_weight: a.max_weight,
                    interval: a.interval,
                    threshold: a.threshold,
                    success_rate_min: metric("request-success-rate").and_then(|m| m.threshold_range.min),
                    p99_max: metric("request-duration").and_then(|m| m.threshold_range.max).map(|ms| format!("{ms}ms")),
                }
            }
            (None, None) => return Err(err("expected a canary: block or a Flagger Canary (spec.analysis)".into())),
        };
        let service = sc
            .services
            .iter()
            .position(|s| s.name == p.service || s.name.rsplit_once('/').is_some_and(|(_, a)| a == p.service))
            .ok_or_else(|| err(format!("canary.service: no service {:?} in the scenario", p.service)))?;
        let versions = &sc.services[service].versions;
        if versions.len() < 2 {
            return Err(err(format!("canary.service: {} has one version; a canary needs two", p.service)));
        }
        let find = |name: Option<&String>, default: usize, field: &str| match name {
            None => Ok(default),
            Some(n) => versions
                .iter()
                .position(|v| &v.name == n)
                .ok_or_else(|| err(format!("canary.{field}: {} has no version {n:?}", p.service))),
        };
        let baseline = find(p.baseline.as_ref(), 0, "baseline")?;
        let canary = find(p.canary.as_ref(), versions.len() - 1, "canary")?;
        if baseline == canary {
            return Err(err("canary: the canary and the baseline are the same version".into()));
        }
        if !(p.step_weight > 0.0 && p.step_weight <= p.max_weight && p.max_weight <= 100.0) {
            return Err(err(format!(
                "canary: step weight {} and max weight {} must satisfy 0 < step <= max <= 100",
                p.step_weight, p.max_weight
            )));
        }
        let interval = parse_duration(&p.interval).map_err(|e| err(format!("canary.interval: {e}")))?.as_secs_f64();
        if interval <= 0.0 || p.threshold == 0 {
            return Err(err("canary: interval must be longer than zero and threshold at least 1".into()));
        }
        let p99_max_ms = match &p.p99_max {
            Some(t) => parse_duration(t).map_err(|e| err(format!("canary.p99_max: {e}")))?.as_secs_f64() * 1e3,
            None => f64::INFINITY,
        };
        Ok(Plan {
            service,
            baseline,
            canary,
            step_weight: p.step_weight,
            max_weight: p.max_weight,
            interval,
            threshold: p.threshold,
            success_min: p.success_rate_min.unwrap_or(0.0),
            p99_max_ms,
        })
    }
}

/// One step's prediction.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// Canary weight, percent.
    pub weight: f64,
    /// The canary version's figures.
    pub canary: Row,
    /// Whether the check passed.
    pub passed: bool,
    /// Failed checks so far.
    pub failed_checks: u32,
}

/// What the plan would do.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// Steps run.
    pub steps: Vec<Step>,
    /// Promoted (else rolled back).
    pub promoted: bool,
    /// Seconds until promotion or rollback.
    pub after_seconds: f64,
}

/// Runs the plan on `sc` with `seeds`.
pub fn simulate(sc: &Scenario, plan: &Plan, seeds: u64) -> Outcome {
    let mut steps = Vec::new();
    let mut failed = 0;
    let mut weight = plan.step_weight;
    let svc_name = sc.services[plan.service].name.clone();
    let (base, can) = (
        sc.services[plan.service].versions[plan.baseline].name.clone(),
        sc.services[plan.service].versions[plan.canary].name.clone(),
    );
    loop {
        let mut s = sc.clone();
        s.duration = plan.interval;
        s.services[plan.service].policy.split =
            vec![(base.clone(), 1.0 - weight / 100.0), (can.clone(), weight / 100.0)];
        let report = run(&s, seeds);
        let name = format!("{svc_name} {can}");
        let row = report.rows.into_iter().find(|r| r.name == name);
        let Some(row) = row else { break };
        let passed = row.success_pct.median >= plan.success_min && row.p99_ms.median <= plan.p99_max_ms;
        if !passed {
            failed += 1;
        }
        steps.push(Step { weight, canary: row, passed, failed_checks: failed });
        if failed >= plan.threshold {
            return Outcome { after_seconds: steps.len() as f64 * plan.interval, steps, promoted: false };
        }
        if weight >= plan.max_weight {
            break;
        }
        weight = (weight + plan.step_weight).min(plan.max_weight);
    }
    Outcome { after_seconds: steps.len() as f64 * plan.interval, steps, promoted: failed < plan.threshold }
}

/// The plan's steps as a table.
pub fn write_table(out: &mut impl std::io::Write, o: &Outcome, plan: &Plan) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>6} {:>8} {:>22} {:>26} {:>8}",
        "STEP", "WEIGHT", "SUCCESS median (range)", "P99 median (range)", "CHECK"
    )?;
    for (i, s) in o.steps.iter().enumerate() {
        let c = &s.canary;
        writeln!(
            out,
            "{:>6} {:>7.0}% {:>7.2}% ({:.2}-{:.2}) {:>8.1}ms ({:.1}-{:.1}) {:>8}",
            i + 1,
            s.weight,
            c.success_pct.median,
            c.success_pct.min,
            c.success_pct.max,
            c.p99_ms.median,
            c.p99_ms.min,
            c.p99_ms.max,
            if s.passed { "pass" } else { "FAIL" }
        )?;
    }
    if o.promoted {
        writeln!(out, "promoted after {} steps ({:.0}s)", o.steps.len(), o.after_seconds)
    } else {
        writeln!(
            out,
            "rollback at step {} (weight {:.0}%) after {:.0}s: {} failed checks reached the threshold {}",
            o.steps.len(),
            o.steps.last().map_or(0.0, |s| s.weight),
            o.after_seconds,
            o.steps.last().map_or(0, |s| s.failed_checks),
            plan.threshold
        )
    }
}
