# Sourced by the benchmark scripts that measure etcd beside keel (store-vs-etcd.sh, api.sh).
#
# start_etcd_cluster WORK HOST_PREFIX TOKEN
#   Starts a three-member etcd (Debian's etcd-server, or $ETCD) on loopback, members e1..e3 at
#   ${HOST_PREFIX}1..3 (ports 2379 and 2380), fsync on, data and logs under WORK. Each member
#   runs on one Go thread (GOMAXPROCS=1), as keel's members run on one runtime thread: the
#   members share the machine's cores, and the same setting for both keeps it fair (it makes
#   no measurable difference to etcd on two cores). Sets ETCD_ENDPOINTS and ETCD_PIDS, and
#   adds the pids to the caller's `pids` array; does not wait (see wait_healthy).
start_etcd_cluster() {
  local work=$1 prefix=$2 token=$3 cluster="" i
  for i in 1 2 3; do cluster+="${cluster:+,}e$i=http://$prefix$i:2380"; done
  ETCD_PIDS=()
  for i in 1 2 3; do
    GOMAXPROCS=1 "${ETCD:-etcd}" --name "e$i" --data-dir "$work/e$i" \
      --listen-peer-urls "http://$prefix$i:2380" --initial-advertise-peer-urls "http://$prefix$i:2380" \
      --listen-client-urls "http://$prefix$i:2379" --advertise-client-urls "http://$prefix$i:2379" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "$token" \
      --quota-backend-bytes 8589934592 --logger zap --log-level error 2>"$work/e$i.log" &
    ETCD_PIDS+=($!)
    pids+=($!)
  done
  ETCD_ENDPOINTS="${prefix}1:2379,${prefix}2:2379,${prefix}3:2379"
}

# wait_healthy ENDPOINTS WORK
#   Waits up to 20 s for every etcd-API endpoint (keel's or etcd's) to answer healthy; exits
#   with the member logs under WORK if one does not.
wait_healthy() {
  local eps=$1 work=$2
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints "$eps" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "cluster at $eps did not become healthy; member logs:" >&2
  tail -n 5 "$work"/*.log >&2
  exit 1
}
