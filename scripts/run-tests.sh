#!/usr/bin/env bash
# Run every cmocka test binary of a build directory with TAP output, show
# failures and skips with their reasons, and end with the line
# "N passed, N failed, N skipped" (counts of test cases).  A binary that
# crashes or exits non-zero without a failing case counts as one failure.
set -u
build=${1:-build-check}
export CMOCKA_MESSAGE_OUTPUT=TAP
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# As root, the KVM backend's huge-page test may switch shmem THP to
# "advise" for its duration (it puts the setting back); set it to 0 to keep
# the host's setting untouched (the test then reports SKIP with the reason).
if [ "$(id -u)" = 0 ]; then export HUGEVM_KVM_THP=${HUGEVM_KVM_THP:-1}; fi
pass=0 fail=0 skip=0
logdir="$build/test-logs"
mkdir -p "$logdir"
shopt -s nullglob
for t in "$build"/tests/test_*; do
  [ -x "$t" ] && [ -f "$t" ] || continue
  name=$(basename "$t")
  start=$(date +%s)
  "$t" >"$logdir/$name.log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  # cmocka 1.1 reports a skipped case as "not ok N # SKIP name".
  s=$(grep -Eic '^(not )?ok [0-9]+ *# *skip' "$logdir/$name.log" | tr -d ' ')
  p=$(grep -E '^ok [0-9]+' "$logdir/$name.log" | grep -Eicv '# *skip' | tr -d ' ')
  f=$(grep -E '^not ok [0-9]+' "$logdir/$name.log" | grep -Eicv '# *skip' | tr -d ' ')
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    f=1
    echo "FAIL $name: exited with status $rc without a failing case (crash or sanitizer report):"
    tail -n 30 "$logdir/$name.log" | sed 's/^/    /'
  fi
  printf '%-22s %4d passed %3d failed %3d skipped  (%ss)\n' "$name" "$p" "$f" "$s" "$secs"
  grep -E '^not ok|^# *(ERROR|FAIL|error|.*Failure)' "$logdir/$name.log" | grep -iv '# *skip' | sed 's/^/    /' | head -n 40
  # the reason a skipped case printed just before its result line
  grep -Ei -B1 '^(not )?ok [0-9]+ *# *skip' "$logdir/$name.log" | grep -E '^# ' | sed 's/^# */    SKIP: /' | head -n 20
  pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
done
# Bounded fuzz runs of the stream reader and of the migration wire
# protocol count as one test case each (HUGEVM_FUZZ_SECONDS=0 skips them;
# the wire fuzzer gets two thirds of the stream fuzzer's time).
fuzz_secs=${HUGEVM_FUZZ_SECONDS:-30}
if [ "$fuzz_secs" -gt 0 ] && [ -f scripts/fuzz.sh ]; then
  for target in fuzz_stream fuzz_wire; do
    secs=$fuzz_secs
    [ "$target" = fuzz_wire ] && secs=$(( (fuzz_secs * 2 + 2) / 3 ))
    start=$(date +%s)
    line=$(bash scripts/fuzz.sh "$secs" "$target" 2>&1 | tail -n 12)
    echo "$line" | sed 's/^/    /'
    if echo "$line" | grep -q "^ok - $target"; then pass=$((pass + 1)); p=1 f=0; else fail=$((fail + 1)); p=0 f=1; fi
    printf '%-22s %4d passed %3d failed %3d skipped  (%ss)\n' "$target" "$p" "$f" 0 "$(( $(date +%s) - start ))"
  done
fi
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
