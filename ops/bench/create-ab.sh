#!/usr/bin/env bash
# API creates side by side for two keel binaries: for each round and each binary in turn, a
# fresh three-member cluster on loopback (fsync on, `--runtime-threads 1`, no control loops,
# as ops/bench/api.sh runs it) takes `keel bench api create` for DURATION; the script prints
# each run's rate and latency, the CPU each member and the load generator spent per create
# (from /proc/<pid>/stat over the run) and the members' resident memory after it, then the
# median rate per binary.
#
#   KEEL_A=old/keel KEEL_B=target/release/keel ops/bench/create-ab.sh
#   KIND=configmap ROUNDS=3 DURATION=10s KEEL_A=... KEEL_B=... ops/bench/create-ab.sh
set -euo pipefail

KEEL_A=${KEEL_A:?the first keel binary}
KEEL_B=${KEEL_B:?the second keel binary}
KIND=${KIND:-pod}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10s}
CLIENTS=${CLIENTS:-64}
for k in "$KEEL_A" "$KEEL_B"; do [ -x "$k" ] || { echo "$k not found" >&2; exit 1; }; done
[[ $DURATION =~ ^[0-9]+s$ ]] && [ "${DURATION%s}" -ge 4 ] || { echo "DURATION must be whole seconds, at least 4s" >&2; exit 1; }

work=$(mktemp -d /tmp/keel-create-ab.XXXXXX)
pids=()
stop() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
trap 'stop; rm -rf "$work"' EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run BINARY LABEL: one cluster, one measured run; appends "LABEL RATE" to $work/rates.
run() {
  local keel=$1 label=$2 dir="$work/$2-$RANDOM" i
  local cluster="a1=127.0.0.51:2380,a2=127.0.0.52:2380,a3=127.0.0.53:2380"
  mkdir -p "$dir"
  for i in 1 2 3; do
    "$keel" server --name "a$i" --data-dir "$dir/a$i" \
      --listen-peer "127.0.0.5$i:2380" --listen-client "127.0.0.5$i:2379" --listen-api "127.0.0.5$i:6443" \
      --initial-cluster "$cluster" --runtime-threads 1 --log-level warn --control-loops false 2>"$dir/a$i.log" &
    pids+=($!)
  done
  for _ in $(seq 100); do
    curl -sf http://127.0.0.51:6443/api/v1/namespaces/default >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -sf http://127.0.0.51:6443/api/v1/namespaces/default >/dev/null || { echo "$label: cluster did not start" >&2; exit 1; }
  "$keel" bench api --servers 127.0.0.51:6443,127.0.0.52:6443,127.0.0.53:6443 \
    create --kind "$KIND" --clients "$CLIENTS" --duration "$DURATION" >"$dir/out" &
  local bench=$! watched=("${pids[@]}")
  watched+=("$bench")
  local -A before
  sleep 1
  local started=$SECONDS
  for p in "${watched[@]}"; do before[$p]=$(cpu_ticks "$p"); done
  local -A after
  # Read the counters just before the bench ends (its run lasts DURATION from its start).
  sleep "$(( ${DURATION%s} - 2 ))"
  for p in "${watched[@]}"; do after[$p]=$(cpu_ticks "$p"); done
  local seconds=$(( SECONDS - started ))
  wait "$bench"
  local rate
  rate=$(sed -n 's/.* = \([0-9]*\)\/s .*/\1/p' "$dir/out")
  [ -n "$rate" ] || { echo "$label: no rate in: $(cat "$dir/out")" >&2; exit 1; }
  local hz cpu="" rss=""
  hz=$(getconf CLK_TCK)
  for p in "${watched[@]}"; do
    cpu+=$(python3 -c "print(f' {(${after[$p]} - ${before[$p]}) * 1e6 / $hz / max($seconds, 1) / $rate:.0f}')")
  done
  for p in "${pids[@]}"; do rss+=" $(awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$p/status")"; done
  echo "$label: $(cat "$dir/out")"
  echo "$label:   CPU µs per create (members, load generator):$cpu; member RSS MiB:$rss"
  echo "$label $rate" >>"$work/rates"
  stop
}

for round in $(seq 1 "$ROUNDS"); do
  run "$KEEL_A" A
  run "$KEEL_B" B
done
python3 - "$work/rates" <<'PY'
import statistics, sys
rates = {}
for line in open(sys.argv[1]):
    label, rate = line.split()
    rates.setdefault(label, []).append(int(rate))
for label in ("A", "B"):
    print(f"{label}: median {statistics.median(rates[label]):.0f} creates/s over {len(rates[label])} runs")
print(f"B/A: {statistics.median(rates['B']) / statistics.median(rates['A']):.2f}x")
PY
