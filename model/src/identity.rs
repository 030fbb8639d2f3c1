//! Workload identity and node ids (docs/ARCHITECTURE.md, "Where meshlens departs from the design notes").
//!
//! A workload is `(namespace, app, version)`; its node id is `ns/app/version`, or `ns/app` without a
//! version. Nodes that are not workloads — the `user` that sends traffic with no known caller, and the
//! external, database and unknown peers named from span attributes — are [`Peer`]s too.

use serde::{Deserialize, Serialize};

/// Namespace used when a resource has no `service.namespace`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A workload: one version of one app in one namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Workload {
    /// `service.namespace`, or `default`.
    pub namespace: String,
    /// `service.name`.
    pub app: String,
    /// `service.version`, absent when missing, empty, `unknown` or `latest`.
    pub version: Option<String>,
    /// The cluster it runs in (`k8s.cluster.name`; Istio's `source_cluster`/`destination_cluster`),
    /// absent in a one-cluster mesh. Part of the identity: `reviews` in two clusters is two nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// The longest namespace, app, version or peer name the collector keeps, in bytes: a DNS name's
/// limit, and Kubernetes' for object names. Longer names are refused at the door and counted
/// (`meshlens_collector_names_too_long_total`), so no export can make one node cost megabytes.
pub const MAX_NAME_BYTES: usize = 253;

/// The app a `service.name` names: trimmed, `None` when missing or empty (such a resource is refused).
pub fn app_name(service_name: Option<&str>) -> Option<&str> {
    service_name.map(str::trim).filter(|n| !n.is_empty())
}

impl Workload {
    /// Builds a workload from OTLP resource attributes; `None` when `service.name` is missing or empty.
    pub fn from_resource(namespace: Option<&str>, name: Option<&str>, version: Option<&str>) -> Option<Self> {
        let app = app_name(name)?;
        let namespace = namespace.map(str::trim).filter(|n| !n.is_empty()).unwrap_or(DEFAULT_NAMESPACE);
        Some(Self {
            namespace: namespace.to_owned(),
            app: app.to_owned(),
            version: normalize_version(version),
            cluster: None,
        })
    }

    /// The same workload in a cluster (`None`, empty, `unknown`, or a name over [`MAX_NAME_BYTES`]:
    /// no cluster).
    pub fn in_cluster(mut self, cluster: Option<&str>) -> Self {
        self.cluster = cluster
            .map(str::trim)
            .filter(|c| !c.is_empty() && *c != "unknown" && c.len() <= MAX_NAME_BYTES)
            .map(str::to_owned);
        self
    }

    /// `@cluster`, or nothing.
    fn cluster_suffix(&self) -> String {
        self.cluster.as_deref().map(|c| format!("@{c}")).unwrap_or_default()
    }

    /// The node id: `ns/app/version`, or `ns/app` when there is no version; `@cluster` after it in
    /// a cluster.
    pub fn id(&self) -> String {
        match &self.version {
            Some(v) => format!("{}/{}/{}{}", self.namespace, self.app, v, self.cluster_suffix()),
            None => self.app_id(),
        }
    }

    /// The id of this workload's app node: `ns/app` (`ns/app@cluster` in a cluster).
    pub fn app_id(&self) -> String {
        format!("{}/{}{}", self.namespace, self.app, self.cluster_suffix())
    }

    /// The same workload with its version dropped (the `app` view).
    pub fn without_version(&self) -> Self {
        Self { namespace: self.namespace.clone(), app: self.app.clone(), version: None, cluster: self.cluster.clone() }
    }
}

/// Drops versions that carry no information: missing, empty, `unknown`, `latest`.
pub fn normalize_version(version: Option<&str>) -> Option<String> {
    let v = version.map(str::trim)?;
    if v.is_empty() || v.eq_ignore_ascii_case("unknown") || v.eq_ignore_ascii_case("latest") {
        None
    } else {
        Some(v.to_owned())
    }
}

/// One end of an edge.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Peer {
    /// A workload that reported its own telemetry.
    Workload(Workload),
    /// Traffic with no known caller.
    User,
    /// A service outside the mesh, named from `peer.service` or `server.address`.
    External {
        /// The name taken from span attributes.
        name: String,
    },
    /// A database, named from `peer.service`, `server.address`, `db.namespace`/`db.name`, `db.system`.
    Database {
        /// The name taken from span attributes.
        name: String,
    },
    /// A callee nothing could be learned about.
    Unknown,
}

impl Peer {
    /// The stable node id: a workload's id, `user`, `unknown`, `ext:NAME` or `db:NAME`.
    pub fn id(&self) -> String {
        match self {
            Peer::Workload(w) => w.id(),
            Peer::User => "user".to_owned(),
            Peer::External { name } => format!("ext:{name}"),
            Peer::Database { name } => format!("db:{name}"),
            Peer::Unknown => "unknown".to_owned(),
        }
    }

    /// The workload, when this peer is one.
    pub fn workload(&self) -> Option<&Workload> {
        match self {
            Peer::Workload(w) => Some(w),
            _ => None,
        }
    }

    /// The peer with any workload version dropped.
    pub fn without_version(&self) -> Self {
        match self {
            Peer::Workload(w) => Peer::Workload(w.without_version()),
            other => other.clone(),
        }
    }

    /// A short name for tables and labels.
    pub fn display_name(&self) -> String {
        match self {
            Peer::Workload(w) => w.id(),
            Peer::External { name } | Peer::Database { name } => name.clone(),
            Peer::User => "user".to_owned(),
            Peer::Unknown => "unknown".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_that_say_nothing_are_dropped() {
        for v in [None, Some(""), Some("unknown"), Some("latest"), Some(" LATEST ")] {
            assert_eq!(normalize_version(v), None, "{v:?}");
        }
        assert_eq!(normalize_version(Some("v1")), Some("v1".to_owned()));
    }

    #[test]
    fn ids() {
        let w = Workload::from_resource(None, Some("reviews"), Some("v3")).unwrap();
        assert_eq!(w.id(), "default/reviews/v3");
        assert_eq!(w.app_id(), "default/reviews");
        let w = Workload::from_resource(Some("shop"), Some("cart"), Some("latest")).unwrap();
        assert_eq!(w.id(), "shop/cart");
        assert!(Workload::from_resource(Some("shop"), None, None).is_none());
        assert!(Workload::from_resource(Some("shop"), Some(" "), None).is_none());
        assert_eq!(Peer::Database { name: "mysql".into() }.id(), "db:mysql");
    }
}
