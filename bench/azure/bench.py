#!/usr/bin/env python3
"""Azure sink benchmark: vdrep (sender -> QUIC -> receiver -> Azurite) against the Python
azure-storage-blob SDK uploading the same image with `upload_page` in 4 MiB pages and
skipping all-zero 4 MiB chunks (as AzCopy does), one thread and four threads, in the same
run and against the same Azurite build. Reports MB/s of source data (decimal), Put Page
count (from Azurite's debug log) and Azurite's CPU seconds (from /proc).

Usage: bench/.venv-azure/bin/python bench/azure/bench.py [--size-mib N] [--out bench/results]
Needs: cargo build --release --bins; bash ops/setup.sh (Azurite);
       python3 -m venv bench/.venv-azure && bench/.venv-azure/bin/pip install azure-storage-blob
"""
import argparse, json, os, random, resource, shutil, socket, subprocess, sys, tempfile, threading, time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CHUNK = 4 << 20


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def cpu_secs(pid):
    # utime + stime of the process and its waited-for children, in seconds
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in parts[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


class Azurite:
    def __init__(self, tmp):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(dir=tmp)
        self.log = os.path.join(self.dir, "debug.log")
        self.p = subprocess.Popen([os.path.join(ROOT, "ops/node_modules/.bin/azurite-blob"),
            "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", self.dir,
            "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--debug", self.log],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close(); break
            except OSError:
                time.sleep(0.1)
        self.url = f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    def put_pages(self):
        n = 0
        with open(self.log, errors="replace") as f:
            for line in f:
                if "PageBlob_UploadPages" in line and "RequestHandler" not in line and "Operation=" in line:
                    n += 1
        return n

    def stop(self):
        self.p.terminate(); self.p.wait()


def make_image(path, size):
    """The realistic mix of DESIGN §5: 25 % zero, 25 % random, 50 % text, in 1 MiB runs."""
    rnd = random.Random(42)
    words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz ") for _ in range(rnd.randint(3, 9))) for _ in range(2000)]
    text = b" ".join(rnd.choice(words) for _ in range(400000))[: 1 << 20]
    with open(path, "wb") as f:
        for i in range(size >> 20):
            k = rnd.random()
            if k < 0.25:
                f.seek(1 << 20, 1)
            elif k < 0.5:
                f.write(os.urandom(1 << 20))
            else:
                f.write(text)
        f.truncate(size)


def sdk_upload(url, container, path, size, threads, blob):
    from azure.storage.blob import BlobServiceClient
    conn = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={url};")
    svc = BlobServiceClient.from_connection_string(conn)
    try:
        svc.create_container(container)
    except Exception:
        pass
    bc = svc.get_blob_client(container, blob)
    total = (size + (1 << 20) - 1) // (1 << 20) * (1 << 20) + 512
    bc.create_page_blob(total)
    zero = bytes(CHUNK)
    sent = [0]
    lock = threading.Lock()

    def one(off):
        with open(path, "rb") as f:
            f.seek(off)
            data = f.read(CHUNK)
        if len(data) % 512:
            data += bytes(512 - len(data) % 512)
        if data == zero[: len(data)]:
            return
        bc.upload_page(data, offset=off, length=len(data))
        with lock:
            sent[0] += 1

    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, range(0, size, CHUNK)))
    return sent[0]


