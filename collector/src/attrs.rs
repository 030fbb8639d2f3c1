//! Reading OTLP attributes: strings, integers and booleans by key, and a resource's workload.

use meshlens_model::Workload;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// The value of `key`, if present.
#[inline]
pub(crate) fn get<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v: &AnyValue| v.value.as_ref())
}

/// A string attribute (other scalar types are not converted).
#[inline]
pub(crate) fn get_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match get(attrs, key)? {
        Value::StringValue(s) => Some(s.as_str()),
        _ => None,
    }
}

/// An integer attribute; numeric strings are accepted (some SDKs send status codes as strings).
#[inline]
pub(crate) fn get_int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match get(attrs, key)? {
        Value::IntValue(i) => Some(*i),
        Value::DoubleValue(d) => Some(*d as i64),
        Value::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A boolean attribute; `"true"` is accepted.
#[inline]
pub(crate) fn get_bool(attrs: &[KeyValue], key: &str) -> Option<bool> {
    match get(attrs, key)? {
        Value::BoolValue(b) => Some(*b),
        Value::StringValue(s) => Some(s.eq_ignore_ascii_case("true")),
        _ => None,
    }
}

/// The workload a resource describes; `None` without `service.name`.
pub(crate) fn resource_workload(resource: Option<&Resource>) -> Option<Workload> {
    let attrs = resource.map(|r| r.attributes.as_slice()).unwrap_or(&[]);
    Workload::from_resource(
        get_str(attrs, "service.namespace"),
        get_str(attrs, "service.name"),
        get_str(attrs, "service.version"),
    )
    .map(|w| w.in_cluster(get_str(attrs, "k8s.cluster.name")))
}

/// The workload named by `<prefix>namespace`, `<prefix>app`, `<prefix>version` attributes.
pub(crate) fn prefixed_workload(attrs: &[KeyValue], prefix: &str) -> Option<Workload> {
    let key = |k: &str| format!("{prefix}{k}");
    Workload::from_resource(
        get_str(attrs, &key("namespace")),
        get_str(attrs, &key("app")),
        get_str(attrs, &key("version")),
    )
}
