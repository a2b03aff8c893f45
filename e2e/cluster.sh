#!/usr/bin/env bash
# A real, throw-away Kubernetes control plane on 127.0.0.1 for tortie's tests:
# etcd + kube-apiserver (RBAC on) + kube-controller-manager; with --nodes N also kube-scheduler and
# N real nodes (containerd + runc, kubelet, the chart's CNI config with tortie-ipam, tortie agent,
# BIRD), each in its own network namespace. Nodes need root; see e2e/README.md, "Real nodes".
#
#   e2e/cluster.sh up      start one (building the binaries first if they are not cached);
#                          prints `export ...` lines on stdout, progress on stderr:
#                              eval "$(e2e/cluster.sh up)"
#   e2e/cluster.sh env     print the export lines of the running cluster again
#   e2e/cluster.sh status  show whether its processes run and the API server is ready
#   e2e/cluster.sh down    stop the processes it started (by PID) and remove its directory
#   e2e/cluster.sh restart-apiserver [--kill]
#                          stop kube-apiserver (SIGTERM, or SIGKILL with --kill: a crash) and start it
#                          again with the same arguments and port; returns once /readyz is ok.
#                          Prints "restart-apiserver: down <s> s" (kill to ready) on stderr.
#
# Options (before or after the command):
#   -d DIR | --dir DIR     the cluster's state directory (default $TORTIE_E2E_DIR, else e2e/.run/default).
#                          Clusters in different directories coexist: each gets its own ports.
#   --watch-pid PID        (up) also start a watchdog that runs `down` once PID has exited
#                          (used by the Rust test harness, tests/support/cluster.rs).
#   --nodes N | --node     (up) also start kube-scheduler and N real nodes (node-1..node-N; --node: 1).
#                          `down` removes everything they made on the host, also after a crash.
# Environment:
#   TORTIE_APISERVER_PORT, TORTIE_ETCD_PORT   fixed ports instead of free random ones
#   KEEP_LOGS=1            `down` keeps the directory's logs (a failed `up` always keeps them)
#   TORTIE_E2E_BUILD=0     never build: fail if a binary is missing
#   TORTIE_CACHE           binary cache (default ~/.cache/tortie), see e2e/build.sh
#   TORTIE_E2E_NODES=N     same as --nodes N
#   TORTIE_E2E_CRD_MODE    v1 (default) or v3: the CRDs, CNI config and agents of the nodes
#   TORTIE_E2E_NODE_CRDS=0 with nodes, do not apply crds/<mode> (e.g. a Helm release installs them)
#   TORTIE_BIN_DIR         where tortie and tortie-ipam are (default $CARGO_TARGET_DIR/debug, else target/debug)
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=e2e/node.sh
source "$(dirname "${BASH_SOURCE[0]}")/node.sh"

CMD=""
DIR=${TORTIE_E2E_DIR:-$REPO_DIR/e2e/.run/default}
WATCH_PID=""
KILL=0
NODES=${TORTIE_E2E_NODES:-0}
while (($#)); do
  case $1 in
    up | down | env | status | restart-apiserver) CMD=$1 ;;
    --kill) KILL=1 ;;
    -d | --dir) DIR=$2; shift ;;
    --dir=*) DIR=${1#--dir=} ;;
    --watch-pid) WATCH_PID=$2; shift ;;
    --nodes) NODES=$2; shift ;;
    --nodes=*) NODES=${1#--nodes=} ;;
    --node) NODES=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "cluster: unknown argument '$1' (usage: e2e/cluster.sh up|down|env|status|restart-apiserver [-d DIR] [--watch-pid PID] [--nodes N] [--kill])" ;;
  esac
  shift
done
[[ $NODES =~ ^[0-9]+$ ]] || die "cluster: --nodes wants a number, got '$NODES'"
[[ -n $CMD ]] || die "usage: e2e/cluster.sh up|down|env|status|restart-apiserver [-d DIR] [--watch-pid PID] [--nodes N] [--kill]"
mkdir -p "$(dirname "$DIR")"
DIR=$(cd "$(dirname "$DIR")" && pwd)/$(basename "$DIR")

PKI=$DIR/pki
LOGS=$DIR/logs
PIDS=$DIR/pids
KUBECONFIG_FILE=$DIR/kubeconfig
KUBECTL_BIN=$HELM_BIN/kubectl
ETCD_BIN=$(etcd_path)
APISERVER_BIN=$K8S_BIN/kube-apiserver
KCM_BIN=$K8S_BIN/kube-controller-manager

