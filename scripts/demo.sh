#!/usr/bin/env bash
# The demo on built-in defaults: what the host offers, an 8 GiB guest on a
# clean host, the same guest on a host whose memory other domains have
# fragmented (both allocator policies), and the fragmentation scenario.
set -euo pipefail
build=${1:-build}
hv="$build/tools/hugevm"
say() { printf '\n=== %s\n' "$*"; }
say "hugevm info"
"$hv" info
say "8 GiB guest on an unfragmented 12 GiB host"
"$hv" populate --guest-mem 8G --host-mem 12G
say "8 GiB guest after other domains hold 30% of a 12 GiB host in 4K pieces (fragpool policy)"
"$hv" populate --guest-mem 8G --host-mem 12G --fragment 0.3 --policy fragpool
say "the same with the plain buddy policy"
"$hv" populate --guest-mem 8G --host-mem 12G --fragment 0.3 --policy buddy
say "fragmentation scenario: superpages left allocatable under the same churn"
"$hv" fragment --host-mem 16G --target 0.3
