#!/usr/bin/env bash
# Pod start-up latency with real containers: `keel up` on loopback (one member, the control
# loops, a node agent with its own containerd and the local busybox image), then two rounds of
# PODS pods: created at RATE pods/s (below the node's start-up throughput: the latency of one
# start), then all at once, CONCURRENCY creates in flight (a burst: the latency is mostly
# queueing, and total time / PODS is the node's throughput). Prints p50/p90/p99/max of
# create-to-Running as seen through a watch (Kubernetes' pod start-up SLO measures the same
# interval). Run as root.
#
#   ops/bench/pod-startup.sh                   # uses target/release/keel, 100 pods, 1 pod/s
#
# 1 pod/s on one node is well above what Kubernetes' density tests ask of a node, and about a
# third of this 2-core machine's start-up throughput: faster, and the pods queue.
#   KEEL=target/debug/keel PODS=200 RATE=1 CONCURRENCY=20 ops/bench/pod-startup.sh
set -euo pipefail

KEEL=${KEEL:-target/release/keel}
PODS=${PODS:-100}
CONCURRENCY=${CONCURRENCY:-10}
RATE=${RATE:-1}
[ -x "$KEEL" ] || { echo "$KEEL not found: cargo build --release --workspace" >&2; exit 1; }

work=$(mktemp -d /tmp/keel-pod-startup.XXXXXX)
up_pid=""
cleanup() {
  [ -n "$up_pid" ] && kill -TERM "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null || true
  # The agent's containerd outlives keel (as kubelet's pods do): stop it and its pods.
  for shim in $(pgrep -f "containerd-shim.*$work" || true); do pkill -9 -P "$shim" || true; done
  pkill -f "containerd.*$work" || true
  sleep 0.5
  grep " $work" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l || true
  ip link delete kbench0 2>/dev/null || true
  iptables -w -t nat -D POSTROUTING -s 10.99.0.0/16 ! -d 10.99.0.0/16 -m comment --comment "keel: pods of bridge kbench0" -j MASQUERADE 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ops/images/build.sh "$work/images" >/dev/null
"$KEEL" up --data-dir "$work" --listen-api 127.0.0.71:6443 --listen-client 127.0.0.71:2379 \
  --listen-peer 127.0.0.71:2380 --cni-bridge kbench0 --pod-cidr 10.99.0.0/16 --node-name bench \
  --eviction-hard "nodefs.available<1%,nodefs.inodesFree<1%" \
  >/dev/null 2>"$work/up.log" &
up_pid=$!
for _ in $(seq 300); do
  [ "$(KUBECONFIG=$work/kubeconfig kubectl get node bench -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] && break
  sleep 0.2
done
"$KEEL" bench pods --server 127.0.0.71:6443 --pods "$PODS" --concurrency "$CONCURRENCY" --rate "$RATE"
# The first round's pods stop and go before the burst.
for _ in $(seq 300); do
  [ "$(KUBECONFIG=$work/kubeconfig kubectl get pods -A -l app=bench-pods -o name 2>/dev/null | wc -l)" = 0 ] && break
  sleep 0.5
done
"$KEEL" bench pods --server 127.0.0.71:6443 --pods "$PODS" --concurrency "$CONCURRENCY"
