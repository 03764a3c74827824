"""Draw the per-call ratios of a benchmark run as a PNG bar chart.

python benchmarks/run.py --json results.json
python benchmarks/chart.py results.json docs/benchmarks.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: render straight to a file
import matplotlib.pyplot as plt

COLORS = {"ours": "#2a7ab9", "peer": "#c8553d", "baseline": "#7a7a7a"}


def main(source: str, target: str) -> int:
    data = json.loads(Path(source).read_text())
    rows = [row for row in data["rows"] if row["unit"] == "x bare await"]
    rows.sort(key=lambda row: row["median"])
    names = [row["scenario"] for row in rows]
    medians = [row["median"] for row in rows]
    lows = [row["median"] - row["low"] for row in rows]
    highs = [row["high"] - row["median"] for row in rows]
    figure, axes = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.2))
    axes.barh(
        names,
        medians,
        xerr=[lows, highs],
        color=[COLORS[row["kind"]] for row in rows],
        error_kw={"elinewidth": 0.8, "capsize": 2},
    )
    axes.set_xscale("log")
    axes.set_xlim(right=max(row["high"] for row in rows) * 4)  # room for the last labels
    axes.set_xlabel("cost of one call, bare `await coro()` = 1 (median, min-max; log scale)")
    axes.invert_yaxis()
    for y, row in enumerate(rows):  # the label goes past the error bar, where it is readable
        axes.annotate(
            f"{row['median']:.3g}x", (row["high"], y), xytext=(4, -3), textcoords="offset points"
        )
    handles = [plt.Rectangle((0, 0), 1, 1, color=color) for color in COLORS.values()]
    axes.legend(handles, ["orchestrator", "peers", "baseline"], loc="upper right")
    machine = data["machine"]
    axes.set_title(
        f"Per-call overhead, one process, interleaved repeats "
        f"(Python {machine['python']}, {machine['cpus']} CPUs)"
    )
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
