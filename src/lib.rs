//! The `meshlens` command line: one binary whose subcommands each parse their arguments and call
//! into their crate. `main.rs` only sets up logging and maps errors to exit codes; tests call
//! [`run`] directly.

pub mod demo;
pub mod fidelity;
pub mod inject;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use meshlens_collector::CollectorConfig;
use meshlens_console::Client;
use meshlens_model::graph::View;

/// meshlens: see and rehearse the traffic of a service mesh.
#[derive(Debug, Parser)]
#[command(name = "meshlens", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a live mesh on loopback: bookinfo behind agents, a collector and steady load.
    ///
    /// Starts Istio's bookinfo (productpage, details, reviews v1/v2/v3, ratings), each app version
    /// behind its own agent with the demo's policies (examples/bookinfo/mesh.yaml), an embedded
    /// collector and a load generator sending --rate requests a second to productpage. Ctrl-C (or
    /// --duration) stops everything.
    Demo(DemoArgs),
    /// Receive OTLP traces and metrics, build the versioned service graph, serve the API.
    ///
    /// Listens for OTLP/gRPC and OTLP/HTTP from agents and any OpenTelemetry SDK, and serves the JSON
    /// API, the SSE stream and Prometheus /metrics. State is kept under --data-dir so a restart keeps
    /// the graph and its revisions.
    Collector(Box<CollectorArgs>),
    /// Run the sidecar proxy beside one workload.
    ///
    /// Carries the workload's inbound traffic to the local app and its outbound traffic to the
    /// services named in each request's host, applying the policy in the config file (split,
    /// timeouts, retries with a budget, outlier detection, load balancing, faults). Reports every
    /// hop to the collector as OTLP metrics and sampled traces. The file is reloaded when it
    /// changes; a bad version is refused and the old config keeps serving. See
    /// examples/agent/agent.yaml for every field.
    Agent(AgentArgs),
    /// Simulate a scenario under its traffic policy: what would success, latency and load be?
    ///
    /// A discrete-event model of services (concurrency, service time, errors, the calls they make)
    /// under the agent's policy schema (split, timeouts, retries with backoff and budget), run over
    /// several seeds. See examples/sim/ for scenarios.
    Sim(SimArgs),
    /// Check the simulator against the real agents: each mesh file both ways, side by side.
    ///
    /// Runs every mesh file (the shape of examples/bookinfo/mesh.yaml) on real apps and agents on
    /// loopback, driven open-loop at --rate, and in the simulator on the same mesh and policy, and
    /// prints the users' success, p50 and p99, attempts per version and retries per second from
    /// both. What the mesh adds to each request is first measured on the real agents (a one-call
    /// mesh) unless --request-overhead gives it. examples/fidelity/ holds the cases of
    /// docs/PERFORMANCE.md.
    Fidelity(FidelityArgs),
    /// Mesh identities: create the mesh CA, issue workload certificates.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Traffic policies: read Istio's files as meshlens's schema.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Write Kubernetes Deployments and StatefulSets back with the agent as a sidecar.
    ///
    /// Reads manifests (files, or `-` for stdin) and prints them with each workload's agent added:
    /// the sidecar container, its config as a ConfigMap (identity from the pod labels app/version
    /// or app.kubernetes.io/name and /version; the services it calls: every other app of the
    /// input, or the pod annotation meshlens.io/calls), and a headless Service per workload
    /// through which other agents find its replicas by DNS. Traffic reaches the agent by an init
    /// container's iptables rules (--redirect iptables, Istio's and Linkerd's way) or without
    /// privilege (--redirect ports: HTTP_PROXY for the app, Services retargeted to the agent).
    /// A pod annotated meshlens.io/inject: "false" is left out. What was done is said on stderr.
    /// Example: meshlens inject bookinfo.yaml | kubectl apply -f -
    Inject(InjectArgs),
    /// Send HTTP requests at a constant rate and report latency corrected for coordinated omission.
    ///
    /// Open loop, like wrk2, oha and fortio: a request is due every 1/RATE seconds whether or not
    /// earlier ones have returned, and its latency counts from when it was due. Prints requested vs
    /// achieved rate, success rate, status codes and p50/p90/p99/p99.9/max.
    Load(LoadArgs),
    /// The live service graph in the terminal: graph, workloads table, detail pane.
    ///
    /// Draws the versioned graph left to right with rps and error % on each edge, a sortable,
    /// filterable workloads table, and Kiali's side-panel numbers for the selected node or edge;
    /// follows the collector's SSE stream and reconnects by itself. `?` lists the keys. When stdout
    /// is not a terminal it prints the `stat` table instead.
    Console(ConsoleArgs),
    /// Print per-workload traffic stats (success rate, RPS, latency percentiles).
    Stat(StatArgs),
    /// Print the service graph as a table, JSON, Graphviz dot or Mermaid.
    Graph(GraphArgs),
    /// Show one trace the collector kept as a waterfall, or list kept traces by edge or workload.
    ///
    /// The collector keeps the recent past's traces whole (--trace-store-spans). With an ID, each
    /// span is printed under its parent with its start, duration, workload, status and a bar on
    /// the trace's time line. Without one, kept traces are listed newest first: --from and --to
    /// pick an edge (a client span of FROM whose server span is TO's), --failed the failed ones,
    /// --slowest the slowest first — the exemplars behind an edge's error rate or p99.
    Trace(TraceArgs),
    /// Print a service's routes: success, RPS and latency per route, as its callers saw them.
    ///
    /// Routes are declared in the policy (services.NAME.routes: Gateway API HTTPRoute matches on
    /// method, path and headers, tried in order); callers' agents count each request once on the
    /// first route that fits, or on [default]. The columns are linkerd viz routes': when retries
    /// happened in the window (or with --wide), EFFECTIVE_SUCCESS and EFFECTIVE_RPS count requests
    /// as the caller saw them, ACTUAL_SUCCESS and ACTUAL_RPS count every attempt, retries included.
    Routes(RoutesArgs),
    /// Stream the requests a workload's agents see, live, as `linkerd viz tap` does.
    ///
    /// The collector asks the workload's agents (every replica connected to it) for the requests
    /// they proxy, inbound (`in`: callers to it) and outbound (`out`: its calls), and streams them
    /// here as they are answered: time, direction, caller, destination, method, path (a gRPC
    /// method's too), status, latency, retries, route and trace id (`meshlens trace ID` opens a
    /// sampled one). Sampling is bounded: each agent sends at most --max-rps requests a second
    /// per tap, so a busy agent pays a fixed cost. Stops on `q`, Ctrl-C or --max.
    ///
    /// --find takes the find language over request fields: method, path, route, status, grpc,
    /// latency (ms), retries, from, to, direction. Example: --find 'status >= 500 or latency > 250'.
    Tap(TapArgs),
    /// Live table of a workload's requests by source, destination, method and path, as
    /// `linkerd viz top` shows: count, best, worst and last latency, success rate.
    ///
    /// Built from the same sampled stream as `meshlens tap` (so counts are of sampled requests
    /// when the rate is over --max-rps). Redraws every second on a terminal; stops on `q`, Ctrl-C
    /// or --max, and prints the last table.
    Top(TopArgs),
}

