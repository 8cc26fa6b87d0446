#!/bin/bash
# Warm loopback copy with vdrep, for issue 21's loopback figure beside loopback-rsync.sh.
# Usage: bench/profile/loopback-vdrep.sh VDREP_BIN IMAGE [send flags...]
# RECV_ARGS adds receiver flags; WORKDIR is where the store goes (default: /var/tmp).
# Prints the wall time and MB/s, each end's CPU (user, system) and the sender's --json summary.
set -eu
bin=$(realpath "$1"); img=$(realpath "$2"); shift 2
work=$(mktemp -d ${WORKDIR:-/var/tmp}/lp.XXXX)
trap 'kill $rpid 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin" certs init "$work/certs" --sender prof --host 127.0.0.1 >/dev/null
port=$((20000 + $$ % 20000))
cat "$img" >/dev/null
/usr/bin/time -f "recv %e s %U user %S sys %M KB" "$bin" receive --listen 127.0.0.1:$port \
  --store "$work/store" --tls "$work/certs" --allow prof=vm ${RECV_ARGS:-} >"$work/recv.stdout" 2>"$work/recv.log" &
rpid=$!
until grep -q "listening on" "$work/recv.stdout" 2>/dev/null; do sleep 0.1; done
s=$(date +%s.%N)
/usr/bin/time -f "send %e s %U user %S sys %M KB" "$bin" send --to 127.0.0.1:$port --tls "$work/certs" \
  --identity prof --state "$work/state" --vm vm --json --no-progress "$@" "$img" >"$work/send.json" 2>"$work/send.log"
e=$(date +%s.%N)
kill -INT $(cat /proc/$rpid/task/$rpid/children) 2>/dev/null || kill -INT $rpid; wait $rpid || true
sz=$(stat -c %s "$img")
python3 -c "import sys;w=$e-$s;print('wall %.2f s  %.1f MB/s'%(w,$sz/w/1e6))"
tail -1 "$work/send.log"; tail -1 "$work/recv.log"
python3 -c "import json;j=json.load(open('$work/send.json'));print({k:v for k,v in j.items() if not isinstance(v,(list,dict))})"
