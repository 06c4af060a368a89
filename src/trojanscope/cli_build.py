"""Commands of the build system: `db build` (a grid from a spec file, resumable, in parallel),
`db verify`, `db query` and `db stats`. Registered on the main app by ``trojanscope.cli``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
    DeviceOption,
    _device,
    _fmt,
    _print_json,
    _threads,
    db_app,
    err,
    out,
    shown,
)

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
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Jobs running at once, each a process with one torch thread (default 1; "
            "with --ray, the cluster's CPUs, or GPUs on CUDA).",
        ),
    ] = None,
    device: DeviceOption = DEFAULT_DEVICE,
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
    from trojanscope.database.catalog import Catalog
    from trojanscope.workflows.build import run_build
    from trojanscope.workflows.executors import make_executor
    from trojanscope.workflows.plan import check_catalog, make_plan
    from trojanscope.workflows.spec import load_spec

    run_on = _device(device)
    spec = load_spec(spec_file)
    if dry_run:
        plan = make_plan(spec)
        if (db / "catalog.sqlite").exists():
            plan = check_catalog(plan, Catalog.open(db))
        clean, defects = plan.todo()
        counts = {
            "clean_models": {"planned": len(plan.clean), "todo": len(clean)},
            "defects": {"planned": len(plan.defects), "todo": len(defects)},
        }
        if as_json:
            _print_json(counts)
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
    catalog = Catalog.open(db, create=True)
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
def db_verify(db: DbOption = DEFAULT_DB, as_json: JsonFlag = False) -> None:
    """Re-hash every artifact of the catalog; report missing, corrupt and orphaned files (exit
    code 1 if there is any)."""
    from trojanscope.database.catalog import Catalog
    from trojanscope.workflows.query import verify_report

    report = verify_report(Catalog.open(db))
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
        " level, order, seed, status, target_mode, target, dataset, arch; default: every status)."
    ),
]


@db_app.command("query")
def db_query(
    where: WhereOption = None, db: DbOption = DEFAULT_DB, as_json: JsonFlag = False
) -> None:
    """The defects matching a selection, with their keys and weight hashes."""
    from trojanscope.database.catalog import Catalog
    from trojanscope.workflows.query import query

    records = query(Catalog.open(db), where)
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
    where: WhereOption = None, db: DbOption = DEFAULT_DB, as_json: JsonFlag = False
) -> None:
    """Accepted and rejected defects per cell, with how often each acceptance rule rejected."""
    from trojanscope.database.catalog import Catalog
    from trojanscope.workflows.query import stats

    result = stats(Catalog.open(db), where)
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
