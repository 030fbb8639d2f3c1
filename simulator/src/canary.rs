//! A canary plan in Flagger's terms — step weight, max weight, interval, success-rate minimum, p99
//! maximum, failed-check threshold — run step by step: at each weight the canary version gets that
//! share of the service's traffic for one interval, over several seeds, and the step passes when
//! the canary's median success rate and p99 are within the limits. As in Flagger, a failed check
//! halts the canary at its weight; a rollback fires when failed checks reach the threshold.
//! Flagger's own Canary YAML (`spec.targetRef`, `spec.analysis`, `stepWeights`, several documents
//! with MetricTemplates) is accepted as well as meshlens's `canary:` block; what it says that is
//! not modelled is warned or refused by its path.

use serde::{Deserialize, Serialize};

use crate::report::Row;
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
    /// The canary's weight at each step, percent (Flagger's `stepWeight` up to `maxWeight`, or
    /// its `stepWeights`).
    pub weights: Vec<f64>,
    /// Seconds at each weight, one per entry of `weights` (Flagger's interval each, or Argo's
    /// pauses).
    pub durations: Vec<f64>,
    /// Whether checks decide the steps; false for an Argo Rollout, whose analysis queries
    /// cannot run on a simulation: every step is shown, nothing is judged.
    pub judged: bool,
    /// Failed checks that trigger a rollback.
    pub threshold: u32,
    /// Minimum success rate, percent.
    pub success_min: f64,
    /// Maximum p99, ms.
    pub p99_max_ms: f64,
    /// What the plan file said that is not modelled, each naming its field.
    pub warnings: Vec<String>,
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
struct Wrapper {
    canary: Option<serde_yaml_ng::Value>,
    spec: Option<serde_yaml_ng::Value>,
}

impl Plan {
    /// Reads a plan (`canary:` block or Flagger's Canary) for `sc`.
    pub fn parse(text: &str, origin: &str, sc: &Scenario) -> Result<Self, ScenarioError> {
        let err = |message: String| ScenarioError { origin: origin.to_owned(), message };
        // Several documents: Flagger's Canary with its MetricTemplates, or Argo's Rollout with
        // its AnalysisTemplates.
        if text.lines().any(|l| l.trim() == "kind: Rollout") {
            return argo(text, origin, sc);
        }
        if serde_yaml_ng::Deserializer::from_str(text).count() > 1 {
            return flagger(text, origin, sc);
        }
        let w: Wrapper = serde_yaml_ng::from_str(text).map_err(|e| err(e.to_string()))?;
        let p = match (w.canary, w.spec) {
            (Some(c), _) => serde_yaml_ng::from_value::<MeshlensPlan>(c).map_err(|e| err(format!("canary: {e}")))?,
            (None, Some(_)) => return flagger(text, origin, sc),
            (None, None) => return Err(err("expected a canary: block or a Flagger Canary (spec.analysis)".into())),
        };
        let weights = steps_of(p.step_weight, p.max_weight).map_err(|m| err(format!("canary: {m}")))?;
        let interval = parse_duration(&p.interval).map_err(|e| err(format!("canary.interval: {e}")))?.as_secs_f64();
        let p99_max_ms = match &p.p99_max {
            Some(t) => parse_duration(t).map_err(|e| err(format!("canary.p99_max: {e}")))?.as_secs_f64() * 1e3,
            None => f64::INFINITY,
        };
        let draft = Draft {
            service: p.service,
            baseline: p.baseline,
            canary: p.canary,
            weights,
            interval,
            threshold: p.threshold,
            success_min: p.success_rate_min.unwrap_or(0.0),
            p99_max_ms,
            warnings: Vec::new(),
            durations: None,
            judged: true,
        };
        draft.resolve(sc, origin, "canary")
    }
}

