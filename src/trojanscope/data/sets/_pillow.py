"""Decode one image file with Pillow (by content, not extension) into a fixed-size uint8 array.

Pillow is imported on first use, so the registry scan works without it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from trojanscope.errors import TrojanscopeError


def read_image(
    path: Path,
    mode: Literal["L", "RGB"],
    size: int,
    box: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """uint8 (C, size, size): ``path`` cropped to ``box`` (left, top, right, bottom; right and
    bottom exclusive), converted to ``mode`` and resized bilinearly."""
    try:
        from PIL import Image
    except ImportError:
        raise TrojanscopeError("reading image files needs Pillow; pip install pillow.") from None
    try:
        with Image.open(path) as img:
            img.load()
            image = img.convert(mode)
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError ...)
        raise TrojanscopeError(
            f"cannot read image {path}: Pillow cannot decode it ({type(exc).__name__})."
        ) from None
    if box is not None:
        w, h = image.size
        left, top, right, bottom = max(box[0], 0), max(box[1], 0), min(box[2], w), min(box[3], h)
        if right <= left or bottom <= top:
            raise TrojanscopeError(f"the region {box} lies outside the {w}x{h} image {path}.")
        image = image.crop((left, top, right, bottom))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
