"""Reading the catalog for `db query`, `db stats` and `db verify`: defect records, acceptance
per cell with the rejection reasons by rule, and the integrity of the store."""

from __future__ import annotations

import re
from collections import Counter

from trojanscope.attacks.base import ATTACKS
from trojanscope.data.base import DATASETS
from trojanscope.database.catalog import Catalog
from trojanscope.database.integrity import verify
from trojanscope.database.schema import Defect
from trojanscope.models.base import ARCHITECTURES
from trojanscope.workflows.labels import plugin_label
from trojanscope.workflows.records import (
    ArtifactProblem,
    CellStats,
    DefectRecord,
    ReasonCount,
    Stats,
    VerifyReport,
)
from trojanscope.workflows.study import injection_order, select_defects


def defect_record(row: Defect) -> DefectRecord:
    clean = row.clean_model
    return DefectRecord(
        id=row.id,
        key=row.key,
        status=row.status,
        reason=row.reason,
        dataset=clean.dataset,
        arch=clean.arch,
        arch_params=clean.arch_params,
        attack=row.attack,
        order=injection_order(row),
        level=row.level,
        seed=row.seed,
        clean_model_key=clean.key,
        clean_acc=row.clean_acc,
        asr=row.asr,
        masked_asr=row.masked_asr,
        patched_asr=row.patched_asr,
        n_infected=len(row.infected),
        weights_sha256=row.weights_sha256,
        trigger_sha256=row.trigger_sha256,
    )


def query(catalog: Catalog, where: str | None = None) -> list[DefectRecord]:
    """The defects matching ``where`` (``--where`` syntax; every status unless it names one)."""
    return [defect_record(row) for row in select_defects(catalog, where, default_status=None)]


_FIRST_FIGURE = re.compile(r"\s*[-+]?\d.*$")


def reason_rules(reason: str | None) -> list[str]:
    """The acceptance rules a rejection reason names, without its figures:
    ``"ASR 0.210 < 0.90; patched ASR ..."`` -> ``["ASR", "patched ASR"]``."""
    return [
        _FIRST_FIGURE.sub("", part).strip() or part for part in (reason or "").split("; ") if part
    ]


def cell_of(row: Defect) -> tuple[str, str, str, str, str]:
    """(data set, architecture, attack, order, level) labels of a defect's cell."""
    clean = row.clean_model
    return (
        plugin_label(DATASETS, clean.dataset, clean.dataset_params),
        plugin_label(ARCHITECTURES, clean.arch, clean.arch_params),
        plugin_label(ATTACKS, row.attack, row.attack_params),
        injection_order(row),
        row.level,
    )


def stats(catalog: Catalog, where: str | None = None) -> Stats:
    """Accepted and rejected defects per cell, with how often each rule rejected one."""
    # acceptance is a property of injected defects: lifecycle links are not counted
    rows = [r for r in select_defects(catalog, where, default_status=None) if r.parent_id is None]
    accepted: Counter[tuple[str, ...]] = Counter()
    rejected: Counter[tuple[str, ...]] = Counter()
    reasons: dict[tuple[str, ...], Counter[str]] = {}
    for row in rows:
        cell = cell_of(row)
        reasons.setdefault(cell, Counter())
        if row.status == "accepted":
            accepted[cell] += 1
        else:
            rejected[cell] += 1
            reasons[cell].update(reason_rules(row.reason) or ["(no reason recorded)"])
    cells = [
        CellStats(
            dataset=cell[0],
            arch=cell[1],
            attack=cell[2],
            order=cell[3],
            level=cell[4],
            accepted=accepted[cell],
            rejected=rejected[cell],
            reasons=[ReasonCount(reason=r, count=n) for r, n in counts.most_common()],
        )
        for cell, counts in reasons.items()
    ]
    return Stats(
        db=str(catalog.root),
        defects=len(rows),
        accepted=sum(accepted.values()),
        rejected=sum(rejected.values()),
        cells=cells,
    )


def verify_report(catalog: Catalog) -> VerifyReport:
    """Every artifact re-hashed: missing, corrupt and orphaned files."""
    found = verify(catalog)
    problems = [
        [
            ArtifactProblem(sha256=p.sha256, path=str(p.path), referenced_by=p.referenced_by)
            for p in kind
        ]
        for kind in (found.missing, found.corrupt)
    ]
    return VerifyReport(
        db=str(catalog.root),
        ok=found.ok,
        checked=found.checked,
        missing=problems[0],
        corrupt=problems[1],
        orphans=[str(p) for p in found.orphans],
    )
