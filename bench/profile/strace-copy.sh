#!/bin/sh
# Syscall counts (not times: counts do not depend on the machine's load) of one warm,
# unlimited loopback copy, sender and receiver each under `strace -c -f`.
# Usage: bench/profile/strace-copy.sh VDREP_BIN IMAGE OUTDIR [send flags...]
set -eu
# shellcheck source=copy-common.sh
. "$(dirname "$0")/copy-common.sh"
shift 3
strace -c -f -o "$out/recv.strace" "$bin" receive --listen 127.0.0.1:$port \
  --store "$work/store" --tls "$work/certs" --allow prof=vm >"$work/recv.stdout" 2>"$out/recv.log" &
rpid=$!
wait_listening
strace -c -f -o "$out/send.strace" "$bin" send --to 127.0.0.1:$port --tls "$work/certs" \
  --identity prof --state "$work/state" --vm vm --json --no-progress "$@" "$img" >"$out/send.json" 2>"$out/send.log"
# strace does not pass SIGTERM on: stop the traced receiver itself.
for c in $(cat /proc/$rpid/task/$rpid/children); do kill -TERM "$c"; done
wait $rpid || true
