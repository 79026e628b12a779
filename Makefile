# Thin wrapper around Meson/ninja.  Every target first makes sure the Debian
# build dependencies are present (scripts/deps.sh installs them as root, or
# prints the exact apt-get command otherwise).
#
#   make          release build in build/
#   make check    ASan+UBSan build with expensive audits in build-check/, all tests
#   make demo     release build, then the headline demo on built-in defaults
#   make bench    release build, then the benchmarks (table + build/bench.json)
#   make bench-peers  release build, then hugevm against QEMU 7.2 on the same
#                 2 GiB (migrate, multifd, save, restore; peer_qemu_* merged
#                 into build/bench.json); installs qemu-system-x86 as root,
#                 else prints the command; not part of check
#   make stress   the check suite with randomised tests scaled up (HUGEVM_STRESS)
#   make fuzz     longer fuzz run of the stream reader (FUZZ_SECONDS, default 600)
#   make check-kvm  the kvm tests inside a QEMU TCG guest that has /dev/kvm
#                 (for hosts without a usable /dev/kvm; slow, not in check)
#   make install  the release build into $(DESTDIR)$(PREFIX): hugevm, libhugevm
#                 (shared and static), hugevm.h, hugevm.pc, man pages, completion

BUILD       ?= build
CHECK_BUILD ?= build-check
WERROR      ?= true
MESON_OPTS  ?=
PREFIX      ?= /usr/local
DESTDIR     ?=

.PHONY: all deps check check-kvm stress demo bench bench-peers fuzz install clean

all: $(BUILD)/build.ninja
	ninja -C $(BUILD)

# meson install with the prefix given here (the build keeps it for next time)
install: $(BUILD)/build.ninja
	meson configure $(BUILD) -Dprefix=$(PREFIX)
	ninja -C $(BUILD)
	meson install -C $(BUILD) --no-rebuild $(if $(DESTDIR),--destdir $(abspath $(DESTDIR)))

deps:
	@bash scripts/deps.sh

$(BUILD)/build.ninja: | deps
	meson setup $(BUILD) --buildtype=release -Dwerror=$(WERROR) $(MESON_OPTS)

$(CHECK_BUILD)/build.ninja: | deps
	meson setup $(CHECK_BUILD) --buildtype=debug -Db_sanitize=address,undefined \
	  -Db_lundef=false -Daudit=true -Dwerror=$(WERROR) $(MESON_OPTS)

check: deps $(CHECK_BUILD)/build.ninja
	ninja -C $(CHECK_BUILD)
	bash scripts/run-tests.sh $(CHECK_BUILD)

# The kvm backend's tests under real KVM: here when /dev/kvm works, else in
# a QEMU TCG guest (emulated AMD SVM) booting Debian's kernel, with the host
# filesystem shared (scripts/kvm-tcg/run.sh; needs root for its packages).
check-kvm: deps $(CHECK_BUILD)/build.ninja
	ninja -C $(CHECK_BUILD)
	bash scripts/kvm-tcg/check.sh $(CHECK_BUILD)

# The same suite with every randomised test scaled up (HUGEVM_STRESS=N).
stress: deps $(CHECK_BUILD)/build.ninja
	ninja -C $(CHECK_BUILD)
	HUGEVM_STRESS=$${HUGEVM_STRESS:-20} bash scripts/run-tests.sh $(CHECK_BUILD)

demo: all
	bash scripts/demo.sh $(BUILD)

bench: all
	bash scripts/bench.sh $(BUILD)

bench-peers: all
	bash scripts/bench-peers.sh $(BUILD)

FUZZ_SECONDS ?= 600
fuzz: deps
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD) $(CHECK_BUILD) build-kvm-tcg
