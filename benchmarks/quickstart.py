"""Benchmark: the quickstart on a fresh catalog, wall time of every phase, written as JSON.

python benchmarks/quickstart.py [--out benchmarks/results/quickstart.json] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trojanscope.database.catalog import Catalog
from trojanscope.workflows.defects import CleanSpec
from trojanscope.workflows.quickstart import run_quickstart


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quickstart.json"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dataset", default="mnist5k")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog.open(Path(tmp) / "db", create=True)
        result = run_quickstart(catalog, CleanSpec(args.dataset, "cnn-small"))
    total = time.perf_counter() - started

    criteria: dict[str, list[float]] = {}
    for loc in result["localization"]:
        criteria.setdefault(loc["criterion"], []).append(loc["seconds"])
    report = {
        "benchmark": "quickstart",
        "machine": {
            "cpus_used": args.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "dataset": args.dataset,
        "total_seconds": total,
        "clean_training_seconds": result["clean_model"]["seconds"],
        "clean_acc": result["clean_model"]["clean_acc"],
        "injections": [
            {
                "id": d["id"],
                "level": d["level"],
                "seed": d["seed"],
                "status": d["status"],
                "seconds": d["seconds"],
            }
            for d in result["defects"]
        ],
        "criteria": {
            name: {
                "runs": len(times),
                "mean_seconds": statistics.mean(times),
                "max_seconds": max(times),
            }
            for name, times in criteria.items()
        },
        "result": result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"total {total:.1f} s; clean training {report['clean_training_seconds']:.1f} s")
    for inj in report["injections"]:
        print(
            f"  inject {inj['level']:<7} seed {inj['seed']}: {inj['seconds']:.1f} s "
            f"({inj['status']})"
        )
    for name, c in report["criteria"].items():
        print(f"  {name:<8} mean {c['mean_seconds']:.3f} s, max {c['max_seconds']:.3f} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
