"""Benchmark: the localization and repair study, and the cost of every criterion.

1. Study: the quickstart catalog (mnist5k, cnn-small, every level, seeds 0 and 1) for BadNets
   and for each extra attack, every criterion on every accepted defect, every repair with every
   criterion; aggregated by criterion x level x attack. Resumes from the catalog.
2. Costs on ResNet-18 (width 1.0, 28x28): clp wall time (target < 1 s), and the expensive
   criteria's per-unit costs (ANP iteration, NC step, mutation sample), measured on two
   truncated budgets and projected to their defaults (``projected_cost``).

python benchmarks/localization.py [--db benchmarks/results/localization-db]
    [--attacks badnets,blended] [--out benchmarks/results/localization] [--threads 2]
    [--skip-resnet | --costs-only]
Writes <out>.json and <out>.md. ``--costs-only`` runs part 2's expensive criteria alone (default
out: benchmarks/results/localization-costs).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _results import write_results

from trojanscope.attacks.base import ATTACKS
from trojanscope.data.base import DATASETS
from trojanscope.database.catalog import Catalog
from trojanscope.localization.base import CRITERIA, EvidenceData
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import CleanTraining, accuracy, train_clean
from trojanscope.repair.base import REPAIRS
from trojanscope.report.plots import wji_by_level
from trojanscope.report.tables import aggregate
from trojanscope.workflows.defects import CleanSpec
from trojanscope.workflows.quickstart import LEVELS, run_quickstart
from trojanscope.workflows.study import bench_localize, bench_repair, select_defects

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


#: Expensive criteria: the parameter that sets their budget, and two truncated values of it
#: whose runs are extrapolated to the default (cost and time are affine in it).
BUDGETS: dict[str, tuple[str, int, int]] = {
    "anp": ("iterations", 5, 10),
    "nc": ("steps", 10, 20),
    "mutation": ("samples", 1, 2),
}


def _resnet18(epochs: int = 2) -> tuple[torch.nn.Module, EvidenceData, dict[str, float]]:
    """ResNet-18 at width 1.0 trained from scratch for ``epochs`` on mnist5k with 10% of it
    BadNets-poisoned (6 px patch, target 0), and 1,000 test images with their triggered copies.
    A budget's cost does not depend on the weights, but when a criterion stops early does: on a
    backdoored model it stops as it would on a real one (an untrained network's labels converge
    anyhow, and its few distinct decisions make fixed costs jump between runs)."""
    splits = DATASETS.create("mnist5k").load(0)
    attack = ATTACKS.create("badnets", size=6)
    train = attack.poison_train(splits.train).materialize()
    model = train_clean(ARCHITECTURES.create("resnet18"), train, 0, CleanTraining(epochs=epochs))
    model.eval()
    clean = splits.test.subset(torch.arange(1000))
    view = attack.poison_test(clean)
    figures = {"clean_acc": accuracy(model, clean), "asr": accuracy(model, view.poisoned())}
    data = EvidenceData(clean, clean.subset(view.indices), view.poisoned(), attack)
    return model, data, figures


def projected_cost(model: torch.nn.Module, data: EvidenceData, name: str) -> dict[str, Any]:
    """An expensive criterion's cost at its default budget, extrapolated from two truncated
    runs (every other parameter at its default): the per-unit part scaled to the default, the
    fixed part (e.g. NC's final pass under the reversed trigger) counted once. A criterion that
    may stop early is projected at its full budget, an upper bound of what it spends."""
    unit, short, long_ = BUDGETS[name]
    default = getattr(CRITERIA.get(name).Params(), unit)
    first, second = (CRITERIA.create(name, **{unit: u}).run(model, data) for u in (short, long_))
    cost_per_unit = (second.cost_forward - first.cost_forward) / (long_ - short)
    seconds_per_unit = (second.seconds - first.seconds) / (long_ - short)
    cost_fixed = first.cost_forward - short * cost_per_unit
    seconds_fixed = max(0.0, first.seconds - short * seconds_per_unit)
    return {
        "budget": unit,
        "default": default,
        "measured": [short, long_],
        "cost_forward_per_unit": cost_per_unit,
        "cost_forward_fixed": cost_fixed,
        "seconds_per_unit": seconds_per_unit,
        "projected_cost_forward": cost_fixed + default * cost_per_unit,
        "projected_seconds": seconds_fixed + default * seconds_per_unit,
    }


#: Findings of a full run worth recording beside its cost.
FULL_RUN_EXTRAS = ("detected_label", "candidate_label", "anomaly_index", "steps_per_label")


def measured_cost(model: torch.nn.Module, data: EvidenceData, name: str) -> dict[str, Any]:
    """A criterion run in full at its defaults (for one that stops early, what it spends)."""
    result = CRITERIA.create(name).run(model, data)
    out = {"cost_forward": result.cost_forward, "seconds": result.seconds}
    return out | {k: v for k, v in result.extra.items() if k in FULL_RUN_EXTRAS}


def resnet_costs(expensive_only: bool = False, full: Sequence[str] = ()) -> dict[str, Any]:
    """Criterion costs on ResNet-18 at width 1.0 (``_resnet18``): clp's median wall time, fp,
    slicing and tarantula measured, the expensive criteria projected (``projected_cost``) and
    those in ``full`` also run in full at their defaults (``measured_cost``)."""
    model, data, figures = _resnet18()
    out: dict[str, Any] = {"model": figures}
    if not expensive_only:
        out["neurons"] = len(CRITERIA.create("clp").run(model, data).neurons)
        clp = [CRITERIA.create("clp").run(model, data).seconds for _ in range(5)]
        out["clp_seconds_median"] = statistics.median(clp)
        for name in ("fp", "slicing", "tarantula"):
            r = CRITERIA.create(name).run(model, data)
            out[name] = {"seconds": r.seconds, "cost_forward": r.cost_forward}
    for name in BUDGETS:
        out[name] = projected_cost(model, data, name)
        if name in full:
            out[name]["full_run"] = measured_cost(model, data, name)
    return out


def costs_markdown(costs: dict[str, Any]) -> list[str]:
    model = costs["model"]
    lines = [
        f"Model: clean accuracy {model['clean_acc']:.3f}, ASR {model['asr']:.3f}.",
        "",
        "| criterion | budget | per unit (fwd) | fixed (fwd) | s per unit | projected cost (fwd) "
        "| projected s | full run cost (fwd) | full run s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in BUDGETS:
        c = costs[name]
        full = c.get("full_run")
        lines.append(
            f"| {name} | {c['budget']}={c['default']} | {c['cost_forward_per_unit']:.4f} | "
            f"{c['cost_forward_fixed']:.3f} | {c['seconds_per_unit']:.2f} | "
            f"{c['projected_cost_forward']:.1f} | {c['projected_seconds']:.0f} | "
            + (f"{full['cost_forward']:.1f} | {full['seconds']:.0f} |" if full else "- | - |")
        )
    return lines


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
        *(costs_markdown(report["resnet18_costs"]) if report["resnet18_costs"] else []),
        "",
        "```",
        json.dumps(report["resnet18_costs"], indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def machine(threads: int) -> dict[str, Any]:
    return {"cpus_used": threads, "python": platform.python_version(), "torch": torch.__version__}


def costs_only(out: Path, threads: int, full: Sequence[str]) -> None:
    """``--costs-only``: the expensive criteria's costs on ResNet-18, alone."""
    started = time.perf_counter()
    costs = resnet_costs(expensive_only=True, full=full)
    report = {
        "benchmark": "localization-costs",
        "machine": machine(threads),
        "resnet18_costs": costs,
        "total_seconds": time.perf_counter() - started,
    }
    lines = ["# Expensive criteria on ResNet-18 (width 1.0, 28x28)", "", *costs_markdown(costs)]
    text = "\n".join(lines) + "\n"
    write_results(out, report, text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=Path("benchmarks/results/localization-db"))
    parser.add_argument(
        "--out",
        type=Path,
        help="default benchmarks/results/localization (localization-costs with --costs-only)",
    )
    parser.add_argument("--attacks", default="badnets,blended")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--orders", default="least,most,random", help="injection orders")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument(
        "--costs-only",
        action="store_true",
        help="only the expensive criteria's projected costs on ResNet-18 (no study)",
    )
    parser.add_argument(
        "--full",
        default="",
        help="expensive criteria also run in full at their defaults on ResNet-18 (comma-"
        "separated; for those that stop early, whose budget only bounds their cost)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    full = [n for n in args.full.split(",") if n]
    if args.costs_only:
        costs_only(args.out or Path("benchmarks/results/localization-costs"), args.threads, full)
        return
    args.out = args.out or Path("benchmarks/results/localization")
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
        "machine": machine(args.threads),
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
        "resnet18_costs": {} if args.skip_resnet else resnet_costs(full=full),
    }
    report["total_seconds"] = time.perf_counter() - started
    write_results(args.out, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
