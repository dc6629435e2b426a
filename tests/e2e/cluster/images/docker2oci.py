#!/usr/bin/env python3
"""Turn a `docker save` archive of one image into an OCI image archive that names it.

The harness keeps every image as an OCI archive (oci-layout + index.json + blobs/) whose index carries
the `io.containerd.image.name` annotation: that is what `ctr images import` names the image by, and what
up.sh reads to skip an image containerd already holds. Docker 20.10's `docker save` writes its own
layout instead (manifest.json, <config>.json, <id>/layer.tar), so the worker image built by Docker is
converted here. Layers are copied as they are (uncompressed tars) and checked against the config's
diff_ids on the way.
"""

import argparse
import hashlib
import io
import json
import os
import tarfile
from typing import IO, Any

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


class _HashingReader:
    """Reads through to `raw`, hashing what passes."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha.update(data)
        return data


def _dump(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _add_bytes(out: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))


def _add_blob(out: tarfile.TarFile, media_type: str, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    _add_bytes(out, f"blobs/sha256/{digest}", data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def convert(source: str, ref: str, output: str) -> None:
    with tarfile.open(source) as src:
        manifests = json.load(_member(src, "manifest.json"))
        if len(manifests) != 1:
            raise SystemExit(f"{source}: expected one image, found {len(manifests)}")
        tmp = output + ".tmp"
        try:
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
                _write_layout(src, manifests[0], ref, out)
        except BaseException:
            os.unlink(tmp)
            raise
        os.replace(tmp, output)


def _write_layout(src: tarfile.TarFile, entry: dict[str, Any], ref: str, out: tarfile.TarFile) -> None:
    config_bytes = _member(src, entry["Config"]).read()
    config = json.loads(config_bytes)
    diff_ids = config["rootfs"]["diff_ids"]
    if len(diff_ids) != len(entry["Layers"]):
        raise SystemExit(f"{len(entry['Layers'])} layers but {len(diff_ids)} diff_ids")
    _add_bytes(out, "oci-layout", _dump({"imageLayoutVersion": "1.0.0"}))
    layers = []
    for layer_name, diff_id in zip(entry["Layers"], diff_ids, strict=True):
        size = src.getmember(layer_name).size
        info = tarfile.TarInfo(f"blobs/sha256/{diff_id.removeprefix('sha256:')}")
        info.size = size
        reader = _HashingReader(_member(src, layer_name))
        out.addfile(info, reader)
        if f"sha256:{reader.sha.hexdigest()}" != diff_id:
            raise SystemExit(f"layer {layer_name} does not match its diff_id {diff_id}")
        layers.append({"mediaType": OCI_LAYER, "digest": diff_id, "size": size})
    config_desc = _add_blob(out, OCI_CONFIG, config_bytes)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": layers}
    manifest_desc = _add_blob(out, OCI_MANIFEST, _dump(manifest))
    manifest_desc["annotations"] = {
        "io.containerd.image.name": ref,
        "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1],
    }
    manifest_desc["platform"] = {"architecture": config["architecture"], "os": config["os"]}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [manifest_desc]}
    _add_bytes(out, "index.json", _dump(index))


def _member(src: tarfile.TarFile, name: str) -> IO[bytes]:
    f = src.extractfile(name)
    if f is None:
        raise SystemExit(f"{name} in the docker archive is not a file")
    return f


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("source", help="archive written by `docker save`")
    p.add_argument("--ref", required=True, help="full image reference, e.g. podq.local/podq-worker:dev-1234")
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args()
    convert(args.source, args.ref, args.output)


if __name__ == "__main__":
    main()
