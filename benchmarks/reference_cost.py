"""Benchmark: the measured cost of one cell of a build spec here, the projected cost of its grid.

For each architecture of the spec (default ``examples/reference.toml``, read with the project's
loader) at its spec parameters, and each input shape of its data sets (synthetic images: no data
set is read), it measures on ``--device`` (default ``auto``) for a few batches only:

* training: images per second of forward + backward + AdamW step at the spec's
  ``training.batch_size`` and ``amp``;
* injection: images per second of the injection's own training loop
  (``injector.objective_training`` on the confined objective of a BadNets defect at the
  ``small`` level, the spec's ``injection`` settings), rows of the mixed training set per second;
* inference: images per second of evaluation forward passes (batches of 1,024).

Then it projects, per data set x architecture, the cost of one defect (one cell of data set x
architecture x attack x order x level x seed):

* clean share: the clean model's ``epochs`` x training images / training throughput, divided
  among the defects that share it;
* injection: ``--injection-epochs`` (typical) or ``max_epochs`` x ``max_attempts`` (the bound)
  epochs of the mixed training rows / injection throughput, plus each epoch's validation
  (about 4 forward passes of ``aim.CHECK_SAMPLES`` images) and the acceptance checks and
  ground truth after it (about 9 test-set passes, and one pass of the triggered test images
  per infected neuron);
* criteria: each criterion's cost in forward-pass equivalents over the test set
  (``CRITERION_FORWARDS``: measured by the study report and ``benchmarks/localization.py``)
  at the inference throughput; a criterion without a figure is listed as left out;
* repairs: ``finetune``'s budget (``samples`` x ``epochs`` images at the training throughput)
  and, for every repair, 4 test-set passes to measure it.

Left out: data loading, the per-attack differences (TrojanNN's trigger generation, SRA's
subnet training; every attack is costed as BadNets), the criteria's backward passes (ANP and
NC differentiate through the network: their share is a lower bound), catalog writes.

    python benchmarks/reference_cost.py [SPEC] [--device auto] [--batches 1]
        [--injection-epochs 20] [--gpu-ips IMAGES_PER_SECOND]
        [--out benchmarks/results/reference_cost]

``--gpu-ips`` adds the same projection for a device that trains this many images per second
(scaling every throughput measured here by the same factor as the training throughput of
ResNet-18-class models: a rough figure, for planning only).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _results import write_results
from torch import nn

from trojanscope.attacks.base import ATTACKS
from trojanscope.data.base import TensorData
from trojanscope.data.sets._subsample import split_limit
from trojanscope.device import CPU, MixedPrecision, is_cuda, resolve_device, training_layout
from trojanscope.injection import injector
from trojanscope.injection.aim import CHECK_SAMPLES
from trojanscope.injection.confined import ConfinedObjective
from trojanscope.injection.ownership import trainable_masks
from trojanscope.injection.pipeline import InjectionConfig
from trojanscope.injection.quantity import Quantity, chosen_layers
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import predict
from trojanscope.neurons import NeuronRef
from trojanscope.repair.base import REPAIRS
from trojanscope.workflows.spec import BuildSpec, load_spec

ROOT = Path(__file__).resolve().parent.parent
#: The published size of each data set the reference uses: (channels, classes, train, test).
#: GTSRB's side is its ``size`` parameter (default 32); a spec's ``limit`` shrinks the splits.
DATA_SETS: dict[str, tuple[int, int, int, int]] = {
    "cifar10": (3, 10, 50_000, 10_000),
    "gtsrb": (3, 43, 39_209, 12_630),
    "fashion-mnist": (1, 10, 60_000, 10_000),
    "mnist": (1, 10, 60_000, 10_000),
}
SIDES = {"cifar10": 32, "fashion-mnist": 28, "mnist": 28}
#: Forward-pass equivalents over the evaluation (test) set of one localization, at the criteria's
#: defaults: clp, fp and slicing as docs/study/study.md recorded them; anp, nc and mutation as
#: docs/findings.md section 5 projects them on ResNet-18 (width 1.0; nc: its budget's bound).
CRITERION_FORWARDS = {
    "clp": 0.0,
    "fp": 1.0,
    "slicing": 2.9,
    "anp": 57.6,
    "nc": 97.3,
    "mutation": 71.0,
    "oracle": 1.8,
    "ablation": 8.2,
    "random": 0.0,
}
#: Test-set passes after an injection (clean accuracy before / after / masked; ASR, masked ASR,
#: the clean model's masked ASR and ASR, patched ASR twice) and to measure a repair.
ACCEPTANCE_PASSES = 9
REPAIR_PASSES = 4
#: Forward passes of the check images per injection epoch (damage, ASR, patched ASR x2).
VALIDATION_PASSES = 4
#: Rows of the untimed warm-up batch.
WARM_ROWS = 16


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so wall clocks measure it."""
    if is_cuda(device):
        torch.cuda.synchronize(device)
    elif device != CPU and hasattr(torch, "mps"):
        torch.mps.synchronize()


