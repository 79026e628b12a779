#!/usr/bin/env bash
# make bench-peers: hugevm and QEMU 7.2 side by side on the same 2 GiB of
# guest RAM (migrate over loopback, one channel and multifd; save; restore),
# a table on stdout and peer_qemu_* figures merged into BUILD/bench.json.
# QEMU comes from Debian's qemu-system-x86: installed here as root when
# missing, else the exact command is printed and this exits 1.
# scripts/bench_peers.py does the work (and says what it measures);
# BENCH_PEERS_RUNS (default 3), BENCH_PEERS_MIB (default 2048),
# BENCH_PEERS_CONTENT (random,zero90), BENCH_PEERS_DIR (default /dev/shm:
# content and saved files, about 2 GiB each), BENCH_PEERS_HUGEVM_DOWNTIME
# (hugevm migrate --downtime; default its own 20 ms) and
# BENCH_PEERS_QEMU_TOUCH=0 (QEMU's prealloc as shipped) tune it.
set -euo pipefail
build=${1:-build}
if ! command -v "${BENCH_PEERS_QEMU:-qemu-system-x86_64}" >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "bench-peers: installing qemu-system-x86"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends qemu-system-x86
  else
    echo "bench-peers: QEMU is missing; run:  sudo apt-get update && sudo apt-get install -y qemu-system-x86" >&2
    exit 1
  fi
fi
[ -x "$build/tools/hugevm" ] || { echo "bench-peers: $build/tools/hugevm not built (make)" >&2; exit 1; }
exec python3 "$(dirname "$0")/bench_peers.py" "$build"
