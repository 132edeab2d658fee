#!/usr/bin/env bash
# Measures keel's store against etcd side by side, in one run, on this machine: starts a
# three-member keel and a three-member etcd (Debian's etcd-server) on loopback, both with
# fsync on, runs the same `keel bench store` workloads against each in turn, and prints the
# results and the keel/etcd ratios.
#
#   ops/bench/store-vs-etcd.sh                 # uses target/release/keel
#   DURATION=20s ROUNDS=3 ops/bench/store-vs-etcd.sh
#
# Each scenario runs ROUNDS times per system, alternating keel and etcd; the table shows the
# median of the rounds.
set -euo pipefail

KEEL=${KEEL:-target/release/keel}
ETCD=${ETCD:-etcd}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}

command -v "$ETCD" >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }
[ -x "$KEEL" ] || { echo "$KEEL not found: cargo build --release -p keel" >&2; exit 1; }

work=$(mktemp -d /tmp/keel-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The three members of each system share this machine's cores, so each runs its request
# handling on one thread: keel with --runtime-threads 1, etcd with GOMAXPROCS=1 (which makes
# no measurable difference to etcd on two cores, and the same setting for both keeps it fair).
keel_cluster="k1=127.0.0.21:2380,k2=127.0.0.22:2380,k3=127.0.0.23:2380"
etcd_cluster="e1=http://127.0.0.31:2380,e2=http://127.0.0.32:2380,e3=http://127.0.0.33:2380"
for i in 1 2 3; do
  "$KEEL" server --name "k$i" --data-dir "$work/k$i" \
    --listen-peer "127.0.0.2$i:2380" --listen-client "127.0.0.2$i:2379" --listen-api "127.0.0.2$i:6443" \
    --initial-cluster "$keel_cluster" --runtime-threads 1 --log-level warn 2>"$work/k$i.log" &
  pids+=($!)
  GOMAXPROCS=1 "$ETCD" --name "e$i" --data-dir "$work/e$i" \
    --listen-peer-urls "http://127.0.0.3$i:2380" --initial-advertise-peer-urls "http://127.0.0.3$i:2380" \
    --listen-client-urls "http://127.0.0.3$i:2379" --advertise-client-urls "http://127.0.0.3$i:2379" \
    --initial-cluster "$etcd_cluster" --initial-cluster-state new --initial-cluster-token keel-bench \
    --quota-backend-bytes 8589934592 --logger zap --log-level error 2>"$work/e$i.log" &
  pids+=($!)
done
keel_eps="127.0.0.21:2379,127.0.0.22:2379,127.0.0.23:2379"
etcd_eps="127.0.0.31:2379,127.0.0.32:2379,127.0.0.33:2379"
for eps in "$keel_eps" "$etcd_eps"; do
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints "$eps" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done
  if ! ETCDCTL_API=3 etcdctl --endpoints "$eps" endpoint health >/dev/null 2>&1; then
    echo "cluster at $eps did not become healthy; member logs:" >&2
    tail -n 5 "$work"/*.log >&2
    exit 1
  fi
done

# name|flags
scenarios=(
  "put, 64 clients|--clients 64 --mix put"
  "put, 1 client|--clients 1 --mix put"
  "linearizable get, 64 clients|--clients 64 --mix get --consistency l"
)
results="$work/results.jsonl"
for scenario in "${scenarios[@]}"; do
  name=${scenario%%|*}
  flags=${scenario#*|}
  for round in $(seq 1 "$ROUNDS"); do
    for system in keel etcd; do
      eps=$keel_eps; [ "$system" = etcd ] && eps=$etcd_eps
      # shellcheck disable=SC2086
      "$KEEL" bench store --endpoints "$eps" --value-size 256 --keys 10000 \
        --duration "$DURATION" --warmup "$WARMUP" --label "$system|$name|$round" --json $flags >>"$results"
    done
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    system, name, _ = r["label"].split("|")
    op = r["ops"][0]
    rows.setdefault(name, {}).setdefault(system, []).append(op)
def med(ops, field):
    return statistics.median(o[field] for o in ops)
print(f"{'scenario':32} {'system':6} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p999 ms':>8} {'errors':>7}")
for name, systems in rows.items():
    for system in ("keel", "etcd"):
        ops = systems[system]
        print(f"{name:32} {system:6} {med(ops,'ops_per_sec'):10.0f} {med(ops,'p50_ms'):8.2f} "
              f"{med(ops,'p99_ms'):8.2f} {med(ops,'p999_ms'):8.2f} {sum(o['errors'] for o in ops):7d}")
    k, e = systems["keel"], systems["etcd"]
    print(f"{'':32} {'ratio':6} {med(k,'ops_per_sec')/med(e,'ops_per_sec'):10.2f}x "
          f"{med(k,'p50_ms')/med(e,'p50_ms'):7.2f}x {med(k,'p99_ms')/med(e,'p99_ms'):7.2f}x")
PY
