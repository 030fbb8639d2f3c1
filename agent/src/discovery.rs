//! Endpoints found at run time, beside each version's static list: DNS names (every A and AAAA
//! record is an endpoint, as Envoy's STRICT_DNS clusters and Kubernetes headless Services work),
//! SRV records (each target and its port), files watched for changes (`host:port` lines, or
//! Kubernetes EndpointSlices as kubectl writes them), and a Kubernetes Service's EndpointSlices
//! watched through the API (`crate::kubernetes`, `crate::endpointslice`).
//!
//! One task per distinct [`Source`] keeps what it last found in [`Found`]; when that changes it asks
//! the agent to rebuild its routing table (`crate::proxy::Shared::rebuild`). The rebuild keeps the
//! state of every endpoint still listed (in-flight count, ejection, pooled connections) and drops
//! the others: requests in flight to a removed endpoint finish on the connection they hold (it
//! closes when the last one ends), new requests go only to the endpoints listed now, and a new
//! endpoint starts healthy. So outlier detection and load balancing carry on across changes.
//!
//! DNS answers are re-resolved when their TTL runs out, bounded to [`MIN_REFRESH`]..[`MAX_REFRESH`]
//! (a TTL of 0 would otherwise ask in a loop; a long one would miss a scale-down for an hour). A
//! name that has no records (NXDOMAIN, or an empty answer) has no endpoints; a lookup that fails
//! otherwise (timeout, refused, no server) keeps the last endpoints, is counted
//! (`meshlens_agent_discovery_errors_total`) and is tried again after [`MIN_REFRESH`]. A file is read
//! every [`FILE_POLL`]; one that cannot be read or has a bad line keeps the last endpoints and says
//! which line. The agent waits for each source's first answer (at most [`WARM_LIMIT`]) before it
//! serves, and a reload that adds a source waits the same before it applies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use parking_lot::Mutex;
use serde::Serialize;

use crate::config::AgentConfig;
use crate::counters::Counters;

/// Shortest time between two lookups of one name.
pub(crate) const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Longest time a DNS answer is trusted, whatever its TTL.
pub(crate) const MAX_REFRESH: Duration = Duration::from_secs(30);
/// How often a file of endpoints is read.
pub(crate) const FILE_POLL: Duration = Duration::from_secs(1);
/// Longest wait for the sources' first answers, at start and on a reload.
pub(crate) const WARM_LIMIT: Duration = Duration::from_secs(5);
/// Most endpoints one source may give; more are left out and said.
pub(crate) const MAX_ENDPOINTS: usize = 1024;

/// Where a version's endpoints are found.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Every A and AAAA record of `host`, on `port`.
    Dns {
        /// The name.
        host: String,
        /// The port.
        port: u16,
    },
    /// Each SRV record of `name`: its target's addresses on its port.
    Srv {
        /// The SRV name.
        name: String,
    },
    /// A file of `host:port` lines (`#` starts a comment), or of EndpointSlices.
    File(PathBuf),
    /// A Kubernetes Service's EndpointSlices, watched through the API (`crate::kubernetes`).
    Kubernetes {
        /// Its namespace.
        namespace: String,
        /// The Service.
        service: String,
        /// The port: a name, a number, or (none) the only one.
        port: Option<String>,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Dns { host, port } => write!(f, "dns {host}:{port}"),
            Source::Srv { name } => write!(f, "srv {name}"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Kubernetes { namespace, service, .. } => write!(f, "kubernetes {namespace}/{service}"),
        }
    }
}

/// What each source found last.
#[derive(Default)]
pub(crate) struct Found {
    by_source: Mutex<HashMap<Source, Arc<[String]>>>,
    /// Sources that answered at least once (with endpoints, none, or an error).
    answered: Mutex<std::collections::HashSet<Source>>,
}

impl Found {
    /// The endpoints `source` found last (none before its first answer).
    pub(crate) fn get(&self, source: &Source) -> Option<Arc<[String]>> {
        self.by_source.lock().get(source).cloned()
    }

