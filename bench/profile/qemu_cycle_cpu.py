#!/usr/bin/env python3
# CPU-s and new memory per process, thread and phase of one `vdrep-bench qemu-cycle` run.
# Runs the bench command given after `--`, samples /proc every 0.1 s for the processes whose
# command line names WORK (the sender runs, the receiver, qemu-storage-daemon), then cuts the
# samples at each phase's window from the senders' JSON logs (switch to VM recovery point of
# send-initial.log and send-cycle.log) and prints, per phase: CPU-s (user + system) and minor
# page faults (each one a newly touched anonymous page) per process, and the sender's and
# receiver's threads by name.
# Usage: bench/profile/qemu_cycle_cpu.py WORK OUT.json -- vdrep-bench qemu-cycle --work WORK ...
import json, os, re, subprocess, sys, time, collections
from datetime import datetime

TCK = os.sysconf('SC_CLK_TCK')

def stat(path):
    try:
        with open(path) as f:
            s = f.read()
    except OSError:
        return None
    comm = s[s.index('(') + 1:s.rindex(')')]
    f = s[s.rindex(')') + 2:].split()
    # fields from 3 (state): minflt 10, majflt 12, utime 14, stime 15 (1-based in proc(5))
    return comm, int(f[7]), int(f[9]), int(f[11]) / TCK, int(f[12]) / TCK

def role(cmd, work):
    if 'receive' in cmd:
        return 'receiver'
    if 'qemu-storage' in cmd[0]:
        return 'qsd'
    if 'send' in cmd:
        st = cmd[cmd.index('--state') + 1] if '--state' in cmd else ''
        return 'sender:' + os.path.basename(st)
    return None

def sample_loop(work, proc):
    cmds = {}
    rows = []
    while proc.poll() is None:
        t = time.time()
        with open('/proc/stat') as f:
            c = [int(x) for x in f.readline().split()[1:]]
        # the whole machine: busy = all but idle and iowait
        rows.append((t, '0', 'machine', 'process', 0, (sum(c) - c[3] - c[4]) / TCK, 0))
        for p in os.listdir('/proc'):
            if not p.isdigit():
                continue
            if p not in cmds:
                try:
                    with open(f'/proc/{p}/cmdline', 'rb') as f:
                        c = f.read().split(b'\0')
                    c = [x.decode(errors='replace') for x in c if x]
                except OSError:
                    continue
                r = role(c, work) if c and any(work in x for x in c) and (
                    os.path.basename(c[0]) in ('vdrep', 'vdrep-main') or 'vdrep' in c[0]
                    or 'qemu-storage' in c[0]) else None
                if r is not None:
                    # not cached when None: a child read before its exec shows its
                    # parent's command line
                    cmds[p] = r
            else:
                r = cmds[p]
            if r is None:
                continue
            s = stat(f'/proc/{p}/stat')
            if s is None:
                continue
            rows.append((t, p, r, 'process', s[1], s[3], s[4]))
            try:
                tids = os.listdir(f'/proc/{p}/task')
            except OSError:
                continue
            for tid in tids:
                ts = stat(f'/proc/{p}/task/{tid}/stat')
                if ts:
                    rows.append((t, p, r, ts[0] + '#' + tid, ts[1], ts[3], ts[4]))
        time.sleep(0.1)
    return rows

def window(log):
    ev = []
    with open(log) as f:
        for l in f:
            try:
                v = json.loads(l)
            except ValueError:
                continue
            ts = v.get('timestamp')
            if not ts:
                continue
            m = re.match(r'(\d+-\d+-\d+T\d+:\d+:\d+)(\.\d+)?Z', ts)
            t = datetime.fromisoformat(m.group(1) + '+00:00').timestamp() + float(m.group(2) or 0)
            ev.append((t, v.get('fields', {}).get('message', '')))
    sw = next(t for t, m in ev if "qemu switch of the VM's disks" in m)
    pt = next(t for t, m in ev if 'VM recovery point committed' in m and t >= sw)
    return sw, pt

def at(series, t):
    # value of a cumulative series at t (linear between samples; held before/after)
    if not series:
        return None
    if t <= series[0][0]:
        return series[0][1:]
    for (t0, *a), (t1, *b) in zip(series, series[1:]):
        if t0 <= t <= t1:
            k = (t - t0) / (t1 - t0) if t1 > t0 else 0
            return [x + (y - x) * k for x, y in zip(a, b)]
    return series[-1][1:]

def main():
    work, out = sys.argv[1], sys.argv[2]
    cmd = sys.argv[sys.argv.index('--') + 1:]
    if cmd[0] == 'ANALYSE':
        # re-cut saved samples: qemu_cycle_cpu.py WORK OUT.json -- ANALYSE
        with open(out + '.rows') as f:
            rows, rc = json.load(f), 0
    else:
        proc = subprocess.Popen(cmd)
        rows = sample_loop(work, proc)
        rc = proc.returncode
        with open(out + '.rows', 'w') as f:
            json.dump(rows, f)
    series = collections.defaultdict(list)
    for t, p, r, th, minflt, u, s in rows:
        series[(p, r, th)].append((t, u + s, minflt))
    phases = {}
    for name, log in (('initial', 'send-initial.log'), ('cycle', 'send-cycle.log')):
        try:
            phases[name] = window(os.path.join(work, log))
        except (OSError, StopIteration):
            pass
    report = {'rc': rc, 'phases': phases, 'table': {},
              'pids': sorted({(p, r) for (p, r, _) in series if p != '0'})}
    for ph, (a, b) in phases.items():
        tab = collections.defaultdict(lambda: [0.0, 0])
        for (p, r, th), ser in series.items():
            if ser[-1][0] < a or ser[0][0] > b:
                continue
            va, vb = at(ser, a), at(ser, b)
            cpu, flt = vb[0] - va[0], vb[1] - va[1]
            if th == 'process':
                key = r
            else:
                key = r + ' / ' + th.split('#')[0]
            tab[key][0] += cpu
            tab[key][1] += flt
        report['table'][ph] = {k: [round(v[0], 2), int(v[1])] for k, v in tab.items()}
        print(f'== {ph}: {b - a:.2f} s (switch to point)')
        procs = sorted(k for k in tab if ' / ' not in k)
        for k in procs:
            print(f'  {k:28s} {tab[k][0]:6.2f} CPU-s  {int(tab[k][1]):8d} minflt')
            th = sorted(((v[0], v[1], t) for t, v in tab.items() if t.startswith(k + ' / ')),
                        reverse=True)
            for c, f, t in th[:8]:
                if c >= 0.05 or f > 1000:
                    print(f'      {t.split(" / ")[1]:24s} {c:6.2f}  {int(f):8d}')
    with open(out, 'w') as f:
        json.dump(report, f, indent=1)
    sys.exit(rc)

if __name__ == '__main__':
    main()
