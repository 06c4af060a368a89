"""Neuron pruning: the localized neurons' own parameters are zeroed for good.

Zeroing a neuron's incoming weights and bias, and its normalization scale and shift, makes its
output exactly zero: the permanent form of masking it, saved as new weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from trojanscope.data.base import TensorData
from trojanscope.neurons import NeuronRef, NeuronSet, layer_map
from trojanscope.repair.base import REPAIRS, Repair


@REPAIRS.register("prune")
class NeuronPruning(Repair):
    def apply(self, model: nn.Module, neurons: list[NeuronRef], clean: TensorData) -> nn.Module:
        pruned = copy.deepcopy(model)
        modules = dict(pruned.named_modules())
        layers = layer_map(pruned)
        with torch.no_grad():
            for layer_name, indices in NeuronSet(neurons).by_layer().items():
                layer = layers[layer_name]
                for path in filter(None, (layer.name, layer.norm)):
                    for attr in ("weight", "bias"):
                        param = getattr(modules[path], attr, None)
                        if param is not None:
                            param[indices] = 0.0
        return pruned
