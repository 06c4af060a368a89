"""Benchmark: how much of each attack's trigger reaches each level's infected set.

Injection trains only the set's fan-in edges, so every layer before a defect's first infected
layer is the clean model's. Whatever the set detects, it detects in the clean model's features
at that layer. This probes them: for every attack of a catalog (one stored defect gives its
trigger) and every level's first infected layer (the *entry*), a small detector is trained on
the clean model's features there to tell triggered training images from clean ones, and
scored on test images. It measures a property of the trigger and the frozen prefix, not of an
injection run, and so tells a rejected cell's attack from its budget.

Two detectors: ``set`` has the shape of the set's first layer (as many 1x1 units as the level
infects per layer, ReLU, mean and max over positions); ``wide`` has 32 units, a 3x3
convolution and 8 units read out the same way, the same at every entry (a reference with
more room than any level's first layers; still a lower bound on what the features hold).
Scores: AUROC, and the share of triggered test images caught at 1% and 3% false alarms on
clean ones; a backdoor that may cost at most a few points of clean accuracy needs its
detector to catch 90% there. A second table gives, per defect, the clean test images it gets
wrong that its clean model got right, and their intensity inside the trigger's footprint: a
set that cannot tell the trigger from look-alike images loses those.

    python benchmarks/trigger_probe.py --db DB [--arch mobilenetv2] [--attacks badnets,wanet]
        [--images 1500] [--steps 600] [--threads 1] [--out benchmarks/results/trigger-probe]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from _results import write_results
from torch import nn

from trojanscope.database.catalog import Catalog
from trojanscope.database.schema import Defect
from trojanscope.workflows.defects import list_defects, load_defect, load_weights

LEVEL_ORDER = ("narrow", "small", "middle", "large")
WIDE_UNITS = 8


def entry_features(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The input of ``layer`` for images ``x`` (what the set's first layer reads)."""
    module = dict(model.named_modules())[layer]
    seen: list[torch.Tensor] = []
    hook = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            for start in range(0, len(x), 500):
                model(x[start : start + 500])
    finally:
        hook.remove()
    return torch.cat(seen)


