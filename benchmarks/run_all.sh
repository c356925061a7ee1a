#!/usr/bin/env bash
# Reproduces every figure in BENCHMARKS.md: each suite in a fresh process (suites run
# one after another in a single process measured up to 20% slower), with the targets
# asserted; a suite whose target is not met is reported and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
export BIOSCAN_BENCH_STRICT=${BIOSCAN_BENCH_STRICT:-1}
export BIOSCAN_BENCH_ROWS=${BIOSCAN_BENCH_ROWS:-5150850}
failed=()
for suite in benchmarks/test_bench_*.py; do
    echo "== $suite"
    python -m pytest "$suite" -s -q -p no:cacheprovider --benchmark-columns=min,median,rounds "$@" || failed+=("$suite")
done
if ((${#failed[@]})); then
    echo "targets not met in: ${failed[*]}"
    exit 1
fi
