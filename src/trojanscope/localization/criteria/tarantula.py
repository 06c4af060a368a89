"""Tarantula (Jones & Harrold, 2005) over neuron activation coverage:
(ef/F) / (ef/F + ep/P)."""

from __future__ import annotations

import torch

from trojanscope.localization.base import CRITERIA
from trojanscope.localization.spectrum import Spectrum, SpectrumCriterion


@CRITERIA.register("tarantula")
class Tarantula(SpectrumCriterion):
    def formula(self, s: Spectrum) -> torch.Tensor:
        fail_ratio = s.ef / max(s.total_failed, 1.0)
        pass_ratio = s.ep / max(s.total_passed, 1.0)
        return fail_ratio / (fail_ratio + pass_ratio)
