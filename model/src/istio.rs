//! Istio's traffic files as meshlens policy: `VirtualService` (route weights, timeout, retries,
//! fault) and `DestinationRule` (subsets, load balancer, outlier detection) become a
//! [`PolicyFile`] that the agent enforces and the simulator rehearses.
//!
//! The caller parses the files (YAML, several documents each) into JSON values; this module reads
//! those, so the crate stays free of IO and of a YAML parser. What meshlens models is carried over;
//! what it cannot model is either refused (a value that would change what the policy means, such
//! as an unknown `retryOn` word) or listed in [`Imported::warnings`] with the document and the
//! field's path (a `match` route, a connection pool) — never dropped in silence. Where Istio has a
//! default that meshlens does not (two retries on connect-failure, refused-stream and unavailable
//! when a route has no `retries`), the import writes Istio's default out and says so.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::policy::{
    AbortSpec, BackoffSpec, DelaySpec, FaultSpec, LoadBalancer, OutlierSpec, PolicyError, PolicyFile, RetriesSpec,
    RetryOn, ServiceSpec,
};

/// What an import produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imported {
    /// The policy, in meshlens's schema.
    pub policy: PolicyFile,
    /// What was not carried over, or was filled in, each naming its document and field.
    pub warnings: Vec<String>,
}

/// The `retryOn` words of Envoy and Istio that meshlens models, as meshlens names them.
const RETRY_ON: [(&str, Option<RetryOn>); 12] = [
    ("5xx", Some(RetryOn::ServerError)),
    ("gateway-error", Some(RetryOn::GatewayError)),
    ("reset", Some(RetryOn::Reset)),
    ("connect-failure", Some(RetryOn::ConnectFailure)),
    ("retriable-4xx", Some(RetryOn::Retriable4xx)),
    ("refused-stream", Some(RetryOn::RefusedStream)),
    ("unavailable", Some(RetryOn::Unavailable)),
    // Known to Envoy, not modelled: warned and left out.
    ("cancelled", None),
    ("deadline-exceeded", None),
    ("internal", None),
    ("resource-exhausted", None),
    ("retriable-status-codes", None),
];

fn err(path: String, message: impl Into<String>) -> PolicyError {
    PolicyError { path, message: message.into() }
}

/// Whether a parsed document is one of Istio's networking resources.
pub fn is_istio(doc: &Value) -> bool {
    doc.get("apiVersion").and_then(Value::as_str).is_some_and(|v| v.starts_with("networking.istio.io/"))
}

/// The service a host names: `reviews`, `reviews.shop`, `reviews.shop.svc.cluster.local` → `reviews`.
fn service_of(host: &str) -> String {
    host.split('.').next().unwrap_or(host).to_owned()
}

fn name_of(doc: &Value, i: usize) -> String {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("document");
    match doc.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) => format!("{kind} {n}"),
        None => format!("{kind} #{}", i + 1),
    }
}

/// Istio durations: `10s`, `500ms`, `1.5s`, `1m`, `1h`. Kept as text meshlens's parser reads.
fn duration(v: &Value, path: &str) -> Result<std::time::Duration, PolicyError> {
    let s = v.as_str().ok_or_else(|| err(path.to_owned(), "expected a duration such as 2s"))?;
    crate::time::parse_duration(s).map_err(|e| err(path.to_owned(), e.to_string()))
}

/// A fault's percent: `percentage.value` (a float) or the older `percent` (an integer).
fn fault_percent(f: &Value, path: &str) -> Result<f64, PolicyError> {
    if let Some(v) = f.pointer("/percentage/value") {
        return v.as_f64().ok_or_else(|| err(format!("{path}.percentage.value"), "expected a number"));
    }
    if let Some(v) = f.get("percent") {
        return v.as_f64().ok_or_else(|| err(format!("{path}.percent"), "expected a number"));
    }
    // Istio: with no percentage, every request.
    Ok(100.0)
}

