"""Benchmark: an injection's epochs with what never changes recorded once, against computed
again and again (the injector before 2026-12-03).

Two records save forward passes without changing a value: the preservation targets
(``injection.confined.TARGETS_BUDGET``: the clean model's infected channels on every training
image) and the validation's upstream values (``injection.aim.RERUN_BUDGET``: each epoch's
scoring re-runs only the part of the network training moves). The same injection (one cell
of the attack matrix) runs its first ``--epochs`` epochs with both (``recorded``) and with
neither (``recomputed``: both budgets 0), alternating ``--repeats`` times so that the
machine's noise falls on both. Each run's epoch time (from the end of the first epoch's
validation to the end of the last's) is recorded, and the traces (ASR, damage, patched ASR
per epoch) must be the same.

    python benchmarks/injection_speed.py [ARCH ATTACK LEVEL] [--epochs 4] [--repeats 2]
        [--db DB] [--out OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from _results import write_results
from injection_trace import StopTrace, grid_clean_model, traced

from trojanscope.attacks.base import ATTACKS
from trojanscope.injection import aim, confined
from trojanscope.injection.pipeline import InjectionConfig, inject_defect
from trojanscope.injection.quantity import Quantity


def run(
    clean: Any, splits: Any, args: argparse.Namespace, budgets: tuple[int, int]
) -> dict[str, Any]:
    """The first ``args.epochs`` epochs of the cell with the two records capped at ``budgets``
    (targets, rerun) bytes: seconds per epoch after the first, and the trace."""
    confined.TARGETS_BUDGET, aim.RERUN_BUDGET = budgets
    attack = ATTACKS.create(args.attack, seed=0)
    config = InjectionConfig(quantity=Quantity(level=args.level))
    epochs: list[dict[str, Any]] = []
    with traced(epochs, False, args.epochs), contextlib.suppress(StopTrace):
        inject_defect(clean, splits, attack, config, 0)
    times = [e.pop("time") for e in epochs]
    per_epoch = (times[-1] - times[0]) / (len(times) - 1)
    return {"budgets": budgets, "seconds_per_epoch": per_epoch, "trace": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("arch", nargs="?", default="mobilenetv2")
    parser.add_argument("attack", nargs="?", default="badnets")
    parser.add_argument("level", nargs="?", default="middle")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--limit", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=4, help="at least 2")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--db", type=Path, default=Path("benchmarks/results/matrix-db"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/injection_speed"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    _, clean, splits = grid_clean_model(args.arch, args.width, args.limit, args.db)
    defaults = (confined.TARGETS_BUDGET, aim.RERUN_BUDGET)
    variants = {"recorded": defaults, "recomputed": (0, 0)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, budgets in variants.items():
            runs[name].append(run(clean, splits, args, budgets))
        print({k: round(v[-1]["seconds_per_epoch"], 2) for k, v in runs.items()}, flush=True)
    confined.TARGETS_BUDGET, aim.RERUN_BUDGET = defaults
    traces = [r.pop("trace") for variant in runs.values() for r in variant]
    median = {
        name: statistics.median(r["seconds_per_epoch"] for r in variant)
        for name, variant in runs.items()
    }
    report = {
        "benchmark": "injection_speed",
        "cell": [args.arch, args.attack, args.level, args.width],
        "epochs": args.epochs,
        "runs": runs,
        "median_seconds_per_epoch": median,
        "saved_share": 1 - median["recorded"] / median["recomputed"],
        "same_trace": all(t == traces[0] for t in traces),
        "first_trace": traces[0],
    }
    print(
        json.dumps(
            {k: report[k] for k in ("median_seconds_per_epoch", "saved_share", "same_trace")}
        ),
        flush=True,
    )
    markdown = (
        f"# Injection speed, {args.arch} x {args.attack} x {args.level}\n\n"
        "| variant | median s per epoch |\n| --- | --- |\n"
        + "".join(f"| {name} | {s:.2f} |\n" for name, s in median.items())
        + f"\nSaved: {100 * report['saved_share']:.1f}%. Same trace: {report['same_trace']}.\n"
    )
    write_results(args.out, report, markdown)


if __name__ == "__main__":
    main()
