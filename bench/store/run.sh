#!/usr/bin/env bash
# The --prometheus source at mesh size: a Prometheus (Debian's) scraping Istio's standard metrics
# of SERVICES services (bench/store/istio_series.py: both reporters, 200s and 503s, the duration
# histogram), then `meshlens graph --prometheus` (a backfill of one minute: a range query per
# metric, then an instant poll of each) timed against the store's own answer to the heaviest
# instant query meshlens sends (the peer in the same run).
# Medians of RUNS. Loopback only; everything it starts is stopped on exit.
#
# usage: bench/store/run.sh [SERVICES=300] [CALLS=3] [RUNS=5]
set -euo pipefail
cd "$(dirname "$0")/../.."
SERVICES="${1:-300}"; CALLS="${2:-3}"; RUNS="${3:-5}"
BIN="${MESHLENS_BIN:-${CARGO_TARGET_DIR:-target}/release/meshlens}"
[ -x "$BIN" ] || cargo build --release -q --bin meshlens
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
mkdir -p "$dir/www"
python3 bench/store/istio_series.py "$SERVICES" "$CALLS" "$dir/www/metrics" & pids+=($!)
web_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
prom_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$dir/www" && exec python3 -m http.server --bind 127.0.0.1 "$web_port" >/dev/null 2>&1) & pids+=($!)
cat > "$dir/prometheus.yml" <<YAML
global:
  scrape_interval: 5s
scrape_configs:
  - job_name: istio
    static_configs:
      - targets: ['127.0.0.1:$web_port']
YAML
prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
  --web.listen-address="127.0.0.1:$prom_port" >/dev/null 2>&1 & pids+=($!)
url="http://127.0.0.1:$prom_port"
q() { curl -sf "$url/api/v1/query" --data-urlencode "query=$1" | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)'; }
until [ "$(q 'count(istio_request_duration_milliseconds_bucket)' 2>/dev/null || echo 0)" != "0" ]; do sleep 1; done
sleep 12   # a few scrapes, so the window has increases
series=$(q 'count({__name__=~"istio_.*"})')
edges=$(q 'count(count by (source_workload, destination_workload) (istio_requests_total))')
echo "store: $series Istio series, $edges edges ($SERVICES services)"
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for i in $(seq "$RUNS"); do
  s=$(date +%s.%N)
  curl -sf -o /dev/null "$url/api/v1/query" --data-urlencode 'query=istio_request_duration_milliseconds_bucket{reporter="destination"} or istio_request_duration_milliseconds_bucket{reporter="source",destination_workload="unknown"}'
  e=$(date +%s.%N); echo "$e - $s" | bc
done | median > "$dir/peer"
for i in $(seq "$RUNS"); do
  s=$(date +%s.%N)
  "$BIN" graph --prometheus "$url" --prometheus-dialect istio -o json > "$dir/graph.json"
  e=$(date +%s.%N); echo "$e - $s" | bc
done | median > "$dir/ours"
got=$(python3 -c "import json; g=json.load(open('$dir/graph.json')); print(len(g['nodes']), len(g['edges']))")
peak=$( { /usr/bin/time -f %M "$BIN" graph --prometheus "$url" --prometheus-dialect istio -o json >/dev/null; } 2>&1 | tail -1)
echo "graph: nodes edges = $got; peak RSS ${peak} KiB"
printf 'the store answering the bucket query once (the peer): %.3f s (median of %s)\n' "$(cat "$dir/peer")" "$RUNS"
printf 'meshlens graph --prometheus (2 range + 2 instant queries, views): %.3f s (median of %s) = %.1f x one bucket query\n' \
  "$(cat "$dir/ours")" "$RUNS" "$(echo "$(cat "$dir/ours") / $(cat "$dir/peer")" | bc -l)"