/// What `tap` and `top` both take.
#[derive(Debug, Args)]
pub struct TapTarget {
    /// The workload: its app (all versions), namespace/app, or namespace/app/version.
    pub target: String,
    /// Collector API URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:7420", env = "MESHLENS_COLLECTOR")]
    pub collector: String,
    /// The collector's token, if it was started with --token.
    #[arg(long, value_name = "TOKEN", env = "MESHLENS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Only requests this expression holds for (see above).
    #[arg(long, value_name = "EXPR")]
    pub find: Option<String>,
    /// Most requests a second each agent sends (1..100).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_rps: u32,
    /// Stop after this many requests.
    #[arg(long, value_name = "N")]
    pub max: Option<u64>,
}

/// `meshlens tap`.
#[derive(Debug, Args)]
pub struct TapArgs {
    /// The workload, and what to tap.
    #[command(flatten)]
    pub tap: TapTarget,
    /// Output format: one line per request, or the API's JSON, one object per line.
    #[arg(long, short, value_enum, default_value_t = TraceOutput::Table)]
    pub output: TraceOutput,
}

/// `meshlens top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// The workload, and what to tap.
    #[command(flatten)]
    pub tap: TapTarget,
    /// Most rows shown.
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub rows: usize,
}

/// Reading the graph from a Prometheus-compatible store (`--prometheus`), shared by `collector`,
/// `stat`, `graph`, `console` and `sim --from`.
#[derive(Debug, Clone, Args)]
pub struct PrometheusArgs {
    /// Read the graph from this Prometheus-compatible query API (Prometheus, VictoriaMetrics,
    /// Thanos, Mimir: the URL /api/v1/query is under) instead of a collector: meshlens's own
    /// traces_service_graph_* series remote-written by any number of collectors (and Tempo's),
    /// Istio's standard metrics and Linkerd's proxy metrics. Given to stat, graph, console or
    /// sim, an in-memory collector reading it runs inside the command.
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// Which series to read (repeatable): meshlens (traces_service_graph_*), istio
    /// (istio_requests_total, istio_request_duration_milliseconds), linkerd (response_total,
    /// response_latency_ms), or auto for all three.
    #[arg(long, value_name = "DIALECT", default_value = "auto", requires = "prometheus")]
    pub prometheus_dialect: Vec<String>,
    /// How often the store is read.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration, requires = "prometheus")]
    pub prometheus_interval: std::time::Duration,
    /// A bearer token for the store.
    #[arg(long, value_name = "TOKEN", env = "MESHLENS_PROMETHEUS_TOKEN", hide_env_values = true)]
    pub prometheus_token: Option<String>,
}

impl PrometheusArgs {
    /// The source these flags describe, reading `backfill` of history first; `None` without
    /// `--prometheus`.
    pub fn source(
        &self,
        backfill: std::time::Duration,
    ) -> Result<Option<meshlens_collector::source::SourceConfig>, CliError> {
        let Some(url) = &self.prometheus else { return Ok(None) };
        let mut dialects = Vec::new();
        for d in &self.prometheus_dialect {
            if d == "auto" {
                dialects.extend(meshlens_collector::source::Dialect::ALL);
            } else {
                dialects.push(
                    d.parse().map_err(|e: String| CliError::Config(anyhow::anyhow!("--prometheus-dialect: {e}")))?,
                );
            }
        }
        dialects.dedup();
        check_store_url("--prometheus", url)?;
        Ok(Some(meshlens_collector::source::SourceConfig {
            url: url.clone(),
            dialects,
            interval: self.prometheus_interval,
            backfill,
            token: self.prometheus_token.clone(),
            max_series: 1_000_000,
        }))
    }
}

/// An in-memory collector reading a Prometheus-compatible store, for `stat`, `graph`, `console`
/// and `sim --from` given `--prometheus`: returns it (stop it when done) and its API URL once its
/// first revision is out.
async fn embedded_source(
    p: &PrometheusArgs,
    window: std::time::Duration,
) -> Result<Option<(meshlens_collector::Running, String)>, CliError> {
    let Some(source) = p.source(window)? else { return Ok(None) };
    let config = CollectorConfig { source: Some(source), ..CollectorConfig::ephemeral() };
    let running = meshlens_collector::start(config).await.map_err(|e| CliError::Runtime(e.into()))?;
    for _ in 0..100 {
        if running.hub.latest().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let url = running.api_url();
    Ok(Some((running, url)))
}

/// A store's URL: `http://` only (this build's HTTP client has no TLS).
fn check_store_url(flag: &str, url: &str) -> Result<(), CliError> {
    if url.starts_with("https://") {
        return Err(CliError::Config(anyhow::anyhow!(
            "{flag} {url}: https is not supported yet; reach the store over http:// (on a trusted network, or through a local TLS proxy)"
        )));
    }
    if !url.starts_with("http://") || url.len() <= "http://".len() {
        return Err(CliError::Config(anyhow::anyhow!("{flag} {url}: give an http://HOST:PORT URL")));
    }
    Ok(())
}

fn window_of(w: &str) -> Result<std::time::Duration, CliError> {
    meshlens_model::time::parse_duration(w).map_err(|e| CliError::Config(anyhow::anyhow!("--window {w}: {e}")))
}

/// `meshlens collector`.
#[derive(Debug, Args)]
pub struct CollectorArgs {
    /// OTLP/gRPC listen address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4317")]
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP listen address (/v1/traces, /v1/metrics).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4318")]
    pub otlp_http: SocketAddr,
    /// API, /metrics and web UI listen address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7420")]
    pub http: SocketAddr,
    /// Directory of the embedded store (revisions, window stats) and the write-ahead log
    /// (DIR/wal/): an export is answered only once it is on disk, so kill -9 loses nothing answered.
    #[arg(long, value_name = "DIR", default_value = "meshlens-data", conflicts_with = "in_memory")]
    pub data_dir: PathBuf,
    /// Keep nothing on disk.
    #[arg(long)]
    pub in_memory: bool,
    /// How often a new revision may be published.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub tick: std::time::Duration,
    /// The stats window of published revisions (10s..1h).
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    pub window: std::time::Duration,
    /// How many revisions the store keeps.
    #[arg(long, value_name = "N", default_value_t = 3600)]
    pub retain_revisions: u64,
    /// Most SSE subscribers (`/api/v1/stream`: consoles, browsers) at once; past it a new one gets
    /// 503, counted as meshlens_collector_sse_refused_total.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_sse_subscribers: usize,
    /// Most connections open at once on each listener (OTLP/gRPC, OTLP/HTTP, API); past it a new
    /// one is closed at once, counted as meshlens_collector_connections_refused_total.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_connections: usize,
    /// Time a client has to send a request's headers; a slower one is disconnected.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: std::time::Duration,
    /// An OTLP/HTTP or API connection with no request in flight for this long is closed (an idle
    /// keep-alive, an HTTP/2 connection that sent only its preface); an SSE stream is in flight.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: std::time::Duration,
    /// Time an OTLP/HTTP upload has to deliver its whole body (then 408).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: std::time::Duration,
    /// MiB of OTLP/HTTP bodies read at once across all connections (then 503 with Retry-After).
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub max_inflight_mib: usize,
    /// Serve TLS (1.3) on all three listeners with this certificate chain (PEM), issued by the mesh
    /// CA: `meshlens ca issue --dir ca --workload meshlens/collector` (its name is
    /// collector.meshlens.mesh). Needs --tls-key and --tls-ca.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The mesh CA (PEM): client certificates it issued (the agents') are verified when presented.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// Refuse clients without a certificate from --tls-ca (mutual TLS for every client).
    #[arg(long, requires = "tls_cert")]
    pub tls_require_client_cert: bool,
    /// Most nodes tracked; data about further nodes is dropped and counted.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_nodes: usize,
    /// Most edges tracked.
    #[arg(long, value_name = "N", default_value_t = 50_000)]
    pub max_edges: usize,
    /// Nodes and edges with no traffic for this long are evicted (from memory and the store), so a
    /// flood of junk names cannot hold --max-nodes/--max-edges for good. At least --window; windows
    /// longer than it (?window=) no longer show what was evicted.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub idle_retention: std::time::Duration,
    /// Size cap of one OTLP export after decompression, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub max_request_mib: usize,
    /// A bearer token every client must present (API, /metrics, OTLP); needed to listen beyond
    /// loopback.
    #[arg(long, value_name = "TOKEN", env = "MESHLENS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A node or edge whose error rate is above this percent is degraded (Kiali's default: any error).
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    pub degraded_error_pct: f64,
    /// A node or edge whose error rate is at or above this percent is failing.
    #[arg(long, value_name = "PCT", default_value_t = 10.0)]
    pub failing_error_pct: f64,
    /// Write the graph (the traces_service_graph_* series of /metrics) to this Prometheus
    /// remote-write receiver (Prometheus with --web.enable-remote-write-receiver:
    /// http://HOST:9090/api/v1/write; VictoriaMetrics: http://HOST:8428/api/v1/write). Collectors
    /// that each write there are read as one graph with --prometheus.
    /// Repeat it to write to several.
    #[arg(long, value_name = "URL")]
    pub remote_write: Vec<String>,
    /// How often the graph is remote-written (and once more at shutdown).
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration, requires = "remote_write")]
    pub remote_write_interval: std::time::Duration,
    /// A label added to every written series, KEY=VALUE (repeatable); default
    /// meshlens_collector=HOST:PORT, which tells collectors apart.
    #[arg(long, value_name = "KEY=VALUE", requires = "remote_write")]
    pub remote_write_label: Vec<String>,
    /// A bearer token for the remote-write receiver.
    #[arg(long, value_name = "TOKEN", env = "MESHLENS_REMOTE_WRITE_TOKEN", hide_env_values = true)]
    pub remote_write_token: Option<String>,
    /// Most spans kept whole in the trace store behind `meshlens trace` and /api/v1/traces (the
    /// oldest trace goes first past it; about 150 bytes a span). 0 keeps none.
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    pub trace_store_spans: usize,
    /// A link to your Jaeger or Tempo for a trace, with {trace_id} in it, given beside every kept
    /// trace (e.g. http://tempo:3200/api/traces/{trace_id}, or Jaeger's http://jaeger:16686/trace/{trace_id}).
    #[arg(long, value_name = "TEMPLATE")]
    pub trace_link: Option<String>,
    /// The graph from a Prometheus-compatible store.
    #[command(flatten)]
    pub source: PrometheusArgs,
}

