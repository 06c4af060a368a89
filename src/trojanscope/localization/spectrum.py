"""Spectrum-based fault localization over neuron activation coverage (shared by Tarantula,
Ochiai and DStar).

A neuron *covers* an input when its rectified activation exceeds a threshold: by default its own
mean plus ``spread`` standard deviations over the passing inputs (``coverage="neuron"``: it is
unusually active), or its layer's mean over the passing inputs (``coverage="layer"``), or a fixed
``threshold``. Counting coverage over passing (clean, correctly classified) and failing
(triggered, decision changed) inputs gives the spectrum (ef, ep, nf, np) of each neuron; each
criterion is a formula over it (Wong et al., "A Survey on Software Fault Localization", 2016).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, Field
from torch import nn
from typing_extensions import TypeVar

from trojanscope.localization.base import Criterion, EvidenceData, LayerScores
from trojanscope.neurons import capture_activations


class SpectrumParams(BaseModel):
    model_config = {"extra": "forbid"}
    samples: int = Field(1000, ge=1, description="Passing and failing inputs used (each).")
    coverage: Literal["neuron", "layer"] = Field(
        "neuron", description="Threshold per neuron (mean + spread * std) or per layer (mean)."
    )
    spread: float = Field(1.0, description="Standard deviations above the mean (neuron mode).")
    threshold: float | None = Field(None, description="A fixed activation threshold instead.")


class Spectrum:
    """Per-neuron coverage counts of one layer, as float tensors of shape (width,)."""

    def __init__(
        self, passing: torch.Tensor, failing: torch.Tensor, threshold: torch.Tensor | float
    ) -> None:
        self.ep = (passing > threshold).double().sum(0)
        self.ef = (failing > threshold).double().sum(0)
        self.np = len(passing) - self.ep
        self.nf = len(failing) - self.ef
        self.total_failed = float(len(failing))
        self.total_passed = float(len(passing))


#: The parameter model of a spectrum criterion.
SP_co = TypeVar("SP_co", bound=SpectrumParams, covariant=True, default=SpectrumParams)


class SpectrumCriterion(Criterion[SP_co]):
    """Implement ``formula``; coverage, thresholds and evidence are shared."""

    evidence = "poisoned"
    formula_name: ClassVar[str] = ""

    def formula(self, s: Spectrum) -> torch.Tensor:
        raise NotImplementedError

    def threshold(self, on_pass: torch.Tensor) -> torch.Tensor | float:
        p = self.params
        if p.threshold is not None:
            return p.threshold
        if len(on_pass) == 0:
            return 0.0
        if p.coverage == "layer":
            return float(on_pass.mean())
        std = on_pass.std(0, unbiased=False) if len(on_pass) > 1 else torch.zeros(1)
        return on_pass.mean(0) + p.spread * std

    def layer_scores(self, model: nn.Module, data: EvidenceData) -> LayerScores:
        passing, failing = data.outcomes(model, self.params.samples)
        on_pass = capture_activations(model, passing, rectify=True)
        on_fail = capture_activations(model, failing, rectify=True)
        scores: dict[str, torch.Tensor] = {}
        for name, a in on_pass.items():
            threshold = self.threshold(a)
            score = self.formula(Spectrum(a, on_fail[name], threshold))
            scores[name] = torch.nan_to_num(score, nan=0.0, posinf=1e6)
        return LayerScores(scores, {"passing": len(passing), "failing": len(failing)})
