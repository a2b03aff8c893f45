# shellcheck shell=bash
# The real nodes of e2e/cluster.sh (`up --nodes N`): sourced by cluster.sh, never run directly.
# Uses cluster.sh's DIR, PKI, LOGS, PIDS, KUBECTL_BIN, KUBECONFIG_FILE and its start/stop/pid_of/
# say/fail helpers. See e2e/README.md, "Real nodes", for what runs as root and what it touches.
#
# Node i (node-1, node-2, ...):
#   network namespace <tag>-n<i>, eth0 10.255.0.<i>/24 on a bridge in namespace <tag>-hub; <tag> is
#     "tt" + a hash of DIR, so clusters in different directories never share a name
#   containerd  inside that namespace (so the CNI plugins it runs put pod routes there), its root,
#               state, runc state and netns mounts all under $DIR/node-<i>
#   kubelet     on the host network (it must reach the API server on 127.0.0.1), talking to that
#               containerd over its unix socket; cgroups under /<tag>-n<i> of every v1 hierarchy
#   tortie agent (IPAM socket + BIRD configs) and BIRD inside the node's namespace, as the chart's
#               DaemonSet runs them (BIRD starts once the agent has installed a first config)
#   CNI         the chart's conflist (ConfigMap tortie-cni-config, key config) in $DIR/node-<i>/cni
# One kube-scheduler serves all nodes.

NODE_SUBNET=10.255.0
NODE_NS=${TORTIE_NODE_NAMESPACE:-tortie-system}

node_tag() { echo "tt$(printf '%s' "$DIR" | sha1sum | cut -c1-6)"; }
node_dir() { echo "$DIR/node-$1"; }
node_netns() { echo "$(node_tag)-n$1"; }
hub_netns() { echo "$(node_tag)-hub"; }
node_cgroup() { echo "$(node_tag)-n$1"; }
node_count() { [[ -f $DIR/nodes ]] && cat "$DIR/nodes" || echo 0; }
node_crd_mode() { echo "${TORTIE_E2E_CRD_MODE:-v1}"; }
tortie_bin_dir() { echo "${TORTIE_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/debug}"; }

# The cgroup v1 hierarchies the kubelet and runc use (cgroup v2 has one, at /sys/fs/cgroup).
cgroup_mounts() {
  awk '$3 == "cgroup" || $3 == "cgroup2" {print $2}' /proc/mounts | sort -u
}

ensure_node_tools() {
  local b
  for b in "$K8S_NODE_BIN/kubelet" "$K8S_NODE_BIN/kube-scheduler"; do
    [[ -x $b ]] && continue
    if [[ ${TORTIE_E2E_BUILD:-1} == 0 ]]; then fail "missing binary $b (run e2e/build.sh node)"; fi
    say "node binaries missing: running e2e/build.sh node"
    "$E2E_DIR/build.sh" node >&2 || exit 1
  done
  [[ -x $(images_dir)/bin/netcheck ]] || "$E2E_DIR/build.sh" images >&2 || exit 1
  for b in containerd ctr runc containerd-shim-runc-v2 bird birdc ip jq; do
    command -v "$b" >/dev/null || fail "missing $b (run e2e/install-deps.sh: containerd, runc, bird, iproute2, jq)"
  done
  for b in ptp loopback portmap; do
    [[ -x /usr/lib/cni/$b ]] || fail "missing CNI plugin /usr/lib/cni/$b (run e2e/install-deps.sh: containernetworking-plugins)"
  done
  local t; t=$(tortie_bin_dir)
  for b in tortie tortie-ipam; do
    [[ -x $t/$b ]] || fail "missing $t/$b (build it first: cargo build --bins; or set TORTIE_BIN_DIR)"
  done
  [[ $(id -u) == 0 ]] || fail "real nodes need root (network namespaces, containerd, cgroups)"
}

# node_cert NAME SUBJECT: a client certificate signed by the cluster's CA.
node_cert() {
  (
    cd "$PKI"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=clientAuth" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 30 -extfile "$1.ext" -out "$1.crt"
    rm -f "$1.csr" "$1.ext"
  ) >>"$LOGS/pki.log" 2>&1 || fail "generating the certificate of $1; log: $LOGS/pki.log"
}

