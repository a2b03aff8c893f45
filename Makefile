# tortie — common tasks. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
MODE ?= v1

.PHONY: help build test unit e2e crds lint fmt demo demo-down bench chart deps fuzz fuzz-long faults

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort | awk -F'\t' '{ printf "  %-14s %s\n", $$1, $$2 }'

deps: ## install or check what `make test`/`make demo` need (Debian packages, Rust, Go; builds kube-apiserver, helm)
	bash e2e/install-deps.sh
	bash e2e/build.sh

build: ## build tortie and tortie-ipam
	$(CARGO) build --bins

# The chart's copy (charts/tortie/files/crds, rendered by templates/crds.yaml) is generated too, not
# copied: tests/crds_drift.rs checks both against the types.
CRD_DIRS := crds charts/tortie/files/crds

crds: ## regenerate crds/v1, crds/v3 and the chart's copy from the Rust types
	rm -rf $(foreach d,$(CRD_DIRS),$(d)/v1 $(d)/v3)
	for d in $(CRD_DIRS); do for m in v1 v3; do \
	  $(CARGO) run --quiet --bin tortie -- crd --mode $$m --out $$d/$$m || exit 1; done; done

unit: ## unit and property tests only (no control plane)
	$(CARGO) test --lib --bins

# Each e2e test binary starts its own control plane (tests/support, ~10 s): tests of one binary
# share a cluster and are written for that; binaries do not see each other's pools and nodes.
# The fault suite (tests/e2e_faults.rs) keeps the issue's 20 concurrent allocators but runs 200
# ADDs each under `make test` (4,000 per variant: ~40 min less on 2 cores); `make faults` runs the
# full 20 x 500.
test: export TORTIE_FAULTS_SCALE ?= 20x200
test: deps ## every test: unit, property, CRD drift and e2e against a real kube-apiserver
	$(CARGO) build --all-targets
	# Bench targets run once each in test mode (criterion rejects libtest's --test-threads).
	$(CARGO) test --benches
	# --no-fail-fast: one failing binary must not hide how the others did.
	$(CARGO) test --no-fail-fast --lib --bins --tests -- --test-threads=$${TEST_THREADS:-4}

e2e: deps ## only the tests that need the real control plane
	$(CARGO) test $(patsubst tests/%.rs,--test %,$(wildcard tests/e2e_*.rs)) -- --test-threads=$${TEST_THREADS:-4}

faults: deps ## the IPAM fault suite at full size: 20 allocators x 500 ADDs, apiserver restart, operator kill
	TORTIE_FAULTS_SCALE=$${TORTIE_FAULTS_SCALE:-20x500} $(CARGO) test --test e2e_faults -- --nocapture

bench: deps ## benchmarks: criterion micro benches + system benches against the real control plane; writes BENCHMARKS.md
	bash bench/run.sh

fuzz: ## short run of every cargo-fuzz target (FUZZ_SECONDS each, default 20; needs cargo-fuzz)
	bash fuzz/run.sh $${FUZZ_SECONDS:-20}

fuzz-long: ## long fuzz run, 1 h per target by default (FUZZ_SECONDS, FUZZ_JOBS; README "Fuzzing")
	bash fuzz/run.sh $${FUZZ_SECONDS:-3600}

lint: ## rustfmt check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

HELM ?= $(or $(TORTIE_CACHE),$(HOME)/.cache/tortie)/bin/helm

demo: ## run tortie on a local control plane with the example manifests applied (demo/run.sh)
	bash demo/run.sh up

demo-down: ## stop the demo and remove its state
	bash demo/run.sh down

chart: e2e-deps crds ## regenerate the CRDs, lint the chart and package it into target/chart
	$(HELM) lint charts/tortie
	$(HELM) package charts/tortie -d target/chart

-include e2e/e2e.mk
