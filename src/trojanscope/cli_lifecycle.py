"""`trojanscope lifecycle`: a stored defect through transfer, compression and deployment
stages. Registered on the main app by ``trojanscope.cli``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from trojanscope.cli import (
    DEFAULT_DB,
    DEFAULT_DEVICE,
    DbOption,
    DbUrlOption,
    DeviceOption,
    _device,
    _fmt,
    _print_json,
    _progress,
    _threads,
    app,
    err,
    open_catalog,
    out,
    shown,
)
from trojanscope.cli_study import WhereOption, _plots_folder, _selection, _study_table, bench_app


@app.command("lifecycle")
def lifecycle_cmd(
    defect_id: Annotated[int, typer.Argument(help="Defect id (see `trojanscope db list`).")],
    stages: Annotated[
        str,
        typer.Option(
            help="Stages in order (see `trojanscope list stages`), each NAME or "
            "NAME(KEY=VALUE,...), e.g. 'finetune-transfer,prune-magnitude(sparsity=0.7),"
            "quantize-int8(mode=dynamic),onnx-export'."
        ),
    ],
    criteria: Annotated[
        str, typer.Option(help="Criteria localizing after each stage (comma-separated).")
    ] = "oracle,tarantula,clp",
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Apply stages to a stored defect, each to the previous one's output, and measure clean
    accuracy, ASR and the criteria's localization after each. Each stage's output is recorded
    as a link of the catalog (the table's id; the stored defect is unchanged): a chain run again
    resumes from what is stored, and every link is localized, repaired, exported and audited
    like a defect."""
    from trojanscope.workflows.lifecycle import Link, parse_stages, run_lifecycle
    from trojanscope.workflows.records import LifecycleRecord

    _threads()
    chain = parse_stages(stages)
    names = [c.strip() for c in criteria.split(",") if c.strip()]
    run_on = _device(device)
    catalog = open_catalog(db, db_url)

    def progress(link: Link) -> None:
        if not as_json:
            source = "stored" if link.reused else f"{link.seconds:.1f} s"
            err.print(
                f"{shown(link.stage)} (id {link.defect_id}): clean accuracy "
                f"{link.clean_acc:.3f}, ASR {link.asr:.3f} ({source})"
            )

    links = run_lifecycle(catalog, defect_id, chain, names, run_on, progress)
    record = LifecycleRecord(
        defect_id=defect_id,
        stages=[
            {
                "stage": link.stage,
                "defect_id": link.defect_id,
                "reused": link.reused,
                "params": link.params,
                "clean_acc": link.clean_acc,
                "asr": link.asr,
                "target": link.target,
                "seconds": link.seconds,
                "max_abs_deviation": link.max_abs_deviation,
                "remaining_infected": link.remaining_infected,
                "details": link.details,
                "localization": link.localization,
            }
            for link in links
        ],
    )
    if as_json:
        _print_json(record.model_dump())
        return
    table = Table(title=f"defect {defect_id} through the lifecycle", box=box.SIMPLE_HEAD)
    for column in ("stage", "id", "clean acc", "ASR", "target", "infected left", "s"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name in names:
        table.add_column(f"{name} AUROC / WJI", justify="right")
    for stage in record.stages:
        scores = {loc.criterion: loc for loc in stage.localization}
        table.add_row(
            shown(stage.stage),
            str(stage.defect_id),
            _fmt(stage.clean_acc),
            _fmt(stage.asr),
            _fmt(stage.target),
            str(stage.remaining_infected),
            _fmt(stage.seconds, 1),
            *(
                f"{_fmt(scores[n].auroc)} / {_fmt(scores[n].wji)}" if n in scores else "-"
                for n in names
            ),
        )
    out.print(table)
    for stage in record.stages:
        if stage.max_abs_deviation is not None:
            out.print(
                f"{shown(stage.stage)}: largest deviation of the runtime's logits from "
                f"PyTorch's {stage.max_abs_deviation:.2e}"
            )


@bench_app.command("lifecycle")
def bench_lifecycle_cmd(
    stages: Annotated[str, typer.Option(help="Stages in order, as for `trojanscope lifecycle`.")],
    criteria: Annotated[
        str, typer.Option(help="Criteria localizing after each stage (comma-separated).")
    ] = "oracle,tarantula,clp",
    where: WhereOption = None,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    plot: Annotated[
        Path | None, typer.Option(help="The PNG plot (default: DB/plots/lifecycle.png).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """The chain on every selected defect: clean accuracy, ASR and each criterion's WJI and
    AUROC after each stage, by level, as a table and a plot along the chain."""
    from trojanscope.report.lifecycle_plot import lifecycle_plot
    from trojanscope.report.plots import _level_key
    from trojanscope.report.tables import aggregate
    from trojanscope.workflows.lifecycle import bench_lifecycle, parse_stages
    from trojanscope.workflows.records import BenchLifecycle

    chain = parse_stages(stages)
    names = [c.strip() for c in criteria.split(",") if c.strip()]
    run_on = _device(device)
    path = plot or db / "plots" / "lifecycle.png"
    _plots_folder(path.parent)
    catalog, defects = _selection(db, db_url, where)
    with _progress(len(defects)) as step:
        rows = bench_lifecycle(catalog, defects, chain, names, step, run_on)
    metrics = ["clean_acc", "asr", *(f"{m}_{c}" for c in names for m in ("wji", "auroc"))]
    table = sorted(
        aggregate(rows, ["position", "stage", "level"], metrics),
        key=lambda e: (e["position"], _level_key(e["level"])),
    )
    written = lifecycle_plot(rows, names, path)
    if as_json:
        _print_json(BenchLifecycle(rows=rows, table=table, plot=str(written)).model_dump())
        return
    columns = (
        ("clean acc", "clean_acc"),
        ("ASR", "asr"),
        *((f"{c} WJI", f"wji_{c}") for c in names),
    )
    out.print(_study_table("lifecycle (mean±std)", table, ["stage", "level"], columns))
    out.print(f"plot: {shown(written)}")