/// `meshlens sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// The scenario (YAML); or use --from or --prometheus.
    #[arg(required_unless_present_any = ["from", "prometheus"])]
    pub scenario: Option<PathBuf>,
    /// Start from the traffic profile of a running collector (its API URL) instead of a file.
    #[arg(long, value_name = "URL", conflicts_with = "scenario")]
    pub from: Option<String>,
    /// The collector's token, for --from.
    #[arg(long, value_name = "TOKEN", env = "MESHLENS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Or start from the traffic profile read from a Prometheus-compatible store.
    #[command(flatten)]
    pub source: PrometheusArgs,
    /// Apply a policy to the services it names, replacing theirs: a meshlens policy (`policy:` or
    /// bare `services:`, or any file with a `policy:` block: a mesh file, an agent config), or
    /// Istio's VirtualService and DestinationRule files. Repeat it for several files.
    #[arg(long, value_name = "FILE")]
    pub policy: Vec<PathBuf>,
    /// Run a canary plan: a `canary:` block, a Flagger Canary (its spec.analysis, with its
    /// MetricTemplates in the same file), or an Argo Rollout's canary steps (shown, not judged:
    /// its analysis queries cannot run on a simulation).
    #[arg(long, value_name = "FILE")]
    pub canary: Option<PathBuf>,
    /// Also run with this baseline policy and print both side by side with the difference.
    #[arg(long, value_name = "FILE")]
    pub compare: Option<PathBuf>,
    /// Seeds to run (results are medians, with ranges in JSON).
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// Override the scenario's duration.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = LoadOutput::Table)]
    pub output: LoadOutput,
}

/// `meshlens fidelity`.
#[derive(Debug, Args)]
pub struct FidelityArgs {
    /// Mesh files, one case each.
    #[arg(required = true, value_name = "MESH")]
    pub meshes: Vec<PathBuf>,
    /// Users' requests per second.
    #[arg(long, short, value_name = "RPS", default_value_t = 100.0)]
    pub rate: f64,
    /// How long each real run lasts.
    #[arg(long, short, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    pub duration: std::time::Duration,
    /// Simulated seeds per case, each as long as the real run.
    #[arg(long, default_value_t = 10)]
    pub seeds: u64,
    /// What the mesh adds to every request a version serves (agents, timer granularity);
    /// measured on the real agents when absent.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub request_overhead: Option<std::time::Duration>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = LoadOutput::Table)]
    pub output: LoadOutput,
}

/// `meshlens policy`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Write the policy of Istio VirtualService and DestinationRule files in meshlens's schema.
    ///
    /// Reads every document of every file (VirtualService: route weights by subset, timeout,
    /// retries, fault; DestinationRule: subsets by their version label, load balancer, outlier
    /// detection) and prints a `policy:` block that `meshlens agent` and `meshlens sim` read. What
    /// meshlens cannot model (match routes, connection pools, per-subset policies) is listed on
    /// stderr with its file and field; a value it would have to guess at is an error.
    Import {
        /// The files (several documents each, `---` between them).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = PolicyOutput::Yaml)]
        output: PolicyOutput,
    },
}

/// How `meshlens policy import` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyOutput {
    /// YAML, as the agent's and the simulator's files are written.
    Yaml,
    /// JSON.
    Json,
}

/// `meshlens ca`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a mesh root CA in DIR (ca.pem, ca.key, trust-domain).
    Init {
        /// Where the CA lives.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The SPIFFE trust domain.
        #[arg(long, default_value = meshlens_agent::tls::TRUST_DOMAIN)]
        trust_domain: String,
    },
    /// Issue a workload a certificate with the SPIFFE id spiffe://TRUST-DOMAIN/ns/NS/sa/APP.
    Issue {
        /// Where the CA lives; the certificate and key are written there too.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The workload, NS/APP/VERSION (or NS/APP).
        #[arg(long, value_name = "NS/APP[/VERSION]")]
        workload: String,
        /// How long the certificate is valid.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
        ttl: std::time::Duration,
        /// Another name the certificate is valid for (repeatable): an IP address or a DNS name, for
        /// clients that check names the usual way — e.g. `--san 127.0.0.1 --san collector.example`
        /// for a collector. Every certificate is also valid for APP.NS.mesh.
        #[arg(long, value_name = "NAME")]
        san: Vec<String>,
    },
}

/// `meshlens console`.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Collector API URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:7420", env = "MESHLENS_COLLECTOR")]
    pub collector: String,
    /// The collector's token, if it was started with --token.
    #[arg(long, value_name = "TOKEN", env = "MESHLENS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The graph from a Prometheus-compatible store instead of a collector.
    #[command(flatten)]
    pub source: PrometheusArgs,
}

