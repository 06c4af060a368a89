"""Tables of figures: mean and standard deviation of metrics per group of rows, for the
bench tables and the study report."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def aggregate(
    rows: Sequence[dict[str, Any]], by: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Mean and standard deviation of ``metrics`` per group of ``by`` values (None skipped)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(b) for b in by), []).append(row)
    table = []
    for values, members in groups.items():
        entry: dict[str, Any] = dict(zip(by, values, strict=True))
        entry["n"] = len(members)
        for metric in metrics:
            xs = [m[metric] for m in members if m.get(metric) is not None]
            entry[metric] = statistics.fmean(xs) if xs else None
            entry[f"{metric}_std"] = statistics.pstdev(xs) if len(xs) > 1 else 0.0 if xs else None
        table.append(entry)
    return table
