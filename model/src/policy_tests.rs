//! The policy schema: a full policy (every field of a service, as the design notes gave it) resolves;
//! each invalid value names its field.

use super::*;

fn file(json: serde_json::Value) -> PolicyFile {
    serde_json::from_value(json).unwrap()
}

/// Why a policy is refused: when it is read (a typed value: the reader names the field), or when it
/// is resolved. Read as a file is (YAML, which JSON text is), so the reader's errors carry the path.
fn refusal(json: serde_json::Value) -> String {
    match serde_yaml_ng::from_str::<PolicyFile>(&json.to_string()) {
        Err(e) => e.to_string(),
        Ok(f) => f.resolve().unwrap_err().to_string(),
    }
}

fn full_example() -> serde_json::Value {
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
    let p = file(full_example()).resolve().unwrap();
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
        ("/services/reviews/fault/abort/status", serde_json::json!(42), "services.reviews.fault.abort.status: 42"),
        ("/services/reviews/fault/delay/percent", serde_json::json!(101), "services.reviews.fault.delay.percent"),
    ];
    for (pointer, value, expected) in cases {
        let mut json = full_example();
        *json.pointer_mut(pointer).unwrap() = value.clone();
        let e = refusal(json);
        assert!(e.starts_with(expected), "{pointer}: {e}");
    }
}

#[test]
fn unknown_fields_are_refused() {
    let e = serde_json::from_value::<PolicyFile>(serde_json::json!({"services": {"r": {"retry": {}}}})).unwrap_err();
    assert!(e.to_string().contains("unknown field `retry`"), "{e}");
}

/// A route table in Gateway API's match shape: names (given and derived), inheritance of the
/// service's timeout and retries, and which route each request is.
#[test]
fn routes_resolve_inherit_and_match_in_order() {
    let p = file(serde_json::json!({"services": {"books": {
        "timeout": "2s",
        "retries": {"attempts": 2},
        "routes": [
            {"matches": [{"method": "get", "path": {"type": "Template", "value": "/books/{id}"}}], "timeout": "300ms"},
            {"name": "create", "matches": [{"method": "POST", "path": {"type": "Exact", "value": "/books"}}],
             "retries": {"attempts": 0}},
            {"name": "admin", "matches": [{"path": {"value": "/admin/"}, "headers": [{"name": "X-Admin", "value": "yes"}]}]}
        ]
    }}}))
    .resolve()
    .unwrap();
    let routes = &p.services["books"].routes;
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["GET /books/{id}", "create", "admin"]);
    assert_eq!(routes[0].timeout, Some(Duration::from_millis(300)));
    assert_eq!(routes[0].retries.as_ref().map(|r| r.attempts), Some(2), "the service's retries");
    assert_eq!((routes[1].timeout, routes[1].retries.is_none()), (Some(Duration::from_secs(2)), true));
    let which = |method: &str, path: &str, admin: Option<&'static str>| {
        crate::policy_core::match_route(routes, method, path, |h| if h == "x-admin" { admin } else { None })
    };
    assert_eq!(which("GET", "/books/7", None), Some(0));
    assert_eq!(which("GET", "/books/7?full=1", None), Some(0), "the query is not the path");
    assert_eq!(which("GET", "/books/7/reviews", None), None, "a template matches whole, segment by segment");
    assert_eq!(which("GET", "/books", None), None);
    assert_eq!(which("POST", "/books", None), Some(1));
    assert_eq!(which("POST", "/books/", None), None, "Exact is exact");
    assert_eq!(which("DELETE", "/admin/users", Some("yes")), Some(2));
    assert_eq!(which("DELETE", "/admin", Some("yes")), Some(2));
    assert_eq!(which("DELETE", "/administrator", Some("yes")), None, "a prefix is whole segments");
    assert_eq!(which("DELETE", "/admin/users", Some("no")), None);
    assert_eq!(which("DELETE", "/admin/users", None), None);
}

#[test]
fn bad_routes_name_their_field() {
    let route = |r: serde_json::Value| refusal(serde_json::json!({"services": {"books": {"routes": [r]}}}));
    let cases = [
        (
            serde_json::json!({"matches": [{"path": {"value": "books"}}]}),
            "services.books.routes[0].matches[0].path.value",
        ),
        (serde_json::json!({"matches": [{"method": "G T"}]}), "services.books.routes[0].matches[0].method"),
        (
            serde_json::json!({"matches": [{"path": {"type": "Template", "value": "/b/x{id}"}}]}),
            "services.books.routes[0].matches[0].path.value",
        ),
        (serde_json::json!({"name": "[default]"}), "services.books.routes[0].name"),
        (serde_json::json!({"name": "x".repeat(200)}), "services.books.routes[0].name"),
        (serde_json::json!({"timeout": "soon"}), "services.books.routes[0].timeout"),
        (
            serde_json::json!({"matches": [{"headers": [{"name": "a b", "value": "1"}]}]}),
            "services.books.routes[0].matches[0].headers[0].name",
        ),
    ];
    for (r, path) in cases {
        let e = route(r.clone());
        assert!(e.starts_with(path), "{r}: {e}");
    }
    let twice = serde_json::json!({"services": {"books": {"routes": [{"name": "a"}, {"name": "a"}]}}});
    assert!(file(twice).resolve().unwrap_err().to_string().starts_with("services.books.routes[1].name"));
    let many: Vec<serde_json::Value> = (0..=MAX_ROUTES).map(|i| serde_json::json!({"name": format!("r{i}")})).collect();
    let e = file(serde_json::json!({"services": {"books": {"routes": many}}})).resolve().unwrap_err();
    assert_eq!(e.path, "services.books.routes");
    let unknown = serde_json::from_value::<PolicyFile>(
        serde_json::json!({"services": {"books": {"routes": [{"matches": [{"path": {"type": "RegularExpression", "value": "/"}}]}]}}}),
    );
    assert!(unknown.unwrap_err().to_string().contains("Template"), "the types meshlens reads are named");
}

/// `load_balancer` and `retry_on` are typed: a wrong word is refused when the file is read, naming
/// the field (YAML gives the path) and the words that are right; every word the schema documents
/// reads, `retriable-4xx` too (its kebab-case spelling was `retriable4xx`, so the resolver refused it).
#[test]
fn typed_words_are_refused_naming_the_field_and_every_documented_word_reads() {
    let bad = |text: &str| serde_yaml_ng::from_str::<PolicyFile>(text).unwrap_err().to_string();
    let e = bad("services: {reviews: {load_balancer: random}}");
    assert!(e.starts_with("services.reviews.load_balancer: unknown variant `random`, expected one of"), "{e}");
    assert!(e.contains("`round_robin`") && e.contains("`p2c`") && e.contains("`least_request`"), "{e}");
    let e = bad("services: {reviews: {retries: {attempts: 1, retry_on: [5xx, sometimes]}}}");
    assert!(e.starts_with("services.reviews.retries.retry_on[1]: unknown variant `sometimes`"), "{e}");
    let words = ["5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream", "unavailable"];
    let text = format!("services: {{reviews: {{retries: {{attempts: 1, retry_on: [{}]}}}}}}", words.join(", "));
    let p = serde_yaml_ng::from_str::<PolicyFile>(&text).unwrap().resolve().unwrap();
    assert_eq!(p.services["reviews"].retries.as_ref().unwrap().retry_on.len(), words.len());
    let lb = serde_yaml_ng::from_str::<PolicyFile>("services: {a: {load_balancer: least_request}}").unwrap();
    assert_eq!(lb.resolve().unwrap().services["a"].load_balancer, LoadBalancer::P2c);
}
