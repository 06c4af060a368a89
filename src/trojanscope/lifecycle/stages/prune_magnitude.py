"""Magnitude pruning, as a model is compressed for the edge: global unstructured pruning of the
smallest weights, or structured pruning of whole output channels by their L2 norm.

Pruning uses ``torch.nn.utils.prune`` (optionally followed by fine-tuning with the masks held)
and makes it permanent; a channel removed by structured
pruning has its own bias and normalization zeroed too (its output is exactly zero), and the
infected neurons among the removed channels drop out of the ground truth.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import nn
from torch.nn.utils import prune

from trojanscope.lifecycle.base import (
    STAGES,
    ChainState,
    Stage,
    StageResult,
    renormalised,
    training_sample,
)
from trojanscope.models.training import train_epochs
from trojanscope.neurons import NeuronRef, eligible_layers, layer_module, zero_neurons


class PruneParams(BaseModel):
    model_config = {"extra": "forbid"}
    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="Share of weights (or channels).")
    structure: Literal["unstructured", "channel"] = "unstructured"
    #: Fine-tuning on clean training images with the pruning masks held, as compression
    #: pipelines recover accuracy (0: none).
    recover_epochs: int = Field(0, ge=0, le=1000)
    samples: int = Field(2000, ge=10, description="Clean training images for the recovery.")
    lr: float = Field(0.001, gt=0, le=1)
    seed: int = 0


def _weighted(model: nn.Module) -> list[nn.Conv2d | nn.Linear]:
    """Every Conv2d and Linear layer, the classifier included (global magnitude pruning)."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _dead_neurons(model: nn.Module) -> set[NeuronRef]:
    """Eligible neurons whose incoming weights are all zero."""
    dead: set[NeuronRef] = set()
    for layer in eligible_layers(model):
        weight = layer_module(model, layer).weight.detach()
        zero = weight.flatten(1).abs().sum(1) == 0
        dead.update(NeuronRef(layer.name, int(i)) for i in torch.nonzero(zero).flatten())
    return dead


@STAGES.register("prune-magnitude")
class MagnitudePruning(Stage[PruneParams]):
    def apply(self, state: ChainState) -> StageResult:
        p = self.params
        model = copy.deepcopy(state.model)
        if p.structure == "unstructured":
            targets = [(m, "weight") for m in _weighted(model)]
            prune.global_unstructured(
                targets, pruning_method=prune.L1Unstructured, amount=p.sparsity
            )
        else:
            targets = [(layer_module(model, layer), "weight") for layer in eligible_layers(model)]
            for module, name in targets:
                prune.ln_structured(module, name, amount=p.sparsity, n=2, dim=0)
        # A channel whose weights are gone still outputs its bias and normalization shift:
        # removing the neuron means zeroing those too, before any recovery adapts to them.
        dead = _dead_neurons(model)
        zero_neurons(model, dead)
        if p.recover_epochs:
            optimizer = torch.optim.Adam(model.parameters(), lr=p.lr)
            train_epochs(
                model,
                training_sample(state.task.splits.train, p.samples, p.seed),
                optimizer,
                p.recover_epochs,
                64,
                p.seed,
                after_step=lambda: zero_neurons(model, dead),  # the masks hold the weights
            )
            model.eval()
        for module, name in targets:
            prune.remove(module, name)
        dead = _dead_neurons(model)
        zero_neurons(model, dead)
        weights = [m.weight for m in _weighted(model)]
        zeros = sum(int((w == 0).sum()) for w in weights)
        total = sum(w.numel() for w in weights)
        dropped = set(state.truth) & dead
        return StageResult(
            state.next(model=model, float_model=model, truth=renormalised(state.truth, dropped)),
            {
                "weight_sparsity": zeros / total,
                "removed_neurons": len(dead),
                "removed_infected": sorted(str(n) for n in dropped),
            },
        )
