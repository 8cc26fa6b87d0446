#!/usr/bin/python3
"""What a living copy-before-write view costs each guest write, by scratch-target variant
(session 11, issue 18): the per-write figure behind `qemu-latency`'s p99, without a sender.

  cbw_rig.py WORKDIR SCRATCHDIR SECONDS VARIANT...

Starts qemu-storage-daemon over a raw disk of 4 GiB whose first 1 GiB is written
(`cache.direct=on`, as `vdrep-bench qemu-latency`), then per VARIANT: takes a view the way
vdrep does (scratch image created and opened over QMP, `blockdev-backup sync=none` in a
transaction, a `snapshot-access` node over the filter), runs 4 KiB random writes at queue
depth 1 over the 1 GiB (python3-libnbd) for SECONDS with the view alive, then tears the view
down while the writes go on (6 s more). Prints one JSON line per variant: the writes that
were the first to their 64 KiB block during the view (each waits for a copy-before-write),
the other writes during the view, those during the teardown and after it; the teardown's
duration (`del_s`: closing the scratch nodes). A variant `none` takes no view (the baseline;
name it first: `slow%` counts writes above 2x its median).

VARIANT: KIND[,OPTION...]; KIND `none`, `qcow2` or `raw` (the scratch image's format);
options: `noflush` / `direct` (the scratch nodes' cache.no-flush / cache.direct), `lazy`
(qcow2 lazy-refcounts), `cluster=N` (qcow2 cluster size), `prealloc=MODE`,
`mincluster=N` / `copyrange` (the job's x-perf min-cluster-size / use-copy-range),
`dir=PATH` (the scratch image's folder instead of SCRATCHDIR), `trim` (the view is exported
writable over NBD and the first half of the region discarded through it before the writes:
`first_trimmed` / `first_kept` split the first writes by half).
Example: cbw_rig.py /var/tmp/rig /var/tmp/rig-scratch 10 none qcow2 qcow2,noflush none
"""
import threading, json, os, socket, subprocess, sys, time, random, math
import nbd

W, SCR, SECS = sys.argv[1], sys.argv[2], float(sys.argv[3])
VARIANTS = sys.argv[4:]
DISK = 4 << 30
REGION = 1 << 30
BASE = []

class Qmp:
    def __init__(s, path):
        s.s = socket.socket(socket.AF_UNIX); s.s.connect(path); s.f = s.s.makefile('rwb')
        s.read(); s.cmd('qmp_capabilities')
    def read(s):
        while True:
            l = json.loads(s.f.readline())
            if 'event' not in l: return l
    def cmd(s, c, **a):
        s.f.write(json.dumps({'execute': c, 'arguments': a}).encode() + b'\n'); s.f.flush()
        r = s.read()
        if 'error' in r: raise RuntimeError(f'{c}: {r["error"]}')
        return r['return']
    def job(s, jid):
        while True:
            j = [x for x in s.cmd('query-jobs') if x['id'] == jid]
            if j and j[0]['status'] == 'concluded':
                err = j[0].get('error'); s.cmd('job-dismiss', id=jid)
                if err: raise RuntimeError(err)
                return
            time.sleep(0.01)

def pct(v, p):
    return v[max(0, min(len(v)-1, math.ceil(p*len(v))-1))] / 1000.0

def stats(v):
    v = sorted(v)
    if not v: return {}
    slow = sum(1 for x in v if x > 2 * BASE[0] * 1000) / len(v) if BASE else None
    return {'n': len(v), 'med': pct(v, .5), 'p90': pct(v, .9), 'p99': pct(v, .99), 'p999': pct(v, .999),
            'mean': round(sum(v)/len(v)/1000, 1),
            'excess_ms': round((sum(v) / 1000 - len(v) * BASE[0]) / 1000, 1) if BASE else None, 'slow%': round(slow * 100, 2) if slow is not None else None}

