"""The lifecycle plot: ASR and each criterion's WJI along a chain of stages, one line per
level (means over the defects of that level)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no screen on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from trojanscope.report.plots import _level_key, save_figure  # noqa: E402


def lifecycle_plot(rows: Sequence[dict[str, Any]], criteria: Sequence[str], path: Path) -> Path:
    """Panels of ASR and of ``wji_<criterion>`` by chain position, one line per level; a
    position without a value (no localization after ONNX or distillation) leaves a gap."""
    positions = sorted({r["position"] for r in rows})
    names = {r["position"]: r["stage"] for r in rows}
    levels = sorted({r["level"] for r in rows}, key=_level_key)
    panels = [("asr", "ASR")] + [(f"wji_{c}", f"WJI of {c}") for c in criteria]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for level in levels:
            means = []
            for pos in positions:
                values = [
                    r[key]
                    for r in rows
                    if r["position"] == pos and r["level"] == level and r.get(key) is not None
                ]
                means.append(statistics.fmean(values) if values else float("nan"))
            ax.plot(positions, means, marker="o", label=level)
        ax.set_xticks(positions, [names[p] for p in positions], rotation=30, ha="right")
        ax.set_ylim(0, 1.02)
        ax.set_title(title)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return save_figure(fig, path)
