"""Benchmark: every attack x architecture x level on Fashion-MNIST at the defaults, seed 0.

The CPU-sized reference grid: the six architectures at the grid's widths (``GRID_WIDTHS``:
cnn-small at 1.0, the others at 0.25; ``--width`` sets one for all), the six attacks, the four
levels. Falls back to mnist5k when Debian's dataset-fashion-mnist is absent. Results
go to a catalog (resumable: rerun after an interruption and finished cells are reused) and
are written as JSON and as a Markdown table; a cell the attack cannot be placed in (e.g. SRA's
subnet where a residual addition cuts it) is recorded with its reason. Each cell also gives
its epochs and training rounds and the injector's score of the kept weights on training images
(``aim``): below 1 the injection ended on its budget or a stall short of its goals, so a
rejection there may be the budget's rather than the attack's.

    python benchmarks/attack_matrix.py [--db benchmarks/results/matrix-db] [--limit 4000]
        [--width W] [--levels narrow,small,middle,large] [--arch A]... [--attack X]...
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
from _results import write_results

from trojanscope.attacks.base import injectable_attacks
from trojanscope.data.base import DATASETS
from trojanscope.database.catalog import Catalog
from trojanscope.errors import TrojanscopeError
from trojanscope.injection.pipeline import InjectionConfig
from trojanscope.injection.quantity import Quantity
from trojanscope.models.base import ARCHITECTURES
from trojanscope.workflows.defects import CleanSpec, build_defect, ensure_clean_model


def pick_dataset(limit: int) -> tuple[str, dict]:
    try:
        DATASETS.create("fashion-mnist", limit=limit).load(0)
        return "fashion-mnist", {"limit": limit}
    except TrojanscopeError as exc:
        print(f"fashion-mnist unavailable ({exc}); falling back to mnist5k")
        return "mnist5k", {}


# cnn-small is the one architecture whose layers at 0.25 are too thin for the reference's 3 and
# 4 neurons under the thin-layer rule; at 0.5 it reaches 0.76 clean accuracy, and SRA's
# replaced neurons (11 at large) cost the host 3.2 points, more than the acceptance rule allows.
GRID_WIDTHS = {"cnn-small": 1.0}
DEFAULT_WIDTH = 0.25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=Path("benchmarks/results/matrix-db"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attack_matrix"))
    parser.add_argument("--limit", type=int, default=4000, help="images drawn from the data set")
    parser.add_argument("--levels", default="narrow,small,middle,large")
    parser.add_argument("--width", type=float, help="one width for every architecture")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arch", action="append", help="restrict to these architectures")
    parser.add_argument("--attack", action="append", help="restrict to these attacks")
    parser.add_argument("--config", default="{}", help="InjectionConfig fields as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.db.parent.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.open(args.db, create=True)
    dataset, ds_params = pick_dataset(args.limit)
    levels = args.levels.split(",")
    rows = []
    arch_widths = {
        arch: args.width or GRID_WIDTHS.get(arch, DEFAULT_WIDTH)
        for arch in args.arch or ARCHITECTURES.names()
    }
    for arch, width in arch_widths.items():
        spec = CleanSpec(dataset, arch, dataset_params=ds_params, arch_params={"width": width})
        started = time.perf_counter()
        clean, model, splits = ensure_clean_model(catalog, spec)
        print(f"{arch}: clean acc {clean.clean_acc:.3f} ({time.perf_counter() - started:.0f} s)")
        for attack, level in itertools.product(args.attack or injectable_attacks(), levels):
            started = time.perf_counter()
            config = InjectionConfig(quantity=Quantity(level=level), **json.loads(args.config))
            try:
                defect, _ = build_defect(catalog, clean, model, splits, attack, {}, config, 0)
            except TrojanscopeError as exc:
                rows.append({"arch": arch, "attack": attack, "level": level, "error": str(exc)})
                print(f"  {attack} {level}: error {exc}", flush=True)
                continue
            row = {
                "arch": arch,
                "width": width,
                "attack": attack,
                "level": level,
                "defect_id": defect.id,
                "clean_acc_before": defect.clean_acc_before,
                "clean_acc": defect.clean_acc,
                "asr": defect.asr,
                "masked_asr": defect.masked_asr,
                "masked_asr_before": defect.masked_asr_before,
                "patched_asr": defect.patched_asr,
                "status": defect.status,
                "reason": defect.reason,
                "epochs": defect.epochs,
                "rounds": defect.attempts,
                "aim_score": defect.aim_score,
                "inject_seconds": defect.seconds,
                "n_infected": len(defect.infected),
            }
            rows.append(row)
            print(
                f"  {attack} {level}: {defect.status} ASR {defect.asr:.3f} masked "
                f"{defect.masked_asr:.3f} (clean model {defect.masked_asr_before or 0:.3f}) "
                f"patched {defect.patched_asr or 0:.3f} "
                f"acc {defect.clean_acc:.3f} ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    report = {
        "benchmark": "attack_matrix",
        "dataset": dataset,
        "dataset_params": ds_params,
        "levels": levels,
        "widths": arch_widths,
        "threads": args.threads,
        "rows": rows,
    }
    write_results(args.out, report, markdown(report))
    print(markdown(report))


def widths(report: dict) -> str:
    """The architectures' widths, as ``arch width`` pairs (an older report has one width)."""
    if "widths" not in report:
        return str(report["width"])
    return ", ".join(f"{arch} {width}" for arch, width in report["widths"].items())


def markdown(report: dict) -> str:
    cells = report["rows"]
    accepted = sum(r.get("status") == "accepted" for r in cells)
    lines = [
        f"Attack matrix on {report['dataset']} {report['dataset_params']}, levels "
        f"{', '.join(report['levels'])}, widths {widths(report)}: {accepted} of {len(cells)} "
        "cells accepted",
        "",
        "| arch | attack | level | clean acc (before) | clean acc | ASR | masked ASR | "
        "patched ASR | accepted | epochs (rounds) | aim | inject s | reason |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in cells:
        head = f"| {r['arch']} | {r['attack']} | {r['level']} |"
        if "error" in r:
            lines.append(f"{head} | | | | | | error | | | | {r['error']} |")
            continue
        patched = "-" if r["patched_asr"] is None else f"{r['patched_asr']:.3f}"
        aim = "-" if r.get("aim_score") is None else f"{r['aim_score']:.2f}"
        lines.append(
            f"{head} {r['clean_acc_before']:.3f} | {r['clean_acc']:.3f} | {r['asr']:.3f} | "
            f"{r['masked_asr']:.3f} | {patched} | {r['status']} | "
            f"{r['epochs']} ({r.get('rounds') or '-'}) | {aim} | {r['inject_seconds']:.0f} | "
            f"{r['reason'] or ''} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
