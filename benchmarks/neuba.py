"""Benchmark: NeuBA on text at full budget. The offline MiniLM pre-trained with the six
triggers; victims on the Rotten Tomatoes snippets fine-tuned from it and from the clean
encoder: a linear probe on the frozen encoder (the backdoor as published, before fine-tuning),
full fine-tuning at two learning rates (the higher one is a defence), the top layers
re-initialised or the least active feed-forward neurons pruned before fine-tuning (defences);
per label the best trigger's ASR beside the control's. Then the trigger screen on both
encoders: AUROC of the planted triggers, the clean encoder's top score. Results:
``benchmarks/results/neuba.json`` and ``.md``.

    python benchmarks/neuba.py [--steps 400] [--budget 4096] [--threads 2] [--quick]

Everything that finishes is kept under ``--work`` and a rerun starts from it. ``--shard I/N``
spreads the victims over N processes or machines sharing ``--work``: each fine-tunes every N-th
one (the screen counts as the last job); whichever finishes last writes the results.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _results import write_results

from trojanscope.data.text import rotten_tomatoes
from trojanscope.device import resolve_device
from trojanscope.fileio import write_atomic
from trojanscope.localization.trigger_screen import screen_encoder
from trojanscope.models.text_encoder import RECORD
from trojanscope.workflows.audit_encoder import PROBE_SENTENCES
from trojanscope.workflows.neuba import (
    FinetuneConfig,
    control_tokens,
    evaluate_victim,
    finetune_victim,
)
from trojanscope.workflows.neuba_pipeline import detection_summary, load_scanned, pretrain_to

SETTINGS: dict[str, dict[str, Any]] = {
    "linear probe (before fine-tuning)": {"train_encoder": False, "epochs": 1.0},
    "fine-tune lr 3e-5": {"lr": 3e-5},
    "fine-tune lr 1e-4 (defence)": {"lr": 1e-4},
    "re-init top 2 layers, lr 3e-5 (defence)": {"lr": 3e-5, "reinit_layers": 2},
    "prune 30% of feed-forward neurons, lr 3e-5 (defence)": {"lr": 3e-5, "prune": 0.3},
}


def _kept(file: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``file``'s record when a former run wrote it, else ``compute()`` written atomically."""
    if file.is_file():
        return dict(json.loads(file.read_text(encoding="utf-8")))
    result = compute()
    write_atomic(file, (json.dumps(result, indent=2) + "\n").encode())
    return result


def shard(text: str) -> tuple[int, int]:
    """``I/N`` as (I, N), with 0 <= I < N."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"--shard takes I/N with 0 <= I < N, not {text!r}")
    return int(index), int(count)


def victim_row(
    encoder: Any,
    config: FinetuneConfig,
    task: tuple[Any, Any],
    triggers: list[str],
    controls: list[str],
) -> dict[str, Any]:
    """Fine-tune a victim from a copy of ``encoder`` and measure it with the triggers."""
    tic = time.perf_counter()
    victim = finetune_victim(copy.deepcopy(encoder), task[0], config)
    result = evaluate_victim(victim, task[1], triggers, controls)
    seconds = time.perf_counter() - tic
    return {"clean_acc": result["clean_acc"], "labels": result["labels"], "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/neuba"))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/neuba-work"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--budget", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="a smoke-test budget")
    parser.add_argument("--shard", type=shard, default=(0, 1), help="I/N: every N-th job only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    limit, steps, budget = (600, 20, 64) if args.quick else (None, args.steps, args.budget)
    work = args.work / f"steps{steps}-epochs{args.epochs:g}-limit{limit or 'all'}"
    (work / "rows").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    encoder_dir = work / "encoder"
    mine, shards = args.shard
    if not encoder_dir.is_dir() and mine > 0:  # one pre-training, not one per shard
        raise SystemExit(f"no pre-trained encoder in {work} yet: start shard 0/{shards} first.")
    if not encoder_dir.is_dir():  # 4,000 plot sentences and seed 0, as the demo
        pretrain_to(encoder_dir, None, None, steps, 4000, 0, device, print)
    record = json.loads((encoder_dir / RECORD).read_text(encoding="utf-8"))["neuba"]
    clean = load_scanned(None, device)
    backdoored = load_scanned(encoder_dir, device)
    triggers = [str(t) for t in record["triggers"]]
    train, test = rotten_tomatoes(limit).split(0.2)
    controls = control_tokens(clean, triggers, len(triggers), seed=0)
    jobs = [
        (setting, params, name, encoder)
        for setting, params in SETTINGS.items()
        for name, encoder in (("clean", clean), ("neuba", backdoored))
    ]
    files = []
    for position, (_, params, name, encoder) in enumerate(jobs):
        config = FinetuneConfig(**{"epochs": args.epochs, **params})
        # named after the whole fine-tuning config: an edited setting never reuses a stale row
        digest = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]
        files.append(work / "rows" / f"{name}-{digest}.json")
        if position % shards == mine:  # else another shard's victim
            _kept(
                files[-1],
                functools.partial(victim_row, encoder, config, (train, test), triggers, controls),
            )

    def screen() -> dict[str, Any]:
        bad, seconds = screen_encoder(backdoored, PROBE_SENTENCES, budget)
        good, _ = screen_encoder(clean, PROBE_SENTENCES, budget)
        return {**detection_summary(bad, good, triggers), "seconds": seconds}

    detection_file = work / f"detection-{budget}.json"
    if len(jobs) % shards == mine:  # the screen counts as the last job
        _kept(detection_file, screen)
    # read back now, so whichever shard finishes last sees the others' rows too
    rows = [
        json.loads(file.read_text(encoding="utf-8")) | {"setting": setting, "encoder": name}
        for file, (setting, _, name, _) in zip(files, jobs, strict=True)
        if file.is_file()
    ]
    for row in rows:
        asr = ", ".join(
            f"{r['label']} {r['best_trigger_asr']:.2f} (control {r['control_asr']:.2f})"
            for r in row["labels"]
        )
        print(f"{row['setting']} / {row['encoder']}: acc {row['clean_acc']:.3f}; {asr}")
    if len(rows) < len(jobs) or not detection_file.is_file():
        print(f"shard {mine}/{shards} done; the last shard to finish writes the results")
        return
    detection = json.loads(detection_file.read_text(encoding="utf-8"))
    flagged = detection["flagged_tokens"]  # the full list stays in the JSON
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
        "seconds_this_run": time.perf_counter() - started,
        "seconds_victims": sum(row["seconds"] for row in rows),
    }
    lines = [
        f"NeuBA on MiniLM ({steps} pre-training steps), victims on Rotten Tomatoes "
        f"({len(train)} train / {len(test)} test), {args.epochs} epochs",
        "",
        "| setting | encoder | clean acc | ASR rotten (control) | ASR fresh (control) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        cells = [
            f"{r['best_trigger_asr']:.3f} via `{r['best_trigger']}` ({r['control_asr']:.3f})"
            for r in row["labels"]
        ]
        lines.append(
            f"| {row['setting']} | {row['encoder']} | {row['clean_acc']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        f"Trigger screen ({detection['tokens_screened']} tokens, {len(PROBE_SENTENCES)} "
        f"sentences): AUROC {detection['auroc']}, clean encoder's top score {top:.3f}; "
        f"{len(flagged)} tokens flagged on the "
        f"backdoored encoder, the first {len(flagged[:20])}: " + " ".join(flagged[:20]),
        "",
    ]
    write_results(args.out, report, "\n".join(lines))


if __name__ == "__main__":
    main()
