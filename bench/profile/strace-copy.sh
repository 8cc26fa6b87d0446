#!/bin/sh
# Syscall counts (not times: counts do not depend on the machine's load) of one warm,
# unlimited loopback copy, sender and receiver each under `strace -c -f`.
# Usage: bench/profile/strace-copy.sh VDREP_BIN IMAGE OUTDIR [send flags...]
set -eu
bin=$(realpath "$1"); img=$(realpath "$2"); out=$3; shift 3
mkdir -p "$out"; out=$(realpath "$out")
work=$(mktemp -d)
trap 'kill $rpid 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin" certs init "$work/certs" --sender prof --host 127.0.0.1 >/dev/null
port=$((20000 + $$ % 20000))
cat "$img" >/dev/null
strace -c -f -o "$out/recv.strace" "$bin" receive --listen 127.0.0.1:$port \
  --store "$work/store" --tls "$work/certs" --allow prof=vm >"$work/recv.stdout" 2>"$out/recv.log" &
rpid=$!
i=0
until grep -q "listening on" "$work/recv.stdout" 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 600 ] || { echo "receiver did not start" >&2; exit 1; }; sleep 0.1
done
strace -c -f -o "$out/send.strace" "$bin" send --to 127.0.0.1:$port --tls "$work/certs" \
  --identity prof --state "$work/state" --vm vm --json --no-progress "$@" "$img" >"$out/send.json" 2>"$out/send.log"
# strace does not pass SIGTERM on: stop the traced receiver itself.
for c in $(cat /proc/$rpid/task/$rpid/children); do kill -TERM "$c"; done
wait $rpid || true
