#!/usr/bin/env python3
"""What ran on the CPUs while a `qemu-latency` guest write was slow (issue 18, session 15).

Inputs (from `qemu_latency_sched.sh`): `perf script` text of a system-wide
`perf record -k mono` of sched_switch, sched_wakeup, softirq entry/exit and a 997 Hz
cpu-clock sample with kernel call chains, taken while the protected run wrote; the
realtime - monotonic offset at its start; the protected run's write trace (the bench's
`trace-R-prot.bin`); the sender's and receiver's pids.

For every wake-up of a guest thread (the python writer, qemu-storage-daemon) it measures
how long the thread waited for a CPU and charges that wait to what ran on the CPU it then
ran on (a thread, grouped as sender:/receiver:/guest:/kernel:/other:, and the softirqs
inside it); the cpu-clock samples in those waits say whether the blocker was in the kernel
and in which system call. It does so for all waits and for the waits inside slow writes
(latency above --slow-us), and also gives what the two CPUs did while slow writes were in
flight.

usage: qemu_latency_sched.py PERF_SCRIPT OFFSET TRACE SENDER_PID RECEIVER_PID [--slow-us N]
"""
import bisect
import collections
import re
import struct
import sys

HDR = re.compile(r"^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s?(.*)$")
GUEST = ("python", "qemu-storage")
KV = re.compile(r"(\w+)=(\S+)")


def parse(path):
    """Yields (comm, pid, tid, cpu, t, event, rest, chain)."""
    cur = None
    chain = []
    with open(path, errors="replace") as f:
        for line in f:
            m = HDR.match(line)
            if m:
                if cur:
                    yield cur + (chain,)
                comm, pid, tid, cpu, t, ev, rest = m.groups()
                cur = (comm.strip(), int(pid), int(tid), int(cpu), float(t), ev.rstrip(":"), rest)
                chain = []
            elif cur and line.strip():
                parts = line.split(None, 1)
                if len(parts) == 2:
                    chain.append((parts[0].startswith("ffffffff"), parts[1].strip()))
        if cur:
            yield cur + (chain,)


def switch_fields(rest):
    # prev_comm may hold spaces: split at "==>".
    a, b = rest.split("==>", 1)
    pa = re.search(r"prev_pid=(\d+)", a)
    nb = re.search(r"next_comm=(.*?) next_pid=(\d+)", b)
    return int(pa.group(1)), nb.group(1), int(nb.group(2))


