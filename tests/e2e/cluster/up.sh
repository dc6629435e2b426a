#!/usr/bin/env bash
# Bring up a single-node Kubernetes cluster from real components on this machine:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd + runc with a CNI bridge,
# kubelet and kube-proxy. Idempotent: whatever already runs is left alone, whatever is missing starts.
# Waits until the node is Ready and the default service account exists, then prints
#   export KUBECONFIG=<run dir>/kubeconfig
#   export PODQ_E2E_HOST_ADDRESS=10.88.0.1   (the address pods reach this host at)
# on stdout (progress goes to stderr). Must run as root. Tear down with down.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $EUID -eq 0 ]] || die "up.sh must run as root (it starts containerd and a kubelet)"

# --- host ---------------------------------------------------------------------------------------

# The kubelet rewrites a few kernel tunables on start (vm.overcommit_memory, kernel.panic, ...) and pods
# need forwarding: remember the host's values once so down.sh can put them back.
KERNEL_TUNABLES="net.ipv4.ip_forward vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"

prepare_host() {
  mkdir -p "$RUN_DIR" "$LOG_DIR" "$PID_DIR" "$PKI_DIR"
  if [[ ! -f "$RUN_DIR/sysctl.orig" ]]; then
    local t
    for t in $KERNEL_TUNABLES; do echo "$t=$(sysctl -n "$t")"; done >"$RUN_DIR/sysctl.orig"
  fi
  sysctl -qw net.ipv4.ip_forward=1
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] && sysctl -qw net.bridge.bridge-nf-call-iptables=1
  [[ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]] || log "note: cgroup v2 host (the harness was written for v1)"
  [[ -n "$NODE_IP" ]] || die "cannot determine the node address (set PODQ_E2E_NODE_IP)"
}

# write FILE: stdin into FILE, leaving FILE untouched when the content is the same (kube-proxy exits
# when its config file changes under it, and a rerun of up.sh must not disturb what runs).
write() {
  local tmp; tmp="$(mktemp "$1.XXXXXX")"
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}

# --- certificates and kubeconfigs ---------------------------------------------------------------

# issue NAME SUBJECT EXTENDED_USAGE [SUBJECT_ALT_NAMES]: a key and a certificate signed by the cluster CA.
issue() {
  local name=$1 subj=$2 usage=$3 san=${4:-}
  [[ -f "$PKI_DIR/$name.crt" ]] && return
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI_DIR/$name.key"
  openssl req -new -key "$PKI_DIR/$name.key" -subj "$subj" -out "$PKI_DIR/$name.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=$usage"
    [[ -z "$san" ]] || echo "subjectAltName=$san"
  } >"$PKI_DIR/$name.ext"
  openssl x509 -req -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/ca.crt" -CAkey "$PKI_DIR/ca.key" \
    -CAcreateserial -days 365 -sha256 -extfile "$PKI_DIR/$name.ext" -out "$PKI_DIR/$name.crt" 2>/dev/null
  rm -f "$PKI_DIR/$name.csr" "$PKI_DIR/$name.ext"
}

# kubeconfig FILE CERT_NAME: a kubeconfig authenticating with PKI_DIR/CERT_NAME.{crt,key}.
kubeconfig() {
  local file=$1 cert=$2
  [[ -f "$file" ]] && return
  local b64="base64 -w0"
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $CLUSTER_NAME
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $($b64 "$PKI_DIR/ca.crt")
users:
- name: $cert
  user:
    client-certificate-data: $($b64 "$PKI_DIR/$cert.crt")
    client-key-data: $($b64 "$PKI_DIR/$cert.key")
contexts:
- name: $CLUSTER_NAME
  context: {cluster: $CLUSTER_NAME, user: $cert, namespace: default}
current-context: $CLUSTER_NAME
EOF
  chmod 600 "$file"
}

