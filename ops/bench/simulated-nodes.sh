#!/usr/bin/env bash
# Scale run of the node agent's streams: a three-member keel cluster on loopback (fsync on),
# one `keel agent --simulate NODES` process (one stream per node), and PODS pods created as
# Deployments. Prints how long until every node is Ready, until every pod is bound and until
# every pod is reported Running, and each process's resident memory.
#
#   ops/bench/simulated-nodes.sh                       # 5,000 nodes, 50,000 pods
#   NODES=500 PODS=5000 ops/bench/simulated-nodes.sh
set -euo pipefail

KEEL=${KEEL:-target/release/keel}
NODES=${NODES:-5000}
PODS=${PODS:-50000}
DEPLOYMENTS=${DEPLOYMENTS:-50}
TIMEOUT=${TIMEOUT:-1800}
# Extra `keel agent` flags, e.g. AGENT_FLAGS="--metric-resolution 60s".
AGENT_FLAGS=${AGENT_FLAGS:-}
# A directory to copy the processes' logs to at the end.
KEEP_LOGS=${KEEP_LOGS:-}
[ -x "$KEEL" ] || { echo "$KEEL not found: cargo build --release --workspace" >&2; exit 1; }
command -v kubectl >/dev/null || { echo "kubectl not found" >&2; exit 1; }

work=$(mktemp -d /tmp/keel-nodes-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$KEEP_LOGS" ]; then mkdir -p "$KEEP_LOGS" && cp "$work"/*.log "$KEEP_LOGS"/; fi
  rm -rf "$work"
}
trap cleanup EXIT
# Each node holds a connection: more than the usual 1,024 descriptors.
ulimit -n "$(ulimit -Hn)"

cluster="n1=127.0.0.61:2380,n2=127.0.0.62:2380,n3=127.0.0.63:2380"
for i in 1 2 3; do
  "$KEEL" server --name "n$i" --data-dir "$work/n$i" \
    --listen-peer "127.0.0.6$i:2380" --listen-client "127.0.0.6$i:2379" --listen-api "127.0.0.6$i:6443" \
    --initial-cluster "$cluster" --log-level warn 2>"$work/n$i.log" &
  pids+=($!)
done
servers=127.0.0.61:6443,127.0.0.62:6443,127.0.0.63:6443
for _ in $(seq 150); do
  curl -sf http://127.0.0.61:6443/api/v1/namespaces/default >/dev/null 2>&1 && break
  sleep 0.2
done
"$KEEL" kubeconfig --server http://127.0.0.61:6443 >"$work/kubeconfig"
export KUBECONFIG=$work/kubeconfig

rss() { for pid in "${pids[@]}"; do awk '/VmRSS/ {printf "%d MiB ", $2/1024}' "/proc/$pid/status"; done; echo; }
elapsed() { echo $(( $(date +%s) - start )); }
wait_for() { # what, command printing a count, target
  local what=$1 cmd=$2 target=$3 n=0
  while [ "$(elapsed)" -lt "$TIMEOUT" ]; do
    n=$(eval "$cmd" 2>/dev/null || echo 0)
    [ "$n" -ge "$target" ] && { echo "$what: $n after $(elapsed) s"; return 0; }
    sleep 5
  done
  echo "$what: only $n of $target after $TIMEOUT s" >&2
  return 1
}

start=$(date +%s)
# shellcheck disable=SC2086 # AGENT_FLAGS is a list of flags
"$KEEL" agent --name sim --simulate "$NODES" --server "$servers" --data-dir "$work/agent" \
  --log-level warn ${AGENT_FLAGS:-} 2>"$work/agent.log" &
pids+=($!)
wait_for "Ready nodes" \
  "kubectl get nodes -l type=simulated --no-headers | awk '\$2 == \"Ready\"' | wc -l" "$NODES"
echo "RSS (3 members, agent): $(rss)"

start=$(date +%s)
per=$(( PODS / DEPLOYMENTS ))
for d in $(seq "$DEPLOYMENTS"); do
  kubectl create deployment "load-$d" --image=busybox:1.36 --replicas="$per" >/dev/null
done
total=$(( per * DEPLOYMENTS ))
wait_for "bound pods" \
  "kubectl get pods --no-headers --field-selector spec.nodeName!= | wc -l" "$total"
wait_for "Running pods" \
  "kubectl get pods --no-headers --field-selector status.phase=Running | wc -l" "$total"
echo "RSS (3 members, agent): $(rss)"
over=$(kubectl get pods -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort | uniq -c | awk '$1 > 110' | wc -l)
echo "nodes over their 110-pod capacity: $over"
