#!/usr/bin/env bash
# Measures keel's Kubernetes API on a three-member cluster on loopback (fsync on): creates
# per second of 1 KiB ConfigMaps and of typical Pods, LIST latency at 10k and 100k pods,
# and watch delivery latency with many watchers, plus each member's resident memory.
#
#   ops/bench/api.sh                      # uses target/release/keel
#   DURATION=20s WATCHERS=10000 ops/bench/api.sh
#   SKIP_CREATES=1 LIST_SIZES= ops/bench/api.sh     # the watch scenario alone
#   CONTROL_LOOPS=true ops/bench/api.sh    # with the scheduler and controllers running (the
#                                          # benchmark's pods then fit no node: each gets a
#                                          # FailedScheduling event and condition)
set -euo pipefail

KEEL=${KEEL:-target/release/keel}
DURATION=${DURATION:-10s}
CLIENTS=${CLIENTS:-64}
LIST_SIZES=${LIST_SIZES-"10000 100000"}
WATCHERS=${WATCHERS:-10000}
NAMESPACES=${NAMESPACES:-1000}
RATE=${RATE:-1000}
[ -x "$KEEL" ] || { echo "$KEEL not found: cargo build --release -p keel" >&2; exit 1; }

work=$(mktemp -d /tmp/keel-api-bench.XXXXXX)
pids=()
keel_pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cluster="a1=127.0.0.51:2380,a2=127.0.0.52:2380,a3=127.0.0.53:2380"
for i in 1 2 3; do
  "$KEEL" server --name "a$i" --data-dir "$work/a$i" \
    --listen-peer "127.0.0.5$i:2380" --listen-client "127.0.0.5$i:2379" --listen-api "127.0.0.5$i:6443" \
    --initial-cluster "$cluster" --runtime-threads 1 --log-level warn \
    --control-loops "${CONTROL_LOOPS:-false}" 2>"$work/a$i.log" &
  pids+=($!)
  keel_pids+=($!)
done
servers=127.0.0.51:6443,127.0.0.52:6443,127.0.0.53:6443
for _ in $(seq 100); do
  curl -sf http://127.0.0.51:6443/api/v1/namespaces/default >/dev/null 2>&1 && break
  sleep 0.2
done

rss() { for pid in "${keel_pids[@]}"; do awk '/VmRSS/ {printf "%d MiB ", $2/1024}' "/proc/$pid/status"; done; echo; }

rate() { sed -n 's/.* = \([0-9]*\)\/s .*/\1/p'; }

if [ -z "${SKIP_CREATES:-}" ]; then
  echo "== creates ($CLIENTS clients, $DURATION, spread over 3 members)"
  "$KEEL" bench api --servers "$servers" create --kind configmap --clients "$CLIENTS" --duration "$DURATION" | tee "$work/cm.out"
  "$KEEL" bench api --servers "$servers" create --kind pod --clients "$CLIENTS" --duration "$DURATION" | tee "$work/pod.out"
  # Issue 3's yardstick: the raw put rate of a three-member etcd on the same machine, in the
  # same run (the store benchmark's workload: 256-byte values, as many clients). keel's
  # members stay up, idle, meanwhile.
  if [ -z "${SKIP_ETCD:-}" ] && command -v etcd >/dev/null; then
    # shellcheck source=ops/bench/etcd-cluster.sh
    . "$(dirname "$0")/etcd-cluster.sh"
    start_etcd_cluster "$work" 127.0.0.6 keel-api-bench
    etcd_eps=$ETCD_ENDPOINTS
    wait_healthy "$etcd_eps" "$work"
    echo "== etcd 3.4, three members: raw puts ($CLIENTS clients, 256 B values, $DURATION)"
    "$KEEL" bench store --endpoints "$etcd_eps" --value-size 256 --keys 10000 --clients "$CLIENTS" --mix put \
      --duration "$DURATION" --warmup 2s --json >"$work/etcd.json"
    etcd_rate=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['ops'][0]['ops_per_sec']))" "$work/etcd.json")
    kill -TERM "${ETCD_PIDS[@]}" 2>/dev/null || true
    wait "${ETCD_PIDS[@]}" 2>/dev/null || true
    cm=$(rate <"$work/cm.out"); pod=$(rate <"$work/pod.out")
    echo "etcd puts: $etcd_rate/s; ConfigMap creates / etcd puts: $(python3 -c "print(f'{$cm/$etcd_rate:.2f}x')"); Pod creates / etcd puts: $(python3 -c "print(f'{$pod/$etcd_rate:.2f}x')")"
  fi
fi
for n in $LIST_SIZES; do
  echo "== LIST of $n pods"
  "$KEEL" bench api --servers "$servers" list --objects "$n" --repeat 10
  "$KEEL" bench api --servers "$servers" list --objects "$n" --repeat 10 --resource-version 0
done
echo "member RSS before watches: $(rss)"
echo "== watch: $WATCHERS watchers over $NAMESPACES namespaces, $RATE writes/s"
"$KEEL" bench api --servers "$servers" watch --watchers "$WATCHERS" --namespaces "$NAMESPACES" --rate "$RATE" --duration "$DURATION" &
bench=$!
sleep 20
echo "member RSS with watches open: $(rss)"
wait $bench
