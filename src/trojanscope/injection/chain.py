"""The chain rule (part of rule 2): infected layers reach each other and the classifier.

Activation patching, which proves a defect sufficient, holds every neuron outside the set at
its clean value from the set's first layer on. A layer the thin-layer rule leaves out between
two chosen layers is then held clean whole, and the chosen layers behind it receive nothing of
the trigger; likewise a grouped (depthwise) convolution reads only its own group's input
channels. On MobileNetV2 at width 0.25 the thin projections of the first blocks cut the chain
at every block and the depthwise layers at every other layer, so no defect could be sufficient
and the injector pushed every input to the target instead.
"""

from __future__ import annotations

from torch import nn

from trojanscope.injection.ownership import consumers
from trojanscope.neurons import EligibleLayer, classifier_name, eligible_layers, layer_module


def connected_layers(model: nn.Module, layers: list[EligibleLayer]) -> list[EligibleLayer]:
    """The layers of ``layers`` on a path through ``layers`` alone to the classifier (through
    residual additions, which keep a channel's index) that the trigger can enter: each reads
    the input, a layer before the first of them (patching leaves those alone) or another of
    them. ``layers`` unchanged when none reaches the classifier (acceptance then judges)."""
    order = [layer.name for layer in eligible_layers(model)]
    position = {name: index for index, name in enumerate(order)}
    reads = {name: set(consumers(model, name, through_adds=True)) for name in order}
    names = [layer.name for layer in layers]
    classifier = classifier_name(model)
    to_classifier: set[str] = set()
    for name in reversed(names):
        if classifier in reads[name] or reads[name] & to_classifier:
            to_classifier.add(name)
    if not to_classifier:
        return layers
    first = min(position[name] for name in to_classifier)
    reached: set[str] = set()
    for name in names:
        producers = [p for p in order if name in reads[p]]
        if name in to_classifier and (
            not producers or any(p in reached or position[p] < first for p in producers)
        ):
            reached.add(name)
    return [layer for layer in layers if layer.name in reached]


def group_channels(
    model: nn.Module, layer: EligibleLayer, picked: dict[str, list[int]]
) -> list[int] | None:
    """For a grouped convolution, the output channels whose groups read a channel already
    picked in the layers feeding it (a depthwise conv's infected channels are then those of the
    layer before it); None for an ordinary layer or when nothing picked feeds it."""
    module = layer_module(model, layer)
    if not isinstance(module, nn.Conv2d) or module.groups == 1:
        return None
    inputs = {
        channel
        for producer, channels in picked.items()
        if layer.name in consumers(model, producer, through_adds=True)
        for channel in channels
    }
    if not inputs:
        return None
    per_group = module.in_channels // module.groups
    out_per_group = module.out_channels // module.groups
    groups = sorted({channel // per_group for channel in inputs})
    return [g * out_per_group + k for g in groups for k in range(out_per_group)]
