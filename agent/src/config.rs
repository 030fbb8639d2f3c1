//! The agent's config file: plain serde structs as written ([`AgentFile`]), then a checked,
//! resolved [`AgentConfig`]. Parsing takes a `&str`, so tests never touch the file system.
//!
//! Every error names the field by its path (`policy.services.reviews.split.v9`) and, for YAML
//! syntax and unknown fields, the line and column.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use meshlens_model::Workload;
use meshlens_model::policy::{PolicyError, PolicyFile, ServicePolicy};
use serde::{Deserialize, Serialize};

pub use crate::discovery::Source;

/// The file as written.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// The workload this agent stands beside.
    pub workload: WorkloadSpec,
    /// Traffic into the workload.
    pub inbound: InboundSpec,
    /// Traffic out of the workload; off when absent.
    pub outbound: Option<ListenSpec>,
    /// The admin listener (`/ready`, `/metrics`, `/config`).
    pub admin: Option<ListenSpec>,
    /// Export to a collector; off when absent.
    pub telemetry: Option<TelemetrySpec>,
    /// Limits on what clients may send.
    pub limits: Option<LimitsSpec>,
    /// Services the workload calls, with their endpoints per version.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
    /// The traffic policy (`meshlens_model::policy`'s schema).
    pub policy: Option<PolicyFile>,
    /// Mutual TLS between agents; off when absent.
    pub tls: Option<TlsSpec>,
    /// Who may call this workload; everyone when absent.
    pub authz: Option<AuthzSpec>,
    /// Requests per second each caller may make to this workload; unlimited when absent.
    pub rate_limit: Option<RateLimitSpec>,
    /// How `{dns: ...}` and `{srv: ...}` endpoints are resolved.
    pub discovery: Option<DiscoverySpec>,
}

/// `tls:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// This workload's certificate chain (PEM), as `meshlens ca issue` writes it.
    pub cert: String,
    /// Its key (PEM).
    pub key: String,
    /// The mesh CA (PEM).
    pub ca: String,
    /// `strict` (only mTLS inbound) or `permissive` (mTLS and plaintext); strict when absent.
    pub mode: Option<TlsMode>,
    /// The SPIFFE trust domain; `meshlens.local` when absent.
    pub trust_domain: Option<String>,
}

/// `tls.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Only mTLS inbound.
    #[default]
    Strict,
    /// mTLS and plaintext inbound.
    Permissive,
}

/// What an authorization rule (or the default) does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthzAction {
    /// Let the request through.
    #[default]
    Allow,
    /// Answer 403.
    Deny,
}

/// `authz:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzSpec {
    /// `allow` or `deny` what no rule decides; allow when absent.
    pub default: Option<AuthzAction>,
    /// Rules: any matching deny denies, else any matching allow allows, else the default.
    #[serde(default)]
    pub rules: Vec<AuthzRuleSpec>,
}

/// One authorization rule.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzRuleSpec {
    /// `allow` or `deny`.
    pub action: AuthzAction,
    /// Caller identities: a SPIFFE id, a prefix ending in `*`, or `*` (anyone, even unauthenticated).
    #[serde(default)]
    pub from: Vec<String>,
    /// Methods; any when empty.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path prefixes, matched against the normalised path (`agent/src/normalize.rs`); any when empty.
    #[serde(default)]
    pub paths: Vec<String>,
}

/// `rate_limit:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Sustained requests per second per caller.
    pub requests_per_second: f64,
    /// Burst; the rate (at least 1) when absent.
    pub burst: Option<f64>,
}

/// Resolved mutual TLS settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tls {
    /// Certificate chain file.
    pub cert: std::path::PathBuf,
    /// Key file.
    pub key: std::path::PathBuf,
    /// CA file.
    pub ca: std::path::PathBuf,
    /// Only mTLS inbound.
    pub strict: bool,
    /// Trust domain.
    pub trust_domain: String,
}

/// Resolved authorization.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Authz {
    /// Allow what no rule decides.
    pub default_allow: bool,
    /// Rules in file order.
    pub rules: Vec<AuthzRule>,
}

/// A resolved rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuthzRule {
    /// Allow (or deny).
    pub allow: bool,
    /// Identities or prefixes (ending in `*`).
    pub from: Vec<String>,
    /// Methods, upper case.
    pub methods: Vec<String>,
    /// Path prefixes.
    pub paths: Vec<String>,
}

