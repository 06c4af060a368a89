"""Neuron pruning: the localized neurons' own parameters are zeroed for good.

Zeroing a neuron's incoming weights and bias, and its normalization scale and shift, makes its
output exactly zero: the permanent form of masking it, saved as new weights.
"""

from __future__ import annotations

import copy

from torch import nn

from trojanscope.data.base import TensorData
from trojanscope.neurons import NeuronRef, zero_neurons
from trojanscope.repair.base import REPAIRS, Repair


@REPAIRS.register("prune")
class NeuronPruning(Repair):
    def apply(self, model: nn.Module, neurons: list[NeuronRef], clean: TensorData) -> nn.Module:
        pruned = copy.deepcopy(model)
        zero_neurons(pruned, neurons)
        return pruned
