"""CLP (Zheng et al., ECCV 2022): data-free Channel Lipschitz upper bound.

For each channel, the spectral norm of its kernel scaled by its batch-norm factor bounds how far
the channel can amplify an input change; backdoor channels stand out with large bounds. Scores
are standardised per layer, as CLP thresholds at mean + u * std within a layer.

The bounds are computed from the weights copied to the CPU, whatever the model's device: the
criterion reads no data, only a few kernels, and Apple's mps has lacked (or approximated) the
SVD behind the spectral norm in some torch versions; so CLP scores alike on every device.
"""

from __future__ import annotations

import torch
from torch import nn

from trojanscope.errors import TrojanscopeError
from trojanscope.localization.base import (
    CRITERIA,
    Criterion,
    EvidenceData,
    LayerScores,
    standardize,
)
from trojanscope.neurons import eligible_layers, layer_module


def channel_lipschitz(module: nn.Conv2d | nn.Linear, norm: nn.Module | None) -> torch.Tensor:
    """Upper bound of each output channel's Lipschitz constant, (width,), on the CPU."""
    w = module.weight.detach().cpu()
    kernels = w.reshape(w.shape[0], w.shape[1], -1)  # (out, in, kh*kw) or (out, in, 1)
    bound = torch.linalg.matrix_norm(kernels, ord=2)
    if isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d)) and norm.affine:
        if norm.running_var is None:
            raise TrojanscopeError(
                "CLP needs the running variance of each batch norm; this one keeps none "
                "(track_running_stats=False)."
            )
        scale = norm.weight.detach().cpu() / torch.sqrt(norm.running_var.cpu() + norm.eps)
        bound = bound * scale.abs()
    return bound


@CRITERIA.register("clp")
class ChannelLipschitz(Criterion):
    evidence = "none"

    def layer_scores(self, model: nn.Module, data: EvidenceData) -> LayerScores:
        modules = dict(model.named_modules())
        scores = {
            layer.name: standardize(
                channel_lipschitz(layer_module(model, layer), modules.get(layer.norm or ""))
            )
            for layer in eligible_layers(model)
        }
        return LayerScores(scores, {})
