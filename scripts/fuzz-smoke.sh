#!/usr/bin/env bash
# A short run of every cargo-fuzz target, for CI. The long runs (10 minutes
# and more each) are recorded in docs/reliability.md.
#
#   scripts/fuzz-smoke.sh            # 60 s per target
#   FUZZ_SECS=600 scripts/fuzz-smoke.sh
#
# Seeds: the kept regressions (fuzz/regressions/TARGET) and, for `config`,
# the shipped configs. New corpus entries go to a temporary directory, so a
# run leaves the tree clean. A crash fails the script; libFuzzer prints the
# input, which then belongs in fuzz/regressions/TARGET (run by
# tests/fuzz_regressions.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${FUZZ_SECS:-60}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz-smoke: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

# libFuzzer's sanitizer flags are nightly options; the stable toolchain
# accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd fuzz
for target in config frame; do
  mkdir -p "$work/$target"
  seeds=("regressions/$target")
  [[ "$target" == config ]] && seeds+=("../config")
  echo "== fuzz $target, ${SECS} s"
  log="$work/$target.log"
  if ! cargo fuzz run "$target" "$work/$target" "${seeds[@]}" -- \
    -max_total_time="$SECS" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 80 "$log" >&2
    echo "fuzz-smoke: $target failed (crash input and stack above)" >&2
    exit 1
  fi
  grep -E '^Done|stat::number_of_executed_units' "$log"
done
