#!/usr/bin/env bash
# test_install: install a build into a temporary DESTDIR and use it as a
# VMM developer would, with nothing but the installed tree and pkg-config:
#  - the files are there: binary, libhugevm.so with its soname, libhugevm.a,
#    hugevm.h, hugevm.pc, hugevm(1) and one page per command, libhugevm(3),
#    the bash completion;
#  - the shared library exports the public API and nothing else;
#  - hugevm --version, hugevm_version() and pkg-config agree with the Meson
#    project version;
#  - hugevm.h compiles alone as C11 and as C++ with -Wall -Wextra
#    -Wpedantic -Werror;
#  - the man pages and the completion the installed binary generates from
#    its option tables are byte for byte the installed ones, every command
#    has its page, and groff reads them without a warning;
#  - examples/vmm.c builds with `pkg-config --cflags --libs hugevm` only
#    (shared) and against libhugevm.a, and both run end to end (the guest
#    under KVM where /dev/kvm works, else natively: the output says): the
#    guest paused mid-workload, saved with its vCPUs, restored, resumed,
#    run to its end and replayed by the host.
# Output is TAP, one case per line, for scripts/run-tests.sh.
#
# usage: test_install.sh BUILD_DIR SOURCE_DIR
set -u
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
n=0 failed=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/hugevm-install-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dest=$tmp/dest

ok() { n=$((n + 1)); echo "ok $n - $1"; }
notok() {
  n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"
  [ -s "$tmp/err" ] && sed 's/^/# /' "$tmp/err" | head -n 30
  : >"$tmp/err"
}
skip() { n=$((n + 1)); echo "# $2"; echo "ok $n # SKIP $1"; }
# run NAME COMMAND...: one case, its output kept in $tmp/err on failure
run() {
  local name=$1; shift
  if "$@" >"$tmp/err" 2>&1; then ok "$name"; else notok "$name"; fi
  : >"$tmp/err"
}

