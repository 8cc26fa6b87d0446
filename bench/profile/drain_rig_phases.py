#!/usr/bin/python3
"""Where a rig guest write's time goes, from perf's syscall tracepoints of qsd's workers:
A = write sent -> CBW pread64(64 KiB) enters; B = that read; C = read done -> guest's
pwrite64(4 KiB) enters (scratch write, reqlist waits, main loop); D = the guest pwrite;
E = pwrite done -> reply received. Per window, for writes over SLOW us and all first writes.
usage: phases.py perf.txt RIGDIR [slow_us]"""
import sys, re, os, collections, math
perf, W = sys.argv[1], sys.argv[2]; slow = float(sys.argv[3]) if len(sys.argv) > 3 else 2000
qpid = int(open(os.path.join(W, 'qsd.pid')).read())
wins = [l.split() for l in open(os.path.join(W, 'windows.txt'))]
writes = [tuple(map(int, l.split())) for l in open(os.path.join(W, 'writes.txt'))]
ent = re.compile(r'^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+(\d+\.\d+):\s+syscalls:sys_enter_(pread64|pwrite64):\s+fd:\s+(\S+),\s+buf:\s+\S+,\s+count:\s+(\S+),\s+pos:\s+(\S+)')
ext = re.compile(r'^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+(\d+\.\d+):\s+syscalls:sys_exit_(pread64|pwrite64):')
open_ = {}; calls = []  # (kind, fd, count, pos, t_enter, t_exit, tid)
for l in open(perf):
    m = ent.match(l)
    if m:
        if int(m.group(2)) != qpid: continue
        open_[int(m.group(3))] = (m.group(6), int(m.group(7), 16), int(m.group(8), 16), int(m.group(9), 16), float(m.group(5)))
        continue
    m = ext.match(l)
    if m and int(m.group(3)) in open_:
        k, fd, cnt, pos, te = open_.pop(int(m.group(3)))
        calls.append((k, fd, cnt, pos, te, float(m.group(5)), int(m.group(3))))
# index: reads of 64K by pos, writes of 4K by pos
r64 = collections.defaultdict(list); w4 = collections.defaultdict(list)
for c in calls:
    if c[0] == 'pread64' and c[2] == 65536: r64[c[3]].append(c)
    if c[0] == 'pwrite64' and c[2] == 4096: w4[c[3]].append(c)
def find(lst, a, b):
    for c in lst:
        if a <= c[4] and c[5] <= b: return c
    return None
def pct(v, p): v = sorted(v); return v[max(0, min(len(v)-1, math.ceil(p*len(v))-1))] if v else 0
for (var, a, b, dpid) in wins:
    a, b = int(a) / 1e9, int(b) / 1e9
    seen = set(); rows = {'slow': [], 'first': []}
    for (t, d, c, o) in writes:
        t /= 1e9; d /= 1e9
        if not (a <= t < b): continue
        first = c not in seen; seen.add(c)
        if not first: continue
        rd = find(r64.get(o & ~0xffff, []), t, t + d); wr = find(w4.get(o, []), t, t + d)
        if not rd or not wr: continue
        ph = (rd[4] - t, rd[5] - rd[4], wr[4] - rd[5], wr[5] - wr[4], t + d - wr[5])
        rows['first'].append(ph)
        if d * 1e6 > slow: rows['slow'].append(ph)
    print(f'{var}: window {b-a:.2f} s')
    for k, v in rows.items():
        if not v: continue
        tot = [sum(x) for x in v]
        print(f'  {k} first writes matched: {len(v)}, total ms: ' + ', '.join(
            f'{n} {sum(x[i] for x in v)*1e3:.0f} (med {pct([x[i] for x in v], .5)*1e6:.0f} p99 {pct([x[i] for x in v], .99)*1e6:.0f} us)'
            for i, n in enumerate('ABCDE')))
    # drain reads: pread64 of >= 256K
    big = [c for c in calls if c[0] == 'pread64' and c[2] >= 131072 and a <= c[4] < b]
    if big:
        lat = [(c[5] - c[4]) * 1e6 for c in big]
        print(f'  big reads {len(big)}: med {pct(lat,.5):.0f} p99 {pct(lat,.99):.0f} us; scratch/other writes: ' +
              str(collections.Counter((c[0], c[2] >> 10) for c in calls if a <= c[4] < b and c[0] == 'pwrite64').most_common(4)))
    by = collections.defaultdict(list)
    for c in calls:
        if a <= c[4] < b: by[(c[0], c[2] >> 10)].append((c[5] - c[4]) * 1e6)
    for k in sorted(by, key=lambda k: -len(by[k]))[:5]:
        v = by[k]; print(f'  syscall {k[0]} {k[1]} KiB n={len(v)} med {pct(v,.5):.0f} p90 {pct(v,.9):.0f} p99 {pct(v,.99):.0f} us, sum {sum(v)/1e3:.0f} ms')
