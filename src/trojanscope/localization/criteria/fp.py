"""FP, Fine-Pruning (Liu et al., RAID 2018): neurons dormant on clean data carry the backdoor.

Score = minus the mean rectified activation on clean inputs, standardised per layer; one pass
over the clean set.
"""

from __future__ import annotations

from torch import nn

from trojanscope.localization.base import (
    CRITERIA,
    Criterion,
    EvidenceData,
    LayerScores,
    standardize,
)
from trojanscope.neurons import capture_activations


@CRITERIA.register("fp")
class FinePruning(Criterion):
    evidence = "clean"

    def layer_scores(self, model: nn.Module, data: EvidenceData) -> LayerScores:
        acts = capture_activations(model, data.need_clean().x, rectify=True)
        return LayerScores({name: standardize(-a.mean(0)) for name, a in acts.items()}, {})
