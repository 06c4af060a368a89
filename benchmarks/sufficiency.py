"""Benchmark: is the infected set sufficient? Patched ASR under the default (confined)
injection and the earlier plain one, on the quickstart's clean model (mnist5k / cnn-small),
BadNets, every level.

The default: the reference's levels (1-4 neurons per layer) under the thin-layer rule, fan-in
edges, the confined objective and the sufficiency rule at 0.8. Plain: the earlier default
(5 / 10 / 20% of every layer including the input layer, fan-in+fan-out edges, masked
cross-entropy, patched ASR recorded but not required). Results go to
``benchmarks/results/sufficiency.json`` and ``.md``.

    python benchmarks/sufficiency.py [--seeds 0,1] [--levels narrow,small,middle,large]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _results import write_results

from trojanscope.attacks.base import ATTACKS
from trojanscope.data.base import DATASETS
from trojanscope.injection.acceptance import Acceptance
from trojanscope.injection.pipeline import InjectionConfig, inject_defect
from trojanscope.injection.quantity import Quantity
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import CleanTraining, accuracy, train_clean


def configs(level: str) -> dict[str, InjectionConfig]:
    """The two injections compared at one level."""
    plain = Quantity(level=level, sizes="fractions", min_width=1, max_share=1.0, input_layer=True)
    return {
        "default": InjectionConfig(quantity=Quantity(level=level)),
        "plain": InjectionConfig(
            quantity=plain,
            edges="fan-in+fan-out",
            confine=False,
            acceptance=Acceptance(min_patched_ratio=0.0),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sufficiency"))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--levels", default="narrow,small,middle,large")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = DATASETS.create("mnist5k").load(0)
    clean = train_clean(ARCHITECTURES.create("cnn-small"), splits.train, 0, CleanTraining())
    print(f"clean cnn-small on mnist5k: accuracy {accuracy(clean, splits.test):.3f}", flush=True)
    rows = []
    for level in args.levels.split(","):
        for name, config in configs(level).items():
            for seed in (int(s) for s in args.seeds.split(",")):
                o = inject_defect(clean, splits, ATTACKS.create("badnets", seed=seed), config, seed)
                row = {
                    "injection": name,
                    "level": level,
                    "seed": seed,
                    "status": o.status,
                    "reason": o.reason,
                    "acc_drop_points": 100 * o.acc_drop,
                    "asr": o.asr,
                    "patched_asr": o.patched_asr,
                    "masked_asr": o.masked_asr,
                    "n_infected": len(o.infected),
                    "n_carrying": sum(n.carrying for n in o.infected),
                    "epochs": o.epochs,
                    "seconds": o.seconds,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {"benchmark": "sufficiency", "threads": args.threads, "rows": rows}
    lines = [
        "| injection | level | seed | status | drop (pts) | ASR | patched ASR | masked ASR | "
        "carrying / infected | reason |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['injection']} | {r['level']} | {r['seed']} | {r['status']} | "
            f"{r['acc_drop_points']:.1f} | {r['asr']:.3f} | {r['patched_asr']:.3f} | "
            f"{r['masked_asr']:.3f} | {r['n_carrying']} / {r['n_infected']} | "
            f"{r['reason'] or ''} |"
        )
    write_results(args.out, report, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
