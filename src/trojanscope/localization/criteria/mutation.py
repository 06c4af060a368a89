"""Mutation-based fault localization, neuron-level (in the spirit of MUSE / Metallaxis, and of
DeepMutation's neuron operators: Ma et al., ISSRE 2018).

Each neuron is mutated in turn (its activation zeroed, negated or scaled) and the decisions of a
few failing and passing inputs are compared with the unmutated ones. As in MUSE, a mutant that
fixes failing inputs points at the fault and one that breaks passing inputs points away from it;
a mutant that turns a passing input into one of the failing decisions' labels reproduces the
failure and counts for the neuron (amplifying a backdoor neuron does exactly that). Score = sum
over the failing inputs' operators of the fix rate, plus sum over the passing inputs' operators
of (reproduce rate - break rate).

Each operator runs on the inputs whose question it answers: removing the neuron (zero) on failing
inputs (does the failure go away?) and on passing ones (does a correct decision break?),
amplifying it (scale) on passing inputs (does the failure appear?). Amplifying a neuron on inputs
that already fail, or negating it, adds little but cost. Against all three operators on both
sets (the former default), at half the mutants: on the study's 12 BadNets defects (mnist5k,
cnn-small, narrow/small/middle, seeds 0-3) mean AUROC 0.799 against 0.777 (higher on all 12),
WJI 0.307 against 0.261; on 17 held-out defects (BadNets seeds 4-7, blended seeds 0-3) 0.757
against 0.730 (higher on 16), WJI 0.232 against 0.169. Cost at the defaults on the benchmark's
ResNet-18 (``benchmarks/localization.py --costs-only``): 71.0 forward-pass equivalents against
143.7, on the study's defects 3.2 against 8.0.

Batched and incremental: the mutants of one layer run together, each on its own copy of the
inputs, and only the part of the network downstream of the mutated layer is re-run (``suffix``),
so the cost is neurons x samples x (failing + passing operators) sample-passes of each layer's
suffix, plus predictions until ``samples`` passing and failing inputs are found.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, Field, model_validator
from torch import nn

from trojanscope.localization.base import (
    CRITERIA,
    Criterion,
    EvidenceData,
    LayerScores,
    standardize,
)
from trojanscope.models.suffix import SuffixRunner
from trojanscope.neurons import EligibleLayer, eligible_layers

Operator = Literal["zero", "negate", "scale"]
OPERATORS: tuple[Operator, ...] = ("zero", "negate", "scale")
#: The default mutants: removing a neuron where the failure shows, removing and amplifying it
#: where the decision is correct.
FAILING_OPERATORS: tuple[Operator, ...] = ("zero",)
PASSING_OPERATORS: tuple[Operator, ...] = ("zero", "scale")


class MutationParams(BaseModel):
    model_config = {"extra": "forbid"}
    samples: int = Field(16, ge=1, description="Failing and passing inputs used (each).")
    failing_operators: list[Operator] = Field(
        default_factory=lambda: list(FAILING_OPERATORS),
        description="Mutants run on the failing inputs (a fix counts for the neuron).",
    )
    passing_operators: list[Operator] = Field(
        default_factory=lambda: list(PASSING_OPERATORS),
        description="Mutants run on the passing inputs (a reproduced failure counts for the "
        "neuron, a broken decision against it).",
    )
    scale: float = Field(3.0, description="Factor of the 'scale' operator.")
    max_batch: int = Field(1024, ge=1, description="Samples per forward pass.")

    @model_validator(mode="after")
    def _some_operator(self) -> MutationParams:
        if not (self.failing_operators or self.passing_operators):
            raise ValueError("at least one operator is needed (failing or passing).")
        return self


_FACTOR = {"zero": 0.0, "negate": -1.0}


def _mutant_decisions(
    runner: SuffixRunner, layer: EligibleLayer, factor: float, max_batch: int
) -> tuple[torch.Tensor, float]:
    """(width, n) decisions on the runner's n inputs with each neuron multiplied by ``factor``
    at its output (on the CPU), and the cost in forward-pass equivalents (samples)."""
    n = runner.n
    per_pass = max(1, max_batch // n)
    decisions = torch.empty(layer.width, n, dtype=torch.long)
    for first in range(0, layer.width, per_pass):
        chunk = torch.arange(first, min(first + per_pass, layer.width))

        def mutate(out: torch.Tensor, chunk: torch.Tensor = chunk) -> torch.Tensor:
            grouped = out.view(len(chunk), n, *out.shape[1:])
            groups, where = torch.arange(len(chunk), device=out.device), chunk.to(out.device)
            grouped[groups, :, where] = grouped[groups, :, where] * factor
            return out

        logits = runner.rerun(layer.output, len(chunk), mutate)
        decisions[chunk] = logits.argmax(1).view(len(chunk), n).cpu()
    return decisions, layer.width * n * runner.fraction(layer.output)


@CRITERIA.register("mutation")
class NeuronMutation(Criterion[MutationParams]):
    evidence = "poisoned"
    expensive = True

    def layer_scores(self, model: nn.Module, data: EvidenceData) -> LayerScores:
        p = self.params
        passing, failing = data.outcomes(model, p.samples)
        runners = {"failing": SuffixRunner(model, failing)}
        if len(passing):
            runners["passing"] = SuffixRunner(model, passing)
        self.add_cost(sum(r.n for r in runners.values()))
        decided = {role: runner.logits.argmax(1).cpu() for role, runner in runners.items()}
        failure_labels = decided["failing"].unique()
        operators = {"failing": p.failing_operators, "passing": p.passing_operators}
        scores: dict[str, torch.Tensor] = {}
        for layer in eligible_layers(model):
            total = torch.zeros(layer.width, dtype=torch.float64)
            for role, runner in runners.items():
                for op in operators[role]:
                    factor = _FACTOR.get(op, p.scale)
                    decisions, cost = _mutant_decisions(runner, layer, factor, p.max_batch)
                    self.add_cost(cost)
                    changed = decisions != decided[role]
                    if role == "failing":  # the mutant fixes a failure
                        total += changed.double().mean(1)
                    else:  # reproduces a failure (+) or breaks a clean decision (-)
                        to_failure = changed & torch.isin(decisions, failure_labels)
                        total += (to_failure.double() - (changed & ~to_failure).double()).mean(1)
            scores[layer.name] = standardize(total)
        return LayerScores(scores, {"passing": len(passing), "failing": len(failing)})