/// Weights from Flagger's `stepWeight` and `maxWeight`: step, 2·step, … up to max.
fn steps_of(step: f64, max: f64) -> Result<Vec<f64>, String> {
    if !(step > 0.0 && step <= max && max <= 100.0) {
        return Err(format!("step weight {step} and max weight {max} must satisfy 0 < step <= max <= 100"));
    }
    let mut w = Vec::new();
    let mut x = step;
    loop {
        w.push(x.min(max));
        if x >= max {
            break;
        }
        x += step;
    }
    Ok(w)
}

/// A plan before its names are found in the scenario.
struct Draft {
    service: String,
    baseline: Option<String>,
    canary: Option<String>,
    weights: Vec<f64>,
    interval: f64,
    threshold: u32,
    success_min: f64,
    p99_max_ms: f64,
    warnings: Vec<String>,
    durations: Option<Vec<f64>>,
    judged: bool,
}

impl Draft {
    fn resolve(self, sc: &Scenario, origin: &str, at: &str) -> Result<Plan, ScenarioError> {
        let err = |message: String| ScenarioError { origin: origin.to_owned(), message };
        let service = sc
            .services
            .iter()
            .position(|s| s.name == self.service || s.name.rsplit_once('/').is_some_and(|(_, a)| a == self.service))
            .ok_or_else(|| err(format!("{at}: no service {:?} in the scenario", self.service)))?;
        let svc = &sc.services[service];
        let versions = &svc.versions;
        if versions.len() < 2 {
            return Err(err(format!("{at}: {} has one version; a canary needs two", self.service)));
        }
        let find = |name: &str, field: &str| {
            versions
                .iter()
                .position(|v| v.name == name)
                .ok_or_else(|| err(format!("{at}.{field}: {} has no version {name:?}", self.service)))
        };
        let named = |names: &[&str]| versions.iter().position(|v| names.contains(&v.name.as_str()));
        let weight = |i: usize| svc.policy.split.iter().find(|(n, _)| *n == versions[i].name).map_or(-1.0, |(_, w)| *w);
        // Flagger names them primary and canary; else the version taking the traffic now is the
        // baseline and the one at no weight the canary. Anything else is not guessed.
        let baseline = match &self.baseline {
            Some(n) => find(n, "baseline")?,
            None => match named(&["primary", "stable"]) {
                Some(i) => i,
                None => (0..versions.len()).max_by(|a, b| weight(*a).total_cmp(&weight(*b))).unwrap_or(0),
            },
        };
        let canary = match &self.canary {
            Some(n) => find(n, "canary")?,
            None => match named(&["canary"]) {
                Some(i) => i,
                None => {
                    let others: Vec<usize> = (0..versions.len()).filter(|i| *i != baseline).collect();
                    let at_zero: Vec<usize> = others.iter().copied().filter(|i| weight(*i) == 0.0).collect();
                    match (others.as_slice(), at_zero.as_slice()) {
                        ([one], _) => *one,
                        (_, [one]) => *one,
                        _ => {
                            let names: Vec<&str> = versions.iter().map(|v| v.name.as_str()).collect();
                            return Err(err(format!(
                                "{at}: which version of {} is the canary? Its versions are {}: name them primary and canary, give the canary no weight in the split, or use a canary: block with baseline and canary",
                                self.service,
                                names.join(", ")
                            )));
                        }
                    }
                }
            },
        };
        if baseline == canary {
            return Err(err(format!("{at}: the canary and the baseline are the same version")));
        }
        if self.interval <= 0.0 || self.threshold == 0 {
            return Err(err(format!("{at}: interval must be longer than zero and threshold at least 1")));
        }
        let durations = self.durations.unwrap_or_else(|| vec![self.interval; self.weights.len()]);
        Ok(Plan {
            service,
            baseline,
            canary,
            weights: self.weights,
            durations,
            judged: self.judged,
            threshold: self.threshold,
            success_min: self.success_min,
            p99_max_ms: self.p99_max_ms,
            warnings: self.warnings,
        })
    }
}

