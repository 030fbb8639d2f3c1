//! `meshlens inject`: Kubernetes workload manifests written back with the agent as a sidecar, as
//! `istioctl kube-inject` and `linkerd inject` do.
//!
//! Each Deployment and StatefulSet of the input (many YAML documents, in order) gets:
//!
//! - a `meshlens-agent` container running `meshlens agent` on its own config, with its inbound
//!   listener on [`INBOUND`] (in front of the app's port), its outbound one on `127.0.0.1:`[`OUTBOUND`]
//!   and its admin one (`/ready` is the container's readiness probe) on [`ADMIN`];
//! - that config as a ConfigMap (`<workload>-meshlens`, mounted at `/etc/meshlens`; the agent reloads
//!   it when it changes): the workload identity from the pod labels `app`/`version` (or
//!   `app.kubernetes.io/name`/`app.kubernetes.io/version`) and the namespace, the app's port (the
//!   first `containerPort`, or the annotation `meshlens.io/app-port`), the collector, and the
//!   services it calls — every other app of the input, or those the annotation `meshlens.io/calls`
//!   names — each version found through DNS (`{dns: ...}`, see agent/src/discovery.rs);
//! - a headless Service (`<workload>-meshlens`, `clusterIP: None`, the workload's own selector, port
//!   [`INBOUND`]): its name resolves to every ready Pod of that version, which is how the other
//!   agents find its replicas as they come and go;
//! - traffic redirect: `--redirect iptables` (Istio's and Linkerd's way) adds an init container that
//!   sends inbound connections to the app's port to the agent, and outbound ones to the called
//!   services' ports through it (the agent's own, by its uid [`AGENT_UID`], pass); `--redirect
//!   ports` needs no privilege: the app containers get `HTTP_PROXY` pointing at the agent, and each
//!   Service of the input that selects an injected app targets the agent's inbound port.
//!
//! A workload whose pod template is annotated `meshlens.io/inject: "false"`, or that already has the
//! agent, is left as it is (and said). What this writes is checked against Kubernetes' OpenAPI
//! schemas in CI (tests/it/kubernetes.rs). Comments of the input are not kept.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

/// The agent's inbound port.
pub const INBOUND: u16 = 15006;
/// The agent's outbound port (on loopback).
pub const OUTBOUND: u16 = 15001;
/// The agent's admin port.
pub const ADMIN: u16 = 15000;
/// The uid the agent runs as, which the iptables rules let pass.
pub const AGENT_UID: u64 = 1337;
/// The sidecar's container name.
pub const CONTAINER: &str = "meshlens-agent";

/// How traffic reaches the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Redirect {
    /// An init container's iptables rules (needs NET_ADMIN, as Istio's and Linkerd's do).
    Iptables,
    /// No privilege: HTTP_PROXY for the app, Services retargeted to the agent's inbound port.
    Ports,
}

/// What `inject` needs besides the manifests.
#[derive(Clone, Debug)]
pub struct Options {
    /// The image with the `meshlens` binary (and `iptables`, for `--redirect iptables`).
    pub image: String,
    /// The collector's OTLP/gRPC URL.
    pub collector: String,
    /// How traffic reaches the agent.
    pub redirect: Redirect,
    /// The namespace of every object that names none (as `kubectl apply -n` would give it).
    pub namespace: String,
    /// The collector's bearer token, written into each agent's config (so into its ConfigMap).
    pub token: Option<String>,
}

/// A manifest that cannot be injected.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct InjectError {
    /// The document (`Deployment shop/reviews-v1`, or `document 3`).
    pub what: String,
    /// What is wrong.
    pub message: String,
}

/// The manifests written back, and what was left as it was and why.
#[derive(Debug)]
pub struct Injected {
    /// YAML documents separated by `---`.
    pub yaml: String,
    /// One line per workload injected or left out.
    pub notes: Vec<String>,
}

/// One workload of the input.
struct Workload {
    doc: usize,
    kind: String,
    name: String,
    namespace: String,
    app: String,
    version: Option<String>,
    app_port: u16,
    calls: Option<Vec<String>>,
    selector: Value,
}

