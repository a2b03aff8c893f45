#!/usr/bin/env bash
# `make demo`: tortie on a local control plane, the way a cluster admin and a container runtime would
# use it, end to end.
#
#   demo/run.sh [up]   build what is missing, start etcd + kube-apiserver + kube-controller-manager,
#                      kube-scheduler and a real node (node-1: containerd, runc, kubelet, the chart's
#                      CNI config with tortie-ipam, tortie agent, BIRD; e2e/cluster.sh --nodes),
#                      helm install the chart, run the operator under the chart's ServiceAccount,
#                      apply examples/ (the lab's pools, the multi-cluster BGP example, three Nodes), run the yaobank
#                      Deployments on the node with a local test image, show their addresses, an HTTP
#                      request between two pods, and an address released by `kubectl delete pod`
#   demo/run.sh down   stop the operator, the node and the control plane, remove demo/.run (`make demo-down`)
#   demo/run.sh env    print the `export` lines to use the demo cluster from a shell
#
# The real node needs root (network namespace, containerd, cgroups). The chart's own Deployment and
# DaemonSet are kept off it (their images are not in any registry here): the operator runs as a local
# process with a token of the chart's ServiceAccount, and the node runs `tortie agent` and tortie-ipam
# itself (see e2e/README.md, "Real nodes"). node-2 and node-3 of the lab are Node objects only
# (cordoned). The yaobank pods run a small HTTP server (e2e/images/netcheck) instead of Calico's
# images, on the ports of the example manifests.
#
# Environment: DEMO_DIR (default demo/.run), CRD_MODE v1|v3 (default v1), CARGO_TARGET_DIR,
# DEMO_NODES (real nodes, default 1; 0: no kubelet, the script plays scheduler and runtime and runs
# tortie-ipam itself), DEMO_KEEP_GOING=1 (do not stop at the first failed step).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO_DIR=${DEMO_DIR:-$REPO/demo/.run}
CLUSTER_DIR=$DEMO_DIR/cluster
MODE=${CRD_MODE:-v1}
NS=tortie-system
RELEASE=tortie
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET/debug
NODES=(node-1 node-2 node-3)
SHOW_NODE="node-1"
DEMO_NODES=${DEMO_NODES:-1}

# Colour only for a person at a terminal, never in logs or pipes, and never with NO_COLOR set.
if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then
  BOLD=$'\033[1m' YELLOW=$'\033[33m' RED=$'\033[31m' PLAIN=$'\033[0m'
else
  BOLD='' YELLOW='' RED='' PLAIN=''
fi

step_no=0
STEPS=10
t_start=$(date +%s)
step() { step_no=$((step_no + 1)); printf "\n${BOLD}==> [%d/%d] %s${PLAIN}\n" "$step_no" "$STEPS" "$*"; }
info() { printf '    %s\n' "$*"; }
skip() { printf "    ${YELLOW}SKIPPED:${PLAIN} %s\n" "$*"; SKIPPED+=("$*"); }
fail() { printf "${RED}demo: FAILED: %s${PLAIN}\n" "$*" >&2; exit 1; }
SKIPPED=()

# ------------------------------------------------------------------------------------------------

cmd_env() {
  [[ -f $CLUSTER_DIR/kubeconfig ]] || fail "no demo running (start it with: make demo)"
  bash "$REPO/e2e/cluster.sh" env -d "$CLUSTER_DIR"
}

cmd_down() {
  if [[ -f $DEMO_DIR/operator.pid ]]; then
    local pid; pid=$(<"$DEMO_DIR/operator.pid")
    # Only a process that is still our operator (a recycled PID is left alone).
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'tortie.* run'; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
      echo "demo: operator (pid $pid) stopped"
    fi
    rm -f "$DEMO_DIR/operator.pid"
  fi
  if [[ -d $CLUSTER_DIR ]]; then
    bash "$REPO/e2e/cluster.sh" down -d "$CLUSTER_DIR"
    echo "demo: control plane stopped"
  fi
  rm -rf "$DEMO_DIR"
  echo "demo: removed $DEMO_DIR"
}

# ------------------------------------------------------------------------------------------------
# probes for the parts that land over time

has_run() { [[ -x $BIN/tortie ]] && "$BIN/tortie" run --help >/dev/null 2>&1; }
has_render() { [[ -x $BIN/tortie ]] && "$BIN/tortie" render --help >/dev/null 2>&1; }
has_ipam_plugin() {
  [[ -x $BIN/tortie-ipam ]] && CNI_COMMAND=VERSION "$BIN/tortie-ipam" </dev/null 2>/dev/null | grep -q supportedVersions
}

