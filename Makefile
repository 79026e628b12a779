# Thin wrapper around Meson/ninja.  Every target first makes sure the Debian
# build dependencies are present (scripts/deps.sh installs them as root, or
# prints the exact apt-get command otherwise).
#
#   make          release build in build/
#   make check    ASan+UBSan build with expensive audits in build-check/, all tests
#   make demo     release build, then the headline demo on built-in defaults
#   make bench    release build, then the benchmarks (table + build/bench.json)
#   make fuzz     longer fuzz run of the stream reader (later issue)

BUILD       ?= build
CHECK_BUILD ?= build-check
WERROR      ?= true
MESON_OPTS  ?=

.PHONY: all deps check demo bench clean

all: $(BUILD)/build.ninja
	ninja -C $(BUILD)

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

demo: all
	bash scripts/demo.sh $(BUILD)

bench: all
	bash scripts/bench.sh $(BUILD)

clean:
	rm -rf $(BUILD) $(CHECK_BUILD)
