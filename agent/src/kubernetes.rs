//! The Kubernetes API as a discovery source: a Service's EndpointSlices listed, then watched, the
//! way kube-proxy follows them, and turned into endpoints by [`crate::endpointslice`].
//!
//! In a Pod the API is found as every in-cluster client finds it: `KUBERNETES_SERVICE_HOST` and
//! `_PORT`, the service account's token (read again for each request: bound tokens rotate) and CA
//! under `/var/run/secrets/kubernetes.io/serviceaccount/`. `discovery.kubernetes.api` points it at
//! another URL instead, such as `kubectl proxy`'s `http://127.0.0.1:8001`. The Pod's service account
//! needs `list` and `watch` on `endpointslices` in the Service's namespace.
//!
//! The loop: list (`labelSelector=kubernetes.io/service-name=NAME`), record the endpoints, watch
//! from the list's `resourceVersion`, and record again after each event; when the watch ends or
//! fails (a `410 Gone` too), list again (at most once a second). A list that fails keeps the last endpoints and is tried
//! again after a backoff, counted as a discovery error.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

use crate::endpointslice::{self, EndpointSlice, PortRef};

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// How long a watch runs before it is started again (the API server's limit is longer).
const WATCH_SECS: u64 = 290;

/// Where the API is and how to be let in.
#[derive(Clone)]
pub(crate) struct Api {
    scheme_https: bool,
    host: String,
    port: u16,
    token_file: Option<std::path::PathBuf>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Api {
    /// The API this Pod's service account reaches.
    pub(crate) fn in_cluster() -> Result<Api, String> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
            "KUBERNETES_SERVICE_HOST is not set: not in a Pod (set discovery.kubernetes.api)".to_owned()
        })?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(443);
        let ca = format!("{SERVICE_ACCOUNT}/ca.crt");
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&ca).map_err(|e| format!("{ca}: {e}"))? {
            roots.add(c.map_err(|e| format!("{ca}: {e}"))?).map_err(|e| format!("{ca}: {e}"))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(err)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Api {
            scheme_https: true,
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
            token_file: Some(format!("{SERVICE_ACCOUNT}/token").into()),
            tls: Some(Arc::new(tls)),
        })
    }

    /// The API at `url`, plain HTTP with no credentials (`kubectl proxy`, or a test's).
    pub(crate) fn at(url: &str) -> Result<Api, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "{url:?}: only http:// (such as kubectl proxy's) is taken here; in a Pod leave it out"
            ));
        }
        let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?.trim_matches(['[', ']']).to_owned();
        Ok(Api { scheme_https: false, host, port: uri.port_u16().unwrap_or(80), token_file: None, tls: None })
    }

    async fn get(&self, path: &str) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| format!("connecting to {}:{} timed out", self.host, self.port))?
        .map_err(|e| format!("connecting to {}:{}: {e}", self.host, self.port))?;
        let mut req = hyper::Request::get(path).header(http::header::HOST, self.host.as_str());
        if let Some(f) = &self.token_file {
            let token = tokio::fs::read_to_string(f).await.map_err(|e| format!("{}: {e}", f.display()))?;
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {}", token.trim()));
        }
        let req = req.header(http::header::ACCEPT, "application/json").body(Empty::<Bytes>::new()).map_err(err)?;
        match (&self.tls, self.scheme_https) {
            (Some(tls), true) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(err)?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.map_err(err)?;
                send(TokioIo::new(stream), req).await
            }
            _ => send(TokioIo::new(tcp), req).await,
        }
    }
}

async fn send<T>(io: T, req: hyper::Request<Empty<Bytes>>) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.map_err(err)?;
    tokio::spawn(conn);
    send.send_request(req).await.map_err(err)
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect()
}

/// The list path of `service`'s slices in `namespace`.
fn slices_path(namespace: &str, service: &str) -> String {
    format!(
        "/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices?labelSelector={}",
        percent(namespace),
        percent(&format!("kubernetes.io/service-name={service}"))
    )
}

/// What one watch event does to the slices held (by name).
fn apply(slices: &mut std::collections::BTreeMap<String, EndpointSlice>, event: &Value) -> Result<(), String> {
    let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
    let object = event.get("object").cloned().unwrap_or(Value::Null);
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_owned();
    match kind {
        "ADDED" | "MODIFIED" => {
            slices.insert(name, serde_json::from_value(object).map_err(|e| format!("an EndpointSlice: {e}"))?);
        }
        "DELETED" => {
            slices.remove(&name);
        }
        "BOOKMARK" => {}
        "ERROR" => {
            let message = object.get("message").and_then(Value::as_str).unwrap_or("an error event");
            return Err(format!("the watch ended: {message}"));
        }
        other => return Err(format!("an event of type {other:?}")),
    }
    Ok(())
}

