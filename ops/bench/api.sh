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
LIST_SIZES=${LIST_SIZES:-"10000 100000"}
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
    etcd_cluster="e1=http://127.0.0.61:2380,e2=http://127.0.0.62:2380,e3=http://127.0.0.63:2380"
    etcd_pids=()
    for i in 1 2 3; do
      GOMAXPROCS=1 etcd --name "e$i" --data-dir "$work/e$i" \
        --listen-peer-urls "http://127.0.0.6$i:2380" --initial-advertise-peer-urls "http://127.0.0.6$i:2380" \
        --listen-client-urls "http://127.0.0.6$i:2379" --advertise-client-urls "http://127.0.0.6$i:2379" \
        --initial-cluster "$etcd_cluster" --initial-cluster-state new --initial-cluster-token keel-api-bench \
        --quota-backend-bytes 8589934592 --logger zap --log-level error 2>"$work/e$i.log" &
      etcd_pids+=($!)
      pids+=($!)
    done
    etcd_eps=127.0.0.61:2379,127.0.0.62:2379,127.0.0.63:2379
    for _ in $(seq 1 100); do
      ETCDCTL_API=3 etcdctl --endpoints "$etcd_eps" endpoint health >/dev/null 2>&1 && break
      sleep 0.2
    done
    echo "== etcd 3.4, three members: raw puts ($CLIENTS clients, 256 B values, $DURATION)"
    "$KEEL" bench store --endpoints "$etcd_eps" --value-size 256 --keys 10000 --clients "$CLIENTS" --mix put \
      --duration "$DURATION" --warmup 2s --json >"$work/etcd.json"
    etcd_rate=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['ops'][0]['ops_per_sec']))" "$work/etcd.json")
    kill -TERM "${etcd_pids[@]}" 2>/dev/null || true
    wait "${etcd_pids[@]}" 2>/dev/null || true
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
