"""Benchmark: the patch screen's top score by candidate size on a backdoored image encoder and
on its clean twin (folders written by ``neuba vision-pretrain ENC --clean-out CLEAN``; without
them both are pre-trained first: cnn-small, 4,000 Fashion-MNIST images, 2,000 backdoor steps,
about two minutes). It is why `audit` screens 3, 4 and 6 px: larger candidates still show a
smaller trigger, but raise the clean encoder's scores. Results:
``benchmarks/results/patch-sizes.json`` and ``.md``.

    python benchmarks/patch_sizes.py [ENC CLEAN] [--data mnist5k] [--budget 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _results import write_results

from trojanscope.attacks.neuba_vision import VisionNeubaConfig
from trojanscope.device import CPU
from trojanscope.localization.patch_screen import PROBE_IMAGES, candidate_patches, screen_patches
from trojanscope.localization.trigger_screen import FLAG_SCORE
from trojanscope.models.vision_encoder import VisionEncoder
from trojanscope.workflows.neuba_vision import sample
from trojanscope.workflows.neuba_vision_store import (
    ENCODER,
    load_image_model,
    load_splits,
    pretrain_vision_to,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("backdoored", type=Path, nargs="?")
    parser.add_argument("clean", type=Path, nargs="?")
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--budget", type=int, default=256, help="candidates per size")
    parser.add_argument("--sizes", default="2,3,4,5,6,8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/patch-sizes"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.backdoored is None or args.clean is None:
        scratch = Path(tempfile.mkdtemp())
        args.backdoored, args.clean = scratch / "enc", scratch / "clean"
        config = VisionNeubaConfig(steps=2000)
        pretrain_vision_to(
            args.backdoored, "cnn-small", 1.0, "fashion-mnist", 4000, config, CPU, args.clean
        )
    images = sample(load_splits(args.data, None).train, PROBE_IMAGES, seed=0)
    rows: list[dict[str, Any]] = []
    for size in map(int, args.sizes.split(",")):
        row: dict[str, Any] = {"size": size}
        for name, folder in (("backdoored", args.backdoored), ("clean", args.clean)):
            encoder = VisionEncoder(load_image_model(folder, ENCODER)[0])
            tic = time.perf_counter()
            scores = screen_patches(encoder, images, candidate_patches(size, args.budget))
            row[name] = {
                "top_score": scores[0].score,
                "top_patch": scores[0].name,
                "flagged": sum(s.score >= FLAG_SCORE for s in scores),
                "seconds": time.perf_counter() - tic,
            }
        rows.append(row)
    lines = [
        f"Patch screen by candidate size ({args.budget} per size, {PROBE_IMAGES} {args.data} "
        f"images): {args.backdoored} against {args.clean}",
        "",
        "| size | backdoored: top score (flagged) | clean: top score |",
        "| --- | --- | --- |",
    ]
    for row in rows:
        bad, good = row["backdoored"], row["clean"]
        lines.append(
            f"| {row['size']} px | {bad['top_score']:.2f} ({bad['flagged']}) | "
            f"{good['top_score']:.2f} |"
        )
    write_results(
        args.out, {"rows": rows, "budget": args.budget, "data": args.data}, "\n".join(lines) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
