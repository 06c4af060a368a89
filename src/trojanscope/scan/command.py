"""`trojanscope scan`, the one command that must start fast.

Scanners run on every commit and in every CI job, so `trojanscope scan FILE` must start no
slower than a single-purpose scanner. The rest of the command line is built on Typer, Rich and
pydantic, which cost a tenth of a second to import; this module uses only the standard library
(argparse, and a plain-text table written here for that reason) and the scanner itself. The
Typer app registers `scan` too and hands its arguments to :func:`run`, so both paths are one
implementation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from trojanscope.errors import TrojanscopeError
from trojanscope.textsafe import shown

if TYPE_CHECKING:  # imported on use at run time (start-up time)
    from trojanscope.scan.findings import FileReport

_DESCRIPTION = (
    "Scan model files and folders without running anything from them. Exit code: 0 clean, "
    "1 findings (suspicious or dangerous), 2 error, 3 inconclusive (the scanner could not read "
    "everything: never reported as clean)."
)
#: ANSI colours of the verdicts when the output is a terminal.
_COLOUR = {
    "clean": "32",
    "suspicious": "33",
    "dangerous": "1;31",
    "inconclusive": "35",
    "error": "31",
}


def parser() -> argparse.ArgumentParser:
    """The command's arguments (the single definition of them)."""
    p = argparse.ArgumentParser(prog="trojanscope scan", description=_DESCRIPTION)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="model files or folders")
    p.add_argument("--json", action="store_true", dest="as_json", help="print the report as JSON")
    p.add_argument("--sarif", type=Path, metavar="FILE", help="also write a SARIF 2.1.0 report")
    p.add_argument(
        "--hash", action="store_true", dest="hashes", help="report the sha256 of every file"
    )
    return p


def run(argv: list[str], out: TextIO | None = None) -> int:
    """Run `scan` with ``argv`` (the words after `scan`); the exit code. Bad input raises
    TrojanscopeError; argparse's own usage errors exit 2."""
    out = out or sys.stdout
    args = parser().parse_args(argv)
    from trojanscope.fileio import check_output_file, write_atomic
    from trojanscope.scan.findings import EXIT_CODES, overall_verdict
    from trojanscope.scan.scanner import Scanner

    for path in args.paths:
        if not path.exists() and not path.is_symlink():
            raise TrojanscopeError(f"{path} does not exist.")
    if args.sarif is not None:
        check_output_file(args.sarif)
    reports = Scanner(hashes=args.hashes).scan_paths(args.paths)
    verdict = overall_verdict(reports)
    if args.sarif is not None:
        from trojanscope.scan.sarif import to_sarif

        write_atomic(args.sarif, json.dumps(to_sarif(reports), indent=2).encode())
    if args.as_json:
        document = {
            "verdict": verdict,
            "exit_code": EXIT_CODES[verdict],
            "files": [r.as_dict() for r in reports],
        }
        out.write(json.dumps(document, indent=2, default=str) + "\n")
    else:
        out.write(render(reports, verdict, colour=out.isatty() and "NO_COLOR" not in os.environ))
    return EXIT_CODES[verdict]


def render(reports: list[FileReport], verdict: str, colour: bool = False) -> str:
    """One row per top-level file (its archive members folded in), then the overall verdict.
    Every name is shown literally (see trojanscope.textsafe)."""
    from trojanscope.scan.findings import overall_verdict

    rows = [("file", "format", "verdict", "findings")]
    groups: dict[str, list[FileReport]] = {}
    for report in reports:
        groups.setdefault(report.location.split("!", 1)[0], []).append(report)
    for top, members in groups.items():
        findings = [f for r in members for f in r.findings if f.severity != "info"]
        notes = [
            f"{f.severity}: {f.message}"
            + (f" [{f.location.split('!', 1)[1]}]" if "!" in f.location else "")
            for f in findings[:4]
        ]
        if len(findings) > 4:
            notes.append(f"(+{len(findings) - 4} more)")
        notes += [f"inconclusive: {r.incomplete}" for r in members if r.incomplete][:2]
        notes += [r.error for r in members if r.error]
        worst = overall_verdict(members)
        rows.append((top, members[0].format, worst, "; ".join(notes) or "-"))
    rows = [(shown(a), shown(b), shown(c), shown(d)) for a, b, c, d in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[i].ljust(widths[i]) for i in range(3)]
        if colour and n:
            cells[2] = _paint(cells[2], row[2])
        lines.append("  ".join([*cells, row[3]]).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths) + "  --------")
    final = _paint(verdict, verdict) if colour else verdict
    return "\n".join(lines) + f"\n\nverdict: {final}\n"


def _paint(text: str, verdict: str) -> str:
    code = _COLOUR.get(verdict.strip())
    return f"\x1b[{code}m{text}\x1b[0m" if code else text
