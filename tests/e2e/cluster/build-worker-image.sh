#!/usr/bin/env bash
# Build podq's worker image without a registry or a Docker engine:
#   debootstrap'd Debian bookworm minbase + python3 (cached under $PODQ_CACHE_DIR/rootfs/),
#   + the worker's wheels installed by the host's pip (PyPI or its wheelhouse) for CPython 3.11,
#   + the repository's worker_image package,
# packed as an OCI archive in $PODQ_CACHE_DIR/images/ and, when the cluster is up, imported into it.
# Prints the image reference on stdout. The tag is a hash of the inputs, so an unchanged worker is
# not rebuilt.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $EUID -eq 0 ]] || die "build-worker-image.sh must run as root (debootstrap, chroot)"
REPO_DIR="$(cd "$CLUSTER_DIR/../../.." && pwd)"
BASE="$CACHE_DIR/rootfs/$WORKER_BASE_SUITE-minbase-python3"

build_base() {
  if [[ -f "$BASE.complete" ]]; then log "worker base: cached ($BASE)"; return; fi
  command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
  rm -rf "$BASE"; mkdir -p "$(dirname "$BASE")"
  log "worker base: debootstrap $WORKER_BASE_SUITE minbase + python3"
  low debootstrap --variant=minbase --include=python3,ca-certificates "$WORKER_BASE_SUITE" "$BASE" \
    "$(host_debian_mirror)" >"$BASE.log" 2>&1 || { tail -20 "$BASE.log"; die "debootstrap failed"; }
  # What a runtime image never needs.
  rm -rf "$BASE"/var/cache/apt/* "$BASE"/var/lib/apt/lists/* "$BASE"/usr/share/{doc,man,info,locale}/* \
    "$BASE"/var/log/* "$BASE"/tmp/*
  touch "$BASE.complete"
  log "worker base: built ($(du -sh "$BASE" | cut -f1))"
}

main() {
  build_base
  local inputs tag ref
  # The tag hashes everything the image is made of.
  inputs="$( { echo "$WORKER_PIP_PACKAGES" "$WORKER_BASE_SUITE"; cat "$BASE.complete";
    cd "$REPO_DIR" && find worker_image -name '*.py' -type f | sort | xargs sha256sum; } | sha256sum | cut -c1-12)"
  tag="dev-$inputs"
  ref="$WORKER_IMAGE_NAME:$tag"
  local out="$IMAGES_DIR/${WORKER_IMAGE_NAME##*/}_$tag.tar"
  if [[ -f "$out" ]]; then
    log "worker image $ref: cached"
  else
    work="$(mktemp -d "$CACHE_DIR/worker-build.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    log "worker image: copying base"
    cp -a "$BASE" "$work/rootfs"
    local site="$work/rootfs/usr/local/lib/python3.11/dist-packages"
    log "worker image: pip install $WORKER_PIP_PACKAGES"
    # shellcheck disable=SC2086 # the package list is a list
    low pip install -q --no-compile --disable-pip-version-check --root-user-action=ignore --target "$site" \
      --only-binary=:all: --implementation cp --python-version 3.11 --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 $WORKER_PIP_PACKAGES
    rm -rf "${site:?}"/bin "$site"/pyarrow/include "$site"/pyarrow/tests "$site"/pyarrow/*.pxd "$site"/pyarrow/*.pyx
    mkdir -p "$work/rootfs/opt/podq"
    (cd "$REPO_DIR" && find worker_image -name '*.py' -type f -print0 | xargs -0 cp --parents -t "$work/rootfs/opt/podq")
    # The root filesystem is read-only in a pod: compile bytecode now, or every query pays for it.
    low chroot "$work/rootfs" /usr/bin/python3 -m compileall -q -j 1 /usr/local/lib/python3.11/dist-packages /opt/podq >/dev/null
    chroot "$work/rootfs" /usr/bin/python3 -c 'import polars, pyarrow, httpx, sqlglot'
    mkdir -p "$IMAGES_DIR"
    log "worker image: packing $(du -sh "$work/rootfs" | cut -f1)"
    python3 "$CLUSTER_DIR/images/mkimage.py" --rootfs "$work/rootfs" --ref "$ref" \
      --entrypoint /usr/bin/python3 --entrypoint=-m --entrypoint=worker_image --workdir /opt/podq \
      --env PATH=/usr/local/bin:/usr/bin:/bin --env PYTHONPATH=/opt/podq --env PYTHONDONTWRITEBYTECODE=1 \
      --user 65534:65534 -o "$out"
    # Keep only the newest worker archive: up.sh imports every archive in IMAGES_DIR.
    find "$IMAGES_DIR" -name "${WORKER_IMAGE_NAME##*/}_*.tar" ! -path "$out" -delete
    log "worker image $ref: built ($(du -h "$out" | cut -f1))"
  fi
  if pid_alive containerd; then
    ctr_k8s images ls -q | grep -xF "$ref" >/dev/null || { ctr_k8s images import "$out" >/dev/null && log "worker image: imported"; }
  fi
  echo "$ref"
}

[[ "${BASH_SOURCE[0]}" != "$0" ]] || main "$@"
