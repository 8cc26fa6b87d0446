#!/usr/bin/python3
"""What a living view's *drain* costs each guest write (session 16, issue 18, P): the rig of
`cbw_rig.py` with a reader that drains the view as vdrep's spool does, without a sender.

  drain_rig.py WORKDIR SCRATCHDIR VARIANT...

Starts qemu-storage-daemon over a raw disk of 4 GiB whose first 1 GiB is written
(`cache.direct=on`, as `vdrep-bench qemu-latency`). Per VARIANT, while 4 KiB random writes at
queue depth 1 run over the 1 GiB (python3-libnbd, this process): takes a view the way vdrep
does (scratch qcow2 with `cache.no-flush`, `blockdev-backup sync=none` in a transaction, a
`snapshot-access` node opened `discard=unmap`, exported writable over NBD), drains the whole
region from it in a child process (libnbd, `depth` reads of `size` bytes in flight, each
whole read trimmed once in hand, as `NbdView::drain`), removes the view. Prints one JSON line
per variant: the drain's seconds (the view's life), the writes inside the view (count,
median, p99, above 2x the baseline median, above 400 us, the guest's time lost) and the
first writes to a 64 KiB block among them.

VARIANT: `none` (no view: the baseline, name it first; 3 s of writes) or
`d=DEPTH,s=SIZE_KIB[,notrim][,gap=US]`: `gap` sleeps that long after each completed read
before the next is started (a paced drain), or `backup[,warm=S][,w=N][,c=KIB]` (session 18): instead of a
view and a drain, qemu copies the dirty blocks itself — a dirty bitmap added, S seconds
(default 30) of the guest's writes, then in one transaction a new bitmap, the old one
disabled and `blockdev-backup sync=bitmap bitmap-mode=never` into a sparse local raw file;
the "view" lives until the job concludes (P's candidate of session 16).
"""
import json, math, os, subprocess, sys, threading, time
import random, resource
import nbd

if len(sys.argv) > 1 and sys.argv[1] == '--drain':
    # Child: drain `view` on `sock`.
    sock, depth, size, trim, gap = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == '1', float(sys.argv[6])
    region = int(sys.argv[7])
    h = nbd.NBD(); h.set_export_name('view'); h.connect_unix(sock)
    fl = []
    off = 0
    t0 = time.monotonic_ns()
    while off < region or fl:
        while len(fl) < depth and off < region:
            b = nbd.Buffer(size)
            fl.append((h.aio_pread(b, off), off, b)); off += size
        c, o, b = fl.pop(0)
        while not h.aio_command_completed(c):
            h.poll(-1)
        if trim:
            h.aio_trim(size, o)
        if gap > 0:
            time.sleep(gap / 1e6)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    t1 = time.monotonic_ns()
    h.shutdown()
    print(json.dumps({'t0': t0, 't1': t1, 'pid': os.getpid()}))
    sys.exit(0)

W, SCR = sys.argv[1], sys.argv[2]
VARIANTS = sys.argv[3:]
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
            if 'event' not in l:
                return l

    def cmd(s, c, **a):
        s.f.write(json.dumps({'execute': c, 'arguments': a}).encode() + b'\n'); s.f.flush()
        r = s.read()
        if 'error' in r:
            raise RuntimeError(f'{c}: {r["error"]}')
        return r['return']

    def job(s, jid):
        while True:
            j = [x for x in s.cmd('query-jobs') if x['id'] == jid]
            if j and j[0]['status'] == 'concluded':
                err = j[0].get('error'); s.cmd('job-dismiss', id=jid)
                if err:
                    raise RuntimeError(err)
                return
            time.sleep(0.01)


import socket  # noqa: E402


def pct(v, p):
    return v[max(0, min(len(v) - 1, math.ceil(p * len(v)) - 1))] / 1000.0


def stats(v):
    v = sorted(v)
    if not v:
        return {}
    base = BASE[0] if BASE else None
    r = {'n': len(v), 'med': pct(v, .5), 'p90': pct(v, .9), 'p99': pct(v, .99),
         'mean': round(sum(v) / len(v) / 1000, 1),
         'over400': sum(1 for x in v if x > 400_000)}
    if base:
        r['slow'] = sum(1 for x in v if x > 2 * base * 1000)
        r['lost_ms'] = round((sum(v) / 1000 - len(v) * base) / 1000, 1)
    return r


