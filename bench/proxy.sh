#!/usr/bin/env bash
# The proxy benchmark: the agent (inbound -> app, telemetry on, tracing at 1%) against a direct
# connection and against nginx and haproxy as reverse proxies, all in front of the same small
# backend (an nginx answering "ok"), in one run on this machine. Three more agent targets price the
# request path's features against their plain twin in the same run:
#   - agent+tap: a second inbound agent with a `meshlens tap` open on it for the whole run (every
#     request checked against the tap, 100 a second sampled and streamed to the collector);
#   - outbound: an agent's outbound listener (the app's side, Host: backend) straight to the backend;
#   - outbound+routes: the same with three routes declared for the service that "/" does not match,
#     so every request tries all three before [default] (the most a route table costs here).
#
# For each target, in interleaved rounds (so drift on a shared machine hits all alike), it measures:
#   - CPU microseconds per request at a fixed rate (RATE, default 5000 rps): the proxy processes'
#     utime+stime from /proc over the run, divided by the responses;
#   - p50 and p99 at that rate with `meshlens load` (open loop, corrected for coordinated omission),
#     and the added p50/p99 against the direct connection of the same round;
#   - RSS of the proxy at HIGH rps (default 8000);
#   - maximum throughput with wrk (closed loop, 2 threads, 64 connections).
# Medians over ROUNDS (default 3) are printed as a markdown table for docs/PERFORMANCE.md.
#
# Usage: bench/proxy.sh            (RATE, HIGH, DURATION, CONNS, ROUNDS override the defaults)
# Needs: nginx, haproxy, wrk (installed from Debian if missing), python3. Loopback only.
set -euo pipefail

RATE=${RATE:-5000}
HIGH=${HIGH:-8000}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/meshlens-target}

missing=()
for p in nginx haproxy wrk; do command -v "$p" >/dev/null || [ -x "/usr/sbin/$p" ] || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} from Debian" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
export PATH=$PATH:/usr/sbin

cargo build --release --locked -q
MESHLENS=$CARGO_TARGET_DIR/release/meshlens
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$work/backend.pid" ] && kill "$(cat "$work/backend.pid")" 2>/dev/null || true
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    sleep 0.3
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND=$(free_port); NGINX=$(free_port); HAPROXY=$(free_port); AGENT=$(free_port); ADMIN=$(free_port)
GRPC=$(free_port); OTLPHTTP=$(free_port); API=$(free_port)
TAPPED=$(free_port); TAPPED_ADMIN=$(free_port); OUT=$(free_port); OUT_ADMIN=$(free_port)
ROUTED=$(free_port); ROUTED_ADMIN=$(free_port); OUT_IN=$(free_port); ROUTED_IN=$(free_port)

nginx_conf() { # name, port, workers, body
    cat >"$work/$1.conf" <<EOF
worker_processes $3;
pid $work/$1.pid;
error_log $work/$1.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream backend { server 127.0.0.1:$BACKEND; keepalive 128; }
    server {
        listen 127.0.0.1:$2 reuseport;
        location / { $4 }
    }
}
EOF
}
nginx_conf backend "$BACKEND" 1 'return 200 "ok";'
nginx_conf nginx "$NGINX" 2 'proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";'
nginx -c "$work/backend.conf" -p "$work" -e "$work/backend.error.log"
nginx -c "$work/nginx.conf" -p "$work" -e "$work/nginx.error.log"

cat >"$work/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend f
    bind 127.0.0.1:$HAPROXY
    default_backend b
backend b
    http-reuse always
    server s1 127.0.0.1:$BACKEND
EOF
haproxy -f "$work/haproxy.cfg" -q &
pids+=($!); HAPROXY_PID=$!

