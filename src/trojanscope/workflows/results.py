"""Stored study results, read only: the rows `bench localize` and `bench repair` recorded for a
selection of defects, for reports that must not run any criterion or repair again."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from trojanscope.database.catalog import Catalog
from trojanscope.database.schema import Defect, Localization, RepairRow
from trojanscope.errors import TrojanscopeError
from trojanscope.localization.base import CRITERIA
from trojanscope.registry import Registry
from trojanscope.repair.base import REPAIRS
from trojanscope.workflows.defects import localization_summary
from trojanscope.workflows.study import defect_labels, repair_summary

#: The figures of the localization scored against the carrying neurons, flattened as
#: ``carrying_<metric>`` (None when the defect has no carrying flags).
CARRYING_METRICS = ("wji", "f1", "auroc")


def defect_record(row: Defect) -> dict[str, Any]:
    """A defect's study labels with its acceptance figures (status, reason, ASRs, acc drop) and
    its injection's epochs, rounds and aim score (the score of the kept weights)."""
    return {
        **defect_labels(row),
        "status": row.status,
        "reason": row.reason,
        "asr": row.asr,
        "masked_asr": row.masked_asr,
        "patched_asr": row.patched_asr,
        "acc_drop": row.clean_acc_before - row.clean_acc,
        "epochs": row.epochs,
        "rounds": row.attempts,
        "aim_score": row.aim_score,
    }


def count_defects(catalog: Catalog) -> int:
    """Every defect of the catalog, accepted or rejected."""
    with catalog.session() as session:
        return int(session.scalar(select(func.count()).select_from(Defect)) or 0)


@functools.cache
def _defaults(kind: str, name: str) -> dict[str, Any] | None:
    """The default parameters of plug-in ``name`` (None: no longer registered or not
    constructible without parameters)."""
    registry: Registry[Any] = CRITERIA if kind == "criterion" else REPAIRS
    try:
        return dict(registry.create(name).params.model_dump(mode="json"))
    except TrojanscopeError:
        return None


def variant(kind: str, name: str, params: dict[str, Any] | None, **more: Any) -> str:
    """``name`` with the parameters that differ from its defaults, e.g. ``nc (steps=30)``: a
    result computed with other parameters is another group of the study. A parameter added
    since a result was recorded shows as ``absent`` (the result predates it)."""
    defaults = _defaults(kind, name) or {}
    differing = {k: json.dumps(v) for k, v in (params or {}).items() if defaults.get(k, v) != v}
    if params:
        differing.update({k: "absent" for k in defaults if k not in params})
    differing.update({k: json.dumps(v) for k, v in more.items()})
    if not differing:
        return name
    shown = ", ".join(f"{k}={v}" for k, v in sorted(differing.items()))
    return f"{name} ({shown})"


def _localization_row(defect: Defect, loc: Localization) -> dict[str, Any]:
    summary = localization_summary(loc)
    carrying = summary.pop("extra").get("carrying") or {}
    return {
        **defect_labels(defect),
        **summary,
        "criterion": variant("criterion", loc.criterion, loc.params),
        "criterion_name": loc.criterion,
        "evidence": loc.evidence,
        **{f"carrying_{m}": carrying.get(m) for m in CARRYING_METRICS},
    }


def _repair_row(defect: Defect, rep: RepairRow) -> dict[str, Any]:
    more = {} if rep.criterion is None or rep.k == len(defect.infected) else {"k": rep.k}
    return {
        **defect_labels(defect),
        **repair_summary(rep),
        "method": variant("repair", rep.method, rep.params),
        "method_name": rep.method,
        "criterion": None
        if rep.criterion is None
        else variant("criterion", rep.criterion, rep.criterion_params, **more),
        "criterion_name": rep.criterion,
    }


def stored_results(
    catalog: Catalog, defects: Sequence[Defect]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The localization and repair rows already stored for the accepted ``defects`` (rows as
    `bench localize` / `bench repair` print them); reads only, runs nothing."""
    accepted = {d.id: d for d in defects if d.status == "accepted"}
    with catalog.session() as session:
        locs = list(session.scalars(select(Localization).order_by(Localization.id)))
        repairs = list(session.scalars(select(RepairRow).order_by(RepairRow.id)))
    return (
        [_localization_row(accepted[r.defect_id], r) for r in locs if r.defect_id in accepted],
        [_repair_row(accepted[r.defect_id], r) for r in repairs if r.defect_id in accepted],
    )
