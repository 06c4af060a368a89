"""Benchmark: every attack x architecture (width 0.25) on Fashion-MNIST, one defect each.

Falls back to mnist5k when Debian's dataset-fashion-mnist is absent. Results go to a catalog
(resumable: rerun after an interruption and finished cells are reused) and are written as
JSON and as a Markdown table.

    python benchmarks/attack_matrix.py [--db benchmarks/results/matrix-db] [--limit 6000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _results import write_results

from trojanscope.attacks.base import ATTACKS
from trojanscope.data.base import DATASETS
from trojanscope.database.build import CleanSpec, build_defect, ensure_clean_model
from trojanscope.database.catalog import Catalog
from trojanscope.errors import TrojanscopeError
from trojanscope.injection.pipeline import InjectionConfig
from trojanscope.injection.quantity import Quantity
from trojanscope.models.base import ARCHITECTURES


def pick_dataset(limit: int) -> tuple[str, dict]:
    try:
        DATASETS.create("fashion-mnist", limit=limit).load(0)
        return "fashion-mnist", {"limit": limit}
    except TrojanscopeError as exc:
        print(f"fashion-mnist unavailable ({exc}); falling back to mnist5k")
        return "mnist5k", {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=Path("benchmarks/results/matrix-db"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attack_matrix"))
    parser.add_argument("--limit", type=int, default=6000, help="images drawn from the data set")
    parser.add_argument("--level", default="small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arch", action="append", help="restrict to these architectures")
    parser.add_argument("--attack", action="append", help="restrict to these attacks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.db.parent.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.open(args.db, create=True)
    dataset, ds_params = pick_dataset(args.limit)
    config = InjectionConfig(quantity=Quantity(level=args.level))
    rows = []
    for arch in args.arch or ARCHITECTURES.names():
        spec = CleanSpec(dataset, arch, dataset_params=ds_params, arch_params={"width": 0.25})
        started = time.perf_counter()
        clean, model, splits = ensure_clean_model(catalog, spec)
        print(f"{arch}: clean acc {clean.clean_acc:.3f} ({time.perf_counter() - started:.0f} s)")
        for attack in args.attack or ATTACKS.names():
            started = time.perf_counter()
            try:
                defect, _ = build_defect(catalog, clean, model, splits, attack, {}, config, 0)
            except TrojanscopeError as exc:
                rows.append({"arch": arch, "attack": attack, "error": str(exc)})
                print(f"  {attack}: error {exc}")
                continue
            row = {
                "arch": arch,
                "attack": attack,
                "defect_id": defect.id,
                "clean_acc_before": defect.clean_acc_before,
                "clean_acc": defect.clean_acc,
                "asr": defect.asr,
                "masked_asr": defect.masked_asr,
                "status": defect.status,
                "reason": defect.reason,
                "epochs": defect.epochs,
                "inject_seconds": defect.seconds,
                "n_infected": len(defect.infected),
            }
            rows.append(row)
            print(
                f"  {attack}: {defect.status} ASR {defect.asr:.3f} masked "
                f"{defect.masked_asr:.3f} acc {defect.clean_acc:.3f} "
                f"({time.perf_counter() - started:.0f} s)"
            )
    report = {
        "benchmark": "attack_matrix",
        "dataset": dataset,
        "dataset_params": ds_params,
        "level": args.level,
        "width": 0.25,
        "threads": args.threads,
        "rows": rows,
    }
    write_results(args.out, report, markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [
        f"Attack matrix on {report['dataset']} {report['dataset_params']}, level "
        f"{report['level']}, width {report['width']}",
        "",
        "| arch | attack | clean acc (before) | clean acc | ASR | masked ASR | accepted | "
        "inject s | reason |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['attack']} | | | | | error | | {r['error']} |")
            continue
        lines.append(
            f"| {r['arch']} | {r['attack']} | {r['clean_acc_before']:.3f} | {r['clean_acc']:.3f} "
            f"| {r['asr']:.3f} | {r['masked_asr']:.3f} | {r['status']} | "
            f"{r['inject_seconds']:.0f} | {r['reason'] or ''} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
