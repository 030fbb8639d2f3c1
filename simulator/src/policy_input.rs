//! The policy files `meshlens sim --policy` and `meshlens policy import` take, as users have them:
//! meshlens's own (`policy:` or bare `services:`), any file that carries a `policy:` block (a
//! scenario, a demo mesh, an agent config), or Istio's `VirtualService` and `DestinationRule`
//! documents (several per file, `---` between them), read by `meshlens_model::istio`. What could
//! not be carried over comes back as warnings naming the document and field.

use std::collections::BTreeMap;

use meshlens_model::policy::{PolicyFile, ServiceSpec};
use serde::Deserialize;

use crate::scenario::ScenarioError;

/// A policy read from a file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyInput {
    /// In meshlens's schema.
    pub policy: PolicyFile,
    /// What was left out or filled in, each naming where.
    pub warnings: Vec<String>,
}

/// Every YAML document of `text`, as JSON values (empty documents left out).
pub(crate) fn documents(text: &str, origin: &str) -> Result<Vec<serde_json::Value>, ScenarioError> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = serde_json::Value::deserialize(doc)
            .map_err(|e| ScenarioError { origin: origin.to_owned(), message: format!("document {}: {e}", i + 1) })?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Reads the policy in `text` (one of the shapes above); `origin` names the file in errors.
pub fn read_policy(text: &str, origin: &str) -> Result<PolicyInput, ScenarioError> {
    read_policies(&[(text, origin)])
}

/// Reads several files as one policy: Istio's documents from all of them together (a
/// VirtualService's subsets may be in another file's DestinationRule), meshlens policies merged by
/// service, a later file's service replacing an earlier one's.
pub fn read_policies(files: &[(&str, &str)]) -> Result<PolicyInput, ScenarioError> {
    let mut istio = Vec::new();
    let mut out = PolicyInput::default();
    let first = files.first().map_or("", |f| f.1);
    for (text, origin) in files {
        let err = |message: String| ScenarioError { origin: (*origin).to_owned(), message };
        let docs = documents(text, origin)?;
        if docs.is_empty() {
            return Err(err("no document: expected a policy".into()));
        }
        if docs.iter().any(meshlens_model::istio::is_istio) {
            istio.extend(docs);
            continue;
        }
        if docs.len() > 1 {
            return Err(err("several documents, none of them Istio's: a meshlens policy is one document".into()));
        }
        let doc = &docs[0];
        let policy = if let Some(p) = doc.get("policy") {
            serde_json::from_value::<PolicyFile>(p.clone()).map_err(|e| err(format!("policy: {e}")))?
        } else if doc.as_object().is_some_and(|o| o.len() == 1 && o.contains_key("services")) {
            let services: BTreeMap<String, ServiceSpec> =
                serde_json::from_value(doc["services"].clone()).map_err(|e| err(format!("services: {e}")))?;
            PolicyFile { services }
        } else if doc.get("apiVersion").is_some() {
            return Err(err(format!(
                "{} {}: not a policy meshlens reads (expected Istio's VirtualService or DestinationRule, or a meshlens policy: block)",
                doc.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default(),
                doc.get("kind").and_then(|v| v.as_str()).unwrap_or_default()
            )));
        } else {
            return Err(err(
                "expected a policy: block, a services: map, or Istio's VirtualService/DestinationRule".into()
            ));
        };
        policy.resolve().map_err(|e| err(format!("policy.{e}")))?;
        out.policy.services.extend(policy.services);
    }
    if !istio.is_empty() {
        let imported = meshlens_model::istio::import(&istio)
            .map_err(|e| ScenarioError { origin: first.to_owned(), message: e.to_string() })?;
        out.policy.services.extend(imported.policy.services);
        out.warnings.extend(imported.warnings);
    }
    Ok(out)
}
