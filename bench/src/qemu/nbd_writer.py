#!/usr/bin/python3
"""The guest of vdrep-bench's qemu benchmarks: writes through an NBD export of
qemu-storage-daemon with python3-libnbd (Debian python3-libnbd), one request at a time.

  nbd_writer.py latency SOCKET EXPORT REGION_BYTES SECONDS SEED
      4 KiB writes at random 4 KiB-aligned offsets of [0, REGION_BYTES), queue depth 1,
      for SECONDS; prints one JSON object: the count and the latency percentiles (us).
  nbd_writer.py blocks SOCKET EXPORT CONTENT_FILE SLOTS_FILE
      writes 64 KiB block i of CONTENT_FILE at 64 KiB slot SLOTS[i] (one slot number per
      line); prints {"writes": N, "bytes": B}.
"""
import json
import math
import os
import random
import sys
import time

import nbd

BLOCK = 4096
BIG = 64 << 10


def connect(sock, export):
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_unix(sock)
    return h


def pct(sorted_ns, p):
    """Nearest-rank percentile, in microseconds."""
    i = max(0, min(len(sorted_ns) - 1, math.ceil(p * len(sorted_ns)) - 1))
    return sorted_ns[i] / 1000.0


def latency(sock, export, region, seconds, seed):
    h = connect(sock, export)
    rng = random.Random(seed)
    bufs = [os.urandom(BLOCK) for _ in range(16)]
    slots = region // BLOCK
    lat = []
    end = time.monotonic() + seconds
    i = 0
    while True:
        off = rng.randrange(slots) * BLOCK
        t0 = time.perf_counter_ns()
        h.pwrite(bufs[i % 16], off)
        t1 = time.perf_counter_ns()
        lat.append(t1 - t0)
        i += 1
        if (i & 63) == 0 and time.monotonic() >= end:
            break
    h.shutdown()
    lat.sort()
    out = {
        "writes": len(lat),
        "seconds": seconds,
        "median_us": pct(lat, 0.5),
        "p90_us": pct(lat, 0.9),
        "p99_us": pct(lat, 0.99),
        "p999_us": pct(lat, 0.999),
        "max_us": lat[-1] / 1000.0,
        "mean_us": sum(lat) / len(lat) / 1000.0,
    }
    print(json.dumps(out))


def blocks(sock, export, content, slots_file):
    h = connect(sock, export)
    with open(slots_file) as f:
        slots = [int(x) for x in f.read().split()]
    n = 0
    with open(content, "rb") as c:
        for s in slots:
            b = c.read(BIG)
            if len(b) < BIG:
                break
            h.pwrite(b, s * BIG)
            n += 1
    h.flush()
    h.shutdown()
    print(json.dumps({"writes": n, "bytes": n * BIG}))


def main():
    mode = sys.argv[1]
    if mode == "latency":
        latency(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]))
    elif mode == "blocks":
        blocks(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    else:
        sys.exit("usage: nbd_writer.py latency|blocks ...")


if __name__ == "__main__":
    main()
