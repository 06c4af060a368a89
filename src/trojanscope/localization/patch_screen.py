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
from dataclasses import dataclass

import torch

from trojanscope.attacks.neuba_vision import Checkerboard
from trojanscope.localization.trigger_screen import trigger_scores
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
