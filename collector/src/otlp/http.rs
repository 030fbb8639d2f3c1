//! OTLP/HTTP receiver (axum): `POST /v1/traces` and `POST /v1/metrics`, protobuf or JSON (hex ids,
//! integer enums), optionally gzip-compressed, as the OTLP specification says: the answer comes in
//! the request's encoding, 400 for an undecodable body, 413 over the size cap (checked again after
//! decompression), 415 for another content type, 429 with `Retry-After` when the queue is full.

use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Ingest, RETRY_AFTER, Refused, lite};

/// `google.rpc.Status`, the body of an OTLP/HTTP error.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub(crate) struct RpcStatus {
    /// gRPC code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What went wrong.
    #[prost(string, tag = "2")]
    pub message: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

fn reply<M: Message + Serialize>(status: StatusCode, enc: Encoding, msg: &M) -> Response {
    let (ctype, body) = match enc {
        Encoding::Protobuf => ("application/x-protobuf", msg.encode_to_vec()),
        Encoding::Json => ("application/json", serde_json::to_vec(msg).unwrap_or_default()),
    };
    (status, [(header::CONTENT_TYPE, ctype)], body).into_response()
}

fn error(status: StatusCode, enc: Encoding, grpc_code: i32, message: String) -> Response {
    reply(status, enc, &RpcStatus { code: grpc_code, message })
}

struct Decoded<T> {
    msg: T,
    bytes: usize,
    enc: Encoding,
}

/// A body read, size-checked and decompressed, not yet parsed.
struct Raw {
    data: Bytes,
    enc: Encoding,
    /// Its share of the in-flight byte budget, given back when the body is parsed.
    _budget: tokio::sync::OwnedSemaphorePermit,
}

async fn decode<T: Message + Default + DeserializeOwned>(
    ingest: &Ingest,
    headers: &HeaderMap,
    body: Body,
) -> Result<Decoded<T>, Response> {
    let raw = read(ingest, headers, body).await?;
    parse(ingest, raw, |data| T::decode(data), |data| serde_json::from_slice::<T>(data))
}

/// Parses a body with the decoder of its encoding; a failure is a 400 naming the encoding.
// The error is the finished HTTP answer, built once per failed request: its size does not matter.
#[allow(clippy::result_large_err)]
fn parse<T>(
    ingest: &Ingest,
    raw: Raw,
    protobuf: impl FnOnce(Bytes) -> Result<T, prost::DecodeError>,
    json: impl FnOnce(&[u8]) -> Result<T, serde_json::Error>,
) -> Result<Decoded<T>, Response> {
    let bytes = raw.data.len();
    let msg = match raw.enc {
        Encoding::Protobuf => protobuf(raw.data).map_err(|e| format!("body is not a valid OTLP protobuf message: {e}")),
        Encoding::Json => json(&raw.data).map_err(|e| format!("body is not a valid OTLP JSON message: {e}")),
    };
    match msg {
        Ok(msg) => Ok(Decoded { msg, bytes, enc: raw.enc }),
        Err(m) => {
            ingest.counters.requests_malformed.add(1);
            Err(error(StatusCode::BAD_REQUEST, raw.enc, 3, m))
        }
    }
}