def writes(h, seconds, seed, out):
    """QD1 writes for `seconds`; out gets (t0 monotonic ns, latency ns, 64K block)."""
    rng = random.Random(seed); bufs = [os.urandom(4096) for _ in range(16)]
    end = time.monotonic() + seconds; i = 0
    while True:
        off = rng.randrange(REGION // 4096) * 4096
        t0 = time.perf_counter_ns(); h.pwrite(bufs[i & 15], off); d = time.perf_counter_ns() - t0
        out.append((t0, d, off >> 16))
        i += 1
        if (i & 63) == 0 and time.monotonic() >= end: break

def main():
    os.makedirs(W, exist_ok=True); os.makedirs(SCR, exist_ok=True)
    disk = os.path.join(W, 'disk.raw')
    with open(disk, 'wb') as f:
        f.truncate(DISK); b = b'\x5a' * (1 << 20)
        for _ in range(REGION >> 20): f.write(b)
        os.fsync(f.fileno())
    qmp_p, nbd_p = os.path.join(W, 'qmp.sock'), os.path.join(W, 'nbd.sock')
    for p in (qmp_p, nbd_p):
        if os.path.exists(p): os.remove(p)
    qsd = subprocess.Popen(['qemu-storage-daemon', '--chardev', f'socket,id=mon,path={qmp_p},server=on,wait=off',
        '--monitor', 'chardev=mon', '--nbd-server', f'addr.type=unix,addr.path={nbd_p}',
        '--blockdev', f'driver=file,filename={disk},node-name=file0,cache.direct=on',
        '--blockdev', 'driver=raw,file=file0,node-name=disk0,cache.direct=on',
        '--export', 'type=nbd,id=guest0,node-name=disk0,name=disk0,writable=on'],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(W, 'qsd.log'), 'w'))
    for _ in range(500):
        if os.path.exists(qmp_p) and os.path.exists(nbd_p): break
        time.sleep(0.02)
    q = Qmp(qmp_p)
    h = nbd.NBD(); h.set_export_name('disk0'); h.connect_unix(nbd_p)
    out = {}
    try:
        for seed, var in enumerate(VARIANTS, start=1):
            opts = dict((x.split('=', 1) + [''])[:2] for x in var.split(',')[1:])
            kind = var.split(',')[0]
            path = os.path.join(opts.get('dir', SCR), f'scratch-{seed}')
            t_setup = time.monotonic()
            if kind != 'none':
                fcache = {}
                if 'noflush' in opts: fcache['no-flush'] = True
                if 'direct' in opts: fcache['direct'] = True
                q.cmd('blockdev-create', **{'job-id': 'mk', 'options': {'driver': 'file', 'filename': path, 'size': 0}}); q.job('mk')
                fnode = {'driver': 'file', 'node-name': 'tf', 'filename': path}
                if fcache: fnode['cache'] = fcache
                q.cmd('blockdev-add', **fnode)
                if kind == 'qcow2':
                    c = {'driver': 'qcow2', 'file': 'tf', 'size': DISK}
                    if 'lazy' in opts: c['lazy-refcounts'] = True
                    if 'cluster' in opts: c['cluster-size'] = int(opts['cluster'])
                    if 'prealloc' in opts: c['preallocation'] = opts['prealloc']
                    q.cmd('blockdev-create', **{'job-id': 'mk', 'options': c}); q.job('mk')
                    n = {'driver': 'qcow2', 'node-name': 'tgt', 'file': 'tf'}
                    if fcache: n['cache'] = fcache
                    q.cmd('blockdev-add', **n)
                    tgt = 'tgt'
                else:  # raw: size the file
                    q.cmd('block_resize', **{'node-name': 'tf', 'size': DISK})
                    tgt = 'tf'
                perf = {}
                if 'mincluster' in opts: perf['min-cluster-size'] = int(opts['mincluster'])
                if 'copyrange' in opts: perf['use-copy-range'] = True
                a = {'job-id': 'job', 'device': 'disk0', 'target': tgt, 'sync': 'none', 'filter-node-name': 'cbw',
                     'auto-finalize': True, 'auto-dismiss': True}
                if perf: a['x-perf'] = perf
                q.cmd('transaction', actions=[{'type': 'blockdev-backup', 'data': a}])
                q.cmd('blockdev-add', **{'driver': 'snapshot-access', 'node-name': 'snap', 'file': 'cbw', **({'discard': 'unmap'} if 'trim' in opts else {})})
                if 'trim' in opts:
                    # The view's reader gives back what it needs no more: discarding a range
                    # of the snapshot-access node ends its copy-before-write (qemu >= 7.1).
                    q.cmd('block-export-add', type='nbd', id='vexp', **{'node-name': 'snap'}, name='view', writable=True)
                    v = nbd.NBD(); v.set_export_name('view'); v.connect_unix(nbd_p)
                    step = 64 << 20
                    for o in range(0, REGION // 2, step): v.trim(step, o)
                    v.shutdown()
                    q.cmd('block-export-del', id='vexp')
                    while any(e.get('id') == 'vexp' for e in q.cmd('query-block-exports')): time.sleep(0.01)
            t_setup = time.monotonic() - t_setup
            rec = []
            AFTER = 6.0
            th = threading.Thread(target=writes, args=(h, SECS + AFTER, seed, rec)); th.start()
            time.sleep(SECS)
            t_view_end = time.perf_counter_ns()
            size = os.path.getsize(path) if kind != 'none' else 0
            du = os.stat(path).st_blocks * 512 if kind != 'none' else 0
            t_td = time.monotonic()
            if kind != 'none':
                q.cmd('blockdev-del', **{'node-name': 'snap'})
                q.cmd('job-cancel', id='job')
                while any(j['id'] == 'job' for j in q.cmd('query-jobs')): time.sleep(0.01)
                t_del = time.monotonic()
                if kind == 'qcow2': q.cmd('blockdev-del', **{'node-name': 'tgt'})
                q.cmd('blockdev-del', **{'node-name': 'tf'})
                t_del = time.monotonic() - t_del
                os.remove(path)
            t_td = time.monotonic() - t_td
            t_td_end = time.perf_counter_ns()
            th.join()
            seen = set(); first, rest, during_td, after = [], [], [], []
            first_trimmed, first_kept = [], []
            for (t0, d, c) in rec:
                if t0 >= t_td_end: after.append(d)
                elif t0 >= t_view_end: during_td.append(d)
                elif kind != 'none' and c not in seen:
                    seen.add(c); first.append(d)
                    if 'trim' in opts: (first_trimmed if (c << 16) < REGION // 2 else first_kept).append(d)
                else: rest.append(d)
            if kind == 'none': t_del = 0; BASE.append(pct(sorted(rest), .5))
            r = {'first': stats(first), 'rest': stats(rest), 'all': stats(first + rest),
                 'teardown': stats(during_td), 'after': stats(after),
                 'first_trimmed': stats(first_trimmed), 'first_kept': stats(first_kept),
                 'setup_s': round(t_setup, 3), 'teardown_s': round(t_td, 3), 'del_s': round(t_del, 3), 'scratch_du_mib': du >> 20}
            out[var] = r
            print(var, json.dumps(r), flush=True)
    finally:
        h.shutdown(); q.s.close(); qsd.kill(); qsd.wait(); os.remove(disk)

main()
