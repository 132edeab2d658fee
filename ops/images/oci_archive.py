#!/usr/bin/env python3
"""Packs a root filesystem directory into a single-layer OCI image archive.

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) in a tar, the
format `ctr images import` and `docker load` read. The image is named in index.json twice:
`io.containerd.image.name` carries the full reference, which containerd's importer uses as the
image name as it is; `org.opencontainers.image.ref.name` carries the tag, as the OCI spec has it.

Everything is written deterministically (sorted entries, mtime 0, owner root) so the same input
gives the same digests: re-importing an unchanged image is then a no-op for containerd.

Standard library only: the machines that build keel's images have no registry and no network.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile


def layer_tar(rootfs: str) -> bytes:
    """The root filesystem as an uncompressed layer tar, paths relative to '/'."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = []
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                entries.append(os.path.join(dirpath, name))
        for path in sorted(entries, key=lambda p: os.path.relpath(p, rootfs)):
            rel = os.path.relpath(path, rootfs)
            info = tar.gettarinfo(path, arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            # Keep permission bits (and sticky bit for /tmp); drop setuid bits of the builder.
            info.mode = stat.S_IMODE(os.lstat(path).st_mode) & 0o1777
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def blob(data: bytes):
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rootfs", required=True, help="directory that becomes the image's /")
    p.add_argument("--name", required=True, help="full image reference, e.g. keel.local/pause:3.10")
    p.add_argument("--out", required=True, help="archive to write (.tar)")
    p.add_argument("--arch", required=True, help="OCI architecture: amd64, arm64, ...")
    p.add_argument("--entrypoint", action="append", default=[], help="one argument per flag")
    p.add_argument("--cmd", action="append", default=[], help="one argument per flag")
    p.add_argument("--user", default="")
    p.add_argument("--env", action="append", default=[])
    args = p.parse_args()

    tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"

    layer = layer_tar(args.rootfs)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    layer_digest, layer_blob = blob(gzip.compress(layer, compresslevel=9, mtime=0))

    image_config = {"Env": args.env}
    if args.entrypoint:
        image_config["Entrypoint"] = args.entrypoint
    if args.cmd:
        image_config["Cmd"] = args.cmd
    if args.user:
        image_config["User"] = args.user
    config = {
        "architecture": args.arch,
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "ops/images/build.sh", "created": "1970-01-01T00:00:00Z"}],
        "created": "1970-01-01T00:00:00Z",
    }
    config_digest, config_blob = blob(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())

    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config_blob),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": len(layer_blob),
            }
        ],
    }
    manifest_digest, manifest_blob = blob(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())

    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_blob),
                "platform": {"architecture": args.arch, "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": args.name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }

    # index.json first: readers that only want the image's name (keel's agent looking for the
    # archive that provides an image) stop after the first entries.
    files = [
        ("index.json", json.dumps(index, sort_keys=True, indent=2).encode() + b"\n"),
        ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}\n'),
    ]
    blobs = [(manifest_digest, manifest_blob), (config_digest, config_blob), (layer_digest, layer_blob)]

    tmp = args.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes, mode: int = 0o644, kind=tarfile.REGTYPE):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.mtime = 0
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        for name, data in files:
            add(name, data)
        add("blobs", b"", 0o755, tarfile.DIRTYPE)
        add("blobs/sha256", b"", 0o755, tarfile.DIRTYPE)
        for digest, data in blobs:
            add("blobs/sha256/" + digest.split(":", 1)[1], data)
    os.replace(tmp, args.out)
    print(f"{args.out}: {args.name} {manifest_digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
