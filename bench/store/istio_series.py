#!/usr/bin/env python3
"""Writes Prometheus text exposition of Istio's standard metrics for a synthetic mesh: SERVICES
services in 10 namespaces, each calling CALLS others, every call reported by both proxies
(reporter="destination" and "source") with 200s and 503s, and the duration histogram with Istio's
default buckets. Counters grow with STEP (the scrape number), so a store scraping it sees traffic.

usage: istio_series.py SERVICES CALLS OUT_FILE   (rewrites OUT_FILE every 5 s, forever)
"""
import random
import sys
import time

BUCKETS = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
           600000, 1800000, 3600000]


def labels(reporter, src, dst, code):
    def end(prefix, s):
        ns, app = s
        return (f'{prefix}_workload="{app}-v1",{prefix}_workload_namespace="{ns}",'
                f'{prefix}_canonical_service="{app}",{prefix}_canonical_revision="v1",'
                f'{prefix}_app="{app}",{prefix}_version="v1",'
                f'{prefix}_principal="spiffe://cluster.local/ns/{ns}/sa/{app}",{prefix}_cluster="Kubernetes"')
    policy = "mutual_tls" if reporter == "destination" else "unknown"
    return (f'reporter="{reporter}",{end("source", src)},{end("destination", dst)},'
            f'destination_service="{dst[1]}.{dst[0]}.svc.cluster.local",destination_service_name="{dst[1]}",'
            f'destination_service_namespace="{dst[0]}",request_protocol="http",response_code="{code}",'
            f'grpc_response_status="",response_flags="-",connection_security_policy="{policy}"')


def main():
    n, calls, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    rng = random.Random(7)
    services = [(f"ns{i % 10}", f"svc{i:03d}") for i in range(n)]
    edges = []
    for i, s in enumerate(services):
        for d in rng.sample(range(n), calls):
            if d != i:
                edges.append((s, services[d], 1 + rng.random() * 40))
    step = 0
    while True:
        step += 1
        lines = ["# TYPE istio_requests_total counter"]
        hist = ["# TYPE istio_request_duration_milliseconds histogram"]
        for src, dst, ms in edges:
            for reporter in ("destination", "source"):
                for code, share in (("200", 0.98), ("503", 0.02)):
                    count = int(step * 50 * share) + 1
                    l = labels(reporter, src, dst, code)
                    lines.append(f"istio_requests_total{{{l}}} {count}")
                    for le in BUCKETS:
                        hist.append(f'istio_request_duration_milliseconds_bucket{{{l},le="{le}"}} {count if ms <= le else 0}')
                    hist.append(f'istio_request_duration_milliseconds_bucket{{{l},le="+Inf"}} {count}')
                    hist.append(f"istio_request_duration_milliseconds_sum{{{l}}} {count * ms:.1f}")
                    hist.append(f"istio_request_duration_milliseconds_count{{{l}}} {count}")
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines + hist) + "\n")
        import os
        os.replace(tmp, out)
        time.sleep(5)


if __name__ == "__main__":
    main()
