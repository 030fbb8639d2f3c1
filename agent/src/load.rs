//! `meshlens load`: an open-loop, constant-rate HTTP/1.1 load generator that corrects coordinated
//! omission (the method of wrk2, oha and fortio).
//!
//! A pacer thread issues one send slot per `1/rate` seconds, each stamped with its intended send
//! time, sleeping with the OS timer (tens of microseconds of slack, where tokio's timer has a
//! millisecond). Connection tasks take slots in turn; a slot waiting for a busy connection keeps its
//! intended time, so a stall shows in the latency as it would for real users. Latency is recorded
//! into HdrHistograms twice: from the intended time (the corrected figure) and from the actual send
//! (service time).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::{Mutex, mpsc};

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// `http://host:port/path`.
    pub url: Uri,
    /// Requests per second.
    pub rate: f64,
    /// For how long.
    pub duration: Duration,
    /// Connections (each carries one request at a time).
    pub connections: usize,
    /// A request without a response after this is an error.
    pub timeout: Duration,
    /// The Host header, when it is not the URL's (a service name, through an agent's outbound).
    pub host: Option<String>,
}

/// Why a load run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A setting.
    #[error("{0}")]
    Invalid(String),
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// 50th percentile (median).
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// The slowest response.
    pub max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// The target.
    pub url: String,
    /// Requested rate.
    pub requested_rps: f64,
    /// Responses per second over the run.
    pub achieved_rps: f64,
    /// Seconds from the first slot to the last response.
    pub elapsed_s: f64,
    /// Connections the requests were spread over.
    pub connections: usize,
    /// Requests sent.
    pub sent: u64,
    /// Responses received.
    pub responses: u64,
    /// Requests with no response (refused, reset, timed out).
    pub errors: u64,
    /// Slots never sent because every connection was still busy when the run ended.
    pub unsent: u64,
    /// Responses that are not 5xx, percent of the slots.
    pub success_pct: f64,
    /// Responses by status code.
    pub codes: BTreeMap<u16, u64>,
    /// From the intended send time (corrected for coordinated omission).
    pub latency_ms: Percentiles,
    /// From the actual send time.
    pub service_time_ms: Percentiles,
}

struct Tally {
    corrected: Histogram<u64>,
    service: Histogram<u64>,
    codes: BTreeMap<u16, u64>,
    sent: u64,
    errors: u64,
}

