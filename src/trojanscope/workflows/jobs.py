"""What one job does, wherever it runs: train (or find) a clean model, or inject one defect
and run the spec's criteria and repairs on it. Each entry is recorded as soon as it is made,
so a job killed half-way keeps what it finished."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from trojanscope.database.catalog import Catalog
from trojanscope.workflows.defects import (
    build_clean_model,
    build_defect,
    ensure_clean_model,
    load_defect,
    localize,
)
from trojanscope.workflows.plan import CleanJob, DefectJob
from trojanscope.workflows.study import repair_defect


@dataclass(frozen=True)
class JobResult:
    """What a job did: whether it recorded its main entry now (False: reused) and, for a
    defect, its status and how many localizations and repairs it recorded."""

    kind: Literal["clean", "defect"]
    key: str
    created: bool
    seconds: float
    status: str | None = None
    reason: str | None = None
    defect_id: int | None = None
    analyses: int = 0


def run_clean(job: CleanJob, catalog: Catalog, device: torch.device | None) -> JobResult:
    started = time.perf_counter()
    row, _, _, created = build_clean_model(catalog, job.spec, device)
    return JobResult("clean", row.key, created, time.perf_counter() - started)


def run_defect(job: DefectJob, catalog: Catalog, device: torch.device | None) -> JobResult:
    """The clean model is read back from the catalog (never passed along in memory), so a
    defect is the same whichever process trained its clean model."""
    started = time.perf_counter()
    clean, model, splits = ensure_clean_model(catalog, job.clean.spec, device)
    row, created = build_defect(
        catalog, clean, model, splits, job.attack, job.attack_params, job.config, job.seed
    )
    analyses = 0
    if row.status == "accepted" and (job.criteria or job.repairs):
        context = load_defect(catalog, row.id, device)
        for criterion in job.criteria:
            _, made = localize(catalog, row.id, criterion.name, criterion.params, context)
            analyses += made
        for repair in job.repairs:
            chooser = repair.criterion
            _, made = repair_defect(
                catalog,
                row.id,
                repair.name,
                None if chooser is None else chooser.name,
                repair.k,
                repair.params,
                None if chooser is None else chooser.params,
                context=context,
            )
            analyses += made
    return JobResult(
        "defect",
        row.key,
        created,
        time.perf_counter() - started,
        row.status,
        row.reason,
        row.id,
        analyses,
    )


def run_job(job: CleanJob | DefectJob, catalog: Catalog, device: torch.device | None) -> JobResult:
    """Run ``job`` on ``device`` (None: the CPU)."""
    if isinstance(job, CleanJob):
        return run_clean(job, catalog, device)
    return run_defect(job, catalog, device)
