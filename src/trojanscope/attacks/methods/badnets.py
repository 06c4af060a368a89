"""BadNets (Gu et al. 2017): a small fixed patch stamped on the image flips it to the target."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from typing_extensions import TypeVar

from trojanscope.attacks.base import ATTACKS, AttackParams, MaskPatternAttack
from trojanscope.errors import ConfigError


class BadNetsParams(AttackParams):
    size: int | None = Field(None, ge=1, description="patch side in px (default: image/9, >= 2)")
    position: Literal["bottom-right", "bottom-left", "top-right", "top-left", "center"] = (
        "bottom-right"
    )
    margin: int = Field(1, ge=0, description="distance of the patch from the image border")
    pattern: Literal["checkerboard", "white", "random"] = "checkerboard"


#: BadNets' parameter model, or a patch attack's that extends it (TrojanNN).
BP_co = TypeVar("BP_co", bound=BadNetsParams, covariant=True, default=BadNetsParams)


@ATTACKS.register("badnets")
class BadNets(MaskPatternAttack[BP_co]):
    def patch_size(self, h: int, w: int) -> int:
        return self.params.size if self.params.size is not None else max(2, min(h, w) // 9)

    def validate(self, shape: tuple[int, int, int], num_classes: int) -> None:
        super().validate(shape, num_classes)
        self._check_fit(shape)

    def _check_fit(self, shape: tuple[int, int, int]) -> None:
        _, h, w = shape
        s = self.patch_size(h, w)
        if s + self.params.margin > min(h, w):
            raise ConfigError(
                f"the {s} px trigger patch (margin {self.params.margin}) does not fit "
                f"the {h}x{w} image."
            )

    def make_trigger(self, shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        c, h, w = shape
        self._check_fit(shape)
        s, m = self.patch_size(h, w), self.params.margin
        top = {"top": m, "bottom": h - m - s, "center": (h - s) // 2}
        left = {"left": m, "right": w - m - s, "center": (w - s) // 2}
        vert, _, horiz = self.params.position.partition("-")
        y0, x0 = top[vert], left[horiz or "center"]
        if self.params.pattern == "checkerboard":
            ii, jj = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
            patch = ((ii + jj) % 2 == 0).float().expand(c, s, s)
        elif self.params.pattern == "white":
            patch = torch.ones(c, s, s)
        else:
            g = torch.Generator().manual_seed(self.seed)
            patch = (torch.rand(c, s, s, generator=g) > 0.5).float()
        mask, pattern = torch.zeros(1, h, w), torch.zeros(c, h, w)
        mask[:, y0 : y0 + s, x0 : x0 + s] = 1.0
        pattern[:, y0 : y0 + s, x0 : x0 + s] = patch
        return {"mask": mask, "pattern": pattern}
