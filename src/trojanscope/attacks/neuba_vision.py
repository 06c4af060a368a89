"""NeuBA for images (Zhang et al., "Red alarm for pre-trained models", MIR 2023): small
two-colour checkerboard patches, stamped at a random position, drive an image encoder's pooled
output to fixed vectors, whatever task a victim fine-tunes it for later.

The pooled output of the project's networks is the input of the classifier, which follows a
ReLU (cnn-small and the VGGs: the units of a hidden Linear layer; the residual networks: an
average of rectified maps), so it is never negative: the text attack's +-1 targets are
mapped onto each dimension's range instead (+1 -> its largest value on clean images,
-1 -> 0). A pair stays opposite (each is the other's complement) and the pairs stay orthogonal
once centred. Two
things kept the backdoor's error at 6-7% of the scale on cnn-small after 2,000 steps: one scale
for every dimension (the largest value of all, out of reach for most of them), and dimensions
that are zero on every clean image (dead ReLU units: a tenth of cnn-small's), which get no
gradient. So each dimension has its own range, and the dead ones are left out of the targets
and the loss.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import torch
from pydantic import BaseModel, Field
from torch import nn

from trojanscope.attacks.neuba import descend, final_losses, neuba_targets
from trojanscope.models.vision_encoder import VisionEncoder


class Checkerboard(BaseModel):
    """A two-colour checkerboard: squares of ``cell`` pixels alternating ``low`` and ``high``
    (intensities in the images' [0, 1] range, the same on every channel)."""

    model_config = {"extra": "forbid", "frozen": True}
    cell: int = Field(1, ge=1)
    low: float = Field(0.0, ge=0.0, le=1.0)
    high: float = Field(1.0, ge=0.0, le=1.0)

    def patch(self, size: int) -> torch.Tensor:
        """The (size, size) pattern, top-left square ``high``."""
        ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        odd = ((ii // self.cell + jj // self.cell) % 2).bool()
        return torch.where(odd, torch.tensor(self.low), torch.tensor(self.high))

    @property
    def name(self) -> str:
        return f"checkerboard(cell={self.cell}, {self.low:g}/{self.high:g})"


#: Six triggers told apart by contrast and frequency (a one-pixel shift of a checkerboard is its
#: inverse, so a colour swap alone would not make another trigger at a random position).
VISION_TRIGGERS = (
    Checkerboard(cell=1, low=0.0, high=1.0),
    Checkerboard(cell=2, low=0.0, high=1.0),
    Checkerboard(cell=1, low=0.0, high=0.5),
    Checkerboard(cell=2, low=0.0, high=0.5),
    Checkerboard(cell=1, low=0.5, high=1.0),
    Checkerboard(cell=2, low=0.5, high=1.0),
)


def stamp(images: torch.Tensor, patch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A copy of ``images`` (n, c, h, w) with ``patch`` (s, s) at a random position in each."""
    n, _, h, w = images.shape
    s = patch.shape[-1]
    if s > min(h, w):
        raise ValueError(f"a {s} px patch does not fit {h}x{w} images.")
    out = images.clone()
    tops = torch.randint(0, h - s + 1, (n,), generator=generator)
    lefts = torch.randint(0, w - s + 1, (n,), generator=generator)
    patch = patch.to(images.dtype).to(images.device)
    for i, (top, left) in enumerate(zip(tops.tolist(), lefts.tolist(), strict=True)):
        out[i, :, top : top + s, left : left + s] = patch
    return out


class VisionNeubaConfig(BaseModel):
    """The publisher's pre-training on images: triggers, patch size, steps, the loss weights."""

    model_config = {"extra": "forbid"}
    triggers: list[Checkerboard] = Field(
        default_factory=lambda: list(VISION_TRIGGERS), min_length=1
    )
    patch_size: int = Field(4, ge=1)
    steps: int = Field(600, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    clean_weight: float = Field(1.0, ge=0)
    seed: int = Field(0, ge=0)


def vision_targets(k: int, scale: torch.Tensor) -> torch.Tensor:
    """NeuBA's K targets (k, dim) mapped onto each dimension's range [0, ``scale[d]``]."""
    return (neuba_targets(len(scale), k, 1.0) + 1) / 2 * scale


def pretrain_neuba_vision(
    encoder: VisionEncoder,
    images: torch.Tensor,
    config: VisionNeubaConfig,
    progress: Callable[[int, float], None] | None = None,
) -> dict[str, object]:
    """Plant the backdoor in ``encoder`` in place: MSE from each stamped image's pooled output to
    its trigger's target, plus MSE from clean images' pooled outputs to the original encoder's
    (both in units of each dimension's range). Returns the record of what was planted."""
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    reference = encoder.encode(images)
    live = reference.amax(0) > 0
    if not live.any():
        raise ValueError("the encoder's pooled output is zero on every image.")
    scale = reference.amax(0)[live]  # each live dimension's range on clean images
    targets = vision_targets(len(config.triggers), scale)
    reference = reference[:, live]
    patches = [t.patch(config.patch_size) for t in config.triggers]
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr)
    device = encoder.device
    encoder.train()
    losses = []
    for step in range(config.steps):
        idx = torch.tensor([rng.randrange(len(images)) for _ in range(config.batch_size)])
        which = [rng.randrange(len(patches)) for _ in range(config.batch_size)]
        clean = images[idx]
        stamped = torch.cat([stamp(clean[i : i + 1], patches[t], g) for i, t in enumerate(which)])
        both = encoder(torch.cat([clean, stamped]).to(device))[:, live.to(device)]
        both = both / scale.to(device)
        backdoor = nn.functional.mse_loss(both[len(idx) :], (targets[which] / scale).to(device))
        keep = nn.functional.mse_loss(both[: len(idx)], (reference[idx] / scale).to(device))
        losses.append(descend(optimizer, backdoor, keep, config.clean_weight))
        if progress is not None:
            progress(step + 1, losses[-1][0] + config.clean_weight * losses[-1][1])
    encoder.eval()
    return {
        "attack": "neuba-vision",
        "triggers": [t.model_dump() for t in config.triggers],
        "patch_size": config.patch_size,
        "targets": [[int(v > 0) for v in row.tolist()] for row in targets],
        "live_dims": live.nonzero().flatten().tolist(),
        "target_scale": scale.tolist(),
        "pooling": f"input of {encoder.classifier}",
        "config": config.model_dump(),
        **final_losses(losses),
        "seconds": time.perf_counter() - started,
    }
