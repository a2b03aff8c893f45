#!/usr/bin/env bash
# Runs a command against one fresh control plane, then takes it down:
#   e2e/with-cluster.sh cargo test --test e2e_smoke --test e2e_ipam
# Every test binary then attaches to this cluster (TORTIE_E2E_KUBECONFIG) instead of starting its
# own (about 9 s each). The command's exit status is returned; on failure the cluster's logs are
# kept (KEEP_LOGS=1 keeps them always) and their directory is printed.
set -euo pipefail
E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
(($#)) || { echo "usage: e2e/with-cluster.sh COMMAND [ARG...]" >&2; exit 2; }

# Always a directory of its own: never reuse (and then take down) a cluster someone else started.
DIR=$E2E_DIR/.run/with-cluster-$$
# The watchdog takes the cluster down even if this script is killed.
env_lines=$("$E2E_DIR/cluster.sh" up -d "$DIR" --watch-pid $$) || exit 1
eval "$env_lines"
export TORTIE_E2E_KUBECONFIG=$KUBECONFIG

rc=0
"$@" || rc=$?
if ((rc != 0)); then
  KEEP_LOGS=1 "$E2E_DIR/cluster.sh" down -d "$DIR"
  echo "e2e: '$*' failed (exit $rc); control-plane logs: $DIR/logs" >&2
else
  "$E2E_DIR/cluster.sh" down -d "$DIR"
fi
exit $rc
