"""Random baseline: uniformly random scores (seeded), the chance level every criterion must beat."""

from __future__ import annotations

import torch
from pydantic import BaseModel
from torch import nn

from trojanscope.localization.base import CRITERIA, Criterion, EvidenceData, LayerScores
from trojanscope.neurons import eligible_layers


class RandomParams(BaseModel):
    model_config = {"extra": "forbid"}
    seed: int = 0


@CRITERIA.register("random")
class RandomBaseline(Criterion[RandomParams]):
    evidence = "none"

    def layer_scores(self, model: nn.Module, data: EvidenceData) -> LayerScores:
        g = torch.Generator().manual_seed(self.params.seed)
        scores = {
            layer.name: torch.rand(layer.width, generator=g, dtype=torch.float64)
            for layer in eligible_layers(model)
        }
        return LayerScores(scores, {})
