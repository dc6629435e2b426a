#!/usr/bin/env bash
# Build (once) the helm binary the chart checks use, from the Go module proxy, cached by version:
#   ${PODQ_CACHE_DIR:-$HOME/.cache/podq}/helm/<HELM_VERSION>/helm
# Prints the binary's path on stdout (everything else goes to stderr), so callers can do
#   PODQ_HELM="$(bash tests/tools/build-helm.sh)"
# HELM_VERSION is pinned in tests/e2e/cluster/versions.env; an exported HELM_VERSION wins.
# The build runs at the lowest CPU priority (PODQ_BUILD_JOBS packages at once, default 1), like the
# cluster's own build, so a shared machine stays usable.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
pinned_version="$(
  # shellcheck source=../e2e/cluster/versions.env
  source "$repo_root/tests/e2e/cluster/versions.env"
  echo "${HELM_VERSION:?tests/e2e/cluster/versions.env pins no HELM_VERSION}"
)"
HELM_VERSION="${HELM_VERSION:-$pinned_version}"
BUILD_JOBS="${PODQ_BUILD_JOBS:-1}"
out_dir="${PODQ_CACHE_DIR:-$HOME/.cache/podq}/helm/$HELM_VERSION"
marker="$out_dir/.complete"

log() { printf '[build-helm] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ -x "$out_dir/helm" && -f "$marker" ]]; then
  log "helm $HELM_VERSION: cached ($(cat "$marker"))"
  echo "$out_dir/helm"
  exit 0
fi
command -v go >/dev/null || die "building helm needs Go (go install from the Go module proxy)"

module=helm.sh/helm/v3
# What helm's Makefile stamps into a release build: the tag, its commit, and the Kubernetes version
# (from its client-go requirement, v0.X.Y -> 1.X) that `helm template` and `helm lint` assume by default.
info="$(cd / && go mod download -json "$module@$HELM_VERSION")" || die "go mod download $module@$HELM_VERSION failed"
read -r git_commit go_mod < <(python3 -c '
import json, sys
info = json.load(sys.stdin)
print(info.get("Origin", {}).get("Hash", "unknown"), info["GoMod"])' <<<"$info")
client_go="$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$go_mod")"
[[ $client_go =~ ^v0\.([0-9]+)\. ]] || die "cannot read helm's k8s.io/client-go version from $go_mod"
k8s_minor="${BASH_REMATCH[1]}"

ldflags="-w -s"
ldflags+=" -X $module/internal/version.version=$HELM_VERSION"
ldflags+=" -X $module/internal/version.metadata="
ldflags+=" -X $module/internal/version.gitCommit=$git_commit"
ldflags+=" -X $module/internal/version.gitTreeState=clean"
for pkg in pkg/lint/rules pkg/chartutil; do
  ldflags+=" -X $module/$pkg.k8sVersionMajor=1 -X $module/$pkg.k8sVersionMinor=$k8s_minor"
done

mkdir -p "$out_dir"
rm -f "$marker"
log "helm $HELM_VERSION: go install $module/cmd/helm (-p $BUILD_JOBS, nice 19; a few minutes cold)"
t0=$SECONDS
(cd / && CGO_ENABLED=0 GOBIN="$out_dir" GOMAXPROCS="$BUILD_JOBS" nice -n 19 \
  go install -p "$BUILD_JOBS" -trimpath -ldflags "$ldflags" "$module/cmd/helm@$HELM_VERSION") >&2 ||
  die "go install $module/cmd/helm@$HELM_VERSION failed"
"$out_dir/helm" version --short >&2
echo "built $(date -u +%FT%TZ) in $((SECONDS - t0))s with -p $BUILD_JOBS" >"$marker"
log "helm $HELM_VERSION: built in $((SECONDS - t0))s"
echo "$out_dir/helm"
