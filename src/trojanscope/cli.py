"""The trojanscope command line (Typer + Rich). Every command has a --json form.

Bad input ends with one sentence on stderr and exit code 2; an interrupted command exits 130
with nothing half-written in the catalog.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, cast, get_args

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from trojanscope.errors import TrojanscopeError
from trojanscope.fileio import check_output_file as _check_output_file
from trojanscope.textsafe import HIDDEN_INLINE, escape_match, shown

if TYPE_CHECKING:
    import torch

    from trojanscope.database.catalog import Catalog
    from trojanscope.device import Amp

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Neuron-level backdoor defects: build, localize, score.",
)
db_app = typer.Typer(no_args_is_help=True, help="Build, inspect and verify the catalog.")
app.add_typer(db_app, name="db")


class LiteralConsole(Console):
    """A console that never interprets the strings it prints: no Rich markup (a file named
    ``[bold red]x.pt`` is shown as such), no emoji codes, control characters escaped. Styles
    come only from :class:`rich.text.Text` objects (see :func:`styled`)."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        """Render ``text`` literally (markup and emoji codes off, controls escaped)."""
        kwargs.update(markup=False, emoji=False)
        return super().render_str(HIDDEN_INLINE.sub(escape_match, text), **kwargs)


def styled(*parts: str | tuple[str, str]) -> Text:
    """One line from plain parts and ``(text, style)`` parts, every text shown literally."""
    pieces: list[str | tuple[str, str]] = [
        shown(p) if isinstance(p, str) else (shown(p[0]), p[1]) for p in parts
    ]
    return Text.assemble(*pieces)


# Tables keep their columns when piped to a file (Rich would otherwise assume 80 columns).
out = LiteralConsole(width=None if sys.stdout.isatty() else 132)
err = LiteralConsole(stderr=True)

DbOption = Annotated[
    Path,
    typer.Option(
        "--db", help="Catalog folder (with --db-url: the shared folder of its artifacts)."
    ),
]
DbUrlOption = Annotated[
    str | None,
    typer.Option(
        "--db-url",
        envvar="TROJANSCOPE_DB_URL",
        show_default=False,
        help="PostgreSQL database holding the catalog's rows, e.g. "
        "postgresql://USER@HOST:5432/DB (default: SQLite in --db).",
    ),
]
AttackParamOption = Annotated[
    list[str] | None,
    typer.Option(help="Attack parameter KEY=VALUE (repeatable), e.g. size=4, alpha=0.2."),
]
DataParamOption = Annotated[
    list[str] | None,
    typer.Option(help="Data set parameter KEY=VALUE (repeatable), e.g. limit=6000, data_dir=..."),
]
DeviceOption = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where networks run: auto (CUDA if present, else mps, else cpu), cpu, cuda, "
        "cuda:N or mps.",
    ),
]
AmpOption = Annotated[
    str,
    typer.Option(
        "--amp",
        help="Mixed-precision training (clean and injection): bf16 (CPU; CUDA of compute "
        "capability 8.0+; mps on macOS 14+), fp16 (CUDA, mps) or off. Evaluation and stored "
        "weights stay float32; a model trained with it is a catalog entry of its own.",
    ),
]
DEFAULT_DB = Path("trojanscope-db")
DEFAULT_DEVICE = "auto"
DEFAULT_AMP = "off"


def _threads() -> None:
    """One torch thread per core, at most two: more only makes parallel jobs crawl."""
    import torch

    value = os.environ.get("TROJANSCOPE_THREADS", str(min(2, os.cpu_count() or 1)))
    if not value.isdigit() or int(value) < 1:
        raise TrojanscopeError(f"TROJANSCOPE_THREADS must be a positive integer, not '{value}'.")
    torch.set_num_threads(int(value))


def _device(name: str) -> torch.device:
    """The device ``--device`` names, resolved once per command before any work: one this
    machine lacks is an error of one sentence (exit code 2)."""
    from trojanscope.device import resolve_device

    return resolve_device(name)


def open_catalog(db: Path, url: str | None, create: bool = False) -> Catalog:
    """The catalog ``--db`` (and ``--db-url``) name; with ``create``, made if missing."""
    from trojanscope.database import catalog

    return catalog.Catalog.open(db, create=create, url=url)


def _amp(device: torch.device, amp: str) -> Amp:
    """The precision ``--amp`` names, checked against the device before any work: one the
    device cannot train with is an error of one sentence (exit code 2)."""
    from trojanscope.device import check_amp

    return check_amp(device, amp)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def _progress(total: int) -> Iterator[Any]:
    columns = (
        TextColumn("{task.description:<44}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task("starting", total=total)
        started = [False]

        def step(message: str) -> None:
            if started[0]:
                progress.advance(task)
            started[0] = True
            progress.update(task, description=shown(message))

        yield step
        progress.update(task, completed=total, description="done")


#: The localization figures `db show` prints, in column order.
SHOW_METRICS = ("precision", "recall", "f1", "wji", "auroc", "ap", "seconds", "cost_forward")


def _fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats rounded, None as '-', anything else shown literally."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return shown(value)


#: Seeds reach NumPy and scikit-learn, which take 32-bit unsigned integers.
MAX_SEED = 2**32 - 1


def _check_seeds(seeds: list[int]) -> list[int]:
    """The seeds, each checked to lie in [0, 2**32 - 1]."""
    for seed in seeds:
        if not 0 <= seed <= MAX_SEED:
            raise TrojanscopeError(f"--seed must be between 0 and {MAX_SEED}, not {seed}.")
    return seeds


# -- quickstart ------------------------------------------------------------------------------


@app.command()
def quickstart(
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the results as JSON to this file.")
    ] = None,
    dataset: str = "mnist5k",
    arch: str = "cnn-small",
    width: float = 1.0,
    seed: Annotated[
        list[int] | None, typer.Option(help="Defect seeds, 0 to 2**32-1 (repeatable).")
    ] = None,
    level: Annotated[list[str] | None, typer.Option(help="Levels (repeatable).")] = None,
    criterion: Annotated[
        list[str] | None,
        typer.Option(
            help="Criteria (repeatable; default: all but the expensive anp, nc, mutation)."
        ),
    ] = None,
    attack: Annotated[str, typer.Option(help="Attack (see `trojanscope list attacks`).")] = (
        "badnets"
    ),
    attack_param: AttackParamOption = None,
    data_param: DataParamOption = None,
    order: Annotated[str, typer.Option(help="Injection order: least, most or random.")] = "least",
    device: DeviceOption = DEFAULT_DEVICE,
    amp: AmpOption = DEFAULT_AMP,
) -> None:
    """Train a clean model, inject an attack at every level, localize with the criteria."""
    from trojanscope.attacks.base import ATTACKS, require_injectable
    from trojanscope.fileio import write_atomic
    from trojanscope.injection.quantity import Order
    from trojanscope.localization.base import CRITERIA, quick_criteria
    from trojanscope.models.training import CleanTraining
    from trojanscope.workflows.defects import CleanSpec
    from trojanscope.workflows.quickstart import LEVELS, plan_size, run_quickstart
    from trojanscope.workflows.records import QuickstartResult

    _threads()
    run_on = _device(device)
    precision = _amp(run_on, amp)
    if json_file is not None:
        _check_output_file(json_file)
    levels = _check_levels(level or list(LEVELS))
    seeds = _check_seeds(seed or [0, 1])
    if order not in get_args(Order):
        raise TrojanscopeError(f"unknown order '{order}'; valid orders: least, most, random.")
    criteria = criterion or quick_criteria()
    for name in criteria:
        CRITERIA.get(name)
    spec = CleanSpec(
        dataset=dataset,
        arch=arch,
        dataset_params=parse_key_values(data_param or []),
        arch_params={"width": width},
        training=CleanTraining(amp=precision),
    )
    attack_params = parse_key_values(attack_param or [])
    splits = spec.splits()  # validates names and parameters before any work
    require_injectable(attack)
    ATTACKS.create(attack, **attack_params).validate(splits.shape, splits.num_classes)
    catalog = open_catalog(db, db_url, create=True)
    with _progress(plan_size(levels, seeds, criteria)) as step:
        result = run_quickstart(
            catalog,
            spec,
            attack=attack,
            attack_params=attack_params,
            levels=levels,
            seeds=seeds,
            criteria=criteria,
            step=step,
            order=cast(Order, order),
            device=run_on,
            amp=precision,
        )
    if json_file is not None:
        record = QuickstartResult.model_validate(result).model_dump()
        write_atomic(json_file, (json.dumps(record, indent=2) + "\n").encode())
    _render_quickstart(result)
    if json_file is not None:
        err.print(f"wrote {shown(json_file)}")


def _check_levels(levels: list[str]) -> list[str]:
    from trojanscope.workflows.quickstart import LEVELS

    bad = [lv for lv in levels if lv not in LEVELS]
    if bad:
        raise TrojanscopeError(f"unknown level '{bad[0]}'; valid levels: {', '.join(LEVELS)}.")
    return levels


def _render_quickstart(result: dict[str, Any]) -> None:
    clean = result["clean_model"]
    out.print(
        f"clean model {clean['id']}: {shown(clean['arch'])} on {shown(clean['dataset'])}, "
        f"accuracy {clean['clean_acc']:.3f}"
    )
    table = Table(
        title="defects x criteria (k = number of infected neurons; P@k = R@k = F1)",
        box=box.SIMPLE_HEAD,
    )
    for col in (
        "defect",
        "level",
        "seed",
        "status",
        "acc",
        "ASR",
        "masked",
        "patched",
        "k",
        "criterion",
        "P@k",
        "WJI",
        "AUROC",
        "AP",
        "s",
    ):
        table.add_column(
            col, justify="left" if col in ("level", "status", "criterion") else "right"
        )
    by_defect: dict[int, list[dict[str, Any]]] = {}
    for loc in result["localization"]:
        by_defect.setdefault(loc["defect_id"], []).append(loc)
    for d in result["defects"]:
        head = [
            str(d["id"]),
            _fmt(d["level"]),
            str(d["seed"]),
            _fmt(d["status"]),
            _fmt(d["clean_acc"]),
            _fmt(d["asr"]),
            _fmt(d["masked_asr"]),
            _fmt(d["patched_asr"]),
            str(d["n_infected"]),
        ]
        rows = by_defect.get(d["id"], [])
        if not rows:
            table.add_row(*head, _fmt(d["reason"] or "-"))
        for i, loc in enumerate(rows):
            cells = head if i == 0 else [""] * len(head)
            table.add_row(
                *cells,
                _fmt(loc["criterion"]),
                *(_fmt(loc[m], 2) for m in ("precision", "wji", "auroc", "ap", "seconds")),
                end_section=i == len(rows) - 1,
            )
    out.print(table)


def parse_key_values(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; VALUE is read as JSON when it parses (numbers, booleans), else a string."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TrojanscopeError(f"'{item}' is not of the form KEY=VALUE.")
        if key == "seed":
            raise TrojanscopeError("give the seed with --seed, not as a KEY=VALUE parameter.")
        try:
            params[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            params[key.replace("-", "_")] = value
    return params


# -- inject ----------------------------------------------------------------------------------


@app.command()
def inject(
    dataset: Annotated[str, typer.Option(help="Data set name (see `trojanscope list datasets`).")],
    arch: Annotated[str, typer.Option(help="Architecture (see `trojanscope list architectures`).")],
    attack: Annotated[str, typer.Option(help="Attack (see `trojanscope list attacks`).")],
    level: Annotated[str, typer.Option(help="narrow, small, middle or large.")] = "small",
    seed: Annotated[
        int, typer.Option(help="Seed of the clean model and of the defect (0 to 2**32-1).")
    ] = 0,
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    width: Annotated[float, typer.Option(help="Architecture width multiplier.")] = 1.0,
    target: Annotated[int | None, typer.Option(help="Target label (default 0).")] = None,
    target_mode: Annotated[
        str | None, typer.Option(help="all-to-one (default) or all-to-all.")
    ] = None,
    poison_rate: Annotated[
        float | None, typer.Option(help="Poisoned fraction (default: the attack's own).")
    ] = None,
    order: Annotated[str, typer.Option(help="Injection order: least, most or random.")] = "least",
    edges: Annotated[str, typer.Option(help="fan-in or fan-in+fan-out.")] = "fan-in",
    confine: Annotated[
        bool,
        typer.Option(
            help="Train the backdoor through the infected set alone and require it to be "
            "sufficient (patched ASR >= 0.8 x ASR). --no-confine: plain masked training, the "
            "patched ASR recorded but not required."
        ),
    ] = True,
    attack_param: AttackParamOption = None,
    data_param: DataParamOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
    device: DeviceOption = DEFAULT_DEVICE,
    amp: AmpOption = DEFAULT_AMP,
) -> None:
    """Inject one defect (training or reusing the clean model) and print its record."""
    from trojanscope.attacks.base import ATTACKS, require_injectable
    from trojanscope.injection.pipeline import InjectionConfig
    from trojanscope.models.training import CleanTraining
    from trojanscope.registry import validate_params
    from trojanscope.workflows.defects import (
        CleanSpec,
        build_defect,
        defect_summary,
        ensure_clean_model,
    )
    from trojanscope.workflows.records import DefectSummary

    _threads()
    run_on = _device(device)
    precision = _amp(run_on, amp)
    _check_seeds([seed])
    _check_levels([level])
    given = {"target": target, "target_mode": target_mode, "poison_rate": poison_rate}
    # Only what the user gave: each attack keeps its own defaults (and catalog identity).
    attack_params = {
        **{k: v for k, v in given.items() if v is not None},
        **parse_key_values(attack_param or []),
    }
    config = validate_params(
        "injection",
        InjectionConfig,
        {
            "quantity": {"level": level},
            "order": order,
            "edges": edges,
            "confine": confine,
            "amp": precision,
            **({} if confine else {"acceptance": {"min_patched_ratio": 0.0}}),
        },
    )
    spec = CleanSpec(
        dataset=dataset,
        arch=arch,
        seed=seed,
        dataset_params=parse_key_values(data_param or []),
        arch_params={"width": width},
        training=CleanTraining(amp=precision),
    )
    splits = spec.splits()  # validates the names; checks the attack fits before any training
    require_injectable(attack)
    ATTACKS.create(attack, seed=seed, **attack_params).validate(splits.shape, splits.num_classes)
    catalog = open_catalog(db, db_url, create=True)
    with _progress(2) as step:
        step(f"clean {arch} on {dataset}")
        clean, model, splits = ensure_clean_model(catalog, spec, run_on)
        step(f"inject {attack} {level}")
        row, created = build_defect(
            catalog, clean, model, splits, attack, attack_params, config, seed
        )
    record = defect_summary(row)
    if as_json:
        _print_json(DefectSummary(**record).model_dump())
        return
    _render_defect(row, reused=not created)


def _render_defect(row: Any, reused: bool = False) -> None:
    from trojanscope.workflows.defects import defect_summary

    table = Table(
        show_header=False, title=f"defect {row.id}" + (" (from the catalog)" if reused else "")
    )
    for key, value in defect_summary(row).items():
        table.add_row(key, _fmt(value))
    clean = row.clean_model
    table.add_row("dataset / arch", shown(f"{clean.dataset} / {clean.arch} {clean.arch_params}"))
    if row.parent_id is None:
        table.add_row("clean model acc", _fmt(row.clean_acc_before))
    else:  # a lifecycle link: its parent's accuracy, before the stage
        table.add_row("link of", f"{row.parent_id}: {shown(row.stage)} {shown(row.stage_params)}")
        table.add_row("acc before the stage", _fmt(row.clean_acc_before))
    table.add_row("epochs", str(row.epochs))
    table.add_row("weights sha256", _fmt(row.weights_sha256))
    table.add_row("trigger sha256", _fmt(row.trigger_sha256))
    out.print(table)


# -- list ------------------------------------------------------------------------------------

KINDS = {
    "datasets": ("trojanscope.data.base", "DATASETS"),
    "architectures": ("trojanscope.models.base", "ARCHITECTURES"),
    "attacks": ("trojanscope.attacks.base", "ATTACKS"),
    "criteria": ("trojanscope.localization.base", "CRITERIA"),
    "repairs": ("trojanscope.repair.base", "REPAIRS"),
    "stages": ("trojanscope.lifecycle.base", "STAGES"),
}
ALIASES = {
    "dataset": "datasets",
    "architecture": "architectures",
    "archs": "architectures",
    "arch": "architectures",
    "attack": "attacks",
    "criterion": "criteria",
    "repair": "repairs",
    "stage": "stages",
}


@app.command("list")
def list_kind(
    kind: Annotated[
        str, typer.Argument(help="datasets, architectures, attacks, criteria, repairs or stages.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """The registered names of one plug-in kind."""
    import importlib

    key = ALIASES.get(kind, kind)
    if key not in KINDS:
        raise TrojanscopeError(f"unknown kind '{kind}'; valid kinds: {', '.join(KINDS)}.")
    module, attr = KINDS[key]
    names = getattr(importlib.import_module(module), attr).names()
    if as_json:
        _print_json(names)
    else:
        for name in names:
            out.print(shown(name))


# -- db --------------------------------------------------------------------------------------


@db_app.command("list")
def db_list(
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Every defect in the catalog, one line each."""
    from trojanscope.workflows.defects import defect_summary, list_defects
    from trojanscope.workflows.records import DefectSummary

    rows = list_defects(open_catalog(db, db_url))
    if as_json:
        _print_json([DefectSummary(**defect_summary(r)).model_dump() for r in rows])
        return
    table = Table(title=f"defects in {shown(db)}")
    for col in (
        "id",
        "dataset",
        "arch",
        "attack",
        "level",
        "seed",
        "status",
        "acc",
        "ASR",
        "masked",
        "n",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r.id),
            _fmt(r.clean_model.dataset),
            _fmt(r.clean_model.arch),
            _fmt(r.attack),
            _fmt(r.level),
            str(r.seed),
            _fmt(r.status if r.parent_id is None else f"link of {r.parent_id}: {r.stage}"),
            _fmt(r.clean_acc),
            _fmt(r.asr),
            _fmt(r.masked_asr),
            str(len(r.infected)),
        )
    out.print(table)


