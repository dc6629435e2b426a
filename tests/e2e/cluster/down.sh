#!/usr/bin/env bash
# Tear down the cluster that up.sh started: pods and their sandboxes, kubelet, kube-proxy, containerd,
# the control plane and etcd; then their iptables rules, bridge, mounts and cgroups, and the host's
# kernel tunables as they were before up.sh. State (etcd data, certificates, kubelet dir) is wiped so
# the next up.sh starts a fresh cluster; containerd's image store and the logs are kept, unless
# --purge, which removes the whole run dir. Safe to run any number of times.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $EUID -eq 0 ]] || die "down.sh must run as root"
PURGE=false
[[ "${1:-}" == --purge ]] && PURGE=true

# running PID: alive and not a zombie (whoever reaps orphans here may take its time).
running() { [[ -r "/proc/$1/stat" ]] && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }

# stop NAME: SIGTERM the recorded process, SIGKILL it if it lingers past 20s.
stop() {
  local name=$1 pid
  if pid_alive "$name"; then
    pid="$(cat "$PID_DIR/$name.pid")"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while running "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if running "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      log "$name: killed (pid $pid)"
    else
      log "$name: stopped (pid $pid)"
    fi
  fi
  rm -f "$PID_DIR/$name.pid"
}

# Processes that our containerd started and that outlived it: its shims (their command line names our
# socket) and whatever still runs in the pods' cgroups.
kill_leftovers() {
  local pid
  # shellcheck disable=SC2013 # pids are words
  for pid in $(grep -lsF -- "$CONTAINERD_SOCK" /proc/[0-9]*/cmdline | cut -d/ -f3); do
    if kill -KILL "$pid" 2>/dev/null; then log "killed leftover shim $pid"; fi
  done
  for pid in $(find /sys/fs/cgroup/pids/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null || true); do
    if kill -KILL "$pid" 2>/dev/null; then log "killed leftover pod process $pid"; fi
  done
}

