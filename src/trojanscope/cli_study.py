"""Commands of the localization and repair study: `localize`, `repair`, `bench localize`,
`bench repair`, `report study`. Registered on the main app by ``trojanscope.cli``."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

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
    open_catalog,
    out,
    parse_key_values,
    shown,
)
from trojanscope.errors import TrojanscopeError

bench_app = typer.Typer(no_args_is_help=True, help="Run the study over the catalog.")
app.add_typer(bench_app, name="bench")
report_app = typer.Typer(no_args_is_help=True, help="Reports of what the catalog holds.")
app.add_typer(report_app, name="report")

ParamOption = Annotated[
    list[str] | None,
    typer.Option("--param", help="Criterion parameter KEY=VALUE (repeatable), e.g. steps=50."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
WhereOption = Annotated[
    str | None,
    typer.Option(
        help="Defects to include, e.g. 'attack=badnets,level=narrow|small' (fields: id, attack,"
        " level, order, seed, status, target_mode, target, dataset, arch, stage, parent; default"
        " status=accepted; status=link selects lifecycle links)."
    ),
]

#: Localization figures of the study tables: (column, key).
LOC_COLUMNS = (("WJI", "wji"), ("F1", "f1"), ("AUROC", "auroc"), ("s", "seconds"))
REPAIR_COLUMNS = (
    ("acc after", "clean_acc_after"),
    ("ASR after", "asr_after"),
    ("ASR drop", "asr_drop"),
    ("DER", "der"),
    ("s", "seconds"),
)


def _names(value: str, registry: Any) -> list[str]:
    """'all' or a comma-separated list of registered names (checked)."""
    if value.strip() == "all":
        return registry.names()
    names = [v.strip() for v in value.split(",") if v.strip()]
    for name in names:
        registry.get(name)
    if not names:
        raise TrojanscopeError("give at least one name, or 'all'.")
    return names


def _mean_std(entry: dict[str, Any], key: str) -> str:
    mean, std = entry.get(key), entry.get(f"{key}_std")
    if mean is None:
        return "-"
    return f"{mean:.2f}" if not std else f"{mean:.2f}±{std:.2f}"


@app.command("localize")
def localize_cmd(
    defect_id: Annotated[int, typer.Argument(help="Defect id (see `trojanscope db list`).")],
    criterion: Annotated[str, typer.Option(help="Criterion (see `trojanscope list criteria`).")],
    param: ParamOption = None,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    as_json: JsonFlag = False,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Localize a stored defect with one criterion and score it against the ground truth."""
    from trojanscope.localization.metrics import top_k
    from trojanscope.workflows.defects import load_scores, localization_summary, localize
    from trojanscope.workflows.records import LocalizeRecord

    _threads()
    run_on = _device(device)
    catalog = open_catalog(db, db_url)
    row, created = localize(
        catalog, defect_id, criterion, parse_key_values(param or []), device=run_on
    )
    neurons, scores = load_scores(catalog, row)
    top = top_k(neurons, scores, row.k)
    score_of = dict(zip(neurons, scores, strict=True))
    result = {
        **localization_summary(row),
        "k": row.k,
        "evidence": row.evidence,
        "params": row.params,
        "reused": not created,
        "top": [{"neuron": str(n), "score": score_of[n]} for n in top],
    }
    if as_json:
        _print_json(LocalizeRecord(**result).model_dump())
        return
    out.print(
        f"defect {defect_id}, criterion {shown(criterion)} (evidence: {shown(row.evidence)})"
        + (" (stored result)" if not created else "")
    )
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("k", "P", "R", "F1", "WJI", "AUROC", "AP", "s", "cost (fwd)"):
        table.add_column(col, justify="right")
    table.add_row(
        str(row.k),
        *(
            _fmt(result[m], 3)
            for m in ("precision", "recall", "f1", "wji", "auroc", "ap", "seconds", "cost_forward")
        ),
    )
    out.print(table)
    extra = result["extra"]
    if "candidate_label" in extra:
        detected = extra.get("detected_label")
        out.print(
            f"reversed-trigger anomaly index {extra['anomaly_index']:.2f} for label "
            f"{extra['candidate_label']}: "
            + (f"target {detected} detected" if detected is not None else "no target detected")
        )
    out.print(
        "top-k: " + ", ".join(f"{shown(t['neuron'])} ({t['score']:.2f})" for t in result["top"])
    )