/// `meshlens demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Requests per second to the entry service (productpage).
    #[arg(long, short, value_name = "RPS", default_value_t = 20.0)]
    pub rate: f64,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, short, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Make an app or app version fail a share of its requests with 500: reviews-v3=20%.
    #[arg(long, value_name = "APP[-VERSION]=PCT%")]
    pub fault: Vec<String>,
    /// Slow an app or app version down: ratings=100ms.
    #[arg(long, value_name = "APP[-VERSION]=DURATION")]
    pub delay: Vec<String>,
    /// Run this mesh file instead of bookinfo (same shape as examples/bookinfo/mesh.yaml).
    #[arg(long, value_name = "FILE")]
    pub mesh: Option<PathBuf>,
    /// Never draw a UI; print the addresses and a summary at the end.
    #[arg(long)]
    pub headless: bool,
    /// Collector API and UI address (default 127.0.0.1:7420, or a free port if that is taken).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// OTLP/gRPC address (default 127.0.0.1:4317, or a free port).
    #[arg(long, value_name = "ADDR")]
    pub otlp_grpc: Option<SocketAddr>,
    /// OTLP/HTTP address (default 127.0.0.1:4318, or a free port).
    #[arg(long, value_name = "ADDR")]
    pub otlp_http: Option<SocketAddr>,
    /// How often the agents export their metrics.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub export_interval: std::time::Duration,
}

/// `meshlens agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent's config file (YAML).
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// How often the config file is checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub reload_every: std::time::Duration,
    /// Worker threads. 1 (the default, as linkerd2-proxy) runs everything on one thread with no
    /// cross-thread wakeups, the cheapest per request; more threads raise the ceiling.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
}

impl Cli {
    /// The log filter when `MESHLENS_LOG` is not set: `info`, but the demo keeps its dozen
    /// components' start-up lines to itself.
    pub fn default_log_filter(&self) -> &'static str {
        match &self.command {
            Command::Demo(_) | Command::Fidelity(_) => "warn",
            // An embedded collector (--prometheus) says nothing unless something is wrong.
            Command::Stat(_)
            | Command::Graph(_)
            | Command::Console(_)
            | Command::Sim(_)
            | Command::Trace(_)
            | Command::Routes(_)
            | Command::Tap(_)
            | Command::Top(_) => "warn",
            _ => "info",
        }
    }

    /// Worker threads the async runtime should have: `None` for the default (one per core), 1 for
    /// a single-threaded runtime.
    pub fn worker_threads(&self) -> Option<usize> {
        match &self.command {
            Command::Agent(a) => Some(usize::from(a.threads)),
            _ => None,
        }
    }
}

/// Output formats of `load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoadOutput {
    /// Aligned text.
    Table,
    /// JSON.
    Json,
}

/// `meshlens inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Manifest files (many YAML documents each); `-` reads stdin.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The image with the meshlens binary (and iptables, for --redirect iptables).
    #[arg(long, default_value = concat!("meshlens:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// The collector's OTLP/gRPC URL, as the Pods reach it (deploy/kubernetes/collector.yaml).
    #[arg(long, default_value = "http://meshlens-collector.meshlens.svc.cluster.local:4317")]
    pub collector: String,
    /// How traffic reaches the agent.
    #[arg(long, value_enum, default_value = "iptables")]
    pub redirect: inject::Redirect,
    /// The namespace of every object that names none.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// The collector's bearer token (its --token), written into each agent's config, so into its
    /// ConfigMap.
    #[arg(long, value_name = "TOKEN", env = "MESHLENS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `meshlens load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Target URL (http://host:port/path).
    pub url: String,
    /// Requests per second.
    #[arg(long, short, value_name = "RPS", default_value_t = 100.0)]
    pub rate: f64,
    /// How long to send.
    #[arg(long, short, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: std::time::Duration,
    /// Connections, each carrying one request at a time.
    #[arg(long, short, value_name = "N", default_value_t = 16)]
    pub connections: usize,
    /// A request without a response after this counts as an error.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    /// Send this Host header (a service name, to load a service through an agent's outbound port).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = LoadOutput::Table)]
    pub output: LoadOutput,
}

/// Output formats of `stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatOutput {
    /// Aligned columns.
    Table,
    /// Columns plus inbound/outbound rates, 4xx/5xx and gRPC codes.
    Wide,
    /// The API's JSON.
    Json,
}

/// `meshlens stat`.
#[derive(Debug, Args)]
pub struct StatArgs {
    /// Collector API URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:7420", env = "MESHLENS_COLLECTOR")]
    pub collector: String,
    /// The collector's token, if it was started with --token.
    #[arg(long, value_name = "TOKEN", env = "MESHLENS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The graph from a Prometheus-compatible store instead of a collector.
    #[command(flatten)]
    pub source: PrometheusArgs,
    /// Stats window (10s..1h).
    #[arg(long, short, value_name = "DURATION", default_value = "1m")]
    pub window: String,
    /// Only these namespaces (repeatable).
    #[arg(long, short)]
    pub namespace: Vec<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = StatOutput::Table)]
    pub output: StatOutput,
}

/// Output formats of `graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphOutput {
    /// One row per edge.
    Table,
    /// The API's JSON snapshot.
    Json,
    /// Graphviz dot.
    Dot,
    /// Mermaid flowchart.
    Mermaid,
}

/// `meshlens trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The trace id (32 hex digits); without it, kept traces are listed.
    pub trace_id: Option<String>,
    /// Collector API URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:7420", env = "MESHLENS_COLLECTOR")]
    pub collector: String,
    /// The collector's token, if it was started with --token.
    #[arg(long, value_name = "TOKEN", env = "MESHLENS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Traces through this workload (ns/app/version, or user); with --to, the caller of an edge.
    #[arg(long, value_name = "WORKLOAD", conflicts_with = "trace_id")]
    pub from: Option<String>,
    /// Traces into this workload; with --from, the callee of an edge.
    #[arg(long, value_name = "WORKLOAD", conflicts_with = "trace_id")]
    pub to: Option<String>,
    /// Only traces that failed (on the edge, with --from and --to).
    #[arg(long, conflicts_with = "trace_id")]
    pub failed: bool,
    /// The slowest first instead of the newest first.
    #[arg(long, conflicts_with = "trace_id")]
    pub slowest: bool,
    /// How many traces to list (1..1000).
    #[arg(long, default_value_t = 20, conflicts_with = "trace_id")]
    pub limit: usize,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = TraceOutput::Table)]
    pub output: TraceOutput,
}

/// `meshlens routes`.
#[derive(Debug, Args)]
pub struct RoutesArgs {
    /// The service: its app name, or namespace/app.
    pub service: String,
    /// Collector API URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:7420", env = "MESHLENS_COLLECTOR")]
    pub collector: String,
    /// The collector's token, if it was started with --token.
    #[arg(long, value_name = "TOKEN", env = "MESHLENS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Only requests from this caller (namespace/app or namespace/app/version).
    #[arg(long, value_name = "WORKLOAD")]
    pub from: Option<String>,
    /// Stats window (10s..1h).
    #[arg(long, short, value_name = "DURATION", default_value = "1m")]
    pub window: String,
    /// Always show effective and actual success and RPS.
    #[arg(long)]
    pub wide: bool,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = TraceOutput::Table)]
    pub output: TraceOutput,
}

