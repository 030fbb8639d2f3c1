//! The policy core's rules, case by case. The ejection table ([`super::cases`]) is also run through
//! the agent's endpoint state and the simulator's instances by their own tests.

use super::*;
use crate::policy::{OutlierDetection, Retries, RetryOn};

fn retries(retry_on: Vec<RetryOn>, ratio: f64, min: f64) -> Retries {
    Retries {
        attempts: 2,
        per_try_timeout: None,
        retry_on,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        budget_ratio: ratio,
        budget_min_per_second: min,
    }
}

#[test]
fn retry_on_follows_envoys_meanings() {
    use Outcome as O;
    use RetryOn as R;
    // (retry_on, outcome, retried)
    let table: &[(&[RetryOn], Outcome, bool)] = &[
        (&[R::ServerError], O::Status(500), true),
        (&[R::ServerError], O::Status(503), true),
        (&[R::ServerError], O::Timeout, true),
        (&[R::ServerError], O::Reset, true),
        (&[R::ServerError], O::ConnectFailure, true),
        (&[R::ServerError], O::Status(404), false),
        (&[R::ServerError], O::Proxy503, false),
        (&[R::ServerError], O::Cancelled, false),
        (&[R::GatewayError], O::Status(500), false),
        (&[R::GatewayError], O::Status(502), true),
        (&[R::GatewayError], O::Status(504), true),
        (&[R::GatewayError], O::Timeout, true),
        (&[R::Reset], O::Status(503), false),
        (&[R::Reset], O::Reset, true),
        (&[R::Reset], O::Timeout, true),
        (&[R::Reset], O::ConnectFailure, false),
        (&[R::ConnectFailure], O::ConnectFailure, true),
        (&[R::ConnectFailure], O::Reset, false),
        (&[R::Retriable4xx], O::Status(409), true),
        (&[R::Retriable4xx], O::Status(429), false),
        (&[R::Unavailable], O::Grpc(14), true),
        (&[R::Unavailable], O::Grpc(13), false),
        (&[], O::Status(500), false),
    ];
    for (on, outcome, want) in table {
        assert_eq!(retriable(on, *outcome), *want, "{on:?} on {outcome:?}");
    }
}

#[test]
fn classes_and_failures() {
    use Outcome::*;
    let table = [
        (Status(200), "2xx", false),
        (Status(302), "3xx", false),
        (Status(404), "4xx", false),
        (Status(500), "5xx", true),
        (Proxy503, "proxy_503", true),
        (ConnectFailure, "proxy_503", true),
        (Timeout, "timeout", true),
        (Reset, "reset", true),
        (Cancelled, "cancelled", true),
        (Grpc(0), "grpc_0", false),
        (Grpc(5), "grpc_5", false),
        (Grpc(14), "grpc_14", true),
    ];
    for (o, class, failed) in table {
        assert_eq!((o.class().as_str(), o.is_failure()), (class, failed), "{o:?}");
    }
    assert_eq!((Timeout.status(), Proxy503.status(), Reset.status()), (504, 503, 503));
}

#[test]
fn the_split_picks_by_weight_and_rounding_goes_to_the_last_positive() {
    let w = [0.25, 0.25, 0.5, 0.0];
    assert_eq!(pick_weighted(w, 0.0), 0);
    assert_eq!(pick_weighted(w, 0.24), 0);
    assert_eq!(pick_weighted(w, 0.25), 1);
    assert_eq!(pick_weighted(w, 0.99), 2);
    assert_eq!(pick_weighted([0.3, 0.3, 0.3], 0.95), 2, "rounding past the end");
    assert_eq!(pick_weighted([0.5, 0.5, 0.0], 1.0), 1);
}

#[test]
fn backoff_is_full_jitter_under_the_cap() {
    let r = retries(vec![], 0.2, 10.0);
    for n in 0..6 {
        let cap = Duration::from_millis((10u64 << n).min(50));
        assert_eq!(backoff(&r, n, 0.0), Duration::ZERO);
        assert!(backoff(&r, n, 0.999_999) <= cap);
        assert!(backoff(&r, n, 0.999_999) > cap.mul_f64(0.99));
    }
    assert_eq!(
        attempt_limit(Some(Duration::from_millis(100)), Some(Duration::from_millis(40))),
        Some(Duration::from_millis(40))
    );
    assert_eq!(attempt_limit(None, Some(Duration::from_millis(40))), Some(Duration::from_millis(40)));
    assert_eq!(attempt_limit(None, None), None);
}