impl AuthzRule {
    /// Whether the rule covers a request.
    pub fn matches(&self, source: &str, method: &str, path: &str) -> bool {
        let from = self.from.is_empty()
            || self.from.iter().any(|f| match f.strip_suffix('*') {
                Some("") => true,
                Some(prefix) => !source.is_empty() && source.starts_with(prefix),
                None => f == source,
            });
        from && (self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && (self.paths.is_empty() || self.paths.iter().any(|p| path.starts_with(p.as_str())))
    }
}

impl Authz {
    /// The rule that decides, by index, and whether it allows; `None` for the default.
    pub fn decide(&self, source: &str, method: &str, path: &str) -> (Option<usize>, bool) {
        if let Some(i) = self.rules.iter().position(|r| !r.allow && r.matches(source, method, path)) {
            return (Some(i), false);
        }
        if let Some(i) = self.rules.iter().position(|r| r.allow && r.matches(source, method, path)) {
            return (Some(i), true);
        }
        (None, self.default_allow)
    }
}

/// Resolved rate limit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RateLimit {
    /// Tokens a second.
    pub per_second: f64,
    /// Bucket size.
    pub burst: f64,
}

/// `workload:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Namespace; `default` when absent.
    pub namespace: Option<String>,
    /// App name.
    pub app: String,
    /// The version label; unversioned when absent.
    pub version: Option<String>,
}

/// `inbound:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundSpec {
    /// Where the agent listens for the workload's callers.
    pub listen: String,
    /// The local app, `host:port`.
    pub app: String,
    /// Whether a caller without a certificate may name itself in `x-meshlens-source`: `trust`
    /// (the default; the graph shows such edges with `mtls_pct` below 100) or `ignore` (the caller
    /// is unknown unless its certificate says who it is).
    #[serde(default)]
    pub source_header: SourceHeader,
}

/// `inbound.source_header`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceHeader {
    /// Taken at its word from a caller without a certificate.
    #[default]
    Trust,
    /// Dropped from a caller without a certificate.
    Ignore,
}

/// A listener.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSpec {
    /// `ip:port`; port 0 picks a free port.
    pub listen: String,
}

/// `telemetry:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySpec {
    /// OTLP/gRPC endpoint of the collector, `http://host:4317`, or `https://host:4317` for a
    /// collector serving TLS from the mesh CA: the agent then presents its mesh certificate and
    /// checks the collector's is the CA's `meshlens/collector`.
    pub collector: String,
    /// Metrics export interval; 5s when absent.
    #[serde(default, with = "meshlens_model::time::text_opt")]
    pub interval: Option<Duration>,
    /// Fraction of new traces sampled, 0..=1; 0.01 when absent.
    pub sampling: Option<f64>,
    /// Finished spans waiting for export; more are dropped and counted. 2048 when absent.
    pub span_queue: Option<usize>,
    /// The collector's bearer token, if it was started with `--token`.
    pub token: Option<String>,
}

/// `limits:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Most bytes of request headers; 64 KiB when absent.
    pub max_header_bytes: Option<usize>,
    /// A client must finish sending its headers within this; 10s when absent.
    #[serde(default, with = "meshlens_model::time::text_opt")]
    pub header_read_timeout: Option<Duration>,
    /// Connecting to an endpoint gives up after this; 1s when absent.
    #[serde(default, with = "meshlens_model::time::text_opt")]
    pub connect_timeout: Option<Duration>,
    /// A request to a service whose policy sets no `timeout` gives up after this (504, as the
    /// policy's timeout does); 15s when absent, Envoy's route default; `0s` waits for ever.
    #[serde(default, with = "meshlens_model::time::text_opt")]
    pub default_timeout: Option<Duration>,
    /// Most connections open at once on each listener; past it a new one is closed at once and
    /// counted. 10000 when absent.
    pub max_connections: Option<usize>,
    /// A connection with no request in flight for this long is closed (HTTP/1 keep-alive and
    /// HTTP/2 alike: a connection that sent only the HTTP/2 preface has none); 60s when absent.
    #[serde(default, with = "meshlens_model::time::text_opt")]
    pub idle_timeout: Option<Duration>,
    /// A request body that sends nothing for this long ends its request (408); 30s when absent.
    #[serde(default, with = "meshlens_model::time::text_opt")]
    pub body_idle_timeout: Option<Duration>,
}

/// One called service as written.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Its namespace; the agent's own when absent.
    pub namespace: Option<String>,
    /// Endpoints per version: `ip:port` or `dns-name:port` of each instance's agent (a name is
    /// resolved on each new connection), or a source of endpoints found at run time
    /// (`crate::discovery`): `{dns: NAME:PORT}`, `{srv: NAME}`, `{file: PATH}`.
    pub versions: BTreeMap<String, Vec<EndpointSpec>>,
}

/// One entry of a version's endpoint list as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EndpointSpec {
    /// `host:port`.
    Address(String),
    /// A source of endpoints.
    Discover(DiscoverSpec),
}