/// Follows `service`'s slices through `api`, calling `found` with the endpoints each time they may
/// have changed and `failed` with what went wrong; runs until aborted.
pub(crate) async fn follow(
    api: Api,
    namespace: String,
    service: String,
    port: PortRef,
    found: impl Fn(Vec<String>),
    failed: impl Fn(String),
) {
    let list_path = slices_path(&namespace, &service);
    let mut backoff = Duration::from_secs(1);
    loop {
        let listed = async {
            let resp = api.get(&list_path).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(err)?.to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                return Err(format!("listing EndpointSlices of {namespace}/{service}: {status}: {text}"));
            }
            let list: Value = serde_json::from_slice(&body).map_err(|e| format!("the list: {e}"))?;
            let rv = list.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("").to_owned();
            let mut slices = std::collections::BTreeMap::new();
            for item in list.get("items").and_then(Value::as_array).into_iter().flatten() {
                let name = item.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_owned();
                slices.insert(
                    name,
                    serde_json::from_value::<EndpointSlice>(item.clone())
                        .map_err(|e| format!("an EndpointSlice: {e}"))?,
                );
            }
            Ok::<_, String>((rv, slices))
        };
        let (rv, mut slices) = match listed.await {
            Ok(l) => l,
            Err(e) => {
                failed(e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        let endpoints_of = |slices: &std::collections::BTreeMap<String, EndpointSlice>| {
            let all: Vec<EndpointSlice> = slices.values().cloned().collect();
            endpointslice::endpoints(&all, &port)
        };
        match endpoints_of(&slices) {
            Ok(eps) => found(eps),
            Err(e) => failed(format!("{namespace}/{service}: {e}")),
        }
        // Watch from the list's version until the stream ends or fails, then list again.
        let watch = format!(
            "{list_path}&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECS}&resourceVersion={}",
            percent(&rv)
        );
        let started = tokio::time::Instant::now();
        let mut body = match api.get(&watch).await {
            Ok(resp) if resp.status().is_success() => resp.into_body(),
            Ok(resp) => {
                failed(format!("watching EndpointSlices of {namespace}/{service}: {}", resp.status()));
                tokio::time::sleep(backoff).await;
                continue;
            }
            Err(e) => {
                failed(e);
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let mut buf = Vec::new();
        'stream: while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            let Some(data) = frame.data_ref() else { continue };
            buf.extend_from_slice(data);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let applied = serde_json::from_slice::<Value>(&line)
                    .map_err(|e| format!("a watch event: {e}"))
                    .and_then(|event| apply(&mut slices, &event));
                match applied {
                    Ok(()) => match endpoints_of(&slices) {
                        Ok(eps) => found(eps),
                        Err(e) => failed(format!("{namespace}/{service}: {e}")),
                    },
                    Err(e) => {
                        failed(format!("{namespace}/{service}: {e}"));
                        break 'stream;
                    }
                }
            }
        }
        // A watch that ended at once is not followed by a list at once: no tight loop against an
        // API that closes every stream.
        if started.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_path_selects_the_service_s_slices() {
        assert_eq!(
            slices_path("shop", "reviews"),
            "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dreviews"
        );
    }

    #[test]
    fn watch_events_add_change_and_delete_slices() {
        let mut slices = std::collections::BTreeMap::new();
        let slice = |name: &str, ip: &str| {
            serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "resourceVersion": "7"}, "addressType": "IPv4",
                "ports": [{"name": "http", "port": 80}], "endpoints": [{"addresses": [ip]}]})
        };
        let ev = |t: &str, o: Value| serde_json::json!({"type": t, "object": o});
        apply(&mut slices, &ev("ADDED", slice("a", "10.0.0.1"))).unwrap();
        apply(&mut slices, &ev("ADDED", slice("b", "10.0.0.2"))).unwrap();
        apply(&mut slices, &ev("MODIFIED", slice("a", "10.0.0.3"))).unwrap();
        apply(&mut slices, &ev("DELETED", slice("b", "10.0.0.2"))).unwrap();
        let all: Vec<EndpointSlice> = slices.values().cloned().collect();
        assert_eq!(endpointslice::endpoints(&all, &PortRef::Only).unwrap(), ["10.0.0.3:80"]);
        let gone =
            ev("ERROR", serde_json::json!({"kind": "Status", "code": 410, "message": "too old resource version"}));
        assert!(apply(&mut slices, &gone).unwrap_err().contains("too old resource version"));
    }
}
