"""The study report: acceptance matrix, localization, repair, cost and the reference's headline
figures, from results already stored in the catalog, as one self-contained HTML page and a
Markdown file with its PNG plots beside it."""

from __future__ import annotations

import base64
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from trojanscope.errors import TrojanscopeError
from trojanscope.fileio import write_atomic
from trojanscope.report.study_sections import (
    Row,
    Section,
    acceptance_section,
    cost_section,
    headline_section,
    localization_section,
    repair_section,
)
from trojanscope.report.study_templates import HTML, MARKDOWN
from trojanscope.textsafe import shown

#: What each plot shows (its alt text and caption).
CAPTIONS = {
    "study-acceptance.png": "accepted and rejected defects per group",
    "study-localization.png": (
        "WJI and AUROC per criterion (box: quartiles, whiskers 1.5 IQR, dots: results)"
    ),
    "study-wji-by-level.png": "mean WJI per level, one line per criterion",
    "study-repair.png": "ASR drop and DER per method / criterion (dots: each repair)",
    "study-cost.png": "mean seconds and forward-pass equivalents per criterion",
}


@dataclass
class StudyReport:
    """Everything the two templates render; ``plots`` maps file names to PNG bytes."""

    header: list[tuple[str, str]]
    sections: list[Section]
    plots: dict[str, bytes]
    captions: dict[str, str]


def machine() -> str:
    """Python and torch versions, CPU count and platform of this run."""
    import torch

    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count() or 1} CPUs, {platform.platform(terse=True)}"
    )


def header(
    db: Path,
    command: str,
    where: str | None,
    defects: Sequence[Row],
    total: int,
    stored: tuple[int, int],
) -> list[tuple[str, str]]:
    """Section 6, shown first: when, from what, by which command, on which machine."""
    accepted = sum(d["status"] == "accepted" for d in defects)
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("database", str(db.resolve())),
        ("selection", where or "every defect"),
        (
            "defects",
            f"{len(defects)} selected of {total} ({accepted} accepted, "
            f"{len(defects) - accepted} rejected: these appear in the acceptance matrix only)",
        ),
        ("stored results", f"{stored[0]} localizations, {stored[1]} repairs (none run now)"),
        ("command", command),
        ("machine", machine()),
    ]


def build_report(
    header: list[tuple[str, str]],
    defects: Sequence[Row],
    locs: Sequence[Row],
    repairs: Sequence[Row],
) -> StudyReport:
    """The report of ``defects`` (acceptance records) and their stored results."""
    pngs: dict[str, bytes] = {}
    sections = []
    for section, made in (
        acceptance_section(defects),
        localization_section(locs),
        repair_section(repairs),
        cost_section(locs),
        (headline_section(locs, repairs), {}),
    ):
        sections.append(section)
        pngs.update(made)
    return StudyReport(header, sections, pngs, CAPTIONS)


def md_escape(value: Any) -> str:
    """Text from the catalog as literal Markdown: no markup, no HTML, one line."""
    text = shown(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_\[\]|~$])", r"\\\1", text)


def render_html(report: StudyReport) -> str:
    """The self-contained page: every PNG embedded as base64, every text escaped."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    embedded = {name: base64.b64encode(data).decode() for name, data in report.plots.items()}
    return env.from_string(HTML).render(r=report, png=embedded)


def render_markdown(report: StudyReport) -> str:
    """The Markdown file: plots linked relatively (written beside it), every text escaped."""
    env = jinja2.Environment(
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        finalize=md_escape,
        keep_trailing_newline=True,
    )
    text = env.from_string(MARKDOWN).render(r=report)
    return re.sub(r"\n{3,}", "\n\n", text)  # the template's block lines leave blank runs


def write_report(report: StudyReport, folder: Path) -> list[Path]:
    """Write the PNGs, ``study.md`` and ``study.html`` in ``folder``, each atomically."""
    files = {
        **report.plots,
        "study.md": render_markdown(report).encode(),
        "study.html": render_html(report).encode(),
    }
    written = []
    for name, data in files.items():
        path = folder / name
        try:
            write_atomic(path, data)
        except OSError as exc:
            raise TrojanscopeError(f"cannot write {path}: {exc.strerror or exc}.") from None
        written.append(path)
    return written