say() { echo "cluster: $*" >&2; }
fail() { echo "cluster: FAILED: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# processes

# pid_of NAME: the PID recorded for NAME if that process is still ours (its command line names
# our directory, so a recycled PID is never touched), else nothing.
pid_of() {
  local f=$PIDS/$1.pid pid
  [[ -f $f ]] || return 0
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DIR"; then
    echo "$pid"
  fi
}

# exited NAME: the process started for NAME is gone (or a zombie). Unlike pid_of this does not
# read its command line, which is empty while the process is in execve: a process caught there
# once looked dead and failed a CI start-up with an empty log.
exited() {
  local f=$PIDS/$1.pid pid
  [[ -f $f ]] || return 0
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  ! alive "$pid"
}

# alive PID: the process exists and is not a zombie (an orphan waiting for init to reap it).
alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z && $st != X ]]
}

# stop NAME: SIGTERM, wait up to 10 s, then SIGKILL.
stop() {
  local pid; pid=$(pid_of "$1")
  rm -f "$PIDS/$1.pid"
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    alive "$pid" || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

stop_all() {
  stop_nodes
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
}

# start NAME CMD...: run detached (own session, stdin closed), log to $LOGS/NAME.log.
start() {
  local name=$1; shift
  setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
  echo $! >"$PIDS/$name.pid"
  disown $! 2>/dev/null || true
}

# last_error LOG: the most telling line of a log, for a one-line failure message.
last_error() {
  local line
  line=$(grep -E 'address already in use|[Ee]rror|[Ff]atal|^[EF][0-9]{4} |panic:|invalid|failed' "$1" 2>/dev/null | tail -n1 || true)
  [[ -n $line ]] || line=$(tail -n1 "$1" 2>/dev/null || true)
  echo "${line:0:240}"
}

port_in_use() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# A port below the kernel's ephemeral range (so no outgoing connection holds it), free right now.
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    port_in_use "$p" || { echo "$p"; return; }
  done
  fail "no free TCP port found on 127.0.0.1 in 20000-32000"
}

# ---------------------------------------------------------------------------------------------
# certificates and kubeconfigs

gen_pki() {
  mkdir -p "$PKI"
  local log=$LOGS/pki.log
  (
    set -e
    cd "$PKI"
    ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
    ec ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=tortie-e2e-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out ca.crt
    # sign NAME SUBJECT EXTENSIONS
    sign() {
      ec "$1.key"
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
      printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 30 -extfile "$1.ext" -out "$1.crt"
      rm -f "$1.csr" "$1.ext"
    }
    sign apiserver "/CN=kube-apiserver" \
      "$(printf '%s\n' "extendedKeyUsage=serverAuth" \
        "subjectAltName=IP:127.0.0.1,IP:::1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")"
    sign admin "/O=system:masters/CN=tortie-e2e-admin" "extendedKeyUsage=clientAuth"
    sign kcm "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
    ec sa.key   # ES256 service-account tokens
    openssl pkey -in sa.key -pubout -out sa.pub
  ) >"$log" 2>&1 || fail "generating certificates with openssl; log: $log"
}

b64() { base64 -w0 <"$1"; }

# write_kubeconfig FILE USER CERT KEY
write_kubeconfig() {
  cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tortie-e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$3")
    client-key-data: $(b64 "$4")
contexts:
- name: tortie-e2e
  context:
    cluster: tortie-e2e
    user: $2
current-context: tortie-e2e
EOF
  mv "$1.tmp" "$1"
}

# ---------------------------------------------------------------------------------------------
# readiness

api_get() { # PATH -> body on stdout, fails on non-2xx
  curl -sf --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT$1"
}

# wait_for NAME TIMEOUT CHECK-COMMAND...: poll until CHECK succeeds; fail if NAME dies or times out.
wait_for() {
  local name=$1 timeout=$2; shift 2
  local t0; t0=$(now)
  while true; do
    "$@" >/dev/null 2>&1 && return 0
    if exited "$name"; then
      local why; why=$(last_error "$LOGS/$name.log")
      if grep -q 'address already in use' "$LOGS/$name.log" 2>/dev/null; then
        return 3
      fi
      startup_failed "$name exited during start-up: $why"
    fi
    if (($(awk -v e="$(elapsed "$t0")" -v t="$timeout" 'BEGIN { print (e > t) }'))); then
      startup_failed "$name not ready after ${timeout}s: $(last_error "$LOGS/$name.log")"
    fi
    sleep 0.2
  done
}

