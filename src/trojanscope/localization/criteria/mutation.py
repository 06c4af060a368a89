"""Mutation-based fault localization, neuron-level (in the spirit of MUSE / Metallaxis, and of
DeepMutation's neuron operators: Ma et al., ISSRE 2018).

Each neuron is mutated in turn (its activation zeroed, negated or scaled) and the decisions of a
few failing and passing inputs are compared with the unmutated ones. Score = mean over operators
of (flip rate on failing inputs - flip rate on passing inputs): a neuron whose mutation undoes
the backdoor's decisions but leaves clean decisions alone is suspicious.

Batched: ``neurons_per_pass`` mutants of one layer run in one forward pass, each on its own copy
of the inputs, so the cost is (neurons x operators x 2 x samples) samples in
(neurons x operators / neurons_per_pass) passes.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

from trojanscope.localization.base import CRITERIA, Criterion, EvidenceData, standardize
from trojanscope.neurons import EligibleLayer, eligible_layers

Operator = Literal["zero", "negate", "scale"]


class MutationParams(BaseModel):
    model_config = {"extra": "forbid"}
    samples: int = Field(32, ge=1, description="Failing and passing inputs used (each).")
    operators: list[Operator] = Field(
        default_factory=lambda: ["zero", "negate", "scale"], min_length=1
    )
    scale: float = Field(3.0, description="Factor of the 'scale' operator.")
    max_batch: int = Field(1024, ge=1, description="Samples per forward pass.")


_FACTOR = {"zero": 0.0, "negate": -1.0}


@torch.no_grad()
def _flip_rates(
    model: nn.Module, layer: EligibleLayer, x: torch.Tensor, factor: float, max_batch: int
) -> torch.Tensor:
    """(width,) fraction of ``x`` whose decision changes when each neuron is multiplied by
    ``factor`` at its output."""
    base = model(x).argmax(1)
    n = len(x)
    per_pass = max(1, max_batch // n)
    module = dict(model.named_modules())[layer.output]
    rates = torch.zeros(layer.width, dtype=torch.float64)
    for first in range(0, layer.width, per_pass):
        chunk = torch.arange(first, min(first + per_pass, layer.width))

        def hook(_m: nn.Module, _i: object, out: torch.Tensor, chunk=chunk) -> torch.Tensor:
            out = out.clone()
            grouped = out.view(len(chunk), n, *out.shape[1:])
            groups = torch.arange(len(chunk))
            grouped[groups, :, chunk] = grouped[groups, :, chunk] * factor
            return out

        handle = module.register_forward_hook(hook)
        try:
            decisions = model(x.repeat(len(chunk), *([1] * (x.dim() - 1)))).argmax(1)
        finally:
            handle.remove()
        flips = (decisions.view(len(chunk), n) != base).double().mean(1)
        rates[chunk] = flips
    return rates


@CRITERIA.register("mutation")
class NeuronMutation(Criterion):
    evidence = "poisoned"
    expensive = True
    Params = MutationParams

    def layer_scores(self, model: nn.Module, data: EvidenceData):
        p = self.params
        passing, failing = data.outcomes(model, p.samples)
        scores = {}
        for layer in eligible_layers(model):
            total = torch.zeros(layer.width, dtype=torch.float64)
            for op in p.operators:
                factor = _FACTOR.get(op, p.scale)
                on_fail = _flip_rates(model, layer, failing, factor, p.max_batch)
                on_pass = (
                    _flip_rates(model, layer, passing, factor, p.max_batch)
                    if len(passing)
                    else torch.zeros_like(on_fail)
                )
                total += on_fail - on_pass
            scores[layer.name] = standardize(total / len(p.operators))
        return scores, {"passing": len(passing), "failing": len(failing)}
