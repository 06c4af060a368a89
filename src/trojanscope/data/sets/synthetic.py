"""Generated shapes (squares, disks, rings, bars, crosses) at any size: fast test data."""

from typing import Literal

import numpy as np
from pydantic import Field

from trojanscope.data.base import DATASETS, Dataset, SplitParams

SHAPES = ("square", "frame", "disk", "ring", "hbar", "vbar", "plus", "cross")


class SyntheticParams(SplitParams):
    n: int = Field(2000, ge=20, le=1_000_000, description="number of images")
    size: int = Field(16, ge=8, le=256, description="image height and width in pixels")
    channels: Literal[1, 3] = 1
    num_classes: int = Field(4, ge=2, le=len(SHAPES))
    noise: float = Field(0.05, ge=0.0, le=0.5)
    generator_seed: int = 0


def _shape_masks(
    kind: str, yy: np.ndarray, xx: np.ndarray, cy: np.ndarray, cx: np.ndarray, r: np.ndarray
) -> np.ndarray:
    """Boolean masks (N, H, W) of one shape kind, centred at (cy, cx) with half-size r."""
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
    r = r[:, None, None]
    dist = np.sqrt(dy**2 + dx**2)
    thick = np.maximum(1.0, r / 3)
    box = (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if kind == "square":
        return box
    if kind == "frame":
        return box & ((np.abs(dy) > r - thick) | (np.abs(dx) > r - thick))
    if kind == "disk":
        return dist <= r
    if kind == "ring":
        return (dist <= r) & (dist > r - thick)
    if kind == "hbar":
        return (np.abs(dy) <= thick / 2 + 0.5) & (np.abs(dx) <= r)
    if kind == "vbar":
        return (np.abs(dx) <= thick / 2 + 0.5) & (np.abs(dy) <= r)
    if kind == "plus":
        return box & ((np.abs(dy) <= thick / 2) | (np.abs(dx) <= thick / 2))
    return box & ((np.abs(dy - dx) <= thick / 2) | (np.abs(dy + dx) <= thick / 2))


@DATASETS.register("synthetic")
class Synthetic(Dataset[SyntheticParams]):
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        rng = np.random.default_rng(p.generator_seed)
        y = np.arange(p.n) % p.num_classes
        rng.shuffle(y)
        yy, xx = np.mgrid[0 : p.size, 0 : p.size].astype(np.float32)
        r = rng.uniform(0.18, 0.32, p.n) * p.size
        cy = rng.uniform(r, p.size - 1 - r)
        cx = rng.uniform(r, p.size - 1 - r)
        images = np.zeros((p.n, p.size, p.size), np.float32)
        for label in range(p.num_classes):
            sel = y == label
            mask = _shape_masks(SHAPES[label], yy, xx, cy[sel], cx[sel], r[sel])
            images[sel] = mask * rng.uniform(0.6, 1.0, (int(sel.sum()), 1, 1))
        images += rng.normal(0.0, p.noise, images.shape).astype(np.float32)
        x = np.clip(images, 0.0, 1.0)[:, None].repeat(p.channels, axis=1)
        return x.astype(np.float32), y.astype(np.int64)