startup_failed() {
  stop_all
  touch "$DIR/failed"
  local name=${1%% *}
  # CI keeps only what was printed: show the end of the log, not just its path.
  if [[ -s $LOGS/$name.log ]]; then
    echo "cluster: last lines of $LOGS/$name.log:" >&2
    tail -n 25 "$LOGS/$name.log" | sed 's/^/cluster:   /' >&2
  else
    echo "cluster: $LOGS/$name.log is empty" >&2
  fi
  fail "$1 (log: $LOGS/$name.log; all logs kept in $LOGS)"
}

# ---------------------------------------------------------------------------------------------
# commands

print_env() {
  [[ -f $DIR/env ]] || fail "no cluster in $DIR (run: e2e/cluster.sh up -d $DIR)"
  cat "$DIR/env"
}

cmd_env() {
  [[ -n $(pid_of kube-apiserver) ]] || fail "no running kube-apiserver for $DIR (run: e2e/cluster.sh up -d $DIR)"
  print_env
}

cmd_status() {
  local n rc=0 pid
  for n in etcd kube-apiserver kube-controller-manager watchdog; do
    pid=$(pid_of $n)
    if [[ -n $pid ]]; then
      echo "$n: running (pid $pid)"
    elif [[ $n != watchdog ]]; then
      echo "$n: not running"; rc=1
    fi
  done
  status_nodes
  if [[ -f $DIR/ports ]]; then
    # shellcheck disable=SC1091
    source "$DIR/ports"
    if [[ $(api_get /readyz 2>/dev/null || true) == ok ]]; then
      echo "kube-apiserver: https://127.0.0.1:$APISERVER_PORT ready"
    else
      echo "kube-apiserver: https://127.0.0.1:$APISERVER_PORT NOT ready"; rc=1
    fi
  fi
  echo "dir: $DIR"
  return $rc
}

cmd_down() {
  local wd; wd=$(pid_of watchdog)
  if [[ -n $wd && $wd != "${TORTIE_WATCHDOG_SELF:-}" ]]; then kill -TERM "$wd" 2>/dev/null || true; fi
  rm -f "$PIDS/watchdog.pid"
  if [[ ! -d $DIR ]]; then
    say "nothing to stop in $DIR"
    return 0
  fi
  stop_all
  if [[ ${KEEP_LOGS:-0} == 1 || -f $DIR/failed ]]; then
    rm -rf "$DIR/etcd"
    say "stopped; logs kept in $LOGS"
  else
    rm -rf "$DIR"
    say "stopped; removed $DIR"
  fi
}