/// A source of endpoints as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum DiscoverSpec {
    /// `NAME:PORT`: every A and AAAA record of the name is an endpoint on that port.
    Dns(String),
    /// An SRV name (`_http._tcp.reviews.shop.svc.cluster.local`): each target and port.
    Srv(String),
    /// A file of `host:port` lines, or of Kubernetes EndpointSlices as kubectl writes them,
    /// watched for changes.
    File(String),
    /// A Kubernetes Service's EndpointSlices, watched through the API.
    Kubernetes(KubernetesSpec),
}

/// `{kubernetes: {service, namespace, port}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSpec {
    /// The Service.
    pub service: String,
    /// Its namespace; the agent's own when absent.
    pub namespace: Option<String>,
    /// The port of its slices: a name (the Service port's) or a number; the only one (or the one
    /// named `http`) when absent.
    pub port: Option<PortSpec>,
}

/// A port by number or name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    /// A number.
    Number(u16),
    /// A name.
    Name(String),
}

/// `discovery:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySpec {
    /// The resolver `{dns: ...}` and `{srv: ...}` entries ask.
    pub dns: Option<DnsSpec>,
    /// The API `{kubernetes: ...}` entries watch.
    pub kubernetes: Option<KubernetesApiSpec>,
}

/// `discovery.kubernetes:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesApiSpec {
    /// An `http://` URL of the API (`kubectl proxy`'s); in a Pod, leave it out: the in-cluster API
    /// and the service account's token and CA are used.
    pub api: Option<String>,
}

/// `discovery.dns:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSpec {
    /// `ip:port` of the DNS server (a cluster's, or a test's); the system's (`/etc/resolv.conf`)
    /// when absent.
    pub server: Option<String>,
}

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not YAML, or a field of the wrong type or name.
    #[error("{origin}: {message}")]
    Syntax {
        /// The file.
        origin: String,
        /// What serde said, with the field path, line and column.
        message: String,
    },
    /// A value that cannot be used.
    #[error("{origin}: {path}: {message}")]
    Invalid {
        /// The file.
        origin: String,
        /// The field.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Export settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Telemetry {
    /// OTLP/gRPC endpoint.
    pub collector: String,
    /// Metrics export interval.
    pub interval: Duration,
    /// Fraction of new traces sampled.
    pub sampling: f64,
    /// Span queue bound.
    pub span_queue: usize,
    /// Bearer token for the collector.
    #[serde(skip_serializing)]
    pub token: Option<String>,
}

/// Client limits.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Limits {
    /// Most bytes of request headers.
    pub max_header_bytes: usize,
    /// Headers must arrive within this.
    pub header_read_timeout: Duration,
    /// Connect timeout to endpoints.
    pub connect_timeout: Duration,
    /// The timeout of a request whose policy sets none; `None` waits for ever.
    pub default_timeout: Option<Duration>,
    /// Most connections open at once per listener.
    pub max_connections: usize,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A request body that sends nothing for this long ends its request.
    pub body_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            default_timeout: Some(Duration::from_secs(15)),
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(30),
        }
    }
}

/// One called service, resolved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Service {
    /// Its namespace.
    pub namespace: String,
    /// Static endpoints per version, versions in name order.
    pub versions: Vec<(String, Vec<String>)>,
    /// Sources of endpoints found at run time, per version, beside the static ones.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<(String, Source)>,
    /// Its policy (defaults when the policy names it not).
    pub policy: ServicePolicy,
}

/// The resolved config.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentConfig {
    /// This agent's workload.
    pub workload: Workload,
    /// Inbound listener.
    pub inbound_listen: SocketAddr,
    /// The local app, `host:port`.
    pub app: String,
    /// Whether a certificate-less caller's `x-meshlens-source` is believed.
    pub source_header: SourceHeader,
    /// Outbound listener.
    pub outbound_listen: Option<SocketAddr>,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Export; none when off.
    pub telemetry: Option<Telemetry>,
    /// Limits on connections, headers, bodies and idle time.
    pub limits: Limits,
    /// Called services by name.
    pub services: BTreeMap<String, Service>,
    /// Mutual TLS.
    pub tls: Option<Tls>,
    /// Authorization of inbound requests.
    pub authz: Option<Authz>,
    /// Inbound rate limit per caller.
    pub rate_limit: Option<RateLimit>,
    /// The DNS server discovery asks; the system's when `None`.
    pub dns_server: Option<SocketAddr>,
    /// The Kubernetes API URL discovery watches; the in-cluster one when `None`.
    pub kubernetes_api: Option<String>,
}

/// The admin listener's default address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:15000";

