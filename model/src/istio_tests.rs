//! Istio's documents as meshlens policy: what is carried over, what is warned, what is refused.

use super::*;
use serde_json::json;

fn vs_80_20() -> Value {
    json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService", "metadata": {"name": "reviews"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 80},
            {"destination": {"host": "reviews", "subset": "v2"}, "weight": 20}]}]}})
}

fn dr_reviews() -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "reviews"},
        "spec": {"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"},
            "outlierDetection": {"consecutive5xxErrors": 3, "interval": "1s", "baseEjectionTime": "30s", "maxEjectionPercent": 50}},
        "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}},
            {"name": "v3", "labels": {"version": "v3"}}]}})
}

#[test]
fn weights_retries_and_outlier_detection_carry_over() {
    let mut vs = vs_80_20();
    vs["spec"]["http"][0]["timeout"] = json!("2s");
    vs["spec"]["http"][0]["retries"] =
        json!({"attempts": 3, "perTryTimeout": "500ms", "retryOn": "gateway-error,connect-failure,refused-stream"});
    let got = import(&[vs, dr_reviews()]).unwrap();
    let p = got.policy.resolve().unwrap();
    let r = &p.services["reviews"];
    assert_eq!(r.split, vec![("v1".to_owned(), 0.8), ("v2".to_owned(), 0.2)]);
    assert_eq!(r.timeout, Some(std::time::Duration::from_secs(2)));
    let retries = r.retries.as_ref().unwrap();
    assert_eq!(retries.attempts, 3);
    assert_eq!(retries.per_try_timeout, Some(std::time::Duration::from_millis(500)));
    use crate::policy::RetryOn::*;
    assert_eq!(retries.retry_on, vec![GatewayError, ConnectFailure, RefusedStream]);
    let od = r.outlier_detection.as_ref().unwrap();
    assert_eq!((od.consecutive_5xx, od.max_ejection_percent), (3, 50.0));
    assert_eq!(r.load_balancer, crate::policy::LoadBalancer::RoundRobin);
    assert!(got.warnings.iter().any(|w| w.contains("no retry budget")), "{:?}", got.warnings);
}

#[test]
fn istios_default_retries_are_written_out() {
    let got = import(&[vs_80_20(), dr_reviews()]).unwrap();
    let r = &got.policy.services["reviews"].retries;
    assert_eq!(r.as_ref().map(|r| r.attempts), Some(2));
    assert!(got.warnings.iter().any(|w| w.contains("Istio's default written out")), "{:?}", got.warnings);
}

#[test]
fn match_routes_and_unmodelled_fields_are_warned_by_path() {
    let vs = json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService", "metadata": {"name": "ratings"},
        "spec": {"hosts": ["ratings"], "http": [
            {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "fault": {"abort": {"percent": 100, "httpStatus": 500}},
             "route": [{"destination": {"host": "ratings", "subset": "v1"}}]},
            {"route": [{"destination": {"host": "ratings", "subset": "v1"}}], "mirror": {"host": "ratings"}}]}});
    let dr = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "ratings"},
        "spec": {"host": "ratings", "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 1}}},
            "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}});
    let got = import(&[vs, dr]).unwrap();
    let w = got.warnings.join("\n");
    assert!(w.contains("VirtualService ratings: spec.http[0]: a route with match is not modelled"), "{w}");
    assert!(w.contains("VirtualService ratings: spec.http[1].mirror"), "{w}");
    assert!(w.contains("DestinationRule ratings: spec.trafficPolicy.connectionPool: not modelled"), "{w}");
    // The unmatched route's fault-free policy is what was read.
    assert!(got.policy.services["ratings"].fault.is_none());
}

#[test]
fn what_would_be_guessed_is_refused_with_its_path() {
    let mut vs = vs_80_20();
    vs["spec"]["http"][0]["retries"] = json!({"attempts": 2, "retryOn": "5xx,gateway-eror"});
    let e = import(&[vs, dr_reviews()]).unwrap_err().to_string();
    assert!(e.starts_with("VirtualService reviews: spec.http[0].retries.retryOn: unknown \"gateway-eror\""), "{e}");
    let e = import(&[vs_80_20()]).unwrap_err().to_string();
    assert!(e.contains("spec.http[0].route[0].destination.subset: no subset \"v1\" of reviews"), "{e}");
    let e = import(&[json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}})]).unwrap_err();
    assert!(e.to_string().starts_with("Deployment x: not an Istio"), "{e}");
}