class Writer(threading.Thread):
    """QD1 writes until stopped; `rec` gets (t0 monotonic ns, latency ns, 64K block, offset)."""

    def __init__(s, h):
        super().__init__(daemon=True); s.h = h; s.rec = []; s.stop = False

    def run(s):
        with open(os.path.join(W, 'writer.tid'), 'w') as f:
            f.write(str(threading.get_native_id()))
        rng = random.Random(1); bufs = [os.urandom(4096) for _ in range(16)]; i = 0
        while not s.stop:
            off = rng.randrange(REGION // 4096) * 4096
            t0 = time.monotonic_ns(); s.h.pwrite(bufs[i & 15], off); d = time.monotonic_ns() - t0
            s.rec.append((t0, d, off >> 16, off)); i += 1


def in_window(wr, t_view, t_end):
    """The latencies of the writes started in [t_view, t_end), and of those among them that
    were the first to their 64 KiB block."""
    seen = set(); first, allw = [], []
    for (t, lat, c, _) in list(wr.rec):
        if t_view <= t < t_end:
            allw.append(lat)
            if c not in seen:
                seen.add(c); first.append(lat)
    return allw, first


def proc_cpu(pid):
    """CPU-s (user + system) process `pid` has used."""
    f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK')


def take_view(q, path):
    q.cmd('blockdev-create', **{'job-id': 'mk', 'options': {'driver': 'file', 'filename': path, 'size': 0}}); q.job('mk')
    cache = {'direct': False, 'no-flush': True}
    q.cmd('blockdev-add', **{'driver': 'file', 'node-name': 'tf', 'filename': path, 'cache': cache})
    q.cmd('blockdev-create', **{'job-id': 'mk', 'options': {'driver': 'qcow2', 'file': 'tf', 'size': DISK}}); q.job('mk')
    q.cmd('blockdev-add', **{'driver': 'qcow2', 'node-name': 'tgt', 'file': 'tf', 'cache': cache})
    t = time.monotonic_ns()
    q.cmd('transaction', actions=[{'type': 'blockdev-backup', 'data': {
        'job-id': 'job', 'device': 'disk0', 'target': 'tgt', 'sync': 'none', 'filter-node-name': 'cbw',
        'auto-finalize': True, 'auto-dismiss': True}}])
    q.cmd('blockdev-add', **{'driver': 'snapshot-access', 'node-name': 'snap', 'file': 'cbw', 'discard': 'unmap'})
    q.cmd('block-export-add', type='nbd', id='vexp', **{'node-name': 'snap'}, name='view', writable=True)
    return t


def perf_of(opts):
    """`w=N` (block-copy's workers, qemu's default 64) and `c=KIB` (its largest chunk,
    default unlimited) as `blockdev-backup`'s `x-perf`."""
    p = {}
    if 'w' in opts:
        p['max-workers'] = int(opts['w'])
    if 'c' in opts:
        p['max-chunk'] = int(opts['c']) << 10
    return {'x-perf': p} if p else {}


def backup(q, path, warm, qsd_pid, perf):
    """Variant `backup`: qemu copies the bitmap's dirty blocks into a local raw file."""
    q.cmd('block-dirty-bitmap-add', node='disk0', name='bm0')
    time.sleep(warm)
    q.cmd('blockdev-create', **{'job-id': 'mk', 'options': {'driver': 'file', 'filename': path, 'size': DISK}}); q.job('mk')
    cache = {'direct': False, 'no-flush': True}
    q.cmd('blockdev-add', **{'driver': 'file', 'node-name': 'tf', 'filename': path, 'cache': cache})
    # qemu-storage-daemon has no devices (`query-block` is empty): ask the node.
    dirty = [b for n in q.cmd('query-named-block-nodes') if n.get('node-name') == 'disk0'
             for b in n.get('dirty-bitmaps', []) if b.get('name') == 'bm0']
    cpu0 = proc_cpu(qsd_pid)
    t = time.monotonic_ns()
    q.cmd('transaction', actions=[
        {'type': 'block-dirty-bitmap-add', 'data': {'node': 'disk0', 'name': 'bm1'}},
        {'type': 'block-dirty-bitmap-disable', 'data': {'node': 'disk0', 'name': 'bm0'}},
        {'type': 'blockdev-backup', 'data': {
            'job-id': 'job', 'device': 'disk0', 'target': 'tf', 'sync': 'bitmap', 'bitmap': 'bm0',
            'bitmap-mode': 'never', 'auto-finalize': True, 'auto-dismiss': False, **perf}}])
    q.job('job')
    t1 = time.monotonic_ns()
    cpu = proc_cpu(qsd_pid) - cpu0
    q.cmd('blockdev-del', **{'node-name': 'tf'})
    q.cmd('block-dirty-bitmap-remove', node='disk0', name='bm0')
    q.cmd('block-dirty-bitmap-remove', node='disk0', name='bm1')
    alloc = os.stat(path).st_blocks * 512
    os.remove(path)
    return t, t1, (dirty[0]['count'] if dirty else None), alloc, cpu


def drop_view(q, path):
    q.cmd('block-export-del', id='vexp', mode='hard')
    while any(e.get('id') == 'vexp' for e in q.cmd('query-block-exports')):
        time.sleep(0.005)
    q.cmd('blockdev-del', **{'node-name': 'snap'})
    q.cmd('job-cancel', id='job')
    while any(j['id'] == 'job' for j in q.cmd('query-jobs')):
        time.sleep(0.005)
    q.cmd('blockdev-del', **{'node-name': 'tgt'})
    q.cmd('blockdev-del', **{'node-name': 'tf'})
    os.remove(path)


def main():
    os.makedirs(W, exist_ok=True); os.makedirs(SCR, exist_ok=True)
    for n in ('windows.txt', 'writes.txt'):
        if os.path.exists(os.path.join(W, n)):
            os.remove(os.path.join(W, n))
    disk = os.path.join(W, 'disk.raw')
    with open(disk, 'wb') as f:
        f.truncate(DISK); b = b'\x5a' * (1 << 20)
        for _ in range(REGION >> 20):
            f.write(b)
        os.fsync(f.fileno())
    qmp_p, nbd_p = os.path.join(W, 'qmp.sock'), os.path.join(W, 'nbd.sock')
    for p in (qmp_p, nbd_p):
        if os.path.exists(p):
            os.remove(p)
    qsd = subprocess.Popen(['qemu-storage-daemon', '--chardev', f'socket,id=mon,path={qmp_p},server=on,wait=off',
        '--monitor', 'chardev=mon', '--nbd-server', f'addr.type=unix,addr.path={nbd_p}',
        '--blockdev', f'driver=file,filename={disk},node-name=file0,cache.direct=on',
        '--blockdev', 'driver=raw,file=file0,node-name=disk0,cache.direct=on',
        '--export', 'type=nbd,id=guest0,node-name=disk0,name=disk0,writable=on'],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(W, 'qsd.log'), 'w'))
    with open(os.path.join(W, 'qsd.pid'), 'w') as f:
        f.write(str(qsd.pid))
    for _ in range(500):
        if os.path.exists(qmp_p) and os.path.exists(nbd_p):
            break
        time.sleep(0.02)
    q = Qmp(qmp_p)
    h = nbd.NBD(); h.set_export_name('disk0'); h.connect_unix(nbd_p)
    wr = Writer(h); wr.start()
    try:
        for i, var in enumerate(VARIANTS):
            opts = dict((x.split('=', 1) + [''])[:2] for x in var.split(','))
            time.sleep(1.0)
            if var == 'none':
                a = time.monotonic_ns(); time.sleep(3.0); b = time.monotonic_ns()
                inside = [x[1] for x in list(wr.rec) if a <= x[0] < b]
                BASE.append(pct(sorted(inside), .5))
                print(var, json.dumps({'all': stats(inside)}), flush=True)
                continue
            path = os.path.join(SCR, f'scratch-{i}')
            if var.startswith('backup'):
                t_view, t_end, dirty, alloc, qcpu = backup(q, path, float(opts.get('warm', '30')), qsd.pid, perf_of(opts))
                allw, first = in_window(wr, t_view, t_end)
                r = {'job_s': round((t_end - t_view) / 1e9, 3), 'qsd_cpu_s': round(qcpu, 2),
                     'dirty_bytes': dirty, 'target_bytes': alloc,
                     'all': stats(allw), 'first': stats(first)}
                print(var, json.dumps(r), flush=True)
                with open(os.path.join(W, 'windows.txt'), 'a') as f:
                    f.write(f'{var} {t_view} {t_end} 0\n')
                continue
            cpu0 = proc_cpu(qsd.pid); ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t_view = take_view(q, path)
            p = subprocess.run([sys.executable, __file__, '--drain', nbd_p, opts['d'], str(int(opts['s']) << 10),
                                '0' if 'notrim' in opts else '1', opts.get('gap', '0'), str(REGION)],
                               capture_output=True, text=True, check=True)
            d = json.loads(p.stdout)
            drop_view(q, path)
            t_end = time.monotonic_ns()
            cpu1 = proc_cpu(qsd.pid); ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            drain_cpu = (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
            allw, first = in_window(wr, t_view, t_end)
            r = {'drain_s': round((d['t1'] - d['t0']) / 1e9, 3), 'view_s': round((t_end - t_view) / 1e9, 3),
                 'qsd_cpu_s': round(cpu1 - cpu0, 2), 'drain_cpu_s': round(drain_cpu, 2),
                 'all': stats(allw), 'first': stats(first)}
            print(var, json.dumps(r), flush=True)
            with open(os.path.join(W, 'windows.txt'), 'a') as f:
                f.write(f'{var} {t_view} {t_end} {d["pid"]}\n')
    finally:
        wr.stop = True; wr.join()
        with open(os.path.join(W, 'writes.txt'), 'w') as f:
            f.writelines(f'{t} {d} {c} {o}\n' for (t, d, c, o) in wr.rec)
        h.shutdown(); q.s.close(); qsd.kill(); qsd.wait(); os.remove(disk)


main()
