#!/usr/bin/env bash
# Builds the cargo-fuzz targets and runs each for SECONDS (default 20), seeded from the
# committed corpus (fuzz/corpus/<target>/seed-*); inputs found on the way stay there, untracked.
# A crash, panic or failed assertion fails the run; its input is in fuzz/artifacts/<target>/.
#   bash fuzz/run.sh [SECONDS] [TARGET...]
# FUZZ_SANITIZER (default none: no ASan, fastest to build; the targets are safe Rust and look for
# panics and broken properties), FUZZ_JOBS (libFuzzer -fork=N processes per target; unset: one).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(selector annotations cidr_block)
san=${FUZZ_SANITIZER:-none}
tdir=${FUZZ_TARGET_DIR:-$PWD/../target/fuzz}
# cargo-fuzz needs nightly-only rustc flags; the stable toolchain accepts them with
# RUSTC_BOOTSTRAP=1 (measured to build as fast as nightly), so CI needs no second toolchain.
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
  cargo=(cargo "+$FUZZ_TOOLCHAIN")
else
  cargo=(env RUSTC_BOOTSTRAP=1 cargo)
fi
unset CARGO_TARGET_DIR
start=$(date +%s)
"${cargo[@]}" fuzz build -s "$san" --target-dir "$tdir"
echo "fuzz: built in $(( $(date +%s) - start )) s"
rc=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "fuzz: $t for ${secs}s"
  if ! "${cargo[@]}" fuzz run -s "$san" --target-dir "$tdir" "$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 ${FUZZ_JOBS:+-fork=$FUZZ_JOBS} \
      -print_final_stats=1 2>"/tmp/tortie-fuzz-$t.log"; then
    grep -E "panicked|ERROR|SUMMARY|Test unit written|assert" "/tmp/tortie-fuzz-$t.log" | head -20 || tail -30 "/tmp/tortie-fuzz-$t.log"
    echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/, log /tmp/tortie-fuzz-$t.log)"
    rc=1
  else
    grep -E "stat::number_of_executed_units|stat::new_units_added" "/tmp/tortie-fuzz-$t.log" | tr '\n' ' '
    echo
  fi
done
echo "fuzz: done in $(( $(date +%s) - start )) s, $([ $rc = 0 ] && echo 'no failures' || echo FAILED)"
exit $rc
