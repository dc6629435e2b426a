#!/usr/bin/env bash
# The test command: installs podq with its dev tools into a virtualenv, then lint, type-check and every
# test tier. Extra arguments go to pytest (e.g. `bash tests/run.sh -m unit`).
#
# The e2e tier needs a Kubernetes cluster; PODQ_E2E says where it comes from (tests/e2e/README.md):
#   auto      (default) KUBECONFIG when it is set, with PODQ_E2E_WORKER_IMAGE and PODQ_E2E_HOST_ADDRESS;
#             else, as root on Linux with Go, the harness cluster of tests/e2e/cluster, brought up here
#             with the worker image built and imported; else the e2e tier is deselected, loudly.
#   required  the same, but without a cluster the run fails.
#   off       the e2e tier is deselected.
# The chart tests (marker `chart`) need helm: tests/tools/build-helm.sh builds the pinned version from the
# Go module proxy (cached), else the helm on PATH is used, else they are deselected, loudly (with
# PODQ_E2E=required the run fails instead). The promtool tests (marker `promtool`) likewise: PODQ_PROMTOOL or
# promtool on PATH, else Debian's prometheus package installed as root, else deselected (or failed). The
# browser test (marker `browser`) likewise: PODQ_CHROMIUM or chromium on PATH, else Debian's chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${PODQ_VENV:-.venv}
e2e=${PODQ_E2E:-auto}
harness=tests/e2e/cluster
harness_kubeconfig=${PODQ_E2E_RUN_DIR:-/var/lib/podq-e2e}/kubeconfig

