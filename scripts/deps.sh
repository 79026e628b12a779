#!/usr/bin/env bash
# Install (or name) the Debian packages hugevm needs to build and test.
# Root: installs what is missing with apt-get.  Otherwise: prints the exact
# command and exits 1.  Idempotent and quiet when everything is present.
set -eu
pkgs=(meson ninja-build pkg-config gcc clang libclang-rt-14-dev
      libcmocka-dev libzstd-dev libxxhash-dev libssl-dev openssl iproute2
      g++ groff-base man-db)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "deps: missing packages: ${missing[*]}" >&2
  echo "deps: run:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
