//! Kubernetes EndpointSlices (`discovery.k8s.io/v1`) turned into endpoints: the rule kube-proxy
//! applies, as a pure function over the objects as the API (or `kubectl get endpointslices -o yaml`)
//! gives them.
//!
//! Conditions, as the EndpointSlice API documents them: `ready` (nil means true) is "serving and
//! not terminating"; `serving` (nil means true) says the Pod passes its readiness probe even while
//! terminating; `terminating` (nil means false). Ready endpoints are used; when a Service has none,
//! the serving ones that are terminating are (kube-proxy's fallback, so a Service being rolled keeps
//! answering while its last Pods drain). FQDN slices and slices of other ports are skipped.
//!
//! The agent reads slices from the API (`{kubernetes: ...}`, `crate::kubernetes`) or from a
//! `{file: PATH}` source (the output of `kubectl get endpointslices -l
//! kubernetes.io/service-name=NAME -o yaml`).

use serde::Deserialize;

/// One EndpointSlice, the fields this reads.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EndpointSlice {
    /// `IPv4`, `IPv6` or `FQDN`.
    pub address_type: String,
    /// Its endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// The ports every endpoint of the slice has.
    #[serde(default)]
    pub ports: Option<Vec<Port>>,
}

/// One endpoint (a Pod).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Endpoint {
    /// Its addresses (all of one Pod; the first is used, as kube-proxy does).
    pub addresses: Vec<String>,
    /// Its conditions.
    #[serde(default)]
    pub conditions: Conditions,
}

/// An endpoint's conditions; absent ones as the API says to read them.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct Conditions {
    /// Ready for traffic (nil: true).
    pub ready: Option<bool>,
    /// Passing readiness, terminating or not (nil: true).
    pub serving: Option<bool>,
    /// Being deleted (nil: false).
    pub terminating: Option<bool>,
}

/// A slice port.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Port {
    /// Its name (the Service port's).
    pub name: Option<String>,
    /// The target port number.
    pub port: Option<u16>,
    /// TCP, UDP or SCTP (nil: TCP).
    pub protocol: Option<String>,
}

/// Which port of the slices: by name, or the only TCP one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PortRef {
    /// The port of this name.
    Name(String),
    /// The port of this number.
    Number(u16),
    /// The slices' only TCP port, or the one named `http`.
    Only,
}

fn port_of(slice: &EndpointSlice, want: &PortRef) -> Result<Option<u16>, String> {
    let tcp: Vec<&Port> = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|x| x == "TCP") && p.port.is_some())
        .collect();
    let found = match want {
        PortRef::Name(n) => tcp.iter().find(|p| p.name.as_deref() == Some(n.as_str())),
        PortRef::Number(n) => tcp.iter().find(|p| p.port == Some(*n)),
        PortRef::Only if tcp.len() == 1 => tcp.first(),
        PortRef::Only => match tcp.iter().find(|p| p.name.as_deref() == Some("http")) {
            Some(p) => Some(p),
            None if tcp.is_empty() => None,
            None => {
                let names: Vec<&str> = tcp.iter().map(|p| p.name.as_deref().unwrap_or("")).collect();
                return Err(format!("the slices have several ports ({}) and none is named http", names.join(", ")));
            }
        },
    };
    Ok(found.and_then(|p| p.port))
}

/// The `ip:port` endpoints of a Service's slices, sorted.
pub(crate) fn endpoints(slices: &[EndpointSlice], port: &PortRef) -> Result<Vec<String>, String> {
    let (mut ready, mut draining) = (Vec::new(), Vec::new());
    for s in slices {
        let v6 = match s.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            _ => continue,
        };
        let Some(p) = port_of(s, port)? else { continue };
        for e in &s.endpoints {
            let Some(addr) = e.addresses.first() else { continue };
            let ep = if v6 { format!("[{addr}]:{p}") } else { format!("{addr}:{p}") };
            let c = &e.conditions;
            let terminating = c.terminating.unwrap_or(false);
            if c.ready.unwrap_or(true) && !terminating {
                ready.push(ep);
            } else if c.serving.unwrap_or(true) && terminating {
                draining.push(ep);
            }
        }
    }
    let mut out = if ready.is_empty() { draining } else { ready };
    out.sort();
    out.dedup();
    Ok(out)
}

/// Slices from YAML or JSON text: one EndpointSlice, a `List`/`EndpointSliceList` of them (what
/// `kubectl get -o yaml` writes), or several YAML documents.
pub(crate) fn parse(text: &str) -> Result<Vec<EndpointSlice>, String> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v = serde_yaml_ng::Value::deserialize(doc).map_err(|e| e.to_string())?;
        if v.is_null() {
            continue;
        }
        let kind = v.get("kind").and_then(serde_yaml_ng::Value::as_str).unwrap_or("");
        match kind {
            "EndpointSlice" => out.push(serde_yaml_ng::from_value(v).map_err(|e| format!("EndpointSlice: {e}"))?),
            "List" | "EndpointSliceList" => {
                for item in v.get("items").and_then(serde_yaml_ng::Value::as_sequence).into_iter().flatten() {
                    out.push(serde_yaml_ng::from_value(item.clone()).map_err(|e| format!("items: {e}"))?);
                }
            }
            other => return Err(format!("a {other:?} is not an EndpointSlice")),
        }
    }
    Ok(out)
}