timings=() step_name="" step_start=0 skipped_note=""
end_step() { [[ -z $step_name ]] || timings+=("$(printf '%6ds  %s' $((SECONDS - step_start)) "$step_name")"); }
step() {
  end_step
  step_name=$1 step_start=$SECONDS
  printf '\n== %s (%s)\n' "$1" "$(date +%T)"
}
summary() {
  end_step
  ((${#timings[@]})) || return 0
  printf '\n== step timings (total %ds)\n' "$SECONDS"
  printf '%s\n' "${timings[@]}"
  [[ -z $skipped_note ]] || printf '%s\n' "$skipped_note" >&2
}
trap summary EXIT

# A tier did not run: say so where nobody can miss it, now and again at the very end.
deselected=()
banner() {
  local text
  text="$(printf '%s\n' \
    '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!' \
    "$@" \
    '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!')"
  printf '\n%s\n' "$text" >&2
  skipped_note="${skipped_note:+$skipped_note$'\n'}$text"
}
skip_e2e() {
  banner "!! THE E2E TIER DID NOT RUN: $1" \
    '!! To run it: as root on Linux, "PODQ_E2E=required bash tests/run.sh" brings up the harness cluster;' \
    '!! against kind or any cluster, see tests/e2e/README.md (KUBECONFIG, PODQ_E2E_WORKER_IMAGE,' \
    '!! PODQ_E2E_CONTROLLER_IMAGE, PODQ_E2E_HOST_ADDRESS).'
  deselected+=(e2e)
}

no_cluster() {
  if [[ $e2e == required ]]; then
    echo "PODQ_E2E=required, but $1" >&2
    exit 1
  fi
  skip_e2e "$1"
}

harness_can_run() {
  [[ $EUID -eq 0 && $(uname -s) == Linux ]] && command -v go >/dev/null && command -v apt-get >/dev/null
}

# Decides the e2e tier before anything else runs, so a bad PODQ_E2E fails at once.
case $e2e in
  auto | required | off) ;;
  *) echo "PODQ_E2E must be auto, required or off, not '$e2e'" >&2; exit 2 ;;
esac
e2e_cluster=""
if [[ $e2e == off ]]; then
  echo "PODQ_E2E=off: the e2e tier is deselected"
  deselected+=(e2e)
elif [[ -n ${KUBECONFIG:-} && $KUBECONFIG != "$harness_kubeconfig" ]]; then
  if [[ -z ${PODQ_E2E_WORKER_IMAGE:-} || -z ${PODQ_E2E_CONTROLLER_IMAGE:-} || -z ${PODQ_E2E_HOST_ADDRESS:-} ]]; then
    no_cluster "KUBECONFIG is set, but PODQ_E2E_WORKER_IMAGE, PODQ_E2E_CONTROLLER_IMAGE or PODQ_E2E_HOST_ADDRESS is not (all are needed)."
  else
    e2e_cluster=kubeconfig
  fi
elif harness_can_run; then
  e2e_cluster=harness
else
  no_cluster "no KUBECONFIG, and the harness cluster needs root on Linux with Go and apt-get."
fi

step "install into $venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# bench: DuckDB, so the benchmark's smoke test covers its engine section too.
"$venv/bin/python" -m pip install --quiet -e '.[dev,bench]'

# The store's tests run on SQLite and on a real PostgreSQL server that tests/support/postgres.py starts
# (initdb into a directory of its own, as an unprivileged user). Debian's package provides the binaries;
# its own cluster service is kept from starting.
postgres_binaries() { command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
if ! postgres_binaries && [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
  step "postgresql (apt-get install postgresql, for the store's PostgreSQL tests)"
  [[ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null)" ]] || apt-get update -qq
  own_policy=false
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=true
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null
  ! $own_policy || rm -f /usr/sbin/policy-rc.d
fi
if postgres_binaries; then
  export PODQ_POSTGRES=required
else
  banner "!! THE POSTGRESQL VARIANTS OF THE STORE TESTS WILL BE SKIPPED: no initdb, and apt-get install" \
    '!! postgresql needs root. Install PostgreSQL (initdb on PATH or under /usr/lib/postgresql/*/bin).'
fi

step "ruff"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .

step "mypy"
"$venv/bin/mypy"

step "import layers (lint-imports, .importlinter)"
"$venv/bin/lint-imports" --no-cache

if [[ -z ${PODQ_HELM:-} ]] && command -v go >/dev/null; then
  step "helm (tests/tools/build-helm.sh; built once, then cached)"
  PODQ_HELM="$(PODQ_BUILD_JOBS=${PODQ_BUILD_JOBS:-2} tests/tools/build-helm.sh)"
fi
PODQ_HELM="${PODQ_HELM:-$(command -v helm || true)}"
if [[ -n $PODQ_HELM ]]; then
  export PODQ_HELM
  echo "chart tests: PODQ_HELM=$PODQ_HELM ($("$PODQ_HELM" version --short))"
elif [[ $e2e == required ]]; then
  echo "PODQ_E2E=required, but there is no helm: neither Go to build it nor helm on PATH" >&2
  exit 1
else
  banner "!! THE CHART TESTS DID NOT RUN: no helm, and no Go to build it (tests/tools/build-helm.sh)."
  deselected+=(chart)
fi

# promtool (Prometheus' linter, for /metrics and the chart's alerts: marker `promtool`) comes with Debian's
# prometheus package; installed here as root when missing, without starting its daemon.
install_promtool() {
  [[ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null)" ]] || apt-get update -qq
  local policy=/usr/sbin/policy-rc.d own_policy=false rc=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=true
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null || rc=$?
  ! $own_policy || rm -f "$policy"
  return $rc
}
PODQ_PROMTOOL="${PODQ_PROMTOOL:-$(command -v promtool || true)}"
if [[ -z $PODQ_PROMTOOL && $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
  step "promtool (apt-get install prometheus)"
  install_promtool || echo "apt-get install prometheus failed" >&2
  PODQ_PROMTOOL="$(command -v promtool || true)"
fi
if [[ -n $PODQ_PROMTOOL ]]; then
  export PODQ_PROMTOOL
  echo "promtool tests: PODQ_PROMTOOL=$PODQ_PROMTOOL ($("$PODQ_PROMTOOL" --version 2>&1 | head -1))"
elif [[ $e2e == required ]]; then
  echo "PODQ_E2E=required, but there is no promtool: apt-get install prometheus (as root) or set PODQ_PROMTOOL" >&2
  exit 1
else
  banner "!! THE PROMTOOL TESTS DID NOT RUN: no promtool, and no root with apt-get to install Debian's prometheus."
  deselected+=(promtool)
fi

# Headless Chromium (marker `browser`: the test that opens /docs as a browser does) is Debian's chromium
# package; installed here as root when missing.
PODQ_CHROMIUM="${PODQ_CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
if [[ -z $PODQ_CHROMIUM && $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
  step "chromium (apt-get install chromium)"
  [[ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null)" ]] || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null \
    || echo "apt-get install chromium failed" >&2
  PODQ_CHROMIUM="$(command -v chromium || true)"
fi
if [[ -n $PODQ_CHROMIUM ]]; then
  export PODQ_CHROMIUM
  echo "browser tests: PODQ_CHROMIUM=$PODQ_CHROMIUM ($("$PODQ_CHROMIUM" --version 2>/dev/null | head -1))"
elif [[ $e2e == required ]]; then
  echo "PODQ_E2E=required, but there is no Chromium: apt-get install chromium (as root) or set PODQ_CHROMIUM" >&2
  exit 1
else
  banner "!! THE BROWSER TESTS DID NOT RUN: no Chromium, and no root with apt-get to install Debian's chromium."
  deselected+=(browser)
fi

if [[ $e2e_cluster == harness ]]; then
  # A cold build of Kubernetes takes ~13 min on one core: use both (the build runs at nice 19).
  step "e2e: harness cluster (tests/e2e/cluster/up.sh; builds Kubernetes once, then cached)"
  exports="$(PODQ_BUILD_JOBS=${PODQ_BUILD_JOBS:-2} "$harness/up.sh")"
  eval "$exports"
  step "e2e: images (tests/e2e/cluster/build-image.sh worker, controller)"
  PODQ_E2E_WORKER_IMAGE="$("$harness/build-image.sh" worker)"
  PODQ_E2E_CONTROLLER_IMAGE="$("$harness/build-image.sh" controller)"
  # How the e2e tier restarts this cluster's API server (the watch-recovery test).
  PODQ_E2E_RESTART_APISERVER="$PWD/$harness/restart-apiserver.sh"
  export KUBECONFIG PODQ_E2E_HOST_ADDRESS PODQ_E2E_WORKER_IMAGE PODQ_E2E_CONTROLLER_IMAGE PODQ_E2E_RESTART_APISERVER
fi
if [[ -n $e2e_cluster ]]; then
  echo "e2e tier: KUBECONFIG=$KUBECONFIG PODQ_E2E_WORKER_IMAGE=$PODQ_E2E_WORKER_IMAGE" \
    "PODQ_E2E_CONTROLLER_IMAGE=$PODQ_E2E_CONTROLLER_IMAGE PODQ_E2E_HOST_ADDRESS=$PODQ_E2E_HOST_ADDRESS"
fi

step "pytest"
# The caller's own -m, if any, comes later and wins.
pytest_args=()
if ((${#deselected[@]})); then
  expression="not ${deselected[0]}"
  for marker in "${deselected[@]:1}"; do expression+=" and not $marker"; done
  pytest_args=(-m "$expression")
fi
# pytest exits 5 when it collects nothing; set -e turns that into a failure too.
"$venv/bin/python" -m pytest "${pytest_args[@]}" "$@"
