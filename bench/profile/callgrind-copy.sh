#!/bin/sh
# Instruction counts of one warm, unlimited loopback copy, sender and receiver each under
# valgrind --tool=callgrind (counts instructions, so a noisy shared machine does not change
# the figures). Usage: bench/profile/callgrind-copy.sh VDREP_BIN IMAGE OUTDIR [send flags...]
# Writes OUTDIR/send.out, OUTDIR/recv.out (callgrind) and OUTDIR/send.json.
set -eu
bin=$(realpath "$1"); img=$(realpath "$2"); out=$3; shift 3
mkdir -p "$out"; out=$(realpath "$out")
work=$(mktemp -d)
trap 'kill $rpid 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin" certs init "$work/certs" --sender prof --host 127.0.0.1 >/dev/null
port=$((20000 + $$ % 20000))
# Warm: one untimed read first.
cat "$img" >/dev/null
valgrind --tool=callgrind --callgrind-out-file="$out/recv.out" \
  "$bin" receive --listen 127.0.0.1:$port --store "$work/store" --tls "$work/certs" \
  --allow prof=vm >"$work/recv.stdout" 2>"$out/recv.log" &
rpid=$!
i=0
until grep -q "listening on" "$work/recv.stdout" 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 600 ] || { echo "receiver did not start" >&2; exit 1; }; sleep 0.1
done
valgrind --tool=callgrind --callgrind-out-file="$out/send.out" \
  "$bin" send --to 127.0.0.1:$port --tls "$work/certs" --identity prof --state "$work/state" --vm vm \
  --json --no-progress --give-up-after 10m "$@" "$img" >"$out/send.json" 2>"$out/send.log"
kill -TERM $rpid; wait $rpid || true
grep -h "Collected" "$out/send.log" "$out/recv.log" || true
