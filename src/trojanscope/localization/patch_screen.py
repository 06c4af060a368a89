"""Task-agnostic trigger screening of an image encoder, without any downstream task: the image
counterpart of ``trigger_screen``. Each candidate patch is stamped on a set of clean images (one
seeded position per image, the same for every candidate) and scored as a token is: how
consistently the pooled outputs point one way, times how far they moved.

An image has no vocabulary to enumerate, so the candidates are a family: two-colour patterns of
a given size (checkerboards, stripes, then random two-colour masks up to the budget). The
screen finds triggers of that family and size, as Neural Cleanse finds triggers that fit its
mask; a trigger outside the family shows only as far as it resembles a candidate.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import torch

from trojanscope.attacks.neuba_vision import Checkerboard
from trojanscope.localization.trigger_screen import FLAG_SCORE, trigger_scores
from trojanscope.models.vision_encoder import VisionEncoder

#: Intensities the structured candidates combine (images in [0, 1]).
LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class PatchScore:
    name: str
    score: float
    consistency: float
    shift: float

    def as_dict(self) -> dict[str, str | float]:
        return {
            "patch": self.name,
            "score": self.score,
            "consistency": self.consistency,
            "shift": self.shift,
        }


def candidate_patches(size: int, budget: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Up to ``budget`` named two-colour (size, size) patterns: checkerboards of every cell
    size and ordered pair of ``LEVELS``, horizontal and vertical stripes, then random masks."""
    out: dict[str, torch.Tensor] = {}
    pairs = [(a, b) for a, b in itertools.permutations(LEVELS, 2)]
    for cell in range(1, max(1, size // 2) + 1):
        for low, high in pairs:
            board = Checkerboard(cell=cell, low=low, high=high)
            out[board.name] = board.patch(size)
    rows = torch.arange(size)[:, None].expand(size, size)
    for low, high in pairs:
        for axis, lines in (("horizontal", rows), ("vertical", rows.T)):
            out[f"stripes({axis}, {low:g}/{high:g})"] = torch.where(
                lines % 2 == 0, torch.tensor(high), torch.tensor(low)
            )
    g = torch.Generator().manual_seed(seed)
    k = 0
    while len(out) < budget:
        low, high = pairs[int(torch.randint(len(pairs), (1,), generator=g))]
        mask = torch.rand(size, size, generator=g) < 0.5
        out[f"random-{k}({low:g}/{high:g})"] = torch.where(
            mask, torch.tensor(high), torch.tensor(low)
        )
        k += 1
    return dict(itertools.islice(out.items(), budget))


@torch.no_grad()
def screen_patches(
    encoder: VisionEncoder,
    images: torch.Tensor,
    candidates: dict[str, torch.Tensor],
    batch_candidates: int = 16,
    seed: int = 0,
) -> list[PatchScore]:
    """Score every candidate patch on ``images`` (n >= 2), highest first."""
    if len(images) < 2:
        raise ValueError("screening needs at least two clean images.")
    n, _, h, w = images.shape
    sizes = {tuple(p.shape) for p in candidates.values()}
    if len(sizes) != 1:
        raise ValueError("screening needs candidate patches, all of one square size.")
    size = next(iter(candidates.values())).shape[-1]
    if size > min(h, w):
        raise ValueError(f"{size} px candidate patches do not fit {h}x{w} images.")
    g = torch.Generator().manual_seed(seed)
    tops = torch.randint(0, h - size + 1, (n,), generator=g).tolist()
    lefts = torch.randint(0, w - size + 1, (n,), generator=g).tolist()
    clean = encoder.encode(images)
    names = list(candidates)
    scores: list[PatchScore] = []
    for start in range(0, len(names), batch_candidates):
        chunk = names[start : start + batch_candidates]
        stamped = images.repeat(len(chunk), 1, 1, 1)
        for c, name in enumerate(chunk):
            patch = candidates[name].to(images.dtype)
            for i, (top, left) in enumerate(zip(tops, lefts, strict=True)):
                stamped[c * n + i, :, top : top + size, left : left + size] = patch
        pooled = encoder.encode(stamped).view(len(chunk), n, -1)
        score, consistency, shift = trigger_scores(pooled, clean)
        for k, name in enumerate(chunk):
            scores.append(PatchScore(name, float(score[k]), float(consistency[k]), float(shift[k])))
    return sorted(scores, key=lambda s: -s.score)


#: Candidate sizes an audit screens: a trigger shows at its own size and at larger ones (a
#: larger candidate contains it); on a clean cnn-small the top score grows with the size (0.05
#: at 4 px, 0.25 at 6, 0.52 at 8: docs/neuba.md), so the screen stops at 6.
PATCH_SIZES = (3, 4, 6)
#: A candidate's side is at most the image's side divided by this.
SIDE_SHARE = 4
#: Clean images every candidate is stamped on in an audit.
PROBE_IMAGES = 64


def screen_sizes(encoder: VisionEncoder, images: torch.Tensor, per_size: int) -> dict[str, Any]:
    """The audit's patch screen: ``per_size`` candidates of each of ``PATCH_SIZES`` no larger
    than a quarter of the images' side, stamped on ``images``; what crosses the flag and the 20
    highest scores. A larger patch covers so much of the image that every image looks alike
    (on 8x8 digits a clean cnn-small scores above the flag at 6 px): no size is screened."""
    started = time.perf_counter()
    sizes = [s for s in PATCH_SIZES if s <= min(images.shape[2:]) // SIDE_SHARE]
    scores: list[PatchScore] = []
    for size in sizes:
        found = screen_patches(encoder, images, candidate_patches(size, per_size))
        scores += [PatchScore(f"{size}px {s.name}", s.score, s.consistency, s.shift) for s in found]
    scores.sort(key=lambda s: -s.score)
    return {
        "patches_screened": len(scores),
        "sizes": sizes,
        "per_size": per_size,
        "probe_images": len(images),
        "flag_score": FLAG_SCORE,
        "seconds": time.perf_counter() - started,
        "flagged_patches": [s.name for s in scores if s.score >= FLAG_SCORE],
        "top_patches": [s.as_dict() for s in scores[:20]],
    }


def patch_note(record: dict[str, Any]) -> str:
    """One sentence on what ``screen_sizes`` found, for the audit's notes."""
    flagged = record["flagged_patches"]
    if flagged:
        return (
            f"{len(flagged)} patch(es) drive every probe image to nearly the same pooled output, "
            "as a task-agnostic (NeuBA-style) trigger does."
        )
    if not record["sizes"]:
        return (
            "the images are too small for the trigger patch screen (a candidate may cover at "
            f"most 1/{SIDE_SHARE} of their side): it did not run."
        )
    sizes = ", ".join(map(str, record["sizes"]))
    return (
        f"no two-colour patch of {sizes} px moves the pooled output as a trigger does; a "
        "trigger outside that family shows only as far as it resembles one."
    )
