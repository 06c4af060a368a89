"""SARIF 2.1.0 output for code-scanning tools (GitHub code scanning, IDEs).

Shaped for GitHub code scanning's subset: every rule carries a description, help text, the
``security`` tag and a numeric ``security-severity``; every result has a region with a start
line (binary files have no lines: line 1, with the byte offset when known), a path relative to
the working directory under ``%SRCROOT%`` when the file lies below it, and a stable
``partialFingerprints`` entry so that re-uploads do not duplicate alerts.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from trojanscope import __version__
from trojanscope.scan.findings import FileReport, Finding

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}
#: GitHub's scale: >= 9.0 critical, >= 7.0 high, >= 4.0 medium, else low.
_SECURITY_SEVERITY = {
    "critical": "9.5",
    "high": "8.0",
    "medium": "5.5",
    "low": "3.0",
    "info": "1.0",
}
_HELP = (
    "trojanscope reads model files without running anything from them. Inspect the file (or "
    "the archive member named in the message) before loading it; never load it with "
    "torch.load with weights_only off, with pickle's loader or with trust_remote_code. See "
    "`trojanscope scan "
    "--json` for every import and call the file would make."
)


def _artifact(path: str) -> dict[str, str]:
    """The file's URI: relative to the working directory (``%SRCROOT%``) when below it."""
    absolute = Path(os.path.abspath(path))
    try:
        relative = absolute.relative_to(Path.cwd())
    except ValueError:
        return {"uri": absolute.as_uri()}
    return {"uri": relative.as_posix(), "uriBaseId": "%SRCROOT%"}


def _rule(finding: Finding) -> dict[str, Any]:
    title = finding.rule.replace(".", ": ", 1).replace("-", " ")
    return {
        "id": finding.rule,
        "name": finding.rule.replace(".", "-"),
        "shortDescription": {"text": title},
        "fullDescription": {"text": f"{title} (trojanscope scan)"},
        "help": {"text": _HELP},
        "defaultConfiguration": {"level": _LEVEL[finding.severity]},
        "properties": {
            "tags": ["security", "model-supply-chain"],
            "security-severity": _SECURITY_SEVERITY[finding.severity],
        },
    }


def _findings(report: FileReport) -> list[Finding]:
    findings = [f for f in report.findings if f.severity != "info"]
    if report.incomplete and not any(f.rule.endswith("malformed") for f in findings):
        findings.append(
            Finding(
                "scan.inconclusive",
                "medium",
                f"scan incomplete: {report.incomplete}",
                report.location,
            )
        )
    if report.error:
        findings.append(Finding("scan.error", "medium", report.error, report.location))
    return findings


def to_sarif(reports: list[FileReport]) -> dict[str, Any]:
    """One run of the trojanscope scanner: a rule per finding kind, a result per finding.

    The physical location is the file on disk; the archive path inside it (``a.zip!b!c``) is
    given as a logical location and in the message."""
    rules: dict[str, dict[str, Any]] = {}
    results = []
    for report in reports:
        for f in _findings(report):
            rules.setdefault(f.rule, _rule(f))
            outer, _, inner = f.location.partition("!")
            region: dict[str, Any] = {"startLine": 1}
            if f.offset is not None and not inner:
                region["byteOffset"] = f.offset
            location: dict[str, Any] = {
                "physicalLocation": {"artifactLocation": _artifact(outer), "region": region}
            }
            if inner:
                location["logicalLocations"] = [
                    {"fullyQualifiedName": f.location, "kind": "member"}
                ]
            identity = f"{f.rule}\0{Path(f.location).name}\0{inner}\0{f.message}"
            results.append(
                {
                    "ruleId": f.rule,
                    "level": _LEVEL[f.severity],
                    "message": {"text": f"{f.message} ({f.location})"},
                    "locations": [location],
                    "partialFingerprints": {
                        "primaryLocationLineHash": hashlib.sha256(identity.encode()).hexdigest()
                    },
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
                "originalUriBaseIds": {"%SRCROOT%": {"uri": Path.cwd().as_uri() + "/"}},
                "results": results,
            }
        ],
    }