# wait_until SECONDS DESCRIPTION COMMAND...: poll every 0.5 s.
wait_until() {
  local secs=$1; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# ------------------------------------------------------------------------------------------------

cmd_up() {
  mkdir -p "$DEMO_DIR"
  printf "${BOLD}tortie demo${PLAIN} (CRD mode %s; state in %s)\n" "$MODE" "$DEMO_DIR"

  step "Tools: Debian packages, kube-apiserver + etcd from pinned Go modules, helm (cached after the first run)"
  bash "$REPO/e2e/install-deps.sh"
  bash "$REPO/e2e/build.sh"
  # shellcheck source=e2e/lib.sh
  source "$REPO/e2e/lib.sh"
  export PATH=$TOOLS_BIN:$PATH
  KUBECTL=$TOOLS_BIN/kubectl HELM=$TOOLS_BIN/helm

  step "Build tortie and tortie-ipam (cargo build --bins)"
  # Cargo's own lines are the progress (a few minutes on a fresh clone, seconds afterwards).
  (cd "$REPO" && CARGO_TARGET_DIR=$TARGET cargo build --bins) || fail "cargo build --bins failed"
  [[ -x $BIN/tortie ]] || fail "cargo build did not produce $BIN/tortie"
  info "binaries in $BIN"

  if ((DEMO_NODES > 0)) && [[ $(id -u) != 0 ]]; then
    skip "a real node needs root (network namespaces, containerd, cgroups): running without one, as DEMO_NODES=0"
    DEMO_NODES=0
  fi
  if ((DEMO_NODES > 0)); then
    step "Local cluster (e2e/cluster.sh --nodes $DEMO_NODES: etcd, kube-apiserver with RBAC, kube-controller-manager, kube-scheduler; node-1: containerd, kubelet, tortie agent, BIRD)"
  else
    step "Local control plane (e2e/cluster.sh: etcd, kube-apiserver with RBAC, kube-controller-manager)"
  fi
  if [[ -f $CLUSTER_DIR/kubeconfig ]] && bash "$REPO/e2e/cluster.sh" status -d "$CLUSTER_DIR" >/dev/null 2>&1; then
    info "already running; reusing it (make demo-down for a fresh one)"
    eval "$(bash "$REPO/e2e/cluster.sh" env -d "$CLUSTER_DIR")"
  else
    local env_lines
    # The chart installs the CRDs below (Helm owns them).
    env_lines=$(TORTIE_BIN_DIR=$BIN TORTIE_E2E_CRD_MODE=$MODE TORTIE_E2E_NODE_CRDS=0 bash "$REPO/e2e/cluster.sh" up -d "$CLUSTER_DIR" --nodes "$DEMO_NODES") ||
      fail "the cluster did not start (logs: $CLUSTER_DIR/logs)"
    eval "$env_lines"
  fi
  export KUBECONFIG
  info "KUBECONFIG=$KUBECONFIG"

  step "helm install $RELEASE charts/tortie (crdMode=$MODE) into $NS"
  # The chart's pods are kept off the real node (their images are not in a registry here).
  "$HELM" upgrade --install "$RELEASE" "$REPO/charts/tortie" -n "$NS" --create-namespace \
    --set crdMode="$MODE" --set operator.nodeSelector.tortie-demo=none --set agent.nodeSelector.tortie-demo=none \
    --wait=false >"$DEMO_DIR/helm.log" 2>&1 || { cat "$DEMO_DIR/helm.log"; fail "helm install"; }
  "$HELM" list -n "$NS"
  "$KUBECTL" wait --for=condition=Established --timeout=60s crd -l app.kubernetes.io/part-of=tortie >/dev/null
  info "CRDs: $("$KUBECTL" get crd -l app.kubernetes.io/part-of=tortie -o name | sed 's|.*/||' | tr '\n' ' ')"
  info "(the chart's pods stay Pending, kept off the node; the operator runs below as a local process)"
  bash "$REPO/demo/sa-kubeconfig.sh" "$NS" "$RELEASE-operator" "$DEMO_DIR/operator.kubeconfig"
  bash "$REPO/demo/sa-kubeconfig.sh" "$NS" "$RELEASE-cni" "$DEMO_DIR/cni.kubeconfig"
  info "ServiceAccount kubeconfigs: $DEMO_DIR/operator.kubeconfig, $DEMO_DIR/cni.kubeconfig"

  step "Run the operator (tortie run) with the token of ServiceAccount $NS/$RELEASE-operator"
  OPERATOR_RUNNING=0
  if has_run; then
    local pid=""
    [[ -f $DEMO_DIR/operator.pid ]] && pid=$(<"$DEMO_DIR/operator.pid")
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
      info "already running (pid $pid)"
    else
      METRICS_PORT=${DEMO_METRICS_PORT:-$(free_port)}
      echo "$METRICS_PORT" >"$DEMO_DIR/metrics.port"
      KUBECONFIG=$DEMO_DIR/operator.kubeconfig POD_NAMESPACE=$NS POD_NAME=demo-operator-0 \
        RUST_LOG=${RUST_LOG:-info} \
        setsid "$BIN/tortie" run --metrics-port "$METRICS_PORT" --crd-mode "$MODE" --gc-grace-period 1m \
        </dev/null >"$DEMO_DIR/operator.log" 2>&1 &
      echo $! >"$DEMO_DIR/operator.pid"
      disown $! 2>/dev/null || true
      if wait_until 60 "operator ready" curl -sf "http://127.0.0.1:$METRICS_PORT/readyz"; then
        info "ready: pid $(<"$DEMO_DIR/operator.pid"), /readyz /metrics on 127.0.0.1:$METRICS_PORT, log $DEMO_DIR/operator.log"
      else
        tail -n 20 "$DEMO_DIR/operator.log" >&2
        fail "the operator did not become ready within 60 s (log: $DEMO_DIR/operator.log)"
      fi
    fi
    OPERATOR_RUNNING=1
  else
    skip "the operator (\`tortie run\`) has not landed yet: pools come only from examples/$MODE/02-ippools.yaml, no Installation status, no BGP ConfigMaps"
  fi

  step "Apply examples: lab-nodes.yaml (three Nodes) and examples/$MODE/ (kubeadm-config, Installation, IPPools, yaobank, BGP)"
  "$KUBECTL" apply -f "$REPO/examples/lab-nodes.yaml"
  # The numbered files are the lab (examples/route-reflector/ is a variant, mesh off).
  local f files=()
  for f in "$REPO/examples/$MODE"/[0-9][0-9]-*.yaml; do
    # With a real node yaobank is applied below, with an image the node has.
    if ((DEMO_NODES > 0)) && [[ $f == */03-yaobank.yaml ]]; then continue; fi
    files+=(-f "$f")
  done
  "$KUBECTL" apply "${files[@]}"
  if ((OPERATOR_RUNNING)); then
    if wait_until 30 "Installation Ready" bash -c "\"$KUBECTL\" get installation default -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"; then
      info "Installation default: Ready"
    else
      info "Installation default is not Ready yet; its conditions:"
      "$KUBECTL" get installation default -o jsonpath='{range .status.conditions[*]}{"      "}{.type}={.status} {.reason}: {.message}{"\n"}{end}' || true
    fi
  fi

  if ((DEMO_NODES > 0)); then
    step "Run yaobank on the real node (kube-scheduler, kubelet, containerd; CNI: ptp + tortie-ipam + portmap)"
    run_pods
  else
    step "Schedule the yaobank pods and run tortie-ipam for each (CNI ADD, as the container runtime would)"
    allocate_pods
  fi

  step "What tortie stored: pools, blocks, affinities, and the pods' addresses"
  show_ipam

  step "BIRD configuration of $SHOW_NODE"
  show_bird
  show_bird_running

  if ((DEMO_NODES > 0)); then
    step "Pod to pod over HTTP, and kubectl delete pod releases the address"
    pod_to_pod
    delete_releases
  else
    step "Pod to pod traffic"
    skip "DEMO_NODES=0: no node runs the pods"
  fi

  printf "\n${BOLD}==> Done in %d s${PLAIN}\n" "$(($(date +%s) - t_start))"
  finish
}

# The yaobank Deployments of examples/$MODE/03-yaobank.yaml with the node's netcheck image serving
# HTTP on each container's port (Calico's yaobank images cannot be pulled here); the pool
# annotations, names and ports are those of examples/. Lab nodes without a kubelet are cordoned.
run_pods() {
  local n real=() fake=()
  for n in $(seq 1 "$DEMO_NODES"); do real+=("node-$n"); done
  for n in "${NODES[@]}"; do
    if [[ " ${real[*]} " != *" $n "* ]]; then
      fake+=("$n")
      "$KUBECTL" cordon "$n" >/dev/null
    fi
  done
  info "real nodes: ${real[*]}; cordoned (Node objects only): ${fake[*]:-none}"
  "$KUBECTL" create --dry-run=client -o json -f "$REPO/examples/$MODE/03-yaobank.yaml" |
    jq -s --arg img "$NETCHECK_IMAGE" '{apiVersion: "v1", kind: "List", items: .} | .items |= map(if .kind == "Deployment" then
        .spec.template.spec.automountServiceAccountToken = false
        | .spec.template.spec.terminationGracePeriodSeconds = 1
        | .spec.template.spec.containers |= map(
            .image = $img | .imagePullPolicy = "Never" | .command = ["/netcheck"]
            | .args = ["serve", "-port", (.ports[0].containerPort | tostring)]
            | .env = [{name: "POD_NAME", valueFrom: {fieldRef: {fieldPath: "metadata.name"}}}])
      else . end)' | "$KUBECTL" apply -f - | sed 's/^/    /'
  local want
  want=$("$KUBECTL" get deploy -n yaobank -o jsonpath='{range .items[*]}{.spec.replicas}{"\n"}{end}' | awk '{s+=$1} END {print s+0}')
  if ! wait_until 180 "yaobank pods Running" bash -c "[[ \$(\"$KUBECTL\" get pods -n yaobank --field-selector=status.phase=Running --no-headers 2>/dev/null | wc -l) -ge $want ]]"; then
    "$KUBECTL" get pods -n yaobank -o wide | sed 's/^/    /'
    fail "the $want yaobank pods were not Running within 180 s (node logs: $CLUSTER_DIR/logs)"
  fi
  echo "\$ kubectl get pods -n yaobank -o wide"
  "$KUBECTL" get pods -n yaobank -o wide | sed 's/^/    /'
}

