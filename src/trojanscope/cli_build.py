"""Commands of the build system: `db build` (a grid from a spec file, resumable, in parallel),
`db verify`, `db query`, `db stats`, `db export` and `db import`. Registered on the main app by
``trojanscope.cli``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from trojanscope.cli import (
    DEFAULT_DB,
    DEFAULT_DEVICE,
    DbOption,
    DbUrlOption,
    DeviceOption,
    _amp,
    _check_output_file,
    _device,
    _fmt,
    _print_json,
    _threads,
    db_app,
    err,
    open_catalog,
    out,
    shown,
)
from trojanscope.errors import NoCatalogError

if TYPE_CHECKING:
    from trojanscope.workflows.build import Progress as BuildProgress

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@contextmanager
def _build_progress() -> Iterator[BuildProgress]:
    """A progress bar over the jobs still to run, with elapsed time and an estimate of what is
    left (on stderr, so --json output stays clean)."""
    from trojanscope.workflows.build import Progress as BuildProgress

    columns = (
        TextColumn("{task.description:<52}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("planning", total=None)

        def start(total: int) -> None:
            bar.update(task, total=total, description="building" if total else "nothing to build")

        def done(job: Any, result: Any) -> None:
            what = "clean" if result.kind == "clean" else (result.status or "")
            bar.update(task, advance=1, description=shown(f"{what}: {job.label}"))

        yield BuildProgress(start, done)
        bar.update(task, description="done")


def bare_ray_option(args: list[str]) -> list[str]:
    """``db build`` arguments with a bare ``--ray`` (last, or followed by an option or by an
    existing file such as the spec) written ``--ray=local``, since the option parser has no
    options of optional value; ``--ray ADDRESS`` and ``--ray=ADDRESS`` are kept."""
    if args[:2] != ["db", "build"]:
        return args
    from trojanscope.workflows.executors import RAY_LOCAL

    fixed = list(args)
    for i, arg in enumerate(fixed):
        if arg == "--":
            break
        if arg != "--ray":
            continue
        following = fixed[i + 1] if i + 1 < len(fixed) else None
        if following is None or following.startswith("-") or Path(following).is_file():
            fixed[i] = f"--ray={RAY_LOCAL}"
    return fixed


@db_app.command("build")
def db_build(
    spec_file: Annotated[Path, typer.Argument(metavar="SPEC", help="Build spec (TOML).")],
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Jobs running at once, each a process with one torch thread (default 1; "
            "with --ray, the cluster's CPUs, or GPUs on CUDA).",
        ),
    ] = None,
    device: DeviceOption = DEFAULT_DEVICE,
    amp: Annotated[
        str | None,
        typer.Option(
            "--amp",
            help="Mixed-precision training: bf16, fp16 or off, overriding the spec's `amp` "
            "(and so the keys of what is trained). bf16: CPU, CUDA of compute capability 8.0+, "
            "mps on macOS 14+; fp16: CUDA, mps.",
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="[ADDRESS]",
            help="Run the jobs as Ray tasks: alone, on a local Ray instance (or the one "
            "RAY_ADDRESS names); with ADDRESS (HOST:PORT, or auto), on that running cluster, "
            "whose nodes must all see --db at the same path. Needs trojanscope[ray].",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Plan only: count the jobs, build nothing.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Build the grid a spec declares: clean models, defects, criteria and repairs; whatever
    the catalog holds is reused, so a killed build resumes where it stopped."""
    from trojanscope.workflows.build import run_build
    from trojanscope.workflows.executors import make_executor
    from trojanscope.workflows.plan import check_catalog, make_plan
    from trojanscope.workflows.records import BuildPlan, JobCounts
    from trojanscope.workflows.spec import load_spec

    run_on = _device(device)
    spec = load_spec(spec_file)
    spec = spec.model_copy(update={"amp": _amp(run_on, spec.amp if amp is None else amp)})
    if dry_run:
        plan = make_plan(spec)
        if db_url is not None or (db / "catalog.sqlite").exists():
            # an empty database: everything is to build
            with suppress(NoCatalogError):
                plan = check_catalog(plan, open_catalog(db, db_url))
        clean, defects = plan.todo()
        counts = BuildPlan(
            clean_models=JobCounts(planned=len(plan.clean), todo=len(clean)),
            defects=JobCounts(planned=len(plan.defects), todo=len(defects)),
        )
        if as_json:
            _print_json(counts.model_dump())
        else:
            out.print(
                f"{len(clean)} of {len(plan.clean)} clean models and {len(defects)} of "
                f"{len(plan.defects)} defects to build in {shown(db)}"
            )
        return
    if ray is not None:
        from trojanscope.workflows.executors import prepare_ray

        prepare_ray(ray)  # Ray installed and the address answering, before any work
    _threads()
    catalog = open_catalog(db, db_url, create=True)
    with _build_progress() as progress:
        summary = run_build(
            spec,
            catalog,
            lambda jobs: make_executor(catalog, run_on, workers, jobs, ray=ray),
            progress,
            str(spec_file),
            str(run_on),
        )
    if as_json:
        _print_json(summary.model_dump(mode="json"))
        return
    _render_build(summary)


