#!/usr/bin/python3
"""For the rig's slow writes inside drain windows: how the writer thread and qsd's main thread
spent the write (running / runnable / sleeping), and what ran while they were runnable.
usage: rigsched.py perf.txt RIGDIR [slow_us]"""
import sys, re, collections, os
perf, W = sys.argv[1], sys.argv[2]
slow_us = float(sys.argv[3]) if len(sys.argv) > 3 else 2000
qpid = int(open(os.path.join(W, 'qsd.pid')).read()); wtid = int(open(os.path.join(W, 'writer.tid')).read())
wins = [l.split() for l in open(os.path.join(W, 'windows.txt'))]
writes = [tuple(map(int, l.split())) for l in open(os.path.join(W, 'writes.txt'))]
sw = re.compile(r'^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+(\d+\.\d+):\s+sched:sched_switch:\s+prev_comm=(.*?) prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)')
wk = re.compile(r'^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+(\d+\.\d+):\s+sched:sched_wakeup:\s+comm=(.*?) pid=(\d+) ')
# state intervals per tid: list of (t, state) transitions; state in 'run','rq','sleep'
trans = collections.defaultdict(list); comm = {}; tgid = {}
oncpu = collections.defaultdict(list)  # cpu -> (t, tid)
for l in open(perf):
    m = sw.match(l)
    if m:
        t = float(m.group(5)); cpu = int(m.group(4)); p, ps, n = int(m.group(7)), m.group(8), int(m.group(10))
        comm[p] = m.group(6); comm[n] = m.group(9)
        trans[p].append((t, 'rq' if ps.startswith('R') else 'sleep'))
        trans[n].append((t, 'run')); oncpu[cpu].append((t, n)); continue
    m = wk.match(l)
    if m:
        t = float(m.group(5)); p = int(m.group(7)); comm[p] = m.group(6)
        trans[p].append((t, 'rq'))
def tids_of(pid):
    try: return [int(x) for x in os.listdir(f'/proc/{pid}/task')]
    except OSError: return []
def spent(tid, a, b):
    r = collections.Counter(); tr = trans.get(tid, [])
    st = None; last = a
    for (t, s) in tr:
        if t <= a: st = s; continue
        if t >= b: break
        if st: r[st] += t - last
        st = s; last = t
    if st: r[st] += b - last
    return r
def who(cpu_list, tid, a, b):
    """what ran on any cpu while `tid` was runnable in [a, b]"""
    res = collections.Counter(); tr = trans.get(tid, []); st = None; last = a; spans = []
    for (t, s) in tr:
        if t <= a: st = s; continue
        if t >= b: break
        if st == 'rq': spans.append((last, t))
        st = s; last = t
    if st == 'rq': spans.append((last, b))
    for (x, y) in spans:
        for cpu, ev in oncpu.items():
            cur = None; lt = x
            for (t, n) in ev:
                if t <= x: cur = n; continue
                if t >= y: break
                if cur is not None: res[comm.get(cur, cur)] += t - lt
                cur = n; lt = t
            if cur is not None: res[comm.get(cur, cur)] += y - lt
    return res
for (var, a, b, dpid) in wins:
    a, b = int(a) / 1e9, int(b) / 1e9
    sl = [(t / 1e9, d / 1e9) for (t, d, c) in writes if a <= t / 1e9 < b and d / 1e3 > slow_us]
    n = sum(1 for (t, d, c) in writes if a <= t / 1e9 < b)
    tot_w = collections.Counter(); tot_q = collections.Counter(); by = collections.Counter(); byw = collections.Counter()
    for (t, d) in sl:
        tot_w += spent(wtid, t, t + d); tot_q += spent(qpid, t, t + d)
        by += who(None, qpid, t, t + d); byw += who(None, wtid, t, t + d)
    T = sum(d for (t, d) in sl)
    print(f'{var}: window {b-a:.2f} s, writes {n}, slow (> {slow_us:.0f} us) {len(sl)}, their time {T*1e3:.0f} ms')
    f = lambda c: ', '.join(f'{k} {v*1e3:.0f}' for k, v in c.most_common())
    print(f'  writer thread: {f(tot_w)} ms')
    print(f'  qsd main thread: {f(tot_q)} ms')
    print(f'  while qsd main was runnable, on the CPUs: {f(collections.Counter(dict(by.most_common(8))))} ms')
    print(f'  while the writer was runnable, on the CPUs: {f(collections.Counter(dict(byw.most_common(8))))} ms')
