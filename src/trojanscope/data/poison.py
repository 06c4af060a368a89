"""Poisoned views: the indices of poisoned samples plus those samples only, never a full copy."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trojanscope.data.base import TensorData


@dataclass
class PoisonedView:
    """``base`` with the samples at ``indices`` replaced by (``x``, ``y``)."""

    base: TensorData
    indices: torch.Tensor  # (P,) long, sorted, unique
    x: torch.Tensor  # (P, C, H, W) triggered images
    y: torch.Tensor  # (P,) labels the attacker wants

    def __post_init__(self) -> None:
        if not (len(self.indices) == len(self.x) == len(self.y)):
            raise ValueError("poisoned indices, images and labels differ in length")

    @property
    def rate(self) -> float:
        return len(self.indices) / max(1, len(self.base))

    def poisoned(self) -> TensorData:
        """Only the poisoned samples, as a data set."""
        return TensorData(self.x, self.y, self.base.num_classes)

    def materialize(self) -> TensorData:
        """The mixed data set (a temporary copy for training; never stored)."""
        x, y = self.base.x.clone(), self.base.y.clone()
        x[self.indices], y[self.indices] = self.x, self.y
        return TensorData(x, y, self.base.num_classes)
