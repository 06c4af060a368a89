"""torch's int8 weight grid, written out: the codes post-training quantization gives a weight
and the float weights those codes stand for. Written by hand because torch exposes the grid
only through observers and quantized modules, not for a float copy of the network.

Symmetric int8 as torch's MinMax observers compute it: scale = max|w| / 127.5 (per output
channel, or over the whole tensor), code = clamp(round(w / scale), -128, 127). Fusing a
normalization into a layer multiplies each output channel by a constant, which a per-channel
scale absorbs: the codes of the fused and the unfused weights are the same.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def int8_grid(weight: torch.Tensor, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scale) of ``weight`` on torch's symmetric int8 grid; ``scale`` broadcasts."""
    w = weight.detach()
    if per_channel:
        amax = w.flatten(1).abs().amax(1).view((-1,) + (1,) * (w.dim() - 1))
    else:
        amax = w.abs().amax()
    scale = amax.clamp_min(1e-12) / 127.5
    return torch.clamp(torch.round(w / scale), -128, 127), scale


def int8_rounded(
    model: nn.Module,
    layers: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
    per_channel: bool = True,
) -> nn.Module:
    """A float copy of ``model`` whose ``layers``' weights are their int8 codes times the scale:
    what the quantized kernels multiply with (up to the fused normalization's constant)."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for module in rounded.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, layers) and isinstance(weight, torch.Tensor):
                codes, scale = int8_grid(weight, per_channel)
                weight.copy_(codes * scale)
    return rounded
