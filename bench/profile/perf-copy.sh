#!/bin/sh
# Native profile of one warm, unlimited loopback copy, sender and receiver each under
# `perf record` with the software event `cpu-clock` (this VM has no hardware counters, but
# clock sampling works and, unlike callgrind, sees the kernel and the real AVX-512/VAES
# code paths). Usage: bench/profile/perf-copy.sh VDREP_BIN IMAGE OUTDIR [send flags...]
# Writes OUTDIR/send.data, OUTDIR/recv.data (perf report -i ... --children --sort sym)
# and OUTDIR/send.json. PERF_ARGS replaces the sampling options, e.g.
# PERF_ARGS="-e page-faults -c 4 --call-graph dwarf,4096" to see where pages are faulted.
set -eu
# shellcheck source=copy-common.sh
. "$(dirname "$0")/copy-common.sh"
shift 3
args=${PERF_ARGS:-"-e cpu-clock -F 1999 --call-graph dwarf,8192"}
# shellcheck disable=SC2086
perf record -q $args -o "$out/recv.data" -- "$bin" receive --listen 127.0.0.1:$port \
  --store "$work/store" --tls "$work/certs" --allow prof=vm >"$work/recv.stdout" 2>"$out/recv.log" &
rpid=$!
wait_listening
# shellcheck disable=SC2086
perf record -q $args -o "$out/send.data" -- "$bin" send --to 127.0.0.1:$port --tls "$work/certs" \
  --identity prof --state "$work/state" --vm vm --json --no-progress "$@" "$img" >"$out/send.json" 2>"$out/send.log"
# perf passes SIGINT on to the receiver it runs.
for c in $(cat /proc/$rpid/task/$rpid/children); do kill -INT "$c"; done
wait $rpid || true
