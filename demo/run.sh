#!/usr/bin/env bash
# `make demo`: tortie on a local control plane, the way a cluster admin and a container runtime would
# use it, end to end.
#
#   demo/run.sh [up]   build what is missing, start etcd + kube-apiserver + kube-controller-manager,
#                      helm install the chart, run the operator under the chart's ServiceAccount,
#                      apply examples/ (seed 001's lab, seed 003's BGP, three Nodes), allocate the
#                      yaobank pods' addresses with tortie-ipam as a runtime would, print the result
#   demo/run.sh down   stop the operator and the control plane, remove demo/.run (`make demo-down`)
#   demo/run.sh env    print the `export` lines to use the demo cluster from a shell
#
# There are no kubelets and no scheduler: the chart's Deployment and DaemonSet pods stay Pending
# (their images are never pulled). The operator runs here as a process with a token of the chart's
# own ServiceAccount, tortie-ipam with a token of its own narrower one. This script plays the
# scheduler (it binds the yaobank pods to the lab's nodes) and the runtime (CNI ADD per pod).
#
# Environment: DEMO_DIR (default demo/.run), CRD_MODE v1|v3 (default v1), CARGO_TARGET_DIR,
# DEMO_KEEP_GOING=1 (do not stop at the first failed step).
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

# Colour only for a person at a terminal, never in logs or pipes, and never with NO_COLOR set.
if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then
  BOLD=$'\033[1m' YELLOW=$'\033[33m' RED=$'\033[31m' PLAIN=$'\033[0m'
else
  BOLD='' YELLOW='' RED='' PLAIN=''
fi

step_no=0
STEPS=9
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

  step "Local control plane (e2e/cluster.sh: etcd, kube-apiserver with RBAC, kube-controller-manager)"
  if [[ -f $CLUSTER_DIR/kubeconfig ]] && bash "$REPO/e2e/cluster.sh" status -d "$CLUSTER_DIR" >/dev/null 2>&1; then
    info "already running; reusing it (make demo-down for a fresh one)"
    eval "$(bash "$REPO/e2e/cluster.sh" env -d "$CLUSTER_DIR")"
  else
    local env_lines
    env_lines=$(bash "$REPO/e2e/cluster.sh" up -d "$CLUSTER_DIR") || fail "the control plane did not start (logs: $CLUSTER_DIR/logs)"
    eval "$env_lines"
  fi
  export KUBECONFIG
  info "KUBECONFIG=$KUBECONFIG"

  step "helm install $RELEASE charts/tortie (crdMode=$MODE) into $NS"
  "$HELM" upgrade --install "$RELEASE" "$REPO/charts/tortie" -n "$NS" --create-namespace \
    --set crdMode="$MODE" --wait=false >"$DEMO_DIR/helm.log" 2>&1 || { cat "$DEMO_DIR/helm.log"; fail "helm install"; }
  "$HELM" list -n "$NS"
  "$KUBECTL" wait --for=condition=Established --timeout=60s crd -l app.kubernetes.io/part-of=tortie >/dev/null
  info "CRDs: $("$KUBECTL" get crd -l app.kubernetes.io/part-of=tortie -o name | sed 's|.*/||' | tr '\n' ' ')"
  info "(the chart's pods stay Pending: no kubelet here; the operator runs below as a local process)"
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
  for f in "$REPO/examples/$MODE"/[0-9][0-9]-*.yaml; do files+=(-f "$f"); done
  "$KUBECTL" apply "${files[@]}"
  if ((OPERATOR_RUNNING)); then
    if wait_until 30 "Installation Ready" bash -c "\"$KUBECTL\" get installation default -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"; then
      info "Installation default: Ready"
    else
      info "Installation default is not Ready yet; its conditions:"
      "$KUBECTL" get installation default -o jsonpath='{range .status.conditions[*]}{"      "}{.type}={.status} {.reason}: {.message}{"\n"}{end}' || true
    fi
  fi

  step "Schedule the yaobank pods and run tortie-ipam for each (CNI ADD, as the container runtime would)"
  allocate_pods

  step "What tortie stored: pools, blocks, affinities, and the pods' addresses"
  show_ipam

  step "BIRD configuration of $SHOW_NODE"
  show_bird

  printf "\n${BOLD}==> Done in %d s${PLAIN}\n" "$(($(date +%s) - t_start))"
  finish
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

finish() {
  if ((${#SKIPPED[@]})); then
    printf "${YELLOW}Parts skipped (not landed yet):${PLAIN}\n"
    printf '  - %s\n' "${SKIPPED[@]}"
  fi
  local port=""; [[ -f $DEMO_DIR/metrics.port ]] && port=$(<"$DEMO_DIR/metrics.port")
  cat <<EOF

Explore further (the cluster keeps running):
  eval "\$(demo/run.sh env)"     # point kubectl and helm in your shell at the demo cluster, then:
  kubectl get ippools,ipamblocks,blockaffinities,ipamhandles
  kubectl get installation default -o yaml       # the conditions the operator wrote
  kubectl -n $NS get configmaps         # per-node BIRD configuration
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
