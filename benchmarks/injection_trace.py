"""Benchmark: one injection traced epoch by epoch (why a cell of the attack matrix fails).

For each epoch of the injector's training it records what the injector itself validates (ASR,
damage: the share of training images the clean model gets right that the injected one gets
wrong, patched ASR) and, with ``--relay``, for every infected layer the drift of its neurons on
clean images and their peak rise on triggered images, both in units of each neuron's spread on
clean data (as the confined objective measures them). A backdoor that forms in the first
infected layers but fades along the chain shows as rises that shrink layer by layer.

The trace instruments the injector from outside (it wraps ``aim.Validation.__call__`` and
records the confined objective it builds): the package has no hook for it, and needs none.

    python benchmarks/injection_trace.py ARCH ATTACK LEVEL [--width 0.25] [--limit 4000]
        [--config '{"detect_weight": 1}'] [--relay] [--epochs N] [--db DB]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from _results import write_results
from torch import nn

from trojanscope.attacks.base import ATTACKS
from trojanscope.data.base import Splits
from trojanscope.database.catalog import Catalog
from trojanscope.database.schema import CleanModel
from trojanscope.injection import aim, confined
from trojanscope.injection.pipeline import InjectionConfig, inject_defect
from trojanscope.injection.quantity import Quantity
from trojanscope.neurons import layer_outputs
from trojanscope.workflows.defects import CleanSpec, ensure_clean_model


class StopTrace(Exception):
    """Raised after ``--epochs`` epochs: the trace has what it needs."""


def _mean_map(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(2).mean(2) if t.dim() > 2 else t


def _peak_map(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(2).amax(2) if t.dim() > 2 else t


def relay(objective: confined.ConfinedObjective, model: torch.nn.Module) -> list[dict[str, Any]]:
    """Per infected layer: mean clean drift and mean peak trigger rise of its neurons."""
    x = objective.paired[:256]
    with torch.no_grad():
        clean_ref = layer_outputs(objective.clean, x)
        clean_now = layer_outputs(model, x)
        triggered = layer_outputs(model, objective.attack.apply(x))
    rows = []
    for name, idx in objective.by_layer.items():
        scale = objective.scale[name]
        drift = _mean_map(clean_now[name][:, idx] - clean_ref[name][:, idx]) / scale
        rise = _peak_map(triggered[name][:, idx] - clean_now[name][:, idx]) / scale
        rows.append(
            {
                "layer": name,
                "clean_drift": [round(v, 3) for v in drift.mean(0).tolist()],
                "trigger_rise": [round(v, 3) for v in rise.mean(0).tolist()],
            }
        )
    return rows


@contextmanager
def traced(
    epochs: list[dict[str, Any]], with_relay: bool, stop_after: int | None
) -> Iterator[None]:
    """Record every validation of the injector (and the objective it trains) in ``epochs``."""
    built: list[confined.ConfinedObjective] = []
    original_init = confined.ConfinedObjective.__init__
    original_call = aim.Validation.__call__

    def init(self: confined.ConfinedObjective, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        built.append(self)

    def call(self: aim.Validation, model: torch.nn.Module) -> float:
        asr, damage, patched = self.measure(model)
        row: dict[str, Any] = {"epoch": len(epochs) + 1, "asr": asr, "damage": damage}
        row["time"] = time.perf_counter()  # when the epoch's validation ended
        row["patched_asr"] = patched
        if with_relay and built:
            row["relay"] = relay(built[-1], model)
        epochs.append(row)
        print(
            f"  epoch {row['epoch']:3d}: ASR {asr:.3f} damage {damage:.4f} "
            f"patched {patched if patched is None else round(patched, 3)}",
            flush=True,
        )
        if stop_after is not None and len(epochs) >= stop_after:
            raise StopTrace
        return self.aim.score(asr, damage, patched)

    confined.ConfinedObjective.__init__ = init  # type: ignore[method-assign]
    aim.Validation.__call__ = call  # type: ignore[method-assign]
    try:
        yield
    finally:
        confined.ConfinedObjective.__init__ = original_init  # type: ignore[method-assign]
        aim.Validation.__call__ = original_call  # type: ignore[method-assign]


def grid_clean_model(
    arch: str, width: float, limit: int, db: Path
) -> tuple[CleanModel, nn.Module, Splits]:
    """The grid's clean model of ``arch`` (Fashion-MNIST, ``limit`` images) from the catalog at
    ``db``, trained and recorded there first if missing."""
    db.parent.mkdir(parents=True, exist_ok=True)
    spec = CleanSpec(
        "fashion-mnist", arch, dataset_params={"limit": limit}, arch_params={"width": width}
    )
    return ensure_clean_model(Catalog.open(db, create=True), spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("arch")
    parser.add_argument("attack")
    parser.add_argument("level")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--limit", type=int, default=4000)
    parser.add_argument("--config", default="{}", help="InjectionConfig fields as JSON")
    parser.add_argument("--attack-params", default="{}", help="attack parameters as JSON")
    parser.add_argument("--relay", action="store_true", help="per-layer drift and rise")
    parser.add_argument("--epochs", type=int, help="stop after this many epochs")
    parser.add_argument("--db", type=Path, default=Path("benchmarks/results/matrix-db"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/injection_trace"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    clean_row, clean, splits = grid_clean_model(args.arch, args.width, args.limit, args.db)
    print(f"{args.arch}: clean accuracy {clean_row.clean_acc:.3f}", flush=True)
    config = InjectionConfig(quantity=Quantity(level=args.level), **json.loads(args.config))
    attack = ATTACKS.create(args.attack, seed=0, **json.loads(args.attack_params))
    epochs: list[dict[str, Any]] = []
    started = time.perf_counter()
    outcome: dict[str, Any] = {}
    with traced(epochs, args.relay, args.epochs):
        try:
            o = inject_defect(clean, splits, attack, config, 0)
            outcome = {
                "status": o.status,
                "reason": o.reason,
                "asr": o.asr,
                "patched_asr": o.patched_asr,
                "masked_asr": o.masked_asr,
                "acc_drop": o.acc_drop,
                "epochs": o.epochs,
            }
        except StopTrace:
            outcome = {"status": "stopped", "reason": f"--epochs {args.epochs}"}
    report = {
        "benchmark": "injection_trace",
        "arch": args.arch,
        "width": args.width,
        "attack": args.attack,
        "level": args.level,
        "config": json.loads(args.config),
        "clean_acc": clean_row.clean_acc,
        "seconds": time.perf_counter() - started,
        "outcome": outcome,
        "epochs": epochs,
    }
    print(json.dumps(outcome), flush=True)
    lines = [
        f"# {args.arch} x {args.attack} x {args.level} {args.config}",
        "",
        "| epoch | ASR | damage | patched ASR |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {e['epoch']} | {e['asr']:.3f} | {e['damage']:.4f} | {e['patched_asr']} |"
        for e in epochs
    ]
    write_results(args.out, report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
