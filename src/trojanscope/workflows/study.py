"""The localization and repair study over the catalog: select defects, run every criterion and
repair on them (each result stored once, reused afterwards); ``report.tables`` aggregates
the figures."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trojanscope.database.catalog import Catalog, content_key
from trojanscope.database.schema import Defect, RepairRow
from trojanscope.errors import ConfigError
from trojanscope.localization.base import CRITERIA
from trojanscope.localization.metrics import top_k
from trojanscope.repair.base import REPAIRS, run_repair
from trojanscope.workflows.defects import (
    DefectContext,
    _insert,
    eligible_neuron_count,
    find_by_key,
    get_defect,
    list_defects,
    load_defect,
    load_scores,
    localization_summary,
    localize,
    raced_entry,
    require_truth,
)

#: Fields a --where query may name, and how to read them off a defect.
WHERE_FIELDS: dict[str, Callable[[Defect], Any]] = {
    "id": lambda d: d.id,
    "attack": lambda d: d.attack,
    "level": lambda d: d.level,
    "order": lambda d: injection_order(d),
    "seed": lambda d: d.seed,
    "status": lambda d: d.status,
    "target_mode": lambda d: d.target_mode,
    "target": lambda d: d.target,
    "dataset": lambda d: d.clean_model.dataset,
    "arch": lambda d: d.clean_model.arch,
    # lifecycle links (status "link"): the stage that derived them and their parent ("none"
    # on a defect built by injection)
    "stage": lambda d: d.stage or "none",
    "parent": lambda d: d.parent_id or "none",
}


def injection_order(row: Defect) -> str:
    """The rule-1 order a defect was injected in (a factor of the study)."""
    return str((row.injection or {}).get("order", "least"))


def parse_where(query: str | None, default_status: str | None = "accepted") -> dict[str, set[str]]:
    """``"attack=badnets,level=narrow|small"`` -> {field: accepted values}. Without a
    ``status`` condition only ``default_status`` defects are selected (None: every status)."""
    conditions: dict[str, set[str]] = {}
    for part in filter(None, (p.strip() for p in (query or "").split(","))):
        key, sep, values = part.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise ConfigError(f"--where condition '{part}' is not of the form field=value.")
        if key not in WHERE_FIELDS:
            raise ConfigError(
                f"--where cannot filter on '{key}'; fields: {', '.join(WHERE_FIELDS)}."
            )
        conditions.setdefault(key, set()).update(v.strip() for v in values.split("|"))
    if default_status is not None:
        conditions.setdefault("status", {default_status})
    return conditions


def select_defects(
    catalog: Catalog, query: str | None = None, default_status: str | None = "accepted"
) -> list[Defect]:
    """The defects matching ``query`` (see :func:`parse_where`), in id order; lifecycle links
    only when the query asks for ``status=link``."""
    conditions = parse_where(query, default_status)
    links = "link" in conditions.get("status", set())
    return [
        d
        for d in list_defects(catalog)
        if (links or d.parent_id is None)
        and all(str(WHERE_FIELDS[k](d)) in values for k, values in conditions.items())
    ]


def defect_labels(row: Defect) -> dict[str, Any]:
    """The grouping fields of a defect in study tables."""
    return {
        "defect_id": row.id,
        "dataset": row.clean_model.dataset,
        "arch": row.clean_model.arch,
        "attack": row.attack,
        "level": row.level,
        "order": injection_order(row),
        "seed": row.seed,
        "n_infected": len(row.infected),
    }


# -- repair ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepairRequest:
    """A repair with its parameters resolved (defaults filled in, k chosen): its catalog key
    is a hash of all of it."""

    key: str
    method: str
    params: dict[str, Any]
    criterion: str | None
    criterion_params: dict[str, Any] | None
    k: int


def repair_request(
    defect: Defect,
    method: str,
    criterion: str | None,
    k: int | None = None,
    method_params: dict[str, Any] | None = None,
    criterion_params: dict[str, Any] | None = None,
) -> RepairRequest:
    """Resolve a repair of ``defect`` (k defaults to the ground-truth size); bad values are a
    ConfigError of one sentence."""
    repair = REPAIRS.create(method, **(method_params or {}))
    if not repair.uses_neurons:
        criterion, criterion_params, k = None, None, 0
    elif criterion is None:
        raise ConfigError(f"repair '{method}' needs a criterion to choose its neurons.")
    else:
        require_truth(defect)
        chooser = CRITERIA.create(criterion, **(criterion_params or {}))
        criterion_params = chooser.params.model_dump(mode="json")
        k = len(defect.infected) if k is None else k
        if k < 1:
            raise ConfigError(f"--k must be at least 1, not {k}.")
        eligible = eligible_neuron_count(defect.clean_model)
        if k > eligible:
            raise ConfigError(
                f"--k {k} is more than the {eligible} eligible neurons of defect {defect.id}'s "
                f"network ({defect.clean_model.arch})."
            )
    params = repair.params.model_dump(mode="json")
    key = content_key("repair", defect.id, method, params, criterion, criterion_params, k)
    return RepairRequest(key, method, params, criterion, criterion_params, k)


def repair_defect(
    catalog: Catalog,
    defect_id: int,
    method: str,
    criterion: str | None,
    k: int | None = None,
    method_params: dict[str, Any] | None = None,
    criterion_params: dict[str, Any] | None = None,
    context: DefectContext | None = None,
    device: torch.device | None = None,
) -> tuple[RepairRow, bool]:
    """Repair a stored defect with ``method`` on the top-``k`` neurons of ``criterion`` (k
    defaults to the ground-truth size, as the localization metrics do); record it. The stored
    defect is never modified: the repaired weights are a new artifact. Without ``context``
    the defect is loaded on ``device`` (None: the CPU)."""
    defect = context.defect if context is not None else get_defect(catalog, defect_id)
    request = repair_request(defect, method, criterion, k, method_params, criterion_params)
    repair = REPAIRS.create(method, **(method_params or {}))
    key, criterion, k = request.key, request.criterion, request.k
    existing = find_by_key(catalog, RepairRow, key)
    if existing is not None:
        return existing, False
    ctx = context if context is not None else load_defect(catalog, defect_id, device)
    selected = []
    if criterion is not None:
        loc, _ = localize(catalog, defect_id, criterion, request.criterion_params, ctx)
        neurons, scores = load_scores(catalog, loc)
        selected = top_k(neurons, scores, k)
    outcome = run_repair(
        repair,
        ctx.model,
        selected,
        ctx.splits.train,
        ctx.splits.test,
        ctx.poisoned_test.poisoned(),
    )
    weights = catalog.store.encode(outcome.model.state_dict())
    row = RepairRow(
        key=key,
        defect_id=defect_id,
        method=method,
        params=request.params,
        criterion=criterion,
        criterion_params=request.criterion_params,
        k=k,
        neurons={"names": [str(n) for n in outcome.neurons]},
        clean_acc_before=outcome.clean_acc_before,
        clean_acc_after=outcome.clean_acc_after,
        asr_before=outcome.asr_before,
        asr_after=outcome.asr_after,
        der=outcome.der,
        weights_sha256=weights.sha256,
        seconds=outcome.seconds,
        details=outcome.details or None,
    )
    if not _insert(catalog, row, [weights]):  # recorded meanwhile by another process: use its entry
        return raced_entry(catalog, RepairRow, key), False
    return row, True


def repair_summary(row: RepairRow) -> dict[str, Any]:
    """The stable JSON form of a repair (`trojanscope repair --json`)."""
    return {
        "defect_id": row.defect_id,
        "method": row.method,
        "criterion": row.criterion,
        "k": row.k,
        "clean_acc_before": row.clean_acc_before,
        "clean_acc_after": row.clean_acc_after,
        "asr_before": row.asr_before,
        "asr_after": row.asr_after,
        "asr_drop": row.asr_before - row.asr_after,
        "acc_drop": row.clean_acc_before - row.clean_acc_after,
        "der": row.der,
        "seconds": row.seconds,
        "weights_sha256": row.weights_sha256,
        "details": row.details or {},
    }


# -- bench -----------------------------------------------------------------------------------


def bench_localize(
    catalog: Catalog,
    defects: Sequence[Defect],
    criteria: Sequence[str],
    step: Callable[[str], None] = lambda _m: None,
    device: torch.device | None = None,
) -> list[dict[str, Any]]:
    """Every criterion on every defect (stored results reused); one row per pair. Models run
    on ``device`` (None: the CPU)."""
    rows = []
    for defect in defects:
        context: DefectContext | None = None
        for criterion in criteria:
            step(f"localize defect {defect.id} with {criterion}")
            if context is None:
                context = load_defect(catalog, defect.id, device)
            loc, _ = localize(catalog, defect.id, criterion, context=context)
            rows.append({**defect_labels(defect), **localization_summary(loc)})
    return rows


def bench_repair(
    catalog: Catalog,
    defects: Sequence[Defect],
    methods: Sequence[str],
    criteria: Sequence[str],
    k: int | None = None,
    step: Callable[[str], None] = lambda _m: None,
    device: torch.device | None = None,
) -> list[dict[str, Any]]:
    """Every repair method with every criterion (once for methods that ignore neurons), on
    ``device`` (None: the CPU)."""
    rows = []
    for defect in defects:
        context: DefectContext | None = None
        for method in methods:
            pairs: list[str | None] = [*criteria] if REPAIRS.get(method).uses_neurons else [None]
            for criterion in pairs:
                step(f"repair defect {defect.id}: {method} / {criterion or '-'}")
                if context is None:
                    context = load_defect(catalog, defect.id, device)
                row, _ = repair_defect(catalog, defect.id, method, criterion, k, context=context)
                rows.append({**defect_labels(defect), **repair_summary(row)})
    return rows


def plan_pairs(methods: Iterable[str], criteria: Sequence[str]) -> int:
    """Repairs per defect in a repair bench."""
    return sum(len(criteria) if REPAIRS.get(m).uses_neurons else 1 for m in methods)
