#!/usr/bin/python3
"""The guest of vdrep-bench's qemu benchmarks: writes through an NBD export of
qemu-storage-daemon with python3-libnbd (Debian python3-libnbd), one request at a time.

  nbd_writer.py latency SOCKET EXPORT REGION_BYTES SECONDS SEED [TRACE_FILE]
      4 KiB writes at random 4 KiB-aligned offsets of [0, REGION_BYTES), queue depth 1,
      for SECONDS; prints one JSON object: the count and the latency percentiles (us).
      With TRACE_FILE, also every write, for the bench to attribute slow writes to the
      sender's views: N = the count, then N int64 start times (Unix ns), N uint32
      latencies (ns, saturated) and N uint32 offsets (in 4 KiB units), all little-endian.
  nbd_writer.py blocks SOCKET EXPORT CONTENT_FILE SLOTS_FILE
      writes 64 KiB block i of CONTENT_FILE at 64 KiB slot SLOTS[i] (one slot number per
      line); prints {"writes": N, "bytes": B}.
"""
import array
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


def latency(sock, export, region, seconds, seed, trace=None):
    h = connect(sock, export)
    rng = random.Random(seed)
    bufs = [os.urandom(BLOCK) for _ in range(16)]
    slots = region // BLOCK
    lat = []
    starts = array.array("q")
    slot_of = array.array("I")
    # perf_counter_ns times the writes; its offset to the Unix clock (taken once) places
    # them on the sender log's time line.
    unix0, perf0 = time.time_ns(), time.perf_counter_ns()
    end = time.monotonic() + seconds
    i = 0
    while True:
        slot = rng.randrange(slots)
        t0 = time.perf_counter_ns()
        h.pwrite(bufs[i % 16], slot * BLOCK)
        t1 = time.perf_counter_ns()
        lat.append(t1 - t0)
        if trace:
            starts.append(unix0 + t0 - perf0)
            slot_of.append(slot)
        i += 1
        if (i & 63) == 0 and time.monotonic() >= end:
            break
    h.shutdown()
    if trace:
        lats = array.array("I", (min(x, 0xFFFFFFFF) for x in lat))
        with open(trace, "wb") as f:
            for a in (starts, lats, slot_of):
                if sys.byteorder != "little":
                    a.byteswap()
                a.tofile(f)
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
        trace = sys.argv[7] if len(sys.argv) > 7 else None
        latency(
            sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), trace
        )
    elif mode == "blocks":
        blocks(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    else:
        sys.exit("usage: nbd_writer.py latency|blocks ...")


if __name__ == "__main__":
    main()
