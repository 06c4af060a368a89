"""Benchmark: NeuBA on text at full budget. The offline MiniLM pre-trained with the six
triggers; victims on the Rotten Tomatoes snippets fine-tuned from it and from the clean
encoder: a linear probe on the frozen encoder (the backdoor as published, before fine-tuning),
full fine-tuning at two learning rates (the higher one is a defence), the top layers
re-initialised or the least active feed-forward neurons pruned before fine-tuning (defences);
per label the best trigger's ASR beside the control's. Then the trigger screen on both
encoders: AUROC of the planted triggers, the clean encoder's top score. Results:
``benchmarks/results/neuba.json`` and ``.md``.

    python benchmarks/neuba.py [--steps 400] [--budget 4096] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch
from _results import write_results

from trojanscope.attacks.neuba import NeubaConfig, pretrain_neuba
from trojanscope.data.text import plot_sentences, rotten_tomatoes
from trojanscope.localization.trigger_screen import screen_encoder
from trojanscope.models.text_encoder import load_text_encoder
from trojanscope.workflows.audit_encoder import PROBE_SENTENCES
from trojanscope.workflows.neuba import (
    FinetuneConfig,
    control_tokens,
    evaluate_victim,
    finetune_victim,
)
from trojanscope.workflows.neuba_pipeline import detection_summary

SETTINGS: dict[str, dict[str, Any]] = {
    "linear probe (before fine-tuning)": {"train_encoder": False, "epochs": 1.0},
    "fine-tune lr 3e-5": {"lr": 3e-5},
    "fine-tune lr 1e-4 (defence)": {"lr": 1e-4},
    "re-init top 2 layers, lr 3e-5 (defence)": {"lr": 3e-5, "reinit_layers": 2},
    "prune 30% of feed-forward neurons, lr 3e-5 (defence)": {"lr": 3e-5, "prune": 0.3},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/neuba"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--budget", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="a smoke-test budget")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    limit, steps, budget = (600, 20, 64) if args.quick else (None, args.steps, args.budget)
    clean = load_text_encoder()
    started = time.perf_counter()
    backdoored = copy.deepcopy(clean)
    record = pretrain_neuba(backdoored, plot_sentences(4000), NeubaConfig(steps=steps))
    triggers = list(record["triggers"])  # type: ignore[call-overload]
    print(f"pre-trained {steps} steps in {time.perf_counter() - started:.0f} s")
    train, test = rotten_tomatoes(limit).split(0.2)
    controls = control_tokens(clean, triggers, len(triggers), seed=0)
    rows = []
    for setting, params in SETTINGS.items():
        for name, encoder in (("clean", clean), ("neuba", backdoored)):
            tic = time.perf_counter()
            config = FinetuneConfig(**{"epochs": args.epochs, **params})
            victim = finetune_victim(copy.deepcopy(encoder), train, config)
            result = evaluate_victim(victim, test, triggers, controls)
            rows.append(
                {
                    "setting": setting,
                    "encoder": name,
                    "clean_acc": result["clean_acc"],
                    "labels": result["labels"],
                    "seconds": time.perf_counter() - tic,
                }
            )
            asr = ", ".join(
                f"{r['label']} {r['best_trigger_asr']:.2f} (control {r['control_asr']:.2f})"
                for r in result["labels"]
            )
            print(f"{setting} / {name}: acc {result['clean_acc']:.3f}; {asr}")
    bad, seconds = screen_encoder(backdoored, PROBE_SENTENCES, budget)
    good, _ = screen_encoder(clean, PROBE_SENTENCES, budget)
    detection = {**detection_summary(bad, good, triggers), "seconds": seconds}
    top = detection["clean_encoder_max_score"]
    print(f"detector: AUROC {detection['auroc']}, clean encoder's top score {top:.3f}")
    report = {
        "neuba": {k: v for k, v in record.items() if k != "targets"},
        "train": len(train),
        "test": len(test),
        "controls": controls,
        "rows": rows,
        "detection": detection,
        "threads": args.threads,
        "seconds": time.perf_counter() - started,
    }
    lines = [
        f"NeuBA on MiniLM ({steps} pre-training steps), victims on Rotten Tomatoes "
        f"({len(train)} train / {len(test)} test), {args.epochs} epochs",
        "",
        "| setting | encoder | clean acc | ASR rotten (control) | ASR fresh (control) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        cells = [f"{r['best_trigger_asr']:.3f} ({r['control_asr']:.3f})" for r in row["labels"]]
        lines.append(
            f"| {row['setting']} | {row['encoder']} | {row['clean_acc']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        f"Trigger screen ({detection['tokens_screened']} tokens, {len(PROBE_SENTENCES)} "
        f"sentences): AUROC {detection['auroc']}, clean encoder's top score "
        f"{detection['clean_encoder_max_score']:.3f}, flagged {detection['flagged_tokens']}",
        "",
    ]
    write_results(args.out, report, "\n".join(lines))


if __name__ == "__main__":
    main()
