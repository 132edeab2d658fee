#!/usr/bin/env bash
# Measures keel's store against etcd side by side, in one run, on this machine: starts a
# three-member keel and a three-member etcd (Debian's etcd-server) on loopback, both with
# fsync on, runs the same `keel bench store` workloads against each in turn, and prints the
# results and the keel/etcd ratios.
#
#   ops/bench/store-vs-etcd.sh                 # uses target/release/keel
#   DURATION=20s ROUNDS=3 ops/bench/store-vs-etcd.sh
#   KEEL=old/keel KEEL_B=target/release/keel ops/bench/store-vs-etcd.sh   # two keel builds
#
# Each scenario runs ROUNDS times per system, alternating the two; the table shows the median
# of the rounds. With KEEL_B set, the second system is a three-member cluster of that keel
# binary instead of etcd (rows "keel" and "keel-B", ratio B/A), to measure a change to the
# store side by side.
set -euo pipefail

KEEL=${KEEL:-target/release/keel}
KEEL_B=${KEEL_B:-}
ETCD=${ETCD:-etcd}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}

[ -x "$KEEL" ] || { echo "$KEEL not found: cargo build --release -p keel" >&2; exit 1; }
command -v etcdctl >/dev/null || { echo "etcdctl not found (it checks the members' health): apt-get install etcd-client" >&2; exit 1; }
if [ -n "$KEEL_B" ]; then
  [ -x "$KEEL_B" ] || { echo "KEEL_B=$KEEL_B not found" >&2; exit 1; }
else
  command -v "$ETCD" >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }
fi

work=$(mktemp -d /tmp/keel-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=ops/bench/etcd-cluster.sh
. "$(dirname "$0")/etcd-cluster.sh"
# start_keel_cluster BINARY HOST_PREFIX NAME_PREFIX: three members at ${HOST_PREFIX}1..3.
# keel's members each run their request handling on one thread (--runtime-threads 1), as
# etcd's run on one Go thread (etcd-cluster.sh).
start_keel_cluster() {
  local keel=$1 prefix=$2 name=$3 cluster="" i
  for i in 1 2 3; do cluster+="${cluster:+,}$name$i=$prefix$i:2380"; done
  for i in 1 2 3; do
    "$keel" server --name "$name$i" --data-dir "$work/$name$i" \
      --listen-peer "$prefix$i:2380" --listen-client "$prefix$i:2379" --listen-api "$prefix$i:6443" \
      --initial-cluster "$cluster" --runtime-threads 1 --log-level warn 2>"$work/$name$i.log" &
    pids+=($!)
  done
}
start_keel_cluster "$KEEL" 127.0.0.2 k
keel_eps="127.0.0.21:2379,127.0.0.22:2379,127.0.0.23:2379"
if [ -n "$KEEL_B" ]; then
  start_keel_cluster "$KEEL_B" 127.0.0.4 b
  other=keel-B
  other_eps="127.0.0.41:2379,127.0.0.42:2379,127.0.0.43:2379"
else
  start_etcd_cluster "$work" 127.0.0.3 keel-bench
  other=etcd
  other_eps=$ETCD_ENDPOINTS
fi
wait_healthy "$keel_eps" "$work"
wait_healthy "$other_eps" "$work"

# role ENDPOINTS leader|follower: the endpoint of that system's leader, or of a follower
# (etcdctl's endpoint status: each member's ID and the leader's, as both systems report them).
role() {
  ETCDCTL_API=3 etcdctl --endpoints "$1" endpoint status -w json | python3 -c '
import json, sys
want = sys.argv[1]
status = json.load(sys.stdin)
for e in status:
    is_leader = e["Status"]["header"]["member_id"] == e["Status"]["leader"]
    if is_leader == (want == "leader"):
        print(e["Endpoint"])
        break
' "$2"
}

# name|flags|endpoints: all (the clients spread over every member), leader or follower. A
# single client talks to one member; which of them leads differs between the two systems and
# between runs, and a put sent to a follower takes one more hop, so the single-client case is
# measured against each system's leader and against a follower, for like to be compared with
# like.
scenarios=(
  "put, 64 clients|--clients 64 --mix put|all"
  "put, 1 client to the leader|--clients 1 --mix put|leader"
  "put, 1 client to a follower|--clients 1 --mix put|follower"
  "linearizable get, 64 clients|--clients 64 --mix get --consistency l|all"
)
results="$work/results.jsonl"
for scenario in "${scenarios[@]}"; do
  IFS='|' read -r name flags target <<<"$scenario"
  for round in $(seq 1 "$ROUNDS"); do
    for system in keel "$other"; do
      eps=$keel_eps; [ "$system" = "$other" ] && eps=$other_eps
      if [ "$target" != all ]; then
        eps=$(role "$eps" "$target") || { echo "$system: etcdctl endpoint status failed" >&2; exit 1; }
        [ -n "$eps" ] || { echo "$system: no $target found" >&2; exit 1; }
      fi
      # shellcheck disable=SC2086
      "$KEEL" bench store --endpoints "$eps" --value-size 256 --keys 10000 \
        --duration "$DURATION" --warmup "$WARMUP" --label "$system|$name|$round" --json $flags >>"$results"
    done
  done
done

python3 - "$results" "$other" <<'PY'
import json, statistics, sys
other = sys.argv[2]
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
    for system in ("keel", other):
        ops = systems[system]
        print(f"{name:32} {system:6} {med(ops,'ops_per_sec'):10.0f} {med(ops,'p50_ms'):8.2f} "
              f"{med(ops,'p99_ms'):8.2f} {med(ops,'p999_ms'):8.2f} {sum(o['errors'] for o in ops):7d}")
    # keel/etcd, or for two keel builds B/A: above 1, the first of the pair has more ops/s,
    # or higher latency.
    k, e = (systems["keel"], systems["etcd"]) if other == "etcd" else (systems["keel-B"], systems["keel"])
    label = "ratio" if other == "etcd" else "B/A"
    print(f"{'':32} {label:6} {med(k,'ops_per_sec')/med(e,'ops_per_sec'):10.2f}x "
          f"{med(k,'p50_ms')/med(e,'p50_ms'):7.2f}x {med(k,'p99_ms')/med(e,'p99_ms'):7.2f}x")
PY