# An HTTP GET from a one-shot pod on node-1 to a summary pod (its answer names the pod that served it).
pod_to_pod() {
  local target ip
  target=$("$KUBECTL" get pods -n yaobank -l app=summary -o jsonpath='{.items[0].metadata.name}')
  ip=$("$KUBECTL" get pod -n yaobank "$target" -o jsonpath='{.status.podIP}')
  "$KUBECTL" delete pod -n yaobank http-get --ignore-not-found --wait=true >/dev/null
  "$KUBECTL" apply -f - >/dev/null <<POD
apiVersion: v1
kind: Pod
metadata: {name: http-get, namespace: yaobank}
spec:
  nodeSelector: {kubernetes.io/hostname: node-1}
  restartPolicy: Never
  automountServiceAccountToken: false
  containers:
  - {name: get, image: $NETCHECK_IMAGE, imagePullPolicy: Never, command: [/netcheck], args: [get, "http://$ip:80/"]}
POD
  if ! wait_until 90 "http-get finished" bash -c "[[ \$(\"$KUBECTL\" get pod -n yaobank http-get -o jsonpath='{.status.phase}') =~ Succeeded|Failed ]]"; then
    fail "pod yaobank/http-get did not finish within 90 s"
  fi
  local phase msg
  phase=$("$KUBECTL" get pod -n yaobank http-get -o jsonpath='{.status.phase}')
  msg=$("$KUBECTL" get pod -n yaobank http-get -o jsonpath='{.status.containerStatuses[0].state.terminated.message}')
  echo "\$ kubectl get pod -n yaobank http-get -o wide   # GET http://$ip:80/ ($target) from another pod"
  "$KUBECTL" get pod -n yaobank http-get -o wide | sed 's/^/    /'
  info "its answer: $msg"
  [[ $phase == Succeeded ]] || fail "pod-to-pod HTTP failed: $msg"
}

