"""Oracle: activation shift under the true trigger, the upper-bound reference.

It uses what no defender has (the attacker's trigger), so it shows what the pipeline can find
when the evidence is perfect. Score = mean signed shift of each neuron's rectified activation
(what the next layer sees), a(triggered) - a(clean), in units of its standard deviation on clean
inputs, so that a neuron quiet on clean data that fires on the trigger stands out; standardised
per layer.
"""

from __future__ import annotations

from torch import nn

from trojanscope.localization.base import (
    CRITERIA,
    Criterion,
    EvidenceData,
    LayerScores,
    trigger_shift,
)


@CRITERIA.register("oracle")
class Oracle(Criterion):
    evidence = "poisoned"

    def layer_scores(self, model: nn.Module, data: EvidenceData) -> LayerScores:
        clean_victims, triggered = data.need_pairs()
        return LayerScores(trigger_shift(model, clean_victims.x, triggered.x), {})
