#!/usr/bin/env bash
# Build one of podq's two images on a machine that reaches no registry:
#   build-image.sh worker      worker_image/Dockerfile, tagged podq.local/podq-worker:dev-<hash>
#   build-image.sh controller  the root Dockerfile, tagged podq.local/podq-controller:dev-<hash>
#   - the bases are Debian bookworm made by debootstrap (cached under $PODQ_CACHE_DIR/rootfs/):
#     minbase + python3 for the runtime (BASE_IMAGE), the same + pip for the build stage (BUILD_IMAGE);
#   - the wheels (the image's requirements.txt) are fetched by the host's pip into a wheelhouse
#     (cached under $PODQ_CACHE_DIR/wheels/), which the build installs from with no network;
#   - the builder is Debian's Docker engine, started here with its own data root under the cache, no
#     iptables, no bridge and no network for the build, so it touches nothing the cluster uses; it is
#     stopped again when the build is done, unless it was already running.
# The image is saved as an OCI archive in $PODQ_CACHE_DIR/images/ and, when the cluster is up, imported
# into its containerd. Prints the image reference on stdout. The tag is a hash of the inputs (the
# Dockerfile, requirements.txt, the Python files copied in and both bases), so an unchanged image is not
# rebuilt.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $EUID -eq 0 ]] || die "build-image.sh must run as root (debootstrap, dockerd)"
REPO_DIR="$(cd "$CLUSTER_DIR/../../.." && pwd)"
KIND="${1:-}"
# Per image: its Dockerfile, its pins, the repository files its build context holds, its name, and a
# command that must run in it.
case $KIND in
  worker)
    DOCKERFILE=worker_image/Dockerfile REQUIREMENTS=worker_image/requirements.txt IMAGE_NAME=$WORKER_IMAGE_NAME
    context_files() { echo worker_image/Dockerfile worker_image/requirements.txt worker_image/*.py; }
    SMOKE=(python3 -c 'import polars, worker_image.sql')
    ;;
  controller)
    DOCKERFILE=Dockerfile REQUIREMENTS=controller/requirements.txt IMAGE_NAME=$CONTROLLER_IMAGE_NAME
    # The controller and client packages, and the worker_image modules the Dockerfile names.
    context_files() {
      echo Dockerfile
      find controller podq -name '*.py' -o -name requirements.txt | sort
      grep -oE 'worker_image/[a-z_]+\.py' Dockerfile
    }
    SMOKE=(python3 -m controller --help)
    ;;
  *) die "usage: build-image.sh worker|controller" ;;
esac
RUNTIME_ROOTFS="$CACHE_DIR/rootfs/$IMAGE_BASE_SUITE-minbase-python3"
BUILD_ROOTFS="$CACHE_DIR/rootfs/$IMAGE_BASE_SUITE-minbase-python3-pip"
WHEELS_DIR="$CACHE_DIR/wheels"
BUILD_LOG="$CACHE_DIR/$KIND-image-build.log"

# The engine's images and layer cache persist in the cache; its sockets and pid live under /run, in a
# directory of this cache's own.
DOCKER_ROOT="$CACHE_DIR/docker"
DOCKER_RUN="/run/podq-docker-$(printf %s "$CACHE_DIR" | sha256sum | cut -c1-8)"
DOCKER_SOCK="$DOCKER_RUN/docker.sock"
# Debian's client, whatever else is first on PATH: it speaks the engine's API version.
dkr() { DOCKER_BUILDKIT=0 /usr/bin/docker -H "unix://$DOCKER_SOCK" "$@"; }

WORK=""
STARTED_DOCKERD=false
cleanup() {
  [[ -z "$WORK" ]] || rm -rf "$WORK"
  ! $STARTED_DOCKERD || stop_dockerd
}
trap cleanup EXIT

# build_rootfs DIR PACKAGES: a debootstrap'd minbase with PACKAGES, trimmed of what an image never needs.
build_rootfs() {
  local dir=$1 packages=$2
  if [[ -f "$dir.complete" ]]; then log "base $(basename "$dir"): cached"; return; fi
  rm -rf "$dir"; mkdir -p "$(dirname "$dir")"
  log "base $(basename "$dir"): debootstrap $IMAGE_BASE_SUITE minbase + $packages"
  low debootstrap --variant=minbase --include="$packages" "$IMAGE_BASE_SUITE" "$dir" \
    "$(host_debian_mirror)" >"$dir.log" 2>&1 || { tail -20 "$dir.log"; die "debootstrap failed (log: $dir.log)"; }
  rm -rf "$dir"/var/cache/apt/* "$dir"/var/lib/apt/lists/* "$dir"/usr/share/{doc,man,info,locale}/* \
    "$dir"/var/log/* "$dir"/tmp/*
  touch "$dir.complete"
  log "base $(basename "$dir"): built ($(du -sh "$dir" | cut -f1))"
}

# rootfs_id DIR: what identifies a base: its suite and the exact packages installed in it.
rootfs_id() { { echo "$IMAGE_BASE_SUITE"; cat "$1/var/lib/dpkg/status"; } | sha256sum | cut -c1-12; }

# The wheels of the image's requirements.txt for its CPython 3.11 on x86_64, fetched by the host's pip (a
# container has neither its index configuration nor its CA bundle). Prints the wheelhouse's path.
wheelhouse() {
  local dir; dir="$WHEELS_DIR/$(sha256sum <"$REPO_DIR/$REQUIREMENTS" | cut -c1-12)"
  if [[ -f "$dir/.complete" ]]; then log "wheels: cached ($dir)"; echo "$dir"; return; fi
  rm -rf "$dir"; mkdir -p "$dir"
  log "wheels: pip download -r $REQUIREMENTS"
  python3 -m pip download -q --disable-pip-version-check -d "$dir" --only-binary=:all: \
    --implementation cp --python-version 3.11 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -r "$REPO_DIR/$REQUIREMENTS" >&2 ||
    die "pip download failed"
  # Every wheel the resolver brought must be pinned, or the next build may differ from this one.
  python3 - "$REPO_DIR/$REQUIREMENTS" "$dir" <<'EOF' || die "$REQUIREMENTS is not closed under dependencies"
import pathlib, re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
pins = set()
for line in pathlib.Path(sys.argv[1]).read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
        name, _, version = line.partition("==")
        pins.add((norm(name), version))
wheels = {(norm(w.name.split("-")[0]), w.name.split("-")[1]) for w in pathlib.Path(sys.argv[2]).glob("*.whl")}
if missing := wheels - pins:
    sys.exit(f"not pinned in {sys.argv[1]}: " + ", ".join(f"{n}=={v}" for n, v in sorted(missing)))
EOF
  touch "$dir/.complete"
  log "wheels: $(find "$dir" -name '*.whl' | wc -l) wheels, $(du -sh "$dir" | cut -f1)"
  echo "$dir"
}

dockerd_up() { dkr version >/dev/null 2>&1; }

# The engine's pid, from its pid file, if that process is alive and is ours.
dockerd_pid() {
  local pid
  pid="$(cat "$DOCKER_RUN/dockerd.pid" 2>/dev/null)" || return 1
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -F -- "$DOCKER_RUN" >/dev/null && echo "$pid"
}

# Debian's engine, kept away from everything the cluster owns: no iptables rules, no bridge, no
# forwarding or masquerading changes, containers under a cgroup parent of its own.
start_dockerd() {
  if dockerd_up; then log "dockerd: already running ($DOCKER_SOCK)"; return; fi
  mkdir -p "$DOCKER_ROOT" "$DOCKER_RUN"
  echo '{}' >"$DOCKER_RUN/daemon.json"
  echo "--- $(date -u +%FT%TZ) start" >>"$CACHE_DIR/dockerd.log"
  STARTED_DOCKERD=true
  # At the lowest CPU priority, which the build's containers inherit.
  low setsid dockerd --config-file "$DOCKER_RUN/daemon.json" --data-root "$DOCKER_ROOT" \
    --exec-root "$DOCKER_RUN/exec" --pidfile "$DOCKER_RUN/dockerd.pid" -H "unix://$DOCKER_SOCK" \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
    --userland-proxy=false --cgroup-parent=podq-docker --log-level=warn \
    >>"$CACHE_DIR/dockerd.log" 2>&1 </dev/null &
  local deadline=$((SECONDS + 60))
  until dockerd_up; do
    if ((SECONDS >= deadline)); then
      tail -20 "$CACHE_DIR/dockerd.log" >&2
      die "dockerd did not answer within 60s (log: $CACHE_DIR/dockerd.log)"
    fi
    sleep 0.3
  done
  log "dockerd: started (pid $(dockerd_pid), data root $DOCKER_ROOT)"
}

# Stops the engine this script started; it unmounts its data root (a bind mount of itself) on the way.
stop_dockerd() {
  STARTED_DOCKERD=false
  local pid
  pid="$(dockerd_pid)" || return 0
  kill -TERM "$pid"
  local deadline=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; log "dockerd: killed (pid $pid)"; else log "dockerd: stopped"; fi
}

# import_base ROOTFS REF: the rootfs as an image in the engine, unless it already holds REF.
import_base() {
  local rootfs=$1 ref=$2
  if dkr image inspect "$ref" >/dev/null 2>&1; then return; fi
  log "docker import $ref"
  tar -C "$rootfs" --numeric-owner -c . | dkr import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$ref" >/dev/null
}

# build REF OUT WHEELHOUSE RUNTIME_BASE BUILD_BASE: docker build of a context holding only what the
# Dockerfile reads, saved to OUT as an OCI archive.
build() {
  local ref=$1 out=$2 wheels=$3 runtime_base=$4 build_base=$5
  start_dockerd
  import_base "$RUNTIME_ROOTFS" "$runtime_base"
  import_base "$BUILD_ROOTFS" "$build_base"
  WORK="$(mktemp -d "$CACHE_DIR/$KIND-build.XXXXXX")"
  mkdir -p "$WORK/context"
  # shellcheck disable=SC2046 # a list of paths without spaces
  (cd "$REPO_DIR" && cp --parents $(context_files) "$WORK/context/")
  cp -al "$wheels" "$WORK/context/wheelhouse"
  log "docker build $ref (log: $BUILD_LOG)"
  local t0=$SECONDS
  dkr build --network=none \
    --build-arg BASE_IMAGE="$runtime_base" --build-arg BUILD_IMAGE="$build_base" --build-arg PIP_NO_INDEX=1 \
    -f "$WORK/context/$DOCKERFILE" -t "$ref" "$WORK/context" >"$BUILD_LOG" 2>&1 ||
    { tail -30 "$BUILD_LOG" >&2; die "docker build failed (log: $BUILD_LOG)"; }
  log "docker build: done in $((SECONDS - t0))s ($(dkr image inspect -f '{{.Size}}' "$ref" | numfmt --to=iec))"
  [[ "$(dkr image inspect -f '{{.Config.User}}' "$ref")" == 65532:65532 ]] || die "$ref does not run as 65532:65532"
  dkr run --rm --network=none --entrypoint "${SMOKE[0]}" "$ref" "${SMOKE[@]:1}" >/dev/null ||
    die "$ref does not run: ${SMOKE[*]}"
  dkr save -o "$WORK/image.tar" "$ref"
  mkdir -p "$IMAGES_DIR"
  python3 "$CLUSTER_DIR/images/docker2oci.py" "$WORK/image.tar" --ref "$ref" -o "$out"
  # Keep only the newest of this image, in the archives (up.sh imports every archive) and in the engine.
  find "$IMAGES_DIR" -name "${IMAGE_NAME##*/}_*.tar" ! -path "$out" -delete
  local old
  for old in $(dkr image ls --format '{{.Repository}}:{{.Tag}}' "$IMAGE_NAME"); do
    [[ "$old" == "$ref" ]] || dkr rmi "$old" >/dev/null
  done
  log "$KIND image $ref: built ($(du -h "$out" | cut -f1))"
}

