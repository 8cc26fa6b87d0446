#!/bin/sh
# Native profile of one warm copy over the replication bench's link: sender and receiver in
# two network namespaces joined by a 1500-MTU veth pair (as `vdrep-bench replicate --shapes
# unlimited` sets up, `bench/src/netns.rs`), each under `perf record -e cpu-clock` like
# perf-copy.sh does on loopback. Loopback allows 16 KiB datagrams (session 10); this link
# carries 1,472-byte ones, so QUIC's per-datagram work shows as it does in the bench.
# Usage: bench/profile/perf-copy-veth.sh VDREP_BIN IMAGE OUTDIR [send flags...]
# Namespaces PREFIX-snd/PREFIX-rcv, PREFIX from VDREP_BENCH_NETNS_PREFIX (default
# vdrep-prof), removed on exit. Writes OUTDIR/send.data, OUTDIR/recv.data (perf report -i ...
# --children --sort sym), OUTDIR/send.json and OUTDIR/{send,recv}.time (/usr/bin/time: CPU-s).
# PERF_ARGS replaces the sampling options; PERF_ARGS=none runs without perf (CPU-s only).
# COLD=1 drops the image from the page cache (POSIX_FADV_DONTNEED, as the bench's
# --source-cache cold) instead of the warm-up read.
# RATE (bits/s, e.g. 100000000) shapes the sender's side with tc tbf as the bench's 100mbit
# shape does (burst rate/800, at least 64 KiB; latency 50 ms); unset: unlimited.
set -eu
bin=$(realpath "$1"); img=$(realpath "$2"); out=$3
shift 3
mkdir -p "$out"; out=$(realpath "$out")
prefix=${VDREP_BENCH_NETNS_PREFIX:-vdrep-prof}
snd=$prefix-snd; rcv=$prefix-rcv
addr=10.231.77.2; port=7400
work=$(mktemp -d)
rpid=
cleanup() {
  [ -z "$rpid" ] || kill "$rpid" 2>/dev/null || true
  ip netns del "$snd" 2>/dev/null || true
  ip netns del "$rcv" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cleanup_ns() { ip netns del "$snd" 2>/dev/null || true; ip netns del "$rcv" 2>/dev/null || true; }
cleanup_ns
ip netns add "$snd"; ip netns add "$rcv"
ip link add vdb-snd netns "$snd" type veth peer name vdb-rcv netns "$rcv"
ip -n "$snd" addr add 10.231.77.1/30 dev vdb-snd
ip -n "$rcv" addr add $addr/30 dev vdb-rcv
for ns in "$snd" "$rcv"; do ip -n "$ns" link set lo up; done
ip -n "$snd" link set vdb-snd up; ip -n "$rcv" link set vdb-rcv up
if [ -n "${RATE:-}" ]; then
  burst=$((RATE / 800)); [ $burst -ge 65536 ] || burst=65536
  ip netns exec "$snd" tc qdisc add dev vdb-snd root tbf rate "${RATE}bit" burst "${burst}b" latency 50ms
fi

"$bin" certs init "$work/certs" --sender prof --host $addr >/dev/null
if [ -n "${COLD:-}" ]; then
  python3 -c 'import os, sys; f = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(f, 0, 0, os.POSIX_FADV_DONTNEED)' "$img"
else
  cat "$img" >/dev/null # warm: one untimed read first
fi

args=${PERF_ARGS:-"-e cpu-clock -F 1999 --call-graph dwarf,8192"}
run() { # run NS NAME PROGRAM ARGS...: under /usr/bin/time, and perf unless PERF_ARGS=none
  ns=$1; name=$2; shift 2
  if [ "$args" = none ]; then
    ip netns exec "$ns" /usr/bin/time -f '%U %S %e' -o "$out/$name.time" "$@"
  else
    # shellcheck disable=SC2086
    ip netns exec "$ns" /usr/bin/time -f '%U %S %e' -o "$out/$name.time" \
      perf record -q $args -o "$out/$name.data" -- "$@"
  fi
}
run "$rcv" recv "$bin" receive --listen $addr:$port --store "$work/store" --tls "$work/certs" \
  --allow prof=vm >"$work/recv.stdout" 2>"$out/recv.log" &
rpid=$!
i=0
until grep -q "listening on" "$work/recv.stdout" 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 600 ] || { echo "receiver did not start" >&2; exit 1; }; sleep 0.1
done
run "$snd" send "$bin" send --to $addr:$port --tls "$work/certs" --identity prof \
  --state "$work/state" --vm vm --json --no-progress "$@" "$img" >"$out/send.json" 2>"$out/send.log"
# The receiver runs until interrupted: SIGINT to vdrep (below time, or below time and perf).
for p in $(pgrep -f -- "--store $work/store"); do
  case $(cat /proc/"$p"/comm 2>/dev/null) in time | perf | ip | "") ;; *) kill -INT "$p" ;; esac
done
wait $rpid || true
rpid=
printf 'sender CPU-s %s, receiver CPU-s %s (user+system)\n' \
  "$(awk '{print $1 + $2}' "$out/send.time")" "$(awk '{print $1 + $2}' "$out/recv.time")"
