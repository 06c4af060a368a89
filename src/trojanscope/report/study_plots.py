"""The study report's plots as PNG bytes (one set serves the HTML page, embedded, and the
Markdown file, written beside it)."""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no screen on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from trojanscope.report.plots import LEVEL_ORDER  # noqa: E402
from trojanscope.textsafe import shown  # noqa: E402

Row = dict[str, Any]


def level_key(level: str) -> tuple[int, str]:
    """Levels in their natural order (narrow ... large), others after them alphabetically."""
    return (LEVEL_ORDER.index(level), "") if level in LEVEL_ORDER else (len(LEVEL_ORDER), level)


def label(value: Any) -> str:
    """A name from the catalog as plot text: shown literally (no mathtext, no controls)."""
    return "-" if value is None else shown(value).replace("$", r"\$")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=90)
    finally:
        plt.close(fig)
    return buf.getvalue()


def _width(groups: int) -> float:
    return min(24.0, max(5.0, 0.55 * groups + 2))


def acceptance_bars(defects: Sequence[Row], keys: Sequence[str]) -> bytes:
    """Accepted and rejected defects per group of ``keys``, stacked bars."""

    def order(group: tuple[str, ...]) -> tuple[tuple[int, str], ...]:
        return tuple(
            level_key(v) if k == "level" else (0, v) for k, v in zip(keys, group, strict=True)
        )

    groups = sorted({tuple(str(d[k]) for k in keys) for d in defects}, key=order)
    counts = {
        status: [
            sum(tuple(str(d[k]) for k in keys) == g and d["status"] == status for d in defects)
            for g in groups
        ]
        for status in ("accepted", "rejected")
    }
    fig, ax = plt.subplots(figsize=(_width(len(groups)), 3.8))
    xs = range(len(groups))
    ax.bar(xs, counts["accepted"], color="tab:green", label="accepted")
    ax.bar(xs, counts["rejected"], bottom=counts["accepted"], color="tab:red", label="rejected")
    ax.set_xticks(xs, [label(" / ".join(g)) for g in groups], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("defects")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(label("defects by " + " / ".join(keys)))
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _png(fig)


def boxes(rows: Sequence[Row], group: str, metrics: Sequence[tuple[str, str]]) -> bytes:
    """One box plot per ``(metric, title)``: the metric's distribution per value of ``group``."""
    names = sorted({str(r[group]) for r in rows})
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(_width(len(names)) * len(metrics) / 1.4, 3.8), squeeze=False
    )
    for ax, (metric, title) in zip(axes[0], metrics, strict=True):
        data = [
            [r[metric] for r in rows if str(r[group]) == n and r[metric] is not None] for n in names
        ]
        kept = [i for i, values in enumerate(data) if values]
        if kept:
            ax.boxplot([data[i] for i in kept], positions=kept, widths=0.6, showfliers=False)
            for i in kept:  # every result as a point too: groups are often small
                spread = [
                    i + 0.2 * (j / max(1, len(data[i]) - 1) - 0.5) for j in range(len(data[i]))
                ]
                ax.scatter(spread, data[i], s=8, color="tab:blue", alpha=0.5, zorder=3)
        if all(0 <= v <= 1 for values in data for v in values):
            ax.set_ylim(-0.03, 1.03)
        ax.set_xticks(
            range(len(names)), [label(n) for n in names], rotation=35, ha="right", fontsize=7
        )
        ax.set_xlim(-0.7, len(names) - 0.3)
        ax.set_title(label(title))
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def by_level(rows: Sequence[Row], group: str, metric: str, title: str) -> bytes:
    """Mean of ``metric`` per level, one line per value of ``group``."""
    levels = sorted({r["level"] for r in rows}, key=level_key)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name in sorted({str(r[group]) for r in rows}):
        points = []
        for i, level in enumerate(levels):
            values = [
                r[metric]
                for r in rows
                if str(r[group]) == name and r["level"] == level and r[metric] is not None
            ]
            if values:
                points.append((i, statistics.fmean(values)))
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label(name))
    ax.set_xticks(range(len(levels)), [label(lv) for lv in levels])
    ax.set_xlabel("level")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(label(title))
    ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    return _png(fig)


def _short(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def cost_bars(table: Sequence[Row], group: str) -> bytes:
    """Mean seconds and mean forward-pass equivalents per value of ``group``, each bar labelled
    (log scale when the means span more than two decades)."""
    names = [label(e[group]) for e in table]
    fig, axes = plt.subplots(1, 2, figsize=(_width(len(names)) * 1.4, 3.8))
    for ax, (metric, title) in zip(
        axes, (("seconds", "seconds"), ("cost_forward", "forward-pass equivalents")), strict=True
    ):
        values = [e[metric] or 0.0 for e in table]
        positive = [v for v in values if v > 0]
        heights = [v if v > 0 else math.nan for v in values]  # zero: no bar, a "0" label
        bars = ax.bar(range(len(names)), heights, color="tab:blue")
        if positive and max(positive) > 100 * min(positive):
            ax.set_yscale("log")
            ax.set_ylim(bottom=min(positive) / 3)  # the smallest bar stays visible
        ax.bar_label(bars, labels=[_short(v) if v > 0 else "" for v in values], fontsize=7)
        for x, v in enumerate(values):
            if v <= 0:
                ax.annotate("0", (x, 0.01), xycoords=("data", "axes fraction"), ha="center")
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=7)
        ax.set_title(f"mean {title}")
    fig.tight_layout()
    return _png(fig)
