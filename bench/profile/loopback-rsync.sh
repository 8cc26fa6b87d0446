#!/bin/bash
# Warm loopback copy with `rsync --whole-file` to an rsync daemon on 127.0.0.1: the baseline
# of issue 21's loopback figure (run it alternately with loopback-vdrep.sh, same IMAGE).
# Usage: bench/profile/loopback-rsync.sh IMAGE   (the copy goes to a folder in /var/tmp)
# Prints the wall time and MB/s, and the CPU (user, system) of the client and the daemon.
set -eu
img=$(realpath "$1")
work=$(mktemp -d /var/tmp/rlo.XXXX)
dpid=
# The daemon runs under /usr/bin/time: stop its child (the daemon), then time reports.
trap '[ -n "$dpid" ] && { pkill -TERM -P $dpid 2>/dev/null; wait $dpid 2>/dev/null; }; rm -rf "$work"' EXIT
mkdir "$work/dst"
cat > "$work/rsyncd.conf" <<C
use chroot = no
[dst]
path = $work/dst
read only = no
uid = root
gid = root
C
port=$((30000 + $$ % 20000))
/usr/bin/time -f "rsyncd %e s %U user %S sys" rsync --daemon --no-detach --address 127.0.0.1 --port $port --config "$work/rsyncd.conf" 2>"$work/d.time" &
dpid=$!
for _ in $(seq 100); do ss -Hltn "sport = :$port" | grep -q . && break; sleep 0.05; done
cat "$img" >/dev/null
s=$(date +%s.%N)
/usr/bin/time -f "send %e s %U user %S sys" rsync --whole-file "$img" rsync://127.0.0.1:$port/dst/ 2>"$work/s.time"
e=$(date +%s.%N)
sz=$(stat -c %s "$img")
pkill -TERM -P $dpid; wait $dpid 2>/dev/null || true
dpid=
python3 -c "w=$e-$s;print('rsync wall %.2f s  %.1f MB/s'%(w,$sz/w/1e6))"
cat "$work/s.time" "$work/d.time"