def vdrep_run(url, container, path, tmp, log=None):
    # VDREP_BIN: another build to compare (e.g. an older tree's), as bench/rss/local.sh takes.
    vdrep = os.environ.get("VDREP_BIN") or os.path.join(ROOT, "target/release/vdrep")
    # VDREP_SENDER_BIN: the sender's build when it must differ from the receiver's (compare
    # two receivers behind one sender: the sender's adaptive level sets what they decompress).
    sender = os.environ.get("VDREP_SENDER_BIN") or vdrep
    tls = os.path.join(tmp, "tls")
    if not os.path.exists(tls):
        subprocess.run([vdrep, "certs", "init", tls, "--sender", "bench"], check=True, capture_output=True)
    # --receiver-log: the receiver's Put Page statistics (sink/azure/stats.rs) go to a file.
    env = dict(os.environ, VDREP_AZURE_KEY=KEY,
               VDREP_LOG=os.environ.get("BENCH_RECEIVER_LOG_FILTER", "warn,vdrep::sink::azure=debug") if log else "warn")
    err = open(log, "w") if log else subprocess.DEVNULL
    # BENCH_RECEIVER_WRAP: a command to run the receiver under, e.g. "heaptrack -o /tmp/rx".
    wrap = os.environ.get("BENCH_RECEIVER_WRAP", "").split()
    rc = subprocess.Popen(wrap + [vdrep, "receive", "--listen", "127.0.0.1:0", "--tls", tls,
        "--allow", "bench=benchvm", "--azure-url", url, "--azure-container", container],
        stdout=subprocess.PIPE, stderr=err, env=env, text=True)
    line = rc.stdout.readline()
    while line and not line.startswith("listening on "):  # a wrapper's own lines
        line = rc.stdout.readline()
    addr = line.strip().removeprefix("listening on ")
    t0 = time.time(); c0 = cpu_secs(rc.pid)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The sender's state (jobs, health) in the run's folder, never the invoking user's.
    subprocess.run([sender, "send", "--to", addr, "--tls", tls, "--identity", "bench", "--vm", "benchvm",
        "--state", os.path.join(tmp, "sender-state"), "--no-progress", path], check=True, capture_output=True)
    dt = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the sender: the only child waited for
    scpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    rcpu = cpu_secs(rc.pid) - c0
    with open(f"/proc/{rc.pid}/status") as f:
        hwm = [l for l in f if l.startswith("VmHWM:")]
    rss_mib = int(hwm[0].split()[1]) // 1024 if hwm else None
    if wrap:  # the receiver itself exits on SIGTERM (so that e.g. heaptrack writes its file)
        for child in subprocess.run(["pgrep", "-P", str(rc.pid)], capture_output=True, text=True).stdout.split():
            os.kill(int(child), 15)
    else:
        rc.terminate()
    rc.wait()
    return dt, rcpu, rss_mib, scpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results"))
    ap.add_argument("--receiver-log", help="write the receiver's debug log (Put Page statistics) here")
    ap.add_argument("--skip-1-thread", action="store_true", help="iterations: only the 4-thread baseline")
    ap.add_argument("--vdrep-only", action="store_true",
                    help="iterations on vdrep (e.g. its peak RSS): no SDK baseline, no results files")
    a = ap.parse_args()
    size = a.size_mib << 20
    tmp = tempfile.mkdtemp(prefix="vdrep-azbench-")
    try:
        img = os.path.join(tmp, "disk0.raw")
        make_image(img, size)
        rows = []
        runs = [
            ("python-sdk upload_page 1 thread", lambda u: (sdk_upload(u, "sdk1", img, size, 1, "d.vhd"), None)),
            ("python-sdk upload_page 4 threads", lambda u: (sdk_upload(u, "sdk4", img, size, 4, "d.vhd"), None)),
            ("vdrep send -> receive --azure-url", lambda u: (None, vdrep_run(u, "vdrep", img, tmp, a.receiver_log))),
        ]
        if a.skip_1_thread:
            runs = runs[1:]
        if a.vdrep_only:
            runs = runs[-1:]
        for name, fn in runs:
            az = Azurite(tmp)
            c0 = cpu_secs(az.p.pid); t0 = time.time()
            pages, v = fn(az.url)
            dt = time.time() - t0
            if v is not None:
                dt = v[0]
            acpu = cpu_secs(az.p.pid) - c0
            time.sleep(0.5)
            rows.append({"name": name, "seconds": round(dt, 2), "MB_per_s": round(size / dt / 1e6, 1),
                         "put_pages": az.put_pages(), "azurite_cpu_s": round(acpu, 2),
                         "receiver_cpu_s": round(v[1], 2) if v else None,
                         "sender_cpu_s": round(v[3], 2) if v else None,
                         "receiver_peak_rss_mib": v[2] if v else None})
            az.stop()
            print(json.dumps(rows[-1]), flush=True)
        if a.vdrep_only:
            return
        base = rows[-2]["MB_per_s"]
        res = {"image_bytes": size, "mix": "25% zero, 25% random, 50% text (1 MiB runs)", "rows": rows,
               "vdrep_vs_sdk_4_threads": round(rows[-1]["MB_per_s"] / base, 2)}
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "azure.json"), "w") as f:
            json.dump(res, f, indent=2)
        with open(os.path.join(a.out, "azure.md"), "w") as f:
            f.write(f"# Azure sink into Azurite, {size >> 20} MiB realistic image\n\n")
            f.write("| run | s | MB/s (source) | Put Pages | Azurite CPU s | receiver CPU s | receiver peak RSS MiB | sender CPU s |\n|---|---|---|---|---|---|---|---|\n")
            for r in rows:
                f.write(f"| {r['name']} | {r['seconds']} | {r['MB_per_s']} | {r['put_pages']} | {r['azurite_cpu_s']} | {r['receiver_cpu_s'] or ''} | {r['receiver_peak_rss_mib'] or ''} | {r['sender_cpu_s'] or ''} |\n")
            f.write(f"\nvdrep / SDK 4 threads: **{res['vdrep_vs_sdk_4_threads']}x**\n")
        print(json.dumps(res, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
