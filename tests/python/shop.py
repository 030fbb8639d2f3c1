"""A small multi-service shop traced with the real OpenTelemetry Python SDK.

frontend (v1) -> catalog (v1)
frontend (v1) -> checkout (v2) -> payments (v1)   every 5th payment answers 500

Each service has its own TracerProvider and resource, as separate processes would, and context
crosses each call through W3C traceparent headers. Span times are set explicitly so the test can
assert exact latencies: payments 20 ms, catalog 8 ms, checkout 50 ms, frontend 80 ms.

usage: shop.py --protocol grpc|http --endpoint URL --namespace NS --requests N
"""

import argparse
import time

from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

MS = 1_000_000


def provider(name, version, namespace, protocol, endpoint):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint + "/v1/traces")
    resource = Resource.create(
        {"service.name": name, "service.version": version, "service.namespace": namespace}
    )
    p = TracerProvider(resource=resource)
    p.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=256))
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocol", choices=["grpc", "http"], required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--requests", type=int, default=50)
    a = ap.parse_args()

    services = {
        "frontend": provider("frontend", "v1", a.namespace, a.protocol, a.endpoint),
        "catalog": provider("catalog", "v1", a.namespace, a.protocol, a.endpoint),
        "checkout": provider("checkout", "v2", a.namespace, a.protocol, a.endpoint),
        "payments": provider("payments", "v1", a.namespace, a.protocol, a.endpoint),
    }
    tracer = {name: p.get_tracer("shop") for name, p in services.items()}

    def serve(service, headers, start, duration_ms, status=200, calls=()):
        """A SERVER span for `service`, and a CLIENT span per downstream call.

        `calls` holds (callee, duration_ms, status, the callee's own calls).
        """
        span = tracer[service].start_span(
            f"GET /{service}", context=extract(headers), kind=SpanKind.SERVER, start_time=start,
            attributes={"http.request.method": "GET", "http.response.status_code": status},
        )
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        at = start + MS
        with trace.use_span(span, end_on_exit=False):
            for callee, callee_ms, callee_status, callee_calls in calls:
                client = tracer[service].start_span(
                    f"GET {callee}", kind=SpanKind.CLIENT, start_time=at,
                    attributes={"http.request.method": "GET", "server.address": callee,
                                "http.response.status_code": callee_status},
                )
                carrier = {}
                with trace.use_span(client, end_on_exit=False):
                    inject(carrier)
                serve(callee, carrier, at, callee_ms, callee_status, callee_calls)
                if callee_status >= 500:
                    client.set_status(Status(StatusCode.ERROR))
                client.end(end_time=at + (callee_ms + 1) * MS)
                at += (callee_ms + 2) * MS
        span.end(end_time=start + duration_ms * MS)

    now = time.time_ns()
    for i in range(a.requests):
        pay_status = 500 if i % 5 == 4 else 200
        payments = ("payments", 20, pay_status, ())
        calls = [("catalog", 8, 200, ()), ("checkout", 50, 200, (payments,))]
        serve("frontend", {}, now + i * 100 * MS, 80, 200, calls)

    for p in services.values():
        p.force_flush()
        p.shutdown()


if __name__ == "__main__":
    main()
