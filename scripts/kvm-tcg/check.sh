#!/usr/bin/env bash
# The tests that need /dev/kvm, under real KVM: directly when this host's
# /dev/kvm runs guests, else inside a QEMU TCG guest (run.sh).  Installs
# qemu-system-x86, busybox-static and kmod as root when missing (or prints
# the command).  Ends with the usual "N passed, N failed" line.
set -u
build=${1:-build-check}
cd "$(dirname "$0")/../.."
abs=$(cd "$build" && pwd)
pkgs=(qemu-system-x86 busybox-static kmod)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "check-kvm: run: sudo apt-get install -y ${missing[*]}"; exit 1
  fi
fi
tests=(test_guest test_kvm)
export HUGEVM_HELLO_ELF=$abs/guest/hello-guest.elf HUGEVM_MEMCALLS_ELF=$abs/tests/memcalls-guest.elf HUGEVM_FPU_ELF=$abs/tests/fpu-guest.elf
export CMOCKA_MESSAGE_OUTPUT=TAP
# as root, the host-superpage test switches shmem THP to advise and back
if [ "$(id -u)" = 0 ]; then export HUGEVM_KVM_THP=${HUGEVM_KVM_THP:-1}; fi
pass=0 fail=0 skip=0
for t in "${tests[@]}"; do
  log=$abs/test-logs/$t.kvm.log
  mkdir -p "$abs/test-logs"
  if "$abs/tools/hugevm" info --json 2>/dev/null | grep -q '"kvm": true'; then where=host; else where=tcg; fi
  echo "check-kvm: $t under KVM ($where)"
  if [ "$where" = host ]; then
    (cd "$abs" && "./tests/$t") >"$log" 2>&1
  else
    (cd "$abs" && bash "$OLDPWD/scripts/kvm-tcg/run.sh" "./tests/$t") >"$log" 2>&1
  fi
  p=$(grep -E '^ok [0-9]+' "$log" | grep -Eicv '# *skip' | tr -d ' ')
  f=$(grep -E '^not ok [0-9]+' "$log" | grep -Eicv '# *skip' | tr -d ' ')
  s=$(grep -Eic '^(not )?ok [0-9]+ *# *skip' "$log" | tr -d ' ')
  grep -E '^not ok' "$log" | sed 's/^/    /'
  printf '%-22s %4d passed %3d failed %3d skipped\n' "$t" "$p" "$f" "$s"
  pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
done
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