main() {
  mkdir -p "$CACHE_DIR"
  # One build at a time: concurrent runs wait, then find the image cached.
  exec 9>"$CACHE_DIR/$KIND-image.lock"
  flock 9
  # shellcheck disable=SC2086 # a list of names
  install_packages $IMAGE_BUILD_PACKAGES
  build_rootfs "$RUNTIME_ROOTFS" python3,ca-certificates
  build_rootfs "$BUILD_ROOTFS" python3,python3-pip,ca-certificates
  local runtime_base build_base inputs ref out wheels
  runtime_base="podq.local/python-base:$IMAGE_BASE_SUITE-$(rootfs_id "$RUNTIME_ROOTFS")"
  build_base="podq.local/python-build-base:$IMAGE_BASE_SUITE-$(rootfs_id "$BUILD_ROOTFS")"
  # shellcheck disable=SC2046 # a list of paths without spaces
  inputs="$( { echo "$runtime_base $build_base"; cd "$REPO_DIR" && sha256sum $(context_files); } |
    sha256sum | cut -c1-12)"
  ref="$IMAGE_NAME:dev-$inputs"
  out="$IMAGES_DIR/${IMAGE_NAME##*/}_dev-$inputs.tar"
  if [[ -f "$out" ]]; then
    log "$KIND image $ref: cached"
  else
    wheels="$(wheelhouse)"
    build "$ref" "$out" "$wheels" "$runtime_base" "$build_base"
  fi
  if pid_alive containerd; then import_image "$out"; fi
  echo "$ref"
}

[[ "${BASH_SOURCE[0]}" != "$0" ]] || main "$@"