/// The one document of `kind` in a file (YAML, `---` between documents), with the documents of the
/// `companion` kinds beside it; any other kind is an error naming it.
fn resource(
    text: &str,
    origin: &str,
    kind: &str,
    companion: &[&str],
    what: &str,
) -> Result<(serde_json::Value, Vec<serde_json::Value>), ScenarioError> {
    let err = |message: String| ScenarioError { origin: origin.to_owned(), message };
    let (mut main, mut others) = (Vec::new(), Vec::new());
    for (i, v) in crate::policy_input::documents(text, origin)?.into_iter().enumerate() {
        match v.get("kind").and_then(|k| k.as_str()) {
            Some(k) if k == kind => main.push(v),
            Some(k) if companion.contains(&k) => others.push(v),
            other => {
                return Err(err(format!(
                    "document {}: kind {}: expected {what} (and its {})",
                    i + 1,
                    other.unwrap_or("(none)"),
                    companion.join(", ")
                )));
            }
        }
    }
    match <[serde_json::Value; 1]>::try_from(main) {
        Ok([one]) => Ok((one, others)),
        Err(found) => Err(err(format!("expected one {what} in the file, found {}", found.len()))),
    }
}

/// Flagger's analysis fields: (name, modelled).
const ANALYSIS_FIELDS: [(&str, bool); 17] = [
    ("interval", true),
    ("threshold", true),
    ("maxWeight", true),
    ("stepWeight", true),
    ("stepWeights", true),
    ("metrics", true),
    ("webhooks", false),
    ("alerts", false),
    ("iterations", false),
    ("mirror", false),
    ("mirrorWeight", false),
    ("match", false),
    ("primaryReadyThreshold", false),
    ("canaryReadyThreshold", false),
    ("stepWeightPromotion", false),
    ("sessionAffinity", false),
    ("skipAnalysis", false),
];

/// Flagger's built-in metrics.
const BUILTIN_METRICS: [&str; 2] = ["request-success-rate", "request-duration"];

