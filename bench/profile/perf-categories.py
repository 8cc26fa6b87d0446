#!/usr/bin/env python3
# Sorts the samples of a `perf record -g` profile (e.g. bench/profile/perf-copy.sh) into cost
# items by leaf symbol and call chain: hashing, crypto, zstd, the socket, page-cache and source
# copies, checkpoints, quinn, the scheduler. Usage:
#   perf script -i OUT/recv.data | bench/profile/perf-categories.py [CPU_SECONDS]
# CPU_SECONDS (samples / frequency) adds seconds per item. Each line lists its top 3 leaves.
import sys, re, collections
def samples(f):
    cur=[]
    for line in f:
        line=line.rstrip('\n')
        if not line.strip():
            if cur: yield cur
            cur=[]; continue
        if line.startswith((' ','\t')):
            m=re.match(r'\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)$',line)
            if m:
                name=re.sub(r'\+0x[0-9a-f]+$','',m.group(1))
                cur.append(('[k]' if 'kallsyms' in m.group(2) else '')+name)
            else: cur.append(line.strip())
        else:
            cur=[]
            cur.append('HDR '+line)
    if cur: yield cur
def classify(st):
    leaf=st[1] if len(st)>1 else '?'
    s=' | '.join(st[1:])
    if 'blake3' in leaf or 'blake3' in s.split(' | ')[0]: return 'hash: blake3'
    if re.search(r'aesni|gcm|ghash|ring_core|aes_hw|chacha|_x86_64_AES|ecp_nistz',leaf): return 'crypto: aes-gcm'
    if 'ZSTD' in leaf or 'zstd' in leaf.lower(): return 'zstd'
    if 'sys_pwrite' in s or 'pwritev' in s or 'ksys_pwrite' in s or 'do_iter_write' in s and 'ext4' in s:
        if re.search(r'rep_movs|copy_folio|_copy_from_iter',leaf): return 'sys: pwrite copy into page cache'
        return 'sys: pwrite other (ext4, folios)'
    if 'fadvise' in s: return 'sys: fadvise (drops)'
    if 'fdatasync' in s or 'fsync' in s: return 'sys: fdatasync'
    if 'recvmmsg' in s or 'recvmsg' in s or '__sys_recv' in s:
        if re.search(r'rep_movs|copy_to_iter|_copy_to',leaf): return 'sys: udp recv copy'
        return 'sys: udp recv other'
    if 'sendmsg' in s or 'sendmmsg' in s:
        if re.search(r'rep_movs|copy_from_iter|_copy_from|csum',leaf): return 'sys: udp send copy'
        if re.search(r'net_rx|__netif_receive|udp_rcv|udp_queue_rcv|ip_rcv|do_softirq|__udp4_lib_rcv',s): return 'sys: udp send->loopback rx path'
        return 'sys: udp send other'
    if 'sys_pread' in s or 'io_uring' in s or 'sys_read' in s or 'filemap_read' in s:
        if re.search(r'rep_movs|copy',leaf): return 'sys: read copy (source)'
        return 'sys: read other'
    if re.search(r'futex|sched|schedule|finish_task_switch|epoll|nanosleep|poll_schedule',s) and leaf.startswith(('finish_task','_raw_spin','__schedule','native','futex','schedule','raw_spin')): return 'sys: sched/futex/epoll'
    if 'madvise' in s or 'munmap' in s or 'mmap' in s or 'page_fault' in s or 'exc_page_fault' in s: return 'sys: mm (faults, mmap)'
    if leaf.startswith('[k]') or 'entry_SYSCALL' in s or 'do_syscall' in s: return 'sys: other kernel'
    if 'memmove' in leaf or 'memcpy' in leaf:
        if 'read_body' in s: return 'copy: memmove read_body'
        if 'quinn' in s: return 'copy: memmove quinn'
        return 'copy: memmove other'
    if 'quinn_proto' in leaf or 'quinn::' in leaf: return 'quinn bookkeeping'
    if 'tokio' in leaf: return 'tokio'
    if re.search(r'malloc|free|_int_|cfree|realloc',leaf): return 'malloc/free'
    return 'other user'
cnt=collections.Counter(); tot=0
leafs=collections.defaultdict(collections.Counter)
for st in samples(sys.stdin):
    c=classify(st); cnt[c]+=1; tot+=1; leafs[c][st[1] if len(st)>1 else '?']+=1
sec=float(sys.argv[1]) if len(sys.argv)>1 else 0
for c,n in cnt.most_common():
    top=', '.join(f'{k[:40]} {v*100/tot:.1f}' for k,v in leafs[c].most_common(3))
    print(f'{n*100/tot:5.1f} %  {c:36s} {("%.2f s"%(sec*n/tot)) if sec else ""}   [{top}]')
print('samples',tot)