    /// Records `endpoints` (sorted, without repeats) for `source`; returns whether they changed.
    fn set(&self, source: &Source, mut endpoints: Vec<String>) -> bool {
        endpoints.sort();
        endpoints.dedup();
        let mut map = self.by_source.lock();
        if map.get(source).is_some_and(|old| **old == endpoints[..]) {
            return false;
        }
        map.insert(source.clone(), endpoints.into());
        true
    }

    /// Records endpoints as a source's task would (tests of what is built from them).
    #[cfg(test)]
    pub(crate) fn set_for_test(&self, source: &Source, endpoints: &[&str]) {
        self.set(source, endpoints.iter().map(|s| (*s).to_owned()).collect());
    }

    fn forget(&self, source: &Source) {
        self.by_source.lock().remove(source);
        self.answered.lock().remove(source);
    }

    fn answer(&self, source: &Source) {
        self.answered.lock().insert(source.clone());
    }

    /// Whether `source` has answered once.
    pub(crate) fn answered(&self, source: &Source) -> bool {
        self.answered.lock().contains(source)
    }
}

/// Parses a file of endpoints: one `host:port` per line (blank lines and `#` comments are skipped),
/// or Kubernetes EndpointSlices as `kubectl get endpointslices -o yaml` (or json) writes them, whose
/// ready endpoints on the only port (or the one named `http`) are taken (`crate::endpointslice`).
pub(crate) fn parse_file(text: &str) -> Result<Vec<String>, String> {
    if crate::endpointslice::looks_like_slices(text) {
        let slices = crate::endpointslice::parse(text)?;
        return crate::endpointslice::endpoints(&slices, &crate::endpointslice::PortRef::Only);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        crate::config::check_authority(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push(line.to_owned());
    }
    Ok(out)
}

/// How a lookup went.
enum Lookup {
    /// These endpoints, valid until then.
    Found(Vec<String>, Instant),
    /// It failed; the last endpoints stay.
    Failed(String),
}

/// The running sources.
pub(crate) struct Discovery {
    found: Arc<Found>,
    counters: Arc<Counters>,
    dns_server: Option<SocketAddr>,
    kubernetes_api: Option<String>,
    resolver: Mutex<Option<Arc<TokioResolver>>>,
    tasks: Mutex<HashMap<Source, tokio::task::JoinHandle<()>>>,
    changed: Arc<dyn Fn() + Send + Sync>,
}

impl Discovery {
    /// Sources resolved by `config`'s DNS server (the system's when none) and watched through its
    /// Kubernetes API (the in-cluster one when none), recorded in `found`; `changed` is called when
    /// a source's endpoints change.
    pub(crate) fn new(
        found: Arc<Found>,
        counters: Arc<Counters>,
        config: &AgentConfig,
        changed: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            found,
            counters,
            dns_server: config.dns_server,
            kubernetes_api: config.kubernetes_api.clone(),
            resolver: Mutex::new(None),
            tasks: Mutex::new(HashMap::new()),
            changed,
        }
    }

    fn resolver(&self) -> Result<Arc<TokioResolver>, String> {
        let mut r = self.resolver.lock();
        if let Some(r) = &*r {
            return Ok(r.clone());
        }
        let mut builder = match self.dns_server {
            Some(server) => {
                let group = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], group),
                    TokioConnectionProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio()
                .map_err(|e| format!("the system's DNS configuration (/etc/resolv.conf) cannot be read: {e}"))?,
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.positive_max_ttl = Some(MAX_REFRESH);
        opts.negative_max_ttl = Some(MIN_REFRESH);
        opts.timeout = Duration::from_secs(2);
        let built = Arc::new(builder.build());
        *r = Some(built.clone());
        Ok(built)
    }

    /// Waits until every source `config` names has answered once, at most `limit`: a version whose
    /// endpoints all come from discovery has none before, so the agent waits for them before it
    /// serves (as Envoy warms a cluster), and a reload before it applies. Returns the sources that
    /// had not answered.
    pub(crate) async fn warm(&self, config: &AgentConfig, limit: Duration) -> Vec<Source> {
        let sources: Vec<&Source> = config.services.values().flat_map(|s| s.sources.iter().map(|(_, s)| s)).collect();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let waiting: Vec<Source> =
                sources.iter().filter(|s| !self.found.answered(s)).map(|s| (*s).clone()).collect();
            if waiting.is_empty() || tokio::time::Instant::now() >= deadline {
                return waiting;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs a task for every source `config` names and stops those it no longer names.
    pub(crate) fn sync(&self, config: &AgentConfig) {
        let wanted: std::collections::HashSet<&Source> =
            config.services.values().flat_map(|s| s.sources.iter().map(|(_, src)| src)).collect();
        let mut tasks = self.tasks.lock();
        tasks.retain(|source, task| {
            let keep = wanted.contains(source);
            if !keep {
                task.abort();
                self.found.forget(source);
            }
            keep
        });
        for source in wanted {
            if tasks.contains_key(source) {
                continue;
            }
            let task = match source {
                Source::File(path) => tokio::spawn(watch_file(
                    source.clone(),
                    path.clone(),
                    self.found.clone(),
                    self.counters.clone(),
                    self.changed.clone(),
                )),
                Source::Kubernetes { namespace, service, port } => {
                    let api = match &self.kubernetes_api {
                        Some(url) => crate::kubernetes::Api::at(url),
                        None => crate::kubernetes::Api::in_cluster(),
                    };
                    let port = match port.as_deref().map(|p| p.parse::<u16>().map_err(|_| p)) {
                        None => crate::endpointslice::PortRef::Only,
                        Some(Ok(n)) => crate::endpointslice::PortRef::Number(n),
                        Some(Err(name)) => crate::endpointslice::PortRef::Name(name.to_owned()),
                    };
                    let (src, found, counters, changed) =
                        (source.clone(), self.found.clone(), self.counters.clone(), self.changed.clone());
                    let (namespace, service) = (namespace.clone(), service.clone());
                    tokio::spawn(async move {
                        let fail = |e: String| {
                            found.answer(&src);
                            counters.discovery_errors.add(1);
                            tracing::warn!(source = %src, error = %e, "the last endpoints keep serving");
                        };
                        let api = match api {
                            Ok(api) => api,
                            Err(e) => return fail(e),
                        };
                        crate::kubernetes::follow(
                            api,
                            namespace,
                            service,
                            port,
                            |eps| record(&src, eps, &found, &counters, &*changed),
                            fail,
                        )
                        .await;
                    })
                }
                Source::Dns { .. } | Source::Srv { .. } => {
                    let resolver = self.resolver();
                    tokio::spawn(resolve_loop(
                        source.clone(),
                        resolver,
                        self.found.clone(),
                        self.counters.clone(),
                        self.changed.clone(),
                    ))
                }
            };
            tasks.insert(source.clone(), task);
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for task in self.tasks.lock().values() {
            task.abort();
        }
    }
}

async fn lookup(resolver: &TokioResolver, source: &Source) -> Lookup {
    let no_records = |e: &hickory_resolver::ResolveError| e.is_no_records_found() || e.is_nx_domain();
    let far = Instant::now() + MAX_REFRESH;
    match source {
        Source::Dns { host, port } => match resolver.lookup_ip(host.as_str()).await {
            Ok(ips) => {
                let eps = ips.iter().map(|ip| SocketAddr::new(ip, *port).to_string()).collect();
                Lookup::Found(eps, ips.valid_until())
            }
            Err(e) if no_records(&e) => Lookup::Found(Vec::new(), far),
            Err(e) => Lookup::Failed(format!("{source}: {e}")),
        },
        Source::Srv { name } => {
            let srv = match resolver.srv_lookup(name.as_str()).await {
                Ok(srv) => srv,
                Err(e) if no_records(&e) => return Lookup::Found(Vec::new(), far),
                Err(e) => return Lookup::Failed(format!("{source}: {e}")),
            };
            let mut until = srv.as_lookup().valid_until();
            let mut eps = Vec::new();
            for record in srv.iter() {
                let target = record.target().to_utf8();
                let target = target.trim_end_matches('.');
                match resolver.lookup_ip(target).await {
                    Ok(ips) => {
                        until = until.min(ips.valid_until());
                        eps.extend(ips.iter().map(|ip| SocketAddr::new(ip, record.port()).to_string()));
                    }
                    Err(e) if no_records(&e) => {}
                    Err(e) => return Lookup::Failed(format!("{source}: target {target}: {e}")),
                }
            }
            Lookup::Found(eps, until)
        }
        Source::File(_) | Source::Kubernetes { .. } => Lookup::Failed(format!("{source}: not a DNS source")),
    }
}

fn record(
    source: &Source,
    mut eps: Vec<String>,
    found: &Found,
    counters: &Counters,
    changed: &(dyn Fn() + Send + Sync),
) {
    if eps.len() > MAX_ENDPOINTS {
        tracing::warn!(%source, found = eps.len(), kept = MAX_ENDPOINTS, "more endpoints than one source may give; the rest are left out");
        eps.truncate(MAX_ENDPOINTS);
    }
    let n = eps.len();
    let changed_now = found.set(source, eps);
    found.answer(source);
    if changed_now {
        counters.discovery_updates.add(1);
        tracing::info!(%source, endpoints = n, "endpoints changed");
        changed();
    }
}

async fn resolve_loop(
    source: Source,
    resolver: Result<Arc<TokioResolver>, String>,
    found: Arc<Found>,
    counters: Arc<Counters>,
    changed: Arc<dyn Fn() + Send + Sync>,
) {
    let resolver = match resolver {
        Ok(r) => r,
        Err(e) => {
            found.answer(&source);
            counters.discovery_errors.add(1);
            tracing::error!(%source, error = %e, "no resolver: this source finds no endpoints");
            return;
        }
    };
    loop {
        let wait = match lookup(&resolver, &source).await {
            Lookup::Found(eps, until) => {
                record(&source, eps, &found, &counters, &*changed);
                until.saturating_duration_since(Instant::now()).clamp(MIN_REFRESH, MAX_REFRESH)
            }
            Lookup::Failed(e) => {
                found.answer(&source);
                counters.discovery_errors.add(1);
                tracing::warn!(error = %e, "lookup failed; the last endpoints keep serving");
                MIN_REFRESH
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn watch_file(
    source: Source,
    path: PathBuf,
    found: Arc<Found>,
    counters: Arc<Counters>,
    changed: Arc<dyn Fn() + Send + Sync>,
) {
    let mut last: Option<Result<String, String>> = None;
    loop {
        let read = match tokio::fs::read_to_string(&path).await {
            Ok(text) => Ok(text),
            Err(e) => Err(format!("{source}: {e}")),
        };
        if last.as_ref() != Some(&read) {
            match &read {
                Ok(text) => match parse_file(text) {
                    Ok(eps) => record(&source, eps, &found, &counters, &*changed),
                    Err(e) => {
                        found.answer(&source);
                        counters.discovery_errors.add(1);
                        tracing::warn!(%source, error = %e, "endpoint file refused; the last endpoints keep serving");
                    }
                },
                Err(e) => {
                    found.answer(&source);
                    counters.discovery_errors.add(1);
                    tracing::warn!(error = %e, "endpoint file unreadable; the last endpoints keep serving");
                }
            }
            last = Some(read);
        }
        tokio::time::sleep(FILE_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_lists_endpoints_and_a_bad_line_is_named() {
        let eps = parse_file("# reviews\n127.0.0.2:9080\n\n  [::1]:9080  # v6\nreviews-3.local:9080\n").unwrap();
        assert_eq!(eps, ["127.0.0.2:9080", "[::1]:9080", "reviews-3.local:9080"]);
        let e = parse_file("127.0.0.2:9080\n127.0.0.3\n").unwrap_err();
        assert!(e.starts_with("line 2: "), "{e}");
    }

    #[test]
    fn found_endpoints_change_only_when_the_set_does() {
        let f = Found::default();
        let s = Source::File("/x".into());
        assert!(f.set(&s, vec!["b:1".into(), "a:1".into()]));
        assert!(!f.set(&s, vec!["a:1".into(), "b:1".into(), "a:1".into()]), "same set, another order");
        assert!(f.set(&s, vec!["a:1".into()]));
        assert_eq!(&*f.get(&s).unwrap(), ["a:1".to_owned()]);
    }
}
