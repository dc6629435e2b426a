#!/usr/bin/env bash
# Restart the harness cluster's kube-apiserver as an upgrade (default: SIGTERM, its graceful shutdown) or a
# crash (--kill: SIGKILL) would, then start it again with up.sh (idempotent) and wait for /readyz; etcd
# keeps the state. The e2e tier uses it (PODQ_E2E_RESTART_APISERVER) to prove podq's watch recovers.
# A graceful stop takes about a minute here: the API server stops listening at once, then waits up to 60 s
# for open connections (its clients' watches) before it exits.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

signal=TERM
[[ ${1:-} == --kill ]] && signal=KILL
[[ $EUID -eq 0 ]] || die "restart-apiserver.sh must run as root"
pid_alive kube-apiserver || die "kube-apiserver is not running (tests/e2e/cluster/up.sh)"
pid="$(cat "$PID_DIR/kube-apiserver.pid")"
kill "-$signal" "$pid"
# Gone, or a zombie: the harness starts it detached, and nothing here may be left to reap it.
wait_for "kube-apiserver (pid $pid) stopped by SIG$signal" 120 \
  bash -c "[[ ! -e /proc/$pid ]] || grep -q '^State:.*Z' /proc/$pid/status"
"$CLUSTER_DIR/up.sh" >/dev/null