fn err(what: impl Into<String>, message: impl Into<String>) -> InjectError {
    InjectError { what: what.into(), message: message.into() }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// A pod template label by either of its names.
fn label<'a>(labels: Option<&'a Value>, names: [&str; 2]) -> Option<&'a str> {
    names.iter().find_map(|n| labels?.get(*n)?.as_str())
}

fn workload_of(doc: usize, v: &Value, default_ns: &str) -> Result<Option<Workload>, InjectError> {
    let kind = str_at(v, "/kind").unwrap_or_default();
    if !matches!(kind, "Deployment" | "StatefulSet") {
        return Ok(None);
    }
    let name = str_at(v, "/metadata/name").unwrap_or_default().to_owned();
    let namespace = str_at(v, "/metadata/namespace").unwrap_or(default_ns).to_owned();
    let what = format!("{kind} {namespace}/{name}");
    let labels = v.pointer("/spec/template/metadata/labels");
    let annotations = v.pointer("/spec/template/metadata/annotations");
    let annotation = |n: &str| annotations.and_then(|a| a.get(n)).and_then(Value::as_str);
    if annotation("meshlens.io/inject") == Some("false") {
        return Ok(None);
    }
    let app = label(labels, ["app", "app.kubernetes.io/name"])
        .ok_or_else(|| {
            err(&what, "its pod template has no app label (app or app.kubernetes.io/name) to name the workload")
        })?
        .to_owned();
    let version = label(labels, ["version", "app.kubernetes.io/version"]).map(str::to_owned);
    let containers = v
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .ok_or_else(|| err(&what, "spec.template.spec.containers is missing"))?;
    let app_port = match annotation("meshlens.io/app-port") {
        Some(p) => p.parse::<u16>().map_err(|_| err(&what, format!("meshlens.io/app-port {p:?} is not a port")))?,
        None => containers
            .iter()
            .filter(|c| c.get("name").and_then(Value::as_str) != Some(CONTAINER))
            .find_map(|c| c.pointer("/ports/0/containerPort").and_then(Value::as_u64))
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| err(&what, "no container declares a containerPort; say the app's port in the pod annotation meshlens.io/app-port"))?,
    };
    let calls = annotation("meshlens.io/calls")
        .map(|c| c.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect());
    let selector = v
        .pointer("/spec/selector/matchLabels")
        .cloned()
        .ok_or_else(|| err(&what, "spec.selector.matchLabels is missing"))?;
    Ok(Some(Workload { doc, kind: kind.to_owned(), name, namespace, app, version, app_port, calls, selector }))
}

fn already_injected(v: &Value) -> bool {
    v.pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c.get("name").and_then(Value::as_str) == Some(CONTAINER)))
}

fn version_key(w: &Workload) -> String {
    w.version.clone().unwrap_or_else(|| w.name.clone())
}

/// The agent's config for `w`, calling `callees` (app → its workloads).
fn agent_config(w: &Workload, callees: &BTreeMap<&str, Vec<&Workload>>, o: &Options) -> String {
    let mut services = serde_json::Map::new();
    for (app, versions) in callees {
        let mut vs = serde_json::Map::new();
        for v in versions {
            let host = format!("{}-meshlens.{}.svc.cluster.local:{INBOUND}", v.name, v.namespace);
            vs.insert(version_key(v), json!([{ "dns": host }]));
        }
        let namespace = versions.first().map_or("default", |v| v.namespace.as_str());
        services.insert((*app).to_owned(), json!({ "namespace": namespace, "versions": vs }));
    }
    let mut workload = json!({ "namespace": w.namespace, "app": w.app });
    if let Some(v) = &w.version {
        workload["version"] = json!(v);
    }
    let config = json!({
        "workload": workload,
        "inbound": { "listen": format!("0.0.0.0:{INBOUND}"), "app": format!("127.0.0.1:{}", w.app_port) },
        "outbound": { "listen": format!("127.0.0.1:{OUTBOUND}") },
        "admin": { "listen": format!("0.0.0.0:{ADMIN}") },
        "telemetry": match &o.token {
            Some(t) => json!({ "collector": o.collector, "token": t }),
            None => json!({ "collector": o.collector }),
        },
        "services": services,
    });
    let body = serde_yaml_ng::to_string(&config).unwrap_or_default();
    format!("# meshlens agent for {} ({} {}), written by meshlens inject\n{body}", w.app, w.kind, w.name)
}