def main():
    global GUEST
    if "--guest-comm" in sys.argv:
        GUEST = tuple(sys.argv[sys.argv.index("--guest-comm") + 1].split(","))
        sys.argv.pop(sys.argv.index("--guest-comm") + 1)
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    slow_us = 1000.0
    if "--slow-us" in sys.argv:
        slow_us = float(sys.argv[sys.argv.index("--slow-us") + 1])
        args.remove(sys.argv[sys.argv.index("--slow-us") + 1])
    script, offset_path, trace_path, sender, receiver = args[:5]
    sender, receiver = int(sender), int(receiver)
    offset = float(open(offset_path).read().split()[0])

    tgid = {}
    comm = {}
    running = collections.defaultdict(list)  # cpu -> [(start, end, tid)]
    last = {}  # cpu -> (t, tid)
    soft = collections.defaultdict(list)  # cpu -> [(start, end, vec)]
    soft_open = {}
    wake = {}  # tid -> t
    waits = []  # (t_wake, t_run, cpu, tid)
    samples = collections.defaultdict(list)  # cpu -> [(t, tid, kernel?, syscall, leaf)]
    for c, pid, tid, cpu, t, ev, rest, chain in parse(script):
        if tid not in tgid or pid:
            tgid[tid] = pid
        comm.setdefault(tid, c)
        if ev == "sched:sched_switch":
            prev, ncomm, nxt = switch_fields(rest)
            if cpu in last:
                running[cpu].append((last[cpu][0], t, prev))
            last[cpu] = (t, nxt)
            comm.setdefault(nxt, ncomm)
            if nxt in wake:
                waits.append((wake.pop(nxt), t, cpu, nxt))
        elif ev == "sched:sched_wakeup":
            kv = dict(KV.findall(rest))
            wt = int(kv["pid"])
            wake.setdefault(wt, t)
        elif ev == "irq:softirq_entry":
            m = re.search(r"action=(\w+)", rest)
            soft_open[cpu] = (t, m.group(1) if m else "?")
        elif ev == "irq:softirq_exit":
            if cpu in soft_open:
                s, v = soft_open.pop(cpu)
                soft[cpu].append((s, t, v))
        elif ev.startswith("cpu-clock"):
            # Kernel frames come first when the sample hit the kernel (user frames of
            # Rust code without frame pointers show as [unknown]).
            syms = [sym for _, sym in chain]
            sysc = next((s for s in syms if s.startswith("__x64_sys_") or s.startswith("__do_sys_")), "")
            if not sysc:
                sysc = next((s for s in syms if s in ("worker_thread", "smpboot_thread_fn", "kthread",
                                                        "do_idle", "irq_exit_rcu", "asm_common_interrupt",
                                                        "do_softirq", "handle_softirqs")), "")
            leaf = syms[0] if syms else "?"
            kernel = bool(chain) and chain[0][0]
            samples[cpu].append((t, tid, kernel, sysc, leaf))

    def group(tid):
        if tid == 0:
            return "idle"
        p = tgid.get(tid, tid)
        c = comm.get(tid, "?")
        base = re.sub(r"[/:]?\d+(:\d+)?(-.*)?$", "", c) or c
        if p == sender:
            return "sender:" + re.sub(r"-\d+$", "", c)
        if p == receiver:
            return "receiver:" + re.sub(r"-\d+$", "", c)
        lead = comm.get(p, c)
        if lead.startswith(GUEST) or c.startswith(GUEST):
            return "guest:" + c
        if p == 0 or c.startswith(("kworker", "ksoftirqd", "migration", "rcu", "kswapd", "khugepaged", "jbd2", "kcompactd", "kdamond")):
            return "kernel:" + c.split("/")[0].rstrip(".")
        return "other:" + base

    guest_pids = {p for t_, p in tgid.items() if group(t_).startswith("guest:")}
    for cpu in running:
        running[cpu].sort()
    starts = {cpu: [r[0] for r in running[cpu]] for cpu in running}
    sstarts = {cpu: [s[0] for s in soft[cpu]] for cpu in soft}
    samp_t = {cpu: [s[0] for s in samples[cpu]] for cpu in samples}

    def occupancy(cpu, a, b, acc, sacc):
        """Adds to acc[group] the time cpu ran each task within [a, b], to sacc[vec] the softirqs."""
        rs = running.get(cpu, [])
        i = max(bisect.bisect_right(starts.get(cpu, []), a) - 1, 0)
        while i < len(rs) and rs[i][0] < b:
            s, e, tid = rs[i]
            o = min(e, b) - max(s, a)
            if o > 0:
                acc[group(tid)] += o
            i += 1
        ss = soft.get(cpu, [])
        j = max(bisect.bisect_right(sstarts.get(cpu, []), a) - 1, 0)
        while j < len(ss) and ss[j][0] < b:
            s, e, v = ss[j]
            o = min(e, b) - max(s, a)
            if o > 0:
                sacc[v] += o
            j += 1

    def sampled(cpu, a, b, acc):
        sm = samples.get(cpu, [])
        i = bisect.bisect_left(samp_t.get(cpu, []), a)
        while i < len(sm) and sm[i][0] <= b:
            _, tid, kernel, sysc, leaf = sm[i]
            g = group(tid)
            if g.startswith("guest:"):
                i += 1
                continue
            where = ("kernel " + (sysc or "?") + " / " + leaf) if kernel else "user"
            acc[(g, where)] += 1
            i += 1

    # The guest's writes (Unix seconds -> monotonic).
    raw = open(trace_path, "rb").read()
    n = len(raw) // 16
    st = struct.unpack_from("<%dq" % n, raw, 0)
    lat = struct.unpack_from("<%dI" % n, raw, 8 * n)
    writes = [(s / 1e9 - offset, l / 1e3) for s, l in zip(st, lat)]
    t0, t1 = writes[0][0], writes[-1][0]
    slow = [(s, s + l / 1e6) for s, l in writes if l > slow_us]
    slow_starts = [s for s, _ in slow]

    def in_slow(t):
        i = bisect.bisect_right(slow_starts, t) - 1
        return i >= 0 and slow[i][0] <= t <= slow[i][1]

    guest_waits = [w for w in waits if tgid.get(w[3]) in guest_pids and t0 <= w[0] <= t1]
    out = []
    out.append(f"writes {n}, slow (> {slow_us:.0f} µs) {len(slow)} = {100*len(slow)/n:.2f} %; "
               f"run {t1-t0:.1f} s; guest threads' wake-ups in the run {len(guest_waits)}")
    for label, sel in (("all guest wake-ups", lambda w: True),
                       ("guest wake-ups inside slow writes", lambda w: in_slow(w[0]))):
        ws = [w for w in guest_waits if sel(w)]
        d = sorted(w[1] - w[0] for w in ws)
        if not d:
            continue
        pct = lambda p: d[min(len(d) - 1, int(p * len(d)))] * 1e6
        acc = collections.Counter()
        sacc = collections.Counter()
        samp = collections.Counter()
        long_ = [w for w in ws if w[1] - w[0] > 0.0005]
        for a, b, cpu, tid in long_:
            occupancy(cpu, a, b, acc, sacc)
            sampled(cpu, a, b, samp)
        tot = sum(acc.values()) or 1
        out.append(f"\n## {label}: {len(ws)}, wait for a CPU median {pct(0.5):.0f} µs, p99 {pct(0.99):.0f} µs, "
                   f"max {d[-1]*1e6:.0f} µs; waits > 0.5 ms: {len(long_)}, {sum(b-a for a,b,_,_ in long_)*1e3:.0f} ms in all")
        out.append("what ran on the CPU during the waits > 0.5 ms (share of their time):")
        for g, v in acc.most_common(15):
            out.append(f"  {100*v/tot:5.1f} %  {v*1e3:8.1f} ms  {g}")
        out.append("softirqs inside those waits: " + ", ".join(f"{k} {v*1e3:.1f} ms" for k, v in sacc.most_common()))
        st_ = sum(samp.values()) or 1
        out.append(f"cpu-clock samples in those waits ({sum(samp.values())}), by blocker and where:")
        for (g, w), v in samp.most_common(25):
            out.append(f"  {100*v/st_:5.1f} %  {g:32s} {w}")
    # Both CPUs while slow writes were in flight, against the whole run.
    for label, spans in (("whole protected run", [(t0, t1)]), ("while slow writes were in flight", slow)):
        acc = collections.Counter()
        sacc = collections.Counter()
        for a, b in spans:
            for cpu in running:
                occupancy(cpu, a, b, acc, sacc)
        tot = sum(acc.values()) or 1
        out.append(f"\n## both CPUs, {label} ({tot*1e3:.0f} CPU-ms):")
        for g, v in acc.most_common(15):
            out.append(f"  {100*v/tot:5.1f} %  {g}")
        out.append("  softirqs: " + ", ".join(f"{k} {100*v/tot:.1f} %" for k, v in sacc.most_common()))
    print("\n".join(out))


if __name__ == "__main__":
    main()
