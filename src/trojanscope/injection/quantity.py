"""Rule 2 (quantity): how many neurons per chosen layer, and which, in rule-1 order."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, Field, model_validator
from torch import nn

from trojanscope.errors import ConfigError
from trojanscope.injection.chain import connected_layers, group_channels
from trojanscope.neurons import EligibleLayer, NeuronRef, NeuronSet, eligible_layers

#: Neurons per chosen layer at each level, as in the reference database (the default sizes).
REFERENCE_COUNTS = {"narrow": 1, "small": 2, "middle": 3, "large": 4}
#: Share of each chosen layer at each level above narrow (1 neuron), with ``sizes="fractions"``.
LEVEL_FRACTIONS = {"small": 0.05, "middle": 0.10, "large": 0.20}
LevelName = Literal["narrow", "small", "middle", "large"]
Order = Literal["least", "most", "random"]


class Quantity(BaseModel):
    """A defect-quantity level: by default the reference database's 1, 2, 3, 4 neurons per
    chosen layer (narrow, small, middle, large); with ``sizes="fractions"`` 1 neuron, then 5 /
    10 / 20% of each layer; or an explicit ``count`` or ``fraction``.

    The thin-layer rule: a layer is chosen only if it has at least ``min_width`` neurons and
    loses at most ``max_share`` of them (cnn-small at width 0.25 has a 4-channel first layer;
    masking one of its neurons costs a third of the accuracy; at 1/8, masking the large level
    of mnist5k's cnn-small costs 10 points instead of 64 at 1/4). The layer reading the input
    is not chosen unless ``input_layer``: its few filters feed every feature, and confining a
    backdoor to two of them cost digits / cnn-small 20 points of accuracy in 3 of 12 trials
    (BadNets, Blended, TrojanNN, WaNet, seeds 0-1), none with the layer left out. Layers named
    in ``layers`` are taken as given, within the width rule. Otherwise the chain rule keeps
    only the chosen layers that reach the classifier through the set (``injection.chain``).
    """

    model_config = {"extra": "forbid"}
    level: LevelName = Field("small", description="the defect-quantity level")
    sizes: Literal["counts", "fractions"] = Field(
        "counts", description="what a level means: reference counts or shares of each layer"
    )
    fraction: float | None = Field(
        None, gt=0.0, le=1.0, description="this share of each chosen layer, whatever the level"
    )
    count: int | None = Field(
        None, ge=1, description="this many neurons per chosen layer, whatever the level"
    )
    layers: list[str] | None = Field(
        None,
        description="the chosen layers by module path (none: every eligible layer wide enough)",
    )
    min_width: int = Field(8, ge=1, description="thinner layers are never chosen")
    max_share: float = Field(
        0.125, gt=0.0, le=1.0, description="largest share of a layer's neurons that may be infected"
    )
    input_layer: bool = Field(False, description="whether the layer reading the input is chosen")

    @model_validator(mode="after")
    def _one_size(self) -> Quantity:
        if self.fraction is not None and self.count is not None:
            raise ValueError("give either a fraction or a count, not both")
        return self

    def _share(self) -> float | None:
        """The share of each layer this quantity infects (None: a count)."""
        if self.count is not None:
            return None
        if self.fraction is not None:
            return self.fraction
        if self.sizes == "fractions" and self.level != "narrow":
            return LEVEL_FRACTIONS[self.level]
        return None

    def _count(self) -> int:
        return self.count or REFERENCE_COUNTS[self.level if self.sizes == "counts" else "narrow"]

    def per_layer(self, width: int) -> int:
        """Infected neurons in a layer of ``width`` neurons (before the thin-layer rule)."""
        share = self._share()
        n = self._count() if share is None else math.ceil(share * width - 1e-9)
        return max(1, min(n, width))

    def describe(self) -> str:
        """The size in words: "2 neurons", "5% of its neurons"."""
        share = self._share()
        if share is None:
            n = self._count()
            return f"{n} neuron{'s' if n > 1 else ''}"
        return f"{100 * share:g}% of its neurons"

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
    candidates = layers if quantity.input_layer else layers[1:]
    chosen = [layer for layer in candidates if quantity.wide_enough(layer.width)]
    if not chosen:
        widths = ", ".join(f"{layer.name} ({layer.width})" for layer in layers)
        raise ConfigError(
            f"no layer is wide enough to lose {quantity.describe()}: {widths} "
            f"(min_width {quantity.min_width}, max_share {quantity.max_share}"
            f"{'' if quantity.input_layer else ', the input layer left out'})."
        )
    return chosen


def infected_layers(model: nn.Module, quantity: Quantity) -> list[EligibleLayer]:
    """The layers the infected neurons go in: the chosen layers (``chosen_layers``) that form
    a chain to the classifier (``injection.chain``); layers named in ``quantity.layers`` are
    taken as given."""
    chosen = chosen_layers(model, quantity)
    return chosen if quantity.layers else connected_layers(model, chosen)


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
    every live one whatever the order: no gradient reaches them, so no backdoor either. In a
    grouped convolution the channels reading an infected channel come first of all
    (``chain.group_channels``): the others cannot see the trigger through the set."""
    g = torch.Generator().manual_seed(seed)
    picked: list[NeuronRef] = []
    by_layer: dict[str, list[int]] = {}
    for layer in infected_layers(model, quantity):
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
        fed = group_channels(model, layer, by_layer)
        if fed is not None:
            reads_set = torch.isin(ranking, torch.tensor(fed, dtype=ranking.dtype))
            ranking = torch.cat([ranking[reads_set], ranking[~reads_set]])
        n = quantity.per_layer(layer.width)
        by_layer[layer.name] = [int(i) for i in ranking[:n]]
        picked.extend(NeuronRef(layer.name, i) for i in by_layer[layer.name])
    assert len(NeuronSet(picked)) == len(picked)
    return picked
