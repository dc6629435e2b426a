#!/usr/bin/env bash
# Prove that the cluster from up.sh runs what podq needs, with the locally built busybox image:
#   1. a namespace enforcing Pod Security "restricted" admits a pod with podq's securityContext and
#      rejects one without it;
#   2. that pod runs to Succeeded and its log is readable;
#   3. a pod allocating beyond its memory limit ends OOMKilled;
#   4. a pod outliving activeDeadlineSeconds ends Failed with reason DeadlineExceeded.
# Usage: smoke.sh [--keep]   (--keep leaves the namespace for inspection)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NS=podq-e2e-smoke
export KUBECONFIG="${KUBECONFIG:-$KUBECONFIG_PATH}"
KEEP=false
[[ "${1:-}" == --keep ]] && KEEP=true

k() { kubectl "$@"; }

# pod NAME MEMORY ACTIVE_DEADLINE COMMAND: a pod as podq's kubernetes launcher shapes it.
pod() {
  local name=$1 memory=$2 deadline=$3 cmd=$4
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $name
  namespace: $NS
  labels: {app.kubernetes.io/managed-by: podq-e2e-smoke}
spec:
  restartPolicy: Never
  activeDeadlineSeconds: $deadline
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsNonRoot: true
    runAsUser: 65534
    runAsGroup: 65534
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: main
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "$cmd"]
    terminationMessagePolicy: FallbackToLogsOnError
    resources:
      requests: {cpu: 100m, memory: $memory}
      limits: {cpu: 100m, memory: $memory}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
    volumeMounts: [{name: tmp, mountPath: /tmp}]
  volumes: [{name: tmp, emptyDir: {sizeLimit: 16Mi}}]
EOF
}

# wait_phase POD PHASE TIMEOUT
wait_phase() {
  k -n "$NS" wait --for=jsonpath='{.status.phase}'="$2" "pod/$1" --timeout="${3}s" >/dev/null ||
    { k -n "$NS" get pod "$1" -o yaml >&2; die "pod $1 did not reach $2"; }
}

main() {
  log "smoke: namespace $NS (Pod Security: restricted)"
  k delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
  k create namespace "$NS" >/dev/null
  k label namespace "$NS" pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/enforce-version=latest app.kubernetes.io/managed-by=podq-e2e-smoke >/dev/null

  if k -n "$NS" run not-restricted --image "$BUSYBOX_IMAGE" --image-pull-policy Never --restart Never \
    --command -- true >/dev/null 2>"$RUN_DIR/smoke-rejected.err"; then
    die "a pod without the restricted securityContext was admitted"
  fi
  log "restricted: a plain pod is rejected: $(grep -o 'violates PodSecurity[^:]*' "$RUN_DIR/smoke-rejected.err")"

  # shellcheck disable=SC2016 # expanded in the pod
  pod hello 32Mi 60 'echo hello from $(id -u) on $(hostname); echo scratch > /tmp/ok && cat /tmp/ok' | k apply -f - >/dev/null
  wait_phase hello Succeeded 90
  log "hello: Succeeded, log: $(k -n "$NS" logs hello | tr '\n' ' ')"

  pod oom 32Mi 120 'head -c 256m /dev/zero | tail' | k apply -f - >/dev/null
  pod deadline 32Mi 5 'sleep 3600' | k apply -f - >/dev/null
  wait_phase oom Failed 90
  local reason
  reason="$(k -n "$NS" get pod oom -o jsonpath='{.status.containerStatuses[0].state.terminated.reason}')"
  [[ "$reason" == OOMKilled ]] || { k -n "$NS" get pod oom -o yaml >&2; die "oom: reason $reason, want OOMKilled"; }
  log "oom: $(k -n "$NS" get pod oom -o jsonpath='phase={.status.phase} reason={.status.containerStatuses[0].state.terminated.reason} exitCode={.status.containerStatuses[0].state.terminated.exitCode}')"

  wait_phase deadline Failed 90
  reason="$(k -n "$NS" get pod deadline -o jsonpath='{.status.reason}')"
  [[ "$reason" == DeadlineExceeded ]] || { k -n "$NS" get pod deadline -o yaml >&2; die "deadline: reason $reason, want DeadlineExceeded"; }
  log "deadline: $(k -n "$NS" get pod deadline -o jsonpath='phase={.status.phase} reason={.status.reason} message={.status.message}')"

  if $KEEP; then
    log "smoke: passed; namespace $NS kept"
  else
    k delete namespace "$NS" --wait=true >/dev/null
    log "smoke: passed"
  fi
}

[[ "${BASH_SOURCE[0]}" != "$0" ]] || main "$@"
