"""Whole-model fine-tuning on the clean set with the neuron fine-tuning budget: the baseline
every localized repair must beat (it needs no localization at all).

A run whose accuracy on the defender's own clean samples falls by more than ``max_acc_drop``
has diverged (Adam at 0.005 sends ``vgg16`` to chance accuracy in its first epoch); it is
restarted from the original model at half the rate, as a defender watching that accuracy
would do. It is a divergence guard, not model selection: it reads the samples it trains on,
so it never sees the test set and cannot tell a mild overfit from a good repair.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from pydantic import Field
from torch import nn

from trojanscope.data.base import TensorData
from trojanscope.models.training import accuracy, train_epochs
from trojanscope.neurons import NeuronRef
from trojanscope.repair.base import REPAIRS, FineTuneBudget, Repair


class FineTuneAllParams(FineTuneBudget):
    max_acc_drop: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Largest fall of accuracy on the defender's clean samples a run may cause; "
        "a run that falls further restarts from the original model at half the rate.",
    )
    halvings: int = Field(4, ge=0, le=30, description="Restarts at a halved rate, at most.")


@REPAIRS.register("finetune-all")
class FineTuneAll(Repair[FineTuneAllParams]):
    uses_neurons = False

    def apply_with_details(
        self, model: nn.Module, neurons: list[NeuronRef], clean: TensorData
    ) -> tuple[nn.Module, dict[str, Any]]:
        p = self.params
        samples = self.clean_subset(clean)
        before = accuracy(model, samples)
        lr = p.lr
        for restarts in range(p.halvings + 1):
            repaired = self._train(model, samples, lr)
            drop = before - accuracy(repaired, samples)
            if drop <= p.max_acc_drop or restarts == p.halvings:
                break
            lr /= 2
        details = {"lr": lr, "restarts": restarts, "diverged": drop > p.max_acc_drop}
        return repaired, details

    def _train(self, model: nn.Module, samples: TensorData, lr: float) -> nn.Module:
        p = self.params
        repaired = copy.deepcopy(model)
        optimizer = torch.optim.Adam(repaired.parameters(), lr=lr)
        # Normalization statistics stay frozen, as in neuron fine-tuning: a few hundred
        # samples would only make them worse.
        train_epochs(repaired, samples, optimizer, p.epochs, p.batch_size, p.seed, bn_train=False)
        return repaired
