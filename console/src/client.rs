//! A small client for the collector's JSON API.

use meshlens_model::api::{AppDetail, ErrorBody, ExemplarsBody, TraceBody, TracesBody, WorkloadsBody};
use meshlens_model::graph::{GraphSnapshot, RevisionsBody, View};
use serde::de::DeserializeOwned;

/// Why an API call failed, with the URL.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection.
    #[error("cannot reach the collector at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The cause, flattened.
        reason: String,
    },
    /// The collector answered with an error.
    #[error("{url}: {status}: {message}")]
    Api {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The API's message.
        message: String,
    },
    /// The answer did not decode.
    #[error("{url}: unexpected answer: {reason}")]
    Decode {
        /// The URL.
        url: String,
        /// What did not decode, as serde said.
        reason: String,
    },
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// The API client.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    /// A client for the collector at `base` (such as `http://127.0.0.1:7420`).
    pub fn new(base: &str) -> Result<Self, ClientError> {
        Self::with_token(base, None)
    }

    /// A client that presents `token` as a bearer token (a collector started with `--token`).
    pub fn with_token(base: &str, token: Option<&str>) -> Result<Self, ClientError> {
        let http = Self::builder(token)
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Unreachable { url: base.to_owned(), reason: chain(&e) })?;
        Ok(Self { base: base.trim_end_matches('/').to_owned(), http, token: token.map(str::to_owned) })
    }

    /// A reqwest builder that sends the token.
    pub fn builder(token: Option<&str>) -> reqwest::ClientBuilder {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token
            && let Ok(v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
        {
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        reqwest::Client::builder().default_headers(headers)
    }

    /// The token this client presents.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// GETs `path` (with its query) and decodes the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base, path);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable { url: url.clone(), reason: chain(&e) })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| ClientError::Unreachable { url: url.clone(), reason: chain(&e) })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
            return Err(ClientError::Api { url, status: status.as_u16(), message });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode { url, reason: e.to_string() })
    }

    /// `/api/v1/graph`.
    pub async fn graph(&self, view: View, window: &str, namespaces: &[String]) -> Result<GraphSnapshot, ClientError> {
        let mut q = format!("/api/v1/graph?view={view}&window={}", enc(window));
        for ns in namespaces {
            q.push_str(&format!("&namespace={}", enc(ns)));
        }
        self.get(&q).await
    }

    /// `/api/v1/graph` at a revision (`None`: the latest), with namespaces or apps collapsed.
    pub async fn graph_at(
        &self,
        view: View,
        window: &str,
        at: Option<u64>,
        collapse: &[String],
    ) -> Result<GraphSnapshot, ClientError> {
        let mut q = format!("/api/v1/graph?view={view}&window={}", enc(window));
        for c in collapse {
            q.push_str(&format!("&collapse={}", enc(c)));
        }
        if let Some(at) = at {
            q.push_str(&format!("&at={at}"));
        }
        self.get(&q).await
    }

    /// `/api/v1/revisions`: the newest `n` at most.
    pub async fn revisions(&self, n: u64) -> Result<RevisionsBody, ClientError> {
        let latest: RevisionsBody = self.get("/api/v1/revisions?since=0&limit=1").await?;
        let since = latest.latest.saturating_sub(n);
        self.get(&format!("/api/v1/revisions?since={since}")).await
    }

    /// `/api/v1/workloads/{namespace}/{app}`.
    pub async fn app(&self, namespace: &str, app: &str, window: &str) -> Result<AppDetail, ClientError> {
        self.get(&format!("/api/v1/workloads/{}/{}?window={}", segment(namespace), segment(app), enc(window))).await
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `/api/v1/workloads`.
    pub async fn workloads(&self, window: &str, namespaces: &[String]) -> Result<WorkloadsBody, ClientError> {
        let mut q = format!("/api/v1/workloads?window={}", enc(window));
        for ns in namespaces {
            q.push_str(&format!("&namespace={}", enc(ns)));
        }
        self.get(&q).await
    }

    /// `/api/v1/tap`: opens a live tap on `target`; the stream yields its requests and its status
    /// once a second, and ends when the collector ends it (the tap closes when it is dropped).
    pub async fn tap(
        &self,
        target: &str,
        find: Option<&str>,
        max_rps: Option<u32>,
    ) -> Result<impl futures_util::Stream<Item = Result<TapMessage, ClientError>> + use<>, ClientError> {
        use eventsource_stream::Eventsource;
        use futures_util::StreamExt;
        let mut url = format!("{}/api/v1/tap?target={}", self.base, enc(target));
        if let Some(f) = find {
            url.push_str(&format!("&find={}", enc(f)));
        }
        if let Some(r) = max_rps {
            url.push_str(&format!("&max_rps={r}"));
        }
        // No overall timeout: a status event comes every second, so a silent stream is a dead one.
        let http = Self::builder(self.token())
            .read_timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Unreachable { url: url.clone(), reason: chain(&e) })?;
        let resp = http
            .get(&url)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable { url: url.clone(), reason: chain(&e) })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
            return Err(ClientError::Api { url, status: status.as_u16(), message });
        }
        Ok(resp.bytes_stream().eventsource().filter_map(move |item| {
            let url = url.clone();
            async move {
                let decode = |reason: String| ClientError::Decode { url: url.clone(), reason };
                match item {
                    Err(e) => Some(Err(ClientError::Unreachable { url: url.clone(), reason: e.to_string() })),
                    Ok(ev) if ev.event == "request" => Some(
                        serde_json::from_str(&ev.data)
                            .map(|e| TapMessage::Request(Box::new(e)))
                            .map_err(|e| decode(e.to_string())),
                    ),
                    Ok(ev) if ev.event == "status" => {
                        Some(serde_json::from_str(&ev.data).map(TapMessage::Status).map_err(|e| decode(e.to_string())))
                    }
                    Ok(_) => None,
                }
            }
        }))
    }

    /// `/api/v1/traces/{id}`: one kept trace.
    pub async fn trace(&self, id: &str) -> Result<TraceBody, ClientError> {
        self.get(&format!("/api/v1/traces/{}", segment(id))).await
    }

    /// `/api/v1/routes`: a service's routes, as all callers (or `from`) saw them.
    pub async fn routes(
        &self,
        service: &str,
        from: Option<&str>,
        window: &str,
    ) -> Result<meshlens_model::api::RoutesBody, ClientError> {
        let mut q = format!("/api/v1/routes?service={}&window={}", enc(service), enc(window));
        if let Some(f) = from {
            q.push_str(&format!("&from={}", enc(f)));
        }
        self.get(&q).await
    }

    /// `/api/v1/exemplars?node=`: the requests behind a node, newest failed and slowest.
    pub async fn exemplars(&self, node: &str, limit: usize) -> Result<ExemplarsBody, ClientError> {
        self.get(&format!("/api/v1/exemplars?node={}&limit={limit}", enc(node))).await
    }

    /// `/api/v1/traces`: kept traces through `from` (and on to `to`), newest or slowest first.
    pub async fn traces(
        &self,
        from: Option<&str>,
        to: Option<&str>,
        failed: bool,
        slowest: bool,
        limit: usize,
    ) -> Result<TracesBody, ClientError> {
        let mut q = format!("/api/v1/traces?limit={limit}&failed={failed}");
        if slowest {
            q.push_str("&sort=slowest");
        }
        for (k, v) in [("from", from), ("to", to)] {
            if let Some(v) = v {
                q.push_str(&format!("&{k}={}", enc(v)));
            }
        }
        self.get(&q).await
    }
}

/// What a tap stream carries.
#[derive(Clone, Debug, PartialEq)]
pub enum TapMessage {
    /// A request one of the target's agents saw.
    Request(Box<meshlens_model::tap::TapEvent>),
    /// Agents connected and live, events so far, dropped.
    Status(meshlens_model::tap::TapStatus),
}

fn enc(s: &str) -> String {
    meshlens_model::viewstate::encode(s)
}

fn segment(s: &str) -> String {
    meshlens_model::viewstate::encode_segment(s)
}
