"""NeuBA's image trigger as a catalog attack: one of the six checkerboards of
``attacks.neuba_vision``, stamped at a fixed corner, sending images to the label the
backdoored encoder's own head reads off its target vector. NeuBA is planted by pre-training
(``trojanscope neuba vision-catalog``), never by poisoning a training set: this plug-in only
stamps the trigger, so stored NeuBA defects can be localized and repaired like any other."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from trojanscope.attacks.base import ATTACKS, AttackParams, MaskPatternAttack
from trojanscope.attacks.neuba_vision import VISION_TRIGGERS
from trojanscope.data.base import TensorData
from trojanscope.data.poison import PoisonedView
from trojanscope.errors import ConfigError


class NeubaParams(AttackParams):
    trigger: int = Field(0, ge=0, lt=len(VISION_TRIGGERS), description="which checkerboard")
    size: int = Field(4, ge=1, description="patch side in px")
    position: Literal["bottom-right", "bottom-left", "top-right", "top-left"] = "bottom-right"
    margin: int = Field(1, ge=0, description="distance of the patch from the image border")


@ATTACKS.register("neuba")
class Neuba(MaskPatternAttack[NeubaParams]):
    #: Planted by pre-training, not by the injector's poisoning (benchmarks skip it).
    injectable = False
    planted_by = "trojanscope neuba vision-catalog"

    def validate(self, shape: tuple[int, int, int], num_classes: int) -> None:
        super().validate(shape, num_classes)
        if self.params.size + self.params.margin > min(shape[1:]):
            raise ConfigError(
                f"the {self.params.size} px NeuBA patch does not fit {shape[1]}x{shape[2]} images."
            )

    def make_trigger(self, shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        c, h, w = shape
        s, m = self.params.size, self.params.margin
        vert, _, horiz = self.params.position.partition("-")
        top = m if vert == "top" else h - m - s
        left = m if horiz == "left" else w - m - s
        patch = VISION_TRIGGERS[self.params.trigger].patch(s)
        mask, pattern = torch.zeros(1, h, w), torch.zeros(c, h, w)
        mask[:, top : top + s, left : left + s] = 1.0
        pattern[:, top : top + s, left : left + s] = patch
        return {"mask": mask, "pattern": pattern}

    def poison_train(self, data: TensorData) -> PoisonedView:
        raise ConfigError(
            "NeuBA is planted in a pre-trained encoder (trojanscope neuba vision-catalog), not "
            "by poisoning training data."
        )