kc() { "$KUBECTL_BIN" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# The kernel settings the kubelet changes at start-up (it sets them when they differ; there is no
# setting that leaves them alone). The first node of any cluster on this host saves the host's
# values; `down` of the last cluster with nodes puts them back.
KUBELET_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
SYSCTL_SAVE=/run/tortie-e2e-sysctl.saved

save_sysctls() {
  [[ -f $SYSCTL_SAVE ]] && return 0
  local k
  for k in "${KUBELET_SYSCTLS[@]}"; do echo "$k=$(sysctl -n "$k")"; done >"$SYSCTL_SAVE.tmp"
  mv "$SYSCTL_SAVE.tmp" "$SYSCTL_SAVE"
}

restore_sysctls() {
  [[ -f $SYSCTL_SAVE ]] || return 0
  # Another cluster's kubelet still runs: it keeps them (its own `down` restores).
  local p
  for p in /proc/[0-9]*; do
    [[ -r $p/cmdline ]] || continue
    if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q -- '--hostname-override node-[0-9]* --root-dir' &&
      ! tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "$DIR/"; then
      return 0
    fi
  done
  local kv
  while read -r kv; do sysctl -q -w "$kv" >/dev/null 2>&1 || true; done <"$SYSCTL_SAVE"
  rm -f "$SYSCTL_SAVE"
}

setup_netns() {
  local n=$1 ns hub; ns=$(node_netns "$n"); hub=$(hub_netns)
  if ! ip netns list | grep -qw "$hub"; then
    ip netns add "$hub"
    ip -n "$hub" link add br0 type bridge
    ip -n "$hub" link set br0 up
  fi
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add eth0 netns "$ns" type veth peer name "n$n" netns "$hub"
  ip -n "$hub" link set "n$n" master br0
  ip -n "$hub" link set "n$n" up
  ip -n "$ns" addr add "$NODE_SUBNET.$n/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip netns exec "$ns" sysctl -q -w net.ipv4.ip_forward=1
}

setup_cgroups() {
  local cg; cg=$(node_cgroup "$1")
  local m
  while read -r m; do
    mkdir -p "$m/$cg"
    # A new cpuset cgroup starts with no CPUs and memory nodes: copy the parent's.
    if [[ -f $m/cpuset.cpus ]]; then
      cat "$m/cpuset.cpus" >"$m/$cg/cpuset.cpus"
      cat "$m/cpuset.mems" >"$m/$cg/cpuset.mems"
    fi
  done < <(cgroup_mounts)
}

write_containerd_config() {
  local n=$1 nd; nd=$(node_dir "$n")
  cat >"$nd/containerd.toml" <<EOF
version = 2
root = "$nd/containerd/root"
state = "$nd/containerd/state"
[grpc]
  address = "$nd/containerd.sock"
[ttrpc]
  address = "$nd/containerd.sock.ttrpc"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$nd/containerd/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    netns_mounts_under_state_dir = true
    # Never ask runc for an OOM score below containerd's own: lowering it needs CAP_SYS_RESOURCE,
    # which some hosts (and containers) do not grant even to root.
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$nd/cni/bin"
      conf_dir = "$nd/cni/net.d"
      max_conf_num = 1
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "$nd/runc"
EOF
}

write_kubelet_config() {
  local n=$1 nd; nd=$(node_dir "$n")
  cat >"$nd/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $(free_port)
healthzBindAddress: 127.0.0.1
healthzPort: $(free_port)
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupRoot: /$(node_cgroup "$n")
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix://$nd/containerd.sock
podLogsDir: $nd/pod-logs
makeIPTablesUtilChains: false
resolvConf: /etc/resolv.conf
serializeImagePulls: false
syncFrequency: 10s
nodeStatusUpdateFrequency: 10s
evictionHard: {memory.available: 50Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
}

# The chart's CNI config (ConfigMap <release>-cni-config, key config: ptp + tortie-ipam + portmap),
# laid out as its install step does: plugin binaries in the bin dir, the conflist with the
# kubeconfig path substituted. Two nodes share this host, so each conflist also names its node and
# its agent's IPAM socket (on a real host: /var/lib/calico/nodename and /var/run/tortie/ipam.sock).
install_cni() {
  local n=$1 nd; nd=$(node_dir "$n")
  mkdir -p "$nd/cni/bin" "$nd/cni/net.d"
  local p
  for p in ptp loopback portmap host-local; do ln -sfn "/usr/lib/cni/$p" "$nd/cni/bin/$p"; done
  install -m 0755 "$(tortie_bin_dir)/tortie-ipam" "$nd/cni/bin/tortie-ipam"
  local conf
  conf=$("$HELM_BIN/helm" template tortie "$REPO_DIR/charts/tortie" -n "$NODE_NS" --set crdMode="$(node_crd_mode)" \
    --show-only templates/cni-config.yaml 2>>"$LOGS/node-$n.log" |
    kc create --dry-run=client -o jsonpath='{.data.config}' -f - 2>>"$LOGS/node-$n.log") ||
    fail "rendering the chart's CNI config (log: $LOGS/node-$n.log)"
  [[ -n $conf ]] || fail "the chart rendered an empty CNI config (log: $LOGS/node-$n.log)"
  # Debug logging in <dir>/node-<i>/cni.log shows, per request, whether the agent answered.
  jq --arg node "node-$n" --arg sock "$nd/ipam.sock" --arg log "$nd/cni.log" --arg lvl "${TORTIE_NODE_CNI_LOG_LEVEL:-debug}" \
    '.plugins[0].nodename = $node | .plugins[0].ipam.socket = $sock | .plugins[0].log_file_path = $log
     | .plugins[0].log_level = $lvl' <<<"$conf" |
    sed "s|__KUBECONFIG_FILEPATH__|$nd/tortie.kubeconfig|g" >"$nd/cni/net.d/10-tortie.conflist.tmp"
  mv "$nd/cni/net.d/10-tortie.conflist.tmp" "$nd/cni/net.d/10-tortie.conflist"
}

kubelet_ready() {
  [[ $(kc get node "node-$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

start_node() {
  local n=$1 nd ns; nd=$(node_dir "$n"); ns=$(node_netns "$n")
  mkdir -p "$nd/bird" "$nd/pod-logs" "$nd/kubelet"
  chmod 0700 "$nd/bird"
  echo "$ns" >"$nd/netns"
  setup_netns "$n"
  setup_cgroups "$n"
  write_containerd_config "$n"
  write_kubelet_config "$n"
  node_cert "kubelet-$n" "/O=system:nodes/CN=system:node:node-$n"
  write_kubeconfig "$nd/kubelet.kubeconfig" "system:node:node-$n" "$PKI/kubelet-$n.crt" "$PKI/kubelet-$n.key"
  (umask 077 && write_kubeconfig "$nd/tortie.kubeconfig" tortie-e2e-node "$PKI/tortie-node.crt" "$PKI/tortie-node.key")
  install_cni "$n"

  # The API server listens on the host's 127.0.0.1 only; inside the node's namespace the same
  # address and port reach it through a unix socket, so the kubeconfigs work in both (tortie-ipam
  # runs there, started by containerd, when it does the work itself instead of the agent).
  start "apiserver-relay-$n" "$(images_dir)/bin/netcheck" forward "unix:$nd/apiserver.sock" "tcp:127.0.0.1:$APISERVER_PORT"
  start "apiserver-relay-in-$n" nsenter --net="/var/run/netns/$ns" "$(images_dir)/bin/netcheck" forward \
    "tcp:127.0.0.1:$APISERVER_PORT" "unix:$nd/apiserver.sock"

  start "containerd-$n" nsenter --net="/var/run/netns/$ns" containerd --config "$nd/containerd.toml" --log-level warn
  wait_for "containerd-$n" 30 ctr --address "$nd/containerd.sock" version
  local img
  for img in pause netcheck; do
    ctr --address "$nd/containerd.sock" -n k8s.io images import "$(images_dir)/$img.tar" >>"$LOGS/node-$n.log" 2>&1 ||
      fail "importing $img into containerd of node-$n (log: $LOGS/node-$n.log)"
  done

  start "kubelet-$n" "$K8S_NODE_BIN/kubelet" --config "$nd/kubelet.yaml" --kubeconfig "$nd/kubelet.kubeconfig" \
    --hostname-override "node-$n" --root-dir "$nd/kubelet" --cert-dir "$nd/kubelet/pki" --v 1

  # The node agent as the chart's DaemonSet runs it, with the IPAM server on (the socket named in
  # this node's conflist); BIRD waits for the first config the agent installs.
  TORTIE_LOG=${TORTIE_NODE_LOG:-info} KUBECONFIG=$nd/tortie.kubeconfig \
    start "agent-$n" "$(tortie_bin_dir)/tortie" agent --node "node-$n" --namespace "$NODE_NS" \
    --config-dir "$nd/bird" --bird-socket "$nd/bird.ctl" --ipam-socket "$nd/ipam.sock" \
    --crd-mode "$(node_crd_mode)" --retry-secs 2
  # shellcheck disable=SC2016  # expanded by the inner bash
  start "bird-$n" bash -c 'until [ -s "$1/bird.cfg" ]; do sleep 1; done
    exec nsenter --net="/var/run/netns/$2" bird -f -c "$1/bird.cfg" -s "$3"' tortie-bird "$nd/bird" "$ns" "$nd/bird.ctl"
}

# Wait for node-N's Node object, then give it the address calico-node would annotate (BGP peers
# with it), and wait until the kubelet reports Ready (the CNI config is in place by then).
finish_node() {
  local n=$1
  wait_for "kubelet-$n" 120 kc get node "node-$n"
  kc annotate --overwrite node "node-$n" "projectcalico.org/IPv4Address=$NODE_SUBNET.$n/24" >/dev/null
  wait_for "kubelet-$n" 120 kubelet_ready "$n"
  # Without CRDs yet (TORTIE_E2E_NODE_CRDS=0) the agent's IPAM server starts once they exist.
  if [[ ${TORTIE_E2E_NODE_CRDS:-1} != 0 ]]; then
    wait_for "agent-$n" 60 test -S "$(node_dir "$n")/ipam.sock"
  fi
}

start_nodes() {
  local count=$1
  ensure_node_tools
  say "starting $count real node(s): containerd, kubelet, tortie agent and BIRD each; kube-scheduler"
  echo "$count" >"$DIR/nodes"
  save_sysctls
  local mode; mode=$(node_crd_mode)
  if [[ ${TORTIE_E2E_NODE_CRDS:-1} != 0 ]]; then
    kc apply --server-side --force-conflicts --field-manager=tortie-e2e -f "$REPO_DIR/crds/$mode" >"$LOGS/crds.log" 2>&1 ||
      fail "installing crds/$mode (log: $LOGS/crds.log)"
    kc wait --for=condition=Established --timeout=60s -f "$REPO_DIR/crds/$mode" >>"$LOGS/crds.log" 2>&1 ||
      fail "crds/$mode not Established (log: $LOGS/crds.log)"
  fi
  kc create namespace "$NODE_NS" --dry-run=client -o yaml | kc apply -f - >/dev/null
  # The kubelets' group gets the system:node role (what the Node authorizer would allow).
  kc create clusterrolebinding tortie-e2e:nodes --clusterrole system:node --group system:nodes \
    --dry-run=client -o yaml | kc apply -f - >/dev/null
  node_cert scheduler "/CN=system:kube-scheduler"
  # tortie's node components (agent, tortie-ipam): admin here; the chart's narrower accounts are
  # tested by tests/e2e_chart.rs.
  node_cert tortie-node "/O=system:masters/CN=tortie-e2e-node"
  write_kubeconfig "$DIR/scheduler.kubeconfig" system:kube-scheduler "$PKI/scheduler.crt" "$PKI/scheduler.key"
  start kube-scheduler "$K8S_NODE_BIN/kube-scheduler" --kubeconfig "$DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$DIR/scheduler.kubeconfig" --authorization-kubeconfig "$DIR/scheduler.kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port "$(free_port)"
  local n
  for n in $(seq 1 "$count"); do start_node "$n"; done
  for n in $(seq 1 "$count"); do finish_node "$n"; done
}

node_names() { local n; for n in $(seq 1 "$(node_count)"); do echo "node-$n"; done; }

status_nodes() {
  local n name pid
  for n in $(seq 1 "$(node_count)"); do
    for name in "containerd-$n" "kubelet-$n" "agent-$n" "bird-$n"; do
      pid=$(pid_of "$name")
      if [[ -n $pid ]]; then echo "$name: running (pid $pid)"; else echo "$name: not running"; fi
    done
  done
  if (($(node_count) > 0)); then
    pid=$(pid_of kube-scheduler)
    if [[ -n $pid ]]; then echo "kube-scheduler: running (pid $pid)"; else echo "kube-scheduler: not running"; fi
  fi
}

# Everything a node left on the host, whether its processes still run or crashed: processes by
# PID file, then whatever still runs in its cgroups or names its directory (shims, containers),
# mounts under DIR (snapshots, pod network namespaces, volumes), the network namespaces (the pods'
# veths and routes go with them), cgroups, the kubelet's links in /var/log/containers.
# PIDs of containerd shims serving this cluster's nodes (their command line has
# `-address <dir>/node-<i>/containerd.sock`), matched as a fixed string.
shim_pids() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "-address $DIR/node-" && echo "${p#/proc/}"
  done
  return 0
}

stop_nodes() {
  [[ -d $DIR ]] || return 0
  local count; count=$(node_count)
  ((count > 0)) || [[ -n $(ls -d "$DIR"/node-* 2>/dev/null) ]] || return 0
  local n
  stop kube-scheduler
  for n in $(seq 1 "$count"); do
    stop "kubelet-$n"; stop "agent-$n"; stop "bird-$n"; stop "apiserver-relay-$n"; stop "apiserver-relay-in-$n"
    local nd; nd=$(node_dir "$n")
    # With containerd still up, kill and delete its containers: their shims then exit cleanly.
    if [[ -n $(pid_of "containerd-$n") ]]; then
      local c
      for c in $(timeout 10 ctr --address "$nd/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
        timeout 10 ctr --address "$nd/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
      done
    fi
    stop "containerd-$n"
  done
  local round pid cg m
  for round in 1 2 3 4 5; do
    local left=0
    # Shims (their command line names our containerd socket) and anything in our cgroups.
    for pid in $(shim_pids); do
      kill -KILL "$pid" 2>/dev/null && left=1
    done
    for n in $(seq 1 "$count"); do
      cg=$(node_cgroup "$n")
      while read -r m; do
        [[ -d $m/$cg ]] || continue
        for pid in $(find "$m/$cg" -name cgroup.procs -exec cat {} + 2>/dev/null); do
          kill -KILL "$pid" 2>/dev/null && left=1
        done
      done < <(cgroup_mounts)
    done
    ((left)) || break
    sleep 0.5
  done
  # The sockets of shims that were killed: containerd names them after a hash of its own socket,
  # the containerd namespace and the task id (the task directories under its state dir).
  local t
  for t in "$DIR"/node-*/containerd/state/io.containerd.runtime.v2.task/*/*; do
    [[ -d $t ]] || continue
    local sock=${t%%/containerd/state/*}/containerd.sock tns; tns=$(basename "$(dirname "$t")")
    rm -f "/run/containerd/s/$(printf '%s' "$sock/$tns/$(basename "$t")" | sha256sum | cut -d' ' -f1)"
  done
  # Mounts under DIR, deepest first.
  local mp
  while read -r mp; do
    umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
  done < <(awk -v d="$DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
  for n in $(seq 1 "$count"); do ip netns del "$(node_netns "$n")" 2>/dev/null || true; done
  ip netns del "$(hub_netns)" 2>/dev/null || true
  for n in $(seq 1 "$count"); do
    cg=$(node_cgroup "$n")
    while read -r m; do
      [[ -d $m/$cg ]] && find "$m/$cg" -depth -type d -exec rmdir {} + 2>/dev/null
    done < <(cgroup_mounts)
  done
  local l
  for l in /var/log/containers/*.log; do
    [[ -L $l && $(readlink "$l") == "$DIR/"* ]] && rm -f "$l"
  done
  restore_sysctls
  return 0
}