# The pod recorded for an address in its IPAM block (empty when the address is free).
ip_holder() {
  local g; g=$([[ $MODE == v3 ]] && echo projectcalico.org || echo crd.projectcalico.org)
  "$KUBECTL" get "ipamblocks.$g" -o json | jq -r --arg ip "$1" '
    def n: split(".") | map(tonumber) | .[0]*16777216 + .[1]*65536 + .[2]*256 + .[3];
    ($ip | n) as $a
    | .items[] | .spec as $s | ($s.cidr | split("/")) as $c
    | select(($c[0] | n) <= $a and $a < ($c[0] | n) + pow(2; 32 - ($c[1] | tonumber)))
    | $s.allocations[$a - ($c[0] | n)] as $i
    | if $i == null then "" else ($s.attributes[$i].secondary.pod // "?") end'
}

delete_releases() {
  local pod ip
  pod=$("$KUBECTL" get pods -n yaobank -l app=database -o jsonpath='{.items[0].metadata.name}')
  ip=$("$KUBECTL" get pod -n yaobank "$pod" -o jsonpath='{.status.podIP}')
  info "$ip is recorded for pod $(ip_holder "$ip") in its IPAM block"
  echo "\$ kubectl delete pod -n yaobank $pod"
  "$KUBECTL" delete pod -n yaobank "$pod" --wait=true | sed 's/^/    /'
  local deadline=$((SECONDS + 60))
  while [[ -n $(ip_holder "$ip") ]]; do
    ((SECONDS < deadline)) || fail "$ip was not released within 60 s of deleting $pod (holder: $(ip_holder "$ip"))"
    sleep 0.5
  done
  info "$ip is free again in its block (the kubelet's CNI DEL went through tortie-ipam)"
  wait_until 90 "replacement Running" bash -c "[[ \$(\"$KUBECTL\" get pods -n yaobank -l app=database --field-selector=status.phase=Running --no-headers | wc -l) -ge 1 ]]" || true
  echo "\$ kubectl get pods -n yaobank -o wide   # the Deployment's new database pod, again from pool2-ipv4-ippool"
  "$KUBECTL" get pods -n yaobank -o wide | sed 's/^/    /'
}

free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 12000))
    ss -Hltn "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
  done
  echo 19090
}

