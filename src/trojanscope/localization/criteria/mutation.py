"""Mutation-based fault localization, neuron-level (in the spirit of MUSE / Metallaxis, and of
DeepMutation's neuron operators: Ma et al., ISSRE 2018).

Each neuron is mutated in turn (its activation zeroed, negated or scaled) and the decisions of a
few failing and passing inputs are compared with the unmutated ones. As in MUSE, a mutant that
fixes failing inputs points at the fault and one that breaks passing inputs points away from it;
a mutant that turns a passing input into one of the failing decisions' labels reproduces the
failure and counts for the neuron (amplifying a backdoor neuron does exactly that). Score = mean
over operators of (fix rate on failing + reproduce rate on passing - break rate on passing).

Batched and incremental: the mutants of one layer run together, each on its own copy of the
inputs, and only the part of the network downstream of the mutated layer is re-run (``suffix``),
so the cost is neurons x operators x 2 x samples sample-passes of each layer's suffix.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

from trojanscope.localization.base import (
    CRITERIA,
    Criterion,
    EvidenceData,
    LayerScores,
    standardize,
)
from trojanscope.localization.suffix import SuffixRunner
from trojanscope.neurons import EligibleLayer, eligible_layers

Operator = Literal["zero", "negate", "scale"]
OPERATORS: tuple[Operator, ...] = ("zero", "negate", "scale")


class MutationParams(BaseModel):
    model_config = {"extra": "forbid"}
    samples: int = Field(16, ge=1, description="Failing and passing inputs used (each).")
    operators: list[Operator] = Field(default_factory=lambda: list(OPERATORS), min_length=1)
    scale: float = Field(3.0, description="Factor of the 'scale' operator.")
    max_batch: int = Field(1024, ge=1, description="Samples per forward pass.")


_FACTOR = {"zero": 0.0, "negate": -1.0}


def _mutant_decisions(
    runner: SuffixRunner, layer: EligibleLayer, factor: float, max_batch: int
) -> tuple[torch.Tensor, float]:
    """(width, n) decisions on the runner's n inputs with each neuron multiplied by ``factor``
    at its output, and the cost in forward-pass equivalents (samples)."""
    n = runner.n
    per_pass = max(1, max_batch // n)
    decisions = torch.empty(layer.width, n, dtype=torch.long)
    for first in range(0, layer.width, per_pass):
        chunk = torch.arange(first, min(first + per_pass, layer.width))

        def mutate(out: torch.Tensor, chunk: torch.Tensor = chunk) -> torch.Tensor:
            grouped = out.view(len(chunk), n, *out.shape[1:])
            groups = torch.arange(len(chunk))
            grouped[groups, :, chunk] = grouped[groups, :, chunk] * factor
            return out

        logits = runner.rerun(layer.output, len(chunk), mutate)
        decisions[chunk] = logits.argmax(1).view(len(chunk), n)
    return decisions, layer.width * n * runner.fraction(layer.output)


@CRITERIA.register("mutation")
class NeuronMutation(Criterion[MutationParams]):
    evidence = "poisoned"
    expensive = True

    def layer_scores(self, model: nn.Module, data: EvidenceData) -> LayerScores:
        p = self.params
        passing, failing = data.outcomes(model, p.samples)
        runners = [SuffixRunner(model, x) for x in (failing, passing) if len(x)]
        self.add_cost(sum(r.n for r in runners))
        failure_labels = runners[0].logits.argmax(1).unique()
        scores: dict[str, torch.Tensor] = {}
        for layer in eligible_layers(model):
            total = torch.zeros(layer.width, dtype=torch.float64)
            for op in p.operators:
                factor = _FACTOR.get(op, p.scale)
                for role, runner in zip(("failing", "passing"), runners, strict=False):
                    decisions, cost = _mutant_decisions(runner, layer, factor, p.max_batch)
                    self.add_cost(cost)
                    changed = decisions != runner.logits.argmax(1)
                    if role == "failing":  # the mutant fixes a failure
                        total += changed.double().mean(1)
                    else:  # reproduces a failure (+) or breaks a clean decision (-)
                        to_failure = changed & torch.isin(decisions, failure_labels)
                        total += (to_failure.double() - (changed & ~to_failure).double()).mean(1)
            scores[layer.name] = standardize(total / len(p.operators))
        return LayerScores(scores, {"passing": len(passing), "failing": len(failing)})
