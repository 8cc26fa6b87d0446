#!/bin/bash
# usage: qemu_view_cpu_run.sh NAME VDREP [ENV=VALUE...]  (session 16, P: paths are P's scratch dir; BENCH_ARGS adds bench flags)
name=$1; bin=$2; shift 2
export VDREP_BENCH_NETNS_PREFIX=p
mkdir -p /var/tmp/p/res
echo "$(date -u +%T) start $name load $(cut -d' ' -f1-3 /proc/loadavg)"
flock /tmp/vdrep-bench.lock bash -c '
env "$@" nice -n -5 /var/tmp/p/bin/vdrep-bench-main qemu-latency --rounds 1 --seed 1 --vdrep '"$bin"' \
  --work /var/tmp/p/ql --store /dev/shm/p-ql-store --results /var/tmp/p/res --name '"$name"' $BENCH_ARGS > /var/tmp/p/res/'"$name"'.out 2>&1 &
b=$!
python3 /var/tmp/p/cpusample.py $b /var/tmp/p/res/'"$name"'.cpu.json > /var/tmp/p/res/'"$name"'.cpu.txt
wait $b' _ "$@"
echo "$(date -u +%T) end $name load $(cut -d' ' -f1-3 /proc/loadavg)"
grep "^round 1" /var/tmp/p/res/$name.out; cat /var/tmp/p/res/$name.cpu.txt
