"""The quickstart build: one clean model, BadNets defects at every level, every criterion."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from trojanscope.database.catalog import Catalog
from trojanscope.device import Amp
from trojanscope.injection.pipeline import InjectionConfig
from trojanscope.injection.quantity import Order, Quantity
from trojanscope.localization.base import CRITERIA, quick_criteria
from trojanscope.workflows.defects import (
    CleanSpec,
    build_defect,
    defect_summary,
    ensure_clean_model,
    localization_summary,
    localize,
)

LEVELS = ("narrow", "small", "middle", "large")


def plan_size(levels: Sequence[str], seeds: Sequence[int], criteria: Sequence[str]) -> int:
    """Number of progress steps of a quickstart build."""
    n_defects = len(levels) * len(seeds)
    return 1 + n_defects * (1 + len(criteria))


def run_quickstart(
    catalog: Catalog,
    spec: CleanSpec,
    attack: str = "badnets",
    attack_params: dict[str, Any] | None = None,
    levels: Sequence[str] = LEVELS,
    seeds: Sequence[int] = (0, 1),
    criteria: Sequence[str] | None = None,
    step: Callable[[str], None] = lambda _msg: None,
    order: Order = "least",
    device: torch.device | None = None,
    amp: Amp = "off",
) -> dict[str, Any]:
    """Build (or resume) the quickstart catalog entries and return the quickstart JSON; the
    networks run on ``device`` (None: the CPU) and the injections train in ``amp`` precision
    (the clean model's is ``spec.training.amp``)."""
    criteria = list(criteria) if criteria is not None else quick_criteria()
    for name in criteria:
        CRITERIA.get(name)  # fail early on an unknown name
    configs = {
        level: InjectionConfig(quantity=Quantity(level=level), order=order, amp=amp)
        for level in levels
    }

    step(f"clean {spec.arch} on {spec.dataset}")
    clean, model, splits = ensure_clean_model(catalog, spec, device)
    defects, localizations = [], []
    for level in levels:
        for seed in seeds:
            step(f"inject {attack} {level} seed {seed}")
            row, _ = build_defect(
                catalog, clean, model, splits, attack, attack_params or {}, configs[level], seed
            )
            defects.append({**defect_summary(row), "seconds": row.seconds})
            for criterion in criteria:
                step(f"localize defect {row.id} with {criterion}")
                if row.status != "accepted":
                    continue
                loc, _ = localize(catalog, row.id, criterion, device=device)
                localizations.append(localization_summary(loc))
    return {
        "clean_model": {
            "id": clean.id,
            "dataset": clean.dataset,
            "arch": clean.arch,
            "arch_params": clean.arch_params,
            "seed": clean.seed,
            "clean_acc": clean.clean_acc,
            "seconds": clean.seconds,
        },
        "defects": defects,
        "localization": localizations,
    }
