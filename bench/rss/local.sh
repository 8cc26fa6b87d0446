#!/usr/bin/env bash
# Peak RSS (VmHWM) of `vdrep receive --store` and `vdrep send` on loopback, with the receiver
# the slower end (pinned to one core at nice 19) so that its QUIC windows and buffers fill.
# Usage: bench/rss/local.sh [SIZE (default 2GiB)] [TMPDIR]
# Prints one line: seconds, MB/s of source data, receiver and sender peak RSS in MiB.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
vdrep=${VDREP_BIN:-$root/target/release/vdrep}
size=${1:-2GiB}
tmp=$(mktemp -d "${2:-/tmp}/vdrep-rss.XXXXXX")
trap 'kill "$rpid" 2>/dev/null; rm -rf "$tmp"' EXIT
"$root/target/release/vdrep-bench" gen-image --size "$size" "$tmp/disk0.raw" >/dev/null
"$vdrep" certs init "$tmp/tls" --sender bench >/dev/null
VDREP_LOG=warn nice -n 19 taskset -c 1 "$vdrep" receive --listen 127.0.0.1:0 --tls "$tmp/tls" \
  --allow bench=benchvm --store "$tmp/store" >"$tmp/addr" &
rpid=$!
for _ in $(seq 100); do grep -q "listening on" "$tmp/addr" 2>/dev/null && break; sleep 0.1; done
line=$(head -1 "$tmp/addr")
addr=${line#listening on }
t0=$(date +%s.%N)
/usr/bin/time -f '%M' -o "$tmp/send.rss" "$vdrep" send --to "$addr" --tls "$tmp/tls" \
  --identity bench --vm benchvm --state "$tmp/sender-state" --no-progress "$tmp/disk0.raw"
t1=$(date +%s.%N)
rhwm=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$rpid/status")
bytes=$(stat -c %s "$tmp/disk0.raw")
awk -v t0="$t0" -v t1="$t1" -v b="$bytes" -v r="$rhwm" -v s="$(cat "$tmp/send.rss")" \
  'BEGIN { d = t1 - t0; printf "seconds %.1f  MB/s %.1f  receiver_peak_rss_mib %d  sender_peak_rss_mib %d\n", d, b / d / 1e6, r, int(s / 1024) }'