/// Reads Istio `VirtualService` and `DestinationRule` documents. Documents of other kinds are an
/// error naming them; so is a value meshlens would have to guess at.
pub fn import(docs: &[Value]) -> Result<Imported, PolicyError> {
    let mut out = Imported::default();
    // Subset name → version, per service, from the DestinationRules (read first: routes name subsets).
    let mut subsets: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut services: BTreeMap<String, ServiceSpec> = BTreeMap::new();
    for (i, doc) in docs.iter().enumerate() {
        let at = name_of(doc, i);
        match doc.get("kind").and_then(Value::as_str) {
            Some("DestinationRule") if is_istio(doc) => {
                destination_rule(doc, &at, &mut subsets, &mut services, &mut out.warnings)?
            }
            Some("VirtualService") if is_istio(doc) => {}
            _ => {
                return Err(err(
                    at,
                    "not an Istio VirtualService or DestinationRule (apiVersion networking.istio.io/*); nothing else is read here",
                ));
            }
        }
    }
    for (i, doc) in docs.iter().enumerate() {
        if doc.get("kind").and_then(Value::as_str) == Some("VirtualService") {
            virtual_service(doc, &name_of(doc, i), &subsets, &mut services, &mut out.warnings)?;
        }
    }
    out.policy = PolicyFile { services };
    // What comes out must be a policy meshlens accepts.
    out.policy.resolve()?;
    Ok(out)
}

fn destination_rule(
    doc: &Value,
    at: &str,
    subsets: &mut BTreeMap<String, BTreeMap<String, String>>,
    services: &mut BTreeMap<String, ServiceSpec>,
    warnings: &mut Vec<String>,
) -> Result<(), PolicyError> {
    let host = doc
        .pointer("/spec/host")
        .and_then(Value::as_str)
        .ok_or_else(|| err(format!("{at}: spec.host"), "missing: which service does it apply to?"))?;
    let service = service_of(host);
    let spec = services.entry(service.clone()).or_default();
    let map = subsets.entry(service.clone()).or_default();
    for (k, s) in doc.pointer("/spec/subsets").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let path = format!("{at}: spec.subsets[{k}]");
        let name = s.get("name").and_then(Value::as_str).ok_or_else(|| err(format!("{path}.name"), "missing"))?;
        // meshlens versions are the `version` label, as Kiali's versioned graph reads it.
        let version = s.pointer("/labels/version").and_then(Value::as_str).unwrap_or(name);
        map.insert(name.to_owned(), version.to_owned());
        if s.get("trafficPolicy").is_some() {
            warnings.push(format!(
                "{path}.trafficPolicy: per-subset policy is not modelled (meshlens keeps one policy per service); left out"
            ));
        }
    }
    let Some(tp) = doc.pointer("/spec/trafficPolicy") else { return Ok(()) };
    let tp_at = format!("{at}: spec.trafficPolicy");
    for (key, v) in tp.as_object().into_iter().flatten() {
        match key.as_str() {
            "loadBalancer" => {
                let simple = v.get("simple").and_then(Value::as_str);
                spec.load_balancer = match simple {
                    Some("LEAST_REQUEST") | Some("LEAST_CONN") => Some(LoadBalancer::P2c),
                    Some("ROUND_ROBIN") => Some(LoadBalancer::RoundRobin),
                    Some("RANDOM") | Some("PASSTHROUGH") | Some("UNSPECIFIED") => {
                        warnings.push(format!(
                            "{tp_at}.loadBalancer.simple: {} is not modelled; least request (p2c) is used",
                            simple.unwrap_or_default()
                        ));
                        Some(LoadBalancer::P2c)
                    }
                    Some(other) => {
                        return Err(err(
                            format!("{tp_at}.loadBalancer.simple"),
                            format!("unknown {other:?}: expected ROUND_ROBIN, LEAST_REQUEST, RANDOM or PASSTHROUGH"),
                        ));
                    }
                    None => {
                        warnings.push(format!(
                            "{tp_at}.loadBalancer: only `simple` is modelled (not consistentHash or locality); least request (p2c) is used"
                        ));
                        Some(LoadBalancer::P2c)
                    }
                };
            }
            "outlierDetection" => {
                spec.outlier_detection = Some(outlier(v, &format!("{tp_at}.outlierDetection"), warnings)?)
            }
            other => warnings.push(format!("{tp_at}.{other}: not modelled; left out")),
        }
    }
    Ok(())
}