/// A Flagger `Canary`, alone or with other documents (MetricTemplates) in the file.
fn flagger(text: &str, origin: &str, sc: &Scenario) -> Result<Plan, ScenarioError> {
    let err = |message: String| ScenarioError { origin: origin.to_owned(), message };
    let (c, companions) = resource(text, origin, "Canary", &["MetricTemplate"], "Flagger's Canary")?;
    let templates: Vec<String> = companions
        .iter()
        .map(|v| v.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or_default().to_owned())
        .collect();
    let name = c.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("canary");
    let at = format!("Canary {name}");
    let field = |path: &str| format!("{at}: {path}");
    let service = c
        .pointer("/spec/targetRef/name")
        .and_then(|n| n.as_str())
        .ok_or_else(|| err(field("spec.targetRef.name: missing")))?
        .to_owned();
    let a = c.pointer("/spec/analysis").ok_or_else(|| err(field("spec.analysis: missing")))?;
    let mut warnings = Vec::new();
    for key in a.as_object().into_iter().flatten().map(|(k, _)| k) {
        match ANALYSIS_FIELDS.iter().find(|(f, _)| f == key) {
            Some((_, true)) => {}
            Some((f, false)) if matches!(*f, "iterations" | "mirror" | "match") => {
                return Err(err(field(&format!(
                    "spec.analysis.{f}: not modelled: blue/green, A/B and mirrored analyses send the canary no share of the split; only weighted steps are simulated"
                ))));
            }
            Some((f, false)) => warnings.push(field(&format!("spec.analysis.{f}: not modelled; left out"))),
            None => {
                let known: Vec<&str> = ANALYSIS_FIELDS.iter().map(|(f, _)| *f).collect();
                return Err(err(field(&format!(
                    "spec.analysis.{key}: unknown field: Flagger's analysis has {}",
                    known.join(", ")
                ))));
            }
        }
    }
    let num = |k: &str| a.get(k).and_then(|v| v.as_f64());
    let weights = match a.get("stepWeights") {
        Some(list) => {
            let w: Vec<f64> = list
                .as_array()
                .map(|l| l.iter().filter_map(|x| x.as_f64()).collect())
                .ok_or_else(|| err(field("spec.analysis.stepWeights: expected a list of percents")))?;
            if w.is_empty() || w.iter().any(|x| !(*x > 0.0 && *x <= 100.0)) || w.windows(2).any(|p| p[1] < p[0]) {
                return Err(err(field("spec.analysis.stepWeights: expected rising percents above 0, at most 100")));
            }
            w
        }
        None => steps_of(num("stepWeight").unwrap_or(0.0), num("maxWeight").unwrap_or(0.0))
            .map_err(|m| err(field(&format!("spec.analysis: {m}"))))?,
    };
    let interval_text = a.get("interval").and_then(|v| v.as_str()).unwrap_or("60s");
    let interval =
        parse_duration(interval_text).map_err(|e| err(field(&format!("spec.analysis.interval: {e}"))))?.as_secs_f64();
    let threshold = a.get("threshold").and_then(|v| v.as_u64()).unwrap_or(1) as u32;
    let (mut success_min, mut p99_max_ms) = (0.0, f64::INFINITY);
    for (i, m) in a.get("metrics").and_then(|m| m.as_array()).into_iter().flatten().enumerate() {
        let mpath = format!("spec.analysis.metrics[{i}]");
        let mname = m.get("name").and_then(|n| n.as_str()).unwrap_or_default();
        if let Some(t) = m.pointer("/templateRef/name").and_then(|n| n.as_str()) {
            let known = if templates.iter().any(|x| x == t) { "given in the file" } else { "not in the file" };
            return Err(err(field(&format!(
                "{mpath}: metric {mname:?} uses MetricTemplate {t:?} ({known}): its query cannot be run on a simulation; use request-success-rate or request-duration"
            ))));
        }
        let range = m.get("thresholdRange");
        let (min, max) = (
            range.and_then(|r| r.get("min")).and_then(|v| v.as_f64()),
            range.and_then(|r| r.get("max")).and_then(|v| v.as_f64()),
        );
        match mname {
            "request-success-rate" => {
                success_min = min.ok_or_else(|| err(field(&format!("{mpath}.thresholdRange.min: missing"))))?
            }
            "request-duration" => {
                p99_max_ms = max.ok_or_else(|| err(field(&format!("{mpath}.thresholdRange.max: missing"))))?
            }
            other => {
                return Err(err(field(&format!(
                    "{mpath}.name: unknown builtin metric {other:?}: Flagger's builtins are {}; others need a templateRef",
                    BUILTIN_METRICS.join(" and ")
                ))));
            }
        }
        if let Some(mi) = m.get("interval").and_then(|v| v.as_str())
            && parse_duration(mi).ok().map(|d| d.as_secs_f64()) != Some(interval)
        {
            warnings.push(field(&format!(
                "{mpath}.interval: {mi} differs from the analysis interval {interval_text}; each check uses the whole interval"
            )));
        }
    }
    if c.pointer("/spec/service/retries").is_some() || c.pointer("/spec/service/timeout").is_some() {
        warnings.push(field(
            "spec.service: retries and timeout are Istio's route policy: give them with --policy (a VirtualService) to simulate them",
        ));
    }
    let draft = Draft {
        service,
        baseline: None,
        canary: None,
        weights,
        interval,
        threshold,
        success_min,
        p99_max_ms,
        warnings,
        durations: None,
        judged: true,
    };
    draft.resolve(sc, origin, &at)
}

/// An Argo Rollouts duration: seconds as a number, or text such as `10s`, `5m`, `1h`.
fn argo_duration(v: &serde_json::Value, path: &str) -> Result<f64, String> {
    match v {
        serde_json::Value::Number(n) => n.as_f64().ok_or_else(|| format!("{path}: expected seconds")),
        serde_json::Value::String(t) => parse_duration(t).map(|d| d.as_secs_f64()).map_err(|e| format!("{path}: {e}")),
        _ => Err(format!("{path}: expected a duration such as 30s")),
    }
}

