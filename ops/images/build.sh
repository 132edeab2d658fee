#!/usr/bin/env bash
# Builds keel's own images as OCI image archives, with no registry and no network:
#
#   keel.local/pause:3.10     the sandbox ("pause") process, pause.c compiled with gcc -static
#   keel.local/busybox:1.36   Debian's static busybox with its applet links; CMD sh, as the
#                             busybox image on Docker Hub has it
#
# Usage: ops/images/build.sh OUT_DIR
# Writes OUT_DIR/pause.tar and OUT_DIR/busybox.tar. Put them in the node agent's images folder
# (or `ctr -n k8s.io images import` them) and containerd runs pods from them.
# Needs gcc with the static C library (libc6-dev), busybox-static and python3
# (ops/install-deps.sh installs them). The same inputs give the same image digests.
set -euo pipefail

if [ "$#" -ne 1 ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
out=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "$0: $1 not found: $2" >&2; exit 1; }
}
need gcc "install the Debian packages gcc and libc6-dev (ops/install-deps.sh)"
need python3 "install the Debian package python3 (ops/install-deps.sh)"
busybox=/bin/busybox
# Debian's busybox package (dynamically linked) also installs /bin/busybox; only the static
# build runs in an image that has no C library. ldd fails on a static executable.
if [ ! -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
  echo "$0: $busybox is missing or not statically linked: install the Debian package busybox-static (ops/install-deps.sh)" >&2
  exit 1
fi

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  armv7l) arch=arm ;;
  *) arch=$(uname -m) ;;
esac

mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
path_env="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# pause
mkdir -p "$work/pause"
gcc -static -Os -s -Wall -Werror -o "$work/pause/pause" "$here/pause.c"
python3 "$here/oci_archive.py" --rootfs "$work/pause" --name keel.local/pause:3.10 --out "$out/pause.tar" \
  --arch "$arch" --entrypoint /pause --user 65535:65535 --env "$path_env"

# busybox
root=$work/busybox
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/etc" "$root/root" "$root/tmp" \
  "$root/var" "$root/home"
chmod 1777 "$root/tmp"
chmod 700 "$root/root"
cp "$busybox" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
  [ "$applet" = bin/busybox ] && continue
  mkdir -p "$root/$(dirname "$applet")"
  ln -sf /bin/busybox "$root/$applet"
done
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/home:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
python3 "$here/oci_archive.py" --rootfs "$root" --name keel.local/busybox:1.36 --out "$out/busybox.tar" \
  --arch "$arch" --cmd sh --env "$path_env"
