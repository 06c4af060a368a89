"""Commands of the artifact audit: `scan`, `manifest create`, `manifest verify`.
Registered on the main app by ``trojanscope.cli``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from trojanscope.cli import _check_output_file, _print_json, app, out, shown, styled
from trojanscope.errors import TrojanscopeError

manifest_app = typer.Typer(no_args_is_help=True, help="Integrity manifests of model folders.")
app.add_typer(manifest_app, name="manifest")

_STYLE = {
    "clean": "green",
    "suspicious": "yellow",
    "dangerous": "bold red",
    "inconclusive": "magenta",
    "error": "red",
}

_VERDICT_STYLE = {
    "no-backdoor-found": "green",
    "not-screened": "yellow",
    "inconclusive-scan": "magenta",
}


def _by_top_level(reports: list[Any]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for report in reports:
        groups.setdefault(report.location.split("!", 1)[0], []).append(report)
    return groups


@app.command()
def scan(
    paths: Annotated[list[Path], typer.Argument(help="Model files or folders.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
    sarif: Annotated[
        Path | None, typer.Option(help="Also write a SARIF 2.1.0 report to this file.")
    ] = None,
    hashes: Annotated[
        bool, typer.Option("--hash", help="Also report the sha256 of every file and member.")
    ] = False,
) -> None:
    """Scan model files without running them. Exit code: 0 clean, 1 findings, 2 error,
    3 inconclusive (a limit or a parse error stopped the scan: never reported as clean)."""
    from trojanscope.scan.findings import EXIT_CODES, overall_verdict
    from trojanscope.scan.sarif import to_sarif
    from trojanscope.scan.scanner import Scanner

    for path in paths:
        if not path.exists() and not path.is_symlink():
            raise TrojanscopeError(f"{path} does not exist.")
    if sarif is not None:
        _check_output_file(sarif)
    reports = Scanner(hashes=hashes).scan_paths(paths)
    verdict = overall_verdict(reports)
    if sarif is not None:
        from trojanscope.database.store import write_atomic

        write_atomic(sarif, json.dumps(to_sarif(reports), indent=2).encode())
    if as_json:
        _print_json(
            {
                "verdict": verdict,
                "exit_code": EXIT_CODES[verdict],
                "files": [r.as_dict() for r in reports],
            }
        )
    else:
        _render_scan(reports, verdict)
    raise typer.Exit(EXIT_CODES[verdict])


def _render_scan(reports: list[Any], verdict: str) -> None:
    from trojanscope.scan.findings import overall_verdict

    table = Table(box=box.SIMPLE_HEAD, title="scan")
    for col in ("file", "format", "verdict", "findings"):
        table.add_column(col)
    for top, members in _by_top_level(reports).items():
        worst = overall_verdict(members)
        findings = [f for r in members for f in r.findings if f.severity != "info"]
        incomplete = [r.incomplete for r in members if r.incomplete]
        errors = [r.error for r in members if r.error]
        text = "; ".join(
            [
                f"{f.severity}: {f.message}"
                + (f" [{f.location.split('!', 1)[1]}]" if "!" in f.location else "")
                for f in findings[:4]
            ]
            + ([f"(+{len(findings) - 4} more)"] if len(findings) > 4 else [])
            + [f"inconclusive: {i}" for i in incomplete[:2]]
            + errors
        )
        table.add_row(
            shown(top), shown(members[0].format), styled((worst, _STYLE[worst])), shown(text or "-")
        )
    out.print(table)
    out.print(styled("verdict: ", (verdict, _STYLE[verdict])))


@manifest_app.command("create")
def manifest_create(
    directory: Annotated[Path, typer.Argument(help="Model folder.")],
    output: Annotated[Path | None, typer.Option(help="Manifest file (default: in DIR).")] = None,
) -> None:
    """Record the sha256 of every file in DIR."""
    from trojanscope.scan.manifest import create_manifest

    if not directory.is_dir():
        raise TrojanscopeError(f"{directory} is not a folder.")
    path = create_manifest(directory, output)
    out.print(f"manifest written to {shown(path)}")


@manifest_app.command("verify")
def manifest_verify(
    directory: Annotated[Path, typer.Argument(help="Model folder.")],
    manifest: Annotated[Path | None, typer.Option(help="Manifest file (default: in DIR).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check DIR against its manifest: edited, missing, extra and refused entries. Exit code 0
    when everything matches, 1 otherwise."""
    from trojanscope.scan.manifest import MANIFEST_NAME, verify_manifest

    if not directory.is_dir():
        raise TrojanscopeError(f"{directory} is not a folder.")
    manifest_path = manifest or directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise TrojanscopeError(f"no manifest at {manifest_path}.")
    result = verify_manifest(directory, manifest)
    if as_json:
        _print_json(result.as_dict())
    else:
        for item in result.edited:
            out.print(styled(("edited", "red"), "  ", item.path))
        for path in result.missing:
            out.print(styled(("missing", "red"), " ", path))
        for path in result.extra:
            out.print(styled(("extra", "yellow"), "   ", path))
        for item in result.refused:
            out.print(styled(("refused", "red"), " ", item.path, ": ", item.reason))
        out.print(
            styled(("all files match the manifest", "green"))
            if result.ok
            else styled(("mismatch", "red"))
        )
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def audit(
    model: Annotated[Path, typer.Argument(help="Model file (safetensors or torch checkpoint).")],
    arch: Annotated[
        str | None,
        typer.Option(help="Architecture the weights belong to (without it: no screening)."),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Clean data set for Neural Cleanse (e.g. mnist5k).")
    ] = None,
    width: Annotated[
        float | None, typer.Option(help="Width multiplier (default: inferred).")
    ] = None,
    report: Annotated[Path, typer.Option(help="HTML report to write.")] = Path("audit-report.html"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Scan, then (if safe) load with weights_only and screen for a backdoor; write an HTML
    report. Exit code: 0 no backdoor found, or not screened (no --arch: verdict not-screened)
    after a clean scan; 1 dangerous or suspicious file, or backdoor suspected; 2 error (weights
    or data that do not fit, a checkpoint weights_only refuses); 3 inconclusive scan."""
    from trojanscope.cli import _threads
    from trojanscope.database.store import write_atomic
    from trojanscope.report.audit import audit_model
    from trojanscope.report.html import render_audit

    _threads()
    if not model.is_file():
        raise TrojanscopeError(f"{model} is not a file.")
    _check_output_file(report)
    result = audit_model(model, arch, data, width)
    write_atomic(report, render_audit(result).encode())
    if as_json:
        _print_json({**result.as_dict(), "report": str(report)})
    else:
        style = _VERDICT_STYLE.get(result.verdict, "bold red")
        out.print(styled("verdict: ", (result.verdict, style)))
        if result.nc:
            out.print(
                f"Neural Cleanse: label {result.nc['candidate_label']} has anomaly index "
                f"{result.nc['anomaly_index']:.2f}"
                + (
                    f" -> target {result.nc['detected_label']}"
                    if result.nc["detected_label"] is not None
                    else " (not flagged)"
                )
            )
        if result.clp_outliers:
            out.print(
                f"CLP outlier neurons ({len(result.clp_outliers)}): "
                + ", ".join(shown(o["neuron"]) for o in result.clp_outliers[:10])
            )
        for note in result.notes:
            out.print(shown(note))
        out.print(f"report: {shown(report)}")
    raise typer.Exit(result.exit_code)