/// Output formats of `trace` and `routes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TraceOutput {
    /// A waterfall, or one row per trace (or route).
    Table,
    /// The API's JSON.
    Json,
}

/// `meshlens graph`.
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// Collector API URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:7420", env = "MESHLENS_COLLECTOR")]
    pub collector: String,
    /// The collector's token, if it was started with --token.
    #[arg(long, value_name = "TOKEN", env = "MESHLENS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The graph from a Prometheus-compatible store instead of a collector.
    #[command(flatten)]
    pub source: PrometheusArgs,
    /// Stats window (10s..1h).
    #[arg(long, short, value_name = "DURATION", default_value = "1m")]
    pub window: String,
    /// Grouping of nodes.
    #[arg(long, value_parser = parse_view, default_value = "versioned")]
    pub view: View,
    /// Only these namespaces (repeatable).
    #[arg(long, short)]
    pub namespace: Vec<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = GraphOutput::Table)]
    pub output: GraphOutput,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    meshlens_model::time::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_view(s: &str) -> Result<View, String> {
    s.parse()
}

/// A failure, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad setting or file: exit code 2.
    #[error("{0:#}")]
    Config(anyhow::Error),
    /// Anything at run time: exit code 1.
    #[error("{0:#}")]
    Runtime(anyhow::Error),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Config(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }
}

/// Runs a tap until `q`, Ctrl-C or `--max`, handing each request to `each`; says on stderr how many
/// agents are tapping (and when none is connected), and how many requests were dropped. The number
/// of requests seen.
async fn tap<W: Write>(
    t: &TapTarget,
    out: &mut W,
    mut each: impl FnMut(&mut W, &meshlens_model::tap::TapEvent) -> std::io::Result<()>,
) -> Result<u64, CliError> {
    use futures_util::StreamExt;
    use meshlens_console::TapMessage;
    let client = Client::with_token(&t.collector, t.token.as_deref()).map_err(runtime)?;
    let stream = client.tap(&t.target, t.find.as_deref(), Some(t.max_rps)).await.map_err(runtime)?;
    let mut stream = std::pin::pin!(stream);
    let quit = meshlens_console::QuitKey::watch();
    let ctrl_c = tokio::signal::ctrl_c();
    let mut ctrl_c = std::pin::pin!(ctrl_c);
    let (mut seen, mut said) = (0u64, None);
    if t.max == Some(0) {
        return Ok(0);
    }
    loop {
        tokio::select! {
            m = stream.next() => match m {
                None => return Err(runtime(anyhow::anyhow!("the collector ended the tap (it is shutting down)"))),
                Some(Err(e)) => return Err(runtime(e)),
                Some(Ok(TapMessage::Request(e))) => {
                    each(out, &e).map_err(runtime)?;
                    out.flush().map_err(runtime)?;
                    seen += 1;
                    if t.max.is_some_and(|m| seen >= m) {
                        return Ok(seen);
                    }
                }
                Some(Ok(TapMessage::Status(s))) => {
                    let now = (s.agents, s.live, s.dropped);
                    if said != Some(now) {
                        if s.agents == 0 {
                            eprintln!(
                                "meshlens tap: no agent of {} is connected to {} yet (agents connect when telemetry.collector is set); waiting",
                                t.target, t.collector
                            );
                        } else {
                            eprintln!("meshlens tap: {}: {} of {} agents tapping, {} requests dropped", t.target, s.live, s.agents, s.dropped);
                        }
                        said = Some(now);
                    }
                }
            },
            () = quit.pressed() => return Ok(seen),
            _ = &mut ctrl_c => return Ok(seen),
        }
    }
}

fn runtime(e: impl Into<anyhow::Error>) -> CliError {
    CliError::Runtime(e.into())
}

/// Runs a parsed command line, writing normal output to `out`.
pub async fn run<W: Write>(cli: Cli, out: &mut W) -> Result<(), CliError> {
    match cli.command {
        Command::Collector(a) => collector(*a, out).await,
        Command::Agent(a) => agent(a, out).await,
        Command::Demo(a) => demo_cmd(a, out).await,
        Command::Console(a) => match embedded_source(&a.source, std::time::Duration::from_secs(60)).await? {
            Some((running, url)) => {
                let r = console(&url, None, out).await;
                let _ = running.shutdown().await;
                r
            }
            None => console(&a.collector, a.token.as_deref(), out).await,
        },
        Command::Ca(c) => ca(c, out),
        Command::Policy(PolicyCommand::Import { files, output }) => policy_import(&files, output, out),
        Command::Inject(a) => inject_cmd(&a, out),
        Command::Sim(a) => sim(a, out).await,
        Command::Fidelity(a) => fidelity_cmd(a, out).await,
        Command::Load(a) => {
            let url: http::Uri = a.url.parse().map_err(|e| CliError::Config(anyhow::anyhow!("{}: {e}", a.url)))?;
            let config = meshlens_agent::load::LoadConfig {
                url,
                rate: a.rate,
                duration: a.duration,
                connections: a.connections,
                timeout: a.timeout,
                host: a.host.clone(),
            };
            let report = meshlens_agent::load::run(config).await.map_err(|e| CliError::Config(e.into()))?;
            match a.output {
                LoadOutput::Json => {
                    serde_json::to_writer_pretty(&mut *out, &report).map_err(runtime)?;
                    writeln!(out).map_err(runtime)
                }
                LoadOutput::Table => meshlens_agent::load::write_table(out, &report).map_err(runtime),
            }
        }
        Command::Stat(a) => {
            let embedded = embedded_source(&a.source, window_of(&a.window)?).await?;
            let (url, token) = match &embedded {
                Some((_, url)) => (url.as_str(), None),
                None => (a.collector.as_str(), a.token.as_deref()),
            };
            let client = Client::with_token(url, token).map_err(runtime)?;
            let body = client.workloads(&a.window, &a.namespace).await.map_err(runtime);
            if let Some((running, _)) = embedded {
                let _ = running.shutdown().await;
            }
            let body = body?;
            match a.output {
                StatOutput::Json => serde_json::to_writer_pretty(&mut *out, &body).map_err(runtime)?,
                StatOutput::Table | StatOutput::Wide => {
                    meshlens_console::text::write_stat(out, &body.workloads, a.output == StatOutput::Wide)
                        .map_err(runtime)?
                }
            }
            if a.output == StatOutput::Json {
                writeln!(out).map_err(runtime)?;
            }
            Ok(())
        }
        Command::Routes(a) => {
            let client = Client::with_token(&a.collector, a.token.as_deref()).map_err(runtime)?;
            let body = client.routes(&a.service, a.from.as_deref(), &a.window).await.map_err(runtime)?;
            if a.output == TraceOutput::Json {
                serde_json::to_writer_pretty(&mut *out, &body).map_err(runtime)?;
                writeln!(out).map_err(runtime)
            } else {
                meshlens_console::text::write_routes(out, &body, a.wide).map_err(runtime)
            }
        }
        Command::Tap(a) => tap(&a.tap, out, |out, e| match a.output {
            TraceOutput::Json => {
                serde_json::to_writer(&mut *out, e)?;
                writeln!(out)
            }
            TraceOutput::Table => meshlens_console::text::write_tap_event(out, e),
        })
        .await
        .map(|_| ()),
        Command::Top(a) => {
            let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
            let mut top = meshlens_model::tap::Top::default();
            if tty {
                // The alternate screen, as top(1): the shell's screen comes back at the end.
                write!(out, "\x1b[?1049h\x1b[?25l").map_err(runtime)?;
            }
            let mut last = std::time::Instant::now();
            let rows = a.rows;
            let result = tap(&a.tap, out, |out, e| {
                top.add(e);
                if tty && last.elapsed() >= std::time::Duration::from_secs(1) {
                    last = std::time::Instant::now();
                    write!(out, "\x1b[H\x1b[2J")?;
                    writeln!(out, "meshlens top {}: {} requests (q to quit)\n", a.tap.target, top.total)?;
                    meshlens_console::text::write_top(out, &top, rows)?;
                }
                Ok(())
            })
            .await;
            if tty {
                write!(out, "\x1b[?25h\x1b[?1049l").map_err(runtime)?;
            }
            result?;
            meshlens_console::text::write_top(out, &top, rows).map_err(runtime)?;
            if top.other > 0 {
                writeln!(
                    out,
                    "({} more requests on paths past the first {} kept)",
                    top.other,
                    meshlens_model::tap::MAX_TOP_ROWS
                )
                .map_err(runtime)?;
            }
            Ok(())
        }
        Command::Trace(a) => {
            let client = Client::with_token(&a.collector, a.token.as_deref()).map_err(runtime)?;
            let json = a.output == TraceOutput::Json;
            match &a.trace_id {
                Some(id) => {
                    let t = client.trace(id).await.map_err(runtime)?;
                    if json {
                        serde_json::to_writer_pretty(&mut *out, &t).map_err(runtime)?;
                        writeln!(out).map_err(runtime)
                    } else {
                        meshlens_console::text::write_trace(out, &t).map_err(runtime)
                    }
                }
                None => {
                    let (from, to) = (a.from.as_deref(), a.to.as_deref());
                    let list = client.traces(from, to, a.failed, a.slowest, a.limit).await.map_err(runtime)?;
                    if json {
                        serde_json::to_writer_pretty(&mut *out, &list).map_err(runtime)?;
                        writeln!(out).map_err(runtime)
                    } else {
                        meshlens_console::text::write_traces(out, &list.traces).map_err(runtime)
                    }
                }
            }
        }
        Command::Graph(a) => {
            let embedded = embedded_source(&a.source, window_of(&a.window)?).await?;
            let (url, token) = match &embedded {
                Some((_, url)) => (url.as_str(), None),
                None => (a.collector.as_str(), a.token.as_deref()),
            };
            let client = Client::with_token(url, token).map_err(runtime)?;
            let g = client.graph(a.view, &a.window, &a.namespace).await.map_err(runtime);
            if let Some((running, _)) = embedded {
                let _ = running.shutdown().await;
            }
            let g = g?;
            match a.output {
                GraphOutput::Json => {
                    serde_json::to_writer_pretty(&mut *out, &g).map_err(runtime)?;
                    writeln!(out).map_err(runtime)
                }
                GraphOutput::Table => meshlens_console::text::write_graph_table(out, &g).map_err(runtime),
                GraphOutput::Dot => meshlens_console::text::write_dot(out, &g).map_err(runtime),
                GraphOutput::Mermaid => meshlens_console::text::write_mermaid(out, &g).map_err(runtime),
            }
        }
    }
}

