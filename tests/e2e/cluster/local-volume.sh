#!/usr/bin/env bash
# A PersistentVolume for the harness cluster, which has no storage provisioner: a directory of this
# machine (the cluster's only node) as a hostPath volume of the StorageClass `podq-local`, which a claim
# naming that class binds to.
#   local-volume.sh NAME SIZE     create it (directory owned by 65532, the uid podq's images run as:
#                                 fsGroup does not apply to hostPath volumes)
#   local-volume.sh --delete NAME delete the PersistentVolume and its directory
# Needs root and KUBECONFIG (or the harness's kubeconfig).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export KUBECONFIG="${KUBECONFIG:-$KUBECONFIG_PATH}"
VOLUMES_DIR="$RUN_DIR/volumes"
STORAGE_CLASS=podq-local

create() {
  local name=$1 size=$2 dir="$VOLUMES_DIR/$1"
  install -d -m 0700 -o 65532 -g 65532 "$dir"
  kubectl apply -f - >&2 <<YAML
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $name
  labels: {podq.dev/volume: local}
spec:
  storageClassName: $STORAGE_CLASS
  capacity: {storage: $size}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: $dir, type: Directory}
YAML
  log "volume $name: $size at $dir, class $STORAGE_CLASS"
}

delete() {
  local name=$1
  kubectl delete pv "$name" --ignore-not-found --wait=true >&2
  rm -rf "${VOLUMES_DIR:?}/$name"
  log "volume $name: deleted"
}

[[ $EUID -eq 0 ]] || die "local-volume.sh must run as root (it makes a directory owned by 65532)"
case "${1:-}" in
  --delete) [[ $# -eq 2 ]] || die "usage: local-volume.sh --delete NAME"; delete "$2" ;;
  -* | "") die "usage: local-volume.sh NAME SIZE | --delete NAME" ;;
  *) [[ $# -eq 2 ]] || die "usage: local-volume.sh NAME SIZE"; create "$1" "$2" ;;
esac
