"""Dynamic slicing, neuron-level (in the spirit of NNSlicer, Zhang et al., FSE 2020).

Each neuron's contribution to one decision is activation x gradient of the decided logit with
respect to that activation, summed over positions (a first-order slice of the decision through
the neuron). Score = mean contribution on failing (triggered, backdoor fired) inputs minus mean
on passing (clean, correct) inputs, standardised per layer: neurons the failing decisions rely
on but the passing ones do not.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field
from torch import nn

from trojanscope.device import model_device
from trojanscope.localization.base import (
    CRITERIA,
    Criterion,
    EvidenceData,
    LayerScores,
    standardize,
)
from trojanscope.neurons import eligible_layers, recording


class SlicingParams(BaseModel):
    model_config = {"extra": "forbid"}
    samples: int = Field(500, ge=1, description="Passing and failing inputs used (each).")
    batch_size: int = Field(128, ge=1)


def decision_contributions(
    model: nn.Module, x: torch.Tensor, batch_size: int
) -> dict[str, torch.Tensor]:
    """Per-layer (width,) mean activation x d(decided logit)/d(activation) over ``x`` (summed
    in float64 on the CPU)."""
    layers = eligible_layers(model)
    device = model_device(model)
    totals = {layer.name: torch.zeros(layer.width, dtype=torch.float64) for layer in layers}
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size].to(device)
        with recording(model, layers, reduce=False, detach=False) as store:
            logits = model(batch)
        decided = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        acts = [store[layer.name][0] for layer in layers]
        grads = torch.autograd.grad(decided, acts)
        for layer, a, g in zip(layers, acts, grads, strict=True):
            contribution = (a * g).detach()
            if contribution.dim() > 2:
                contribution = contribution.flatten(2).sum(2)
            totals[layer.name] += contribution.cpu().double().sum(0)
    return {name: t / max(len(x), 1) for name, t in totals.items()}


@CRITERIA.register("slicing")
class DynamicSlicing(Criterion[SlicingParams]):
    evidence = "poisoned"

    def layer_scores(self, model: nn.Module, data: EvidenceData) -> LayerScores:
        passing, failing = data.outcomes(model, self.params.samples)
        on_fail = decision_contributions(model, failing, self.params.batch_size)
        on_pass = decision_contributions(model, passing, self.params.batch_size)
        scores = {name: standardize(on_fail[name] - on_pass[name]) for name in on_fail}
        return LayerScores(scores, {"passing": len(passing), "failing": len(failing)})
