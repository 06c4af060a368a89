"""Which parameter entries an infected neuron owns (rule 3): the trainable set of injection.

Fan-in: the neuron's incoming weights and bias, and its normalization scale and shift.
Fan-out: the weights that carry its output into the next layer(s), found by following the
torch.fx graph from the neuron's output through activations, pooling and flattening to the first
Conv2d / Linear consumers (the final classifier's columns included). The walk stops at residual
additions and concatenations: beyond them the channel is no longer the neuron's alone. The one
exception is the classifier under fan-in edges: its columns are the set's only trainable way to
the target logit, and in residual networks the last layers reach it through an addition.
"""

from __future__ import annotations

import operator
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


def consumers(model: nn.Module, layer_name: str, through_adds: bool = False) -> list[str]:
    """Module paths of the Conv2d / Linear layers that read ``layer_name``'s neurons;
    ``through_adds``: also those reading a residual sum the neurons' channels enter (an
    addition keeps the channel's index)."""
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
        if node.op == "output" or (_is_merge(node) and not (through_adds and _is_add(node))):
            continue
        frontier.extend(node.users)  # activations, pooling, flatten, ...: pass through
    return found


def _is_add(node: Node) -> bool:
    """A residual addition (channel ``c`` of the sum is channel ``c`` of each term)."""
    if node.op == "call_function":
        return node.target in _ADD_FUNCTIONS
    return node.op == "call_method" and node.target in _MERGE_METHODS


_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_MERGE_FUNCTIONS = _ADD_FUNCTIONS | {torch.cat, torch.stack}
_MERGE_METHODS = {"add", "add_"}


def _is_merge(node: Node) -> bool:
    """A residual addition or concatenation: past it a channel mixes the neuron's output with
    other signals, so the weights reading it are not the neuron's own (and training them would
    let a backdoor ride on the clean shortcut, out of reach of masking)."""
    if node.op == "call_function":
        return node.target in _MERGE_FUNCTIONS
    return node.op == "call_method" and node.target in _MERGE_METHODS


def _input_columns(module: nn.Module, width: int, channel: int) -> tuple[slice, slice]:
    """(rows, columns) of ``module.weight`` that read producer channel ``channel``."""
    if isinstance(module, nn.Conv2d):
        per_group = module.in_channels // module.groups
        out_per_group = module.out_channels // module.groups
        group = channel // per_group
        rows = slice(group * out_per_group, (group + 1) * out_per_group)
        col = channel % per_group
        return rows, slice(col, col + 1)
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{type(module).__name__} is neither a Conv2d nor a Linear")
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

    def mark(module_path: str, attr: str, index: tuple[int | slice, ...]) -> None:
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
        # fan-in: of the consumers only the classifier, also past residual additions (in a
        # ResNet the last blocks' channels reach it only through one; without its columns the
        # set had no trainable path to the target logit, and the backdoor left the set).
        for target in consumers(model, layer_name, through_adds=edges == "fan-in"):
            if edges == "fan-in" and target != classifier:
                continue
            for c in indices:
                rows, cols = _input_columns(modules[target], layer.width, c)
                mark(target, "weight", (rows, cols))
    return masks


def owned_entry_count(masks: dict[str, torch.Tensor]) -> int:
    return int(sum(int(m.sum()) for m in masks.values()))


def subnet_masks(
    model: nn.Module, infected: Iterable[NeuronRef]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trainable, cut) masks for a backdoor subnet made of the infected neurons (SRA).

    Trainable: each infected neuron's weights from infected neurons of the layers feeding it
    (all inputs for a first layer), its bias and normalization scale and shift. Cut (zeroed and
    frozen): its weights from clean neurons, the weights carrying it into clean neurons, and its
    classifier columns (set afterwards). In sequential networks the subnet is then exactly
    isolated from the host; through residual additions a channel mixes both, so isolation there is
    approximate.
    """
    infected = NeuronSet(infected)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    layers = layer_map(model)
    classifier = classifier_name(model)
    by_layer = infected.by_layer()
    # Which weight entries of each consumer read an infected channel.
    reads_infected: dict[str, torch.Tensor] = {}
    for producer, indices in by_layer.items():
        width = layers[producer].width
        for target in consumers(model, producer):
            weight = modules[target].weight
            mask = reads_infected.setdefault(target, torch.zeros_like(weight, dtype=torch.bool))
            for c in indices:
                rows, cols = _input_columns(modules[target], width, c)
                mask[rows, cols] = True
    has_producer = {t for p in layers for t in consumers(model, p)}
    trainable: dict[str, torch.Tensor] = {}
    cut: dict[str, torch.Tensor] = {}

    def entry(store: dict[str, torch.Tensor], key: str) -> torch.Tensor:
        return store.setdefault(key, torch.zeros_like(params[key], dtype=torch.bool))

    for layer_name, indices in by_layer.items():
        layer = layers[layer_name]
        weight_key = f"{layer_name}.weight"
        for n in indices:
            if layer_name in has_producer:
                from_infected = reads_infected.get(
                    layer_name, torch.zeros_like(params[weight_key], dtype=torch.bool)
                )[n]
                entry(trainable, weight_key)[n] = from_infected
                entry(cut, weight_key)[n] = ~from_infected
            else:
                entry(trainable, weight_key)[n] = True
            for module_path in filter(None, (layer_name, layer.norm)):
                for attr in ("weight", "bias"):
                    key = f"{module_path}.{attr}"
                    if key in params and not (module_path == layer_name and attr == "weight"):
                        entry(trainable, key)[n] = True
    for target, mask in reads_infected.items():
        key = f"{target}.weight"
        if target == classifier:
            entry(cut, key)[mask] = True
            continue
        rows_infected = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
        rows_infected[by_layer.get(target, [])] = True
        view = (-1,) + (1,) * (mask.dim() - 1)
        entry(cut, key)[mask & ~rows_infected.view(view)] = True
    return trainable, cut
