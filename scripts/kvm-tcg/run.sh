#!/bin/bash
# scripts/kvm-tcg/run.sh -- run a command inside a QEMU/TCG guest that has
# /dev/kvm (`make check-kvm` runs the kvm tests this way on hosts without a
# usable /dev/kvm, such as a PVM guest).
#
# The host has no /dev/kvm.  This boots Debian's stock kernel under QEMU TCG
# with an emulated AMD SVM CPU, loads kvm + kvm_amd, mounts the host's / read-only
# over virtio-9p, chroots into it and runs the command at the same cwd with the
# same environment.  The command's stdout+stderr are streamed to our stdout; our
# exit status is the command's.
#
# usage: run.sh [-w DIR]... [-v] [--] COMMAND [ARGS...]
#   -w DIR   also make host directory DIR writable inside the guest (repeatable)
#   -v       show the guest's kernel/init console on stderr (default: saved to
#            $KVMTCG_CACHE/last-console.log)
#   -n       no TSS shim: by default the command runs with LD_PRELOAD=tss-shim.so
#            (and ASAN_OPTIONS+=verify_asan_link_order=0), which turns TR type 11
#            (busy TSS) into 9 in KVM_SET_SREGS, working around QEMU TCG's I/O
#            bitmap check that #GPs on a busy TR (see tss-shim.c).  Statically
#            linked programs are not affected by the shim.
# env: KVMTCG_MEM (default 2G), KVMTCG_CPU (default max), KVMTCG_CACHE
#      (default directory of this script + /cache), KVMTCG_TIMEOUT (seconds, default 3600)
# Inside the guest / is the host's / (virtio-9p, read-only) under a tmpfs overlay:
# everything is writable but writes vanish at the end, except in -w dirs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${KVMTCG_CACHE:-$here/../../build-kvm-tcg}
mem=${KVMTCG_MEM:-2G}
cpu=${KVMTCG_CPU:-max}
timeout=${KVMTCG_TIMEOUT:-3600}
verbose=0
shim=1
rw=()
while [ $# -gt 0 ]; do
	case $1 in
	-w) rw+=("$(realpath "$2")"); shift 2 ;;
	-v) verbose=1; shift ;;
	-n) shim=0; shift ;;
	--) shift; break ;;
	-*) echo "unknown option $1" >&2; exit 2 ;;
	*) break ;;
	esac
done
[ $# -gt 0 ] || { sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

need() { command -v "$1" >/dev/null || { echo "missing $1 (apt-get install $2)" >&2; exit 1; }; }
need qemu-system-x86_64 qemu-system-x86
need busybox busybox-static
need depmod kmod


# --- kernel + initramfs, built once into $cache ------------------------------
mkdir -p "$cache"
if [ ! -f "$cache/initrd.img" ] || [ ! -f "$cache/vmlinuz" ] || [ "$here/init" -nt "$cache/initrd.img" ]; then
	(
	set -e
	cd "$cache"
	if ! ls kimg/boot/vmlinuz-* >/dev/null 2>&1; then
		kpkg=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -1)
		echo "fetching $kpkg" >&2
		rm -rf kimg dl && mkdir dl && (cd dl && apt-get download "$kpkg" >/dev/null 2>&1) && dpkg-deb -x dl/*.deb kimg && rm -rf dl
	fi
	kver=$(basename kimg/lib/modules/*)
	cp kimg/boot/vmlinuz-"$kver" vmlinuz
	depmod -b kimg "$kver"
	rm -rf root && mkdir -p root/bin root/mods root/proc root/sys root/dev
	cp "$(command -v busybox)" root/bin/busybox
	cp "$here/init" root/init
	: > root/modules.order
	for m in virtio_pci 9pnet_virtio 9p overlay kvm_amd; do
		modprobe -d kimg -S "$kver" --show-depends "$m" | awk '$1=="insmod"{print $2}'
	done | awk '!seen[$0]++' | while read -r f; do
		cp "$f" root/mods/ && basename "$f" >> root/modules.order
	done
	(cd root && find . | busybox cpio -o -H newc 2>/dev/null) | gzip -1 > initrd.img.new
	mv initrd.img.new initrd.img
	rm -rf root
	) || { echo "failed to build kernel/initramfs in $cache" >&2; exit 1; }
fi

shim_so=$cache/tss-shim.so
if [ $shim = 1 ] && { [ ! -f "$shim_so" ] || [ "$here/tss-shim.c" -nt "$shim_so" ]; }; then
	gcc -O2 -shared -fPIC -Wall -o "$shim_so" "$here/tss-shim.c" -ldl
fi

# --- per-run share ------------------------------------------------------------
out=$(mktemp -d /tmp/kvmtcg.XXXXXX)
qpid=
cleanup() { [ -n "$qpid" ] && kill "$qpid" 2>/dev/null; rm -rf "$out"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
echo "$out" > "$out/outpath"
{
	echo '#!/bin/bash'
	while IFS= read -r -d '' kv; do
		k=${kv%%=*}
		case $k in PWD|OLDPWD|SHLVL|_|BASH_*|*[!A-Za-z0-9_]*|'') continue ;; esac
		printf 'export %s=%q\n' "$k" "${kv#*=}"
	done < /proc/self/environ
	if [ $shim = 1 ]; then
		printf 'export LD_PRELOAD=%q${LD_PRELOAD:+:$LD_PRELOAD}\n' "$shim_so"
		echo 'export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0'
	fi
	printf 'cd %q || exit 125\n' "$PWD"
	printf 'exec'; printf ' %q' "$@"; printf '\n'
} > "$out/cmd.sh"

virtfs=(-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
	-virtfs "local,path=$out,mount_tag=outdir,security_model=none")
i=0
for d in ${rw[@]+"${rw[@]}"}; do
	echo "$d" > "$out/rw$i.path"
	virtfs+=(-virtfs "local,path=$d,mount_tag=rw$i,security_model=none,multidevs=remap")
	i=$((i+1))
done

console=$cache/last-console.log
if [ $verbose = 1 ]; then contarget=(-chardev file,id=con,path=/dev/stderr,append=on); else contarget=(-chardev file,id=con,path=$console); fi

# ttyS0 = kernel console + init log; ttyS1 = command output (to our stdout)
timeout -s KILL "$timeout" qemu-system-x86_64 -accel tcg -cpu "$cpu" -smp 1 -m "$mem" -machine q35 \
	-display none -monitor none -no-reboot -nodefaults \
	-kernel "$cache/vmlinuz" -initrd "$cache/initrd.img" \
	-append "console=ttyS0 rdinit=/init panic=-1 loglevel=4 mitigations=off tsc=reliable" \
	"${contarget[@]}" -serial chardev:con \
	-chardev stdio,id=cmdout,signal=off -serial chardev:cmdout \
	"${virtfs[@]}" </dev/null 2>"$out/qemu.err" &
qpid=$!
wait "$qpid" || true
qpid=
if [ ! -f "$out/status" ]; then
	echo "run-in-tcg-kvm: guest did not report an exit status (timeout or crash); console log: $console" >&2
	[ -s "$out/qemu.err" ] && cat "$out/qemu.err" >&2
	exit 124
fi
exit "$(cat "$out/status")"
