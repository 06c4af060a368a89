"""DStar (Wong et al., 2014) over neuron activation coverage: ef^star / (ep + nf)."""

from __future__ import annotations

import torch
from pydantic import Field

from trojanscope.localization.base import CRITERIA
from trojanscope.localization.spectrum import Spectrum, SpectrumCriterion, SpectrumParams


class DStarParams(SpectrumParams):
    star: float = Field(2.0, gt=0, description="Exponent of ef (the paper's '*').")


@CRITERIA.register("dstar")
class DStar(SpectrumCriterion[DStarParams]):
    def formula(self, s: Spectrum) -> torch.Tensor:
        # A neuron covering every failure and no pass has ep + nf = 0 (infinitely suspicious);
        # the usual +1 in the denominator keeps it finite and first.
        return s.ef**self.params.star / (s.ep + s.nf + 1.0)
