#!/usr/bin/env bash
# make bench: micro benchmarks (criterion) and system benchmarks (benches/system.rs and
# benches/operator.rs against a real control plane, real tortie-ipam processes, real BIRD), then
# BENCHMARKS.md with plots. BENCH_QUICK=1 shortens every run (smoke check); figures in
# BENCHMARKS.md come from a full run. Every step's wall time is printed at the end. A failing
# step does not stop the later ones (a failed section's targets show as not measured), but
# fails `make bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${BENCH_QUICK:-0}
results=bench/results.json
# Criterion's own HTML plots are not used (bench/report.py reads its estimates); 2 s warm-up and
# 3 s of samples per micro benchmark (criterion's defaults: 3 + 5) keep the whole run short.
crit_args=(--noplot --warm-up-time 2 --measurement-time 3)
bench_args=()
if ((quick)); then
  crit_args=(--noplot --warm-up-time 1 --measurement-time 2)
  bench_args=(--quick)
fi

times=()
failed=()
step() { # step NAME COMMAND...: runs COMMAND, records its wall time; a failure is reported at the end
  local name=$1 t0=$SECONDS rc=0
  shift
  echo "== $name" >&2
  "$@" || rc=$?
  times+=("$(printf '%-75s %5d s%s' "$name" $((SECONDS - t0)) "$( ((rc)) && echo "  FAILED (exit $rc)")")")
  ((rc == 0)) || failed+=("$name")
}

# One run's results only: sections of an earlier run must not pass for this one's.
rm -f "$results"

step "build (release, every bench target)" \
  cargo bench --no-run --bench ipam_core --bench bgp_render --bench system --bench operator
((${#failed[@]} == 0)) || exit 1
step "micro benchmarks: benches/ipam_core.rs (criterion)" \
  cargo bench --bench ipam_core -- "${crit_args[@]}"
step "micro benchmarks: benches/bgp_render.rs (criterion)" \
  cargo bench --bench bgp_render -- "${crit_args[@]}"
step "system benchmarks: benches/system.rs (burst, one-node, render)" \
  bash e2e/with-cluster.sh cargo bench --bench system -- all --out "$results" "${bench_args[@]}"
step "operator benchmarks: benches/operator.rs (GC, BGP publish/reload, footprint)" \
  bash e2e/with-cluster.sh cargo bench --bench operator -- all --out "$results" "${bench_args[@]}"

python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet 'matplotlib==3.11.2'
step "report: bench/report.py (its tests, then BENCHMARKS.md)" \
  bash -c 'out=$(python3 -m unittest discover -s bench -p "test_*.py" 2>&1) || { echo "$out"; exit 1; }; python3 bench/report.py'

echo "== wall time per step" >&2
printf '  %s\n' "${times[@]}" >&2
echo "  total: $((SECONDS / 60)) min $((SECONDS % 60)) s" >&2
if ((${#failed[@]})); then
  echo "make bench: failed: ${failed[*]} (BENCHMARKS.md shows their targets as not measured)" >&2
  exit 1
fi
