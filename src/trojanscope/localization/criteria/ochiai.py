"""Ochiai (Abreu et al., 2007) over neuron activation coverage: ef / sqrt(F * (ef + ep))."""

from __future__ import annotations

import torch

from trojanscope.localization.base import CRITERIA
from trojanscope.localization.spectrum import Spectrum, SpectrumCriterion


@CRITERIA.register("ochiai")
class Ochiai(SpectrumCriterion):
    def formula(self, s: Spectrum) -> torch.Tensor:
        return s.ef / torch.sqrt(s.total_failed * (s.ef + s.ep))
