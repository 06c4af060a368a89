"""Benchmark: training throughput on the best device here, in full and mixed precision.

The quickstart's grid (mnist5k / cnn-small, BadNets at every level) on ``--device auto`` (CUDA,
else mps, else the CPU): images per second of clean training and of injection training, with
autocast off and in every precision the device can train with (``device.check_amp``: bf16 on the
CPU; bf16 and fp16 on recent GPUs). Each precision trains its own clean model and injects into
it, as ``quickstart --amp`` does.

* clean: the quickstart's clean training (8 epochs); images = epochs x training images.
* injection: ``inject_defect`` with its epoch budget cut to ``--inject-epochs`` (one round), so
  the grid fits in minutes on a CPU (``--inject-epochs 0``: the injection's own budget and
  rounds, as the quickstart runs it); images per second count only the training loop (epochs x
  training rows of the confined objective, each row costing a few forward passes), not the
  per-epoch validation; ``seconds`` is the whole injection (ranking, training, validation,
  acceptance, ground truth). After a cut budget, status, accuracy and ASR compare the
  precisions with each other only: a defect needs ~20 epochs to be accepted.

Results go to ``benchmarks/results/device.json`` and ``.md``. The same command runs unchanged
on a GPU machine.

    python benchmarks/device.py [--device auto] [--levels narrow,small,middle,large] [--seeds 0]
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

import torch
from _results import write_results
from torch import nn

from trojanscope.attacks.base import ATTACKS
from trojanscope.data.base import DATASETS, Splits
from trojanscope.device import Amp, check_amp, prefers_channels_last, resolve_device
from trojanscope.errors import ConfigError
from trojanscope.injection import injector
from trojanscope.injection.pipeline import InjectionConfig, inject_defect
from trojanscope.injection.quantity import Quantity
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import CleanTraining, accuracy, train_clean

DATASET, ARCH = "mnist5k", "cnn-small"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so wall clocks measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def precisions(device: torch.device) -> tuple[list[Amp], dict[str, str]]:
    """The precisions ``device`` trains with (off first) and why the others are left out."""
    usable: list[Amp] = []
    refused: dict[str, str] = {}
    for amp in get_args(Amp):
        try:
            usable.append(check_amp(device, amp))
        except ConfigError as exc:
            refused[amp] = str(exc)
    return usable, refused


@contextmanager
def timed_injection_loops() -> Iterator[dict[str, float]]:
    """Time the injection's training loops alone: ``injector.objective_training`` with the
    time of its per-epoch ``done`` check (validation) taken out; counts images and epochs."""
    totals = {"seconds": 0.0, "images": 0.0, "epochs": 0.0}
    original = injector.objective_training

    signature = inspect.signature(original)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        done: Callable[[nn.Module, int], bool] = bound.arguments["done"]
        objective = bound.arguments["objective"]
        checking = [0.0]

        def timed_done(model: nn.Module, epoch: int) -> bool:
            synchronize(next(model.parameters()).device)
            started = time.perf_counter()
            try:
                return done(model, epoch)
            finally:
                checking[0] += time.perf_counter() - started
                totals["epochs"] += 1
                totals["images"] += len(objective)

        bound.arguments["done"] = timed_done
        started = time.perf_counter()
        result = original(*bound.args, **bound.kwargs)
        totals["seconds"] += time.perf_counter() - started - checking[0]
        return result

    injector.objective_training = timed  # type: ignore[assignment]
    try:
        yield totals
    finally:
        injector.objective_training = original  # type: ignore[assignment]


def clean_run(splits: Splits, device: torch.device, amp: Amp, epochs: int) -> tuple[Any, nn.Module]:
    """Train the quickstart's clean model in ``amp``; its throughput record and the model."""
    config = CleanTraining(epochs=epochs, amp=amp)
    synchronize(device)
    started = time.perf_counter()
    model = train_clean(ARCHITECTURES.create(ARCH), splits.train, 0, config, device)
    synchronize(device)
    seconds = time.perf_counter() - started
    images = epochs * len(splits.train)
    record = {
        "amp": amp,
        "epochs": epochs,
        "images": images,
        "seconds": seconds,
        "images_per_second": images / seconds,
        "clean_acc": accuracy(model, splits.test),
    }
    return record, model


def injection_run(
    clean: nn.Module, splits: Splits, amp: Amp, level: str, seed: int, epochs: int
) -> dict[str, Any]:
    """One BadNets injection at ``level`` with ``epochs`` epochs at most (one round; 0: the
    injection's own budget)."""
    budget = {"max_epochs": epochs, "max_attempts": 1} if epochs else {}
    config = InjectionConfig(quantity=Quantity(level=level), amp=amp, **budget)
    attack = ATTACKS.create("badnets", seed=seed)
    with timed_injection_loops() as loops:
        outcome = inject_defect(clean, splits, attack, config, seed)
    return {
        "amp": amp,
        "level": level,
        "seed": seed,
        "epochs": int(loops["epochs"]),
        "images": int(loops["images"]),
        "train_seconds": loops["seconds"],
        "images_per_second": loops["images"] / loops["seconds"],
        "seconds": outcome.seconds,
        "status": outcome.status,
        "reason": outcome.reason,
        "clean_acc": outcome.clean_acc,
        "asr": outcome.asr,
        "patched_asr": outcome.patched_asr,
    }


