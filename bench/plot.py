#!/usr/bin/env python3
"""Chart of a `vdrep-bench replicate` result: source MB/s and CPU per GiB, per link and tool.

Usage: bench/.venv/bin/python bench/plot.py bench/results/replicate.json  (writes replicate.png)
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; DejaVu Sans ships with matplotlib, so no font lookup
import matplotlib.pyplot as plt  # noqa: E402


def main(path: str) -> None:
    data = json.loads(Path(path).read_text())
    summ = data["summary"]
    shapes = list(dict.fromkeys(s["shape"] for s in summ))
    tools = list(dict.fromkeys(s["label"] for s in summ))
    colors = ["#d62728", "#1f77b4", "#9ecae1", "#2ca02c", "#ff7f0e"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.8 / max(len(tools), 1)
    for i, tool in enumerate(tools):
        xs, mbps, cpu_s, cpu_r = [], [], [], []
        for j, shape in enumerate(shapes):
            s = next((x for x in summ if x["shape"] == shape and x["label"] == tool), None)
            if s is None:
                continue
            xs.append(j + (i - (len(tools) - 1) / 2) * width)
            mbps.append(s["source_mbps"])
            cpu_s.append(s["sender_cpu_s_per_gib"])
            cpu_r.append(s["receiver_cpu_s_per_gib"])
        c = colors[i % len(colors)]
        bars = ax1.bar(xs, mbps, width, label=tool, color=c)
        ax1.bar_label(bars, fmt="%.0f", fontsize=7)
        ax2.bar(xs, cpu_s, width, color=c, label=f"{tool} (sender)")
        ax2.bar(xs, cpu_r, width, bottom=cpu_s, color=c, alpha=0.45, hatch="//")
    sizes = {s["shape"]: s["image_bytes"] / 2**30 for s in summ}
    labels = [f"{sh}\n({sizes[sh]:g} GiB)" for sh in shapes]
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(shapes)), labels)
    ax1.set_yscale("log")
    ax1.set_ylabel("source MB/s (log scale, higher is better)")
    ax1.set_title("Initial replication throughput")
    ax1.legend(fontsize=8)
    ax2.set_ylabel("CPU s per GiB (solid: sender, hatched: receiver)")
    ax2.set_title("CPU cost")
    runs = data.get("runs", "?")
    fig.suptitle(f"vdrep-bench replicate — median of {runs} run(s), {data['environment']['date_utc']}")
    fig.tight_layout()
    out = Path(path).with_suffix(".png")
    fig.savefig(out, dpi=110)
    print(f"chart: {out}")


if __name__ == "__main__":
    main(sys.argv[1])