impl AgentConfig {
    /// Parses and checks a config; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let file: AgentFile = serde_yaml_ng::from_str(text)
            .map_err(|e| ConfigError::Syntax { origin: origin.to_owned(), message: e.to_string() })?;
        Self::from_file(&file, origin)
    }

    /// Checks a config built in code (the demo's, tests'): the same checks as a file's, with no
    /// text in between.
    pub fn from_file(file: &AgentFile, origin: &str) -> Result<Self, ConfigError> {
        file.resolve().map_err(|e| ConfigError::Invalid { origin: origin.to_owned(), path: e.path, message: e.message })
    }

    /// The parts a reload may change differ from `other` only there; listeners and the workload
    /// need a restart. Returns the first part that needs one.
    pub fn restart_needed(&self, other: &Self) -> Option<&'static str> {
        // Every field is named, so a new one does not compile until it is sorted here into what a
        // reload applies (`_`) or what needs a restart.
        let AgentConfig {
            workload,
            inbound_listen,
            app: _,
            source_header: _,
            outbound_listen,
            admin_listen,
            telemetry,
            limits,
            services: _,
            tls,
            authz: _,
            rate_limit: _,
            dns_server,
            kubernetes_api,
        } = self;
        // The exporter (endpoint, queue, interval, token) is built at start; sampling is read live.
        let export = |t: &Option<Telemetry>| {
            t.as_ref().map(|t| {
                let Telemetry { collector, interval, sampling: _, span_queue, token } = t;
                (collector.clone(), *span_queue, *interval, token.clone())
            })
        };
        [
            ("workload", *workload != other.workload),
            ("inbound.listen", *inbound_listen != other.inbound_listen),
            ("outbound.listen", *outbound_listen != other.outbound_listen),
            ("admin.listen", *admin_listen != other.admin_listen),
            ("limits", *limits != other.limits),
            ("tls", *tls != other.tls),
            ("discovery.dns.server", *dns_server != other.dns_server),
            ("discovery.kubernetes.api", *kubernetes_api != other.kubernetes_api),
            ("telemetry (collector, interval, token, span_queue)", export(telemetry) != export(&other.telemetry)),
        ]
        .into_iter()
        .find_map(|(part, differs)| differs.then_some(part))
    }
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError { path: path.into(), message: message.into() }
}

fn addr(path: &str, text: &str) -> Result<SocketAddr, PolicyError> {
    text.parse().map_err(|_| invalid(path, format!("{text:?} is not an address such as 127.0.0.1:15001")))
}

fn authority(path: &str, text: &str) -> Result<String, PolicyError> {
    check_authority(text).map_err(|e| invalid(path, e))?;
    Ok(text.to_owned())
}

/// Whether `text` is an endpoint's `host:port` (a static entry, or a line of an endpoint file).
pub(crate) fn check_authority(text: &str) -> Result<(), String> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            text.parse::<http::uri::Authority>().map(|_| ()).map_err(|_| format!("{text:?} is not a host:port"))
        }
        _ => Err(format!("{text:?} is not a host:port such as 127.0.0.1:9080 or reviews-v1:9080")),
    }
}

/// A source of endpoints, checked.
fn source(path: &str, d: &DiscoverSpec, namespace: &str) -> Result<Source, PolicyError> {
    use Source;
    Ok(match d {
        DiscoverSpec::Dns(text) => {
            let path = format!("{path}.dns");
            authority(&path, text)?;
            let (host, port) = text.rsplit_once(':').unwrap_or_default();
            Source::Dns { host: host.to_owned(), port: port.parse().map_err(|_| invalid(&path, "needs a port"))? }
        }
        DiscoverSpec::Srv(name) => {
            if name.is_empty() || name.contains([':', '/', ' ']) {
                return Err(invalid(
                    format!("{path}.srv"),
                    format!("{name:?} is not an SRV name such as _http._tcp.reviews.shop.svc.cluster.local"),
                ));
            }
            Source::Srv { name: name.clone() }
        }
        DiscoverSpec::File(file) if file.is_empty() => {
            return Err(invalid(format!("{path}.file"), "needs a file path"));
        }
        DiscoverSpec::File(file) => Source::File(file.into()),
        DiscoverSpec::Kubernetes(k) => {
            let path = format!("{path}.kubernetes");
            let label = |v: &str| {
                !v.is_empty()
                    && v.len() <= 63
                    && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            };
            if !label(&k.service) {
                return Err(invalid(
                    format!("{path}.service"),
                    format!("{:?} is not a Service name (a DNS label)", k.service),
                ));
            }
            let namespace = k.namespace.clone().unwrap_or_else(|| namespace.to_owned());
            if !label(&namespace) {
                return Err(invalid(
                    format!("{path}.namespace"),
                    format!("{namespace:?} is not a namespace name (a DNS label)"),
                ));
            }
            let port = match &k.port {
                None => None,
                Some(PortSpec::Number(0)) => return Err(invalid(format!("{path}.port"), "0 is no port")),
                Some(PortSpec::Number(n)) => Some(n.to_string()),
                Some(PortSpec::Name(n)) if label(n) => Some(n.clone()),
                Some(PortSpec::Name(n)) => {
                    return Err(invalid(format!("{path}.port"), format!("{n:?} is not a port name")));
                }
            };
            Source::Kubernetes { namespace, service: k.service.clone(), port }
        }
    })
}

