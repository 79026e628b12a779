#!/usr/bin/env bash
# Build the stream fuzzer with clang (libFuzzer + ASan + UBSan) in
# build-fuzz/, generate the seed corpus of valid streams, and fuzz for
# SECONDS (default 30).  Exit status 0 when nothing was found.
#
#   scripts/fuzz.sh [SECONDS]      (make check runs it with 30, make fuzz with 600)
#
# Prints one TAP-like line, "ok - fuzz_stream ..." or "not ok - ...", last.
set -u
cd "$(dirname "$0")/.."
secs=${1:-30}
out=${FUZZ_BUILD:-build-fuzz}
mkdir -p "$out/corpus" "$out/artifacts"
log="$out/fuzz.log"
cc=${CLANG:-clang}
if ! command -v "$cc" >/dev/null; then
  echo "not ok - fuzz_stream: $cc not found (scripts/deps.sh installs clang)"
  exit 1
fi
flags=(-std=c11 -D_GNU_SOURCE -g -O1 -Isrc -Wall -Wno-unused-parameter)
libs=(-lxxhash -lzstd -lm -lpthread)
# the library's sources, as meson.build lists them
mapfile -t srcs < <(sed -n "/^libhugevm_sources = files(/,/^)/p" meson.build |
                    grep -Eo "'src/[^']+\.c'" | tr -d "'")
[ ${#srcs[@]} -gt 0 ] || srcs=(src/*.c)
if ! "$cc" "${flags[@]}" -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
      "${srcs[@]}" fuzz/fuzz_stream.c "${libs[@]}" -o "$out/fuzz_stream" >"$log" 2>&1 ||
   ! "$cc" "${flags[@]}" -fsanitize=address,undefined \
      "${srcs[@]}" fuzz/gen_seeds.c "${libs[@]}" -o "$out/gen_seeds" >>"$log" 2>&1; then
  echo "not ok - fuzz_stream: build failed (see $log)"
  tail -n 20 "$log" | sed 's/^/    /'
  exit 1
fi
mkdir -p "$out/seeds"
if ! ASAN_OPTIONS=detect_leaks=1 "$out/gen_seeds" "$out/seeds" >>"$log" 2>&1; then
  echo "not ok - fuzz_stream: seed generation failed (see $log)"
  exit 1
fi
cp -f fuzz/seeds/* "$out/seeds/" 2>/dev/null || true
# -rss_limit_mb: machines are lazily committed, ASan shadow is not free.
if UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
   "$out/fuzz_stream" -max_total_time="$secs" -rss_limit_mb=4096 -max_len=1048576 \
     -timeout=20 -artifact_prefix="$out/artifacts/" -print_final_stats=1 \
     "$out/corpus" "$out/seeds" >>"$log" 2>&1; then
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | tail -n1 | grep -Eo '[0-9]+$')
  echo "ok - fuzz_stream: ${runs:-?} inputs in ${secs}s, nothing found"
else
  echo "not ok - fuzz_stream: the fuzzer found a problem (see $log, $out/artifacts/)"
  grep -E 'ERROR|SUMMARY|invariant|runtime error' "$log" | head -n 10 | sed 's/^/    /'
  exit 1
fi