def synthetic(shape: tuple[int, int, int], classes: int, n: int, seed: int) -> TensorData:
    """``n`` random images of ``shape`` in [0, 1] with random labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorData(x, y, classes)


def timed(device: torch.device, step: Callable[[], None], warm: int, runs: int) -> float:
    """Seconds of ``runs`` calls of ``step`` after ``warm`` untimed ones."""
    for _ in range(warm):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(runs):
        step()
    synchronize(device)
    return time.perf_counter() - started


def training_ips(
    model: nn.Module, data: TensorData, spec: BuildSpec, device: torch.device, batches: int
) -> float:
    """Images per second of clean training (forward, backward, AdamW step) at the spec's batch
    size and precision."""
    config = spec.clean_training()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    precision = MixedPrecision(device, config.amp)
    n = config.batch_size
    xb, yb = data.x[:n].to(device), data.y[:n].to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = F.cross_entropy(model(xb), yb)
        precision.backward(loss)
        precision.unscale(optimizer)
        precision.step(optimizer)

    model.train()
    with training_layout(model):
        seconds = timed(device, step, 1, batches)  # the warm-up: a full batch, untimed
    model.eval()
    return batches * n / seconds


def inference_ips(model: nn.Module, data: TensorData, device: torch.device, batches: int) -> float:
    """Images per second of evaluation forward passes (``predict``, batches of 1,024)."""
    x = data.x[:1024]
    return batches * len(x) / timed(device, lambda: predict(model, x), 1, batches)


def infected_set(model: nn.Module, quantity: Quantity) -> list[NeuronRef]:
    """The first neurons of every chosen layer at ``quantity``'s size (the order rule's choice
    does not change the cost)."""
    return [
        NeuronRef(layer.name, i)
        for layer in chosen_layers(model, quantity)
        for i in range(quantity.per_layer(layer.width))
    ]


def injection_ips(
    model: nn.Module, data: TensorData, config: InjectionConfig, batches: int, seed: int
) -> tuple[float, float]:
    """(rows per second of the injection's training loop, mixed rows per training image) for a
    BadNets defect at ``config``'s quantity: one batch to warm up, then ``batches`` timed."""
    infected = infected_set(model, config.quantity)
    attack = ATTACKS.create("badnets", seed=seed)
    calib = data.subset(torch.arange(min(config.calibration_size, len(data))))
    attack.prepare(model, infected, calib)
    masks = trainable_masks(model, infected, config.edges)
    device = next(model.parameters()).device

    def objective(rows: int) -> ConfinedObjective:
        part = data.subset(torch.arange(rows))
        return ConfinedObjective(
            model,
            infected,
            attack,
            attack.poison_train(part),
            calib,
            config.patched_weight,
            config.preserve_weight,
        )

    def one_epoch(target: ConfinedObjective) -> None:
        injector.objective_training(
            model,
            masks,
            target,
            config.lr,
            config.weight_decay,
            1,
            config.batch_size,
            seed,
            lambda _model, _epoch: True,
            config.amp,
        )

    one_epoch(objective(WARM_ROWS))  # warm-up
    target = objective(batches * config.batch_size)
    seconds = timed(device, lambda: one_epoch(target), 0, 1)
    return len(target) / seconds, len(target) / (batches * config.batch_size)


def shape_of(entry_name: str, params: dict[str, Any]) -> tuple[int, int, int]:
    """The image shape of a reference data set at the spec's parameters."""
    channels = DATA_SETS[entry_name][0]
    side = int(params.get("size", 32)) if entry_name == "gtsrb" else SIDES[entry_name]
    return channels, side, side


def measure(spec: BuildSpec, device: torch.device, batches: int) -> list[dict[str, Any]]:
    """Throughputs per architecture x input shape (data sets of one shape share them)."""
    config = spec.injection_config("small", spec.orders[0])
    out: list[dict[str, Any]] = []
    shapes: dict[tuple[int, int, int], int] = {}
    for entry in spec.datasets:
        if entry.name not in DATA_SETS:
            print(f"{entry.name}: no published size here; left out", file=sys.stderr)
            continue
        shapes.setdefault(shape_of(entry.name, entry.params), DATA_SETS[entry.name][1])
    for arch_entry in spec.architectures:
        arch = ARCHITECTURES.create(arch_entry.name, **arch_entry.params)
        for shape, classes in shapes.items():
            torch.manual_seed(0)
            n = max(batches * max(spec.training.batch_size, config.batch_size), 1024)
            data = synthetic(shape, classes, n, 0)
            model = arch.build(shape[0], classes, min(shape[1:])).to(device).eval()
            started = time.perf_counter()
            train = training_ips(model, data, spec, device, batches)
            model = arch.build(shape[0], classes, min(shape[1:])).to(device).eval()
            infer = inference_ips(model, data, device, batches)
            inject, mix = injection_ips(model, data, config, batches, 0)
            infected = {
                level: len(infected_set(model, config.quantity.model_copy(update={"level": level})))
                for level in spec.levels
            }
            record = {
                "arch": arch_entry.name,
                "arch_params": arch_entry.params,
                "shape": list(shape),
                "classes": classes,
                "parameters": sum(p.numel() for p in model.parameters()),
                "train_ips": train,
                "inference_ips": infer,
                "injection_ips": inject,
                "mixed_rows_per_image": mix,
                "infected_per_level": infected,
                "seconds": time.perf_counter() - started,
            }
            print(
                f"{arch_entry.name} {'x'.join(map(str, shape))}: train {train:.1f} img/s, "
                f"injection {inject:.1f} rows/s, inference {infer:.1f} img/s "
                f"({record['seconds']:.0f} s)",
                flush=True,
            )
            out.append(record)
    return out


def project(
    spec: BuildSpec, measured: list[dict[str, Any]], injection_epochs: int, speedup: float = 1.0
) -> dict[str, Any]:
    """Seconds per defect and for the whole grid, from the measured throughputs (each
    multiplied by ``speedup``)."""
    config = spec.injection_config("small", spec.orders[0])
    bound_epochs = config.max_epochs * config.max_attempts
    per_clean = len(spec.attacks) * len(spec.orders) * len(spec.levels) * len(spec.seeds)
    left_out = sorted({c.name for c in spec.criteria} - set(CRITERION_FORWARDS))
    cells: list[dict[str, Any]] = []
    for entry in spec.datasets:
        if entry.name not in DATA_SETS:
            continue
        _, _, n_train, n_test = DATA_SETS[entry.name]
        limited = split_limit(entry.params.get("limit"), n_train, n_test)
        n_train, n_test = limited[0] or n_train, limited[1] or n_test
        shape = list(shape_of(entry.name, entry.params))
        for m in (r for r in measured if r["shape"] == shape):
            train, infer, inject = (
                speedup * m[k] for k in ("train_ips", "inference_ips", "injection_ips")
            )
            clean = len(spec.clean_seeds) * spec.training.epochs * n_train / train
            fit = (1 - config.validation_fraction) * n_train
            rows = fit * m["mixed_rows_per_image"]
            epoch = rows / inject + VALIDATION_PASSES * min(CHECK_SAMPLES, n_train) / infer
            poisoned_test = 0.9 * n_test  # the victims: every class but the target's
            infected = sum(m["infected_per_level"].values()) / len(m["infected_per_level"])
            after = (ACCEPTANCE_PASSES * n_test + infected * poisoned_test) / infer
            criteria = sum(
                CRITERION_FORWARDS.get(c.name, 0.0) * n_test / infer for c in spec.criteria
            )
            repairs = 0.0
            for r in spec.repairs:
                repairs += REPAIR_PASSES * n_test / infer
                if r.name.startswith("finetune"):
                    budget = REPAIRS.get(r.name).Params.model_validate(r.params)
                    repairs += budget.samples * budget.epochs / train  # type: ignore[attr-defined]
            typical = injection_epochs * epoch + after
            bound = bound_epochs * epoch + after
            share = clean / per_clean
            cells.append(
                {
                    "dataset": entry.name,
                    "arch": m["arch"],
                    "train_images": n_train,
                    "test_images": n_test,
                    "clean_model_seconds": clean,
                    "clean_share_seconds": share,
                    "injection_epoch_seconds": epoch,
                    "injection_seconds": typical,
                    "injection_seconds_bound": bound,
                    "criteria_seconds": criteria,
                    "repairs_seconds": repairs,
                    "defect_seconds": share + typical + criteria + repairs,
                    "defect_seconds_bound": share + bound + criteria + repairs,
                }
            )
    defects_per_cell = per_clean
    total = sum(c["defect_seconds"] for c in cells) * defects_per_cell
    total_bound = sum(c["defect_seconds_bound"] for c in cells) * defects_per_cell
    n_defects = defects_per_cell * len(cells)
    return {
        "speedup": speedup,
        "injection_epochs": injection_epochs,
        "injection_epochs_bound": bound_epochs,
        "defects": n_defects,
        "clean_models": len(cells) * len(spec.clean_seeds),
        "cells": cells,
        "defect_seconds_mean": total / max(n_defects, 1),
        "grid_hours": total / 3600,
        "grid_hours_bound": total_bound / 3600,
        "criteria_left_out": left_out,
    }


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"{report['date']}, `{report['command']}`: device {m['device']}, torch {m['torch']}, "
        f"{m['cpus']} CPUs, {m['threads']} torch thread(s); spec {report['spec']}.",
        "",
        "| architecture | input | parameters | train img/s | injection rows/s | inference img/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["measured"]:
        lines.append(
            f"| {r['arch']} | {'x'.join(map(str, r['shape']))} | {r['parameters']:,} | "
            f"{r['train_ips']:.1f} | {r['injection_ips']:.1f} | {r['inference_ips']:.1f} |"
        )
    for name, p in report["projections"].items():
        lines += [
            "",
            f"**{name}** (x{p['speedup']:.3g} the throughputs measured here): one defect, "
            f"{p['injection_epochs']} injection epochs (bound {p['injection_epochs_bound']}):",
            "",
            "| data set | architecture | clean model | clean share | injection (bound) | "
            "criteria | repairs | defect (bound) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in p["cells"]:
            lines.append(
                f"| {c['dataset']} | {c['arch']} | {hours(c['clean_model_seconds'])} | "
                f"{hours(c['clean_share_seconds'])} | {hours(c['injection_seconds'])} "
                f"({hours(c['injection_seconds_bound'])}) | {hours(c['criteria_seconds'])} | "
                f"{hours(c['repairs_seconds'])} | {hours(c['defect_seconds'])} "
                f"({hours(c['defect_seconds_bound'])}) |"
            )
        lines += [
            "",
            f"Whole grid ({p['defects']:,} defects, {p['clean_models']} clean models): "
            f"**{p['grid_hours']:,.0f} device-hours** ({p['grid_hours_bound']:,.0f} at the "
            f"epoch bound); mean {hours(p['defect_seconds_mean'])} per defect."
            + (
                f" Criteria without a cost figure, left out: {', '.join(p['criteria_left_out'])}."
                if p["criteria_left_out"]
                else ""
            ),
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", type=Path, default=ROOT / "examples/reference.toml")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", type=int, default=1, help="timed batches per measurement")
    parser.add_argument(
        "--injection-epochs",
        type=int,
        default=20,
        help="typical epochs of one injection (benchmarks/device.py: ~20 to be accepted)",
    )
    parser.add_argument(
        "--gpu-ips",
        type=float,
        default=None,
        help="training images per second of a GPU, to project the grid on it too",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/reference_cost")
    args = parser.parse_args()
    threads = int(os.environ.get("TORCH_THREADS", "1"))
    torch.set_num_threads(threads)
    device = resolve_device(args.device)
    spec = load_spec(args.spec)
    started = time.perf_counter()
    measured = measure(spec, device, args.batches)
    projections = {"here": project(spec, measured, args.injection_epochs)}
    if args.gpu_ips:
        # The GPU's training throughput over the mean measured here, on every figure.
        here = sum(r["train_ips"] for r in measured) / len(measured)
        projections["gpu"] = project(spec, measured, args.injection_epochs, args.gpu_ips / here)
    report = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", *sys.argv]),
        "spec": str(args.spec),
        "machine": {
            "device": str(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
        },
        "batches": args.batches,
        "measured": measured,
        "projections": projections,
        "criterion_forwards": CRITERION_FORWARDS,
        "seconds": time.perf_counter() - started,
    }
    text = markdown(report)
    write_results(args.out, report, text)
    print(text)


if __name__ == "__main__":
    main()