"$MESHLENS" collector --in-memory --otlp-grpc "127.0.0.1:$GRPC" --otlp-http "127.0.0.1:$OTLPHTTP" --http "127.0.0.1:$API" >"$work/collector.log" 2>&1 &
pids+=($!)
inbound_yaml() { # app, port, admin port
    cat <<EOF
workload: {namespace: bench, app: $1, version: v1}
inbound: {listen: '127.0.0.1:$2', app: '127.0.0.1:$BACKEND'}
admin: {listen: '127.0.0.1:$3'}
telemetry: {collector: 'http://127.0.0.1:$GRPC', interval: 5s, sampling: 0.01}
EOF
}
inbound_yaml backend "$AGENT" "$ADMIN" >"$work/agent.yaml"
inbound_yaml tapped "$TAPPED" "$TAPPED_ADMIN" >"$work/tapped.yaml"
MESHLENS_LOG=warn "$MESHLENS" agent --config "$work/agent.yaml" >"$work/agent.log" 2>&1 &
pids+=($!); AGENT_PID=$!
MESHLENS_LOG=warn "$MESHLENS" agent --config "$work/tapped.yaml" >"$work/tapped.log" 2>&1 &
pids+=($!); TAPPED_PID=$!
outbound_yaml() { # app, port, admin port, inbound port (unused), policy
    cat <<EOF
workload: {namespace: bench, app: $1, version: v1}
inbound: {listen: '127.0.0.1:$4', app: '127.0.0.1:$BACKEND'}
outbound: {listen: '127.0.0.1:$2'}
admin: {listen: '127.0.0.1:$3'}
telemetry: {collector: 'http://127.0.0.1:$GRPC', interval: 5s, sampling: 0.01}
services:
  backend:
    versions:
      v1: ['127.0.0.1:$BACKEND']
$5
EOF
}
outbound_yaml caller "$OUT" "$OUT_ADMIN" "$OUT_IN" "" >"$work/out.yaml"
outbound_yaml router "$ROUTED" "$ROUTED_ADMIN" "$ROUTED_IN" "policy:
  services:
    backend:
      routes:
        - matches: [{method: GET, path: {type: Template, value: '/books/{id}/reviews'}}]
        - name: api
          matches: [{path: {type: PathPrefix, value: /api}}]
        - name: canary
          matches: [{path: {type: PathPrefix, value: /}, headers: [{name: x-canary, value: 'yes'}]}]" >"$work/routed.yaml"
MESHLENS_LOG=warn "$MESHLENS" agent --config "$work/out.yaml" >"$work/out.log" 2>&1 &
pids+=($!); OUT_PID=$!
MESHLENS_LOG=warn "$MESHLENS" agent --config "$work/routed.yaml" >"$work/routed.log" 2>&1 &
pids+=($!); ROUTED_PID=$!

wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; tail -n 5 "$work"/*.log >&2; exit 1; }
for p in $BACKEND $NGINX $HAPROXY $AGENT $TAPPED $OUT $ROUTED $API; do wait_port "$p"; done
# The tap stays open for the whole run; its stderr says when the agent applied it.
"$MESHLENS" tap tapped --collector "http://127.0.0.1:$API" -o json >/dev/null 2>"$work/tap.err" &
pids+=($!)
for _ in $(seq 100); do grep -q "1 of 1 agents tapping" "$work/tap.err" 2>/dev/null && break; sleep 0.1; done
grep -q "1 of 1 agents tapping" "$work/tap.err" || { echo "the tap never opened:" >&2; cat "$work/tap.err" >&2; exit 1; }

NGINX_MASTER=$(cat "$work/nginx.pid")
proc_pids() { # target -> the processes that do its work
    case $1 in
        direct) echo "" ;;
        nginx) echo "$NGINX_MASTER $(pgrep -P "$NGINX_MASTER" | tr '\n' ' ')" ;;
        haproxy) echo "$HAPROXY_PID" ;;
        agent) echo "$AGENT_PID" ;;
        agent+tap) echo "$TAPPED_PID" ;;
        outbound) echo "$OUT_PID" ;;
        outbound+routes) echo "$ROUTED_PID" ;;
    esac
}
port_of() {
    case $1 in
        direct) echo "$BACKEND" ;; nginx) echo "$NGINX" ;; haproxy) echo "$HAPROXY" ;; agent) echo "$AGENT" ;;
        agent+tap) echo "$TAPPED" ;; outbound) echo "$OUT" ;; outbound+routes) echo "$ROUTED" ;;
    esac
}
host_of() { case $1 in outbound*) echo "--host backend" ;; *) echo "" ;; esac; }
wrk_host() { case $1 in outbound*) echo "-H Host:backend" ;; *) echo "" ;; esac; }
ticks() { local t=0; for p in $1; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
rss_kib() { local t=0; for p in $1; do t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done; echo "$t"; }

TARGETS=(direct nginx haproxy agent agent+tap outbound outbound+routes)
results=$work/results.jsonl
for round in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        url="http://127.0.0.1:$(port_of "$t")/"
        ps=$(proc_pids "$t")
        # shellcheck disable=SC2046 # the host flags are meant to split
        "$MESHLENS" load "$url" $(host_of "$t") --rate 1000 --duration 1s -c "$CONNS" -o json >/dev/null
        c0=$(ticks "$ps")
        # shellcheck disable=SC2046
        "$MESHLENS" load "$url" $(host_of "$t") --rate "$RATE" --duration "$DURATION" -c "$CONNS" -o json >"$work/fixed.json"
        c1=$(ticks "$ps")
        # shellcheck disable=SC2046
        "$MESHLENS" load "$url" $(host_of "$t") --rate "$HIGH" --duration 5s -c "$CONNS" -o json >"$work/high.json" &
        lp=$!
        sleep 4
        rss=$(rss_kib "$ps")
        wait "$lp"
        # shellcheck disable=SC2046
        rps=$(wrk -t2 -c64 -d5s $(wrk_host "$t") "$url" | awk '/Requests\/sec/ {print $2}')
        python3 - "$t" "$round" "$((c1 - c0))" "$(getconf CLK_TCK)" "$rss" "$rps" "$work/fixed.json" "$work/high.json" >>"$results" <<'EOF'
import json, sys
t, rnd, ticks, hz, rss, rps, fixed, high = sys.argv[1:]
f = json.load(open(fixed)); h = json.load(open(high))
print(json.dumps({"target": t, "round": int(rnd), "cpu_us": int(ticks) / int(hz) * 1e6 / max(f["responses"], 1),
    "p50": f["latency_ms"]["p50"], "p99": f["latency_ms"]["p99"], "achieved": f["achieved_rps"],
    "success": f["success_pct"], "high_achieved": h["achieved_rps"], "rss_mib": int(rss) / 1024, "max_rps": float(rps)}))
EOF
        echo "round $round $t done" >&2
    done
done

python3 - "$results" "$RATE" "$HIGH" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rate, high = sys.argv[2], sys.argv[3]
direct = {r["round"]: r for r in rows if r["target"] == "direct"}
def med(t, k): return statistics.median(r[k] for r in rows if r["target"] == t)
def added(t, k): return statistics.median(r[k] - direct[r["round"]][k] for r in rows if r["target"] == t)
print(f"| target | CPU µs/request @ {rate} rps | p50 ms | p99 ms | added p50 ms | added p99 ms | RSS MiB @ {high} rps | max rps (wrk) |")
print("|---|---|---|---|---|---|---|---|")
TARGETS = ["direct", "nginx", "haproxy", "agent", "agent+tap", "outbound", "outbound+routes"]
for t in TARGETS:
    cpu = "—" if t == "direct" else f"{med(t, 'cpu_us'):.1f}"
    rss = "—" if t == "direct" else f"{med(t, 'rss_mib'):.1f}"
    print(f"| {t} | {cpu} | {med(t, 'p50'):.3f} | {med(t, 'p99'):.3f} | {added(t, 'p50'):+.3f} | {added(t, 'p99'):+.3f} | {rss} | {med(t, 'max_rps'):.0f} |")
agent_cpu, nginx_cpu = med("agent", "cpu_us"), med("nginx", "cpu_us")
print(f"\nagent/nginx CPU per request: {agent_cpu / nginx_cpu:.2f} (goal <= 1.0); "
      f"added p50 agent - nginx: {added('agent', 'p50') - added('nginx', 'p50'):+.3f} ms (goal <= +0.05)")
def paired(t, base): return statistics.median(r["cpu_us"] - next(b["cpu_us"] for b in rows if b["target"] == base and b["round"] == r["round"]) for r in rows if r["target"] == t)
print(f"a tap open: {paired('agent+tap', 'agent'):+.1f} µs CPU per request (agent+tap - agent, median of per-round differences); "
      f"three routes tried: {paired('outbound+routes', 'outbound'):+.1f} µs (outbound+routes - outbound)")
print(f"medians of {len(direct)} rounds; achieved rates at {rate} rps: " + ", ".join(f"{t} {med(t, 'achieved'):.0f}" for t in TARGETS))
print("success %: " + ", ".join(f"{t} {med(t, 'success'):.2f}" for t in TARGETS))
EOF
