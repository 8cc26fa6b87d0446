#!/usr/bin/python3
"""block_rq_insert -> issue (I/O scheduler wait) and issue -> complete (device), per (rwbs, KiB), inside rig windows."""
import sys, re, os, collections, math
perf, W = sys.argv[1], sys.argv[2]
wins = [l.split() for l in open(os.path.join(W, 'windows.txt'))]
ev = re.compile(r'^\s*(\d+\.\d+):\s+block:block_rq_(insert|issue|complete):\s+\S+\s+(\S+)\s+(?:(\d+)\s+)?\(.*?\)\s+(\d+)\s+\+\s+(\d+)')
st = {}; done = []
for l in open(perf):
    m = ev.match(l)
    if not m: continue
    t, e, rw, sec, ns = float(m.group(1)), m.group(2), m.group(3), int(m.group(5)), int(m.group(6))
    k = (sec, rw[0])
    if e == 'insert': st[k] = [t, None, ns]
    elif e == 'issue':
        if k in st: st[k][1] = t
        else: st[k] = [None, t, ns]
    else:
        x = st.pop(k, None)
        if x and x[1]: done.append((x[0], x[1], t, rw, x[2] >> 1))
def pct(v, p): v = sorted(v); return v[max(0, min(len(v)-1, math.ceil(p*len(v))-1))] if v else 0
for (var, a, b, _) in wins:
    a, b = int(a) / 1e9, int(b) / 1e9
    by = collections.defaultdict(lambda: ([], []))
    for (ti, tis, tc, rw, kb) in done:
        t0 = ti or tis
        if a <= t0 < b:
            if ti: by[(rw, kb)][0].append((tis - ti) * 1e6)
            by[(rw, kb)][1].append((tc - tis) * 1e6)
    print(f'{var}:')
    for k in sorted(by, key=lambda k: -len(by[k][1]))[:7]:
        q, d = by[k]
        print(f'  {k[0]:4} {k[1]:5} KiB n={len(d):5}  sched wait (n={len(q)}) med {pct(q,.5):6.0f} p90 {pct(q,.9):6.0f} p99 {pct(q,.99):6.0f} us | device med {pct(d,.5):6.0f} p90 {pct(d,.9):6.0f} p99 {pct(d,.99):6.0f} us')
