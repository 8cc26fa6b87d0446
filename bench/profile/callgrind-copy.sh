#!/bin/sh
# Instruction counts of one warm, unlimited loopback copy, sender and receiver each under
# valgrind --tool=callgrind (counts instructions, so a noisy shared machine does not change
# the figures). Usage: bench/profile/callgrind-copy.sh VDREP_BIN IMAGE OUTDIR [send flags...]
# Writes OUTDIR/send.out, OUTDIR/recv.out (callgrind) and OUTDIR/send.json.
set -eu
# shellcheck source=copy-common.sh
. "$(dirname "$0")/copy-common.sh"
shift 3
valgrind --tool=callgrind --callgrind-out-file="$out/recv.out" \
  "$bin" receive --listen 127.0.0.1:$port --store "$work/store" --tls "$work/certs" \
  --allow prof=vm >"$work/recv.stdout" 2>"$out/recv.log" &
rpid=$!
wait_listening
valgrind --tool=callgrind --callgrind-out-file="$out/send.out" \
  "$bin" send --to 127.0.0.1:$port --tls "$work/certs" --identity prof --state "$work/state" --vm vm \
  --json --no-progress --give-up-after 10m "$@" "$img" >"$out/send.json" 2>"$out/send.log"
kill -TERM $rpid; wait $rpid || true
grep -h "Collected" "$out/send.log" "$out/recv.log" || true
