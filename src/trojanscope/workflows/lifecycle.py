"""Follow a stored defect through lifecycle stages: after each stage, clean accuracy, ASR, and
how well the localization criteria still find the infected neurons that remain."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel

from trojanscope.database.catalog import Catalog
from trojanscope.database.schema import Defect
from trojanscope.device import CPU
from trojanscope.errors import ConfigError
from trojanscope.lifecycle.base import STAGES, ChainState, Form, Stage, Task
from trojanscope.localization.base import CRITERIA
from trojanscope.models.training import accuracy
from trojanscope.workflows.defects import DefectContext, get_defect, load_defect, localize
from trojanscope.workflows.lifecycle_store import find_link, record_link
from trojanscope.workflows.study import injection_order

#: What `lifecycle` localizes with by default: the activation-shift reference, a spectrum
#: criterion and a weights-only one (each reads the model differently).
DEFAULT_CRITERIA = ("oracle", "tarantula", "clp")

_STAGE = re.compile(r"\s*([A-Za-z0-9_-]+)\s*(?:\(([^()]*)\))?\s*")
_OPEN, _CLOSE = "[{", "]}"


def _split_top(text: str) -> list[str]:
    """``text`` split at the commas outside brackets, braces and double quotes (a parameter's
    JSON value may hold commas)."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in _OPEN:
            depth += 1
        elif not quoted and ch in _CLOSE:
            depth -= 1
        elif ch == "," and depth == 0 and not quoted:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def parse_stages(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``'prune-magnitude(sparsity=0.7,structure=channel),quantize-int8'`` -> names with
    parameters (values read as JSON where they parse, else as strings); names checked."""
    stages: list[tuple[str, dict[str, Any]]] = []
    position = 0
    while position < len(text):
        match = _STAGE.match(text, position)
        if match is None or match.end() == position:
            raise ConfigError(
                f"cannot read the stage list at '{text[position:]}': give NAME or "
                "NAME(KEY=VALUE,...) separated by commas."
            )
        name, inner = match.group(1), match.group(2)
        STAGES.get(name)  # an unknown name fails here, with the valid ones
        params: dict[str, Any] = {}
        for item in _split_top(inner or ""):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"stage parameter '{item}' of '{name}' is not KEY=VALUE.")
            try:
                params[key.strip().replace("-", "_")] = json.loads(value)
            except json.JSONDecodeError:
                params[key.strip().replace("-", "_")] = value.strip()
        stages.append((name, params))
        position = match.end()
        if position < len(text):
            if text[position] != ",":
                raise ConfigError(f"expected ',' between stages at '{text[position:]}'.")
            position += 1
    if not stages:
        raise ConfigError("give at least one stage.")
    return stages


@dataclass
class Link:
    """What one stage did and what was measured after it."""

    stage: str
    params: dict[str, Any]
    clean_acc: float
    asr: float
    target: int | None
    seconds: float
    details: dict[str, Any]
    localization: list[dict[str, Any]]
    remaining_infected: int
    #: The catalog entry: the defect itself, then each link (status ``link``).
    defect_id: int = 0
    #: Whether the link was found in the catalog (a resumed chain) rather than computed now.
    reused: bool = False

    @property
    def max_abs_deviation(self) -> float | None:
        value = self.details.get("max_abs_deviation")
        return None if value is None else float(value)


def initial_state(ctx: DefectContext, device: torch.device) -> ChainState:
    """A catalog entry (a defect or a float link) as a chain state: its model, task and truth."""
    view = ctx.poisoned_test
    row = ctx.defect
    clean = row.clean_model
    task = Task(
        dataset=clean.dataset,
        splits=ctx.splits,
        attack=ctx.attack,
        clean_victims=ctx.splits.test.subset(view.indices),
        triggered=view.poisoned(),
        target=row.target if row.target_mode != "all-to-all" else None,
        dataset_params=clean.dataset_params,
        split_seed=clean.seed,
        victim_indices=view.indices,
    )
    return ChainState(ctx.model.eval(), "float", task, dict(ctx.truth), ctx.model, device)


def localize_entry(
    catalog: Catalog, ctx: DefectContext, criteria: Sequence[str]
) -> list[dict[str, Any]]:
    """Each criterion's figures on a stored entry's network against its ground truth, stored
    and reused like any localization (nothing when no infected neuron is left)."""
    if not ctx.defect.infected:
        return []
    results = []
    for name in criteria:
        row, _ = localize(catalog, ctx.defect.id, name, context=ctx)
        results.append(
            {
                "criterion": name,
                "wji": row.wji,
                "auroc": row.auroc,
                "f1": row.f1,
                "seconds": row.seconds,
            }
        )
    return results


def _create(name: str, params: dict[str, Any]) -> Stage[BaseModel]:
    return STAGES.create(name, **params)


def _link(row: Defect, localization: list[dict[str, Any]], reused: bool) -> Link:
    details = dict(row.stage_details or {})
    return Link(
        stage=row.stage or "original",
        params=dict(row.stage_params or {}),
        clean_acc=row.clean_acc,
        asr=row.asr,
        target=row.target if row.target_mode != "all-to-all" else None,
        seconds=row.seconds,
        details=details,
        localization=localization,
        remaining_infected=len(row.infected),
        defect_id=row.id,
        reused=reused,
    )


def run_lifecycle(
    catalog: Catalog,
    defect_id: int,
    stages: Sequence[tuple[str, dict[str, Any]]],
    criteria: Sequence[str] = DEFAULT_CRITERIA,
    device: torch.device | None = None,
    on_link: Callable[[Link], None] | None = None,
) -> list[Link]:
    """The defect as stored, then each stage applied to the previous one's output, measured
    and recorded as a link of the catalog; a link already there is reused, so an interrupted
    chain resumes where it stopped and a longer one extends a shorter one.

    Every stage and criterion is validated before any work, and a stage that cannot follow the
    previous one says so before the chain starts."""
    plugins = [_create(name, params) for name, params in stages]
    for name in criteria:
        CRITERIA.get(name)
    entry = get_defect(catalog, defect_id)  # a chain may start at a stored link: from its form
    form: Form = (entry.stage_details or {}).get("form", "float")
    previous = entry.stage or "original"
    for plugin in plugins:  # forms are declared: refuse an impossible chain before any work
        plugin.check_follows(form, previous)
        form, previous = plugin.produces, plugin.name
    run_on = device or CPU
    ctx = load_defect(catalog, defect_id, run_on)
    state = initial_state(ctx, run_on)
    task = state.task
    stored = entry.parent_id is not None  # a link's figures are those of the form that ran
    original = Link(
        stage="original",
        params={},
        clean_acc=entry.clean_acc if stored else accuracy(state.model, task.splits.test),
        asr=entry.asr if stored else accuracy(state.model, task.triggered),
        target=task.target,
        seconds=0.0,
        details={},
        localization=localize_entry(catalog, ctx, criteria),
        remaining_infected=len(state.truth),
        defect_id=defect_id,
    )
    links = [original]
    if on_link is not None:
        on_link(original)
    parent = ctx.defect
    for position, plugin in enumerate(plugins):
        row = find_link(catalog, parent, plugin)
        reused = row is not None
        if row is None:
            started = time.perf_counter()
            result = plugin.apply(state)
            seconds = time.perf_counter() - started
            row = record_link(catalog, parent, plugin, state, result, seconds, run_on)
        last = position == len(plugins) - 1
        localization: list[dict[str, Any]] = []
        if row.stage_details and row.stage_details.get("form") != "onnx":
            # the chain goes on from what is stored, so a resumed chain equals a fresh one
            ctx = load_defect(catalog, row.id, run_on)
            localization = localize_entry(catalog, ctx, criteria)
            if not last:
                state = initial_state(ctx, run_on)
        links.append(_link(row, localization, reused))
        if on_link is not None:
            on_link(links[-1])
        parent = row
    return links


def link_row(defect: Defect, position: int, link: Link) -> dict[str, Any]:
    """One row of `bench lifecycle`: the defect's labels, the link's figures, and each
    criterion's WJI and AUROC as ``wji_<criterion>`` / ``auroc_<criterion>``."""
    row: dict[str, Any] = {
        "defect_id": defect.id,
        "level": defect.level,
        "attack": defect.attack,
        "order": injection_order(defect),
        "position": position,
        "stage": link.stage,
        "clean_acc": link.clean_acc,
        "asr": link.asr,
        "remaining_infected": link.remaining_infected,
        "max_abs_deviation": link.max_abs_deviation,
        "seconds": link.seconds,
    }
    for loc in link.localization:
        row[f"wji_{loc['criterion']}"] = loc["wji"]
        row[f"auroc_{loc['criterion']}"] = loc["auroc"]
    return row


def bench_lifecycle(
    catalog: Catalog,
    defects: Sequence[Defect],
    stages: Sequence[tuple[str, dict[str, Any]]],
    criteria: Sequence[str] = DEFAULT_CRITERIA,
    step: Callable[[str], None] = lambda _msg: None,
    device: torch.device | None = None,
) -> list[dict[str, Any]]:
    """The chain on every defect: one row per defect and link."""
    rows: list[dict[str, Any]] = []
    for defect in defects:
        links = run_lifecycle(catalog, defect.id, stages, criteria, device)
        rows.extend(link_row(defect, i, link) for i, link in enumerate(links))
        step(f"defect {defect.id}")
    return rows
