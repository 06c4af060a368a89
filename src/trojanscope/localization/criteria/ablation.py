"""Ablation: each neuron's causal effect on the backdoor, the reference criterion.

Every eligible neuron is masked alone (its activation zeroed where masking acts) and the mean
drop of the target-class logit margin on triggered inputs is its score: the same measure the
ground truth's ``contribution`` uses for the infected neurons, applied to every neuron of the
network. Like the oracle it uses what no defender has (the trigger and the target); unlike the
oracle's activation shift it measures what a neuron does for the decision, not how much it
moves. Scores are raw margin drops (one unit across layers), not standardised per layer.

Only the part of the network downstream of the masked layer is re-run (``suffix``), the masks
of one layer batched together.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field
from torch import nn

from trojanscope.localization.base import CRITERIA, Criterion, EvidenceData, LayerScores
from trojanscope.models.suffix import SuffixRunner
from trojanscope.models.training import target_margin
from trojanscope.neurons import EligibleLayer, eligible_layers


class AblationParams(BaseModel):
    model_config = {"extra": "forbid"}
    samples: int = Field(128, ge=1, description="Triggered inputs the margins are averaged over.")
    max_batch: int = Field(2048, ge=1, description="Samples per forward pass.")


def _margin_drops(
    runner: SuffixRunner,
    layer: EligibleLayer,
    targets: torch.Tensor,
    base: torch.Tensor,
    max_batch: int,
) -> torch.Tensor:
    """(width,) mean drop of the target margin when each neuron of ``layer`` is zeroed (on the
    CPU; ``targets`` on the runner's device, ``base`` on the CPU)."""
    n = runner.n
    per_pass = max(1, max_batch // n)
    drops = torch.empty(layer.width, dtype=torch.float64)
    for first in range(0, layer.width, per_pass):
        chunk = torch.arange(first, min(first + per_pass, layer.width))

        def ablate(out: torch.Tensor, chunk: torch.Tensor = chunk) -> torch.Tensor:
            grouped = out.view(len(chunk), n, *out.shape[1:])
            where = chunk.to(out.device)
            grouped[torch.arange(len(chunk), device=out.device), :, where] = 0.0
            return out

        logits = runner.rerun(layer.output, len(chunk), ablate)
        margins = target_margin(logits, targets.repeat(len(chunk))).view(len(chunk), n)
        drops[chunk] = (base - margins.cpu().double()).mean(1)
    return drops


@CRITERIA.register("ablation")
class Ablation(Criterion[AblationParams]):
    evidence = "poisoned"

    def layer_scores(self, model: nn.Module, data: EvidenceData) -> LayerScores:
        _, triggered = data.need_pairs()
        x, targets = triggered.x[: self.params.samples], triggered.y[: self.params.samples]
        runner = SuffixRunner(model, x)
        self.add_cost(runner.n)
        targets = targets.to(runner.logits.device)
        base = target_margin(runner.logits, targets).cpu().double()
        scores: dict[str, torch.Tensor] = {}
        for layer in eligible_layers(model):
            scores[layer.name] = _margin_drops(runner, layer, targets, base, self.params.max_batch)
            self.add_cost(layer.width * runner.n * runner.fraction(layer.output))
        return LayerScores(scores, {"samples": runner.n})
