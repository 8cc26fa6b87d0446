#!/usr/bin/python3
"""Samples, every 50 ms until BENCHPID ends, the CPU ticks of every thread of the sender,
receiver, qemu-storage-daemon and the guest writer, and /proc/stat; then reports per drain
(the lifetime of a `vdrep-drain-*` thread ~ the view) the CPU-s each group took.
usage: cpusample.py BENCHPID OUT"""
import os, sys, time, collections, json
bench, out = int(sys.argv[1]), sys.argv[2]
HZ = os.sysconf('SC_CLK_TCK')
def group(pid):
    try: c = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\0')
    except OSError: return None
    s = b' '.join(c)
    if b'qemu-storage-daemon' in c[0]: return 'qsd'
    v = os.path.basename(c[0]).startswith(b'vdrep') and b'bench' not in os.path.basename(c[0])
    if v and b' send ' in b' ' + s + b' ': return 'sender'
    if v and b' receive ' in b' ' + s + b' ': return 'receiver'
    if b'nbd_writer.py' in s: return 'guest'
    return None
samples = []
while True:
    try: os.kill(bench, 0)
    except OSError: break
    t = time.monotonic(); snap = {}
    st = open('/proc/stat').readline().split()[1:]
    tot = sum(int(x) for x in st); idle = int(st[3]) + int(st[4])
    for p in os.listdir('/proc'):
        if not p.isdigit(): continue
        g = group(p)
        if not g: continue
        try: tids = os.listdir(f'/proc/{p}/task')
        except OSError: continue
        for tid in tids:
            try: s = open(f'/proc/{p}/task/{tid}/stat').read()
            except OSError: continue
            r = s.rfind(')'); name = s[s.find('(') + 1:r]; f = s[r + 2:].split()
            label = g + ':' + ('main' if (g == 'qsd' and tid == p) else name)
            snap[(int(tid), label)] = int(f[11]) + int(f[12])
    samples.append((t, tot, idle, snap))
    time.sleep(0.05)
# windows: drain thread alive
wins = []; cur = None
for (t, tot, idle, snap) in samples:
    alive = any('vdrep-drain' in l for (_, l) in snap)
    if alive and cur is None: cur = [t, None, tot, idle, snap]
    if not alive and cur is not None:
        cur[1] = t; wins.append((cur, (t, tot, idle, snap))); cur = None
res = []
for (a, b) in wins:
    t0, _, tot0, idle0, s0 = a; t1, tot1, idle1, s1 = b
    last = {}
    for (t, tot, idle, snap) in samples:
        if t0 <= t <= t1:
            last.update(snap)
    by = collections.Counter()
    for k, v in last.items():
        d = v - s0.get(k, 0)
        if d: by[k[1]] += d / HZ
    busy = ((tot1 - tot0) - (idle1 - idle0)) / HZ
    r = {'seconds': round(t1 - t0, 2), 'all_cpus_busy_s': round(busy, 2), 'by': {k: round(v, 2) for k, v in by.most_common()}}
    r['others_s'] = round(busy - sum(by.values()), 2)
    res.append(r)
    print(json.dumps(r))
json.dump(res, open(out, 'w'), indent=1)