/// A duration as read, or its default; zero is refused.
fn dur(path: &str, read: Option<Duration>, default: Duration) -> Result<Duration, PolicyError> {
    match read {
        None => Ok(default),
        Some(d) if d.is_zero() => Err(invalid(path, "must be longer than zero")),
        Some(d) => Ok(d),
    }
}

impl AgentFile {
    fn resolve(&self) -> Result<AgentConfig, PolicyError> {
        let w = &self.workload;
        let workload = Workload::from_resource(w.namespace.as_deref(), Some(&w.app), w.version.as_deref())
            .ok_or_else(|| invalid("workload.app", "must not be empty"))?;
        let inbound_listen = addr("inbound.listen", &self.inbound.listen)?;
        let app = authority("inbound.app", &self.inbound.app)?;
        let outbound_listen = self.outbound.as_ref().map(|o| addr("outbound.listen", &o.listen)).transpose()?;
        let admin_listen = addr("admin.listen", self.admin.as_ref().map_or(DEFAULT_ADMIN, |a| a.listen.as_str()))?;
        let telemetry = self.telemetry.as_ref().map(|t| t.resolve(self.tls.is_some())).transpose()?;
        let limits = self.limits.as_ref().map(LimitsSpec::resolve).transpose()?.unwrap_or_default();
        let services = self.resolve_services(&workload)?;
        let tls = self.tls.as_ref().map(TlsSpec::resolve).transpose()?;
        let authz = self.authz.as_ref().map(AuthzSpec::resolve).transpose()?;
        let rate_limit = self.rate_limit.as_ref().map(RateLimitSpec::resolve).transpose()?;
        let dns_server = match self.discovery.as_ref().and_then(|d| d.dns.as_ref()).and_then(|d| d.server.as_deref()) {
            Some(text) => Some(addr("discovery.dns.server", text)?),
            None => None,
        };
        let kubernetes_api = self.discovery.as_ref().and_then(|d| d.kubernetes.as_ref()).and_then(|k| k.api.clone());
        if let Some(url) = &kubernetes_api {
            crate::kubernetes::Api::at(url).map_err(|e| invalid("discovery.kubernetes.api", e))?;
        }
        Ok(AgentConfig {
            kubernetes_api,
            dns_server,
            workload,
            inbound_listen,
            app,
            source_header: self.inbound.source_header,
            outbound_listen,
            admin_listen,
            telemetry,
            limits,
            services,
            tls,
            authz,
            rate_limit,
        })
    }

