#!/usr/bin/env python3
# Off-CPU time of every thread of the processes in a system-wide `sched_switch` record, with
# the stack each thread left the CPU from: which thread of a copy waits, and on what (the
# read-ahead for the device or for its consumers, the CPU threads for input or output, the
# receiver's writes for a lock or the disk). A thread's off-CPU interval runs from its
# switch-out to its next switch-in; both are in a system-wide record, not in a per-process
# one (the switch-in is recorded in the context of the task switched out).
# Record (root), e.g. around bench/profile/perf-copy-veth.sh with PERF_ARGS=none:
#   perf record -a -e sched:sched_switch -g -o sw.data -- sleep 10
#   perf script -i sw.data -F comm,pid,tid,time,trace,ip,sym > sw.txt
#   bench/profile/offcpu.py sw.txt [COMM_PREFIX [DEPTH]]
# COMM_PREFIX (default "vdrep") picks the processes by the name of any of their threads;
# DEPTH (default 3) frames of each stack, scheduler and syscall entry frames left out.
# Prints, per process, each thread's off-CPU seconds and its three largest reasons (R: it was
# preempted while runnable; S: it slept; D: it waited for IO). Rust release builds have no
# frame pointers, so user frames stop early: the thread's name often says more (vdrep names
# its threads: vdrep-plan, vdrep-ahead, vdrep-cpu-N; tokio's are tokio-rt-worker).
# bench/results/ANALYSIS.md, session 22, used it on a cold copy.
import collections
import re
import sys

EV = re.compile(
    r'^(\S.*?)\s+(\d+)/(\d+)\s+([\d.]+): prev_comm=(.*?) prev_pid=(\d+) .*prev_state=(\S+)'
    r' ==> next_comm=(.*?) next_pid=(\d+)')
SKIP = ('__schedule', 'schedule', '[unknown]', 'entry_SYSCALL', 'do_syscall', 'syscall',
        '__x64', '0x', 'futex', '__futex', 'do_futex', 'core::', 'std::', '<core', '<std',
        'alloc::', '<alloc')


def main():
    path = sys.argv[1]
    prefix = sys.argv[2] if len(sys.argv) > 2 else 'vdrep'
    depth = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    left = {}  # tid -> (time, state, stack, pid, comm) of its last switch-out
    off = collections.defaultdict(collections.Counter)  # (pid, tid) -> reason -> seconds
    names = {}  # (pid, tid) -> thread name
    procs = collections.defaultdict(set)  # pid -> thread names
    cur, stack = None, []

    def close():
        nonlocal cur, stack
        if cur:
            t, pid, tid, state, nxt, comm = cur
            left[tid] = (t, state, stack, pid, comm)
            if nxt in left:
                t0, st0, stk, p0, c0 = left.pop(nxt)
                reason = st0[:1] + ' ' + (' < '.join(stk) or '?')
                off[(p0, nxt)][reason] += t - t0
                names[(p0, nxt)] = c0
                procs[p0].add(c0)
        cur, stack = None, []

    with open(path) as f:
        for line in f:
            m = EV.match(line)
            if m:
                close()
                cur = (float(m.group(4)), m.group(2), m.group(6), m.group(7), m.group(9),
                       m.group(1))
                continue
            p = line.split()
            if cur and len(p) >= 2 and not p[1].startswith(SKIP) and not p[1].startswith('ffff'):
                if len(stack) < depth:
                    stack.append(p[1].split('+')[0][:60])
    close()
    for pid in sorted(procs, key=lambda p: -sum(sum(c.values()) for (q, _), c in off.items() if q == p)):
        if not any(n.startswith(prefix) for n in procs[pid]):
            continue
        print(f'== process {pid} ({", ".join(sorted(procs[pid]))})')
        rows = [(k, c) for k, c in off.items() if k[0] == pid]
        for (_, tid), c in sorted(rows, key=lambda r: -sum(r[1].values())):
            top = '; '.join(f'{k} {v:.2f} s' for k, v in c.most_common(3))
            print(f'  {tid:>7} {names[(pid, tid)]:<16} {sum(c.values()):7.2f} s off-CPU: {top}')


if __name__ == '__main__':
    main()
