"""Whole-model fine-tuning on the clean set with the neuron fine-tuning budget: the baseline
every localized repair must beat (it needs no localization at all)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from trojanscope.data.base import TensorData
from trojanscope.models.training import train_epochs
from trojanscope.neurons import NeuronRef
from trojanscope.repair.base import REPAIRS, FineTuneBudget, Repair


@REPAIRS.register("finetune-all")
class FineTuneAll(Repair[FineTuneBudget]):
    uses_neurons = False

    def apply(self, model: nn.Module, neurons: list[NeuronRef], clean: TensorData) -> nn.Module:
        p = self.params
        repaired = copy.deepcopy(model)
        optimizer = torch.optim.Adam(repaired.parameters(), lr=p.lr)
        # Normalization statistics stay frozen, as in neuron fine-tuning: a few hundred
        # samples would only make them worse.
        train_epochs(
            repaired,
            self.clean_subset(clean),
            optimizer,
            p.epochs,
            p.batch_size,
            p.seed,
            bn_train=False,
        )
        return repaired
