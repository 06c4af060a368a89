"""Where benchmarks put their figures: ``OUT.json`` (the record) and ``OUT.md`` (its table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: Path, report: dict[str, Any], markdown: str) -> None:
    """Write ``report`` as ``out.json`` and ``markdown`` as ``out.md`` (folders created)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown)
