#!/usr/bin/env bash
# make bench: micro benchmarks (criterion) and system benchmarks (tortie-bench against a real
# control plane, real tortie-ipam processes, real BIRD), then BENCHMARKS.md with plots.
# BENCH_QUICK=1 shortens every run (smoke check); figures in BENCHMARKS.md come from a full run.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${BENCH_QUICK:-0}
crit_args=()
((quick)) && crit_args=(--warm-up-time 1 --measurement-time 2)

echo "== micro benchmarks (criterion)" >&2
cargo bench --bench ipam_core -- "${crit_args[@]}"
[[ -f benches/bgp_render.rs ]] && cargo bench --bench bgp_render -- "${crit_args[@]}"

echo "== system benchmarks (benches/system.rs: real control plane, real tortie-ipam processes)" >&2
bench_args=()
((quick)) && bench_args=(--quick)
bash e2e/with-cluster.sh cargo bench --bench system -- all --out bench/results.json "${bench_args[@]}"

echo "== operator benchmarks (benches/operator.rs: GC of leaks, footprint, BGP change -> BIRD reload)" >&2
bash e2e/with-cluster.sh cargo bench --bench operator -- all --out bench/results.json "${bench_args[@]}"

echo "== report" >&2
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet 'matplotlib==3.11.2'
python3 bench/report.py
