#!/usr/bin/env bash
# The cost of mutual TLS between agents: a hop caller agent (outbound) -> callee agent (inbound) ->
# a small backend (nginx answering "ok"), once in plaintext and once with mTLS (TLS 1.3, SPIFFE
# identities from `meshlens ca`), in interleaved rounds. For each: CPU microseconds per request of
# both agents together at a fixed rate (RATE, default 3000 rps; /proc utime+stime over the run), p50
# and p99 with `meshlens load` (open loop, corrected for coordinated omission) sent to the caller's
# outbound port with the service in the Host header. Medians over ROUNDS (default 3). Handshakes per
# second come from `cargo bench -p meshlens-agent --bench agent -- tls`.
#
# Usage: bench/mtls.sh      (RATE, DURATION, CONNS, ROUNDS override the defaults; loopback only)
set -euo pipefail

RATE=${RATE:-3000}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-3}
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/meshlens-target}
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx >/dev/null
export PATH=$PATH:/usr/sbin
cargo build --release --locked -q
MESHLENS=$CARGO_TARGET_DIR/release/meshlens
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$work/backend.pid" ] && kill "$(cat "$work/backend.pid")" 2>/dev/null || true
    sleep 0.3
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

BACKEND=$(free_port)
cat >"$work/backend.conf" <<EOF
worker_processes 1;
pid $work/backend.pid;
error_log $work/backend.error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
       server { listen 127.0.0.1:$BACKEND; location / { return 200 "ok"; } } }
EOF
nginx -c "$work/backend.conf" -p "$work" -e "$work/backend.error.log"

"$MESHLENS" ca init --dir "$work/ca" >/dev/null
"$MESHLENS" ca issue --dir "$work/ca" --workload bench/a/v1 >/dev/null
"$MESHLENS" ca issue --dir "$work/ca" --workload bench/b/v1 >/dev/null

start_pair() { # name, tls(yes|no) -> writes $work/<name>.out_port and pids
    local name=$1 tls=$2 b_in b_admin a_out a_in a_admin tls_a="" tls_b=""
    b_in=$(free_port); b_admin=$(free_port); a_out=$(free_port); a_in=$(free_port); a_admin=$(free_port)
    if [ "$tls" = yes ]; then
        tls_a="tls: {cert: '$work/ca/bench-a-v1.pem', key: '$work/ca/bench-a-v1.key', ca: '$work/ca/ca.pem'}"
        tls_b="tls: {cert: '$work/ca/bench-b-v1.pem', key: '$work/ca/bench-b-v1.key', ca: '$work/ca/ca.pem'}"
    fi
    cat >"$work/$name-b.yaml" <<EOF
workload: {namespace: bench, app: b, version: v1}
inbound: {listen: '127.0.0.1:$b_in', app: '127.0.0.1:$BACKEND'}
admin: {listen: '127.0.0.1:$b_admin'}
$tls_b
EOF
    cat >"$work/$name-a.yaml" <<EOF
workload: {namespace: bench, app: a, version: v1}
inbound: {listen: '127.0.0.1:$a_in', app: '127.0.0.1:9'}
outbound: {listen: '127.0.0.1:$a_out'}
admin: {listen: '127.0.0.1:$a_admin'}
services: {b: {versions: {v1: ['127.0.0.1:$b_in']}}}
$tls_a
EOF
    MESHLENS_LOG=warn "$MESHLENS" agent --config "$work/$name-b.yaml" >"$work/$name-b.log" 2>&1 &
    pids+=($!); echo $! >"$work/$name.pids"
    MESHLENS_LOG=warn "$MESHLENS" agent --config "$work/$name-a.yaml" >"$work/$name-a.log" 2>&1 &
    pids+=($!); echo $! >>"$work/$name.pids"
    wait_port "$b_in"; wait_port "$a_out"
    echo "$a_out" >"$work/$name.port"
}
start_pair plain no
start_pair mtls yes

ticks() { local t=0; for p in $1; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
results=$work/results.jsonl
for round in $(seq "$ROUNDS"); do
    for t in plain mtls; do
        url="http://127.0.0.1:$(cat "$work/$t.port")/"
        ps=$(tr '\n' ' ' <"$work/$t.pids")
        "$MESHLENS" load "$url" --host b --rate 500 --duration 1s -c "$CONNS" -o json >/dev/null
        c0=$(ticks "$ps")
        "$MESHLENS" load "$url" --host b --rate "$RATE" --duration "$DURATION" -c "$CONNS" -o json >"$work/r.json"
        c1=$(ticks "$ps")
        python3 - "$t" "$round" "$((c1 - c0))" "$(getconf CLK_TCK)" "$work/r.json" >>"$results" <<'EOF'
import json, sys
t, rnd, ticks, hz, path = sys.argv[1:]
r = json.load(open(path))
print(json.dumps({"target": t, "round": int(rnd), "cpu_us": int(ticks) / int(hz) * 1e6 / max(r["responses"], 1),
    "p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"], "success": r["success_pct"], "achieved": r["achieved_rps"]}))
EOF
        echo "round $round $t done" >&2
    done
done
python3 - "$results" "$RATE" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
plain = {r["round"]: r for r in rows if r["target"] == "plain"}
def med(t, k): return statistics.median(r[k] for r in rows if r["target"] == t)
def added(k): return statistics.median(r[k] - plain[r["round"]][k] for r in rows if r["target"] == "mtls")
print(f"| hop (caller agent -> callee agent -> backend) | CPU µs/request, both agents @ {sys.argv[2]} rps | p50 ms | p99 ms | success |")
print("|---|---|---|---|---|")
for t in ["plain", "mtls"]:
    print(f"| {t} | {med(t, 'cpu_us'):.1f} | {med(t, 'p50'):.3f} | {med(t, 'p99'):.3f} | {med(t, 'success'):.2f}% |")
print(f"\nmTLS adds {added('cpu_us'):+.1f} µs CPU per request and {added('p50'):+.3f} ms at p50 ({added('p99'):+.3f} ms at p99); medians of {len(plain)} rounds")
EOF