@db_app.command("show")
def db_show(
    defect_id: Annotated[int, typer.Argument(help="Defect id (see `trojanscope db list`).")],
    db: DbOption = DEFAULT_DB,
    db_url: DbUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full record as JSON.")] = False,
) -> None:
    """One defect with its infected neurons and localization results."""
    from trojanscope.workflows.defects import (
        defect_summary,
        get_defect,
        list_localizations,
        localization_summary,
    )
    from trojanscope.workflows.lifecycle_store import link_summary
    from trojanscope.workflows.records import DefectDetail

    catalog = open_catalog(db, db_url)
    row = get_defect(catalog, defect_id)
    locs = [localization_summary(loc) for loc in list_localizations(catalog, defect_id)]
    neurons = [
        {
            "neuron": f"{n.layer}:{n.index}",
            "rank": n.rank,
            "contribution": n.contribution,
            "activation_shift": n.activation_shift,
            "carrying": n.carrying,
        }
        for n in row.infected
    ]
    if as_json:
        clean = row.clean_model
        record = DefectDetail(
            **{
                **defect_summary(row),
                "dataset": clean.dataset,
                "arch": clean.arch,
                "arch_params": clean.arch_params,
                "clean_model_id": clean.id,
                "clean_acc_before": row.clean_acc_before,
                "asr_before": row.asr_before,
                "attack_params": row.attack_params,
                "injection": row.injection,
                "epochs": row.epochs,
                "weights_sha256": row.weights_sha256,
                "trigger_sha256": row.trigger_sha256,
                "poisoned_test_sha256": row.poisoned_test_sha256,
                "seconds": row.seconds,
                "infected": neurons,
                "localization": locs,
                "link": None if row.parent_id is None else link_summary(row),
            }
        )
        _print_json(record.model_dump())
        return
    _render_defect(row)
    table = Table(title="infected neurons (injection order)")
    for col in ("neuron", "rank", "contribution", "activation shift", "carrying"):
        table.add_column(col)
    for n in neurons:
        table.add_row(
            _fmt(n["neuron"]),
            str(n["rank"]),
            _fmt(n["contribution"]),
            _fmt(n["activation_shift"]),
            _fmt(n["carrying"]),
        )
    out.print(table)
    if locs:
        table = Table(title="localization")
        for col in ("criterion", "P", "R", "F1", "WJI", "AUROC", "AP", "s", "cost"):
            table.add_column(col)
        for loc in locs:
            table.add_row(_fmt(loc["criterion"]), *(_fmt(loc[m], 2) for m in SHOW_METRICS))
        out.print(table)


