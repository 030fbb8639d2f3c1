//! OTLP/gRPC receiver (tonic): the trace and metrics services, gzip accepted, a decoding cap, and
//! `UNAVAILABLE` with `RetryInfo` when the ingest queue is full.
//!
//! The metrics service is `opentelemetry-proto`'s generated server. The trace service is written out
//! here because it decodes requests into the lean types of [`super::lite`] rather than the full
//! ones (the hot path of ingest); it speaks the same `TraceService/Export` method on the wire.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use prost::Message;
use tonic::codec::{CompressionEncoding, EnabledCompressionEncodings};
use tonic::codegen::{BoxFuture, http};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::{Ingest, RETRY_AFTER, Refused, lite};

fn unavailable(why: Refused) -> Status {
    Status::with_error_details(
        tonic::Code::Unavailable,
        why.message(),
        ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
    )
}

const EXPORT_TRACES: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The trace service, decoding into lean requests.
#[derive(Clone)]
pub(crate) struct Traces {
    ingest: Arc<Ingest>,
}

impl NamedService for Traces {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

struct ExportTraces(Arc<Ingest>);

impl tonic::server::UnaryService<lite::TraceRequest> for ExportTraces {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<ExportTraceServiceResponse>, Status>;

    fn call(&mut self, request: Request<lite::TraceRequest>) -> Self::Future {
        let ingest = self.0.clone();
        Box::pin(async move {
            let req = request.into_inner();
            let bytes = req.encoded_len();
            let (rejected, message) = ingest.accept_traces(req, bytes).await.map_err(unavailable)?;
            let partial_success = (rejected > 0)
                .then_some(ExportTracePartialSuccess { rejected_spans: rejected, error_message: message });
            Ok(Response::new(ExportTraceServiceResponse { partial_success }))
        })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Traces {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let ingest = self.ingest.clone();
        Box::pin(async move {
            if req.uri().path() != EXPORT_TRACES {
                return Ok(Status::unimplemented(format!("no method {}", req.uri().path())).into_http());
            }
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            let cap = ingest.max_request_bytes;
            let codec = tonic_prost::ProstCodec::<ExportTraceServiceResponse, lite::TraceRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec)
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(cap), None);
            let resp = grpc.unary(ExportTraces(ingest.clone()), charge(&ingest, req)).await;
            count_refusal(&ingest, &resp);
            Ok(resp)
        })
    }
}

/// An export's body that draws on the in-flight byte budget as its frames arrive (gRPC declares no
/// length up front), holding what it drew until it is dropped. Past the budget the body fails with
/// `UNAVAILABLE`, which tonic answers as such: retryable, as the OTLP/HTTP receiver's 503 is.
struct Charged {
    body: tonic::body::Body,
    budget: Arc<tokio::sync::Semaphore>,
    held: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Bytes received and not yet covered by a whole KiB permit.
    loose: usize,
    ingest: Arc<Ingest>,
}

impl http_body::Body for Charged {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        let this = self.get_mut();
        let frame = match std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => f,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            this.loose += data.len();
            let kib = u32::try_from(this.loose.div_ceil(1024)).unwrap_or(u32::MAX);
            match this.budget.clone().try_acquire_many_owned(kib) {
                Ok(p) => {
                    this.loose = this.loose.saturating_sub(kib as usize * 1024);
                    match &mut this.held {
                        Some(h) => h.merge(p),
                        None => this.held = Some(p),
                    }
                }
                Err(_) => {
                    this.ingest.counters.requests_refused_inflight.add(1);
                    return Poll::Ready(Some(Err(Status::with_error_details(
                        tonic::Code::Unavailable,
                        format!(
                            "the collector is reading its limit of {} bytes of uploads at once; retry later",
                            this.ingest.uploads.max_inflight_bytes
                        ),
                        ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
                    ))));
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// `req` with its body charged to the in-flight budget.
fn charge(ingest: &Arc<Ingest>, req: http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> {
    req.map(|body| {
        tonic::body::Body::new(Charged {
            body,
            budget: ingest.inflight.clone(),
            held: None,
            loose: 0,
            ingest: ingest.clone(),
        })
    })
}

/// Counts exports tonic refused before they reached a handler: over the size cap, or not
/// decodable. (A full queue is refused, and counted, by the handlers themselves.)
fn count_refusal(ingest: &Ingest, resp: &http::Response<tonic::body::Body>) {
    let code = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok());
    match code.map(tonic::Code::from_i32) {
        Some(tonic::Code::ResourceExhausted | tonic::Code::OutOfRange) => ingest.counters.requests_too_large.add(1),
        Some(tonic::Code::Internal | tonic::Code::InvalidArgument | tonic::Code::Unimplemented) => {
            ingest.counters.requests_malformed.add(1)
        }
        _ => {}
    }
}

/// The metrics service.
pub(crate) struct Metrics(pub Arc<Ingest>);

#[tonic::async_trait]
impl MetricsService for Metrics {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let req = request.into_inner();
        let bytes = req.encoded_len();
        let (rejected, message) = self.0.accept_metrics(req, bytes).await.map_err(unavailable)?;
        let partial_success = (rejected > 0)
            .then_some(ExportMetricsPartialSuccess { rejected_data_points: rejected, error_message: message });
        Ok(Response::new(ExportMetricsServiceResponse { partial_success }))
    }
}

/// The generated metrics server, with the exports tonic refuses counted like the trace service's.
#[derive(Clone)]
pub(crate) struct CountedMetrics {
    inner: MetricsServiceServer<Metrics>,
    ingest: Arc<Ingest>,
}

impl NamedService for CountedMetrics {
    const NAME: &'static str = <MetricsServiceServer<Metrics> as NamedService>::NAME;
}

impl tower::Service<http::Request<tonic::body::Body>> for CountedMetrics {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let fut = self.inner.call(charge(&self.ingest, req));
        let ingest = self.ingest.clone();
        Box::pin(async move {
            let resp = fut.await?;
            count_refusal(&ingest, &resp);
            Ok(resp)
        })
    }
}

/// The tonic router serving both services.
pub(crate) fn router(ingest: Arc<Ingest>) -> tonic::service::Routes {
    let cap = ingest.max_request_bytes;
    let metrics = MetricsServiceServer::new(Metrics(ingest.clone()))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(cap);
    tonic::service::Routes::new(Traces { ingest: ingest.clone() })
        .add_service(CountedMetrics { inner: metrics, ingest })
}
