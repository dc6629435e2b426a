#!/usr/bin/env bash
# Build (once) everything the e2e cluster runs, cached by version under $PODQ_CACHE_DIR:
#   k8s/<version>/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy}
#   images/<name>_<tag>.tar   OCI archives of the local pause and busybox images
# and install the host packages it needs from Debian. Whatever is already cached is skipped.
#
# Usage: build.sh [--packages-only]
# Builds run at the lowest CPU priority and one package at a time (PODQ_BUILD_JOBS to change that),
# so a shared 2-core machine stays usable.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BUILD_JOBS="${PODQ_BUILD_JOBS:-1}"

k8s_built() {
  local c
  for c in $K8S_COMPONENTS; do [[ -x "$K8S_BIN/$c" ]] || return 1; done
  [[ -f "$K8S_BIN/.complete" ]]
}

# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the staging modules (k8s.io/api,
# k8s.io/client-go, ...) with directories inside its own repository. A scratch module that requires it
# and replaces each staging module with its published v0.X.Y twin builds the real commands.
build_k8s() {
  if k8s_built; then
    log "kubernetes $K8S_VERSION: cached in $K8S_BIN"
    return
  fi
  local src="$K8S_CACHE/src"
  mkdir -p "$src" "$K8S_BIN"
  log "kubernetes $K8S_VERSION: preparing scratch module in $src"
  local k8s_mod
  k8s_mod="$(cd / && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  {
    echo "module podq.local/e2e/k8sbuild"
    echo
    echo "go $(awk '$1=="go"{print $2; exit}' "$k8s_mod")"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    # Every k8s.io module that k8s.io/kubernetes requires at the placeholder v0.0.0 is a staging module.
    awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$k8s_mod" | sort -u |
      while read -r m; do echo "	$m => $m $K8S_STAGING_VERSION"; done
    echo ")"
  } >"$src/go.mod"
  local pkgs=() c
  for c in $K8S_COMPONENTS; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  (cd "$src" && GOFLAGS=-mod=mod go get "${pkgs[@]/%/@$K8S_VERSION}" >"$src/go-get.log" 2>&1) ||
    { tail -20 "$src/go-get.log"; die "go get failed (log: $src/go-get.log)"; }

  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local vpkg=k8s.io/component-base/version
  local ldflags="-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
  ldflags+=" -X $vpkg.gitCommit=$K8S_GIT_COMMIT -X $vpkg.gitTreeState=clean"
  ldflags+=" -X $vpkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  # The client-go copy of the version package is what client user agents report.
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

  log "kubernetes $K8S_VERSION: compiling $K8S_COMPONENTS (-p $BUILD_JOBS, nice 19; ~tens of minutes cold)"
  local t0=$SECONDS
  (cd "$src" && CGO_ENABLED=0 GOMAXPROCS="$BUILD_JOBS" low go build -p "$BUILD_JOBS" -trimpath \
    -ldflags "$ldflags" -o "$K8S_BIN/" "${pkgs[@]}" >"$src/build.log" 2>&1) ||
    { tail -30 "$src/build.log"; die "go build failed (log: $src/build.log)"; }
  echo "built $(date -u +%FT%TZ) in $((SECONDS - t0))s with -p $BUILD_JOBS" >"$K8S_BIN/.complete"
  log "kubernetes $K8S_VERSION: built in $((SECONDS - t0))s"
  "$K8S_BIN/kubelet" --version >&2
}

image_tar() { local ref=$1; local name=${ref##*/}; echo "$IMAGES_DIR/${name/:/_}.tar"; }

# The pause image cannot be pulled, so it is a 30-line static Go program of our own.
build_pause() {
  local out; out="$(image_tar "$PAUSE_IMAGE")"
  if [[ -f "$out" ]]; then log "pause image: cached ($out)"; return; fi
  local work; work="$(mktemp -d)"
  mkdir -p "$work/src" "$work/rootfs" "$IMAGES_DIR"
  cp "$CLUSTER_DIR/images/pause/main.go" "$work/src/"
  (cd "$work/src" && go mod init podq.local/pause >/dev/null 2>&1 &&
    CGO_ENABLED=0 GOMAXPROCS="$BUILD_JOBS" low go build -p "$BUILD_JOBS" -trimpath -ldflags '-s -w' -o "$work/rootfs/pause" .)
  python3 "$CLUSTER_DIR/images/mkimage.py" --rootfs "$work/rootfs" --ref "$PAUSE_IMAGE" \
    --entrypoint /pause --user 65535:65535 -o "$out"
  rm -rf "$work"
  log "pause image: built ($out, $(du -h "$out" | cut -f1))"
}

# A static busybox is enough of a userland for the cluster's own smoke tests.
build_busybox() {
  local out; out="$(image_tar "$BUSYBOX_IMAGE")"
  if [[ -f "$out" ]]; then log "busybox image: cached ($out)"; return; fi
  local work; work="$(mktemp -d)"
  mkdir -p "$work/rootfs/bin" "$work/rootfs/tmp" "$work/rootfs/etc" "$IMAGES_DIR"
  cp /bin/busybox "$work/rootfs/bin/busybox"
  local applet
  for applet in $(/bin/busybox --list); do
    [[ -e "$work/rootfs/bin/$applet" ]] || ln -s busybox "$work/rootfs/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$work/rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$work/rootfs/etc/group"
  python3 "$CLUSTER_DIR/images/mkimage.py" --rootfs "$work/rootfs" --ref "$BUSYBOX_IMAGE" \
    --cmd /bin/sh --env PATH=/bin -o "$out"
  rm -rf "$work"
  log "busybox image: built ($out, $(du -h "$out" | cut -f1))"
}

main() {
  mkdir -p "$CACHE_DIR"
  # shellcheck disable=SC2086 # a list of names
  install_packages $DEBIAN_PACKAGES
  [[ "${1:-}" == --packages-only ]] && return
  command -v go >/dev/null || die "go is required to build the cluster components"
  build_pause
  build_busybox
  build_k8s
  log "build: done"
}

main "$@"
