//! Bearer-token authentication for everything the collector serves when `--token` is set (required
//! to listen beyond loopback): the API and `/metrics`, OTLP/HTTP and OTLP/gRPC. The token is
//! compared in constant time. `/healthz` and `/readyz` stay open for probes, and the web UI's files
//! load without it (the page then asks for the token and sends it with every call). Browsers' EventSource
//! cannot set headers, so `?token=` is accepted too.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Equal in time that depends only on the lengths, not on where the bytes differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn presented(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(t) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))
    {
        return Some(t.trim().to_owned());
    }
    req.uri()
        .query()
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned()))
}

/// Takes `token=` out of the query, so the handlers see only their own parameters.
fn strip_token(req: &mut Request) {
    let Some(q) = req.uri().query() else { return };
    if !q.split('&').any(|p| p.starts_with("token=")) {
        return;
    }
    let rest: Vec<&str> = q.split('&').filter(|p| !p.starts_with("token=")).collect();
    let path = req.uri().path();
    let pq = if rest.is_empty() { path.to_owned() } else { format!("{path}?{}", rest.join("&")) };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// The middleware: lets a request with the token through, answers 401 (or gRPC `UNAUTHENTICATED`)
/// otherwise.
pub(crate) async fn require_token(State(token): State<Arc<str>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    // Probes, and the web UI itself, which then asks for the token.
    if matches!(path, "/healthz" | "/readyz" | "/" | "/app.js" | "/app_bg.wasm") {
        return next.run(req).await;
    }
    if presented(&req).is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes())) {
        strip_token(&mut req);
        return next.run(req).await;
    }
    let grpc = req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let mut r = StatusCode::OK.into_response();
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static("16"));
        h.insert("grpc-message", HeaderValue::from_static("missing%20or%20wrong%20bearer%20token"));
        return r;
    }
    let body = serde_json::json!({"error": {"code": "unauthorized", "message":
        "this collector needs its token: send Authorization: Bearer <token> (or ?token=<token>)"}});
    let mut r = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"meshlens\""));
    r
}

/// Whether a `Host` value names this machine's loopback: `localhost` (or a name under it), or a
/// loopback IP literal, with any port.
pub(crate) fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host
            .rsplit_once(':')
            .map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host }),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The middleware without a token (where the collector listens on loopback only): a request whose
/// `Host` is not a loopback name is answered 403, so a web page whose name re-resolves to
/// 127.0.0.1 (DNS rebinding) cannot read the API or write spans. Requests with no `Host` (not a
/// browser) pass.
pub(crate) async fn require_loopback_host(req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    match host {
        Some(h) if !loopback_host(&h) => {
            let shown: String = h.chars().take(100).collect();
            let body = serde_json::json!({"error": {"code": "forbidden_host", "message": format!(
                "Host {shown:?} is not a loopback name: without --token the collector answers only localhost, 127.0.0.1 and [::1] (a guard against DNS rebinding); set --token to serve other names")}});
            (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
        }
        _ => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_hosts() {
        use super::loopback_host;
        for h in [
            "localhost",
            "localhost:7420",
            "127.0.0.1:7420",
            "127.5.6.7",
            "[::1]:7420",
            "[::1]",
            "app.localhost",
            "LOCALHOST.",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "evil.com",
            "evil.com:7420",
            "10.0.0.1:7420",
            "[2001:db8::1]:80",
            "localhost.evil.com",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }

    #[test]
    fn compares_whole_tokens() {
        use super::constant_time_eq as eq;
        assert!(eq(b"s3cret", b"s3cret"));
        assert!(!eq(b"s3cret", b"s3cre"));
        assert!(!eq(b"s3cret", b"s3creT"));
        assert!(!eq(b"", b"x"));
    }
}
