"""Rule 2 (quantity): how many neurons per chosen layer, and which, in rule-1 order."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, Field, model_validator
from torch import nn

from trojanscope.errors import ConfigError
from trojanscope.neurons import EligibleLayer, NeuronRef, NeuronSet, eligible_layers

LEVEL_FRACTIONS = {"small": 0.05, "middle": 0.10, "large": 0.20}
LevelName = Literal["narrow", "small", "middle", "large"]
Order = Literal["least", "most", "random"]


class Quantity(BaseModel):
    """A defect-quantity level: 1 neuron per layer (narrow), a fraction, or an explicit count."""

    model_config = {"extra": "forbid"}
    level: LevelName = "small"
    fraction: float | None = Field(None, gt=0.0, le=1.0)
    count: int | None = Field(None, ge=1)
    layers: list[str] | None = None  # chosen layers; default: every eligible layer

    @model_validator(mode="after")
    def _one_size(self) -> Quantity:
        if self.fraction is not None and self.count is not None:
            raise ValueError("give either a fraction or a count, not both")
        return self

    def per_layer(self, width: int) -> int:
        if self.count is not None:
            n = self.count
        elif self.level == "narrow" and self.fraction is None:
            n = 1
        else:
            n = math.ceil((self.fraction or LEVEL_FRACTIONS[self.level]) * width - 1e-9)
        return max(1, min(n, width))


def chosen_layers(model: nn.Module, quantity: Quantity) -> list[EligibleLayer]:
    """The eligible layers ``quantity`` names (all by default), in forward order."""
    layers = eligible_layers(model)
    names = [layer.name for layer in layers]
    chosen = quantity.layers or names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise ConfigError(
            f"layer(s) {', '.join(unknown)} are not eligible; eligible: {', '.join(names)}."
        )
    return [layer for layer in layers if layer.name in chosen]


def select_infected(
    model: nn.Module,
    contributions: dict[str, torch.Tensor],
    quantity: Quantity,
    order: Order,
    seed: int,
) -> list[NeuronRef]:
    """The infected neurons in injection order (layer by layer, rule-1 order within a layer)."""
    g = torch.Generator().manual_seed(seed)
    picked: list[NeuronRef] = []
    for layer in chosen_layers(model, quantity):
        scores = contributions[layer.name]
        if order == "least":
            ranking = torch.argsort(scores, stable=True)
        elif order == "most":
            ranking = torch.argsort(scores, descending=True, stable=True)
        else:
            ranking = torch.randperm(layer.width, generator=g)
        n = quantity.per_layer(layer.width)
        picked.extend(NeuronRef(layer.name, int(i)) for i in ranking[:n])
    assert len(NeuronSet(picked)) == len(picked)
    return picked