async fn collector<W: Write>(a: CollectorArgs, out: &mut W) -> Result<(), CliError> {
    let mut config = CollectorConfig {
        otlp_grpc: a.otlp_grpc,
        otlp_http: a.otlp_http,
        http: a.http,
        data_dir: (!a.in_memory).then_some(a.data_dir.clone()),
        tick: a.tick,
        window: a.window,
        retain_revisions: a.retain_revisions,
        max_request_bytes: a.max_request_mib << 20,
        token: a.token.clone(),
        max_sse_subscribers: a.max_sse_subscribers,
        max_connections: a.max_connections,
        header_read_timeout: a.header_read_timeout,
        idle_timeout: a.idle_timeout,
        body_read_timeout: a.body_read_timeout,
        max_inflight_bytes: a.max_inflight_mib << 20,
        source: a.source.source(a.window)?,
        ..CollectorConfig::default()
    };
    for url in &a.remote_write {
        check_store_url("--remote-write", url)?;
    }
    if !a.remote_write.is_empty() {
        let mut labels = Vec::new();
        for l in &a.remote_write_label {
            let Some((k, v)) = l.split_once('=') else {
                return Err(CliError::Config(anyhow::anyhow!("--remote-write-label {l}: write KEY=VALUE")));
            };
            let valid = !k.is_empty()
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && !k.starts_with("__");
            if !valid || v.is_empty() {
                return Err(CliError::Config(anyhow::anyhow!(
                    "--remote-write-label {l}: a label name is [a-zA-Z_][a-zA-Z0-9_]* (not starting with __) and its value is not empty"
                )));
            }
            labels.push((k.to_owned(), v.to_owned()));
        }
        config.remote_write = Some(meshlens_collector::remote_write::RemoteWriteConfig {
            urls: a.remote_write.clone(),
            interval: a.remote_write_interval,
            labels,
            token: a.remote_write_token.clone(),
        });
    }
    if !(0.0..=100.0).contains(&a.degraded_error_pct)
        || !(0.0..=100.0).contains(&a.failing_error_pct)
        || a.degraded_error_pct > a.failing_error_pct
    {
        return Err(CliError::Config(anyhow::anyhow!(
            "--degraded-error-pct ({}) and --failing-error-pct ({}) must be percents with degraded <= failing",
            a.degraded_error_pct,
            a.failing_error_pct
        )));
    }
    config.engine.health =
        meshlens_model::HealthThresholds { degraded_pct: a.degraded_error_pct, failing_pct: a.failing_error_pct };
    config.engine.max_nodes = a.max_nodes;
    config.engine.trace_store_spans = a.trace_store_spans;
    if let Some(t) = &a.trace_link
        && !t.contains("{trace_id}")
    {
        return Err(CliError::Config(anyhow::anyhow!(
            "--trace-link {t}: the template needs {{trace_id}} where the trace id goes"
        )));
    }
    config.trace_link = a.trace_link.clone();
    config.engine.max_edges = a.max_edges;
    config.engine.idle_retention_secs = a.idle_retention.as_secs();
    if let (Some(cert), Some(key), Some(ca)) = (&a.tls_cert, &a.tls_key, &a.tls_ca) {
        let tls = meshlens_agent::tls::MeshTls::load(
            cert,
            key,
            ca,
            meshlens_agent::tls::TRUST_DOMAIN,
            a.tls_require_client_cert,
        )
        .map_err(|e| CliError::Config(anyhow::anyhow!("--tls-cert/--tls-key/--tls-ca: {e}")))?;
        config.tls = Some(tls.server.clone());
    }
    let mut running = meshlens_collector::start(config).await.map_err(|e| match e {
        meshlens_collector::CollectorError::NotLoopback { .. } | meshlens_collector::CollectorError::Config { .. } => {
            CliError::Config(e.into())
        }
        other => CliError::Runtime(other.into()),
    })?;
    let mut data = if a.in_memory { "in memory (--in-memory)".to_owned() } else { a.data_dir.display().to_string() };
    if let Some(url) = &a.source.prometheus {
        data += &format!("\n  reads       {url} (--prometheus)");
    }
    for url in &a.remote_write {
        data += &format!("\n  writes      {url} (--remote-write, every {:?})", a.remote_write_interval);
    }
    let scheme = if a.tls_cert.is_some() { "https" } else { "http" };
    writeln!(
        out,
        "meshlens collector\n  OTLP/gRPC   {}\n  OTLP/HTTP   {scheme}://{}\n  API and UI  {scheme}://{}\n  data        {data}\nCtrl-C stops it.",
        running.otlp_grpc_addr,
        running.otlp_http_addr,
        running.http_addr
    )
    .and_then(|()| out.flush())
    .map_err(runtime)?;
    let outcome = tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(runtime),
        r = running.wait_any() => r.map_err(|e| runtime(anyhow::anyhow!(e))),
    };
    running.shutdown().await.map_err(|e| runtime(anyhow::anyhow!(e)))?;
    outcome
}

