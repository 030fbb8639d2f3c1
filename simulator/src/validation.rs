//! Validation against queueing theory and retry algebra, each over several seeds with a tolerance
//! from the statistics.

use crate::engine::Sim;
use crate::scenario::Scenario;

fn scenario(text: &str) -> Scenario {
    Scenario::parse(text, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

fn mean_over_seeds(sc: &Scenario, seeds: u64, f: impl Fn(&Sim) -> f64) -> f64 {
    (1..=seeds).map(|s| f(&Sim::new(sc, s).run())).sum::<f64>() / seeds as f64
}

fn mm1(lambda: f64, mu_ms: f64, secs: u64) -> Scenario {
    scenario(&format!(
        "duration: {secs}s\narrivals: {{rate: {lambda}}}\nentry: s\nservices:\n  s:\n    versions:\n      v1: {{concurrency: 1, service_time: {{exponential: {mu_ms}ms}}}}\n"
    ))
}

#[test]
fn mm1_mean_and_p99_match_theory_at_rho_half_and_0_8() {
    // Response time of M/M/1 is exponential with rate mu - lambda: mean 1/(mu-lambda), p99 ln(100)/(mu-lambda).
    for (lambda, secs) in [(50.0, 2000), (80.0, 4000)] {
        let sc = mm1(lambda, 10.0, secs);
        let gap: f64 = 100.0 - lambda;
        let mean = mean_over_seeds(&sc, 3, |s| s.root.latency.mean() / 1e6);
        let p99 = mean_over_seeds(&sc, 3, |s| s.root.latency.value_at_quantile(0.99) as f64 / 1e6);
        let (want_mean, want_p99) = (1.0 / gap, 100f64.ln() / gap);
        assert!((mean / want_mean - 1.0).abs() < 0.06, "rho {}: mean {mean} vs {want_mean}", lambda / 100.0);
        assert!((p99 / want_p99 - 1.0).abs() < 0.08, "rho {}: p99 {p99} vs {want_p99}", lambda / 100.0);
    }
}

#[test]
fn mmc_waiting_matches_erlang_c() {
    // c = 3 servers of rate 10/s, lambda 24/s: a = 2.4, rho = 0.8.
    let (c, mu, lambda) = (3usize, 10.0f64, 24.0f64);
    let a = lambda / mu;
    let rho = a / c as f64;
    let sum: f64 = (0..c).map(|k| a.powi(k as i32) / (1..=k).map(|i| i as f64).product::<f64>()).sum();
    let last = a.powi(c as i32) / (1..=c).map(|i| i as f64).product::<f64>() / (1.0 - rho);
    let erlang_c = last / (sum + last);
    let want = erlang_c / (c as f64 * mu - lambda) + 1.0 / mu;
    let sc = scenario(
        "duration: 4000s\narrivals: {rate: 24}\nentry: s\nservices:\n  s:\n    versions:\n      v1: {concurrency: 3, service_time: {exponential: 100ms}}\n",
    );
    let mean = mean_over_seeds(&sc, 3, |s| s.root.latency.mean() / 1e6);
    assert!((mean / want - 1.0).abs() < 0.06, "mean response {mean} vs Erlang C {want}");
}

fn retry_chain(p_pct: f64, attempts: u32, budget: &str) -> Scenario {
    scenario(&format!(
        "duration: 500s\narrivals: {{rate: 100}}\nentry: a\nservices:\n  a:\n    versions:\n      v1: {{service_time: {{constant: 1ms}}, calls: [b]}}\n  b:\n    versions:\n      v1: {{service_time: {{constant: 1ms}}, error_pct: {p_pct}}}\npolicy:\n  services:\n    b: {{retries: {{attempts: {attempts}, backoff: {{base: 1ms, max: 1ms}}{budget}}}}}\n"
    ))
}

#[test]
fn retries_follow_the_algebra() {
    // p = 0.3, N = 2 retries: success 1 - p^3, attempts (1 - p^3) / (1 - p). No budget limit.
    let sc = retry_chain(30.0, 2, ", budget: {ratio: 10, min_per_second: 1000}");
    let sims: Vec<Sim> = (1..=3).map(|s| Sim::new(&sc, s).run()).collect();
    let p: f64 = 0.3;
    for s in &sims {
        let requests = s.root.offered as f64;
        let success = s.root.ok as f64 / requests;
        let attempts = s.tallies[1][0].offered as f64 / requests;
        // 50,000 requests: sd of the success share ~0.0007, of attempts ~0.003.
        assert!((success - (1.0 - p.powi(3))).abs() < 0.005, "success {success}");
        assert!((attempts - (1.0 - p.powi(3)) / (1.0 - p)).abs() < 0.015, "attempts {attempts}");
    }
}

#[test]
fn three_layers_of_four_tries_make_64_times_the_load() {
    let sc = scenario(
        "duration: 50s\narrivals: {rate: 10, process: constant}\nentry: l0\nservices:\n  l0:\n    versions:\n      v1: {service_time: {constant: 1ms}, calls: [l1]}\n  l1:\n    versions:\n      v1: {service_time: {constant: 1ms}, calls: [l2]}\n  l2:\n    versions:\n      v1: {service_time: {constant: 1ms}, calls: [l3]}\n  l3:\n    versions:\n      v1: {service_time: {constant: 1ms}, error_pct: 100}\npolicy:\n  services:\n    l1: {retries: {attempts: 3, backoff: {base: 1ms, max: 1ms}, budget: {ratio: 100, min_per_second: 100000}}}\n    l2: {retries: {attempts: 3, backoff: {base: 1ms, max: 1ms}, budget: {ratio: 100, min_per_second: 100000}}}\n    l3: {retries: {attempts: 3, backoff: {base: 1ms, max: 1ms}, budget: {ratio: 100, min_per_second: 100000}}}\n",
    );
    let s = Sim::new(&sc, 1).run();
    let requests = s.root.offered as f64;
    assert_eq!(s.root.ok, 0);
    assert_eq!(s.tallies[3][0].offered as f64 / requests, 64.0);
}

#[test]
fn a_budget_caps_amplification_near_one_plus_its_ratio() {
    // Everything fails, 3 retries allowed, budget 20% with no floor: attempts per request near 1.2.
    let sc = retry_chain(100.0, 3, ", budget: {ratio: 0.2, min_per_second: 0}");
    let s = Sim::new(&sc, 1).run();
    let amplification = s.tallies[1][0].offered as f64 / s.root.offered as f64;
    assert!((amplification - 1.2).abs() < 0.02, "{amplification}");
    assert!(s.tallies[1][0].budget_denied > 0);
}

#[test]
fn the_split_gives_each_version_its_share() {
    let sc = scenario(
        "duration: 100s\narrivals: {rate: 100}\nentry: a\nservices:\n  a:\n    versions:\n      v1: {service_time: {constant: 1ms}, calls: [b]}\n  b:\n    versions:\n      v1: {service_time: {constant: 1ms}}\n      v2: {service_time: {constant: 1ms}}\npolicy:\n  services:\n    b: {split: {v1: 90, v2: 10}}\n",
    );
    for seed in 1..=3 {
        let s = Sim::new(&sc, seed).run();
        let (v1, v2) = (s.tallies[1][0].offered as f64, s.tallies[1][1].offered as f64);
        let n = v1 + v2;
        // Binomial(n, 0.1): four standard deviations.
        let sd = (n * 0.1 * 0.9).sqrt();
        assert!((v2 - 0.1 * n).abs() < 4.0 * sd, "v2 got {v2} of {n}");
    }
}

#[test]
fn a_timeout_bounds_latency() {
    let sc = scenario(
        "duration: 20s\narrivals: {rate: 20}\nentry: a\nservices:\n  a:\n    versions:\n      v1: {service_time: {constant: 1ms}, calls: [b]}\n  b:\n    versions:\n      v1: {service_time: {lognormal: {p50: 100ms, p99: 3s}}}\npolicy:\n  services:\n    b: {timeout: 200ms}\n",
    );
    let s = Sim::new(&sc, 7).run();
    let max_ms = s.root.latency.max() as f64 / 1000.0;
    assert!(max_ms <= 202.0, "latency {max_ms} ms despite a 200 ms timeout");
    assert!(s.tallies[1][0].timeouts > 0);
}

#[test]
fn semantic_errors_name_the_line() {
    let text = "duration: 1m\narrivals: {rate: 5}\nentry: a\nservices:\n  a:\n    versions:\n      v1:\n        service_time: {constant: 1ms}\n        error_pct: 140\n";
    let e = Scenario::parse(text, "s.yaml").unwrap_err().to_string();
    assert!(e.starts_with("s.yaml: line 9: services.a.versions.v1.error_pct"), "{e}");
}

#[test]
fn bad_scenarios_are_explained() {
    for (text, needle) in [
        (
            "duration: 1m\narrivals: {rate: -5}\nentry: a\nservices: {a: {versions: {v1: {service_time: {constant: 1ms}}}}}\n",
            "arrivals.rate",
        ),
        (
            "duration: 1m\narrivals: {rate: 5}\nentry: b\nservices: {a: {versions: {v1: {service_time: {constant: 1ms}}}}}\n",
            "entry",
        ),
        (
            "duration: 1m\narrivals: {rate: 5}\nentry: a\nservices: {a: {versions: {v1: {service_time: {constant: 1ms}}}}}\npolicy: {services: {a: {split: {v1: 0}}}}\n",
            "weights sum to 0",
        ),
        (
            "duration: 1m\narrivals: {rate: 5}\nentry: a\nservices: {a: {versions: {v1: {service_time: {constant: 1ms}}}}}\npolicy: {services: {a: {timeout: 1s, retries: {attempts: 1, per_try_timeout: 2s}}}}\n",
            "per_try_timeout",
        ),
        (
            "duration: 1m\narrivals: {rate: 5}\nentry: a\nservices: {a: {versions: {v1: {service_time: {constant: 1ms}, calls: [x]}}}}\n",
            "calls[0]",
        ),
        (
            "duration: 1m\narrivals: {rate: 5}\nentry: a\nservices: {a: {versions: {v1: {service_tim: 1}}}}\n",
            "unknown field",
        ),
    ] {
        let e = Scenario::parse(text, "s.yaml").unwrap_err().to_string();
        assert!(e.starts_with("s.yaml: ") && e.contains(needle), "{needle:?} not in {e}");
    }
}

#[test]
fn a_canary_plan_rolls_back_a_bad_canary_and_promotes_a_good_one() {
    use crate::canary::{Plan, simulate};
    let text = include_str!("../../examples/sim/canary.yaml");
    let sc = scenario(text);
    let plan = Plan::parse(text, "canary.yaml", &sc).unwrap();
    let flagger = Plan::parse(include_str!("../../examples/sim/flagger-canary.yaml"), "flagger.yaml", &sc).unwrap();
    assert_eq!(plan, flagger, "Flagger's Canary reads as the same plan");
    let bad = simulate(&sc, &plan, 3);
    assert!(!bad.promoted);
    assert_eq!(bad.steps.len(), 2, "two failed checks reach the threshold of 2");
    assert!(bad.steps.iter().all(|s| s.canary.success_pct.median < 99.0));

    let good_text = text.replace("error_pct: 3", "error_pct: 0").replace("p99: 400ms", "p99: 100ms");
    let good = scenario(&good_text);
    let outcome = simulate(&good, &Plan::parse(&good_text, "c.yaml", &good).unwrap(), 3);
    assert!(outcome.promoted, "{:?}", outcome.steps.iter().map(|s| (s.weight, s.passed)).collect::<Vec<_>>());
    assert_eq!(outcome.steps.iter().map(|s| s.weight).collect::<Vec<_>>(), [10.0, 20.0, 30.0, 40.0, 50.0]);
    assert_eq!(outcome.after_seconds, 300.0);
    // The canary's share of reviews follows the step weight.
    let last = &outcome.steps[4].canary;
    assert!((last.offered_rps.median - 50.0).abs() < 5.0, "{}", last.offered_rps.median);
}

#[test]
fn the_metastable_example_stays_down_without_a_budget_and_recovers_with_one() {
    let text = include_str!("../../examples/sim/metastable.yaml");
    let storm = scenario(text);
    let mut budgeted = scenario(text);
    budgeted.with_policy(include_str!("../../examples/sim/metastable-budget.yaml"), "budget.yaml").unwrap();
    let tail = |s: &Sim| {
        // Users' success over the last minute, long after the spike (30 s to 45 s) ended.
        let last: Vec<&(u64, u64)> = s.timeline.iter().filter(|(a, b)| a + b > 0).rev().take(6).collect();
        let (ok, all) = last.iter().fold((0, 0), |(o, n), (a, b)| (o + a, n + a + b));
        100.0 * ok as f64 / all.max(1) as f64
    };
    for seed in 1..=2 {
        let (down, up) = (tail(&Sim::new(&storm, seed).run()), tail(&Sim::new(&budgeted, seed).run()));
        assert!(down < 10.0, "seed {seed}: without a budget the system stays collapsed ({down}% ok)");
        assert!(up > 90.0, "seed {seed}: with a budget it recovers ({up}% ok)");
    }
}

#[test]
fn faults_start_and_stop() {
    let sc = scenario(
        "duration: 40s\narrivals: {rate: 50}\nentry: a\nservices:\n  a:\n    versions:\n      v1: {service_time: {constant: 1ms}, calls: [b]}\n  b:\n    versions:\n      v1: {service_time: {constant: 1ms}}\nfaults:\n  - {service: b, from: 10s, to: 20s, error_pct: 100}\n  - {service: b, version: v1, from: 30s, to: 40s, delay: 200ms}\n",
    );
    let s = Sim::new(&sc, 3).run();
    let share = |(ok, failed): (u64, u64)| ok as f64 / (ok + failed) as f64;
    // A request that arrives in the last 2 ms before the fault starts meets it at b.
    assert!(share(s.timeline[0]) > 0.99, "{:?}", s.timeline);
    assert_eq!(share(s.timeline[1]), 0.0, "the fault fails everything from 10 s to 20 s");
    assert_eq!(share(s.timeline[2]), 1.0);
    assert!(s.root.latency.max() >= 200_000, "the delay fault shows in latency");
}

#[test]
fn an_empirical_service_time_is_drawn_as_given() {
    let sc = scenario(
        "duration: 200s\narrivals: {rate: 100}\nentry: a\nservices:\n  a:\n    versions:\n      v1: {service_time: {empirical: [[10ms, 60], [20ms, 30], [200ms, 10]]}}\n",
    );
    let s = Sim::new(&sc, 5).run();
    let h = &s.root.latency;
    assert!((h.value_at_quantile(0.5) as f64 / 1000.0 - 10.0).abs() < 0.1);
    assert!((h.value_at_quantile(0.8) as f64 / 1000.0 - 20.0).abs() < 0.1);
    assert!((h.value_at_quantile(0.95) as f64 / 1000.0 - 200.0).abs() < 1.0);
    // 20,000 draws: the 10 ms share is 60% within four sd (0.35%).
    let share = h.count_between(0, 10_100) as f64 / h.len() as f64;
    assert!((share - 0.6).abs() < 0.014, "{share}");
}

#[test]
fn parallel_calls_take_the_longest_sequential_ones_the_sum() {
    let text = |parallel: bool| {
        format!(
            "duration: 20s\narrivals: {{rate: 10}}\nentry: a\nservices:\n  a:\n    versions:\n      v1: {{service_time: {{constant: 1ms}}, calls: [b, c], parallel: {parallel}}}\n  b:\n    versions:\n      v1: {{service_time: {{constant: 30ms}}}}\n  c:\n    versions:\n      v1: {{service_time: {{constant: 50ms}}}}\n"
        )
    };
    let p50 = |t: String| Sim::new(&scenario(&t), 1).run().root.latency.value_at_quantile(0.5) as f64 / 1000.0;
    assert!((p50(text(true)) - 51.0).abs() < 0.5, "{}", p50(text(true)));
    assert!((p50(text(false)) - 81.0).abs() < 0.5, "{}", p50(text(false)));
}

#[test]
fn ramps_and_replayed_arrivals_drive_the_load() {
    let sc = scenario(
        "duration: 100s\narrivals: {rate: 1, ramps: [{from: 0s, to: 100s, from_rate: 0, to_rate: 200}]}\nentry: a\nservices:\n  a:\n    versions:\n      v1: {service_time: {constant: 1ms}}\n",
    );
    let s = Sim::new(&sc, 2).run();
    // The integral of the ramp: 100 s * 200 / 2 = 10,000 (Poisson: sd 100).
    assert!((s.root.offered as f64 - 10_000.0).abs() < 400.0, "{}", s.root.offered);
    assert!(s.timeline[9].0 > 5 * s.timeline[1].0, "the last 10 s carry far more than the second");

    let dir = std::env::temp_dir().join(format!("meshlens-sim-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("arrivals.log"), "0.5\n1.0\n1.0\n2.25\n\n7.5\n").unwrap();
    std::fs::write(
        dir.join("s.yaml"),
        "duration: 10s\narrivals: {rate: 1, replay: arrivals.log}\nentry: a\nservices:\n  a:\n    versions:\n      v1: {service_time: {constant: 1ms}}\n",
    )
    .unwrap();
    let sc = Scenario::load(&dir.join("s.yaml")).unwrap();
    let s = Sim::new(&sc, 1).run();
    assert_eq!(s.root.offered, 5, "exactly the recorded arrivals");
    std::fs::write(dir.join("arrivals.log"), "0.5\nsoon\n").unwrap();
    let e = Scenario::load(&dir.join("s.yaml")).unwrap_err().to_string();
    assert!(e.contains("arrivals.log line 2"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn outlier_detection_ejects_a_failing_instance_and_round_robin_spreads() {
    // b has 4 instances; a fault fails one version's requests at random, so consecutive failures
    // land on instances and outlier detection ejects them, at most 50% at once.
    let text = "duration: 60s\narrivals: {rate: 200}\nentry: a\nservices:\n  a:\n    versions:\n      v1: {service_time: {constant: 1ms}, calls: [b]}\n  b:\n    versions:\n      v1: {instances: 4, service_time: {constant: 5ms}, error_pct: ERR}\npolicy:\n  services:\n    b: {load_balancer: round_robin, outlier_detection: {consecutive_5xx: 3, base_ejection_time: 5s, max_ejection_percent: 50}}\n";
    let (ok_sc, bad_sc) = (scenario(&text.replace("ERR", "0")), scenario(&text.replace("ERR", "60")));
    let healthy = Sim::new(&ok_sc, 1).run();
    assert_eq!(healthy.tallies[1][0].ejections, 0);
    let failing = Sim::new(&bad_sc, 1).run();
    assert!(failing.tallies[1][0].ejections > 5, "ejections {}", failing.tallies[1][0].ejections);
    assert!(failing.root.offered > 11_000, "traffic still flows to the instances left");
}

/// A caller `a` and a callee `b` with versions v1, v2, v3 split 25/25/50 (v3 failing 20% with a
/// 500), as the fidelity table's first rows; `POLICY` is b's policy.
fn split_case(policy: &str) -> Scenario {
    scenario(&format!(
        "duration: 200s\narrivals: {{rate: 100}}\nentry: a\nservices:\n  a:\n    versions:\n      v1: {{service_time: {{constant: 1ms}}, calls: [b]}}\n  b:\n    versions:\n      v1: {{service_time: {{constant: 2ms}}}}\n      v2: {{service_time: {{constant: 2ms}}}}\n      v3: {{service_time: {{constant: 2ms}}, error_pct: 20}}\npolicy:\n  services:\n    b: {{split: {{v1: 25, v2: 25, v3: 50}}, {policy}}}\n"
    ))
}

fn run_split(policy: &str, seed: u64) -> (f64, Vec<(u64, u64, u64)>, Histogram) {
    let sc = split_case(policy);
    let s = Sim::new(&sc, seed).run();
    let v: Vec<(u64, u64, u64)> = s.tallies[1].iter().map(|t| (t.retries, t.aborted, t.offered)).collect();
    (success(&s), v, Hist(s.root.latency.value_at_quantile(0.5), s.root.offered))
}

/// The users' p50 (µs) and their request count.
struct Hist(u64, u64);
type Histogram = Hist;

fn success(s: &Sim) -> f64 {
    s.root.ok as f64 / s.root.offered as f64
}

#[test]
fn retry_on_decides_which_classes_are_retried() {
    // 20,000 requests; v3 takes half and fails a fifth: 10% fail without retries (sd 0.2 pp).
    let (none, _, _) = run_split("load_balancer: p2c", 1);
    assert!((none - 0.90).abs() < 0.01, "no retries: {none}");
    // gateway-error is 502-504 and no response: an app's 500 is not retried.
    let (gw, versions, _) = run_split("retries: {attempts: 2, retry_on: [gateway-error]}", 1);
    assert!((gw - 0.90).abs() < 0.01, "gateway-error: {gw}");
    assert_eq!(versions.iter().map(|v| v.0).sum::<u64>(), 0);
    // 5xx retries it: a try fails with 0.1, three tries with 0.001.
    let (all, _, _) = run_split("retries: {attempts: 2, retry_on: [5xx]}", 1);
    assert!(all > 0.997, "5xx: {all}");
}

#[test]
fn the_policy_fault_block_aborts_and_delays_as_the_agent_does() {
    let (ok, versions, Hist(p50, offered)) =
        run_split("fault: {abort: {status: 503, percent: 50}, delay: {fixed: 200ms, percent: 100}}", 2);
    // Half aborted (sd 0.35 pp), the rest fail on v3 a tenth of the time: 0.5 * 0.9 = 0.45.
    assert!((ok - 0.45).abs() < 0.015, "{ok}");
    assert!(p50 >= 200_000, "every request waits the 200 ms delay first: p50 {p50} us");
    let aborted: u64 = versions.iter().map(|v| v.1).sum();
    assert!((aborted as f64 / offered as f64 - 0.5).abs() < 0.015);
    // An aborted request is final: it is not retried even under 5xx.
    let (ok, _, _) = run_split("fault: {abort: {status: 503, percent: 50}}, retries: {attempts: 2}", 2);
    assert!((ok - 0.5).abs() < 0.015, "{ok}");
}

#[test]
fn a_timed_out_attempt_answering_late_is_not_the_calls_success() {
    // The callee always takes 110 ms; each try may take 100 ms; one retry. Every try times out,
    // so every call fails (the real agents: 0.6%), and the abandoned tries are `cancelled` there.
    let sc = scenario(
        "duration: 100s\narrivals: {rate: 20}\nentry: a\nservices:\n  a:\n    versions:\n      v1: {service_time: {constant: 1ms}, calls: [b]}\n  b:\n    versions:\n      v1: {concurrency: 100, service_time: {constant: 110ms}}\npolicy:\n  services:\n    b: {retries: {attempts: 1, per_try_timeout: 100ms, backoff: {base: 5ms, max: 20ms}, budget: {ratio: 1, min_per_second: 100}}}\n",
    );
    let s = Sim::new(&sc, 3).run();
    assert_eq!(s.root.ok, 0, "no call may take a late answer as its own");
    let b = &s.tallies[1][0];
    assert_eq!(b.ok + b.failed, 0);
    assert_eq!(b.cancelled, b.offered);
    assert_eq!(b.timeouts, b.offered);
    assert_eq!(b.retries * 2, b.offered);
}

#[test]
fn an_ejected_version_answers_proxy_503_without_retries() {
    // v3 (one instance) fails half its requests; two in a row eject it for 10 s, during which the
    // caller's proxy answers 503 for every v3 pick, unretried: success falls far below v3's own.
    let sc = split_case(
        "outlier_detection: {consecutive_5xx: 2, base_ejection_time: 10s, max_ejection_percent: 100}, retries: {attempts: 2, retry_on: [gateway-error]}",
    );
    let s = Sim::new(&sc, 4).run();
    let v3 = &s.tallies[1][2];
    assert!(v3.ejections > 0 && v3.proxy_503 > 0, "ejections {} proxy_503 {}", v3.ejections, v3.proxy_503);
    assert!(success(&s) < 0.8, "{}", success(&s));
}

#[test]
fn budgets_are_kept_per_calling_instance() {
    // Two instances of the caller, a budget with no ratio and a floor of 1 retry a second each:
    // 2 retries a second in all (the agent keeps one budget per route, in each caller's agent).
    let sc = scenario(
        "duration: 100s\narrivals: {rate: 50}\nentry: a\nservices:\n  a:\n    versions:\n      v1: {instances: 2, concurrency: 100, service_time: {constant: 1ms}, calls: [b]}\n  b:\n    versions:\n      v1: {concurrency: 100, service_time: {constant: 1ms}, error_pct: 100}\npolicy:\n  services:\n    b: {retries: {attempts: 3, backoff: {base: 1ms, max: 1ms}, budget: {ratio: 0, min_per_second: 1}}}\n",
    );
    let s = Sim::new(&sc, 5).run();
    let retries = s.tallies[1][0].retries;
    // Each budget allows 10 in its first 10 s, then 1 a second: ~2 * (10 + 90) over 100 s.
    assert!((180..=210).contains(&retries), "{retries} retries");
}

/// Istio's own example files (tests/fixtures/istio), read as policy.
fn istio(name: &str) -> (&'static str, String) {
    let text = match name {
        "vs-80-20" => include_str!("../../tests/fixtures/istio/virtual-service-reviews-80-20.yaml"),
        "dr-reviews" => include_str!("../../tests/fixtures/istio/destination-rule-reviews.yaml"),
        "vs-abort" => include_str!("../../tests/fixtures/istio/virtual-service-ratings-test-abort.yaml"),
        "dr-httpbin" => include_str!("../../tests/fixtures/istio/circuit-breaker-httpbin.yaml"),
        "vs-retries" => include_str!("../../tests/fixtures/istio/virtual-service-ratings-retries.yaml"),
        "dr-ratings" => include_str!("../../tests/fixtures/istio/destination-rule-ratings.yaml"),
        _ => unreachable!(),
    };
    (text, format!("{name}.yaml"))
}

#[test]
fn istios_example_files_are_read_as_written() {
    use crate::policy_input::read_policies;
    let (vs, a) = istio("vs-80-20");
    let (dr, b) = istio("dr-reviews");
    let got = read_policies(&[(vs, &a), (dr, &b)]).unwrap();
    let reviews = &got.policy.services["reviews"];
    assert_eq!(reviews.split.get("v1"), Some(&80.0));
    assert_eq!(reviews.split.get("v2"), Some(&20.0));
    assert!(got.warnings.iter().any(|w| w.contains("RANDOM is not modelled")), "{:?}", got.warnings);

    let (vs, a) = istio("vs-retries");
    let (dr, b) = istio("dr-ratings");
    let got = read_policies(&[(vs, &a), (dr, &b)]).unwrap();
    let r = got.policy.services["ratings"].retries.as_ref().unwrap();
    assert_eq!((r.attempts, r.per_try_timeout), (3, Some(std::time::Duration::from_secs(2))));

    let (dr, b) = istio("dr-httpbin");
    let got = read_policies(&[(dr, &b)]).unwrap();
    let od = got.policy.services["httpbin"].outlier_detection.as_ref().unwrap();
    assert_eq!(
        (od.consecutive_5xx, od.base_ejection_time, od.max_ejection_percent),
        (Some(1), Some(std::time::Duration::from_secs(180)), Some(100.0))
    );
    assert!(
        got.warnings.iter().any(|w| w.contains("spec.trafficPolicy.connectionPool: not modelled")),
        "{:?}",
        got.warnings
    );

    // The abort applies only to the user jason's requests: warned, not applied to everybody.
    let (vs, a) = istio("vs-abort");
    let (dr, b) = istio("dr-ratings");
    let got = read_policies(&[(vs, &a), (dr, &b)]).unwrap();
    assert!(got.policy.services["ratings"].fault.is_none());
    assert!(got.warnings.iter().any(|w| w.contains("spec.http[0]: a route with match")), "{:?}", got.warnings);

    // A VirtualService without its DestinationRule cannot say what its subsets are.
    let (vs, a) = istio("vs-80-20");
    let e = read_policies(&[(vs, &a)]).unwrap_err().to_string();
    assert!(e.contains("no subset \"v1\" of reviews"), "{e}");
}

#[test]
fn an_istio_split_takes_effect_in_the_simulator() {
    let mut sc = scenario(
        "duration: 200s\narrivals: {rate: 50}\nentry: productpage\nservices:\n  productpage:\n    versions:\n      v1: {service_time: {constant: 1ms}, calls: [reviews]}\n  reviews:\n    versions:\n      v1: {service_time: {constant: 1ms}}\n      v2: {service_time: {constant: 1ms}}\n      v3: {service_time: {constant: 1ms}}\n",
    );
    let (vs, a) = istio("vs-80-20");
    let (dr, b) = istio("dr-reviews");
    let input = crate::policy_input::read_policies(&[(vs, &a), (dr, &b)]).unwrap();
    sc.apply_policy(&input.policy, "istio").unwrap();
    let s = Sim::new(&sc, 1).run();
    let (v1, v2, v3) = (s.tallies[1][0].offered as f64, s.tallies[1][1].offered as f64, s.tallies[1][2].offered);
    let n = v1 + v2;
    assert_eq!(v3, 0, "no weight, no traffic");
    assert!((v1 / n - 0.8).abs() < 4.0 * (0.16 / n).sqrt(), "v1 share {}", v1 / n);
}

/// podinfo as Flagger deploys it: the primary and the canary (failing `err`% of its requests).
fn podinfo(err: f64) -> Scenario {
    scenario(&format!(
        "duration: 60s\narrivals: {{rate: 100}}\nentry: frontend\nservices:\n  frontend:\n    versions:\n      v1: {{service_time: {{constant: 1ms}}, calls: [podinfo]}}\n  podinfo:\n    versions:\n      primary: {{service_time: {{lognormal: {{p50: 10ms, p99: 40ms}}}}}}\n      canary: {{service_time: {{lognormal: {{p50: 10ms, p99: 40ms}}}}, error_pct: {err}}}\npolicy:\n  services:\n    podinfo: {{split: {{primary: 100, canary: 0}}}}\n"
    ))
}

#[test]
fn flaggers_tutorial_canary_rolls_back_a_failing_canary_at_the_threshold() {
    use crate::canary::{Plan, simulate};
    let text = include_str!("../../examples/sim/podinfo-canary.yaml");
    let sc = podinfo(5.0);
    let plan = Plan::parse(text, "podinfo-canary.yaml", &sc).unwrap();
    // Flagger's names, not the alphabet, say which is which.
    assert_eq!(sc.services[plan.service].versions[plan.canary].name, "canary");
    assert_eq!(plan.weights, vec![10.0, 20.0, 30.0, 40.0, 50.0]);
    assert!(plan.warnings.iter().any(|w| w.contains("spec.analysis.webhooks: not modelled")), "{:?}", plan.warnings);
    assert!(plan.warnings.iter().any(|w| w.contains("metrics[1].interval")), "{:?}", plan.warnings);
    let o = simulate(&sc, &plan, 2);
    // The first check fails (95% < 99%): Flagger halts at 10% and the fifth failed check there
    // reaches the threshold of 5.
    assert!(!o.promoted);
    assert_eq!(o.steps.iter().map(|s| s.weight).collect::<Vec<_>>(), [10.0; 5]);
    assert_eq!((o.canary.as_str(), o.baseline.as_str()), ("canary", "primary"));
    let good = simulate(&podinfo(0.0), &Plan::parse(text, "podinfo-canary.yaml", &podinfo(0.0)).unwrap(), 2);
    assert!(good.promoted, "a healthy canary is promoted");
}

#[test]
fn a_misspelled_or_templated_metric_is_an_error_not_a_promotion() {
    use crate::canary::Plan;
    let text = include_str!("../../examples/sim/podinfo-canary.yaml");
    let sc = podinfo(5.0);
    let e = Plan::parse(&text.replace("request-success-rate", "request-sucess-rate"), "c.yaml", &sc).unwrap_err();
    assert!(
        e.to_string()
            .contains("Canary podinfo: spec.analysis.metrics[0].name: unknown builtin metric \"request-sucess-rate\""),
        "{e}"
    );
    let templated = format!(
        "apiVersion: flagger.app/v1beta1\nkind: MetricTemplate\nmetadata:\n  name: error-rate\nspec:\n  provider: {{type: prometheus}}\n  query: up\n---\n{}",
        text.replace(
            "- name: request-duration\n",
            "- name: error-rate\n      templateRef:\n        name: error-rate\n"
        )
    );
    let e = Plan::parse(&templated, "c.yaml", &sc).unwrap_err().to_string();
    assert!(
        e.contains("metrics[1]: metric \"error-rate\" uses MetricTemplate \"error-rate\" (given in the file)"),
        "{e}"
    );
    let e =
        Plan::parse(&text.replace("    stepWeight: 10\n", "    stepWeight: 10\n    stepWieght: 5\n"), "c.yaml", &sc)
            .unwrap_err()
            .to_string();
    assert!(e.contains("spec.analysis.stepWieght: unknown field"), "{e}");
    let steps = text.replace(
        "    maxWeight: 50\n    # canary increment step\n    # percentage (0-100)\n    stepWeight: 10\n",
        "    stepWeights: [1, 5, 25]\n",
    );
    let plan = Plan::parse(&steps, "c.yaml", &sc).unwrap();
    assert_eq!(plan.weights, vec![1.0, 5.0, 25.0]);
}

#[test]
fn a_profile_keeps_calls_spread_over_versions_and_leaves_retries_out() {
    use meshlens_model::api::{Profile, ProfileEdge, ProfileVersion};
    let v = |app: &str, version: &str, rps: f64, user_rps: f64| ProfileVersion {
        namespace: "bookinfo".into(),
        app: app.into(),
        version: version.into(),
        rps,
        user_rps,
        error_pct: 0.0,
        own_error_pct: 0.0,
        service_p50_ms: 5.0,
        service_p99_ms: 20.0,
    };
    let e = |target: &str, calls: f64| ProfileEdge {
        source: "bookinfo/productpage/v1".into(),
        target: format!("bookinfo/{target}"),
        calls_per_request: calls,
        rps: calls * 30.0,
    };
    let p = Profile {
        revision: 1,
        window_seconds: 60,
        versions: vec![
            v("productpage", "v1", 30.0, 30.0),
            v("reviews", "v1", 10.0, 0.0),
            v("reviews", "v2", 10.0, 0.0),
            v("reviews", "v3", 10.0, 0.0),
        ],
        edges: vec![e("reviews/v1", 0.34), e("reviews/v2", 0.33), e("reviews/v3", 0.33)],
    };
    let sc = Scenario::from_profile(&p, 60.0).unwrap();
    let page = sc.services.iter().find(|s| s.name == "bookinfo/productpage").unwrap();
    let reviews = sc.services.iter().position(|s| s.name == "bookinfo/reviews").unwrap();
    // A third of a call to each of three versions is one call to reviews, not none.
    assert_eq!(page.versions[0].calls, vec![reviews]);
    assert_eq!(sc.services[reviews].policy.split.len(), 3);
}

#[test]
fn argo_rollouts_canary_steps_hold_each_weight_for_its_pause() {
    use crate::canary::{Plan, simulate};
    let rename = |sc: &str| sc.replace("podinfo", "rollout-canary").replace("primary", "stable");
    let sc = scenario(&rename(
        "duration: 60s\narrivals: {rate: 100}\nentry: frontend\nservices:\n  frontend:\n    versions:\n      v1: {service_time: {constant: 1ms}, calls: [podinfo]}\n  podinfo:\n    versions:\n      primary: {service_time: {constant: 5ms}}\n      canary: {service_time: {constant: 5ms}, error_pct: 10}\npolicy:\n  services:\n    podinfo: {split: {primary: 100, canary: 0}}\n",
    ));
    let plan =
        Plan::parse(include_str!("../../tests/fixtures/argo/rollout-canary.yaml"), "rollout-canary.yaml", &sc).unwrap();
    assert_eq!(plan.weights, vec![20.0, 40.0, 60.0, 80.0]);
    assert_eq!(plan.durations, vec![60.0, 40.0, 20.0, 20.0], "the indefinite pause is simulated for 60 s");
    assert!(!plan.judged);
    assert!(plan.warnings.iter().any(|w| w.contains("steps[1].pause: no duration")), "{:?}", plan.warnings);
    let o = simulate(&sc, &plan, 2);
    assert_eq!(o.steps.len(), 4, "every step shown, none judged");
    assert_eq!(o.after_seconds, 140.0);
    // The canary's share of the service follows each weight.
    let rps: Vec<f64> = o.steps.iter().map(|s| s.canary.offered_rps.median).collect();
    assert!(rps.windows(2).all(|w| w[1] > w[0]), "{rps:?}");
    let mut out = Vec::new();
    crate::canary::write_table(&mut out, &o, &plan).unwrap();
    assert!(String::from_utf8(out).unwrap().contains("not judged"));

    let sc2 = scenario(&rename("duration: 60s\narrivals: {rate: 10}\nentry: podinfo\nservices:\n  podinfo:\n    versions:\n      primary: {service_time: {constant: 5ms}}\n      canary: {service_time: {constant: 5ms}}\npolicy:\n  services:\n    podinfo: {split: {primary: 100, canary: 0}}\n").replace("rollout-canary", "rollout-analysis-step"));
    let step =
        Plan::parse(include_str!("../../tests/fixtures/argo/rollout-analysis-step.yaml"), "a.yaml", &sc2).unwrap();
    assert_eq!((step.weights.clone(), step.durations.clone()), (vec![25.0], vec![60.0]));
    assert!(step.warnings.iter().any(|w| w.contains("steps[1].analysis: not run")), "{:?}", step.warnings);
    let bad =
        include_str!("../../tests/fixtures/argo/rollout-canary.yaml").replace("- setWeight: 40", "- setWieght: 40");
    let e = Plan::parse(&bad, "r.yaml", &sc).unwrap_err().to_string();
    assert!(e.contains("Rollout rollout-canary: spec.strategy.canary.steps[2].setWieght: unknown step"), "{e}");
}