async fn read(ingest: &Ingest, headers: &HeaderMap, body: Body) -> Result<Raw, Response> {
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ctype.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let enc = match mime.as_str() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        _ => {
            ingest.counters.requests_malformed.add(1);
            let msg = format!("unsupported content-type {ctype:?}: send application/x-protobuf or application/json");
            return Err(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, Encoding::Json, 3, msg));
        }
    };
    let cap = ingest.max_request_bytes;
    let too_large = |ingest: &Ingest| {
        ingest.counters.requests_too_large.add(1);
        error(StatusCode::PAYLOAD_TOO_LARGE, enc, 8, format!("request body is larger than the {cap}-byte cap"))
    };
    // The in-flight budget: what this body will hold while it arrives, by its Content-Length (the
    // cap when it declares none, or more than the cap, which is refused below anyway).
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .map_or(cap, |n| n.min(cap));
    let kib = u32::try_from(declared.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    let Ok(budget) = ingest.inflight.clone().try_acquire_many_owned(kib) else {
        ingest.counters.requests_refused_inflight.add(1);
        let msg = format!(
            "the collector is reading its limit of {} bytes of uploads at once; retry later",
            ingest.uploads.max_inflight_bytes
        );
        let mut r = error(StatusCode::SERVICE_UNAVAILABLE, enc, 14, msg);
        r.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        return Err(r);
    };
    let raw: Bytes = match tokio::time::timeout(ingest.uploads.body_read_timeout, axum::body::to_bytes(body, cap)).await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return Err(too_large(ingest)),
        Err(_) => {
            ingest.counters.bodies_timed_out.add(1);
            let msg = format!("the body did not arrive within {:?}", ingest.uploads.body_read_timeout);
            return Err(error(StatusCode::REQUEST_TIMEOUT, enc, 4, msg));
        }
    };
    let gzip =
        headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_ascii_lowercase());
    let data: Bytes = match gzip.as_deref() {
        None | Some("identity") | Some("") => raw,
        Some("gzip") => {
            let mut out = Vec::new();
            let mut dec = flate2::read::MultiGzDecoder::new(&raw[..]).take(cap as u64 + 1);
            if let Err(e) = dec.read_to_end(&mut out) {
                ingest.counters.requests_malformed.add(1);
                return Err(error(StatusCode::BAD_REQUEST, enc, 3, format!("gzip body is truncated or corrupt: {e}")));
            }
            if out.len() > cap {
                return Err(too_large(ingest));
            }
            Bytes::from(out)
        }
        Some(other) => {
            ingest.counters.requests_malformed.add(1);
            return Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                enc,
                3,
                format!("unsupported content-encoding {other:?}: send gzip or none"),
            ));
        }
    };
    Ok(Raw { data, enc, _budget: budget })
}

fn refused(enc: Encoding, why: Refused) -> Response {
    let status = match why {
        Refused::QueueFull => StatusCode::TOO_MANY_REQUESTS,
        Refused::Log => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut r = error(status, enc, 14, why.message().to_owned());
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER.as_secs()));
    r
}

async fn traces(State(ingest): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> Response {
    // Protobuf is decoded lean, straight from the body; JSON through the full types.
    let parsed = match read(&ingest, &headers, body).await {
        Ok(raw) => parse(&ingest, raw, lite::TraceRequest::decode, |data| {
            serde_json::from_slice::<ExportTraceServiceRequest>(data).map(|full| lite::TraceRequest::from_full(&full))
        }),
        Err(r) => return r,
    };
    let d = match parsed {
        Ok(d) => d,
        Err(r) => return r,
    };
    match ingest.accept_traces(d.msg, d.bytes).await {
        Ok((rejected, message)) => {
            let partial_success = (rejected > 0)
                .then_some(ExportTracePartialSuccess { rejected_spans: rejected, error_message: message });
            reply(StatusCode::OK, d.enc, &ExportTraceServiceResponse { partial_success })
        }
        Err(why) => refused(d.enc, why),
    }
}

async fn metrics(State(ingest): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> Response {
    let d = match decode::<ExportMetricsServiceRequest>(&ingest, &headers, body).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    match ingest.accept_metrics(d.msg, d.bytes).await {
        Ok((rejected, message)) => {
            let partial_success = (rejected > 0)
                .then_some(ExportMetricsPartialSuccess { rejected_data_points: rejected, error_message: message });
            reply(StatusCode::OK, d.enc, &ExportMetricsServiceResponse { partial_success })
        }
        Err(why) => refused(d.enc, why),
    }
}

/// The OTLP/HTTP router.
pub(crate) fn router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .layer(DefaultBodyLimit::disable())
        .with_state(ingest)
}