async fn agent<W: Write>(a: AgentArgs, out: &mut W) -> Result<(), CliError> {
    let config = meshlens_agent::load_config(&a.config).map_err(|e| CliError::Config(e.into()))?;
    let workload = config.workload.id();
    let export = config.telemetry.as_ref().map_or("off".to_owned(), |t| {
        format!("{} every {:?}, {}% of new traces sampled", t.collector, t.interval, t.sampling * 100.0)
    });
    let options = meshlens_agent::Options { watch: Some(a.config.clone()), reload_every: a.reload_every };
    let running = meshlens_agent::start(config, options).await.map_err(|e| match e {
        meshlens_agent::AgentError::Config(_) | meshlens_agent::AgentError::Collector(_) => CliError::Config(e.into()),
        other => CliError::Runtime(other.into()),
    })?;
    let outbound = running.outbound.map_or("off".to_owned(), |a| format!("http://{a}"));
    writeln!(
        out,
        "meshlens agent for {workload}\n  inbound     http://{}\n  outbound    {outbound}\n  admin       http://{}/metrics\n  telemetry   {export}\n  config      {} (reloaded on change)\nCtrl-C stops it.",
        running.inbound,
        running.admin,
        a.config.display()
    )
    .and_then(|()| out.flush())
    .map_err(runtime)?;
    let outcome = tokio::signal::ctrl_c().await.map_err(runtime);
    running.shutdown().await;
    outcome
}

/// `preferred` if it can be bound now, else any free port on loopback.
fn port_or_free(given: Option<SocketAddr>, preferred: u16) -> SocketAddr {
    if let Some(a) = given {
        return a;
    }
    let want = SocketAddr::from(([127, 0, 0, 1], preferred));
    match std::net::TcpListener::bind(want) {
        Ok(_) => want,
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

async fn demo_cmd<W: Write>(a: DemoArgs, out: &mut W) -> Result<(), CliError> {
    let mesh = match &a.mesh {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| CliError::Config(anyhow::anyhow!("reading {}: {e}", path.display())))?,
            path.display().to_string(),
        ),
        None => (demo::BOOKINFO.to_owned(), "examples/bookinfo/mesh.yaml".to_owned()),
    };
    let config = demo::DemoConfig {
        mesh,
        rate: a.rate,
        faults: a.fault.clone(),
        delays: a.delay.clone(),
        http: port_or_free(a.http, 7420),
        otlp_grpc: port_or_free(a.otlp_grpc, 4317),
        otlp_http: port_or_free(a.otlp_http, 4318),
        export_interval: a.export_interval,
        load: true,
    };
    let running = demo::start(config).await.map_err(|e| CliError::Config(e.into()))?;
    let url = running.api_url();
    let mut text = format!(
        "meshlens demo: bookinfo on loopback, {} requests a second to productpage\n  API and UI  {url}\n  OTLP/gRPC   {}\n  workloads\n",
        a.rate, running.collector.otlp_grpc_addr
    );
    for w in &running.workloads {
        text.push_str(&format!("    {:<28} agent http://{}  admin http://{}/metrics\n", w.id, w.inbound, w.admin));
    }
    let with_console = !a.headless && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let quit = if with_console { "q in the console or Ctrl-C" } else { "Ctrl-C" };
    let stop = match a.duration {
        Some(d) => format!("It stops after {d:?}; {quit} stops it sooner."),
        None => format!("{quit} stops it."),
    };
    text.push_str(&format!(
        "Look at it:\n  meshlens console --collector {url}\n  meshlens stat --collector {url}\n  meshlens graph --collector {url}\n{stop}\n"
    ));
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(runtime)?;
    if with_console {
        // The console runs until the user quits it (or --duration passes); then the demo stops.
        let ui = meshlens_console::run(&url, None);
        let outcome = match a.duration {
            Some(d) => tokio::time::timeout(d, ui).await.unwrap_or(Ok(())),
            None => ui.await,
        };
        let counts: Vec<u64> = running.load.iter().map(|c| c.load(std::sync::atomic::Ordering::Relaxed)).collect();
        running.shutdown().await.map_err(|e| runtime(anyhow::anyhow!(e)))?;
        writeln!(out, "sent {} requests: {} answered, {} failed", counts[0], counts[1], counts[2]).map_err(runtime)?;
        return outcome.map_err(runtime);
    }
    let wait = async {
        match a.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(runtime),
        () = wait => Ok(()),
    };
    let counts: Vec<u64> = running.load.iter().map(|c| c.load(std::sync::atomic::Ordering::Relaxed)).collect();
    running.shutdown().await.map_err(|e| runtime(anyhow::anyhow!(e)))?;
    writeln!(out, "sent {} requests: {} answered, {} failed", counts[0], counts[1], counts[2]).map_err(runtime)?;
    outcome
}

/// The console when stdout is a terminal, else the `stat` table.
async fn console<W: Write>(collector: &str, token: Option<&str>, out: &mut W) -> Result<(), CliError> {
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        meshlens_console::run(collector, token).await.map_err(|e| match e {
            meshlens_console::ConsoleError::Client(c) => CliError::Config(c.into()),
            other => runtime(other),
        })
    } else {
        let client = Client::with_token(collector, token).map_err(runtime)?;
        let body = client.workloads("1m", &[]).await.map_err(runtime)?;
        meshlens_console::text::write_stat(out, &body.workloads, false).map_err(runtime)
    }
}

fn ca<W: Write>(c: CaCommand, out: &mut W) -> Result<(), CliError> {
    use meshlens_agent::tls;
    let config = |e: tls::TlsError| CliError::Config(e.into());
    match c {
        CaCommand::Init { dir, trust_domain } => {
            let (cert, key) = tls::init_ca(&dir, &trust_domain).map_err(config)?;
            writeln!(
                out,
                "mesh CA for trust domain {trust_domain}\n  certificate {}\n  key         {}",
                cert.display(),
                key.display()
            )
            .map_err(runtime)
        }
        CaCommand::Issue { dir, workload, ttl, san } => {
            let parts: Vec<&str> = workload.split('/').collect();
            let (ns, app) = match parts.as_slice() {
                [ns, app] | [ns, app, _] if !ns.is_empty() && !app.is_empty() => (*ns, *app),
                _ => return Err(CliError::Config(anyhow::anyhow!("--workload {workload}: expected NS/APP/VERSION"))),
            };
            let stem = parts.join("-");
            let issued =
                tls::issue_with_names(&dir, ns, app, &stem, std::time::SystemTime::now(), ttl, &san).map_err(config)?;
            writeln!(
                out,
                "{}\n  certificate {}\n  key         {}\n  valid for   {ttl:?}",
                issued.spiffe_id,
                issued.cert.display(),
                issued.key.display()
            )
            .map_err(runtime)
        }
    }
}