/// An Argo Rollout's canary steps: each `setWeight` holds for the `pause` after it. Argo's analysis
/// (a Prometheus or other query behind each AnalysisTemplate) cannot run on a simulation, so the
/// steps are shown and not judged, and the output says so.
fn argo(text: &str, origin: &str, sc: &Scenario) -> Result<Plan, ScenarioError> {
    let err = |message: String| ScenarioError { origin: origin.to_owned(), message };
    let (r, _) = resource(text, origin, "Rollout", &["AnalysisTemplate", "ClusterAnalysisTemplate"], "Argo's Rollout")?;
    let name = r.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("rollout");
    let at = format!("Rollout {name}");
    let field = |path: &str| format!("{at}: {path}");
    let canary = r
        .pointer("/spec/strategy/canary")
        .ok_or_else(|| err(field("spec.strategy.canary: missing (a blueGreen strategy sends the canary no share)")))?;
    let mut warnings = Vec::new();
    if canary.get("analysis").is_some() {
        warnings.push(field(
            "spec.strategy.canary.analysis: not run: an AnalysisTemplate's query cannot run on a simulation; steps are shown, not judged",
        ));
    }
    let (mut weights, mut durations) = (Vec::new(), Vec::new());
    let mut weight: Option<f64> = None;
    for (i, step) in canary.get("steps").and_then(|s| s.as_array()).into_iter().flatten().enumerate() {
        let spath = format!("spec.strategy.canary.steps[{i}]");
        for (key, v) in step.as_object().into_iter().flatten() {
            match key.as_str() {
                "setWeight" => {
                    let w = v.as_f64().filter(|w| (0.0..=100.0).contains(w));
                    weight = Some(w.ok_or_else(|| err(field(&format!("{spath}.setWeight: expected a percent"))))?);
                }
                "pause" => {
                    let seconds = match v.get("duration") {
                        Some(d) => argo_duration(d, &format!("{spath}.pause.duration")).map_err(|m| err(field(&m)))?,
                        None => {
                            warnings.push(field(&format!(
                                "{spath}.pause: no duration waits for a person to promote; 60 s are simulated"
                            )));
                            60.0
                        }
                    };
                    match weight {
                        Some(w) if w > 0.0 && seconds > 0.0 => {
                            weights.push(w);
                            durations.push(seconds);
                        }
                        _ => {}
                    }
                }
                "analysis" => {
                    // The weight is held until the AnalysisRun ends, which a simulation cannot run.
                    warnings.push(field(&format!(
                        "{spath}.analysis: not run: an AnalysisTemplate's query cannot run on a simulation; the weight is held 60 s"
                    )));
                    if let Some(w) = weight.filter(|w| *w > 0.0) {
                        weights.push(w);
                        durations.push(60.0);
                    }
                }
                "setCanaryScale" | "setHeaderRoute" | "setMirrorRoute" | "experiment" | "plugin" => {
                    warnings.push(field(&format!("{spath}.{key}: not modelled; left out")))
                }
                other => {
                    return Err(err(field(&format!(
                        "{spath}.{other}: unknown step: Argo's steps are setWeight, pause, analysis, setCanaryScale, setHeaderRoute, setMirrorRoute, experiment"
                    ))));
                }
            }
        }
    }
    if weights.is_empty() {
        return Err(err(field("spec.strategy.canary.steps: no setWeight held by a pause: nothing to simulate")));
    }
    let draft = Draft {
        service: name.to_owned(),
        baseline: None,
        canary: None,
        interval: durations[0],
        weights,
        threshold: u32::MAX,
        success_min: 0.0,
        p99_max_ms: f64::INFINITY,
        warnings,
        durations: Some(durations),
        judged: false,
    };
    draft.resolve(sc, origin, &at)
}

