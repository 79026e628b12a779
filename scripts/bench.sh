#!/usr/bin/env bash
# Run the benchmarks: a table on stdout and every figure in build/bench.json.
set -euo pipefail
build=${1:-build}
"$build/bench/hugevm-bench" --json "$build/bench.json" "${@:2}"
echo "figures written to $build/bench.json"
