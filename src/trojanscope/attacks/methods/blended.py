"""Blended (Chen et al. 2017): a pattern blended over the whole image flips it to the target.

x' = (1 - alpha) * x + alpha * pattern. The pattern is uniform noise drawn from the seed
(the default) or an image file, resized to the data's size and converted to its channels. The
trigger is stored as a ``mask`` (alpha everywhere) and the ``pattern``, so a stored defect
replays without the image file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from trojanscope.attacks.base import ATTACKS, AttackParams, MaskPatternAttack
from trojanscope.errors import ConfigError


class BlendedParams(AttackParams):
    alpha: float = Field(0.2, gt=0.0, le=1.0, description="blend weight of the pattern")
    pattern: str = Field(
        "noise",
        min_length=1,
        description='"noise" (uniform noise drawn from the seed) or the path of an image file',
    )


def load_pattern_image(path: str, shape: tuple[int, int, int]) -> torch.Tensor:
    """The image file at ``path`` as a (C, H, W) tensor in [0, 1] of the data's ``shape``."""
    c, h, w = shape
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"the Blended pattern image '{path}' does not exist.")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib (via mlxtend)
        raise ConfigError("reading a Blended pattern image needs Pillow; install it.") from None
    try:
        with Image.open(file) as opened:
            img = opened.convert("RGB" if c == 3 else "L").resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError):
        raise ConfigError(
            f"the Blended pattern image '{path}' cannot be read as an image."
        ) from None
    t = torch.from_numpy(arr.copy())
    t = t.permute(2, 0, 1) if t.ndim == 3 else t[None].expand(c, h, w)
    return t.contiguous().clamp(0.0, 1.0)


@ATTACKS.register("blended")
class Blended(MaskPatternAttack[BlendedParams]):
    Params = BlendedParams

    def __init__(self, seed: int = 0, **params: object) -> None:
        super().__init__(seed, **params)
        self._cache: dict[tuple[int, int, int], dict[str, torch.Tensor]] = {}

    def validate(self, shape: tuple[int, int, int], num_classes: int) -> None:
        super().validate(shape, num_classes)
        if self._stored is None:
            self.make_trigger(shape)  # a missing or unreadable pattern file fails here

    def make_trigger(self, shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        if shape not in self._cache:
            c, h, w = shape
            if self.params.pattern == "noise":
                g = torch.Generator().manual_seed(self.seed)
                pattern = torch.rand(c, h, w, generator=g)
            else:
                pattern = load_pattern_image(self.params.pattern, shape)
            mask = torch.full((1, h, w), float(self.params.alpha))
            self._cache[shape] = {"mask": mask, "pattern": pattern}
        return {k: v.clone() for k, v in self._cache[shape].items()}