# The build, study and audit commands (db build/verify/query/stats/export/import, localize,
# repair, bench, scan, manifest, audit, neuba) live in their own modules.
from trojanscope import cli_build, cli_lifecycle, cli_neuba, cli_scan, cli_study  # noqa: E402, F401

#: What an interrupted command prints (the README promises it).
INTERRUPTED = "interrupted: finished entries are kept, nothing half-written."


def _exit_interrupted() -> NoReturn:
    """Say what was kept and exit 130 at once. Every ``finally`` has run by now (nothing is
    half-written); ``os._exit`` skips only the interpreter's teardown, where CPython turns a
    Ctrl-C it once saw inside nested evaluated code into death by SIGINT (exit -2, no code)."""
    err.print(INTERRUPTED, highlight=False, soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _by_interrupt(exc: BaseException) -> bool:
    """True when ``exc`` (Typer's exit) was caused by a KeyboardInterrupt: Typer turns Ctrl-C
    into a silent exit with code 130, so the cause is found in the exception chain."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        if isinstance(item, KeyboardInterrupt):
            return True
        seen.add(id(item))
        todo += [item.__cause__, item.__context__]
    return False


def main() -> None:
    """Entry point: user errors become one sentence and exit code 2, never a traceback;
    Ctrl-C ends with exit code 130 and a sentence saying what was kept."""
    from trojanscope import interrupt

    interrupt.install()
    sys.argv[1:] = cli_build.bare_ray_option(sys.argv[1:])
    try:
        app()
    except TrojanscopeError as exc:
        err.print(f"error: {shown(exc)}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        _exit_interrupted()
    except SystemExit as exc:
        # An interrupt seen but swallowed on its way up (Python ignores an exception raised in a
        # garbage-collection callback: SQLAlchemy's, at start-up) still ends the command as one.
        if interrupt.seen() or (exc.code == 130 and _by_interrupt(exc)):
            _exit_interrupted()
        raise
    except Exception as exc:
        if interrupt.seen() or _by_interrupt(exc):
            _exit_interrupted()  # e.g. an import interrupted while a C extension initialised
        if os.environ.get("TROJANSCOPE_DEBUG"):
            raise
        err.print(
            f"internal error: {type(exc).__name__}: {shown(exc)} "
            "(set TROJANSCOPE_DEBUG=1 for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    # `python -m trojanscope.cli` runs this file as __main__, but the commands of cli_scan and
    # cli_study register on the app of the module trojanscope.cli: run that one.
    from trojanscope.cli import main as _main

    _main()
