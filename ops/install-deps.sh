#!/usr/bin/env bash
# Installs what building, running and testing keel needs on Debian 12: protoc, clang (RocksDB
# is compiled from source), etcd and etcdctl 3.4 (compatibility tests and side-by-side
# benchmarks), containerd and what the node agent runs pods with, and cargo-nextest. Safe to
# run again.
set -euo pipefail

# tzdata: CronJobs take an IANA time zone (spec.timeZone).
# The node agent's runtime: containerd (with ctr, which imports image archives), runc, the CNI
# plugins (bridge, host-local, portmap, loopback in /usr/lib/cni) and iptables, which the
# bridge and portmap plugins call. ops/images/build.sh builds the pause image with gcc -static
# (libc6-dev has the static C library) and the busybox image from busybox-static.
packages=(protobuf-compiler clang libclang-dev etcd-server etcd-client python3 curl tzdata
  containerd runc containernetworking-plugins iptables busybox-static gcc libc6-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  # Debian starts etcd as a service on 127.0.0.1:2379 where systemd runs; keel's own
  # defaults use that port, and the tests start their own etcd when they need one.
  if [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest" >&2
  # A debug build (4.5 minutes on two cores, measured 2026-11-24): the runner only starts
  # and watches test processes, so it need not be optimized.
  cargo install cargo-nextest --locked --debug
fi
