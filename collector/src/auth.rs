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
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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
pub async fn require_token(State(token): State<Arc<str>>, mut req: Request, next: Next) -> Response {
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

#[cfg(test)]
mod tests {
    #[test]
    fn compares_whole_tokens() {
        use super::constant_time_eq as eq;
        assert!(eq(b"s3cret", b"s3cret"));
        assert!(!eq(b"s3cret", b"s3cre"));
        assert!(!eq(b"s3cret", b"s3creT"));
        assert!(!eq(b"", b"x"));
    }
}