def _render_build(summary: Any) -> None:
    table = Table(
        title=f"build of {shown(summary.spec)} in {shown(summary.db)}", box=box.SIMPLE_HEAD
    )
    for col in ("dataset", "arch", "attack", "order", "level"):
        table.add_column(col)
    for col in ("planned", "built", "reused", "accepted", "rejected"):
        table.add_column(col, justify="right")
    for c in summary.cells:
        table.add_row(
            *(shown(v) for v in (c.dataset, c.arch, c.attack, c.order, c.level)),
            *(str(v) for v in (c.planned, c.built, c.reused, c.accepted, c.rejected)),
        )
    out.print(table)
    d, cm = summary.defects, summary.clean_models
    out.print(
        f"defects: {d.built} built, {d.reused} reused, {d.accepted} accepted, {d.rejected} "
        f"rejected; clean models: {cm.built} built, {cm.reused} reused; "
        f"{summary.analyses_built} localizations and repairs recorded; "
        f"{summary.seconds:.0f} s with {summary.workers} worker(s) on {shown(summary.device)}"
        + (
            f"; {summary.swept} leftover files of an interrupted build removed"
            if summary.swept
            else ""
        ),
        soft_wrap=True,
    )


@db_app.command("verify")
def db_verify(
    db: DbOption = DEFAULT_DB, db_url: DbUrlOption = None, as_json: JsonFlag = False
) -> None:
    """Re-hash every artifact of the catalog; report missing, corrupt and orphaned files (exit
    code 1 if there is any)."""
    from trojanscope.workflows.query import verify_report

    report = verify_report(open_catalog(db, db_url))
    if as_json:
        _print_json(report.model_dump(mode="json"))
    else:
        for kind, problems in (("missing", report.missing), ("corrupt", report.corrupt)):
            for p in problems:
                out.print(
                    f"{kind}: {shown(p.path)} (named by {shown(', '.join(p.referenced_by))})",
                    soft_wrap=True,
                )
        for path in report.orphans:
            out.print(f"orphan: {shown(path)} (no entry names it)", soft_wrap=True)
        out.print(
            f"{report.checked} artifacts checked: {len(report.missing)} missing, "
            f"{len(report.corrupt)} corrupt, {len(report.orphans)} orphaned files"
        )
    if not report.ok:
        raise typer.Exit(1)


WhereOption = Annotated[
    str | None,
    typer.Option(
        help="Defects to include, e.g. 'attack=badnets,level=narrow|small' (fields: id, attack,"
        " level, order, seed, status, target_mode, target, dataset, arch, stage, parent; default:"
        " every status but lifecycle links)."
    ),
]


@db_app.command("query")
def db_query(
    where: WhereOption = None,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    as_json: JsonFlag = False,
) -> None:
    """The defects matching a selection, with their keys and weight hashes."""
    from trojanscope.workflows.query import query

    records = query(open_catalog(db, db_url), where)
    if as_json:
        _print_json([r.model_dump(mode="json") for r in records])
        return
    table = Table(title=f"{len(records)} defects in {shown(db)}", box=box.SIMPLE_HEAD)
    columns = ("id", "key", "status", "dataset", "arch", "attack", "order", "level", "seed")
    for col in (*columns, "ASR", "weights"):
        table.add_column(col)
    for r in records:
        table.add_row(
            str(r.id),
            r.key[:12],
            *(_fmt(getattr(r, c)) for c in columns[2:]),
            _fmt(r.asr),
            r.weights_sha256[:12],
        )
    out.print(table)


