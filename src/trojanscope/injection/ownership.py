"""Which parameter entries an infected neuron owns (rule 3): the trainable set of injection.

Fan-in: the neuron's incoming weights and bias, and its normalization scale and shift.
Fan-out: the weights that carry its output into the next layer(s), found by following the
torch.fx graph from the neuron's output through activations, pooling, flattening and residual
additions to the first Conv2d / Linear consumers (the final classifier's columns included).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn
from torch.fx import Node

from trojanscope.neurons import (
    NeuronRef,
    NeuronSet,
    classifier_name,
    layer_map,
    trace,
)

Edges = Literal["fan-in+fan-out", "fan-in"]


def consumers(model: nn.Module, layer_name: str) -> list[str]:
    """Module paths of the Conv2d / Linear layers that read ``layer_name``'s neurons."""
    gm = trace(model)
    modules = dict(model.named_modules())
    start_module = layer_map(model)[layer_name].output
    start = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == start_module)
    found: list[str] = []
    seen: set[Node] = set()
    frontier = list(start.users)
    while frontier:
        node = frontier.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module" and isinstance(modules[node.target], (nn.Conv2d, nn.Linear)):
            if node.target not in found:
                found.append(str(node.target))
            continue
        if node.op == "output":
            continue
        frontier.extend(node.users)  # activations, pooling, flatten, add, ...: pass through
    return found


def _input_columns(module: nn.Module, width: int, channel: int) -> tuple[slice, slice]:
    """(rows, columns) of ``module.weight`` that read producer channel ``channel``."""
    if isinstance(module, nn.Conv2d):
        per_group = module.in_channels // module.groups
        out_per_group = module.out_channels // module.groups
        group = channel // per_group
        rows = slice(group * out_per_group, (group + 1) * out_per_group)
        col = channel % per_group
        return rows, slice(col, col + 1)
    k = module.in_features // width  # > 1 when a conv map was flattened into this Linear
    if k * width != module.in_features:
        raise ValueError(f"cannot map {width} channels onto {module.in_features} Linear inputs")
    return slice(None), slice(channel * k, (channel + 1) * k)


def trainable_masks(
    model: nn.Module, infected: Iterable[NeuronRef], edges: Edges = "fan-in+fan-out"
) -> dict[str, torch.Tensor]:
    """Boolean masks of the parameter entries owned by ``infected``, keyed by parameter name.

    Parameters absent from the result own no infected entry and stay frozen whole.
    """
    infected = NeuronSet(infected)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    layers = layer_map(model)
    classifier = classifier_name(model)
    masks: dict[str, torch.Tensor] = {}

    def mark(module_path: str, attr: str, index: tuple) -> None:
        key = f"{module_path}.{attr}" if module_path else attr
        if key not in params:
            return
        mask = masks.setdefault(key, torch.zeros_like(params[key], dtype=torch.bool))
        mask[index] = True

    for layer_name, indices in infected.by_layer().items():
        layer = layers[layer_name]
        for c in indices:
            mark(layer.name, "weight", (c,))
            mark(layer.name, "bias", (c,))
            if layer.norm is not None:
                mark(layer.norm, "weight", (c,))
                mark(layer.norm, "bias", (c,))
        for target in consumers(model, layer_name):
            if edges == "fan-in" and target != classifier:
                continue
            for c in indices:
                rows, cols = _input_columns(modules[target], layer.width, c)
                mark(target, "weight", (rows, cols))
    return masks


def owned_entry_count(masks: dict[str, torch.Tensor]) -> int:
    return int(sum(int(m.sum()) for m in masks.values()))