/// One step's prediction.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// Canary weight, percent.
    pub weight: f64,
    /// How long it ran, seconds.
    pub seconds: f64,
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
    /// The service.
    pub service: String,
    /// The canary version.
    pub canary: String,
    /// The baseline version.
    pub baseline: String,
    /// Steps run.
    pub steps: Vec<Step>,
    /// Promoted (else rolled back).
    pub promoted: bool,
    /// Seconds until promotion or rollback.
    pub after_seconds: f64,
}

/// Runs the plan on `sc` with `seeds`, as Flagger runs its analysis: one check per interval; a
/// passed check advances the canary to the next weight (promotion after the last), a failed one
/// halts it at its weight and counts, and failed checks reaching the threshold roll it back.
/// Each check runs on seeds of its own.
pub fn simulate(sc: &Scenario, plan: &Plan, seeds: u64) -> Outcome {
    let mut steps = Vec::new();
    let mut failed = 0;
    let svc_name = sc.services[plan.service].name.clone();
    let (base, can) = (
        sc.services[plan.service].versions[plan.baseline].name.clone(),
        sc.services[plan.service].versions[plan.canary].name.clone(),
    );
    let mut at = 0;
    let mut promoted = false;
    // Every check either advances or counts a failure, so this many checks end the plan.
    for check in 0..(plan.weights.len() as u64 + u64::from(plan.threshold)) {
        let (Some(&weight), Some(&seconds)) = (plan.weights.get(at), plan.durations.get(at)) else {
            promoted = true;
            break;
        };
        let mut s = sc.clone();
        s.duration = seconds;
        s.services[plan.service].policy.split =
            vec![(base.clone(), 1.0 - weight / 100.0), (can.clone(), weight / 100.0)];
        let report = crate::report::run_seeds(&s, 1 + check * seeds.max(1), seeds, |_, _| {});
        let name = format!("{svc_name} {can}");
        let Some(row) = report.rows.into_iter().find(|r| r.name == name) else { break };
        let passed = row.success_pct.median >= plan.success_min && row.p99_ms.median <= plan.p99_max_ms;
        if passed {
            at += 1;
        } else {
            failed += 1;
        }
        steps.push(Step { weight, seconds: s.duration, canary: row, passed, failed_checks: failed });
        if failed >= plan.threshold {
            break;
        }
    }
    if failed < plan.threshold && at >= plan.weights.len() {
        promoted = true;
    }
    Outcome {
        service: svc_name,
        canary: can,
        baseline: base,
        after_seconds: steps.iter().map(|s| s.seconds).sum(),
        steps,
        promoted,
    }
}

/// The plan's steps as a table.
pub fn write_table(out: &mut impl std::io::Write, o: &Outcome, plan: &Plan) -> std::io::Result<()> {
    writeln!(out, "canary {} {} against baseline {}", o.service, o.canary, o.baseline)?;
    writeln!(
        out,
        "{:>6} {:>8} {:>22} {:>26} {:>8}",
        "CHECK", "WEIGHT", "SUCCESS median (range)", "P99 median (range)", "RESULT"
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
            match (plan.judged, s.passed) {
                (false, _) => "-",
                (true, true) => "pass",
                (true, false) => "FAIL",
            }
        )?;
    }
    if !plan.judged {
        writeln!(
            out,
            "{} steps over {:.0}s, not judged: the rollout's analysis cannot run on a simulation; read the figures",
            o.steps.len(),
            o.after_seconds
        )
    } else if o.promoted {
        writeln!(out, "promoted after {} checks ({:.0}s)", o.steps.len(), o.after_seconds)
    } else {
        writeln!(
            out,
            "rollback after check {} (weight {:.0}%) after {:.0}s: {} failed checks reached the threshold {}",
            o.steps.len(),
            o.steps.last().map_or(0.0, |s| s.weight),
            o.after_seconds,
            o.steps.last().map_or(0, |s| s.failed_checks),
            plan.threshold
        )
    }
}
