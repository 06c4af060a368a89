"""Benchmark: do the quickstart's defects survive the lifecycle, and can the criteria still find
them? The survival table: clean accuracy, ASR and each criterion's WJI / AUROC after every stage
of a few chains, by level.

The defects are the quickstart's (mnist5k / cnn-small, BadNets, four levels, seed 0), built into
``--db`` first when it holds none (resumable: the catalog keeps them). Chains:

- transfer: ``finetune-transfer`` (Fashion-MNIST, everything trained) and ``finetune-transfer``
  of the head alone
- compression: ``prune-magnitude`` at 30% and 60% (unstructured), 30% of the channels with
  recovery, ``quantize-int8`` static and dynamic, ``distill`` into cnn-small at half width
- deployment: ``onnx-export`` (runtime deviation and ASR)
- the other direction: ``dormant-int8`` then ``quantize-int8`` (the clipping guard alone, as by
  default on cnn-small; with the rounding-interval unlearning first; the unlearning alone)

    python benchmarks/lifecycle.py [--db benchmarks/results/lifecycle-db] [--threads 1]
        [--levels narrow,small,middle,large] [--criteria oracle,tarantula,clp]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from _results import write_results

from trojanscope.database.catalog import Catalog
from trojanscope.workflows.defects import CleanSpec, list_defects
from trojanscope.workflows.lifecycle import parse_stages, run_lifecycle
from trojanscope.workflows.quickstart import run_quickstart

CHAINS = {
    "transfer (all layers)": "finetune-transfer",
    "transfer (head only)": "finetune-transfer(trainable=head)",
    "prune 30%": "prune-magnitude(sparsity=0.3)",
    "prune 60%": "prune-magnitude(sparsity=0.6)",
    "channel prune 30% + recovery": "prune-magnitude(sparsity=0.3,structure=channel,"
    "recover_epochs=3)",
    "int8 static": "quantize-int8",
    "int8 dynamic": "quantize-int8(mode=dynamic)",
    "distill": "distill",
    "onnx": "onnx-export",
    "dormant then int8": "dormant-int8,quantize-int8",
    "dormant with unlearning then int8": "dormant-int8(epochs=20),quantize-int8",
    "dormant without guard then int8": "dormant-int8(guard=false),quantize-int8",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=Path("benchmarks/results/lifecycle-db"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lifecycle"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--levels", default="narrow,small,middle,large")
    parser.add_argument("--criteria", default="oracle,tarantula,clp")
    parser.add_argument("--chains", default=",".join(CHAINS), help="chain names, comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    levels = args.levels.split(",")
    criteria = args.criteria.split(",")
    chains = {name: CHAINS[name] for name in args.chains.split(",")}
    args.db.parent.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.open(args.db, create=True)
    started = time.perf_counter()
    run_quickstart(catalog, CleanSpec("mnist5k", "cnn-small"), levels=levels, seeds=(0,))
    built = time.perf_counter() - started
    defects = [
        d
        for d in list_defects(catalog)
        if d.level in levels and d.seed == 0 and d.parent_id is None  # links of a former run out
    ]
    rows = []
    for defect in defects:
        for chain, stages in chains.items():
            started = time.perf_counter()
            links = run_lifecycle(catalog, defect.id, parse_stages(stages), criteria)
            for link in links[1:] if rows and rows[-1]["defect_id"] == defect.id else links:
                rows.append(
                    {
                        "defect_id": defect.id,
                        "level": defect.level,
                        "status": defect.status,
                        "chain": "original" if link.stage == "original" else chain,
                        "stage": link.stage,
                        "clean_acc": link.clean_acc,
                        "asr": link.asr,
                        "target": link.target,
                        "remaining_infected": link.remaining_infected,
                        "max_abs_deviation": link.max_abs_deviation,
                        "seconds": link.seconds,
                        "details": link.details,
                        "localization": link.localization,
                    }
                )
            print(
                f"defect {defect.id} ({defect.level}) {chain}: "
                + ", ".join(f"{link.stage} ASR {link.asr:.3f}" for link in links)
                + f" ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    report = {
        "benchmark": "lifecycle",
        "machine": {
            "threads": args.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "quickstart_seconds": built,
        "criteria": criteria,
        "chains": chains,
        "rows": rows,
    }
    write_results(args.out, report, markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    criteria = report["criteria"]
    lines = [
        "Survival of the quickstart's defects (mnist5k / cnn-small, BadNets, seed 0) through "
        "lifecycle stages: clean accuracy, ASR, infected neurons left, and each criterion's "
        "AUROC / WJI against them",
        "",
        "| level | chain | stage | clean acc | ASR | infected left | "
        + " | ".join(f"{c} AUROC / WJI" for c in criteria)
        + " |",
        "| --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in criteria) + " |",
    ]
    for r in report["rows"]:
        scores = {loc["criterion"]: loc for loc in r["localization"]}
        cells = [
            f"{scores[c]['auroc']:.3f} / {scores[c]['wji']:.3f}"
            if c in scores and scores[c]["auroc"] is not None
            else "-"
            for c in criteria
        ]
        lines.append(
            f"| {r['level']} | {r['chain']} | {r['stage']} | {r['clean_acc']:.3f} | "
            f"{r['asr']:.3f} | {r['remaining_infected']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
