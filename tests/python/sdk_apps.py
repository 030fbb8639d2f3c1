"""One service of a small shop, instrumented as a Python user instruments one: the OpenTelemetry
SDK with a periodic metric reader (metrics on) and the flask (wsgi), requests and grpcio
instrumentations with their defaults — so the SDK's own HTTP duration metrics go out beside the
spans, in old semantic conventions by default, or new ones with OTEL_SEMCONV_STABILITY_OPT_IN=http.

usage: sdk_apps.py ROLE --endpoint URL --namespace NS [--inventory URL --users HOST:PORT]

  inventory  flask; answers 200
  users      a gRPC server (grpcio, generic handler, no codegen): /shop.Users/Get answers OK, but
             NOT_FOUND to every 4th call and UNAVAILABLE to every 5th
  web        flask; for each request calls inventory (requests), users (grpcio) and a Redis
             (a CLIENT span as the redis instrumentation writes it, old or new conventions)

Prints `listening PORT` once serving; SIGTERM flushes every span and metric point and exits.
Exports over OTLP/gRPC.
"""

import argparse
import logging
import os
import signal
import sys
import threading

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind


def setup(role, namespace, endpoint):
    resource = Resource.create({"service.name": role, "service.version": "v1", "service.namespace": namespace})
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True), schedule_delay_millis=100))
    trace.set_tracer_provider(tp)
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint, insecure=True), export_interval_millis=300)
    mp = MeterProvider(resource=resource, metric_readers=[reader])
    metrics.set_meter_provider(mp)
    return tp, mp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["inventory", "users", "web"])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--inventory")
    ap.add_argument("--users")
    a = ap.parse_args()
    tp, mp = setup(a.role, a.namespace, a.endpoint)
    stop = threading.Event()

    def on_term(*_):
        stop.set()

    signal.signal(signal.SIGTERM, on_term)

    if a.role == "users":
        import grpc
        from concurrent import futures
        from opentelemetry.instrumentation.grpc import GrpcInstrumentorServer

        GrpcInstrumentorServer().instrument()
        calls = {"n": 0}

        def get(request, context):
            calls["n"] += 1
            n = calls["n"]
            if n % 5 == 0:
                context.abort(grpc.StatusCode.UNAVAILABLE, "users is draining")
            if n % 4 == 0:
                context.abort(grpc.StatusCode.NOT_FOUND, "no such user")
            return b"user"

        handler = grpc.method_handlers_generic_handler(
            "shop.Users", {"Get": grpc.unary_unary_rpc_method_handler(get)}
        )
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        print(f"listening {port}", flush=True)
        stop.wait()
        server.stop(0).wait()
    else:
        from flask import Flask
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from werkzeug.serving import make_server

        app = Flask(a.role)
        if a.role == "web":
            import grpc
            import requests
            from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient
            from opentelemetry.instrumentation.requests import RequestsInstrumentor

            RequestsInstrumentor().instrument()
            GrpcInstrumentorClient().instrument()
            channel = grpc.insecure_channel(a.users)
            users_get = channel.unary_unary("/shop.Users/Get")
            tracer = trace.get_tracer("shop")
            new = "http" in os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "")

            @app.route("/")
            def index():
                requests.get(a.inventory, timeout=5).raise_for_status()
                try:
                    users_get(b"u1", timeout=5)
                except grpc.RpcError:
                    pass
                # What the redis instrumentation writes, in the conventions this process speaks.
                attrs = (
                    {"db.system.name": "redis", "server.address": "cache.local", "server.port": 6379,
                     "db.operation.name": "GET", "db.query.text": "GET cart:1"}
                    if new
                    else {"db.system": "redis", "net.peer.name": "cache.local", "net.peer.port": 6379,
                          "db.statement": "GET cart:1"}
                )
                with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes=attrs):
                    pass
                return "web ok\n"
        else:

            @app.route("/items")
            def items():
                return "inventory ok\n"

        FlaskInstrumentor().instrument_app(app)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        print(f"listening {server.server_port}", flush=True)
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        stop.wait()
        server.shutdown()
    tp.shutdown()
    mp.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
