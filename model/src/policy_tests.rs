//! The policy schema: the example of DESIGN.md resolves; each invalid value names its field.

use super::*;

fn file(json: serde_json::Value) -> PolicyFile {
    serde_json::from_value(json).unwrap()
}

fn design_example() -> serde_json::Value {
    serde_json::json!({"services": {"reviews": {
        "split": {"v1": 90, "v3": 10},
        "timeout": "2s",
        "retries": {
            "attempts": 2,
            "per_try_timeout": "500ms",
            "retry_on": ["5xx", "gateway-error", "reset", "connect-failure"],
            "backoff": {"base": "25ms", "max": "250ms"},
            "budget": {"ratio": 0.2, "min_per_second": 10}
        },
        "outlier_detection": {"consecutive_5xx": 5, "interval": "10s", "base_ejection_time": "30s", "max_ejection_percent": 50},
        "load_balancer": "p2c",
        "fault": {"delay": {"fixed": "100ms", "percent": 5}, "abort": {"status": 503, "percent": 1}}
    }}})
}

#[test]
fn the_design_example_resolves() {
    let p = file(design_example()).resolve().unwrap();
    let r = &p.services["reviews"];
    assert_eq!(r.split, vec![("v1".to_owned(), 0.9), ("v3".to_owned(), 0.1)]);
    assert_eq!(r.timeout, Some(Duration::from_secs(2)));
    let retries = r.retries.as_ref().unwrap();
    assert_eq!(retries.attempts, 2);
    assert_eq!(retries.per_try_timeout, Some(Duration::from_millis(500)));
    assert_eq!(
        retries.retry_on,
        vec![RetryOn::ServerError, RetryOn::GatewayError, RetryOn::Reset, RetryOn::ConnectFailure]
    );
    assert_eq!((retries.budget_ratio, retries.budget_min_per_second), (0.2, 10.0));
    assert_eq!(r.outlier_detection.as_ref().unwrap().max_ejection_percent, 50.0);
    assert_eq!(r.load_balancer, LoadBalancer::P2c);
    assert_eq!(r.faults.delay, Some((Duration::from_millis(100), 0.05)));
    assert_eq!(r.faults.abort, Some((503, 0.01)));
}

#[test]
fn defaults_and_a_lone_version() {
    let p = file(serde_json::json!({"services": {"ratings": {"split": {"v1": 3}}, "details": {}}})).resolve().unwrap();
    assert_eq!(p.services["ratings"].split, vec![("v1".to_owned(), 1.0)]);
    let d = &p.services["details"];
    assert_eq!((d.timeout, d.retries.is_none(), d.load_balancer), (None, true, LoadBalancer::P2c));
    let p = file(serde_json::json!({"services": {"x": {"retries": {"attempts": 0}}}})).resolve().unwrap();
    assert!(p.services["x"].retries.is_none(), "0 attempts is off");
}

#[test]
fn every_invalid_value_names_its_field() {
    let cases: &[(&str, serde_json::Value, &str)] = &[
        ("/services/reviews/split", serde_json::json!({"v1": 0, "v3": 0}), "services.reviews.split: weights sum to 0"),
        ("/services/reviews/split", serde_json::json!({"v1": -1}), "services.reviews.split.v1: weight -1"),
        ("/services/reviews/timeout", serde_json::json!("soon"), "services.reviews.timeout: invalid duration"),
        (
            "/services/reviews/retries/per_try_timeout",
            serde_json::json!("3s"),
            "services.reviews.retries.per_try_timeout: 3s is longer than the whole-request timeout",
        ),
        (
            "/services/reviews/retries/retry_on",
            serde_json::json!(["5xx", "sometimes"]),
            "services.reviews.retries.retry_on[1]: unknown \"sometimes\"",
        ),
        ("/services/reviews/retries/attempts", serde_json::json!(50), "services.reviews.retries.attempts"),
        (
            "/services/reviews/retries/backoff",
            serde_json::json!({"base": "1s", "max": "10ms"}),
            "services.reviews.retries.backoff: base",
        ),
        (
            "/services/reviews/retries/budget",
            serde_json::json!({"ratio": -0.5, "min_per_second": 1}),
            "services.reviews.retries.budget.ratio",
        ),
        (
            "/services/reviews/outlier_detection/max_ejection_percent",
            serde_json::json!(150),
            "services.reviews.outlier_detection.max_ejection_percent: 150 is not a percent",
        ),
        (
            "/services/reviews/outlier_detection/consecutive_5xx",
            serde_json::json!(0),
            "services.reviews.outlier_detection.consecutive_5xx",
        ),
        (
            "/services/reviews/load_balancer",
            serde_json::json!("random"),
            "services.reviews.load_balancer: unknown \"random\"",
        ),
        ("/services/reviews/fault/abort/status", serde_json::json!(42), "services.reviews.fault.abort.status: 42"),
        ("/services/reviews/fault/delay/percent", serde_json::json!(101), "services.reviews.fault.delay.percent"),
    ];
    for (pointer, value, expected) in cases {
        let mut json = design_example();
        *json.pointer_mut(pointer).unwrap() = value.clone();
        let e = file(json).resolve().unwrap_err();
        assert!(e.to_string().starts_with(expected), "{pointer}: {e}");
    }
}

#[test]
fn unknown_fields_are_refused() {
    let e = serde_json::from_value::<PolicyFile>(serde_json::json!({"services": {"r": {"retry": {}}}})).unwrap_err();
    assert!(e.to_string().contains("unknown field `retry`"), "{e}");
}
