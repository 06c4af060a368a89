"""Neuron fine-tuning: only the localized neurons' parameters are trained on the clean set.

The trainable entries are the ones injection rule 3 gives a neuron (incoming weights, bias,
normalization scale and shift, and with ``fan-in+fan-out`` the weights carrying it onward), so a
repair can reach exactly what an attacker restricted to those neurons could have changed.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from trojanscope.data.base import TensorData
from trojanscope.injection.injector import masked_training
from trojanscope.injection.ownership import Edges, trainable_masks
from trojanscope.neurons import NeuronRef
from trojanscope.repair.base import REPAIRS, FineTuneBudget, Repair


class NeuronFineTuneParams(FineTuneBudget):
    edges: Edges = Field("fan-in+fan-out", description="Which owned entries are trained.")


@REPAIRS.register("finetune")
class NeuronFineTuning(Repair[NeuronFineTuneParams]):
    def apply(self, model: nn.Module, neurons: list[NeuronRef], clean: TensorData) -> nn.Module:
        p = self.params
        masks = trainable_masks(model, neurons, p.edges)
        repaired, _ = masked_training(
            model,
            masks,
            self.clean_subset(clean),
            p.lr,
            0.0,
            p.epochs,
            p.batch_size,
            p.seed,
            done=lambda _m, _e: False,
        )
        return repaired