#[test]
fn the_budget_caps_retries_at_the_ratio_and_forgets_after_the_window() {
    let r = retries(vec![], 0.2, 0.0);
    let mut b = RetryBudget::default();
    let mut granted = 0;
    for _ in 0..100 {
        b.deposit(5);
        while b.withdraw(5, &r) {
            granted += 1;
        }
    }
    assert_eq!(granted, 20);
    assert!(!b.withdraw(14, &r), "still inside the window");
    assert!(!b.withdraw(16, &r), "the window is empty again: no requests, no budget");
    let floor = retries(vec![], 0.0, 2.0);
    let mut b = RetryBudget::default();
    assert_eq!((0..100).filter(|_| b.withdraw(0, &floor)).count(), 20, "2/s over 10 s");
}

#[test]
fn the_ejection_table() {
    for case in super::cases::ejections() {
        let mut eps = vec![Ejection::default(); case.endpoints];
        for (i, step) in case.steps.iter().enumerate() {
            let ejected = eps.iter().filter(|e| e.is_ejected(step.at_ms)).count();
            let got = eps[step.endpoint].report(&case.od, step.outcome, step.at_ms, ejected, case.endpoints);
            assert_eq!(got, step.expect, "{}: step {i} {step:?}", case.name);
        }
    }
}

#[test]
fn the_multiplier_decays_once_per_healthy_interval() {
    let od = OutlierDetection {
        consecutive_5xx: 1,
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(1),
        max_ejection_percent: 100.0,
    };
    let mut e = Ejection::default();
    assert_eq!(e.report(&od, Outcome::Status(500), 0, 0, 1), Reported::Ejected(Duration::from_secs(1)));
    assert_eq!(e.report(&od, Outcome::Status(500), 1_000, 0, 1), Reported::Ejected(Duration::from_secs(2)));
    assert_eq!(e.ejections, 2);
    // Ejected until 3 s; healthy from then. Many successes within one interval decay nothing.
    for t in (3_000..12_999).step_by(500) {
        e.report(&od, Outcome::Status(200), t, 0, 1);
    }
    assert_eq!(e.ejections, 2);
    e.report(&od, Outcome::Status(200), 13_000, 0, 1);
    e.report(&od, Outcome::Status(200), 13_500, 0, 1);
    assert_eq!(e.ejections, 1, "one interval, one step, counted once");
    e.report(&od, Outcome::Status(200), 23_000, 0, 1);
    assert_eq!(e.ejections, 0);
}

#[test]
fn a_call_is_planned_by_the_route_its_request_matches() {
    use crate::policy::{CallSpec, PolicyFile};
    let file: PolicyFile = serde_yaml_ng::from_str(
        "services:\n  back:\n    timeout: 1s\n    routes:\n      - name: orders\n        matches: [{method: GET, path: {type: Template, value: '/orders/{id}'}, headers: [{name: x-tenant, value: a}]}]\n        timeout: 50ms\n        retries: {attempts: 2}\n",
    )
    .unwrap();
    let policy = &file.resolve().unwrap().services["back"];
    let calls: Vec<CallSpec> = serde_yaml_ng::from_str(
        "[back, {service: back, path: /orders/7, headers: {X-Tenant: a}}, {service: back, method: post, path: /orders/7, headers: {x-tenant: a}}]",
    )
    .unwrap();
    let plans: Vec<_> = calls
        .iter()
        .map(|c| plan(policy, &c.method(), &c.path(), |h| c.header(h)))
        .map(|p| (p.route, p.timeout))
        .collect();
    assert_eq!(
        plans,
        [
            (None, Some(Duration::from_secs(1))),
            (Some(0), Some(Duration::from_millis(50))),
            (None, Some(Duration::from_secs(1)))
        ]
    );
    assert_eq!(plan(policy, "GET", "/orders/7", |_| None).retries, None, "the header is part of the match");
    assert_eq!(calls[0].path(), "/back");
    assert_eq!(calls[2].method(), "POST");
    let bad: CallSpec = serde_yaml_ng::from_str("{service: back, path: 'orders 7'}").unwrap();
    assert!(bad.check().unwrap_err().contains("must start with /"));
    assert!(serde_yaml_ng::from_str::<CallSpec>("{service: back, pth: /x}").is_err(), "unknown keys refused");
}

#[test]
fn p2c_draws_two_different_endpoints_and_favours_no_position_on_a_tie() {
    let mut picked = [0u32; 3];
    let steps = 30;
    for i in 0..steps {
        for j in 0..steps {
            let (r1, r2) = (i as f64 / steps as f64, j as f64 / steps as f64);
            picked[p2c(3, r1, r2, |_| 0)] += 1;
        }
    }
    assert!(picked.iter().all(|&n| n == 300), "equal loads: each endpoint a third, {picked:?}");
    // Two different ones: with the lighter first or second, it is the one chosen.
    assert_eq!(p2c(2, 0.0, 0.0, |k| if k == 1 { 0 } else { 5 }), 1);
    assert_eq!(p2c(2, 0.9, 0.0, |k| if k == 0 { 0 } else { 5 }), 0);
    assert_eq!(p2c(1, 0.7, 0.7, |_| 9), 0);
}
