#!/usr/bin/env bash
# The web view's benchmark: a collector holding a graph of NODES workloads (apps of 10 versions)
# and 3 x NODES edges (sent as OTLP/HTTP JSON span pairs), then bench/web-render.mjs in Debian's
# chromium measures the first render (median of ROUNDS fresh pages) and frame times while panning.
#
# Usage: bench/web.sh       (NODES, ROUNDS override; needs chromium and playwright-core, which
#                            .ci/setup installs; loopback only)
set -euo pipefail
NODES=${NODES:-1000}
ROUNDS=${ROUNDS:-5}
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/meshlens-target}
.ci/setup >/dev/null
cargo build --release --locked -q
MESHLENS=$CARGO_TARGET_DIR/release/meshlens
NODE_DIR=${MESHLENS_NODE_DIR:-/var/tmp/meshlens-node}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API=$(free_port); GRPC=$(free_port); HTTP=$(free_port)
"$MESHLENS" collector --in-memory --http "127.0.0.1:$API" --otlp-grpc "127.0.0.1:$GRPC" --otlp-http "127.0.0.1:$HTTP" >/dev/null 2>&1 &
COLLECTOR=$!
trap 'kill $COLLECTOR 2>/dev/null || true' EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$HTTP") 2>/dev/null && break; sleep 0.05; done

python3 - "$HTTP" "$NODES" <<'PY'
import json, random, sys, time, urllib.request
port, nodes = sys.argv[1], int(sys.argv[2])
apps = nodes // 10
rnd = random.Random(11)
now = time.time_ns()
seen = []
have = set()
def add(s, t):
    if s // 10 != t // 10 and (s, t) not in have:
        have.add((s, t))
        seen.append((s, t))
# Every node gets an edge: each calls one of a later app, and the last app is called.
for s in range(nodes - 10):
    add(s, min(apps - 1, s // 10 + 1 + rnd.randrange(20)) * 10 + rnd.randrange(10))
for t in range(nodes - 10, nodes):
    add((apps - 2) * 10 + rnd.randrange(10), t)
while len(seen) < 3 * nodes:
    s = rnd.randrange(nodes)
    add(s, min(apps - 1, s // 10 + 1 + rnd.randrange(20)) * 10 + rnd.randrange(10))
by_node = {}
for k, (s, t) in enumerate(seen):
    trace = f"{k + 1:032x}"
    client, server = f"{2 * k + 1:016x}", f"{2 * k + 2:016x}"
    by_node.setdefault(s, []).append({"traceId": trace, "spanId": client, "name": "GET", "kind": 3,
        "startTimeUnixNano": str(now), "endTimeUnixNano": str(now + 2_000_000)})
    by_node.setdefault(t, []).append({"traceId": trace, "spanId": server, "parentSpanId": client, "name": "GET", "kind": 2,
        "startTimeUnixNano": str(now), "endTimeUnixNano": str(now + 1_000_000),
        "attributes": [{"key": "http.response.status_code", "value": {"intValue": "200"}}]})
resource_spans = [{"resource": {"attributes": [
    {"key": "service.namespace", "value": {"stringValue": "bench"}},
    {"key": "service.name", "value": {"stringValue": f"app{n // 10:03d}"}},
    {"key": "service.version", "value": {"stringValue": f"v{n % 10}"}}]},
    "scopeSpans": [{"spans": spans}]} for n, spans in by_node.items()]
body = json.dumps({"resourceSpans": resource_spans}).encode()
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/traces", data=body, headers={"content-type": "application/json"})
urllib.request.urlopen(req).read()
PY
# Wait until the published graph holds them all.
n=0
for _ in $(seq 200); do
    n=$(curl -s "http://127.0.0.1:$API/api/v1/graph" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["nodes"]))' 2>/dev/null || echo 0)
    [ "${n:-0}" -ge "$NODES" ] && break
    sleep 0.1
done
echo "graph: $n nodes" >&2
cp bench/web-render.mjs "$NODE_DIR/"
node "$NODE_DIR/web-render.mjs" "http://127.0.0.1:$API/" "$n" "$ROUNDS"
