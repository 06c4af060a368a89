"""Study plots: weighted Jaccard by level, one PNG per criterion (one line per attack)."""

from __future__ import annotations

import io
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no screen on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from trojanscope.errors import TrojanscopeError  # noqa: E402
from trojanscope.fileio import write_atomic  # noqa: E402

#: Levels in their natural order; others follow alphabetically.
LEVEL_ORDER = ("narrow", "small", "middle", "large")


def _level_key(level: str) -> tuple[int, str]:
    return (LEVEL_ORDER.index(level), "") if level in LEVEL_ORDER else (len(LEVEL_ORDER), level)


def wji_by_level(rows: Sequence[dict[str, Any]], folder: Path) -> list[Path]:
    """For each criterion, mean +- std of WJI per level (one line per attack), written as
    ``wji-<criterion>.png`` in ``folder``; returns the paths written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrojanscopeError(f"cannot write plots to {folder}: {exc.strerror or exc}.") from None
    levels = sorted({r["level"] for r in rows}, key=_level_key)
    written = []
    for criterion in sorted({r["criterion"] for r in rows}):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for attack in sorted({r["attack"] for r in rows}):
            xs, means, stds = [], [], []
            for i, level in enumerate(levels):
                values = [
                    r["wji"]
                    for r in rows
                    if r["criterion"] == criterion and r["attack"] == attack and r["level"] == level
                ]
                if values:
                    xs.append(i)
                    means.append(statistics.fmean(values))
                    stds.append(statistics.pstdev(values) if len(values) > 1 else 0.0)
            if xs:
                ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=attack)
        ax.set_xticks(range(len(levels)), levels)
        ax.set_ylim(0, 1)
        ax.set_xlabel("level")
        ax.set_ylabel("weighted Jaccard index")
        ax.set_title(f"{criterion}: WJI with the ground truth")
        ax.legend(fontsize="small")
        fig.tight_layout()
        written.append(save_figure(fig, folder / f"wji-{criterion}.png"))
    return written


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically and close it; one sentence on failure."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100)
        write_atomic(path, buffer.getvalue())
    except OSError as exc:
        raise TrojanscopeError(f"cannot write plot {path}: {exc.strerror or exc}.") from None
    finally:
        plt.close(fig)
    return path