/// Reads policy files (`--policy`, `meshlens policy import`), telling their warnings on stderr.
fn read_policy_files(paths: &[PathBuf]) -> Result<meshlens_sim::policy_input::PolicyInput, CliError> {
    let mut texts = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p)
            .map_err(|e| CliError::Config(anyhow::anyhow!("reading {}: {e}", p.display())))?;
        texts.push((text, p.display().to_string()));
    }
    let files: Vec<(&str, &str)> = texts.iter().map(|(t, o)| (t.as_str(), o.as_str())).collect();
    let input = meshlens_sim::policy_input::read_policies(&files).map_err(|e| CliError::Config(e.into()))?;
    for w in &input.warnings {
        eprintln!("meshlens: warning: {w}");
    }
    Ok(input)
}

fn inject_cmd<W: Write>(a: &InjectArgs, out: &mut W) -> Result<(), CliError> {
    let mut text = String::new();
    for p in &a.files {
        let read =
            if p.as_os_str() == "-" { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(p) };
        let t = read.map_err(|e| CliError::Config(anyhow::anyhow!("reading {}: {e}", p.display())))?;
        text.push_str(&t);
        text.push_str("\n---\n");
    }
    let o = inject::Options {
        image: a.image.clone(),
        collector: a.collector.clone(),
        redirect: a.redirect,
        namespace: a.namespace.clone(),
        token: a.token.clone(),
    };
    let done = inject::inject(&text, &o).map_err(|e| CliError::Config(e.into()))?;
    for n in &done.notes {
        eprintln!("meshlens inject: {n}");
    }
    write!(out, "{}", done.yaml).map_err(runtime)
}

fn policy_import<W: Write>(files: &[PathBuf], output: PolicyOutput, out: &mut W) -> Result<(), CliError> {
    let input = read_policy_files(files)?;
    let body = serde_json::json!({ "policy": input.policy });
    match output {
        PolicyOutput::Json => writeln!(out, "{}", serde_json::to_string_pretty(&body).map_err(runtime)?),
        PolicyOutput::Yaml => {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            write!(
                out,
                "# meshlens policy imported from {}\n{}",
                names.join(", "),
                serde_yaml_ng::to_string(&body).map_err(runtime)?
            )
        }
    }
    .map_err(runtime)
}

async fn fidelity_cmd<W: Write>(a: FidelityArgs, out: &mut W) -> Result<(), CliError> {
    if !(a.rate > 0.0 && a.rate.is_finite()) {
        return Err(CliError::Config(anyhow::anyhow!("--rate {}: must be more than 0", a.rate)));
    }
    let config = fidelity::FidelityConfig { rate: a.rate, duration: a.duration, seeds: a.seeds };
    let mut cases = Vec::new();
    for path in &a.meshes {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Config(anyhow::anyhow!("reading {}: {e}", path.display())))?;
        let origin = path.display().to_string();
        // A bad mesh is a config error (exit 2), found before any case runs.
        fidelity::check_case(&text, &origin, &config).map_err(|e| CliError::Config(e.into()))?;
        cases.push((text, origin));
    }
    let hop = match a.request_overhead {
        Some(d) => d.as_secs_f64(),
        None => fidelity::calibrate(&config).await.map_err(runtime)?,
    };
    let mut results = Vec::new();
    for (text, origin) in &cases {
        results.push(fidelity::run_case(text, origin, &config, hop).await.map_err(runtime)?);
    }
    match a.output {
        LoadOutput::Json => {
            let body = serde_json::json!({"request_overhead_ms": hop * 1000.0, "cases": results});
            writeln!(out, "{}", serde_json::to_string_pretty(&body).map_err(runtime)?).map_err(runtime)?;
        }
        LoadOutput::Table => fidelity::write_table(out, hop, &results).map_err(runtime)?,
    }
    Ok(())
}

async fn sim<W: Write>(a: SimArgs, out: &mut W) -> Result<(), CliError> {
    let config = |e: meshlens_sim::ScenarioError| CliError::Config(e.into());
    let embedded = match &a.scenario {
        None if a.from.is_none() => embedded_source(&a.source, std::time::Duration::from_secs(60)).await?,
        _ => None,
    };
    let from = embedded.as_ref().map(|(_, url)| url.clone()).or(a.from.clone());
    let mut scenario = match (&a.scenario, &from) {
        (Some(path), _) => meshlens_sim::Scenario::load(path).map_err(config)?,
        (None, Some(url)) => {
            let token = if embedded.is_some() { None } else { a.token.as_deref() };
            let client = Client::with_token(url, token).map_err(runtime)?;
            let profile: Result<meshlens_model::api::Profile, _> = client.get("/api/v1/profile").await;
            if let Some((running, _)) = embedded {
                let _ = running.shutdown().await;
            }
            let profile = profile.map_err(runtime)?;
            let duration = a.duration.map_or(60.0, |d| d.as_secs_f64());
            meshlens_sim::Scenario::from_profile(&profile, duration).map_err(config)?
        }
        (None, None) => {
            return Err(CliError::Config(anyhow::anyhow!("give a scenario file, --from URL or --prometheus URL")));
        }
    };
    if !a.policy.is_empty() {
        let input = read_policy_files(&a.policy)?;
        scenario.apply_policy(&input.policy, "--policy").map_err(config)?;
    }
    if let Some(d) = a.duration {
        scenario.duration = d.as_secs_f64();
    }
    if let Some(path) = &a.canary {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Config(anyhow::anyhow!("reading {}: {e}", path.display())))?;
        let plan = meshlens_sim::canary::Plan::parse(&text, &path.display().to_string(), &scenario).map_err(config)?;
        for w in &plan.warnings {
            eprintln!("meshlens: warning: {w}");
        }
        let outcome = meshlens_sim::canary::simulate(&scenario, &plan, a.seeds);
        return match a.output {
            LoadOutput::Json => {
                serde_json::to_writer_pretty(&mut *out, &outcome).map_err(runtime)?;
                writeln!(out).map_err(runtime)
            }
            LoadOutput::Table => meshlens_sim::canary::write_table(out, &outcome, &plan).map_err(runtime),
        };
    }
    if let Some(base) = &a.compare {
        let input = read_policy_files(std::slice::from_ref(base))?;
        let mut baseline = scenario.clone();
        baseline.apply_policy(&input.policy, &base.display().to_string()).map_err(config)?;
        let (b, c) = (meshlens_sim::run(&baseline, a.seeds), meshlens_sim::run(&scenario, a.seeds));
        return match a.output {
            LoadOutput::Json => {
                serde_json::to_writer_pretty(&mut *out, &serde_json::json!({"baseline": b, "candidate": c}))
                    .map_err(runtime)?;
                writeln!(out).map_err(runtime)
            }
            LoadOutput::Table => meshlens_sim::report::write_comparison(out, &b, &c).map_err(runtime),
        };
    }
    // A progress line on stderr when a person is watching.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let report = meshlens_sim::report::run_with_progress(&scenario, a.seeds, |done, of| {
        if tty {
            eprint!(
                "\rsimulating {:.0} s: seed {done}/{of}{}",
                scenario.duration,
                if done == of { "\r\x1b[K" } else { "" }
            );
        }
    });
    match a.output {
        LoadOutput::Json => {
            serde_json::to_writer_pretty(&mut *out, &report).map_err(runtime)?;
            writeln!(out).map_err(runtime)
        }
        LoadOutput::Table => meshlens_sim::report::write_table(out, &report).map_err(runtime),
    }
}