# Pods first go the way the kubelet removes them (network torn down by CNI DEL); whatever is left, or
# everything when the control plane is gone, is killed through containerd directly.
remove_pods() {
  if pid_alive kubelet && pid_alive kube-apiserver && [[ -f "$KUBECONFIG_PATH" ]]; then
    kubectl --kubeconfig "$KUBECONFIG_PATH" delete pods --all --all-namespaces --grace-period=1 \
      --timeout=60s >/dev/null 2>&1 || log "warning: not every pod was deleted through the API"
  fi
  if ! pid_alive containerd; then
    # A containerd that died leaves its shims and pods running: start it again to remove them properly.
    [[ -d "$RUN_DIR/containerd/state/io.containerd.runtime.v2.task/k8s.io" ]] || return 0
    start containerd containerd --config "$RUN_DIR/containerd/config.toml"
    wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version
  fi
  local id ids netns=()
  ids="$(ctr_k8s containers ls -q 2>/dev/null || true)"
  for id in $ids; do
    # The sandboxes' network namespaces, bind-mounted under /var/run/netns by containerd.
    mapfile -t -O "${#netns[@]}" netns < <(ctr_k8s containers info "$id" 2>/dev/null | python3 -c '
import json, sys
for ns in json.load(sys.stdin).get("Spec", {}).get("linux", {}).get("namespaces", []):
    if ns.get("type") == "network" and ns.get("path", "").startswith("/var/run/netns/"):
        print(ns["path"])' || true)
    ctr_k8s tasks kill -s KILL "$id" >/dev/null 2>&1 || true
    ctr_k8s tasks delete -f "$id" >/dev/null 2>&1 || true
    ctr_k8s containers delete "$id" >/dev/null 2>&1 || true
  done
  for id in "${netns[@]}"; do
    remove_netns "$id"
  done
  [[ -z "$ids" ]] || log "pods: $(wc -w <<<"$ids") containers removed through containerd"
}

# A pod's network namespace is an nsfs mount on a file under /run/netns. When something later bind-mounts
# /run/netns onto itself (`ip netns` does), that mount hides the nsfs one beneath it, and the file can be
# neither unmounted nor unlinked (EBUSY) until the self-bind is gone; `ip netns` makes it again when needed.
remove_netns() {
  local path=$1
  umount "$path" 2>/dev/null || true
  rm -f "$path" 2>/dev/null && return 0
  if awk '$5 == "/run/netns" && $4 == "/run/netns"' /proc/self/mountinfo | grep -q .; then
    umount -l /run/netns 2>/dev/null || true
    umount "$path" 2>/dev/null || true
  fi
  rm -f "$path" 2>/dev/null || log "warning: cannot remove $path (still mounted)"
}

clean_network() {
  if [[ -x "$K8S_BIN/kube-proxy" ]] && iptables -t nat -S 2>/dev/null | grep '^-N KUBE-' >/dev/null; then
    "$K8S_BIN/kube-proxy" --cleanup >>"$LOG_DIR/kube-proxy.log" 2>&1 || true
  fi
  local table rule chain chains
  # Rules of CNI plugins carry the network name in a comment; per-pod chains are named CNI-<hash>.
  for table in nat filter mangle; do
    chains="$(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-A" && $2 ~ /^CNI-/ && /podq-e2e/ {print $2}' | sort -u)"
    iptables -t "$table" -S 2>/dev/null | { grep -F 'podq-e2e' || true; } | { grep '^-A' || true; } | while read -r rule; do
      eval "iptables -t $table ${rule/-A/-D}" 2>/dev/null || true
    done
    for chain in $chains; do
      [[ "$chain" == CNI-HOSTPORT-* ]] && continue
      iptables -t "$table" -F "$chain" 2>/dev/null || true
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
    # What kube-proxy --cleanup and the kubelet leave behind: KUBE-* chains (no other Kubernetes
    # node runs on this machine) and the jumps into them.
    iptables -t "$table" -S 2>/dev/null | { grep -E '^-A [A-Z]+ .*-j KUBE-' || true; } | while read -r rule; do
      eval "iptables -t $table ${rule/-A/-D}" 2>/dev/null || true
    done
    chains="$(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}')"
    for chain in $chains; do iptables -t "$table" -F "$chain" 2>/dev/null || true; done
    for chain in $chains; do iptables -t "$table" -X "$chain" 2>/dev/null || true; done
  done
  if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
    ip link delete "$CNI_BRIDGE" && log "network: bridge $CNI_BRIDGE deleted"
  fi
}

unmount_all() {
  local m
  findmnt -rn -o TARGET | { grep -F "$RUN_DIR/" || true; } | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

remove_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/kubepods; do
    [[ -d "$d" ]] || continue
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

restore_sysctls() {
  [[ -f "$RUN_DIR/sysctl.orig" ]] || return 0
  local kv
  while read -r kv; do sysctl -qw "$kv" 2>/dev/null || true; done <"$RUN_DIR/sysctl.orig"
  rm -f "$RUN_DIR/sysctl.orig"
  log "host: kernel tunables restored"
}

main() {
  if [[ ! -d "$RUN_DIR" ]]; then
    log "down: nothing to do ($RUN_DIR does not exist)"
    exit 0
  fi
  log "down: run dir $RUN_DIR"
  stop kubelet
  stop kube-proxy
  remove_pods
  stop containerd
  kill_leftovers
  stop kube-scheduler
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
  clean_network
  unmount_all
  remove_cgroups
  restore_sysctls
  if $PURGE; then
    rm -rf "$RUN_DIR"
    log "down: purged $RUN_DIR"
  else
    rm -rf "$RUN_DIR"/{etcd,kubelet,pki,cni,pids} "$RUN_DIR"/*.kubeconfig "$KUBECONFIG_PATH" \
      "$RUN_DIR/containerd/state" "$RUN_DIR/kube-proxy.yaml" "$RUN_DIR/smoke-rejected.err"
    log "down: done (images kept in $RUN_DIR/containerd/root, logs in $LOG_DIR; --purge removes them)"
  fi
}

[[ "${BASH_SOURCE[0]}" != "$0" ]] || main "$@"