class Detector(nn.Module):
    """``units`` ReLU units per position (1x1; ``wide``: 4x``units`` 1x1, 3x3, then ``units``
    1x1), pooled by mean and max into one logit."""

    def __init__(self, channels: int, units: int, wide: bool) -> None:
        super().__init__()
        if wide:
            hidden = 4 * units
            self.units: nn.Module = nn.Sequential(
                nn.Conv2d(channels, hidden, 1),
                nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(hidden, units, 1),
                nn.ReLU(),
            )
        else:
            self.units = nn.Sequential(nn.Conv2d(channels, units, 1), nn.ReLU())
        self.read = nn.Linear(2 * units, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        a = self.units(f)
        return self.read(torch.cat([a.mean((2, 3)), a.amax((2, 3))], 1)).squeeze(1)


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Probability that a triggered image scores above a clean one (Mann-Whitney)."""
    ranks = torch.cat([pos, neg]).argsort().argsort().double() + 1
    n, m = len(pos), len(neg)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))


def probe(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    units: int,
    wide: bool,
    steps: int,
) -> dict[str, float]:
    """Train a detector on (clean, triggered) training features; score it on test features."""
    torch.manual_seed(0)
    detector = Detector(train[0].shape[1], units, wide)
    x = torch.cat(train)
    y = torch.cat([torch.zeros(len(train[0])), torch.ones(len(train[1]))])
    opt = torch.optim.Adam(detector.parameters(), lr=1e-2)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (128,))
        loss = nn.functional.binary_cross_entropy_with_logits(detector(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        clean, triggered = detector(test[0]), detector(test[1])
    return {
        "auroc": auroc(triggered, clean),
        "caught_at_1pct": float((triggered > clean.quantile(0.99)).float().mean()),
        "caught_at_3pct": float((triggered > clean.quantile(0.97)).float().mean()),
    }


def entries(model: nn.Module, defects: list[Defect]) -> dict[str, str]:
    """Each level's first infected layer in the model's order (levels as the catalog has them)."""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    found: dict[str, str] = {}
    for d in defects:
        if d.infected and d.level not in found:
            found[d.level] = min((n.layer for n in d.infected), key=order.__getitem__)
    return {lv: found[lv] for lv in sorted(found, key=_level_rank)}


def _level_rank(level: str) -> int:
    return LEVEL_ORDER.index(level) if level in LEVEL_ORDER else len(LEVEL_ORDER)


def units_of(defects: list[Defect], level: str, layer: str) -> int:
    """How many neurons the level infects in its entry layer."""
    for d in defects:
        if d.level == level:
            return sum(1 for n in d.infected if n.layer == layer)
    return 1


def damage(catalog: Catalog, defect: Defect) -> dict[str, Any]:
    """The clean test images ``defect`` gets wrong where its clean model was right: how many,
    how many go to the target, and their mean intensity inside the trigger's footprint (the
    pixels the trigger changes on the first test image) against the other images'."""
    ctx = load_defect(catalog, defect.id)
    clean = load_weights(catalog, defect.clean_model, defect.clean_model.weights_sha256).eval()
    x, y = ctx.splits.test.x, ctx.splits.test.y
    target = int(ctx.poisoned_test.y[0])
    with torch.no_grad():
        predicted = ctx.model.eval()(x).argmax(1)
        lost = (clean(x).argmax(1) == y) & (predicted != y)
    to_target = lost & (predicted == target)
    footprint = (ctx.attack.apply(x[:1]) != x[:1]).any(1)[0]
    intensity = x[:, :, footprint].mean((1, 2))
    return {
        "defect": defect.id,
        "attack": defect.attack,
        "level": defect.level,
        "test_images": len(y),
        "lost": int(lost.sum()),
        "to_target": int(to_target.sum()),
        "footprint_pixels": int(footprint.sum()),
        "footprint_intensity_lost": float(intensity[lost].mean()) if lost.any() else None,
        "footprint_intensity_kept": float(intensity[~lost].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--arch", default=None, help="only defects on this architecture")
    parser.add_argument("--attacks", default=None, help="only these attacks (comma-separated)")
    parser.add_argument(
        "--images", type=int, default=1500, help="clean images per split (as many triggered)"
    )
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/trigger-probe"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    catalog = Catalog.open(args.db)
    defects = [
        d
        for d in list_defects(catalog)
        if d.infected and not d.stage and (args.arch is None or d.clean_model.arch == args.arch)
    ]
    if not defects:
        raise SystemExit(f"no defect with infected neurons in {args.db}.")
    rows: list[dict[str, Any]] = []
    tic = time.perf_counter()
    first = load_defect(catalog, defects[0].id)
    clean = load_weights(catalog, defects[0].clean_model, defects[0].clean_model.weights_sha256)
    clean.eval()
    levels = entries(clean, defects)
    train_x = first.splits.train.x[: args.images]
    test_x = first.splits.test.x[: args.images]
    wanted = set(args.attacks.split(",")) if args.attacks else {d.attack for d in defects}
    for attack in sorted(wanted & {d.attack for d in defects}):
        ctx = load_defect(catalog, next(d.id for d in defects if d.attack == attack))
        triggered_train, triggered_test = ctx.attack.apply(train_x), ctx.attack.apply(test_x)
        for level, layer in levels.items():
            train = tuple(entry_features(clean, layer, x) for x in (train_x, triggered_train))
            test = tuple(entry_features(clean, layer, x) for x in (test_x, triggered_test))
            units = units_of(defects, level, layer)
            row: dict[str, Any] = {"attack": attack, "level": level, "entry": layer}
            row["set"] = probe(train, test, units, False, args.steps)  # type: ignore[arg-type]
            row["wide"] = probe(train, test, WIDE_UNITS, True, args.steps)  # type: ignore[arg-type]
            rows.append(row)
            print(
                f"{attack} {level} at {layer}: set {row['set']['auroc']:.3f} / "
                f"{row['set']['caught_at_3pct']:.2f}, wide {row['wide']['auroc']:.3f} / "
                f"{row['wide']['caught_at_3pct']:.2f}",
                flush=True,
            )
    lost = [damage(catalog, d) for d in defects if d.attack in wanted]
    arch = defects[0].clean_model.arch
    report = {
        "db": str(args.db),
        "arch": arch,
        "images": args.images,
        "steps": args.steps,
        "seconds": round(time.perf_counter() - tic, 1),
        "rows": rows,
        "damage": lost,
    }
    lines = [
        f"Trigger probe on {arch} ({args.images} clean and as many triggered images per split, "
        f"{args.steps} steps)",
        "",
        "| attack | level | entry | set AUROC | set caught @1% / @3% | wide AUROC "
        "| wide caught @1% / @3% |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        s, w = r["set"], r["wide"]
        lines.append(
            f"| {r['attack']} | {r['level']} | `{r['entry']}` | {s['auroc']:.3f} "
            f"| {s['caught_at_1pct']:.2f} / {s['caught_at_3pct']:.2f} | {w['auroc']:.3f} "
            f"| {w['caught_at_1pct']:.2f} / {w['caught_at_3pct']:.2f} |"
        )
    lines += [
        "",
        "| defect | attack | level | clean test images lost | to the target "
        "| footprint intensity, lost / kept |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in lost:
        shown = r["footprint_intensity_lost"]
        lines.append(
            f"| {r['defect']} | {r['attack']} | {r['level']} | {r['lost']} of {r['test_images']} "
            f"| {r['to_target']} | {'-' if shown is None else f'{shown:.3f}'} / "
            f"{r['footprint_intensity_kept']:.3f} |"
        )
    write_results(args.out, report, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