@db_app.command("stats")
def db_stats(
    where: WhereOption = None,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Accepted and rejected defects per cell, with how often each acceptance rule rejected."""
    from trojanscope.workflows.query import stats

    result = stats(open_catalog(db, db_url), where)
    if as_json:
        _print_json(result.model_dump(mode="json"))
        return
    table = Table(title=f"acceptance in {shown(db)}", box=box.SIMPLE_HEAD)
    for col in ("dataset", "arch", "attack", "order", "level", "accepted", "rejected", "reasons"):
        table.add_column(col, justify="right" if col in ("accepted", "rejected") else "left")
    for c in result.cells:
        reasons = "; ".join(f"{r.reason} x{r.count}" for r in c.reasons)
        table.add_row(
            *(shown(v) for v in (c.dataset, c.arch, c.attack, c.order, c.level)),
            str(c.accepted),
            str(c.rejected),
            shown(reasons) or "-",
        )
    out.print(table)
    out.print(f"{result.defects} defects: {result.accepted} accepted, {result.rejected} rejected")


#: The formats `db export` writes and `db import` reads.
EXPORT_FORMATS = ("safetensors", "bdefects4nn")


@db_app.command("export")
def db_export(
    target: Annotated[
        str,
        typer.Argument(
            metavar="ID|DIR",
            help="The defect to export (safetensors), or the folder to write (bdefects4nn).",
        ),
    ],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="safetensors file to write (--format safetensors).")
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="safetensors: one defect's weights into --out FILE; bdefects4nn: the catalog's "
            "defects into folder DIR in the BackdoorDefects4NN layout.",
        ),
    ] = "safetensors",
    include_all: Annotated[
        bool, typer.Option("--all", help="bdefects4nn: rejected defects too.")
    ] = False,
    where: WhereOption = None,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    clean: Annotated[
        bool, typer.Option(help="safetensors: export the defect's clean model instead.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Write a defect's weights (or its clean model's) as a safetensors file, e.g. to audit it;
    or, with --format bdefects4nn, the catalog's accepted defects as the reference database's
    folders (see docs/bdefects4nn.md)."""
    from trojanscope.errors import TrojanscopeError

    if fmt not in EXPORT_FORMATS:
        raise TrojanscopeError(
            f"unknown export format '{fmt}'; valid formats: {', '.join(EXPORT_FORMATS)}."
        )
    if fmt == "bdefects4nn":
        from trojanscope.workflows.exchange import export_bdefects4nn

        if out_file is not None or clean:
            raise TrojanscopeError(
                "--out and --clean belong to --format safetensors; --format bdefects4nn writes "
                "the folder DIR."
            )
        summary = export_bdefects4nn(open_catalog(db, db_url), Path(target), where, include_all)
        if as_json:
            _print_json(summary.model_dump(mode="json"))
        else:
            out.print(
                f"wrote {summary.defects} defects, {summary.clean_models} clean models "
                f"({summary.files} files) to {shown(summary.out)}",
                soft_wrap=True,
            )
        return
    _export_safetensors(target, out_file, db, db_url, clean, where, include_all, as_json)


def _export_safetensors(
    target: str,
    out_file: Path | None,
    db: Path,
    db_url: str | None,
    clean: bool,
    where: str | None,
    include_all: bool,
    as_json: bool,
) -> None:
    """`db export ID --out FILE`: one defect's (or its clean model's) stored weights."""
    from trojanscope.errors import TrojanscopeError
    from trojanscope.fileio import write_atomic
    from trojanscope.workflows.defects import get_defect
    from trojanscope.workflows.records import ExportedWeights

    if where is not None or include_all:
        raise TrojanscopeError("--where and --all belong to --format bdefects4nn.")
    if not target.isdigit():
        raise TrojanscopeError(
            f"'{target}' is not a defect id (--format safetensors exports one defect; "
            "--format bdefects4nn writes a folder)."
        )
    if out_file is None:
        raise TrojanscopeError("--format safetensors needs --out FILE.")
    _check_output_file(out_file)
    defect_id = int(target)
    catalog = open_catalog(db, db_url)
    row = get_defect(catalog, defect_id)
    sha = row.clean_model.weights_sha256 if clean else row.weights_sha256
    write_atomic(out_file, catalog.store.read_bytes(sha))
    kind = "clean model" if clean else "defect"
    if as_json:
        record = ExportedWeights(out=str(out_file), kind=kind, id=defect_id, sha256=sha)
        _print_json(record.model_dump())
        return
    out.print(f"wrote {shown(out_file)} ({kind} {defect_id}, {sha[:12]})")


@db_app.command("import")
def db_import(
    source: Annotated[
        Path, typer.Argument(metavar="DIR", help="A folder in the BackdoorDefects4NN layout.")
    ],
    fmt: Annotated[
        str, typer.Option("--format", help="The layout of DIR (bdefects4nn).")
    ] = "bdefects4nn",
    arch_map: Annotated[
        list[str] | None,
        typer.Option(
            "--arch-map",
            metavar="PUBLISHED=OURS",
            help="Our architecture for a published architecture name (repeatable; default: "
            "the same name, if registered).",
        ),
    ] = None,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Import the defects of a folder in the BackdoorDefects4NN layout: every file is scanned
    first (nothing flagged or unreadable is loaded), then loaded with weights_only=True,
    checked against its architecture and its recorded sha256, and recorded with its source;
    defects already in the catalog are kept, so a second run adds nothing."""
    from trojanscope.errors import TrojanscopeError
    from trojanscope.workflows.exchange import import_bdefects4nn

    if fmt != "bdefects4nn":
        raise TrojanscopeError(f"unknown import format '{fmt}'; valid formats: bdefects4nn.")
    if not source.is_dir():
        raise TrojanscopeError(f"{source} is not a folder.")
    from trojanscope.workflows.bdefects4nn import find_cases, parse_arch_map, resolve_archs

    # A bad map or layout fails before the catalog is created or touched.
    resolve_archs(find_cases(source), parse_arch_map(arch_map or []))
    catalog = open_catalog(db, db_url, create=True)
    summary = import_bdefects4nn(catalog, source, arch_map or [])
    if as_json:
        _print_json(summary.model_dump(mode="json"))
        return
    out.print(
        f"{summary.found} defects in {shown(summary.source)}: {summary.imported} imported, "
        f"{summary.present} already in {shown(summary.db)}; {summary.clean_models_imported} "
        "clean models imported",
        soft_wrap=True,
    )
