"""Commands of the artifact audit: `scan`, `manifest create`, `manifest verify`.
Registered on the main app by ``trojanscope.cli``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from trojanscope.cli import (
    DEFAULT_DEVICE,
    DeviceOption,
    _check_output_file,
    _print_json,
    app,
    out,
    shown,
    styled,
)
from trojanscope.errors import TrojanscopeError

manifest_app = typer.Typer(no_args_is_help=True, help="Integrity manifests of model folders.")
app.add_typer(manifest_app, name="manifest")

_VERDICT_STYLE = {
    "no-backdoor-found": "green",
    "not-screened": "yellow",
    "inconclusive-scan": "magenta",
}


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def scan(ctx: typer.Context) -> None:
    """Scan model files without running them. Exit code: 0 clean, 1 findings, 2 error,
    3 inconclusive (the scanner could not read everything: never reported as clean). See
    `trojanscope scan --help`."""
    from trojanscope.scan.command import run

    raise typer.Exit(run(ctx.args, sys.stdout))


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
    from trojanscope.workflows.records import ManifestReport

    if not directory.is_dir():
        raise TrojanscopeError(f"{directory} is not a folder.")
    manifest_path = manifest or directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise TrojanscopeError(f"no manifest at {manifest_path}.")
    result = verify_manifest(directory, manifest)
    if as_json:
        _print_json(ManifestReport(**result.as_dict()).model_dump())
    else:
        for item in result.edited:
            out.print(styled(("edited", "red"), "  ", item.path))
        for path in result.missing:
            out.print(styled(("missing", "red"), " ", path))
        for path in result.extra:
            out.print(styled(("extra", "yellow"), "   ", path))
        for refusal in result.refused:
            out.print(styled(("refused", "red"), " ", refusal.path, ": ", refusal.reason))
        out.print(
            styled(("all files match the manifest", "green"))
            if result.ok
            else styled(("mismatch", "red"))
        )
    raise typer.Exit(0 if result.ok else 1)


def _budget(value: str, default: int) -> int | None:
    """``--budget``: a positive number of candidates, 'all', or 'default' (``default``)."""
    if value.strip() == "default":
        return default
    if value.strip() == "all":
        return None
    try:
        budget = int(value)
    except ValueError:
        budget = 0
    if budget < 1:
        raise TrojanscopeError(f"--budget must be a positive number or 'all', not '{value}'.")
    return budget


def _is_image_encoder(folder: Path) -> bool:
    """A folder written by `neuba vision-pretrain` (its record says so; the weights are
    checked when loaded). A victim's folder is refused: it is audited as a model file."""
    from trojanscope.models.text_encoder import RECORD, json_object

    try:
        kind = json_object(folder / RECORD).get("kind")
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if kind == "image-victim":
        raise TrojanscopeError(
            f"{folder} holds an image classifier (a NeuBA victim): audit its weights as a model "
            f"file, e.g. trojanscope audit {folder / 'model.safetensors'} --arch ARCH --data DATA."
        )
    return kind == "image-encoder"


@app.command()
def audit(
    model: Annotated[
        Path,
        typer.Argument(
            help="Model file (safetensors or torch checkpoint), an HF-format text encoder "
            "folder or an image encoder folder (neuba vision-pretrain); folders are screened "
            "for task-agnostic triggers."
        ),
    ],
    arch: Annotated[
        str | None,
        typer.Option(help="Architecture the weights belong to (without it: no screening)."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Clean data set for Neural Cleanse (e.g. mnist5k); for image encoder folders, "
            "the clean images the patches are stamped on (default: its pre-training set)."
        ),
    ] = None,
    width: Annotated[
        float | None, typer.Option(help="Width multiplier (default: inferred).")
    ] = None,
    budget: Annotated[
        str,
        typer.Option(
            help="Candidate tokens to screen in a text encoder, rarest first, or 'all' (default "
            "2048); candidate patches per size for an image encoder (default 512) or a model "
            "file with --data (default 256)."
        ),
    ] = "default",
    report: Annotated[Path, typer.Option(help="HTML report to write.")] = Path("audit-report.html"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Scan, then (if safe) load with weights_only and screen for a backdoor; write an HTML
    report. Exit code: 0 no backdoor found, or not screened (no --arch: verdict not-screened)
    after a clean scan; 1 dangerous or suspicious file, or backdoor suspected; 2 error (weights
    or data that do not fit, a checkpoint weights_only refuses); 3 inconclusive scan."""
    from trojanscope.cli import _device, _threads
    from trojanscope.fileio import write_atomic
    from trojanscope.report.html import render_audit
    from trojanscope.workflows.audit import audit_model
    from trojanscope.workflows.records import AuditRecord

    _threads()
    run_on = _device(device)
    _check_output_file(report)
    if model.is_dir() and _is_image_encoder(model):
        from trojanscope.workflows.audit_vision_encoder import (
            DEFAULT_PATCH_BUDGET,
            audit_vision_encoder,
        )

        if arch is not None:
            raise TrojanscopeError("--arch is for model files, not encoder folders.")
        if budget == "all":
            raise TrojanscopeError("--budget all is for text encoders; give a number of patches.")
        result = audit_vision_encoder(
            model, _budget(budget, DEFAULT_PATCH_BUDGET), data, device=run_on
        )
    elif model.is_dir():
        from trojanscope.workflows.audit_encoder import DEFAULT_BUDGET, audit_encoder

        if arch is not None or data is not None:
            raise TrojanscopeError(
                "--arch and --data are for model files and image encoders, not text encoders."
            )
        result = audit_encoder(model, _budget(budget, DEFAULT_BUDGET), device=run_on)
    elif model.is_file():
        from trojanscope.workflows.audit import MODEL_PATCH_BUDGET

        if budget == "all":
            raise TrojanscopeError("--budget all is for text encoders; give a number of patches.")
        per_size = _budget(budget, MODEL_PATCH_BUDGET) or MODEL_PATCH_BUDGET
        result = audit_model(model, arch, data, width, device=run_on, patch_budget=per_size)
    else:
        raise TrojanscopeError(f"{model} is neither a file nor a folder.")
    write_atomic(report, render_audit(result).encode())
    if as_json:
        _print_json(AuditRecord(**result.as_dict(), report=str(report)).model_dump())
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
        if result.trigger_screen:
            screen = result.trigger_screen
            top = ", ".join(
                f"{shown(t['token'])} {t['score']:.2f}" for t in screen["top_tokens"][:5]
            )
            out.print(f"trigger screen: {screen['tokens_screened']} tokens; top scores: {top}")
        if result.patch_screen:
            screen = result.patch_screen
            top = ", ".join(f"{t['patch']} {t['score']:.2f}" for t in screen["top_patches"][:3])
            out.print(
                f"patch screen: {screen['patches_screened']} patches; top scores: {top}",
                highlight=False,
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