fn outlier(v: &Value, at: &str, warnings: &mut Vec<String>) -> Result<OutlierSpec, PolicyError> {
    let mut o = OutlierSpec::default();
    for (key, value) in v.as_object().into_iter().flatten() {
        let path = format!("{at}.{key}");
        let count = || {
            value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| err(path.clone(), "expected a whole number"))
        };
        match key.as_str() {
            "consecutive5xxErrors" => o.consecutive_5xx = Some(count()?),
            // Istio's deprecated name for the same counter (it counted 502-504 before 1.6).
            "consecutiveErrors" => {
                o.consecutive_5xx = Some(count()?);
                warnings.push(format!("{path}: deprecated in Istio; read as consecutive5xxErrors"));
            }
            "interval" => o.interval = Some(duration(value, &path)?),
            "baseEjectionTime" => o.base_ejection_time = Some(duration(value, &path)?),
            "maxEjectionPercent" => {
                o.max_ejection_percent = Some(value.as_f64().ok_or_else(|| err(path.clone(), "expected a percent"))?)
            }
            other => warnings.push(format!("{at}.{other}: not modelled; left out")),
        }
    }
    Ok(o)
}

fn virtual_service(
    doc: &Value,
    at: &str,
    subsets: &BTreeMap<String, BTreeMap<String, String>>,
    services: &mut BTreeMap<String, ServiceSpec>,
    warnings: &mut Vec<String>,
) -> Result<(), PolicyError> {
    let hosts: Vec<&str> =
        doc.pointer("/spec/hosts").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let Some(host) = hosts.first() else {
        return Err(err(format!("{at}: spec.hosts"), "missing: which service does it route?"));
    };
    if hosts.len() > 1 {
        warnings.push(format!("{at}: spec.hosts: only the first host, {host}, is read"));
    }
    for key in ["gateways", "tcp", "tls"] {
        if doc.pointer(&format!("/spec/{key}")).is_some() {
            warnings.push(format!("{at}: spec.{key}: not modelled (meshlens routes HTTP between workloads); left out"));
        }
    }
    let service = service_of(host);
    let routes = doc.pointer("/spec/http").and_then(Value::as_array).cloned().unwrap_or_default();
    if routes.is_empty() {
        warnings.push(format!("{at}: spec.http: no HTTP routes; nothing read"));
        return Ok(());
    }
    // The route that takes unmatched traffic is the one meshlens models; earlier `match` routes are
    // named in the warnings.
    let Some((k, route)) = routes.iter().enumerate().find(|(_, r)| r.get("match").is_none()) else {
        warnings.push(format!("{at}: spec.http: every route has a match; none is the default route, nothing read"));
        return Ok(());
    };
    for (j, r) in routes.iter().enumerate() {
        if r.get("match").is_some() {
            warnings.push(format!(
                "{at}: spec.http[{j}]: a route with match is not modelled (requests are not told apart by header or path); only spec.http[{k}] is read"
            ));
        }
    }
    let path = format!("{at}: spec.http[{k}]");
    let known = subsets.get(&service);
    let spec = services.entry(service.clone()).or_default();
    let dests = route.get("route").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut split = BTreeMap::new();
    for (d, dest) in dests.iter().enumerate() {
        let dpath = format!("{path}.route[{d}]");
        let dhost = dest.pointer("/destination/host").and_then(Value::as_str).unwrap_or(host);
        if service_of(dhost) != service {
            return Err(err(
                format!("{dpath}.destination.host"),
                format!(
                    "{dhost} is another service than {service}: routing one service's traffic to another is not modelled"
                ),
            ));
        }
        // Istio: a lone destination without weight takes everything.
        let weight = dest.get("weight").and_then(Value::as_f64).unwrap_or(if dests.len() == 1 { 100.0 } else { 0.0 });
        let Some(subset) = dest.pointer("/destination/subset").and_then(Value::as_str) else {
            if dests.len() > 1 {
                return Err(err(
                    format!("{dpath}.destination.subset"),
                    "missing: weights need a subset per destination",
                ));
            }
            continue;
        };
        let version = match known.and_then(|m| m.get(subset)) {
            Some(v) => v.clone(),
            None => {
                return Err(err(
                    format!("{dpath}.destination.subset"),
                    format!(
                        "no subset {subset:?} of {service} in the DestinationRules given (add the DestinationRule file)"
                    ),
                ));
            }
        };
        *split.entry(version).or_insert(0.0) += weight;
    }
    spec.split = split;
    for (key, v) in route.as_object().into_iter().flatten() {
        let kpath = format!("{path}.{key}");
        match key.as_str() {
            "route" | "name" => {}
            "timeout" => spec.timeout = Some(duration(v, &kpath)?),
            "retries" => spec.retries = retries(v, &kpath, warnings)?,
            "fault" => spec.fault = Some(fault(v, &kpath, warnings)?),
            other => warnings.push(format!("{kpath}: {other} is not modelled; left out")),
        }
    }
    if route.get("retries").is_none() {
        // Istio retries twice by default; meshlens's schema says every retry out loud.
        spec.retries = Some(RetriesSpec {
            attempts: 2,
            retry_on: Some(vec![RetryOn::ConnectFailure, RetryOn::RefusedStream, RetryOn::Unavailable]),
            ..RetriesSpec::default()
        });
        warnings.push(format!(
            "{path}: no retries: Istio's default written out (attempts 2 on connect-failure, refused-stream, unavailable)"
        ));
    }
    if spec.retries.as_ref().is_some_and(|r| r.attempts > 0) {
        warnings.push(format!(
            "{path}.retries: Istio has no retry budget; meshlens's default (20% plus 10 a second) applies"
        ));
    }
    Ok(())
}

