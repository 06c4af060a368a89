"""Benchmark: every attack's default configuration on digits / cnn-small, per level and seed.

The test suite injects one seed per attack; this runs the seeds beyond it, so a default that
passes the acceptance filter only by luck shows here. Each cell is one injection into the same
clean model (as the suite's ``clean_digits_model``); results go to
``benchmarks/results/attack_defaults.json`` and ``.md``.

    python benchmarks/attack_defaults.py [--seeds 0-4] [--levels small] [--threads 1]
        [--attack badnets ...]

A level an attack cannot be placed at (SRA's subnet where the input layer cannot lose a neuron) is
printed and skipped.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch
from _results import write_results

from trojanscope.attacks.base import ATTACKS, injectable_attacks
from trojanscope.data.base import DATASETS
from trojanscope.errors import TrojanscopeError
from trojanscope.injection.pipeline import InjectionConfig, inject_defect
from trojanscope.injection.quantity import Quantity
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import CleanTraining, accuracy, train_clean

DATASET, ARCH = "digits", "cnn-small"


def parse_seeds(text: str) -> list[int]:
    """Seeds as a comma-separated list of numbers and ranges: ``0-4`` or ``0,2,5-6``."""
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        seeds.extend(range(int(first), int(last or first) + 1))
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attack_defaults"))
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-4"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--attack", action="append", help="restrict to these attacks")
    parser.add_argument("--levels", default="small", help="comma-separated levels")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = DATASETS.create(DATASET).load(0)
    started = time.perf_counter()
    clean = train_clean(ARCHITECTURES.create(ARCH), splits.train, 0, CleanTraining())
    print(
        f"clean {ARCH} on {DATASET}: accuracy {accuracy(clean, splits.test):.3f} "
        f"({time.perf_counter() - started:.0f} s)"
    )
    levels = args.levels.split(",")
    rows = []
    for name, level, seed in itertools.product(
        args.attack or injectable_attacks(), levels, args.seeds
    ):
        config = InjectionConfig(quantity=Quantity(level=level))
        try:
            outcome = inject_defect(clean, splits, ATTACKS.create(name, seed=seed), config, seed)
        except TrojanscopeError as exc:  # the attack cannot be placed at this level
            print(f"  {name} {level} seed {seed}: cannot be placed: {exc}")
            continue
        row = {
            "attack": name,
            "level": level,
            "seed": seed,
            "status": outcome.status,
            "reason": outcome.reason,
            "clean_acc_before": outcome.clean_acc_before,
            "clean_acc": outcome.clean_acc,
            "acc_drop_points": 100 * outcome.acc_drop,
            "asr": outcome.asr,
            "masked_asr": outcome.masked_asr,
            "masked_acc_drop_points": 100 * (outcome.clean_acc - outcome.masked_clean_acc),
            "epochs": outcome.epochs,
            "attempts": outcome.attempts,
            "seconds": outcome.seconds,
        }
        rows.append(row)
        print(
            f"  {name} {level} seed {seed}: {outcome.status} drop {row['acc_drop_points']:.1f} "
            f"ASR {outcome.asr:.3f} masked {outcome.masked_asr:.3f} "
            f"({outcome.epochs} epochs, {outcome.attempts} attempts, {outcome.seconds:.0f} s)"
        )
    report = {
        "benchmark": "attack_defaults",
        "dataset": DATASET,
        "arch": ARCH,
        "width": 1.0,
        "levels": levels,
        "threads": args.threads,
        "seeds": args.seeds,
        "torch": torch.__version__,
        "injection": InjectionConfig().model_dump(mode="json"),
        "rows": rows,
    }
    write_results(args.out, report, markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    """The per-cell table and, per attack, how many seeds passed and the tightest margins."""
    lines = [
        f"Attack defaults on {report['dataset']} / {report['arch']} (width {report['width']}), "
        f"levels {', '.join(report['levels'])}, {report['threads']} thread(s), "
        f"torch {report['torch']}. "
        "Acceptance: ASR >= 0.90, clean-accuracy drop <= 3 points, masked ASR <= 0.20, "
        "masking costs <= 25 points.",
        "",
        "| attack | level | seed | status | acc drop (pts) | ASR | masked ASR | "
        "masking cost (pts) | epochs | attempts | seconds | reason |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['attack']} | {r['level']} | {r['seed']} | {r['status']} | "
            f"{r['acc_drop_points']:.1f} | "
            f"{r['asr']:.3f} | {r['masked_asr']:.3f} | {r['masked_acc_drop_points']:.1f} | "
            f"{r['epochs']} | {r['attempts']} | {r['seconds']:.1f} | {r['reason'] or ''} |"
        )
    lines += [
        "",
        "| attack | accepted | largest acc drop (pts) | lowest ASR | highest masked ASR |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in dict.fromkeys(r["attack"] for r in report["rows"]):
        cells = [r for r in report["rows"] if r["attack"] == name]
        accepted = sum(r["status"] == "accepted" for r in cells)
        lines.append(
            f"| {name} | {accepted}/{len(cells)} | "
            f"{max(r['acc_drop_points'] for r in cells):.1f} | "
            f"{min(r['asr'] for r in cells):.3f} | {max(r['masked_asr'] for r in cells):.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
