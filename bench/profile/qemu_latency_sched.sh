#!/bin/bash
# Runs `vdrep-bench qemu-latency --rounds 1 ...` and records, system-wide, the scheduler's
# switches and wake-ups, softirqs and a 997 Hz cpu-clock sample with kernel call chains
# while its protected run writes; then `qemu_latency_sched.py` says what ran on the CPUs
# while the guest's threads waited for one (issue 18, session 15).
# usage: qemu_latency_sched.sh OUT SECONDS -- vdrep-bench qemu-latency --rounds 1 --work W ...
set -u
out=$1 secs=$2; shift 3
mkdir -p "$out"
work=$(printf '%s\n' "$@" | grep -A1 -x -- --work | tail -1)
"$@" 2> >(tee "$out/bench.stderr" >&2) > "$out/bench.stdout" &
bench=$!
until grep -q "protected (interval" "$out/bench.stderr" 2>/dev/null; do
    kill -0 $bench 2>/dev/null || { echo "bench ended early" >&2; exit 1; }
    sleep 0.2
done
# The bench's own children: other vdrep processes may run on the machine.
pgrep -P $bench -f -- " send " | head -1 > "$out/sender.pid"
pgrep -P $bench -f -- " receive " | head -1 > "$out/receiver.pid"
python3 -c 'import time; print(time.time() - time.clock_gettime(time.CLOCK_MONOTONIC))' > "$out/offset"
perf record -q -e sched:sched_switch -e sched:sched_wakeup -e irq:softirq_entry \
    -e irq:softirq_exit -e 'cpu-clock/freq=997,call-graph=fp/' -a -k mono -m 1024 \
    -o "$out/perf.data" -- sleep "$secs"
wait $bench
perf script -i "$out/perf.data" -F comm,pid,tid,cpu,time,event,trace,ip,sym --ns \
    > "$out/perf.txt" 2>/dev/null
python3 "$(dirname "$0")/qemu_latency_sched.py" "$out/perf.txt" "$out/offset" \
    "$work/trace-1-prot.bin" "$(cat "$out/sender.pid")" "$(cat "$out/receiver.pid")" \
    | tee "$out/sched.txt"
rm -f "$out/perf.txt"
