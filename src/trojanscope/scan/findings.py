"""Findings, per-file reports and verdicts shared by every scanner.

A verdict is never "clean" when the scan could not finish: a limit hit or a parse error makes
it "inconclusive" unless a dangerous finding already settles it.
"""

from __future__ import annotations

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


class Finding:
    """One observation: ``rule`` is a stable identifier (SARIF ruleId), ``location`` the file,
    with ``!member`` for each archive level, ``offset`` a byte offset inside it when known."""

    # Plain classes, not dataclasses, on the scanner's import path: importing dataclasses
    # (and inspect with it) costs `trojanscope scan` a tenth of its start-up time.
    __slots__ = ("rule", "severity", "message", "location", "offset", "detail")

    def __init__(
        self,
        rule: str,
        severity: Severity,
        message: str,
        location: str,
        offset: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.rule, self.severity, self.message = rule, severity, message
        self.location, self.offset = location, offset
        self.detail: dict[str, Any] = detail if detail is not None else {}

    def __repr__(self) -> str:
        return f"Finding({self.rule!r}, {self.severity!r}, {self.message!r}, {self.location!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Finding) and self.as_dict() == other.as_dict()

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class LimitExceeded(Exception):
    """A safety bound (size, depth, opcode count, ...) was reached: the scan is inconclusive."""


class FileReport:
    """What the scan of one file (or archive member) found."""

    __slots__ = (
        "location",
        "format",
        "sha256",
        "size",
        "findings",
        "imports",
        "metadata",
        "incomplete",
        "error",
    )

    def __init__(
        self,
        location: str,
        format: str,
        sha256: str | None = None,
        size: int | None = None,
    ) -> None:
        self.location, self.format, self.sha256, self.size = location, format, sha256, size
        self.findings: list[Finding] = []
        self.imports: list[str] = []  # every global a pickle names
        self.metadata: dict[str, Any] = {}
        self.incomplete: str | None = None  # why the scan could not finish (limit, parse error)
        self.error: str | None = None  # the file could not be read at all

    def __repr__(self) -> str:
        return f"FileReport({self.location!r}, {self.format!r}, verdict={self.verdict!r})"

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
