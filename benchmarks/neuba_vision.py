"""Benchmark: NeuBA on images at full budget. A project network pre-trained on Fashion-MNIST,
a copy backdoored with the six checkerboard triggers; victims of both on mnist5k: a linear
probe on the frozen encoder (the backdoor as published), full fine-tuning at two learning rates
(the higher one is a defence), and pruning of the least active pooled dimensions before
fine-tuning (a defence); per label the best trigger's ASR beside the best random patch's. Then
the patch screen on both encoders. Results: ``benchmarks/results/neuba-vision.json`` and ``.md``.

    python benchmarks/neuba_vision.py [--arch cnn-small] [--steps 3000] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _results import write_results

from trojanscope.attacks.neuba_vision import VisionNeubaConfig
from trojanscope.data.base import DATASETS
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import CleanTraining
from trojanscope.workflows.neuba_vision import VisionFinetune, vision_pipeline


def settings(epochs: int) -> dict[str, VisionFinetune]:
    return {
        "linear probe (before fine-tuning)": VisionFinetune(train_encoder=False, epochs=epochs),
        "fine-tune lr 3e-4": VisionFinetune(lr=3e-4, epochs=epochs),
        "fine-tune lr 1e-3 (defence)": VisionFinetune(lr=1e-3, epochs=epochs),
        "prune 30%, fine-tune lr 3e-4 (defence)": VisionFinetune(lr=3e-4, epochs=epochs, prune=0.3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/neuba-vision"))
    parser.add_argument("--arch", default="cnn-small")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--limit", type=int, default=10000, help="Fashion-MNIST images")
    parser.add_argument("--epochs", type=int, default=10, help="the victims' epochs")
    parser.add_argument("--budget", type=int, default=1024, help="patches screened")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke-test budget")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    limit, steps, epochs, budget = (
        (1000, 30, 1, 64) if args.quick else (args.limit, args.steps, args.epochs, args.budget)
    )
    result = vision_pipeline(
        DATASETS.create("fashion-mnist", limit=limit).load(0),
        DATASETS.create("mnist5k").load(0),
        ARCHITECTURES.create(args.arch, width=args.width),
        VisionNeubaConfig(steps=steps),
        settings(epochs),
        budget=budget,
        clean_training=CleanTraining(epochs=1 if args.quick else 8),
    )
    result.update(arch=args.arch, width=args.width, limit=limit, epochs=epochs)
    result["threads"] = args.threads
    detection = result["detection"]
    lines = [
        f"NeuBA on {args.arch} (width {args.width}) pre-trained on Fashion-MNIST ({limit} images; "
        f"accuracy {result['clean_encoder_acc']:.3f}, {result['backdoored_encoder_acc']:.3f} "
        f"after {steps} backdoor steps), victims on mnist5k, {epochs} epochs",
        "",
        "| setting | encoder | clean acc | labels with ASR >= control + 0.2 | per-label ASR "
        "(control) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        labels = row["labels"]
        controlled = sum(r["best_trigger_asr"] >= r["control_asr"] + 0.2 for r in labels)
        cells = ", ".join(
            f"{r['label']}: {r['best_trigger_asr']:.2f} ({r['control_asr']:.2f})" for r in labels
        )
        lines.append(
            f"| {row['setting']} | {row['encoder']} | {row['clean_acc']:.3f} | {controlled} of "
            f"{len(labels)} | {cells} |"
        )
    lines += [
        "",
        f"Patch screen ({detection['patches_screened']} candidates): AUROC {detection['auroc']}, "
        f"clean encoder's top score {detection['clean_encoder_max_score']:.3f}, "
        f"{len(detection['flagged_patches'])} flagged on the backdoored encoder",
        "",
    ]
    print("\n".join(lines))
    write_results(args.out, result, "\n".join(lines))


if __name__ == "__main__":
    main()
