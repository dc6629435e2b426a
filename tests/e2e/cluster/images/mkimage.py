#!/usr/bin/env python3
"""Pack a root filesystem directory into a single-layer OCI image archive.

The archive (oci-layout + index.json + blobs/) is what `ctr images import` reads; the image is named by
the index's `io.containerd.image.name` annotation, so no registry is ever involved. Output is
reproducible: entries are sorted and their mtimes clamped to SOURCE_DATE_EPOCH (default 0).
"""

import argparse
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from typing import Any, BinaryIO

EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
# Never packed: the runtime mounts these itself.
SKIP_CONTENTS = {"dev", "proc", "sys", "run"}


def _layer(rootfs: str, out: BinaryIO) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, rootfs)
            if rel_dir.split(os.sep)[0] in SKIP_CONTENTS and rel_dir != ".":
                dirnames[:] = []  # the directory itself is packed, empty
                continue
            for name in sorted(dirnames) + sorted(filenames):
                path = os.path.join(dirpath, name)
                arcname = os.path.normpath(os.path.join(rel_dir, name))
                info = tar.gettarinfo(path, arcname)
                if info is None:  # sockets and the like
                    continue
                info.mtime = min(int(info.mtime), EPOCH) if EPOCH else 0
                info.uname = info.gname = ""
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)


def _epoch(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    return info


def _dump(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _sha256_file(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def _blob(data: bytes, media_type: str, blobs: str) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rootfs", required=True)
    p.add_argument("--ref", required=True, help="full image reference, e.g. podq.local/pause:3.10")
    p.add_argument("--entrypoint", action="append", default=None)
    p.add_argument("--cmd", action="append", default=None)
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--user", default="")
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="mkimage-", dir=os.path.dirname(os.path.abspath(args.output)))
    try:
        blobs = os.path.join(work, "blobs", "sha256")
        os.makedirs(blobs)
        tmp_layer = os.path.join(blobs, "layer.tmp")
        with open(tmp_layer, "wb") as f:
            _layer(args.rootfs, f)
        layer_digest = _sha256_file(tmp_layer)
        layer_size = os.path.getsize(tmp_layer)
        os.rename(tmp_layer, os.path.join(blobs, layer_digest))
        layer = {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": f"sha256:{layer_digest}",
            "size": layer_size,
        }
        config = {
            "created": "1970-01-01T00:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {
                k: v
                for k, v in {
                    "Entrypoint": args.entrypoint,
                    "Cmd": args.cmd,
                    "Env": args.env or None,
                    "User": args.user or None,
                    "WorkingDir": "/",
                }.items()
                if v
            },
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "podq mkimage.py"}],
        }
        config_desc = _blob(_dump(config), "application/vnd.oci.image.config.v1+json", blobs)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": [layer],
        }
        manifest_desc = _blob(_dump(manifest), "application/vnd.oci.image.manifest.v1+json", blobs)
        manifest_desc["annotations"] = {
            "io.containerd.image.name": args.ref,
            "org.opencontainers.image.ref.name": args.ref.rsplit(":", 1)[1],
        }
        manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [manifest_desc],
        }
        with open(os.path.join(work, "index.json"), "wb") as f:
            f.write(_dump(index))
        with open(os.path.join(work, "oci-layout"), "wb") as f:
            f.write(_dump({"imageLayoutVersion": "1.0.0"}))

        tmp_out = args.output + ".tmp"
        with tarfile.open(tmp_out, "w", format=tarfile.PAX_FORMAT) as out:
            for name in ["oci-layout", "index.json", "blobs"]:
                out.add(os.path.join(work, name), arcname=name, filter=_epoch)
        os.replace(tmp_out, args.output)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
