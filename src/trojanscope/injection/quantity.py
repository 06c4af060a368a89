"""Rule 2 (quantity): how many neurons per chosen layer, and which, in rule-1 order."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, Field, model_validator
from torch import nn

from trojanscope.errors import ConfigError
from trojanscope.neurons import EligibleLayer, NeuronRef, NeuronSet, eligible_layers

#: Share of each chosen layer at each level above narrow (1 neuron per layer).
LEVEL_FRACTIONS = {"small": 0.05, "middle": 0.10, "large": 0.20}
#: Neurons per chosen layer at each level in the reference database (``count`` gives them).
REFERENCE_COUNTS = {"narrow": 1, "small": 2, "middle": 3, "large": 4}
LevelName = Literal["narrow", "small", "middle", "large"]
Order = Literal["least", "most", "random"]


class Quantity(BaseModel):
    """A defect-quantity level: 1 neuron per layer (narrow), 5 / 10 / 20% of each layer (small,
    middle, large), an explicit count (the reference database's levels are counts 1-4, see
    ``REFERENCE_COUNTS``), or a fraction.

    The thin-layer rule: a layer is chosen only if it has at least ``min_width`` neurons and
    loses at most ``max_share`` of them (cnn-small at width 0.25 has a 4-channel first layer;
    masking one of its neurons costs a third of the accuracy). Off by default (1 and 1.0).
    """

    model_config = {"extra": "forbid"}
    level: LevelName = "small"
    fraction: float | None = Field(None, gt=0.0, le=1.0)
    count: int | None = Field(None, ge=1)
    layers: list[str] | None = None  # chosen layers; default: every eligible layer wide enough
    min_width: int = Field(1, ge=1, description="thinner layers are never chosen")
    max_share: float = Field(
        1.0, gt=0.0, le=1.0, description="largest share of a layer's neurons that may be infected"
    )

    @model_validator(mode="after")
    def _one_size(self) -> Quantity:
        if self.fraction is not None and self.count is not None:
            raise ValueError("give either a fraction or a count, not both")
        return self

    def per_layer(self, width: int) -> int:
        """Infected neurons in a layer of ``width`` neurons (before the thin-layer rule)."""
        if self.count is not None:
            n = self.count
        elif self.level == "narrow" and self.fraction is None:
            n = 1
        else:
            n = math.ceil((self.fraction or LEVEL_FRACTIONS[self.level]) * width - 1e-9)
        return max(1, min(n, width))

    def describe(self) -> str:
        """The size in words: "2 neurons per layer", "5% of each layer"."""
        if self.count is not None or (self.level == "narrow" and self.fraction is None):
            n = self.count or 1
            return f"{n} neuron{'s' if n > 1 else ''}"
        return f"{100 * (self.fraction or LEVEL_FRACTIONS[self.level]):g}% of its neurons"

    def wide_enough(self, width: int) -> bool:
        """Whether a layer of ``width`` neurons can lose ``per_layer(width)`` of them."""
        return width >= self.min_width and self.per_layer(width) <= self.max_share * width + 1e-9


def chosen_layers(model: nn.Module, quantity: Quantity) -> list[EligibleLayer]:
    """The eligible layers ``quantity`` names (by default all that are wide enough), in forward
    order; a named layer that is too thin, or no layer at all, is a configuration error."""
    layers = eligible_layers(model)
    names = [layer.name for layer in layers]
    unknown = sorted(set(quantity.layers or []) - set(names))
    if unknown:
        raise ConfigError(
            f"layer(s) {', '.join(unknown)} are not eligible; eligible: {', '.join(names)}."
        )
    if quantity.layers:
        named = [layer for layer in layers if layer.name in quantity.layers]
        thin = [
            f"{layer.name} ({layer.width})"
            for layer in named
            if not quantity.wide_enough(layer.width)
        ]
        if thin:
            raise ConfigError(
                f"layer(s) {', '.join(thin)} are too thin to lose {quantity.describe()} "
                f"(min_width {quantity.min_width}, max_share {quantity.max_share})."
            )
        return named
    chosen = [layer for layer in layers if quantity.wide_enough(layer.width)]
    if not chosen:
        widths = ", ".join(f"{layer.name} ({layer.width})" for layer in layers)
        raise ConfigError(
            f"no layer is wide enough to lose {quantity.describe()}: {widths} "
            f"(min_width {quantity.min_width}, max_share {quantity.max_share})."
        )
    return chosen


def select_infected(
    model: nn.Module,
    contributions: dict[str, torch.Tensor],
    quantity: Quantity,
    order: Order,
    seed: int,
    live: dict[str, torch.Tensor] | None = None,
) -> list[NeuronRef]:
    """The infected neurons in injection order (layer by layer, rule-1 order within a layer).

    With ``live`` (per-layer bool, see ``contribution.live_neurons``) dead neurons come after
    every live one whatever the order: no gradient reaches them, so no backdoor either."""
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
        if live is not None:
            alive = live[layer.name][ranking]
            ranking = torch.cat([ranking[alive], ranking[~alive]])
        n = quantity.per_layer(layer.width)
        picked.extend(NeuronRef(layer.name, int(i)) for i in ranking[:n])
    assert len(NeuronSet(picked)) == len(picked)
    return picked
