#!/usr/bin/env bash
# Paged LISTs as kubectl makes them (500 items a page, continue tokens at one revision), side
# by side for two keel binaries over the same data: one member on loopback holds OBJECTS
# pods in a namespace (created by `keel bench api list` with binary A), then each binary in
# turn serves `kubectl get pods` as a table and as names, and the first page's request time
# from curl (`limit=500`: the page that counts every item after it; loopback, so mostly the
# server's time), ROUNDS times, alternating; the script prints the median of each and fails
# if any request fails or a listing misses pods.
#
#   KEEL_A=old/keel KEEL_B=target/release/keel ops/bench/list-pages.sh
#   OBJECTS=50000 ROUNDS=5 KEEL_A=... KEEL_B=... ops/bench/list-pages.sh
set -euo pipefail
shopt -s inherit_errexit


KEEL_A=${KEEL_A:?the first keel binary}
KEEL_B=${KEEL_B:?the second keel binary}
OBJECTS=${OBJECTS:-20000}
ROUNDS=${ROUNDS:-3}
CHUNK=${CHUNK:-500}
for k in "$KEEL_A" "$KEEL_B"; do [ -x "$k" ] || { echo "$k not found" >&2; exit 1; }; done
command -v kubectl >/dev/null || { echo "kubectl is needed" >&2; exit 1; }

work=$(mktemp -d /tmp/keel-list-bench.XXXXXX)
pid=""
stop() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; fi
}
trap 'stop; rm -rf "$work"' EXIT

api=127.0.0.61:6443
start() {
  if curl -s -o /dev/null "http://$api/readyz"; then
    echo "something already serves $api; stop it first" >&2
    exit 1
  fi
  "$1" server --name l1 --data-dir "$work/l1" --listen-peer 127.0.0.61:2380 --listen-client 127.0.0.61:2379 \
    --listen-api "$api" --initial-cluster l1=127.0.0.61:2380 --control-loops false --log-level warn \
    2>>"$work/server.log" &
  pid=$!
    for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { echo "$1 exited; see $work/server.log" >&2; exit 1; }
    kubectl --kubeconfig /dev/null --server "http://$api" get namespace default >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "the member did not become ready; see $work/server.log" >&2
  exit 1
}

# Milliseconds one command takes.
timed() {
  local start end
  start=$(date +%s%N)
    "$@" >/dev/null || { echo "failed: $*" >&2; exit 1; }
  end=$(date +%s%N)
  echo $(((end - start) / 1000000))
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

namespace="bench-list-$OBJECTS"
start "$KEEL_A"
"$KEEL_A" bench api --servers "$api" list --objects "$OBJECTS" --repeat 1 >"$work/create.txt"
stop

declare -A results
for round in $(seq 1 "$ROUNDS"); do
  for which in A B; do
    binary=KEEL_$which
    start "${!binary}"
    k=(kubectl --kubeconfig /dev/null --server "http://$api" -n "$namespace" --chunk-size "$CHUNK")
    listed=$("${k[@]}" get pods -o name | wc -l)
    [ "$listed" -eq "$OBJECTS" ] || { echo "${!binary} listed $listed pods, not $OBJECTS" >&2; exit 1; }
    results[$which-table]+="$(timed "${k[@]}" get pods) "
    results[$which-names]+="$(timed "${k[@]}" get pods -o name) "
    for _ in 1 2 3; do
      page=$(curl -sf -o /dev/null -w '%{time_total}' "http://$api/api/v1/namespaces/$namespace/pods?limit=$CHUNK")
      results[$which-page]+="$(awk -v t="$page" 'BEGIN {printf "%d", t * 1000}') "
    done
    stop
  done
  echo "round $round done" >&2
done

echo "paged LIST of $OBJECTS pods, $CHUNK a page, median of $ROUNDS rounds (ms):"
printf '%-8s %12s %12s %12s\n' binary table names first-page
for which in A B; do
  binary=KEEL_$which
  table=$(tr ' ' '\n' <<<"${results[$which-table]}" | grep . | median)
  names=$(tr ' ' '\n' <<<"${results[$which-names]}" | grep . | median)
  page=$(tr ' ' '\n' <<<"${results[$which-page]}" | grep . | median)
  printf '%-8s %12s %12s %12s   %s\n' "$which" "$table" "$names" "$page" "${!binary}"
done
