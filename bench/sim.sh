#!/usr/bin/env bash
# The simulator against SimPy, in one run on this machine: M/M/1 at rho 0.8 (arrivals 80/s,
# exponential service of mean 10 ms, one server), as customers simulated per second of wall time.
# meshlens runs `meshlens sim` on a generated scenario (CUSTOMERS, default 16M; one seed); SimPy
# (4.1.2 from PyPI, in its own venv) runs the textbook model (a Resource of capacity 1, a process
# per customer; SIMPY_CUSTOMERS, default 1M, since it is a hundred times slower) and records each
# response time, as meshlens does into its histogram. ROUNDS (default 3) interleaved rounds; medians.
#
# Usage: bench/sim.sh       (CUSTOMERS, SIMPY_CUSTOMERS, ROUNDS override the defaults)
set -euo pipefail

CUSTOMERS=${CUSTOMERS:-16000000}
SIMPY_CUSTOMERS=${SIMPY_CUSTOMERS:-1000000}
ROUNDS=${ROUNDS:-3}
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/meshlens-target}
VENV=${MESHLENS_BENCH_VENV:-/var/tmp/meshlens-bench-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import simpy' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check simpy==4.1.2
fi
cargo build --release --locked -q
MESHLENS=$CARGO_TARGET_DIR/release/meshlens
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

seconds=$((CUSTOMERS / 80))
cat > "$work/mm1.yaml" <<YAML
duration: ${seconds}s
arrivals: {rate: 80}
entry: s
services:
  s:
    versions:
      v1: {concurrency: 1, service_time: {exponential: 10ms}}
YAML

cat > "$work/mm1.py" <<'PY'
import random, sys, time
import simpy

def run(n):
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)
    rng = random.Random(1)
    times = []
    def customer():
        arrived = env.now
        with server.request() as req:
            yield req
            yield env.timeout(rng.expovariate(100.0))
        times.append(env.now - arrived)
    def arrivals():
        for _ in range(n):
            yield env.timeout(rng.expovariate(80.0))
            env.process(customer())
    env.process(arrivals())
    start = time.perf_counter()
    env.run()
    wall = time.perf_counter() - start
    times.sort()
    print(f"{n / wall:.0f} {sum(times) / len(times) * 1000:.2f}")

run(int(sys.argv[1]))
PY

mine=(); theirs=()
for r in $(seq "$ROUNDS"); do
    start=$(date +%s.%N)
    out=$("$MESHLENS" sim "$work/mm1.yaml" --seeds 1 -o json)
    end=$(date +%s.%N)
    n=$(printf '%s' "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(int(r["rows"][0]["offered_rps"]["median"] * '"$seconds"'))')
    mean=$(printf '%s' "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.2f" % r["rows"][0]["mean_ms"]["median"])')
    rate=$(python3 -c "print(f'{$n / ($end - $start):.0f}')")
    mine+=("$rate")
    read -r simpy_rate simpy_mean < <("$VENV/bin/python" "$work/mm1.py" "$SIMPY_CUSTOMERS")
    theirs+=("$simpy_rate")
    echo "round $r: meshlens $n customers, $rate/s (mean response ${mean} ms); SimPy $SIMPY_CUSTOMERS customers, $simpy_rate/s (mean ${simpy_mean} ms); theory 50 ms" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m=$(median "${mine[@]}"); s=$(median "${theirs[@]}")
echo "| M/M/1 at rho 0.8 | meshlens sim | SimPy 4.1.2 | ratio |"
echo "|---|---|---|---|"
echo "| customers per second (median of $ROUNDS) | $m | $s | $(python3 -c "print(f'{$m / $s:.0f}x')") |"