fn sidecar(o: &Options) -> Value {
    json!({
        "name": CONTAINER,
        "image": o.image,
        "args": ["agent", "--config", "/etc/meshlens/agent.yaml"],
        "ports": [
            { "name": "meshlens-in", "containerPort": INBOUND },
            { "name": "meshlens-admin", "containerPort": ADMIN },
        ],
        "readinessProbe": { "httpGet": { "path": "/ready", "port": ADMIN } },
        "securityContext": { "runAsUser": AGENT_UID, "runAsNonRoot": true, "allowPrivilegeEscalation": false },
        "volumeMounts": [{ "name": "meshlens-config", "mountPath": "/etc/meshlens", "readOnly": true }],
    })
}

fn init_container(o: &Options, app_port: u16, outbound_ports: &BTreeSet<u16>) -> Value {
    let mut rules =
        vec![format!("iptables -t nat -A PREROUTING -p tcp --dport {app_port} -j REDIRECT --to-ports {INBOUND}")];
    rules.push(format!("iptables -t nat -A OUTPUT -p tcp -m owner --uid-owner {AGENT_UID} -j RETURN"));
    rules.push("iptables -t nat -A OUTPUT -p tcp -d 127.0.0.0/8 -j RETURN".to_owned());
    for p in outbound_ports {
        rules.push(format!("iptables -t nat -A OUTPUT -p tcp --dport {p} -j REDIRECT --to-ports {OUTBOUND}"));
    }
    json!({
        "name": "meshlens-init",
        "image": o.image,
        "command": ["/bin/sh", "-c", rules.join(" && ")],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "capabilities": { "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] },
        },
    })
}

