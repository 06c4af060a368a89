"""Findings, per-file reports and verdicts shared by every scanner.

A verdict is never "clean" when the scan could not finish: a limit hit or a parse error makes
it "inconclusive" unless a dangerous finding already settles it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["info", "low", "medium", "high", "critical"]
Verdict = Literal["clean", "suspicious", "dangerous", "inconclusive", "error"]

SEVERITY_RANK: dict[str, int] = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}

#: Exit codes of `trojanscope scan` (documented in the README).
EXIT_CODES: dict[str, int] = {
    "clean": 0,
    "suspicious": 1,
    "dangerous": 1,
    "error": 2,
    "inconclusive": 3,
}


@dataclass
class Finding:
    """One observation: ``rule`` is a stable identifier (SARIF ruleId), ``location`` the file,
    with ``!member`` for each archive level, ``offset`` a byte offset inside it when known."""

    rule: str
    severity: Severity
    message: str
    location: str
    offset: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LimitExceeded(Exception):
    """A safety bound (size, depth, opcode count, ...) was reached: the scan is inconclusive."""


@dataclass
class FileReport:
    """What the scan of one file (or archive member) found."""

    location: str
    format: str
    sha256: str | None = None
    size: int | None = None
    findings: list[Finding] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)  # every global a pickle names
    metadata: dict[str, Any] = field(default_factory=dict)
    incomplete: str | None = None  # why the scan could not finish (limit, parse error)
    error: str | None = None  # the file could not be read at all

    def add(
        self,
        rule: str,
        severity: Severity,
        message: str,
        offset: int | None = None,
        **detail: Any,
    ) -> None:
        self.findings.append(Finding(rule, severity, message, self.location, offset, detail))

    @property
    def verdict(self) -> Verdict:
        worst = max((SEVERITY_RANK[f.severity] for f in self.findings), default=0)
        if worst >= SEVERITY_RANK["high"]:
            return "dangerous"
        if self.error is not None:
            return "error"
        if self.incomplete is not None:
            return "inconclusive"
        if worst >= SEVERITY_RANK["low"]:
            return "suspicious"
        return "clean"

    def as_dict(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "format": self.format,
            "verdict": self.verdict,
            "sha256": self.sha256,
            "size": self.size,
            "imports": self.imports,
            "metadata": self.metadata,
            "incomplete": self.incomplete,
            "error": self.error,
            "findings": [f.as_dict() for f in self.findings],
        }


VERDICT_ORDER: tuple[Verdict, ...] = ("dangerous", "suspicious", "inconclusive", "error", "clean")


def overall_verdict(reports: list[FileReport]) -> Verdict:
    """The worst verdict over all files (dangerous > suspicious > inconclusive > error > clean)."""
    verdicts = {r.verdict for r in reports}
    return next((v for v in VERDICT_ORDER if v in verdicts), "clean")
