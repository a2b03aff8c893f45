# Make targets for tortie's real control plane (see e2e/README.md). Included by the main Makefile:
#   include e2e/e2e.mk
# `make e2e-deps` installs the Debian packages and builds/caches kube-apiserver,
# kube-controller-manager and helm (a no-op taking well under a second once done).
# `make cluster-up` starts a cluster in $(TORTIE_E2E_DIR) and prints the `export` lines to eval;
# tests started while it runs attach to it when KUBECONFIG (or TORTIE_E2E_KUBECONFIG) names it,
# otherwise every test binary starts (and stops) its own.

E2E_SH ?= bash
TORTIE_E2E_DIR ?= $(CURDIR)/e2e/.run/default

.PHONY: e2e-deps cluster-up cluster-down cluster-env cluster-status

e2e-deps:
	$(E2E_SH) e2e/install-deps.sh
	$(E2E_SH) e2e/build.sh

cluster-up: e2e-deps
	@$(E2E_SH) e2e/cluster.sh up -d $(TORTIE_E2E_DIR)
	@echo '# to use it in your shell: eval "$$(e2e/cluster.sh env -d $(TORTIE_E2E_DIR))"'

cluster-down:
	@$(E2E_SH) e2e/cluster.sh down -d $(TORTIE_E2E_DIR)

cluster-env:
	@$(E2E_SH) e2e/cluster.sh env -d $(TORTIE_E2E_DIR)

cluster-status:
	@$(E2E_SH) e2e/cluster.sh status -d $(TORTIE_E2E_DIR)