/// Reads the manifests in `text` and writes them back injected.
pub fn inject(text: &str, o: &Options) -> Result<Injected, InjectError> {
    let mut docs = Vec::new();
    for (i, d) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v: serde_yaml_ng::Value = serde::Deserialize::deserialize(d)
            .map_err(|e| err(format!("document {}", i + 1), format!("not YAML: {e}")))?;
        if v.is_null() {
            continue;
        }
        docs.push(serde_json::to_value(&v).map_err(|e| err(format!("document {}", i + 1), e.to_string()))?);
    }
    // Every object gets the namespace it will live in, so the generated ones (and the DNS names in
    // the agents' configs) agree with where the input goes.
    for v in &mut docs {
        let cluster_wide = matches!(
            str_at(v, "/kind"),
            Some("Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition" | "PersistentVolume")
        );
        if !cluster_wide
            && str_at(v, "/metadata/namespace").is_none()
            && let Some(Value::Object(meta)) = v.get_mut("metadata")
        {
            meta.insert("namespace".into(), json!(o.namespace));
        }
    }
    let mut notes = Vec::new();
    let mut workloads = Vec::new();
    for (i, v) in docs.iter().enumerate() {
        if already_injected(v) {
            notes.push(format!(
                "{} {}: already has {CONTAINER}; left as it is",
                str_at(v, "/kind").unwrap_or("?"),
                str_at(v, "/metadata/name").unwrap_or("?")
            ));
            continue;
        }
        match workload_of(i, v, &o.namespace)? {
            Some(w) => workloads.push(w),
            None if matches!(str_at(v, "/kind"), Some("Deployment" | "StatefulSet")) => notes.push(format!(
                "{} {}: meshlens.io/inject is \"false\"; left as it is",
                str_at(v, "/kind").unwrap_or("?"),
                str_at(v, "/metadata/name").unwrap_or("?")
            )),
            None => {}
        }
    }
    let mut by_app: BTreeMap<&str, Vec<&Workload>> = BTreeMap::new();
    for w in &workloads {
        by_app.entry(w.app.as_str()).or_default().push(w);
    }
    // Service ports in the input, per app they select: what iptables sends through the agent.
    let mut service_ports: BTreeSet<u16> = BTreeSet::new();
    for v in &docs {
        if str_at(v, "/kind") == Some("Service") {
            for p in v.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
                if let Some(p) = p.get("port").and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok()) {
                    service_ports.insert(p);
                }
            }
        }
    }
    let mut extra: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
    for w in &workloads {
        let callees: BTreeMap<&str, Vec<&Workload>> = match &w.calls {
            Some(names) => {
                let mut m = BTreeMap::new();
                for n in names {
                    let found = by_app.get(n.as_str()).ok_or_else(|| {
                        err(
                            format!("{} {}/{}", w.kind, w.namespace, w.name),
                            format!(
                                "meshlens.io/calls names {n:?}, which no workload of the input is; its apps are {}",
                                by_app.keys().copied().collect::<Vec<_>>().join(", ")
                            ),
                        )
                    })?;
                    m.insert(n.as_str(), found.clone());
                }
                m
            }
            None => by_app.iter().filter(|(a, _)| **a != w.app).map(|(a, v)| (*a, v.clone())).collect(),
        };
        let cm_name = format!("{}-meshlens", w.name);
        let config = agent_config(w, &callees, o);
        let doc = &mut docs[w.doc];
        let spec = doc
            .pointer_mut("/spec/template/spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| err(&w.name, "spec.template.spec is not a mapping"))?;
        if let Some(Value::Array(containers)) = spec.get_mut("containers") {
            if o.redirect == Redirect::Ports {
                for c in containers.iter_mut() {
                    let env = c.as_object_mut().map(|c| c.entry("env").or_insert_with(|| json!([])));
                    if let Some(Value::Array(env)) = env {
                        env.push(json!({ "name": "HTTP_PROXY", "value": format!("http://127.0.0.1:{OUTBOUND}") }));
                        env.push(json!({ "name": "NO_PROXY", "value": "localhost,127.0.0.1" }));
                    }
                }
            }
            containers.push(sidecar(o));
        }
        if o.redirect == Redirect::Iptables {
            let init = spec.entry("initContainers").or_insert_with(|| json!([]));
            if let Value::Array(init) = init {
                init.insert(0, init_container(o, w.app_port, &service_ports));
            }
        }
        let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Value::Array(vs) = volumes {
            vs.push(json!({ "name": "meshlens-config", "configMap": { "name": cm_name } }));
        }
        let mut labels = json!({ "app.kubernetes.io/managed-by": "meshlens-inject" });
        if let Value::Object(sel) = &w.selector {
            for (k, v) in sel {
                labels[k] = v.clone();
            }
        }
        extra.entry(w.doc).or_default().extend([
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": { "name": cm_name, "namespace": w.namespace, "labels": labels },
                "data": { "agent.yaml": config },
            }),
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": { "name": cm_name, "namespace": w.namespace, "labels": labels },
                "spec": {
                    "clusterIP": "None",
                    "selector": w.selector,
                    "ports": [{ "name": "http-meshlens", "port": INBOUND, "targetPort": INBOUND }],
                },
            }),
        ]);
        notes.push(format!(
            "{} {}/{}: {} as {}/{}{}, app port {}, calls {}",
            w.kind,
            w.namespace,
            w.name,
            CONTAINER,
            w.namespace,
            w.app,
            w.version.as_deref().map(|v| format!("/{v}")).unwrap_or_default(),
            w.app_port,
            if callees.is_empty() {
                "nothing".to_owned()
            } else {
                callees.keys().copied().collect::<Vec<_>>().join(", ")
            }
        ));
    }
    if o.redirect == Redirect::Ports {
        // A Service that selects an injected app reaches its Pods through the agent.
        let apps: BTreeSet<&str> = workloads.iter().map(|w| w.app.as_str()).collect();
        for v in docs.iter_mut().filter(|v| str_at(v, "/kind") == Some("Service")) {
            let selects = ["/spec/selector/app", "/spec/selector/app.kubernetes.io~1name"]
                .iter()
                .find_map(|p| str_at(v, p))
                .is_some_and(|a| apps.contains(a));
            if selects && let Some(Value::Array(ports)) = v.pointer_mut("/spec/ports") {
                for p in ports.iter_mut() {
                    p["targetPort"] = json!(INBOUND);
                }
            }
        }
    }
    let mut out = String::new();
    for (i, v) in docs.iter().enumerate() {
        for d in std::iter::once(v).chain(extra.get(&i).into_iter().flatten()) {
            out.push_str("---\n");
            out.push_str(&serde_yaml_ng::to_string(d).map_err(|e| err(format!("document {}", i + 1), e.to_string()))?);
        }
    }
    Ok(Injected { yaml: out, notes })
}