make_pki() {
  if [[ ! -f "$PKI_DIR/ca.crt" ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$PKI_DIR/ca.key" -out "$PKI_DIR/ca.crt" \
      -days 365 -subj "/CN=$CLUSTER_NAME-ca" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  fi
  [[ -f "$PKI_DIR/sa.key" ]] || {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI_DIR/sa.key"
    openssl pkey -in "$PKI_DIR/sa.key" -pubout -out "$PKI_DIR/sa.pub"
  }
  issue apiserver "/CN=kube-apiserver" serverAuth \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$KUBERNETES_SERVICE_IP,IP:$NODE_IP"
  issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  issue admin "/O=system:masters/CN=kubernetes-admin" clientAuth
  issue controller-manager "/CN=system:kube-controller-manager" clientAuth
  issue scheduler "/CN=system:kube-scheduler" clientAuth
  issue kube-proxy "/CN=system:kube-proxy" clientAuth
  issue kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  issue kubelet-server "/CN=$NODE_NAME" serverAuth "DNS:$NODE_NAME,DNS:localhost,IP:$NODE_IP,IP:127.0.0.1"
  kubeconfig "$KUBECONFIG_PATH" admin
  kubeconfig "$RUN_DIR/controller-manager.kubeconfig" controller-manager
  kubeconfig "$RUN_DIR/scheduler.kubeconfig" scheduler
  kubeconfig "$RUN_DIR/kube-proxy.kubeconfig" kube-proxy
  kubeconfig "$RUN_DIR/kubelet.kubeconfig" kubelet
}

# --- processes ----------------------------------------------------------------------------------

# wait_up NAME TIMEOUT COMMAND...: wait until COMMAND succeeds, failing at once if NAME dies meanwhile.
wait_up() {
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    alive "$name"
    ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $name"
    sleep 0.3
  done
  log "$name: healthy"
}

etcd_healthy() { curl -fs "$ETCD_CLIENT_URL/health" | grep -F '"health":"true"' >/dev/null; }

kctl() { "${KUBECTL:-kubectl}" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

start_etcd() {
  start etcd etcd --name "$NODE_NAME" --data-dir "$RUN_DIR/etcd" \
    --listen-client-urls "$ETCD_CLIENT_URL" --advertise-client-urls "$ETCD_CLIENT_URL" \
    --listen-peer-urls "$ETCD_PEER_URL" --initial-advertise-peer-urls "$ETCD_PEER_URL" \
    --initial-cluster "$NODE_NAME=$ETCD_PEER_URL" \
    --quota-backend-bytes $((2 * 1024 * 1024 * 1024)) --snapshot-count 10000
  wait_up etcd 60 etcd_healthy
}

start_containerd() {
  mkdir -p "$RUN_DIR/containerd" "$RUN_DIR/cni/net.d" "$RUN_DIR/cni/ipam"
  write "$RUN_DIR/containerd/config.toml" <<EOF
version = 2
root = "$RUN_DIR/containerd/root"
state = "$RUN_DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$RUN_DIR/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This machine withholds CAP_SYS_RESOURCE even from root, so no process may lower its
  # oom_score_adj: clamp the sandboxes' -998 and the Guaranteed pods' -997 to containerd's own value.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$RUN_DIR/cni/net.d"
EOF
  # One bridge for all pods; pods get a default route through it so they reach the node and, via
  # kube-proxy's rules, cluster IPs. Nothing here routes anywhere beyond this machine by itself.
  write "$RUN_DIR/cni/net.d/10-podq.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "podq-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RUN_DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  create_bridge
  start containerd containerd --config "$RUN_DIR/containerd/config.toml"
  wait_up containerd 60 ctr --address "$CONTAINERD_SOCK" version
}

# The CNI plugin creates the bridge with the first pod; creating it (and its gateway address) here
# lets a test bind a server to POD_GATEWAY before any pod runs. The plugin adopts it as it is.
create_bridge() {
  ip link show "$CNI_BRIDGE" >/dev/null 2>&1 && return
  ip link add "$CNI_BRIDGE" type bridge
  ip addr add "$POD_GATEWAY/${POD_CIDR#*/}" dev "$CNI_BRIDGE"
  ip link set "$CNI_BRIDGE" up
  log "network: bridge $CNI_BRIDGE created ($POD_GATEWAY)"
}

import_images() {
  local tar
  for tar in "$IMAGES_DIR"/*.tar; do
    [[ -e "$tar" ]] || continue
    import_image "$tar"
  done
  ctr_k8s images ls -q | grep -xF "$PAUSE_IMAGE" >/dev/null || die "pause image $PAUSE_IMAGE missing (run build.sh)"
}

start_apiserver() {
  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers "$ETCD_CLIENT_URL" \
    --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" --advertise-address "$NODE_IP" \
    --tls-cert-file "$PKI_DIR/apiserver.crt" --tls-private-key-file "$PKI_DIR/apiserver.key" \
    --client-ca-file "$PKI_DIR/ca.crt" \
    --kubelet-client-certificate "$PKI_DIR/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI_DIR/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI_DIR/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI_DIR/sa.pub" \
    --service-account-signing-key-file "$PKI_DIR/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --kubelet-preferred-address-types InternalIP \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --allow-privileged=true \
    --profiling=false \
    --v=1
  wait_up kube-apiserver 120 curl -fs --cacert "$PKI_DIR/ca.crt" "https://127.0.0.1:$APISERVER_PORT/readyz"
}

start_controllers() {
  start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig "$RUN_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$RUN_DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$RUN_DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false \
    --service-account-private-key-file "$PKI_DIR/sa.key" --root-ca-file "$PKI_DIR/ca.crt" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file "$PKI_DIR/ca.crt" --cluster-signing-key-file "$PKI_DIR/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --profiling=false --v=1
  start kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig "$RUN_DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$RUN_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig "$RUN_DIR/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false --v=1
}

start_node() {
  mkdir -p "$RUN_DIR/kubelet"
  write "$RUN_DIR/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 and PID 1 is not systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI_DIR/kubelet-server.crt
tlsPrivateKeyFile: $PKI_DIR/kubelet-server.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI_DIR/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
failSwapOn: true
# A dev machine's disk may be fuller than a node's; evict only when it is nearly exhausted.
evictionHard:
  memory.available: 200Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
serializeImagePulls: false
# Lowering oom_score_adj needs CAP_SYS_RESOURCE, which this machine withholds (see containerd's config).
oomScoreAdj: 0
maxPods: 110
EOF
  start kubelet "$K8S_BIN/kubelet" \
    --config "$RUN_DIR/kubelet/config.yaml" \
    --kubeconfig "$RUN_DIR/kubelet.kubeconfig" \
    --root-dir "$RUN_DIR/kubelet" --cert-dir "$RUN_DIR/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --pod-infra-container-image "$PAUSE_IMAGE" \
    --v=1
  write "$RUN_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $RUN_DIR/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host's conntrack and route_localnet sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
nodePortAddresses: [primary]
oomScoreAdj: 0
EOF
  start kube-proxy "$K8S_BIN/kube-proxy" --config "$RUN_DIR/kube-proxy.yaml" --v=1
}

node_ready() {
  [[ "$(kctl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

main() {
  log "up: run dir $RUN_DIR, cache $CACHE_DIR, kubernetes $K8S_VERSION, node $NODE_NAME ($NODE_IP)"
  "$CLUSTER_DIR/build.sh"
  prepare_host
  make_pki
  start_etcd
  start_containerd
  import_images
  start_apiserver
  start_controllers
  start_node
  wait_for "node $NODE_NAME Ready" 180 node_ready
  wait_for "default service account" 60 kctl -n default get serviceaccount default
  local c
  for c in etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do alive "$c"; done
  log "up: cluster ready"
  echo "export KUBECONFIG=$KUBECONFIG_PATH"
  echo "export PODQ_E2E_HOST_ADDRESS=$POD_GATEWAY"
}

[[ "${BASH_SOURCE[0]}" != "$0" ]] || main "$@"