    /// The services, their endpoints and sources, and each one's resolved policy.
    fn resolve_services(&self, workload: &Workload) -> Result<BTreeMap<String, Service>, PolicyError> {
        let policies = self
            .policy
            .clone()
            .unwrap_or_default()
            .resolve()
            .map_err(|e| PolicyError { path: format!("policy.{}", e.path), message: e.message })?;
        for name in policies.services.keys() {
            if !self.services.contains_key(name) {
                return Err(invalid(
                    format!("policy.services.{name}"),
                    format!("no service {name:?} under services; a policy needs the service's endpoints"),
                ));
            }
        }
        let mut services = BTreeMap::new();
        for (name, spec) in &self.services {
            let at = format!("services.{name}");
            if name.is_empty() || name.contains(['/', ':', ' ']) {
                return Err(invalid(&at, "a service name is a host name such as reviews"));
            }
            if spec.versions.is_empty() {
                return Err(invalid(format!("{at}.versions"), "needs at least one version with endpoints"));
            }
            let namespace = spec.namespace.clone().unwrap_or_else(|| workload.namespace.clone());
            let (mut versions, mut sources) = (Vec::new(), Vec::new());
            for (version, endpoints) in &spec.versions {
                let mut resolved = Vec::new();
                for (i, e) in endpoints.iter().enumerate() {
                    let path = format!("{at}.versions.{version}[{i}]");
                    match e {
                        EndpointSpec::Address(a) => resolved.push(authority(&path, a)?),
                        EndpointSpec::Discover(d) => sources.push((version.clone(), source(&path, d, &namespace)?)),
                    }
                }
                versions.push((version.clone(), resolved));
            }
            let policy = policies.services.get(name).cloned().unwrap_or_default();
            for (version, _) in &policy.split {
                if !spec.versions.contains_key(version) {
                    return Err(invalid(
                        format!("policy.services.{name}.split.{version}"),
                        format!(
                            "{name} has no version {version:?}; its versions are {}",
                            spec.versions.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
            services.insert(name.clone(), Service { namespace, versions, sources, policy });
        }
        Ok(services)
    }
}

impl TelemetrySpec {
    fn resolve(&self, has_tls: bool) -> Result<Telemetry, PolicyError> {
        let t = self;
        let uri: http::Uri = t.collector.parse().map_err(|_| invalid("telemetry.collector", "not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(invalid(
                "telemetry.collector",
                format!("{:?} must be an http:// or https:// URL of the collector's OTLP/gRPC port", t.collector),
            ));
        }
        if uri.scheme_str() == Some("https") && !has_tls {
            return Err(invalid(
                "telemetry.collector",
                "an https:// collector is reached with the agent's mesh certificate: add a tls: block",
            ));
        }
        let sampling = t.sampling.unwrap_or(0.01);
        if !(0.0..=1.0).contains(&sampling) {
            return Err(invalid("telemetry.sampling", format!("{sampling} is not a fraction between 0 and 1")));
        }
        let span_queue = t.span_queue.unwrap_or(2048);
        if span_queue == 0 {
            return Err(invalid("telemetry.span_queue", "must be 1 or more"));
        }
        Ok(Telemetry {
            collector: t.collector.clone(),
            interval: dur("telemetry.interval", t.interval, Duration::from_secs(5))?,
            sampling,
            span_queue,
            token: t.token.clone(),
        })
    }
}

impl LimitsSpec {
    fn resolve(&self) -> Result<Limits, PolicyError> {
        let l = self;
        let d = Limits::default();
        let max_header_bytes = l.max_header_bytes.unwrap_or(d.max_header_bytes);
        if !(8192..=1 << 20).contains(&max_header_bytes) {
            return Err(invalid(
                "limits.max_header_bytes",
                format!("{max_header_bytes} is outside 8192..=1048576 (hyper's smallest buffer is 8 KiB)"),
            ));
        }
        Ok(Limits {
            max_header_bytes,
            header_read_timeout: dur("limits.header_read_timeout", l.header_read_timeout, d.header_read_timeout)?,
            connect_timeout: dur("limits.connect_timeout", l.connect_timeout, d.connect_timeout)?,
            // `0s` waits for ever.
            default_timeout: match l.default_timeout {
                None => d.default_timeout,
                Some(t) => Some(t).filter(|t| !t.is_zero()),
            },
            max_connections: match l.max_connections.unwrap_or(d.max_connections) {
                0 => return Err(invalid("limits.max_connections", "must be at least 1")),
                n => n,
            },
            idle_timeout: dur("limits.idle_timeout", l.idle_timeout, d.idle_timeout)?,
            body_idle_timeout: dur("limits.body_idle_timeout", l.body_idle_timeout, d.body_idle_timeout)?,
        })
    }
}

impl TlsSpec {
    fn resolve(&self) -> Result<Tls, PolicyError> {
        let t = self;
        let strict = t.mode.unwrap_or_default() == TlsMode::Strict;
        for (field, v) in [("tls.cert", &t.cert), ("tls.key", &t.key), ("tls.ca", &t.ca)] {
            if v.is_empty() {
                return Err(invalid(field, "needs a file path"));
            }
        }
        Ok(Tls {
            cert: t.cert.clone().into(),
            key: t.key.clone().into(),
            ca: t.ca.clone().into(),
            strict,
            trust_domain: t.trust_domain.clone().unwrap_or_else(|| crate::tls::TRUST_DOMAIN.to_owned()),
        })
    }
}

impl AuthzSpec {
    fn resolve(&self) -> Result<Authz, PolicyError> {
        let a = self;
        let default_allow = a.default.unwrap_or_default() == AuthzAction::Allow;
        let mut rules = Vec::new();
        for (i, r) in a.rules.iter().enumerate() {
            let allow = r.action == AuthzAction::Allow;
            for (k, f) in r.from.iter().enumerate() {
                if f != "*" && !f.starts_with("spiffe://") {
                    return Err(invalid(
                        format!("authz.rules[{i}].from[{k}]"),
                        format!("{f:?} is not a SPIFFE id (spiffe://...), a prefix ending in *, or *"),
                    ));
                }
            }
            rules.push(AuthzRule {
                allow,
                from: r.from.clone(),
                methods: r.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                paths: r.paths.clone(),
            });
        }
        Ok(Authz { default_allow, rules })
    }
}

impl RateLimitSpec {
    fn resolve(&self) -> Result<RateLimit, PolicyError> {
        let r = self;
        if !(r.requests_per_second > 0.0 && r.requests_per_second.is_finite()) {
            return Err(invalid("rate_limit.requests_per_second", "must be more than 0"));
        }
        let burst = r.burst.unwrap_or(r.requests_per_second.max(1.0));
        if !(burst >= 1.0 && burst.is_finite()) {
            return Err(invalid("rate_limit.burst", "must be 1 or more"));
        }
        Ok(RateLimit { per_second: r.requests_per_second, burst })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fuzz test, bounded by count: mutants of the example config and of this file's configs are
    /// parsed and resolved; every one is a config or a `ConfigError`, never a panic.
    #[test]
    fn mutated_configs_never_panic() {
        let seeds = [include_str!("../../examples/agent/agent.yaml"), GOOD];
        let ok = meshlens_model::mutate::count_parsed(&seeds, 4, 5_000, |t| AgentConfig::parse(t, "fuzz.yaml").is_ok());
        assert!(ok > 0 && ok < 5_000, "{ok} of the mutants parse");
    }

    const GOOD: &str = r#"
workload: {namespace: shop, app: productpage, version: v1}
inbound: {listen: "127.0.0.1:0", app: "127.0.0.1:9080"}
outbound: {listen: "127.0.0.1:0"}
admin: {listen: "127.0.0.1:0"}
telemetry: {collector: "http://127.0.0.1:4317", interval: 2s, sampling: 0.5}
services:
  reviews:
    versions:
      v1: ["127.0.0.1:9001"]
      v3: ["reviews-v3.local:9001", "127.0.0.1:9002"]
policy:
  services:
    reviews:
      split: {v1: 90, v3: 10}
      timeout: 2s
      retries: {attempts: 2, per_try_timeout: 500ms}
"#;

    #[test]
    fn discovery_entries_sit_beside_static_endpoints() {
        let text = GOOD
            .replace(
                "\"127.0.0.1:9002\"",
                "{dns: 'reviews.shop.svc:9001'}, {srv: _http._tcp.r}, {file: /e}, {kubernetes: {service: reviews, port: http}}",
            )
            + "discovery: {dns: {server: '127.0.0.1:5353'}}\n";
        let c = AgentConfig::parse(&text, "agent.yaml").unwrap();
        let r = &c.services["reviews"];
        assert_eq!(r.versions[1].1, ["reviews-v3.local:9001"]);
        use Source;
        assert_eq!(
            r.sources,
            [
                ("v3".into(), Source::Dns { host: "reviews.shop.svc".into(), port: 9001 }),
                ("v3".into(), Source::Srv { name: "_http._tcp.r".into() }),
                ("v3".into(), Source::File("/e".into())),
                (
                    "v3".into(),
                    Source::Kubernetes {
                        namespace: "shop".into(),
                        service: "reviews".into(),
                        port: Some("http".into())
                    }
                ),
            ]
        );
        assert_eq!(c.dns_server, Some("127.0.0.1:5353".parse().unwrap()));
        let other = AgentConfig::parse(&text.replace("5353", "53"), "a").unwrap();
        assert_eq!(c.restart_needed(&other), Some("discovery.dns.server"));
    }

    #[test]
    fn a_good_file_resolves() {
        let c = AgentConfig::parse(GOOD, "agent.yaml").unwrap();
        assert_eq!(c.workload.id(), "shop/productpage/v1");
        let r = &c.services["reviews"];
        assert_eq!(r.namespace, "shop");
        assert_eq!(r.versions[1].1.len(), 2);
        assert_eq!(r.policy.split, vec![("v1".into(), 0.9), ("v3".into(), 0.1)]);
        assert_eq!(c.telemetry.unwrap().interval, Duration::from_secs(2));
        assert_eq!(c.admin_listen.port(), 0);
    }

    fn error(text: &str) -> String {
        AgentConfig::parse(text, "agent.yaml").unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let cases = [
            (GOOD.replace("split: {v1: 90, v3: 10}", "split: {v1: 90, v9: 10}"), "policy.services.reviews.split.v9"),
            (GOOD.replace("timeout: 2s", "timeout: 2 parsecs"), "policy.services.reviews.timeout"),
            (GOOD.replace("\"127.0.0.1:9002\"", "\"127.0.0.1\""), "services.reviews.versions.v3[1]"),
            (GOOD.replace("sampling: 0.5", "sampling: 5"), "telemetry.sampling"),
            (GOOD.replace("listen: \"127.0.0.1:0\"}\nadmin", "listen: \"localhost\"}\nadmin"), "outbound.listen"),
            (GOOD.replace("http://127.0.0.1:4317", "127.0.0.1:4317"), "telemetry.collector"),
            (GOOD.replace("    reviews:\n      split", "    ratings:\n      split"), "policy.services.ratings"),
            (GOOD.replace("per_try_timeout: 500ms", "per_try_timout: 500ms"), "unknown field `per_try_timout`"),
            (GOOD.replace("app: productpage,", "app: '',"), "workload.app"),
            ("workload: [".to_owned(), "agent.yaml"),
            // Typed settings: serde names the field, the value and what would be right.
            (
                GOOD.replace("timeout: 2s\n", "timeout: 2s\n      load_balancer: random\n"),
                "policy.services.reviews.load_balancer: unknown variant `random`, expected one of",
            ),
            (
                GOOD.replace("per_try_timeout: 500ms}", "per_try_timeout: 500ms, retry_on: [5xx, teapot]}"),
                "policy.services.reviews.retries.retry_on[1]: unknown variant `teapot`",
            ),
            (
                format!("{GOOD}tls: {{cert: c, key: k, ca: a, mode: lenient}}\n"),
                "tls.mode: unknown variant `lenient`, expected `strict` or `permissive`",
            ),
            (format!("{GOOD}authz: {{default: maybe}}\n"), "authz.default: unknown variant `maybe`"),
            // Discovery sources.
            (GOOD.replace("\"127.0.0.1:9002\"", "{dns: reviews.local}"), "services.reviews.versions.v3[1].dns"),
            (
                GOOD.replace("\"127.0.0.1:9002\"", "{kubernetes: {service: Reviews_1, port: 9080}}"),
                "services.reviews.versions.v3[1].kubernetes.service: \"Reviews_1\" is not a Service name",
            ),
            (format!("{GOOD}discovery: {{kubernetes: {{api: 'https://k8s:6443'}}}}\n"), "discovery.kubernetes.api: "),
            (GOOD.replace("\"127.0.0.1:9002\"", "{srv: 'a b'}"), "services.reviews.versions.v3[1].srv"),
            (format!("{GOOD}discovery: {{dns: {{server: resolver}}}}\n"), "discovery.dns.server"),
            (
                format!("{GOOD}authz: {{rules: [{{action: permit}}]}}\n"),
                "authz.rules[0].action: unknown variant `permit`",
            ),
        ];
        for (text, needle) in cases {
            let e = error(&text);
            assert!(e.starts_with("agent.yaml: "), "{e}");
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
        assert!(error(&GOOD.replace("per_try_timeout: 500ms", "per_try_timout: 500ms")).contains("line"));
    }

    #[test]
    fn the_documented_example_parses() {
        let c = AgentConfig::parse(include_str!("../../examples/agent/agent.yaml"), "agent.yaml").unwrap();
        assert!(c.tls.as_ref().is_some_and(|t| t.strict));
        let authz = c.authz.unwrap();
        assert_eq!(authz.decide("spiffe://meshlens.local/ns/shop/sa/a", "GET", "/x"), (Some(1), true));
        assert_eq!(authz.decide("", "DELETE", "/x"), (Some(0), false));
        assert_eq!(c.rate_limit.map(|r| r.burst), Some(200.0));
    }

    #[test]
    fn restart_is_needed_for_listeners_not_for_policy() {
        let a = AgentConfig::parse(GOOD, "a").unwrap();
        let b = AgentConfig::parse(&GOOD.replace("v1: 90", "v1: 50"), "a").unwrap();
        assert_eq!(a.restart_needed(&b), None);
        let c = AgentConfig::parse(&GOOD.replace("9080", "9081"), "a").unwrap();
        assert_eq!(a.restart_needed(&c), None, "the app address reloads");
        let d = AgentConfig::parse(
            &GOOD.replace("admin: {listen: \"127.0.0.1:0\"}", "admin: {listen: \"127.0.0.1:1\"}"),
            "a",
        )
        .unwrap();
        assert_eq!(a.restart_needed(&d), Some("admin.listen"));
        // Sampling is read live; the exporter's interval is not (it was silently ignored before).
        let e = AgentConfig::parse(&GOOD.replace("sampling: 0.5", "sampling: 0.25"), "a").unwrap();
        assert_eq!(a.restart_needed(&e), None);
        let f = AgentConfig::parse(&GOOD.replace("interval: 2s", "interval: 5s"), "a").unwrap();
        assert_eq!(a.restart_needed(&f), Some("telemetry (collector, interval, token, span_queue)"));
    }
}
