# Shared settings and helpers for build.sh / up.sh / down.sh / smoke.sh. Sourced, not run.
# shellcheck shell=bash disable=SC2034  # the settings are for the scripts that source this

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$CLUSTER_DIR/versions.env"

CACHE_DIR="${PODQ_CACHE_DIR:-$HOME/.cache/podq}"
K8S_CACHE="$CACHE_DIR/k8s/$K8S_VERSION"
K8S_BIN="$K8S_CACHE/bin"
IMAGES_DIR="$CACHE_DIR/images"

# Everything a running cluster owns (certs, etcd data, containerd root/state, kubelet dir, logs, pids).
RUN_DIR="${PODQ_E2E_RUN_DIR:-/var/lib/podq-e2e}"
LOG_DIR="$RUN_DIR/logs"
PID_DIR="$RUN_DIR/pids"
PKI_DIR="$RUN_DIR/pki"
KUBECONFIG_PATH="$RUN_DIR/kubeconfig"

NODE_NAME=podq-e2e
CLUSTER_NAME=podq-e2e
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1
APISERVER_PORT=6443
# Not etcd's default ports, so a developer's own etcd can run beside the cluster.
ETCD_CLIENT_URL=http://127.0.0.1:12379
ETCD_PEER_URL=http://127.0.0.1:12380
CONTAINERD_SOCK="$RUN_DIR/containerd/containerd.sock"
CNI_BRIDGE=podq0
# The bridge's own address (host-local's gateway, the range's first address): pods reach this host at
# it, and a test's fixture server bound to it is reachable from pods and this host only.
POD_GATEWAY=10.88.0.1
CNI_BIN_DIR=/usr/lib/cni
# Pod traffic must stay on this machine: the node address is the host's own primary address.
NODE_IP="${PODQ_E2E_NODE_IP:-$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i=1;i<NF;i++) if ($i=="src") {print $(i+1); exit}}')}"
NODE_IP="${NODE_IP:-127.0.0.1}"

export _T0="${_T0:-$(date +%s.%N)}"
log() { printf '[%6.1fs] %s\n' "$(awk -v a="$_T0" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Run CPU-heavy work without starving whoever else shares the machine.
low() { nice -n 19 "$@"; }

# pid_alive NAME: the process recorded for NAME runs, and is ours (its command line names RUN_DIR, so
# a recycled pid is never mistaken for it).
pid_alive() {
  local pid
  pid="$(cat "$PID_DIR/$1.pid" 2>/dev/null)" || return 1
  [[ -n "$pid" ]] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -F "$RUN_DIR" >/dev/null
}

# wait_for DESCRIPTION TIMEOUT_SECONDS COMMAND... : poll COMMAND until it succeeds.
wait_for() {
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what"
    sleep 0.5
  done
  log "$what: ok"
}

# start NAME COMMAND...: run COMMAND detached in its own session, log to LOG_DIR/NAME.log, unless the
# process recorded in PID_DIR/NAME.pid is still alive.
start() {
  local name=$1; shift
  if pid_alive "$name"; then
    log "$name: already running (pid $(cat "$PID_DIR/$name.pid"))"
    return
  fi
  echo "--- $(date -u +%FT%TZ) start: $*" >>"$LOG_DIR/$name.log"
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$PID_DIR/$name.pid"
  log "$name: started (pid $!, log $LOG_DIR/$name.log)"
}

# alive NAME: fail loudly, with the end of its log, if NAME has died.
alive() {
  pid_alive "$1" || { tail -20 "$LOG_DIR/$1.log" >&2; die "$1 exited (log: $LOG_DIR/$1.log)"; }
}

ctr_k8s() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

# import_image TAR: import an OCI archive of IMAGES_DIR into the cluster's containerd, unless the
# reference it names already points at the same manifest there (a rebuilt image is imported again).
import_image() {
  local ref digest
  read -r ref digest < <(tar -xOf "$1" index.json | python3 -c 'import json,sys; m=json.load(sys.stdin)["manifests"][0]; print(m["annotations"]["io.containerd.image.name"], m["digest"])')
  if ctr_k8s images ls "name==$ref" | grep -F "$digest" >/dev/null; then return; fi
  ctr_k8s images import "$1" >/dev/null
  log "image $ref: imported"
}

# install_packages PKG...: install from Debian whichever of PKG is missing. Debian's containerd and
# docker.io would start daemons of their own on install: a policy-rc.d (the one this machine has, or a
# temporary one) forbids that, since the harness runs its own.
install_packages() {
  local pkg missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    log "host packages: cached ($*)"
    return
  fi
  log "host packages: installing ${missing[*]}"
  mkdir -p "$CACHE_DIR"
  [[ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null)" ]] ||
    apt-get update -qq
  local policy=/usr/sbin/policy-rc.d own_policy=false
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=true
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive low apt-get install -y -q --no-install-recommends "${missing[@]}" \
    >"$CACHE_DIR/apt-install.log" 2>&1 || rc=$?
  ! $own_policy || rm -f "$policy"
  ((rc == 0)) || { tail -20 "$CACHE_DIR/apt-install.log"; die "apt-get install failed"; }
  log "host packages: installed"
}

# debootstrap takes its packages from the Debian mirror this machine's apt is already set up with.
host_debian_mirror() {
  local uri=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    uri=$(awk '$1 == "URIs:" { print $2; exit }' /etc/apt/sources.list.d/*.sources)
  fi
  if [[ -z $uri && -f /etc/apt/sources.list ]]; then
    uri=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list)
  fi
  [[ -n $uri ]] || die "no Debian mirror found in this machine's apt sources"
  echo "$uri"
}
