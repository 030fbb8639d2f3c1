//! OTLP/gRPC receiver (tonic): the trace and metrics services, gzip accepted, a decoding cap, and
//! `UNAVAILABLE` with `RetryInfo` when the ingest queue is full.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::{Ingest, QueueFull, RETRY_AFTER};

fn unavailable(_: QueueFull) -> Status {
    Status::with_error_details(
        tonic::Code::Unavailable,
        "ingest queue is full; retry later",
        ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
    )
}

/// The trace service.
pub struct Traces(pub Arc<Ingest>);
/// The metrics service.
pub struct Metrics(pub Arc<Ingest>);

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let req = request.into_inner();
        let bytes = req.encoded_len();
        let (rejected, message) = self.0.accept_traces(req, bytes).map_err(unavailable)?;
        let partial_success =
            (rejected > 0).then_some(ExportTracePartialSuccess { rejected_spans: rejected, error_message: message });
        Ok(Response::new(ExportTraceServiceResponse { partial_success }))
    }
}

#[tonic::async_trait]
impl MetricsService for Metrics {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let req = request.into_inner();
        let bytes = req.encoded_len();
        let (rejected, message) = self.0.accept_metrics(req, bytes).map_err(unavailable)?;
        let partial_success = (rejected > 0)
            .then_some(ExportMetricsPartialSuccess { rejected_data_points: rejected, error_message: message });
        Ok(Response::new(ExportMetricsServiceResponse { partial_success }))
    }
}

/// The tonic router serving both services.
pub fn router(ingest: Arc<Ingest>) -> tonic::service::Routes {
    let cap = ingest.max_request_bytes;
    let traces = TraceServiceServer::new(Traces(ingest.clone()))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(cap);
    let metrics = MetricsServiceServer::new(Metrics(ingest))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(cap);
    tonic::service::Routes::new(traces).add_service(metrics)
}