opt() { # the value of a Meson option of this build
  meson introspect --buildoptions "$build" |
    python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == sys.argv[1]))' "$1"
}
version=$(meson introspect --projectinfo "$build" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
prefix=$(opt prefix); libdir=$(opt libdir); bindir=$(opt bindir)
incdir=$(opt includedir); mandir=$(opt mandir); datadir=$(opt datadir)
sanitize=$(opt b_sanitize)
case $libdir in /*) ;; *) libdir=$prefix/$libdir ;; esac
case $bindir in /*) ;; *) bindir=$prefix/$bindir ;; esac
case $incdir in /*) ;; *) incdir=$prefix/$incdir ;; esac
case $mandir in /*) ;; *) mandir=$prefix/$mandir ;; esac
case $datadir in /*) ;; *) datadir=$prefix/$datadir ;; esac
echo "1..16"
echo "# build $build (version $version, prefix $prefix, sanitize $sanitize), DESTDIR $dest"

# The check build is instrumented: what links its objects needs the
# sanitizer runtime, and an uninstrumented program that loads the shared
# library cannot load that runtime first (so ASan must not insist).
# ASan's shadow memory also takes the host addresses above 2 GiB - 32K,
# where the native backend maps guest-physical memory: there the example
# runs a 1 GiB guest instead of 2 (the release build runs the 2 GiB one).
san_flags=() vmm_args=()
if [ "$sanitize" != none ]; then
  san_flags=("-fsanitize=$sanitize")
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
  if [ ! -c /dev/kvm ]; then
    vmm_args=(--guest-mib 1024)
    echo "# sanitized build, native backend: the example VMM runs a 1 GiB guest (ASan's shadow takes the addresses of the second GiB)"
  fi
fi

run "meson install into DESTDIR" meson install -C "$build" --destdir "$dest" --no-rebuild --quiet

D=$dest
missing=""
for f in "$bindir/hugevm" "$libdir/libhugevm.so" "$libdir/libhugevm.so.0" \
         "$libdir/libhugevm.so.$version" "$libdir/libhugevm.a" "$incdir/hugevm.h" \
         "$libdir/pkgconfig/hugevm.pc" "$mandir/man1/hugevm.1" "$mandir/man3/libhugevm.3" \
         "$datadir/bash-completion/completions/hugevm"; do
  [ -e "$D$f" ] || missing="$missing $f"
done
if [ -z "$missing" ]; then ok "installed: binary, shared and static library, header, hugevm.pc, man pages, completion"
else echo "missing:$missing" >"$tmp/err"; notok "installed files"; fi

soname=$(readelf -d "$D$libdir/libhugevm.so.$version" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
if [ "$soname" = libhugevm.so.0 ] && [ "$(readlink "$D$libdir/libhugevm.so")" = libhugevm.so.0 ]; then
  ok "soname libhugevm.so.0, libhugevm.so -> libhugevm.so.0"
else echo "soname '$soname', link $(readlink "$D$libdir/libhugevm.so")" >"$tmp/err"; notok "soname"; fi

# exports: every function declared in hugevm.h, and nothing else
nm -D --defined-only "$D$libdir/libhugevm.so.$version" | awk '$2 == "T" {print $3}' |
  sed 's/@.*//' | sort -u >"$tmp/exported"
grep -oE '\bhugevm_[a-z0-9_]+\(' "$D$incdir/hugevm.h" | tr -d '(' | sort -u >"$tmp/declared"
if cmp -s "$tmp/exported" "$tmp/declared" && [ -s "$tmp/declared" ]; then
  ok "libhugevm.so exports exactly the $(wc -l <"$tmp/declared") functions of hugevm.h"
else diff "$tmp/declared" "$tmp/exported" >"$tmp/err"; notok "exported symbols = hugevm.h"; fi

export PKG_CONFIG_SYSROOT_DIR=$D
export PKG_CONFIG_PATH=$D$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export LD_LIBRARY_PATH=$D$libdir
pcv=$(pkg-config --modversion hugevm 2>"$tmp/err")
binv=$("$D$bindir/hugevm" --version 2>>"$tmp/err")
if [ "$pcv" = "$version" ] && [ "$binv" = "hugevm $version" ]; then
  ok "hugevm --version and pkg-config --modversion say $version (meson project version)"
else echo "pkg-config '$pcv', hugevm --version '$binv', meson '$version'" >>"$tmp/err"
  notok "versions agree"; fi

# the header alone, in C11 and C++ (nothing else included first)
printf '#include <hugevm.h>\nint main(void) { return hugevm_version() == 0; }\n' >"$tmp/alone.c"
cp "$tmp/alone.c" "$tmp/alone.cc"
run "hugevm.h compiles alone: cc -std=c11 -Wall -Wextra -Wpedantic -Werror" \
  cc -std=c11 -Wall -Wextra -Wpedantic -Werror -Wstrict-prototypes -Wundef \
  -I"$D$incdir" -c "$tmp/alone.c" -o "$tmp/alone.o"
run "hugevm.h compiles alone: c++ -std=c++11 -Wall -Wextra -Wpedantic -Werror" \
  c++ -std=c++11 -Wall -Wextra -Wpedantic -Werror -I"$D$incdir" -c "$tmp/alone.cc" -o "$tmp/alonecc.o"

# man pages: regenerated by the installed binary from its tables = installed
cmds=$("$D$bindir/hugevm" --help | awk '/^commands:/ {on=1; next} on && /^  [a-z]/ {print $1} on && /^$/ {on=0}')
bad=""
"$D$bindir/hugevm" --man >"$tmp/hugevm.1" && cmp -s "$tmp/hugevm.1" "$D$mandir/man1/hugevm.1" || bad="$bad hugevm.1"
for c in $cmds; do
  page=$D$mandir/man1/hugevm-$c.1
  { [ -f "$page" ] && "$D$bindir/hugevm" --man "$c" | cmp -s - "$page"; } || bad="$bad hugevm-$c.1"
done
if [ -n "$cmds" ] && [ -z "$bad" ]; then ok "man pages: one per command ($(echo $cmds | wc -w)), identical to what the option tables generate"
else echo "differ or missing:$bad (commands: $cmds)" >"$tmp/err"; notok "man pages = tables"; fi

warn=""
for page in "$D$mandir"/man1/hugevm*.1 "$D$mandir/man3/libhugevm.3"; do
  out=$(groff -man -Tutf8 -ww -z "$page" 2>&1)
  [ -z "$out" ] || warn="$warn $(basename "$page"): $out"
done
if [ -z "$warn" ]; then ok "groff reads every page without a warning"
else echo "$warn" >"$tmp/err"; notok "groff warnings"; fi
if MANPATH=$D$mandir man -w hugevm-migrate >/dev/null 2>&1 && MANPATH=$D$mandir man -w 3 libhugevm >/dev/null 2>&1; then
  ok "man finds hugevm-migrate(1) and libhugevm(3) in the installed tree"
else notok "man -w"; fi

# completion: the same as the tables generate, valid bash, and it completes
comp=$D$datadir/bash-completion/completions/hugevm
if "$D$bindir/hugevm" --completion | cmp -s - "$comp" && bash -n "$comp"; then
  ok "bash completion identical to what the option tables generate, valid bash"
else notok "completion = tables"; fi
got=$(bash -c 'source "$1"; COMP_WORDS=(hugevm mig); COMP_CWORD=1; _hugevm; echo "${COMPREPLY[*]}";
               COMP_WORDS=(hugevm migrate --psk); COMP_CWORD=2; _hugevm; echo "${COMPREPLY[*]}"' _ "$comp")
if [ "$got" = "$(printf 'migrate\n--psk-file')" ]; then ok "completion: 'hugevm mig' -> migrate, 'migrate --psk' -> --psk-file"
else echo "got: $got" >"$tmp/err"; notok "completion completes"; fi

# the example VMM with pkg-config only
cflags=$(pkg-config --cflags hugevm) && libs=$(pkg-config --libs hugevm)
echo "# pkg-config --cflags --libs hugevm: $cflags $libs"
run "examples/vmm.c builds with pkg-config --cflags --libs hugevm only (shared)" \
  cc -std=c11 -Wall -Wextra -Wpedantic -Werror -o "$tmp/vmm" "$src/examples/vmm.c" $cflags $libs
if readelf -d "$tmp/vmm" 2>/dev/null | grep -q 'NEEDED.*\[libhugevm.so.0\]'; then
  ok "the example links libhugevm.so.0"
else notok "the example links libhugevm.so.0"; fi
if [ -x "$tmp/vmm" ] && "$tmp/vmm" "${vmm_args[@]}" "$tmp/vmm.hvs" >"$tmp/out" 2>&1 &&
   grep -q 'every check held' "$tmp/out" && [ "$(head -n 1 "$tmp/out")" = "libhugevm $version" ] &&
   grep -Eq 'paused in the middle of its workload +ok' "$tmp/out" &&
   grep -Eq 'resumed guest ran on to its end +ok' "$tmp/out" &&
   grep -Eq "host's replay matches every word of guest memory +ok" "$tmp/out"; then
  sed -n 's/^\(backend: .*\)/# \1/p' "$tmp/out"
  ok "the example VMM runs end to end (save mid-workload, restore, resume, verify); hugevm_version() says $version"
else cp "$tmp/out" "$tmp/err" 2>/dev/null; notok "the example VMM runs"; fi

# the static library: the same example, libhugevm.a and its private deps
slibs=$(pkg-config --static --libs hugevm | sed 's/-lhugevm\b//')
if cc -std=c11 -o "$tmp/vmm-static" "$src/examples/vmm.c" $cflags "$D$libdir/libhugevm.a" \
     $slibs "${san_flags[@]}" >"$tmp/err" 2>&1 &&
   ! readelf -d "$tmp/vmm-static" | grep -q 'libhugevm' &&
   "$tmp/vmm-static" "${vmm_args[@]}" >"$tmp/out" 2>&1 && grep -q 'every check held' "$tmp/out"; then
  ok "the example links libhugevm.a (pkg-config --static) and runs"
else cat "$tmp/out" >>"$tmp/err" 2>/dev/null; notok "static example"; fi

[ "$failed" -eq 0 ]
