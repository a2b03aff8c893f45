#!/bin/sh
# Puts tortie-ipam on a node the way Calico's install-cni does for calico-ipam:
#   install  copy the plugin into the CNI bin dir, write the conflist (from the chart's ConfigMap) and
#            a kubeconfig holding a token of the CNI plugin's own ServiceAccount
#   refresh  keep rewriting that kubeconfig before its token expires (runs as a sidecar)
# The token comes from the TokenRequest API, requested with the node agent's ServiceAccount, which
# may create tokens of the CNI ServiceAccount and nothing else. Every file is replaced atomically.
set -eu

HOST_ROOT=${HOST_ROOT:-/host}
CNI_BIN_DIR=${CNI_BIN_DIR:-/opt/cni/bin}
CNI_NET_DIR=${CNI_NET_DIR:-/etc/cni/net.d}
CONF_NAME=${CONF_NAME:-10-tortie.conflist}
CONF_SRC=${CONF_SRC:-/tortie/config}
IPAM_BIN=${IPAM_BIN:-/usr/local/bin/tortie-ipam}
SA_DIR=${SA_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}
APISERVER=${APISERVER:-https://${KUBERNETES_SERVICE_HOST:?}:${KUBERNETES_SERVICE_PORT:-443}}
NAMESPACE=${NAMESPACE:?the ServiceAccounts namespace}
CNI_SERVICEACCOUNT=${CNI_SERVICEACCOUNT:?the CNI plugin ServiceAccount}
TOKEN_SECONDS=${TOKEN_SECONDS:-86400}
REFRESH_SECONDS=${REFRESH_SECONDS:-3600}
# The kubeconfig's path as the plugin sees it on the host.
KUBECONFIG_PATH=$CNI_NET_DIR/tortie-kubeconfig

log() { echo "install-cni: $*" >&2; }

# replace DEST [MODE]: stdin to DEST through a temporary file in the same directory. The file is
# created owner-only (umask 077, after removing any leftover that would keep its old mode) and gets
# MODE only once complete, so a token is never readable by others, not even while being written.
replace() {
  tmp="$1.tortie-tmp.$$"
  rm -f "$tmp" && (umask 077 && cat >"$tmp") && chmod "${2:-644}" "$tmp" && mv -f "$tmp" "$1"
}

write_kubeconfig() {
  body=$(curl -sS --fail-with-body --max-time 30 --cacert "$SA_DIR/ca.crt" \
    -H "Authorization: Bearer $(cat "$SA_DIR/token")" -H 'Content-Type: application/json' \
    -X POST "$APISERVER/api/v1/namespaces/$NAMESPACE/serviceaccounts/$CNI_SERVICEACCOUNT/token" \
    -d "{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenRequest\",\"spec\":{\"expirationSeconds\":$TOKEN_SECONDS}}") ||
    { log "TokenRequest for $NAMESPACE/$CNI_SERVICEACCOUNT failed: $body"; return 1; }
  token=$(printf '%s' "$body" | tr -d '\n' | sed -n 's/.*"token" *: *"\([^"]*\)".*/\1/p')
  [ -n "$token" ] || { log "no token in the TokenRequest answer"; return 1; }
  replace "$HOST_ROOT$KUBECONFIG_PATH" 600 <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $APISERVER
    certificate-authority-data: $(base64 <"$SA_DIR/ca.crt" | tr -d '\n')
users:
- name: $CNI_SERVICEACCOUNT
  user:
    token: $token
contexts:
- name: tortie-cni
  context: {cluster: local, user: $CNI_SERVICEACCOUNT}
current-context: tortie-cni
KUBECONFIG
  log "wrote $KUBECONFIG_PATH (token of $NAMESPACE/$CNI_SERVICEACCOUNT, ${TOKEN_SECONDS}s)"
}

install() {
  mkdir -p "$HOST_ROOT$CNI_BIN_DIR" "$HOST_ROOT$CNI_NET_DIR"
  replace "$HOST_ROOT$CNI_BIN_DIR/tortie-ipam" 755 <"$IPAM_BIN"
  log "installed $CNI_BIN_DIR/tortie-ipam"
  write_kubeconfig
  sed "s|__KUBECONFIG_FILEPATH__|$KUBECONFIG_PATH|g" "$CONF_SRC" | replace "$HOST_ROOT$CNI_NET_DIR/$CONF_NAME"
  log "wrote $CNI_NET_DIR/$CONF_NAME"
}

case ${1:-install} in
  install) install ;;
  refresh)
    wait=$REFRESH_SECONDS
    while true; do
      sleep "$wait"
      if write_kubeconfig; then wait=$REFRESH_SECONDS; else wait=30; log "retrying in ${wait}s"; fi
    done
    ;;
  *) log "usage: install-cni.sh install|refresh"; exit 2 ;;
esac
