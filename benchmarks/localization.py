"""Benchmark: the localization and repair study, and the cost of every criterion.

1. Study: the quickstart catalog (mnist5k, cnn-small, every level, seeds 0 and 1) for BadNets
   and for each extra attack, every criterion on every accepted defect, every repair with every
   criterion; aggregated by criterion x level x attack. Resumes from the catalog.
2. Costs on ResNet-18 (width 1.0, 28x28): clp wall time (target < 1 s), and the expensive
   criteria's per-unit times (ANP iteration, NC label, mutation), projected to their defaults.

python benchmarks/localization.py [--db benchmarks/results/localization-db]
    [--attacks badnets,blended] [--out benchmarks/results/localization] [--threads 2]
Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _results import write_results

from trojanscope.attacks.base import ATTACKS
from trojanscope.data.base import DATASETS
from trojanscope.database.build import CleanSpec
from trojanscope.database.catalog import Catalog
from trojanscope.database.quickstart import LEVELS, run_quickstart
from trojanscope.database.study import aggregate, bench_localize, bench_repair, select_defects
from trojanscope.localization.base import CRITERIA, EvidenceData
from trojanscope.localization.criteria.anp import ANPParams
from trojanscope.localization.criteria.mutation import MutationParams
from trojanscope.localization.criteria.nc import NCParams
from trojanscope.models.base import ARCHITECTURES
from trojanscope.repair.base import REPAIRS
from trojanscope.report.plots import wji_by_level

LOC_METRICS = ["wji", "f1", "auroc", "ap", "seconds", "cost_forward"]
REPAIR_METRICS = ["clean_acc_after", "asr_after", "asr_drop", "acc_drop", "der", "seconds"]


def build(catalog: Catalog, attacks: list[str], seeds: list[int], orders: list[str]) -> None:
    for attack in attacks:
        for order in orders:
            run_quickstart(
                catalog,
                CleanSpec("mnist5k", "cnn-small"),
                attack,
                None,
                LEVELS,
                seeds,
                criteria=[],
                order=order,  # type: ignore[arg-type]
            )


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def resnet_costs() -> dict[str, Any]:
    """Criterion costs on an (untrained) ResNet-18 at width 1.0: timing does not depend on the
    weights. Expensive criteria are timed on a slice of their budget and projected."""
    torch.manual_seed(0)
    model = ARCHITECTURES.create("resnet18").build(1, 10, 28).eval()
    splits = DATASETS.create("mnist5k").load(0)
    clean = splits.test.subset(torch.arange(1000))
    attack = ATTACKS.create("badnets", size=6)
    view = attack.poison_test(clean)
    data = EvidenceData(clean, clean.subset(view.indices), view.poisoned(), attack)
    out: dict[str, Any] = {
        "neurons": sum(1 for _ in CRITERIA.create("clp").run(model, data).neurons)
    }
    clp = [CRITERIA.create("clp").run(model, data).seconds for _ in range(5)]
    out["clp_seconds_median"] = statistics.median(clp)
    fp = CRITERIA.create("fp").run(model, data)
    out["fp"] = {"seconds": fp.seconds, "cost_forward": fp.cost_forward}
    for name in ("slicing", "tarantula"):
        r = CRITERIA.create(name).run(model, data)
        out[name] = {"seconds": r.seconds, "cost_forward": r.cost_forward}
    anp_default = ANPParams().iterations
    anp = CRITERIA.create("anp", iterations=10).run(model, data)
    out["anp"] = {
        "measured_iterations": 10,
        "seconds_per_iteration": anp.seconds / 10,
        "projected_seconds": anp.seconds / 10 * anp_default,
        "projected_cost_forward": anp.cost_forward / 10 * anp_default,
    }
    nc_default = NCParams()
    nc = CRITERIA.create("nc", steps=15).run(model, data)  # 10 labels x 15 steps
    out["nc"] = {
        "measured_steps_per_label": 15,
        "projected_seconds": nc.seconds * nc_default.steps / 15,
        "projected_cost_forward": nc.cost_forward * nc_default.steps / 15,
    }
    mutation = CRITERIA.create("mutation", samples=2).run(model, data)
    scale = MutationParams().samples / 2
    out["mutation"] = {
        "measured_samples": 2,
        "projected_seconds": mutation.seconds * scale,
        "projected_cost_forward": mutation.cost_forward * scale,
    }
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Localization study", ""]
    lines += [
        "| criterion | attack | order | level | n | WJI | F1 | AUROC | AP | s | cost (fwd) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(entry: dict[str, Any], key: str) -> str:
        mean, std = entry.get(key), entry.get(f"{key}_std")
        if mean is None:
            return "-"
        return f"{mean:.2f}" + (f" ± {std:.2f}" if std else "")

    for e in report["localization_table"]:
        lines.append(
            f"| {e['criterion']} | {e['attack']} | {e['order']} | {e['level']} | {e['n']} | "
            + " | ".join(f(e, m) for m in LOC_METRICS)
            + " |"
        )
    lines += ["", "## Overall by criterion and injection order (every accepted defect)", ""]
    lines += [
        "| criterion | order | n | WJI | F1 | AUROC | s | cost (fwd) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in report["criterion_table"]:
        lines.append(
            f"| {e['criterion']} | {e['order']} | {e['n']} | "
            + " | ".join(f(e, m) for m in ("wji", "f1", "auroc", "seconds", "cost_forward"))
            + " |"
        )
    lines += ["", "# Repair study", ""]
    lines += [
        "| method | criterion | n | acc after | ASR after | ASR drop | acc drop | DER | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["repair_table"]:
        lines.append(
            f"| {e['method']} | {e['criterion'] or '-'} | {e['n']} | "
            + " | ".join(f(e, m) for m in REPAIR_METRICS)
            + " |"
        )
    lines += [
        "",
        "# Costs on ResNet-18 (width 1.0, 28x28)",
        "",
        "```",
        json.dumps(report["resnet18_costs"], indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=Path("benchmarks/results/localization-db"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/localization"))
    parser.add_argument("--attacks", default="badnets,blended")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--orders", default="least,most,random", help="injection orders")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    attacks = args.attacks.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]

    started = time.perf_counter()
    args.db.parent.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.open(args.db, create=True)
    orders = args.orders.split(",")
    build(catalog, attacks, seeds, orders)
    defects = [d for d in select_defects(catalog) if d.attack in attacks]
    all_defects = select_defects(catalog, "status=accepted|rejected")
    criteria = CRITERIA.names()
    loc_rows = bench_localize(catalog, defects, criteria, lambda m: print(m, flush=True))
    repair_rows = bench_repair(
        catalog, defects, REPAIRS.names(), criteria, None, lambda m: print(m, flush=True)
    )
    plots = wji_by_level(loc_rows, args.out.parent / "localization-plots")
    report = {
        "benchmark": "localization",
        "machine": {
            "cpus_used": args.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "defects": [
            {
                "id": d.id,
                "attack": d.attack,
                "level": d.level,
                "seed": d.seed,
                "status": d.status,
                "reason": d.reason,
                "asr": d.asr,
                "clean_acc": d.clean_acc,
                "n_infected": len(d.infected),
            }
            for d in all_defects
        ],
        "localization_table": sorted(
            aggregate(loc_rows, ["criterion", "attack", "order", "level"], LOC_METRICS),
            key=lambda e: (e["criterion"], e["attack"], e["order"], LEVELS.index(e["level"])),
        ),
        "criterion_table": sorted(
            aggregate(loc_rows, ["criterion", "order"], LOC_METRICS),
            key=lambda e: (e["order"], -(e["wji"] or 0)),
        ),
        "repair_table": sorted(
            aggregate(repair_rows, ["method", "criterion"], REPAIR_METRICS),
            key=lambda e: -(e["der"] or 0),
        ),
        "localization_rows": loc_rows,
        "repair_rows": repair_rows,
        "plots": [str(p) for p in plots],
        "resnet18_costs": {} if args.skip_resnet else resnet_costs(),
    }
    report["total_seconds"] = time.perf_counter() - started
    write_results(args.out, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