def warm_up(splits: Splits, device: torch.device, amps: list[Amp]) -> None:
    """One short training per precision, so one-off costs (kernel selection, lazy
    initialisation) stay out of the figures."""
    few = splits.train.subset(torch.arange(min(512, len(splits.train))))
    for amp in amps:
        train_clean(ARCHITECTURES.create(ARCH), few, 0, CleanTraining(epochs=1, amp=amp), device)
    synchronize(device)


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """Per precision: clean and injection images per second (injection: all its runs pooled)
    and the speed-up over full precision."""
    out: dict[str, Any] = {}
    for amp in report["precisions"]:
        clean = next(r for r in report["clean"] if r["amp"] == amp)
        runs = [r for r in report["injection"] if r["amp"] == amp]
        inject = sum(r["images"] for r in runs) / max(sum(r["train_seconds"] for r in runs), 1e-9)
        out[amp] = {
            "clean_images_per_second": clean["images_per_second"],
            "injection_images_per_second": inject,
        }
    base = out.get("off")
    for figures in out.values():
        if base is not None:
            figures["clean_speedup"] = (
                figures["clean_images_per_second"] / (base["clean_images_per_second"])
            )
            figures["injection_speedup"] = (
                figures["injection_images_per_second"] / (base["injection_images_per_second"])
            )
    return out


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Device {m['device']} ({m['device_name']}), torch {m['torch']}, "
        f"{m['threads']} torch thread(s); {report['dataset']} / {report['arch']}, "
        f"channels-last {'on' if report['channels_last'] else 'off'}.",
        "",
        "| amp | clean img/s | injection img/s | clean speed-up | injection speed-up |",
        "| --- | --- | --- | --- | --- |",
    ]
    for amp, s in report["summary"].items():
        lines.append(
            f"| {amp} | {s['clean_images_per_second']:.0f} | "
            f"{s['injection_images_per_second']:.0f} | {s.get('clean_speedup', 1.0):.2f} | "
            f"{s.get('injection_speedup', 1.0):.2f} |"
        )
    lines += [
        "",
        "| amp | level | seed | epochs | img/s | seconds | status | clean acc | ASR |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["injection"]:
        lines.append(
            f"| {r['amp']} | {r['level']} | {r['seed']} | {r['epochs']} | "
            f"{r['images_per_second']:.0f} | {r['seconds']:.1f} | {r['status']} | "
            f"{r['clean_acc']:.3f} | {r['asr']:.3f} |"
        )
    for amp, why in report["refused"].items():
        lines.append(f"\n{amp} not run: {why}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/device"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clean-epochs", type=int, default=CleanTraining().epochs)
    parser.add_argument(
        "--inject-epochs", type=int, default=2, help="epoch budget per injection (0: its own)"
    )
    parser.add_argument("--levels", default="narrow,small,middle,large")
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    amps, refused = precisions(device)
    splits = DATASETS.create(DATASET).load(0)
    c, h, w = splits.shape
    probe = ARCHITECTURES.create(ARCH).build(c, splits.num_classes, min(h, w))
    report: dict[str, Any] = {
        "benchmark": "device",
        "machine": {
            "device": str(device),
            "device_name": (
                torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
            ),
            "threads": args.threads,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_1min": os.getloadavg()[0],  # other work sharing the machine
        },
        "dataset": DATASET,
        "arch": ARCH,
        "train_images": len(splits.train),
        "channels_last": prefers_channels_last(probe, device),
        "precisions": amps,
        "refused": refused,
        "clean": [],
        "injection": [],
    }
    warm_up(splits, device, amps)
    for amp in amps:
        record, clean = clean_run(splits, device, amp, args.clean_epochs)
        report["clean"].append(record)
        print(
            f"clean {amp}: {record['images_per_second']:.0f} img/s "
            f"({record['seconds']:.1f} s, accuracy {record['clean_acc']:.3f})",
            flush=True,
        )
        for level in args.levels.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                row = injection_run(clean, splits, amp, level, seed, args.inject_epochs)
                report["injection"].append(row)
                print(
                    f"  inject {amp} {level} seed {seed}: {row['images_per_second']:.0f} img/s "
                    f"({row['epochs']} epochs, {row['seconds']:.1f} s in all, {row['status']})",
                    flush=True,
                )
    report["summary"] = summary(report)
    text = markdown(report)
    write_results(args.out, report, text)
    print(text, end="")
    print(f"wrote {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
