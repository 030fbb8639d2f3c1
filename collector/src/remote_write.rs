//! `--remote-write URL`: the service graph ([`crate::prom::graph_families`], the same series
//! `/metrics` serves) sent to a Prometheus-compatible store with the Prometheus remote-write
//! protocol (1.0: a snappy-compressed protobuf `WriteRequest`), every interval and once more at
//! shutdown.
//!
//! This is how collectors scale out: each one writes its own series, told apart by its external
//! labels (default `meshlens_collector="HOST:PORT"`), and a collector or CLI reading the store with
//! `--prometheus` ([`crate::source`]) adds them up. The series are cumulative totals, so a write
//! that fails loses nothing: the next one carries the same totals, larger. Failures are logged and
//! counted (`meshlens_collector_remote_write_failures_total`), never queued.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::watch;

use crate::hub::Hub;

/// Where and how often to write.
#[derive(Clone, Debug)]
pub struct RemoteWriteConfig {
    /// The receivers' URLs, each written the whole graph (Prometheus: `http://HOST:9090/api/v1/write`
    /// with `--web.enable-remote-write-receiver`; VictoriaMetrics: `http://HOST:8428/api/v1/write`).
    pub urls: Vec<String>,
    /// How often the whole graph is written.
    pub interval: Duration,
    /// Labels added to every series (Prometheus's `external_labels`), sorted into each series.
    pub labels: Vec<(String, String)>,
    /// A bearer token for the receiver.
    pub token: Option<String>,
}

/// The default external label: `meshlens_collector="HOST:PORT"` (the host's name and the API
/// port), so collectors on different hosts, or on one host, write different series.
pub fn default_labels(api_port: u16) -> Vec<(String, String)> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "collector".to_owned());
    vec![("meshlens_collector".to_owned(), format!("{host}:{api_port}"))]
}

/// `prometheus.WriteRequest` (remote-write 1.0), the fields meshlens sends.
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    /// The series.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    /// Labels, sorted by name, `__name__` among them.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// Samples, oldest first.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    /// The label's name (`__name__` for the metric name).
    pub name: String,
    #[prost(string, tag = "2")]
    /// The label's value.
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    /// The sample's value.
    pub value: f64,
    /// Unix milliseconds.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// The graph as one `WriteRequest` at `now_ms`. Labels with an empty value are left out (PromQL
/// reads a missing label as empty; the store would drop them anyway).
pub fn write_request(hub: &Hub, external: &[(String, String)], now_ms: i64) -> WriteRequest {
    let engine = hub.engine.lock();
    let mut timeseries = Vec::new();
    for family in crate::prom::graph_families(&engine) {
        for s in family.samples {
            let mut labels: Vec<Label> = s
                .labels
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| Label { name: k.to_owned(), value: v })
                .chain(external.iter().map(|(k, v)| Label { name: k.clone(), value: v.clone() }))
                .collect();
            labels.push(Label { name: "__name__".to_owned(), value: format!("{}{}", family.name, s.suffix) });
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            labels.dedup_by(|a, b| a.name == b.name);
            timeseries.push(TimeSeries { labels, samples: vec![Sample { value: s.value, timestamp: now_ms }] });
        }
    }
    WriteRequest { timeseries }
}

/// Why one write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Snappy could not compress the body.
    #[error("cannot compress the write request: {0}")]
    Compress(#[from] snap::Error),
    /// The receiver could not be reached or did not answer.
    #[error("cannot reach {url}: {source}")]
    Send {
        /// The receiver.
        url: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// The receiver refused the write.
    #[error("{url} answered {status}: {body}")]
    Refused {
        /// The receiver.
        url: String,
        /// The status.
        status: u16,
        /// The start of its body.
        body: String,
    },
}

/// Sends one write of the whole graph to every receiver; returns how many series it carried, or
/// the first receiver's failure (the others are still written).
pub async fn write_once(client: &reqwest::Client, hub: &Hub, config: &RemoteWriteConfig) -> Result<usize, WriteError> {
    let now_ms = (crate::engine::unix_now() * 1000.0) as i64;
    let req = write_request(hub, &config.labels, now_ms);
    let series = req.timeseries.len();
    let body = bytes::Bytes::from(snap::raw::Encoder::new().compress_vec(&req.encode_to_vec())?);
    let mut first_err = None;
    for url in &config.urls {
        if let Err(e) = send(client, url, body.clone(), config.token.as_deref()).await {
            first_err.get_or_insert(e);
        } else {
            hub.counters.remote_write_series.add(series as u64);
        }
    }
    first_err.map_or(Ok(series), Err)
}

async fn send(client: &reqwest::Client, url: &str, body: bytes::Bytes, token: Option<&str>) -> Result<(), WriteError> {
    let mut r = client
        .post(url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .header("User-Agent", concat!("meshlens/", env!("CARGO_PKG_VERSION")))
        .body(body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.map_err(|source| WriteError::Send { url: url.to_owned(), source })?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(WriteError::Refused {
            url: url.to_owned(),
            status: status.as_u16(),
            body: body.chars().take(300).collect(),
        });
    }
    Ok(())
}

/// Writes every interval until `stop` turns true, then once more (the last totals).
pub async fn run(hub: Arc<Hub>, config: RemoteWriteConfig, mut stop: watch::Receiver<bool>) {
    let client = match reqwest::Client::builder().timeout(config.interval.max(Duration::from_secs(5))).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "remote write: cannot build an HTTP client; nothing will be written");
            return;
        }
    };
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            _ = stop.wait_for(|&s| s) => true,
        };
        match write_once(&client, &hub, &config).await {
            Ok(_) if failing => {
                tracing::info!(urls = ?config.urls, "remote write works again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) => {
                hub.counters.remote_write_failures.add(1);
                if !failing {
                    tracing::warn!(error = %e, "remote write failed; the next write carries the same totals");
                }
                failing = true;
            }
        }
        if last {
            return;
        }
    }
}