ensure_binaries() {
  local missing=()
  local b
  for b in "$APISERVER_BIN" "$KCM_BIN" "$KUBECTL_BIN"; do [[ -x $b ]] || missing+=("$b"); done
  if ((${#missing[@]})); then
    if [[ ${TORTIE_E2E_BUILD:-1} == 0 ]]; then
      fail "missing binary ${missing[0]} (run e2e/build.sh; TORTIE_E2E_BUILD=0 forbids building here)"
    fi
    say "binaries missing (${missing[*]##*/}): running e2e/build.sh"
    # On failure build.sh has printed the one FAILED line naming what failed and its log.
    "$E2E_DIR/build.sh" >&2 || exit 1
    BUILT=1
  fi
  [[ -x $ETCD_BIN ]] || fail "missing binary $ETCD_BIN (run e2e/install-deps.sh for Debian etcd-server)"
  for b in "$APISERVER_BIN" "$KCM_BIN" "$KUBECTL_BIN"; do [[ -x $b ]] || fail "missing binary $b after e2e/build.sh"; done
  command -v openssl >/dev/null || fail "missing openssl (run e2e/install-deps.sh)"
  command -v curl >/dev/null || fail "missing curl (run e2e/install-deps.sh)"
}

start_etcd() {
  mkdir -p "$DIR/etcd"
  # A throw-away test store: skip fsync (etcd >= 3.5) unless TORTIE_ETCD_FSYNC=1.
  ETCD_EXTRA=()
  if [[ ${TORTIE_ETCD_FSYNC:-0} != 1 ]] && "$ETCD_BIN" --help 2>&1 | grep -q -- --unsafe-no-fsync; then
    ETCD_EXTRA=(--unsafe-no-fsync)
  fi
  start etcd "$ETCD_BIN" --name tortie-e2e --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "tortie-e2e=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new \
    --logger zap --log-outputs stderr --snapshot-count 10000 "${ETCD_EXTRA[@]}"
  local rc=0
  wait_for etcd 30 etcd_healthy || rc=$?
  return $rc
}
etcd_healthy() { curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }

start_apiserver() {
  start kube-apiserver "$APISERVER_BIN" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --cert-dir "$DIR/serving" \
    --client-ca-file "$PKI/ca.crt" \
    --authorization-mode RBAC \
    --service-account-issuer "https://127.0.0.1:$APISERVER_PORT" \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --endpoint-reconciler-type none \
    --allow-privileged=true \
    --profiling=false
  local rc=0
  wait_for kube-apiserver 90 apiserver_ready || rc=$?
  return $rc
}
apiserver_ready() { [[ $(api_get /readyz) == ok ]]; }

# With real nodes the node lifecycle controller runs too: it lifts the not-ready taint a kubelet
# registers with once the node is Ready (Pods are never evicted: taint-eviction-controller is off).
kcm_controllers() {
  local c='*,-taint-eviction-controller,-nodeipam,-ttl,-podgc,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller'
  ((NODES > 0)) || c+=',-nodelifecycle'
  echo "$c"
}

start_kcm() {
  # No kubelets, no cloud: leave out the controllers that would act on the fake Nodes the tests
  # create (mark them NotReady and taint/evict their Pods, allocate or annotate them, delete Pods
  # of unknown Nodes). Namespace deletion, ownerReference GC, ServiceAccounts and tokens, the
  # kube-root-ca.crt ConfigMap, Deployments/ReplicaSets/Jobs etc. all run.
  start kube-controller-manager "$KCM_BIN" \
    --kubeconfig "$DIR/kcm.kubeconfig" \
    --authentication-kubeconfig "$DIR/kcm.kubeconfig" --authorization-kubeconfig "$DIR/kcm.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --controllers "$(kcm_controllers)" \
    --concurrent-gc-syncs 5 --concurrent-namespace-syncs 5 \
    --profiling=false
  # The ServiceAccount controller making default/default shows the controllers run with working credentials.
  wait_for kube-controller-manager 60 api_get /api/v1/namespaces/default/serviceaccounts/default
}

cmd_up() {
  if [[ -n $(pid_of kube-apiserver) ]]; then
    say "already running in $DIR"
    print_env
    return 0
  fi
  if [[ -d $DIR ]]; then # leftovers of a crashed or failed run
    stop_all
    rm -rf "$DIR"
  fi
  local T0; T0=$(now)
  BUILT=0
  ensure_binaries
  local tb; tb=$(elapsed "$T0")
  mkdir -p "$DIR" "$LOGS" "$PIDS"
  local T1; T1=$(now)
  gen_pki
  local tpki; tpki=$(elapsed "$T1")

  local attempt rc
  for attempt in 1 2 3; do
    ETCD_PORT=${TORTIE_ETCD_PORT:-$(free_port)}
    ETCD_PEER_PORT=$(free_port)
    APISERVER_PORT=${TORTIE_APISERVER_PORT:-$(free_port)}
    if [[ -n ${TORTIE_ETCD_PORT:-} ]] && port_in_use "$TORTIE_ETCD_PORT"; then
      rm -f "$DIR/failed"; touch "$DIR/failed"
      fail "port clash: TORTIE_ETCD_PORT=$TORTIE_ETCD_PORT is already in use on this machine (logs: $LOGS)"
    fi
    if [[ -n ${TORTIE_APISERVER_PORT:-} ]] && port_in_use "$TORTIE_APISERVER_PORT"; then
      touch "$DIR/failed"
      fail "port clash: TORTIE_APISERVER_PORT=$TORTIE_APISERVER_PORT is already in use on this machine (logs: $LOGS)"
    fi
    printf 'ETCD_PORT=%s\nETCD_PEER_PORT=%s\nAPISERVER_PORT=%s\n' "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" >"$DIR/ports"
    write_kubeconfig "$KUBECONFIG_FILE" tortie-e2e-admin "$PKI/admin.crt" "$PKI/admin.key"
    write_kubeconfig "$DIR/kcm.kubeconfig" system:kube-controller-manager "$PKI/kcm.crt" "$PKI/kcm.key"

    local t; t=$(now)
    rc=0; start_etcd || rc=$?
    if ((rc == 3)); then
      [[ -z ${TORTIE_ETCD_PORT:-} ]] || { touch "$DIR/failed"; fail "port clash: etcd could not bind 127.0.0.1:$ETCD_PORT or :$ETCD_PEER_PORT (log: $LOGS/etcd.log)"; }
      say "etcd port taken meanwhile; retrying with other ports"; stop_all; mv "$LOGS/etcd.log" "$LOGS/etcd.attempt$attempt.log"; continue
    fi
    TETCD=$(elapsed "$t")
    t=$(now)
    rc=0; start_apiserver || rc=$?
    if ((rc == 3)); then
      [[ -z ${TORTIE_APISERVER_PORT:-} ]] || { stop_all; touch "$DIR/failed"; fail "port clash: kube-apiserver could not bind 127.0.0.1:$APISERVER_PORT (log: $LOGS/kube-apiserver.log)"; }
      say "kube-apiserver port taken meanwhile; retrying with other ports"; stop_all
      mv "$LOGS/kube-apiserver.log" "$LOGS/kube-apiserver.attempt$attempt.log"; mv "$LOGS/etcd.log" "$LOGS/etcd.attempt$attempt.log"
      rm -rf "$DIR/etcd"; continue
    fi
    TAPI=$(elapsed "$t")
    break
  done
  ((rc == 0)) || { touch "$DIR/failed"; fail "could not find free ports after 3 attempts (logs: $LOGS)"; }
  local t; t=$(now)
  start_kcm
  local tkcm; tkcm=$(elapsed "$t")
  local tnodes=""
  if ((NODES > 0)); then
    t=$(now)
    # A failure anywhere in the nodes' start-up takes everything down again (logs kept).
    trap 'rc=$?; if ((rc != 0)); then touch "$DIR/failed"; stop_all; fi' EXIT
    start_nodes "$NODES"
    trap - EXIT
    tnodes=", $NODES node(s) $(elapsed "$t") s"
  fi

  cat >"$DIR/env" <<EOF
export KUBECONFIG=$KUBECONFIG_FILE
export KUBECTL=$KUBECTL_BIN
export HELM=$HELM_BIN/helm
export PATH=$TOOLS_BIN:\$PATH
export TORTIE_E2E_DIR=$DIR
export TORTIE_E2E_NODES=$NODES
EOF
  if [[ -n $WATCH_PID ]]; then
    # Detached watchdog: when the watched process is gone, take the cluster down.
    # shellcheck disable=SC2016  # expanded by the inner bash
    setsid bash -c '
      while kill -0 "$1" 2>/dev/null; do sleep 1; done
      TORTIE_WATCHDOG_SELF=$$ exec "$2" down -d "$3"' tortie-e2e-watchdog "$WATCH_PID" "$E2E_DIR/cluster.sh" "$DIR" \
      </dev/null >>"$LOGS/watchdog.log" 2>&1 &
    echo $! >"$PIDS/watchdog.pid"
    disown $! 2>/dev/null || true
  fi
  local total; total=$(elapsed "$T0")
  local start_only; start_only=$(elapsed "$T1")
  say "ready: https://127.0.0.1:$APISERVER_PORT (dir $DIR)"
  say "warm start ${start_only} s (certs ${tpki} s, etcd ${TETCD} s, kube-apiserver ${TAPI} s, kube-controller-manager ${tkcm} s${tnodes})"
  if ((BUILT)); then
    say "cold set-up ${total} s (build ${tb} s + start ${start_only} s)"
  fi
  cat "$DIR/env"
}

# A fault for tests: the API server goes away (gracefully or by a crash) and comes back on the
# same port with the same arguments; etcd and kube-controller-manager keep running.
cmd_restart_apiserver() {
  [[ -f $DIR/ports ]] || fail "no cluster in $DIR (run: e2e/cluster.sh up -d $DIR)"
  # shellcheck disable=SC1091
  source "$DIR/ports"
  local pid; pid=$(pid_of kube-apiserver)
  [[ -n $pid ]] || fail "no running kube-apiserver for $DIR"
  local t0; t0=$(now)
  if ((KILL)); then
    rm -f "$PIDS/kube-apiserver.pid"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.05; done
  else
    stop kube-apiserver
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.05; done
  fi
  alive "$pid" && fail "kube-apiserver (pid $pid) did not exit"
  # A killed process shows as a zombie while its other threads still hold the listening socket.
  for _ in $(seq 1 100); do port_in_use "$APISERVER_PORT" || break; sleep 0.05; done
  local rc attempt
  for attempt in 1 2 3; do
    echo "--- restart-apiserver $(date -u +%FT%TZ) (previous pid $pid, kill=$KILL, attempt $attempt)" >>"$LOGS/kube-apiserver.log"
    rc=0
    start_apiserver || rc=$?
    ((rc == 3)) || break
    sleep 1
  done
  ((rc == 0)) || { touch "$DIR/failed"; fail "kube-apiserver could not bind 127.0.0.1:$APISERVER_PORT again (log: $LOGS/kube-apiserver.log)"; }
  say "restart-apiserver: down $(elapsed "$t0") s (pid $pid -> $(pid_of kube-apiserver))"
}

case $CMD in
  up) cmd_up ;;
  restart-apiserver) cmd_restart_apiserver ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
esac