/// Whether `text` is Kubernetes objects rather than `host:port` lines.
pub(crate) fn looks_like_slices(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .is_some_and(|l| l.starts_with('{') || l.starts_with("apiVersion:") || l.starts_with("kind:") || l == "---")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The EndpointSlice of the Kubernetes documentation ("EndpointSlices", concepts), as written.
    const DOCS_EXAMPLE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: example-abc
  labels:
    kubernetes.io/service-name: example
addressType: IPv4
ports:
  - name: http
    protocol: TCP
    port: 80
endpoints:
  - addresses:
      - "10.1.2.3"
    conditions:
      ready: true
    hostname: pod-1
    nodeName: node-1
    zone: us-west2-a
"#;

    #[test]
    fn the_documentation_s_slice_gives_its_endpoint() {
        let slices = parse(DOCS_EXAMPLE).unwrap();
        assert!(looks_like_slices(DOCS_EXAMPLE));
        assert_eq!(endpoints(&slices, &PortRef::Only).unwrap(), ["10.1.2.3:80"]);
        assert_eq!(endpoints(&slices, &PortRef::Name("http".into())).unwrap(), ["10.1.2.3:80"]);
        assert!(endpoints(&slices, &PortRef::Name("grpc".into())).unwrap().is_empty());
        assert_eq!(endpoints(&slices, &PortRef::Number(80)).unwrap(), ["10.1.2.3:80"]);
    }

    /// A rolling update as `kubectl get endpointslices -o json` lists it: a List of an IPv4 and an
    /// IPv6 slice, with conditions set and absent.
    const ROLLING: &str = r#"{
  "apiVersion": "v1", "kind": "List", "items": [
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
     "metadata": {"name": "reviews-a", "labels": {"kubernetes.io/service-name": "reviews"}},
     "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}, {"name": "metrics", "port": 9090, "protocol": "TCP"}],
     "endpoints": [
       {"addresses": ["10.0.0.1"], "conditions": {"ready": true, "serving": true, "terminating": false}},
       {"addresses": ["10.0.0.2"]},
       {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": false, "terminating": false}},
       {"addresses": ["10.0.0.4"], "conditions": {"ready": false, "serving": true, "terminating": true}}
     ]},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv6",
     "metadata": {"name": "reviews-b"},
     "ports": [{"name": "http", "port": 9080}],
     "endpoints": [{"addresses": ["fd00::5"], "conditions": {"ready": true}}]},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "FQDN",
     "metadata": {"name": "reviews-c"}, "ports": [{"name": "http", "port": 9080}],
     "endpoints": [{"addresses": ["reviews.example.com"]}]}
  ]}"#;

    #[test]
    fn ready_endpoints_are_used_and_terminating_ones_only_when_none_is_ready() {
        let slices = parse(ROLLING).unwrap();
        assert!(looks_like_slices(ROLLING));
        // Two ports: the one named http; ready (and nil ready) only; FQDN skipped.
        assert_eq!(endpoints(&slices, &PortRef::Only).unwrap(), ["10.0.0.1:9080", "10.0.0.2:9080", "[fd00::5]:9080"]);
        assert_eq!(endpoints(&slices, &PortRef::Name("metrics".into())).unwrap(), ["10.0.0.1:9090", "10.0.0.2:9090"]);
        // Every ready one gone: the serving, terminating one drains the traffic; the unready never.
        let draining: Vec<EndpointSlice> = slices[..1]
            .iter()
            .cloned()
            .map(|mut s| {
                s.endpoints.retain(|e| e.conditions.ready == Some(false));
                s
            })
            .collect();
        assert_eq!(endpoints(&draining, &PortRef::Only).unwrap(), ["10.0.0.4:9080"]);
    }

    #[test]
    fn several_ports_and_none_named_http_is_said() {
        let text = DOCS_EXAMPLE
            .replace("  - name: http\n", "  - name: web\n    protocol: TCP\n    port: 81\n  - name: admin\n");
        let e = endpoints(&parse(&text).unwrap(), &PortRef::Only).unwrap_err();
        assert!(e.contains("web, admin"), "{e}");
        assert!(parse("kind: Pod\n").unwrap_err().contains("\"Pod\" is not an EndpointSlice"));
        assert!(!looks_like_slices("# replicas\n10.0.0.1:9080\n"));
    }
}
