#!/usr/bin/env bash
# The demo on built-in defaults.  First a real guest (C workload under KVM,
# or natively without it) on host 2M and 4K pages.  Headline: a receiver and a 4 GiB guest
# with a writing workload on this machine; the guest is live-migrated over
# loopback TCP (pre-copy rounds), the memory digests of both sides are
# compared, the report shows the superpages before, during log-dirty and on
# the receiver, and the guest resumes there.  Then, briefly: an 8 GiB guest
# on a clean and on a fragmented host, and the fragmentation scenario.
set -euo pipefail
build=${1:-build}
hv="$build/tools/hugevm"
say() { printf '\n=== %s\n' "$*"; }
tmp=$(mktemp -d)
rpid=
cleanup() {
  if [ -n "$rpid" ] && kill -0 "$rpid" 2>/dev/null; then kill "$rpid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

say "hugevm info"
"$hv" info

# A real guest: the built-in C workload (GUPS) on its own vCPU threads,
# under KVM where /dev/kvm works, else natively; with host 2M pages and
# then host 4K pages (as root, shmem THP is switched for it and put back).
thp=/sys/kernel/mm/transparent_hugepage/shmem_enabled
backend=native
if "$hv" info --json | grep -q '"kvm": true'; then backend=kvm; fi
old_thp=$(sed -n 's/.*\[\(.*\)\].*/\1/p' "$thp" 2>/dev/null || true)
put_thp_back() { if [ -n "$old_thp" ] && [ -w "$thp" ]; then echo "$old_thp" >"$thp" 2>/dev/null || true; fi; }
if [ "$(id -u)" = 0 ] && [ -w "$thp" ] && [ -n "$old_thp" ] && [ "$old_thp" != deny ]; then
  trap 'put_thp_back; cleanup' EXIT
  trap 'exit 130' INT TERM
  say "a real guest ($backend backend): 2 vCPUs doing random read-modify-writes over 2 GiB, host 2M pages (shmem THP advise)"
  echo advise >"$thp"
  "$hv" run --backend "$backend" --workload uniform --guest-mem 2G --vcpus 2 --seconds 3 --no-audit | grep -v '^  \|^domain'
  say "the same guest on host 4K pages (shmem THP never)"
  echo never >"$thp"
  "$hv" run --backend "$backend" --workload uniform --guest-mem 2G --vcpus 2 --seconds 3 --no-audit | grep -v '^  \|^domain'
  put_thp_back
  echo "(shmem THP put back to $old_thp)"
else
  say "a real guest ($backend backend): 2 vCPUs doing random read-modify-writes over 2 GiB (host pages as the host has them: switching needs root)"
  "$hv" run --backend "$backend" --workload uniform --guest-mem 2G --vcpus 2 --seconds 3 --no-audit | grep -v '^  \|^domain'
fi

# The real guest live-migrated: its own speed and (under KVM) KVM's mapping
# counts before, while log-dirty is on, and after on the receiver, which
# replays every vCPU to check nothing was lost.
(umask 077; echo "demo:$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >"$tmp/psk")
say "live migration of the real guest ($backend backend): 2 GiB, 2 vCPUs doing random updates (0.1% writes), over TLS on loopback"
if [ "$backend" = native ]; then
  echo "(no usable /dev/kvm here: the same C guest runs as host code; its writes are logged by userfaultfd write-protect instead of KVM's dirty log)"
fi
rm -f "$tmp/port"
"$hv" receive --listen 127.0.0.1:0 --port-file "$tmp/port" --run 3 --attempts 1 \
  --accept-timeout 30 --psk-file "$tmp/psk" --host-mem 3G --backend "$backend" \
  >"$tmp/receiver.log" 2>&1 &
rpid=$!
for _ in $(seq 600); do [ -s "$tmp/port" ] && break; sleep 0.1; done
[ -s "$tmp/port" ] || { echo "the receiver did not start:"; cat "$tmp/receiver.log"; exit 1; }
status=0
"$hv" migrate --backend "$backend" --to "127.0.0.1:$(cat "$tmp/port")" --guest-mem 2G \
  --host-mem 3G --vcpus 2 --workload uniform --write-frac 0.001 --after 3 \
  --psk-file "$tmp/psk" >"$tmp/sender.log" 2>&1 || status=$?
rstatus=0
wait "$rpid" || rstatus=$?
rpid=
grep -E '^(migration|  pre-copy|  round|  guest writes|  the guest here|  before migration:  |  during log-dirty:  |  memory digest)' "$tmp/sender.log" || cat "$tmp/sender.log"
echo "on the receiver:"
grep -E '^(received|guest resumed|  after|verified)' "$tmp/receiver.log" || cat "$tmp/receiver.log"
if [ "$status" -ne 0 ] || [ "$rstatus" -ne 0 ]; then
  echo "live migration of the real guest FAILED (sender $status, receiver $rstatus)"
  cat "$tmp/sender.log" "$tmp/receiver.log"
  exit 1
fi
rm -f "$tmp/port"

say "live migration over loopback: a 4 GiB guest, 2 vCPUs writing 30000 pages/s each over half of its memory"
echo "(shmem THP is left as the host has it: $(cat /sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null || echo unknown))"
avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)
resident=()
if [ "${avail_kb:-0}" -ge $((12 * 1024 * 1024)) ]; then
  resident=(--resident --host-mem 5G)
else
  echo "(receiver machine committed lazily: resident needs 12 GiB available, the host has $((${avail_kb:-0} / 1024)) MiB)"
fi
# TLS 1.3 with a pre-shared key both sides read (the throw-away 256-bit key above)
echo "(over TLS 1.3, pre-shared key $tmp/psk)"
"$hv" receive --listen 127.0.0.1:0 --port-file "$tmp/port" --run 1 --attempts 1 \
  --accept-timeout 30 --psk-file "$tmp/psk" "${resident[@]}" >"$tmp/receiver.log" 2>&1 &
rpid=$!
for _ in $(seq 600); do [ -s "$tmp/port" ] && break; sleep 0.1; done
[ -s "$tmp/port" ] || { echo "the receiver did not start:"; cat "$tmp/receiver.log"; exit 1; }
status=0
"$hv" migrate --to "127.0.0.1:$(cat "$tmp/port")" --guest-mem 4G --vcpus 2 \
  --write-rate 30000 --wss 0.5 --after 1 --psk-file "$tmp/psk" || status=$?
rstatus=0
wait "$rpid" || rstatus=$?
rpid=
say "the receiver's side"
cat "$tmp/receiver.log"
if [ "$status" -ne 0 ] || [ "$rstatus" -ne 0 ]; then
  echo "live migration FAILED (sender $status, receiver $rstatus)"
  exit 1
fi

say "8 GiB guest on an unfragmented 12 GiB host"
"$hv" populate --guest-mem 8G --host-mem 12G
say "the same after other domains hold 30% of the host in 4K pieces (fragpool, then buddy policy)"
"$hv" populate --guest-mem 8G --host-mem 12G --fragment 0.3 --policy fragpool
"$hv" populate --guest-mem 8G --host-mem 12G --fragment 0.3 --policy buddy
say "fragmentation scenario: superpages left allocatable under the same churn"
"$hv" fragment --host-mem 16G --target 0.3