fn retries(v: &Value, at: &str, warnings: &mut Vec<String>) -> Result<Option<RetriesSpec>, PolicyError> {
    let attempts = match v.get("attempts") {
        Some(a) => a
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| err(format!("{at}.attempts"), "expected a whole number"))?,
        None => 2,
    };
    let mut r = RetriesSpec { attempts, ..RetriesSpec::default() };
    for (key, value) in v.as_object().into_iter().flatten() {
        let path = format!("{at}.{key}");
        match key.as_str() {
            "attempts" => {}
            "perTryTimeout" => r.per_try_timeout = Some(duration(value, &path)?),
            "retryOn" => {
                let text = value.as_str().ok_or_else(|| err(path.clone(), "expected comma-separated words"))?;
                let mut on = Vec::new();
                for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                    // Bare status codes belong to retriable-status-codes.
                    if word.bytes().all(|b| b.is_ascii_digit()) {
                        warnings.push(format!("{path}: status code {word} is not modelled; left out"));
                        continue;
                    }
                    match RETRY_ON.iter().find(|(w, _)| *w == word) {
                        Some((_, Some(m))) => on.push(*m),
                        Some((_, None)) => warnings.push(format!("{path}: {word} is not modelled; left out")),
                        None => {
                            let names: Vec<&str> = RETRY_ON.iter().map(|(w, _)| *w).collect();
                            return Err(err(path, format!("unknown {word:?}: expected one of {}", names.join(", "))));
                        }
                    }
                }
                r.retry_on = Some(on);
            }
            "retryRemoteLocalities" => warnings.push(format!("{path}: not modelled; left out")),
            other => warnings.push(format!("{at}.{other}: not modelled; left out")),
        }
    }
    // Envoy's default backoff: 25 ms base, ten times that as the cap (meshlens's defaults too).
    r.backoff =
        Some(BackoffSpec { base: std::time::Duration::from_millis(25), max: std::time::Duration::from_millis(250) });
    Ok(Some(r))
}

fn fault(v: &Value, at: &str, warnings: &mut Vec<String>) -> Result<FaultSpec, PolicyError> {
    let mut f = FaultSpec::default();
    if let Some(d) = v.get("delay") {
        let path = format!("{at}.delay");
        let fixed = d
            .get("fixedDelay")
            .ok_or_else(|| err(format!("{path}.fixedDelay"), "missing (exponentialDelay is not modelled)"))?;
        f.delay = Some(DelaySpec {
            fixed: duration(fixed, &format!("{path}.fixedDelay"))?,
            percent: fault_percent(d, &path)?,
        });
    }
    if let Some(a) = v.get("abort") {
        let path = format!("{at}.abort");
        let status = match a.get("httpStatus") {
            Some(s) => s
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| err(format!("{path}.httpStatus"), "expected an HTTP status"))?,
            None => {
                return Err(err(format!("{path}.httpStatus"), "missing (grpcStatus and http2Error are not modelled)"));
            }
        };
        f.abort = Some(AbortSpec { status, percent: fault_percent(a, &path)? });
    }
    for key in v.as_object().into_iter().flatten().map(|(k, _)| k) {
        if key != "delay" && key != "abort" {
            warnings.push(format!("{at}.{key}: not modelled; left out"));
        }
    }
    Ok(f)
}

#[cfg(test)]
#[path = "istio_tests.rs"]
mod tests;
