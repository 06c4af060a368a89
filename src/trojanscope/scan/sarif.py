"""SARIF 2.1.0 output for code-scanning tools (GitHub code scanning, IDEs)."""

from __future__ import annotations

from typing import Any

from trojanscope import __version__
from trojanscope.scan.findings import FileReport, Finding

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "none"}


def to_sarif(reports: list[FileReport]) -> dict[str, Any]:
    """One run of the trojanscope scanner: a rule per finding kind, a result per finding.

    The physical location is the file on disk; the archive path inside it (``a.zip!b!c``) is
    given as a logical location and in the message."""
    rules: dict[str, dict[str, Any]] = {}
    results = []
    for report in reports:
        findings = list(report.findings)
        if report.incomplete and not any(f.rule.endswith("malformed") for f in findings):
            findings.append(
                Finding(
                    "scan.inconclusive",
                    "medium",
                    f"scan incomplete: {report.incomplete}",
                    report.location,
                )
            )
        for f in findings:
            rules.setdefault(
                f.rule,
                {
                    "id": f.rule,
                    "shortDescription": {"text": f.rule.replace(".", ": ").replace("-", " ")},
                    "defaultConfiguration": {"level": _LEVEL[f.severity]},
                },
            )
            outer, _, inner = f.location.partition("!")
            region = {"byteOffset": f.offset} if f.offset is not None and not inner else None
            location: dict[str, Any] = {"physicalLocation": {"artifactLocation": {"uri": outer}}}
            if region:
                location["physicalLocation"]["region"] = region
            if inner:
                location["logicalLocations"] = [
                    {"fullyQualifiedName": f.location, "kind": "member"}
                ]
            results.append(
                {
                    "ruleId": f.rule,
                    "level": _LEVEL[f.severity],
                    "message": {"text": f"{f.message} ({f.location})"},
                    "locations": [location],
                    "properties": {
                        "severity": f.severity,
                        **({"offset": f.offset} if f.offset is not None else {}),
                    },
                }
            )
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "trojanscope",
                        "version": __version__,
                        "rules": list(rules.values()),
                    }
                },
                "results": results,
            }
        ],
    }
