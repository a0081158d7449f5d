"""``kv bench --plot``: each target's latency percentiles and throughput, side by side, as a PNG.

matplotlib is optional (``pip install 'kvstore[bench]'``) and imported only when a plot is drawn.
"""

from __future__ import annotations

import math
from typing import Any


def plot_report(report: dict[str, Any], path: str) -> None:
    """Latency percentiles (log scale) and throughput of each target, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    targets = report["targets"]
    names = [f"{t['name']} {t['address']}" for t in targets]
    marks = ["p50", "p90", "p99", "p99.9", "max"]
    figure, (latency_axes, throughput_axes) = plt.subplots(1, 2, figsize=(11, 4.5))
    width = 0.8 / max(len(targets), 1)
    for i, (target, name) in enumerate(zip(targets, names, strict=True)):
        xs = [x + i * width for x in range(len(marks))]
        values = [max(target["latency_ms"][mark], 1e-3) for mark in marks]
        bars = latency_axes.bar(xs, values, width, label=name)
        latency_axes.bar_label(bars, fmt="%.3g", fontsize=8)
    latency_axes.set_xticks([x + width * (len(targets) - 1) / 2 for x in range(len(marks))], marks)
    latency_axes.set_yscale("log")
    latency_axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    latency_axes.yaxis.set_minor_formatter(FuncFormatter(_minor_label))
    bottom, top = latency_axes.get_ylim()
    latency_axes.set_ylim(bottom, top * 3)  # headroom for the legend above the tallest bar
    latency_axes.set_ylabel("latency (ms, log scale)")
    latency_axes.set_title("Latency percentiles")
    latency_axes.legend(loc="upper left", fontsize=8)
    bars = throughput_axes.bar(names, [t["ops_per_sec"] for t in targets], color=["C0", "C1"][: len(targets)])
    throughput_axes.bar_label(bars, fmt="{:,.0f}", fontsize=8)
    throughput_axes.set_ylabel("operations per second")
    throughput_axes.set_title("Throughput")
    config = report["config"]
    figure.suptitle(
        f"kv bench: {config['connections']} connections x pipeline {config['pipeline']}, "
        f"{config['processes']} process(es), {config['distribution']} over {config['keys']} keys, "
        f"mix {config['mix']}, {config['value_size']} B values"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _minor_label(value: float, _position: int) -> str:
    """Label 2x and 5x of each decade only, so a log axis stays readable."""
    if value <= 0:
        return ""
    leading = round(value / 10 ** math.floor(math.log10(value)))
    return f"{value:g}" if leading in (2, 5) else ""
