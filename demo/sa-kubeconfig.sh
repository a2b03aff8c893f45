#!/usr/bin/env bash
# Writes a kubeconfig that authenticates as a ServiceAccount, with a token from `kubectl create token`
# (the TokenRequest API, as a kubelet-projected token would be), for running tortie outside the
# cluster with exactly the chart's permissions.
#
#   demo/sa-kubeconfig.sh NAMESPACE SERVICEACCOUNT OUT [DURATION]
#
# The cluster (server and CA) is taken from the current KUBECONFIG's current context.
set -euo pipefail
[[ $# -ge 3 ]] || { echo "usage: $0 NAMESPACE SERVICEACCOUNT OUT [DURATION, default 24h]" >&2; exit 2; }
ns=$1 sa=$2 out=$3 duration=${4:-24h}
KUBECTL=${KUBECTL:-kubectl}

cluster=$("$KUBECTL" config view --minify --raw -o jsonpath='{.contexts[0].context.cluster}')
server=$("$KUBECTL" config view --minify --raw -o jsonpath='{.clusters[0].cluster.server}')
ca=$("$KUBECTL" config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
[[ -n $server ]] || { echo "sa-kubeconfig: no server in the current kubeconfig" >&2; exit 1; }
if ! token=$("$KUBECTL" -n "$ns" create token "$sa" --duration="$duration" 2>&1); then
  echo "sa-kubeconfig: cannot create a token for ServiceAccount $ns/$sa: $token" >&2
  exit 1
fi

# Owner-only from the first byte; a leftover temporary file would keep its own mode, so it goes first.
umask 077
rm -f "$out.tmp"
cat >"$out.tmp" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: ${cluster:-cluster}
  cluster:
    server: $server
    certificate-authority-data: $ca
users:
- name: system:serviceaccount:$ns:$sa
  user:
    token: $token
contexts:
- name: $sa
  context:
    cluster: ${cluster:-cluster}
    user: system:serviceaccount:$ns:$sa
    namespace: $ns
current-context: $sa
KUBECONFIG
mv "$out.tmp" "$out"