@app.command("repair")
def repair_cmd(
    defect_id: Annotated[int, typer.Argument(help="Defect id (see `trojanscope db list`).")],
    method: Annotated[str, typer.Option(help="Repair (see `trojanscope list repairs`).")],
    criterion: Annotated[
        str | None, typer.Option(help="Criterion choosing the neurons (not for finetune-all).")
    ] = None,
    k: Annotated[
        int | None,
        typer.Option(
            help="Neurons to repair, 1 to the eligible neuron count (default: ground-truth size)."
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="Repair parameter KEY=VALUE (repeatable), e.g. epochs=5."),
    ] = None,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    as_json: JsonFlag = False,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Repair a stored defect on a criterion's top-k neurons; the stored model is unchanged."""
    from trojanscope.workflows.records import RepairRecord
    from trojanscope.workflows.study import repair_defect, repair_summary

    _threads()
    run_on = _device(device)
    catalog = open_catalog(db, db_url)
    row, created = repair_defect(
        catalog, defect_id, method, criterion, k, parse_key_values(param or []), device=run_on
    )
    result = {**repair_summary(row), "reused": not created}
    if as_json:
        _print_json(RepairRecord(**result).model_dump())
        return
    out.print(
        f"defect {defect_id}: {shown(method)}"
        + (f" on the top {row.k} neurons of {shown(criterion)}" if row.criterion else "")
        + (" (stored result)" if not created else "")
    )
    out.print(
        f"clean accuracy {row.clean_acc_before:.3f} -> {row.clean_acc_after:.3f}, "
        f"ASR {row.asr_before:.3f} -> {row.asr_after:.3f}, DER {row.der:.3f} "
        f"({row.seconds:.1f} s); repaired weights {row.weights_sha256[:12]}"
    )
    if row.details:
        out.print("the run chose: " + ", ".join(shown(f"{k}={v}") for k, v in row.details.items()))


def _study_table(
    title: str,
    table_rows: list[dict[str, Any]],
    keys: list[str],
    columns: tuple[tuple[str, str], ...],
) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for key in (*keys, "n"):
        table.add_column(key, justify="left" if key != "n" else "right")
    for col, _ in columns:
        table.add_column(col, justify="right")
    for entry in table_rows:
        table.add_row(
            *(shown(entry[k]) if entry[k] is not None else "-" for k in keys),
            str(entry["n"]),
            *(_mean_std(entry, key) for _, key in columns),
        )
    return table


def _selection(
    db: Path, db_url: str | None, where: str | None, default_status: str | None = "accepted"
) -> tuple[Any, list[Any]]:
    """The catalog and its defects matching ``where`` (an error if none does); without a
    status condition, those of ``default_status`` (None: every status)."""
    from trojanscope.workflows.study import select_defects

    _threads()
    catalog = open_catalog(db, db_url)
    defects = select_defects(catalog, where, default_status)
    if not defects:
        raise TrojanscopeError(f"no defect in {db} matches the selection.")
    return catalog, defects


def _plots_folder(folder: Path, what: str = "plots") -> Path:
    """``folder``, made now if missing: a path that is a file or cannot be made or written
    fails before any work is done."""
    if folder.exists() and not folder.is_dir():
        raise TrojanscopeError(f"cannot write {what} to {folder}: it is a file, not a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrojanscopeError(f"cannot write {what} to {folder}: {exc.strerror or exc}.") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TrojanscopeError(f"cannot write {what} to {folder}: permission denied.")
    return folder


@bench_app.command("localize")
def bench_localize_cmd(
    criteria: Annotated[str, typer.Option(help="'all' or a comma-separated list.")] = "all",
    where: WhereOption = None,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    plots: Annotated[
        Path | None, typer.Option(help="Folder for the PNG plots (default: DB/plots).")
    ] = None,
    as_json: JsonFlag = False,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Every criterion on every selected defect (stored results reused); aggregate and plot."""
    from trojanscope.localization.base import CRITERIA
    from trojanscope.report.plots import wji_by_level
    from trojanscope.report.tables import aggregate
    from trojanscope.workflows.records import BenchLocalize
    from trojanscope.workflows.study import bench_localize

    run_on = _device(device)
    names = _names(criteria, CRITERIA)
    catalog, defects = _selection(db, db_url, where)
    folder = _plots_folder(plots or db / "plots")
    with _progress(len(defects) * len(names)) as step:
        rows = bench_localize(catalog, defects, names, step, run_on)
    keys = ["criterion", "level", "attack", "order"]
    metrics = ["wji", "f1", "auroc", "ap", "seconds", "cost_forward"]
    table = sorted(
        aggregate(rows, keys, metrics),
        key=lambda e: (e["criterion"], e["attack"], e["order"], e["level"]),
    )
    written = wji_by_level(rows, folder)
    if as_json:
        record = BenchLocalize(rows=rows, table=table, plots=[str(p) for p in written])
        _print_json(record.model_dump())
        return
    columns = (*LOC_COLUMNS, ("cost (fwd)", "cost_forward"))
    out.print(_study_table("localization study (mean±std)", table, keys, columns))
    out.print(f"plots: {', '.join(shown(p) for p in written)}")


@bench_app.command("repair")
def bench_repair_cmd(
    methods: Annotated[str, typer.Option(help="'all' or a comma-separated list.")] = "all",
    criteria: Annotated[str, typer.Option(help="'all' or a comma-separated list.")] = "all",
    k: Annotated[int | None, typer.Option(help="Neurons per repair (default: truth size).")] = None,
    where: WhereOption = None,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    as_json: JsonFlag = False,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Every repair with every criterion on every selected defect; aggregate."""
    from trojanscope.localization.base import CRITERIA
    from trojanscope.repair.base import REPAIRS
    from trojanscope.report.tables import aggregate
    from trojanscope.workflows.records import BenchRepair
    from trojanscope.workflows.study import bench_repair, plan_pairs

    run_on = _device(device)
    method_names = _names(methods, REPAIRS)
    criterion_names = _names(criteria, CRITERIA)
    catalog, defects = _selection(db, db_url, where)
    with _progress(len(defects) * plan_pairs(method_names, criterion_names)) as step:
        rows = bench_repair(catalog, defects, method_names, criterion_names, k, step, run_on)
    keys = ["method", "criterion", "level", "attack", "order"]
    metrics = ["clean_acc_after", "asr_after", "asr_drop", "acc_drop", "der", "seconds"]
    table = sorted(
        aggregate(rows, keys, metrics),
        key=lambda e: (e["method"], e["criterion"] or "", e["attack"], e["order"], e["level"]),
    )
    if as_json:
        _print_json(BenchRepair(rows=rows, table=table).model_dump())
        return
    out.print(_study_table("repair study (mean±std)", table, keys, REPAIR_COLUMNS))


@report_app.command("study")
def report_study_cmd(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for study.html, study.md and the PNG plots.")
    ],
    where: Annotated[
        str | None,
        typer.Option(
            help="Defects to include, as for `bench` (default: every status; rejected defects"
            " appear in the acceptance matrix only)."
        ),
    ] = None,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    as_json: JsonFlag = False,
) -> None:
    """The stored study as an HTML page and a Markdown file; runs no criterion or repair."""
    from trojanscope.report.study import build_report, header, write_report
    from trojanscope.workflows.records import StudyReport
    from trojanscope.workflows.results import count_defects, defect_record, stored_results

    catalog, defects = _selection(db, db_url, where, default_status=None)
    folder = _plots_folder(out_dir, "the report")
    locs, repairs = stored_results(catalog, defects)
    records = [defect_record(d) for d in defects]
    command = shlex.join(["trojanscope", *sys.argv[1:]])
    head = header(db, command, where, records, count_defects(catalog), (len(locs), len(repairs)))
    written = write_report(build_report(head, records, locs, repairs), folder)
    if as_json:
        record = StudyReport(
            html=str(folder / "study.html"),
            markdown=str(folder / "study.md"),
            plots=[str(p) for p in written if p.suffix == ".png"],
            defects=len(records),
            localizations=len(locs),
            repairs=len(repairs),
        )
        _print_json(record.model_dump())
        return
    out.print(
        f"wrote {shown(folder / 'study.html')} and {shown(folder / 'study.md')} "
        f"({len(records)} defects, {len(locs)} localizations, {len(repairs)} repairs)"
    )