# The pods the Deployments' ReplicaSets created (kube-controller-manager runs), sorted, bound round-robin
# to the lab's nodes through the Binding subresource (what kube-scheduler does), then one CNI ADD each.
allocate_pods() {
  local want
  want=$("$KUBECTL" get deploy -n yaobank -o jsonpath='{range .items[*]}{.spec.replicas}{"\n"}{end}' | awk '{s+=$1} END {print s+0}')
  if ! wait_until 60 "yaobank pods" bash -c "[[ \$(\"$KUBECTL\" get pods -n yaobank --no-headers 2>/dev/null | wc -l) -ge $want ]]"; then
    fail "kube-controller-manager did not create the $want yaobank pods within 60 s"
  fi
  mapfile -t PODS < <("$KUBECTL" get pods -n yaobank -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | sort)
  info "${#PODS[@]} pods created by the Deployments (Pending: no scheduler, no kubelet)"

  local i=0 pod node
  for pod in "${PODS[@]}"; do
    node=${NODES[$((i % ${#NODES[@]}))]}
    i=$((i + 1))
    if [[ -z $("$KUBECTL" get pod -n yaobank "$pod" -o jsonpath='{.spec.nodeName}') ]]; then
      "$KUBECTL" create --raw "/api/v1/namespaces/yaobank/pods/$pod/binding" -f - >/dev/null <<EOF
{"apiVersion":"v1","kind":"Binding","metadata":{"name":"$pod","namespace":"yaobank"},"target":{"apiVersion":"v1","kind":"Node","name":"$node"}}
EOF
    fi
  done

  if ! has_ipam_plugin; then
    skip "the CNI plugin (tortie-ipam) has not landed yet (CNI_COMMAND=VERSION gives no supportedVersions): pods bound, no addresses"
    return
  fi
  # The network config the chart ships, as the node installer writes it, for the plugin's own
  # credentials; the runtime hands the IPAM plugin its plugin entry plus name and cniVersion.
  local conf
  conf=$("$KUBECTL" get configmap -n "$NS" "$RELEASE-cni-config" -o jsonpath='{.data.config}')
  [[ -n $conf ]] || fail "ConfigMap $NS/$RELEASE-cni-config has no config"
  echo "$conf" >"$DEMO_DIR/10-tortie.conflist"
  mkdir -p "$DEMO_DIR/cni"
  for pod in "${PODS[@]}"; do
    node=$("$KUBECTL" get pod -n yaobank "$pod" -o jsonpath='{.spec.nodeName}')
    local have; have=$("$KUBECTL" get pod -n yaobank "$pod" -o jsonpath='{.status.podIP}')
    if [[ -n $have ]]; then
      info "$pod on $node already has $have"
      continue
    fi
    local cid; cid=$(head -c 32 /dev/urandom | sha256sum | cut -c1-64)
    local stdin
    stdin=$(jq -c --arg kc "$DEMO_DIR/cni.kubeconfig" --arg node "$node" \
      '{cniVersion, name} + .plugins[0] | .kubernetes.kubeconfig = $kc | .nodename = $node' \
      "$DEMO_DIR/10-tortie.conflist")
    echo "$stdin" >"$DEMO_DIR/cni/$pod.stdin.json"
    local out rc=0
    out=$(CNI_COMMAND=ADD CNI_CONTAINERID=$cid CNI_NETNS=/var/run/netns/demo-$cid CNI_IFNAME=eth0 \
      CNI_PATH=/usr/lib/cni:/opt/cni/bin \
      CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=yaobank;K8S_POD_NAME=$pod;K8S_POD_INFRA_CONTAINER_ID=$cid" \
      "$BIN/tortie-ipam" <<<"$stdin" 2>"$DEMO_DIR/cni/$pod.stderr") || rc=$?
    echo "$out" >"$DEMO_DIR/cni/$pod.result.json"
    if ((rc != 0)); then
      echo "$out" >&2
      fail "tortie-ipam ADD for yaobank/$pod on $node exited $rc (stderr: $DEMO_DIR/cni/$pod.stderr)"
    fi
    local ip; ip=$(jq -r '.ips[0].address // empty' <<<"$out")
    [[ -n $ip ]] || fail "tortie-ipam ADD for yaobank/$pod returned no address: $out"
    info "CNI ADD yaobank/$pod on $node (container ${cid:0:12}) -> $ip"
    # What the kubelet reports once the sandbox is up.
    "$KUBECTL" patch pod -n yaobank "$pod" --subresource=status --type=merge \
      -p "{\"status\":{\"podIP\":\"${ip%/*}\",\"podIPs\":[{\"ip\":\"${ip%/*}\"}]}}" >/dev/null
  done
}

show_ipam() {
  local g; g=$([[ $MODE == v3 ]] && echo projectcalico.org || echo crd.projectcalico.org)
  echo "\$ kubectl get ippools,ipamblocks,blockaffinities"
  "$KUBECTL" get "ippools.$g,ipamblocks.$g,blockaffinities.$g" 2>&1 | sed 's/^/    /'
  echo
  echo "\$ kubectl get pods -n yaobank -o wide"
  "$KUBECTL" get pods -n yaobank -o custom-columns='POD:.metadata.name,NODE:.spec.nodeName,IP:.status.podIP,POOLS:.metadata.annotations.cni\.projectcalico\.org/ipv4pools' 2>&1 | sed 's/^/    /'
  local in_pool2
  in_pool2=$("$KUBECTL" get pods -n yaobank -o jsonpath='{range .items[*]}{.metadata.name} {.status.podIP}{"\n"}{end}' | awk '$2 ~ /^10\.48\.128\./' | wc -l)
  echo
  info "pods in pool2-ipv4-ippool (10.48.128.0/24): $in_pool2"
}

# The node's files from the ConfigMap (or Secret) the BGP controller publishes; else rendered offline
# with `tortie render` from the same objects.
show_bird() {
  local dir=$DEMO_DIR/bird/$SHOW_NODE
  rm -rf "$dir" && mkdir -p "$dir"
  local source=""
  if ((OPERATOR_RUNNING)); then
    local obj
    for _ in $(seq 1 40); do
      obj=$("$KUBECTL" get configmaps,secrets -n "$NS" -o json 2>/dev/null | jq -r --arg n "$SHOW_NODE" '
        .items[] | select(.data["bird.cfg"] != null)
        | select((.metadata.labels // {} | to_entries | map(.value) | index($n)) or (.metadata.name | endswith("-" + $n)) or (.metadata.annotations // {} | to_entries | map(.value) | index($n)))
        | "\(.kind)/\(.metadata.name)"' | head -n1)
      [[ -n $obj ]] && break
      sleep 0.5
    done
    if [[ -n $obj ]]; then
      local json; json=$("$KUBECTL" get -n "$NS" "${obj,,}" -o json)
      local key
      for key in $(jq -r '.data | keys[]' <<<"$json"); do
        if [[ $obj == Secret/* ]]; then
          jq -r --arg k "$key" '.data[$k]' <<<"$json" | base64 -d >"$dir/$key"
        else
          jq -r --arg k "$key" '.data[$k]' <<<"$json" >"$dir/$key"
        fi
      done
      source="published by the operator's BGP controller in $NS/${obj#*/}"
    fi
  fi
  if [[ -z $source ]] && has_render; then
    local in=$DEMO_DIR/bird/manifests
    rm -rf "$in" && mkdir -p "$in"
    # The renderer's inputs exactly as the cluster stores them.
    local g; g=$([[ $MODE == v3 ]] && echo projectcalico.org || echo crd.projectcalico.org)
    local kind
    for kind in nodes "ippools.$g" "ipamblocks.$g" "blockaffinities.$g" "bgpconfigurations.$g" "bgppeers.$g"; do
      "$KUBECTL" get "$kind" -o json | jq -c '.items[] | del(.metadata.managedFields)' \
        | awk '{print "---"; print}' >"$in/${kind%%.*}.yaml"
    done
    if "$BIN/tortie" render --node "$SHOW_NODE" -f "$in" --out "$dir" --check >"$DEMO_DIR/bird/render.log" 2>&1; then
      source="rendered by \`tortie render --node $SHOW_NODE\` from the cluster's objects"
    else
      info "tortie render failed: $(tail -n 3 "$DEMO_DIR/bird/render.log")"
    fi
  fi
  if [[ -z $source ]]; then
    skip "BGP rendering has not landed yet (no per-node ConfigMap, no \`tortie render\`): no bird.cfg to show"
    return
  fi
  info "source: $source"
  info "files: $(cd "$dir" && ls | tr '\n' ' ')"
  echo
  echo "--- $SHOW_NODE: bird.cfg ---"
  sed 's/^/    /' "$dir/bird.cfg"
  local f
  for f in bird_aggr.cfg bird_ipam.cfg; do
    [[ -f $dir/$f ]] || continue
    echo "--- $SHOW_NODE: $f ---"
    sed 's/^/    /' "$dir/$f"
  done
  echo
  local bh; bh=$(cat "$dir"/*.cfg | grep -E 'blackhole' | sed 's/^ *//' | sort -u || true)
  if [[ -n $bh ]]; then
    info "blackhole routes in $SHOW_NODE's files (its blocks, then the advertised service range):"
    sed 's/^/      /' <<<"$bh"
  else
    info "no blackhole route in $SHOW_NODE's files (does it hold a block yet?)"
  fi
}

# The real node's BIRD runs that configuration (started by the node once its agent installed it).
show_bird_running() {
  local sock=$CLUSTER_DIR/node-1/bird.ctl
  ((DEMO_NODES > 0)) || return 0
  wait_until 20 "BIRD on node-1" birdc -s "$sock" show status || { info "BIRD on node-1 is not up yet (log: $CLUSTER_DIR/logs/bird-1.log)"; return 0; }
  echo "\$ birdc -s $sock show protocols   # BIRD on node-1 (peers without a node behind them stay down)"
  birdc -s "$sock" show protocols | sed 's/^/    /'
}

finish() {
  if ((${#SKIPPED[@]})); then
    printf "${YELLOW}Parts skipped:${PLAIN}\n"
    printf '  - %s\n' "${SKIPPED[@]}"
  fi
  local port=""; [[ -f $DEMO_DIR/metrics.port ]] && port=$(<"$DEMO_DIR/metrics.port")
  cat <<EOF

Explore further (the cluster keeps running):
  eval "\$(demo/run.sh env)"     # point kubectl and helm in your shell at the demo cluster, then:
  kubectl get ippools,ipamblocks,blockaffinities,ipamhandles
  kubectl get installation default -o yaml       # the conditions the operator wrote
  kubectl -n $NS get configmaps         # published BGP inputs: shards and one object per node
  helm -n $NS get values $RELEASE --all  # the chart's values
  $BIN/tortie ipam show --show-blocks
  KUBECONFIG=$DEMO_DIR/cni.kubeconfig kubectl auth can-i --list   # all the CNI plugin may do
EOF
  [[ -n $port ]] && echo "  curl -s 127.0.0.1:$port/metrics | grep ^ipam_   # Calico's IPAM metric names"
  cat <<EOF
  less $DEMO_DIR/operator.log   # the operator's log

Stop it and remove its state: make demo-down
EOF
}

case ${1:-up} in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *) fail "unknown command '$1' (usage: demo/run.sh [up|down|env])" ;;
esac
