//! Kubernetes: `meshlens inject` on Istio's own bookinfo manifests, and the manifests of
//! deploy/kubernetes, checked against Kubernetes' OpenAPI schemas (kubernetes-validate from PyPI, in
//! the venv .ci/setup makes, `--strict`); the agent configs inject writes are read by the agent's
//! own parser, and the collector's arguments by the binary's.

use std::path::{Path, PathBuf};

use clap::Parser;
use serde_json::Value;

use crate::cli::meshlens;
use crate::support::tool;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs the schema validator on `files`: whether every resource passed, and what it said.
async fn validate(files: &[&Path]) -> (bool, String) {
    let bin = tool(
        "MESHLENS_KUBERNETES_VALIDATE",
        "/var/tmp/meshlens-venv/bin/kubernetes-validate",
        "kubernetes-validate in the Python venv",
    );
    let out = tokio::process::Command::new(bin).arg("--strict").args(files).output().await.unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .map(|v: serde_yaml_ng::Value| serde_json::to_value(v).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_on_bookinfo_writes_manifests_the_schemas_accept_and_configs_the_agent_reads() {
    let bookinfo = repo("tests/fixtures/istio/bookinfo.yaml");
    let dir = tempfile::tempdir().unwrap();
    for redirect in ["iptables", "ports"] {
        let o = meshlens(&["inject", "--redirect", redirect, "-n", "shop", bookinfo.to_str().unwrap()]).await;
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        assert_eq!(stderr.matches("meshlens-agent as shop/").count(), 6, "{stderr}");
        let out = dir.path().join(format!("bookinfo-{redirect}.yaml"));
        std::fs::write(&out, &o.stdout).unwrap();
        let (ok, said) = validate(&[&out]).await;
        assert!(ok, "the schemas refused what inject wrote ({redirect}):\n{said}");

        let docs = documents(&String::from_utf8_lossy(&o.stdout));
        let deployments = of_kind(&docs, "Deployment");
        assert_eq!(deployments.len(), 6);
        let headless: Vec<&Value> =
            of_kind(&docs, "Service").into_iter().filter(|s| s["spec"]["clusterIP"] == "None").collect();
        assert_eq!(headless.len(), 6, "one per workload");
        for d in &deployments {
            let name = d["metadata"]["name"].as_str().unwrap();
            assert_eq!(d["metadata"]["namespace"], "shop");
            let pod = &d["spec"]["template"]["spec"];
            let containers = pod["containers"].as_array().unwrap();
            assert_eq!(containers.last().unwrap()["name"], "meshlens-agent", "{name}");
            match redirect {
                "iptables" => {
                    let init = &pod["initContainers"][0];
                    assert_eq!(init["name"], "meshlens-init");
                    let rules = init["command"][2].as_str().unwrap();
                    assert!(rules.contains("--dport 9080 -j REDIRECT --to-ports 15006"), "{rules}");
                    assert!(rules.contains("--uid-owner 1337 -j RETURN"), "{rules}");
                }
                _ => {
                    assert!(pod.get("initContainers").is_none());
                    assert_eq!(containers[0]["env"].as_array().unwrap().last().unwrap()["name"], "NO_PROXY");
                }
            }
            // Its headless Service selects exactly its Pods.
            let own = headless.iter().find(|s| s["metadata"]["name"] == format!("{name}-meshlens")).unwrap();
            assert_eq!(own["spec"]["selector"], d["spec"]["selector"]["matchLabels"]);
        }
        if redirect == "ports" {
            let reviews = of_kind(&docs, "Service").into_iter().find(|s| s["metadata"]["name"] == "reviews").unwrap();
            assert_eq!(
                reviews["spec"]["ports"][0]["targetPort"], 15006,
                "the Service reaches the Pods through the agent"
            );
        }

        // Each config is one the agent takes, naming the workload and finding every other app's
        // versions through their headless Services.
        let names: Vec<String> = headless
            .iter()
            .map(|s| format!("{}.shop.svc.cluster.local", s["metadata"]["name"].as_str().unwrap()))
            .collect();
        for cm in of_kind(&docs, "ConfigMap") {
            let text = cm["data"]["agent.yaml"].as_str().unwrap();
            let config =
                meshlens_agent::config::AgentConfig::parse(text, "configmap").unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(config.workload.namespace, "shop");
            assert!(!config.services.contains_key(&config.workload.app), "an app does not call itself by default");
            for svc in config.services.values() {
                for (_, source) in &svc.sources {
                    let meshlens_agent::config::Source::Dns { host, port } = source else { panic!("{source:?}") };
                    assert!(names.contains(host), "{host} is no headless Service of the output");
                    assert_eq!(*port, 15006);
                }
            }
            if config.workload.app == "productpage" {
                assert_eq!(config.services.keys().collect::<Vec<_>>(), ["details", "ratings", "reviews"]);
                assert_eq!(config.services["reviews"].sources.len(), 3, "reviews v1, v2, v3");
            }
        }

        // Injecting again changes nothing.
        let again = meshlens(&["inject", out.to_str().unwrap()]).await;
        assert!(again.status.success());
        assert_eq!(String::from_utf8_lossy(&again.stderr).matches("already has meshlens-agent").count(), 6);
        assert_eq!(of_kind(&documents(&String::from_utf8_lossy(&again.stdout)), "ConfigMap").len(), 6);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_names_what_it_cannot_do_and_leaves_out_what_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let deployment = |name: &str, labels: &str, annotations: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{{labels}}}}}\n  \
             template:\n    metadata: {{labels: {{{labels}}}, annotations: {{{annotations}}}}}\n    spec:\n      \
             containers: [{{name: main, image: x, ports: [{{containerPort: 8080}}]}}]\n"
        )
    };
    let cases = [
        (deployment("nolabel", "tier: web", ""), "Deployment default/nolabel: its pod template has no app label"),
        (
            deployment("a", "app: a", "meshlens.io/calls: 'b'"),
            "Deployment default/a: meshlens.io/calls names \"b\", which no workload of the input is",
        ),
        (deployment("p", "app: p", "meshlens.io/app-port: 'http'"), "meshlens.io/app-port \"http\" is not a port"),
        ("kind: [".to_owned(), "document 1: not YAML"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("{i}.yaml"));
        std::fs::write(&f, text).unwrap();
        let o = meshlens(&["inject", f.to_str().unwrap()]).await;
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    // Opted out: written back as it was; the app it names by labels app.kubernetes.io/* is injected.
    let f = dir.path().join("mixed.yaml");
    let text = format!(
        "{}---\n{}",
        deployment("off", "app: off", "meshlens.io/inject: 'false'"),
        deployment("on", "app.kubernetes.io/name: on, app.kubernetes.io/version: '2'", "")
    );
    std::fs::write(&f, text).unwrap();
    let o = meshlens(&["inject", "--redirect", "ports", f.to_str().unwrap()]).await;
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Deployment off: meshlens.io/inject is \"false\""));
    let docs = documents(&String::from_utf8_lossy(&o.stdout));
    let deps = of_kind(&docs, "Deployment");
    assert_eq!(deps[0]["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 1);
    assert_eq!(deps[1]["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 2);
    let cm = of_kind(&docs, "ConfigMap")[0]["data"]["agent.yaml"].as_str().unwrap().to_owned();
    let config = meshlens_agent::config::AgentConfig::parse(&cm, "cm").unwrap();
    assert_eq!(config.workload.id(), "default/on/2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_manifests_pass_the_schemas_and_the_collector_takes_its_arguments() {
    let files: Vec<PathBuf> = ["namespace.yaml", "collector.yaml", "ca-bootstrap.yaml"]
        .iter()
        .map(|f| repo(&format!("deploy/kubernetes/{f}")))
        .collect();
    let (ok, said) = validate(&files.iter().map(PathBuf::as_path).collect::<Vec<_>>()).await;
    assert!(ok, "{said}");
    // The validator refuses what is wrong (so its yes means something).
    let dir = tempfile::tempdir().unwrap();
    let collector = std::fs::read_to_string(&files[1]).unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, collector.replace("replicas: 1", "replicas: one")).unwrap();
    assert!(!validate(&[&broken]).await.0, "replicas: one passed");

    // The collector's arguments, with the ConfigMap's values in place of $(VAR), are ones the
    // binary takes.
    let docs = documents(&collector);
    let data = of_kind(&docs, "ConfigMap")[0]["data"].as_object().unwrap().clone();
    let container = &of_kind(&docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0];
    let mut args = vec!["meshlens".to_owned()];
    for a in container["args"].as_array().unwrap() {
        let mut a = a.as_str().unwrap().to_owned();
        for (k, v) in &data {
            a = a.replace(&format!("$({k})"), v.as_str().unwrap());
        }
        assert!(!a.contains("$("), "{a}: no value for it in the ConfigMap");
        args.push(a);
    }
    let cli = meshlens::Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(cli.command, meshlens::Command::Collector(_)));
}