impl Tally {
    // 1 µs to 1 h at 3 significant digits: constant bounds that hdrhistogram always accepts.
    #[allow(clippy::expect_used)]
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid constant bounds");
        Self { corrected: h(), service: h(), codes: BTreeMap::new(), sent: 0, errors: 0 }
    }
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Runs the load and reports.
pub async fn run(config: LoadConfig) -> Result<LoadReport, LoadError> {
    if !(config.rate > 0.0 && config.rate.is_finite()) {
        return Err(LoadError::Invalid(format!("--rate {} must be more than 0", config.rate)));
    }
    if config.connections == 0 {
        return Err(LoadError::Invalid("--connections must be 1 or more".into()));
    }
    if config.url.scheme_str() != Some("http") {
        return Err(LoadError::Invalid(format!("{}: only http:// URLs are supported", config.url)));
    }
    let authority = config
        .url
        .authority()
        .ok_or_else(|| LoadError::Invalid(format!("{}: the URL needs a host", config.url)))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let addr = format!("{}:{port}", authority.host());

    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let start = Instant::now() + Duration::from_millis(20);
    let total = (config.rate * config.duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / config.rate);
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            let intended = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            if tx.send(intended).is_err() {
                return;
            }
        }
    });
    let rx = Arc::new(Mutex::new(rx));
    let end = start + config.duration + config.timeout;
    let mut tasks = Vec::new();
    for _ in 0..config.connections {
        let (rx, addr, url, timeout) = (rx.clone(), addr.clone(), config.url.clone(), config.timeout);
        let host = config.host.clone().unwrap_or_else(|| authority.as_str().to_owned());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let mut conn: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
            loop {
                let intended = {
                    let mut rx = rx.lock().await;
                    match tokio::time::timeout_at(end.into(), rx.recv()).await {
                        Ok(Some(t)) => t,
                        _ => break,
                    }
                };
                let sent = Instant::now();
                tally.sent += 1;
                let result = tokio::time::timeout(timeout, async {
                    if conn.as_ref().is_none_or(|c| c.is_closed()) {
                        let stream = tokio::net::TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
                        let _ = stream.set_nodelay(true);
                        let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                            .await
                            .map_err(|e| e.to_string())?;
                        tokio::spawn(connection);
                        conn = Some(send);
                    }
                    let Some(send) = conn.as_mut() else { return Err("no connection".to_owned()) };
                    send.ready().await.map_err(|e| e.to_string())?;
                    let req = Request::get(url.path_and_query().map_or("/", |p| p.as_str()))
                        .header(http::header::HOST, &host)
                        .body(Empty::<Bytes>::new())
                        .map_err(|e| e.to_string())?;
                    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
                    let status = resp.status().as_u16();
                    resp.into_body().collect().await.map_err(|e| e.to_string())?;
                    Ok(status)
                })
                .await;
                let done = Instant::now();
                match result {
                    Ok(Ok(status)) => {
                        *tally.codes.entry(status).or_default() += 1;
                        let _ = tally.corrected.record(us(done - intended));
                        let _ = tally.service.record(us(done - sent));
                    }
                    _ => {
                        conn = None;
                        tally.errors += 1;
                    }
                }
            }
            tally
        }));
    }
    let mut all = Tally::new();
    let mut last = start;
    for t in tasks {
        if let Ok(t) = t.await {
            let _ = all.corrected.add(&t.corrected);
            let _ = all.service.add(&t.service);
            for (k, v) in t.codes {
                *all.codes.entry(k).or_default() += v;
            }
            all.sent += t.sent;
            all.errors += t.errors;
        }
        last = last.max(Instant::now());
    }
    let _ = pacer.join();
    let responses: u64 = all.codes.values().sum();
    let ok: u64 = all.codes.iter().filter(|(c, _)| **c < 500).map(|(_, n)| n).sum();
    let elapsed = last.saturating_duration_since(start).as_secs_f64().max(config.duration.as_secs_f64());
    Ok(LoadReport {
        url: config.url.to_string(),
        requested_rps: config.rate,
        achieved_rps: responses as f64 / elapsed,
        elapsed_s: elapsed,
        connections: config.connections,
        sent: all.sent,
        responses,
        errors: all.errors,
        unsent: total.saturating_sub(all.sent),
        success_pct: if total == 0 { 0.0 } else { 100.0 * ok as f64 / total as f64 },
        codes: all.codes,
        latency_ms: Percentiles::of(&all.corrected),
        service_time_ms: Percentiles::of(&all.service),
    })
}

/// The report as a table, for a terminal.
pub fn write_table(out: &mut impl std::io::Write, r: &LoadReport) -> std::io::Result<()> {
    let codes: Vec<String> = r.codes.iter().map(|(c, n)| format!("{c} x {n}")).collect();
    let p = |p: &Percentiles| {
        format!("p50 {:.3}ms  p90 {:.3}ms  p99 {:.3}ms  p99.9 {:.3}ms  max {:.3}ms", p.p50, p.p90, p.p99, p.p999, p.max)
    };
    writeln!(out, "target        {}", r.url)?;
    writeln!(out, "requested     {:.1} rps over {} connections", r.requested_rps, r.connections)?;
    writeln!(
        out,
        "achieved      {:.1} rps  ({} responses in {:.2}s; {} errors, {} never sent)",
        r.achieved_rps, r.responses, r.elapsed_s, r.errors, r.unsent
    )?;
    writeln!(
        out,
        "success       {:.2}%  ({})",
        r.success_pct,
        if codes.is_empty() { "no responses".into() } else { codes.join(", ") }
    )?;
    writeln!(
        out,
        "latency       {}  (from the intended send time: corrected for coordinated omission)",
        p(&r.latency_ms)
    )?;
    writeln!(out, "service time  {}  (from the actual send)", p(&r.service_time_ms))
}
