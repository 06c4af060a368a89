"""Post-training int8 quantization (torch.ao), evaluated with the quantized kernels.

``static``: FX graph mode, observers calibrated on clean training images, convolutions and
linear layers (with their fused normalization and activation) run in int8. ``dynamic``: linear
layers only, activations quantized on the fly. The quantized kernels run on the CPU, so the
stage's model is there whatever device the chain started on. The localization criteria need
gradients, which int8 kernels do not have: they read a float copy whose convolution and linear
weights are the int8 weights dequantized (per output channel, symmetric), which carries the
weight rounding but not the activation rounding (that is in the measured ASR).
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

from trojanscope.device import CPU
from trojanscope.errors import TrojanscopeError
from trojanscope.lifecycle.base import STAGES, ChainState, Stage, StageResult
from trojanscope.models.training import batches


class QuantizeParams(BaseModel):
    model_config = {"extra": "forbid"}
    mode: Literal["static", "dynamic"] = "static"
    calibration: int = Field(256, ge=1, description="Clean training images for the observers.")
    backend: Literal["x86", "qnnpack"] = "x86"


def int8_rounded(model: nn.Module) -> nn.Module:
    """A float copy whose Conv2d and Linear weights went through int8 and back (per output
    channel, symmetric, as the default weight observers quantize them)."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for module in rounded.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                w = module.weight
                scale = w.flatten(1).abs().amax(1).clamp_min(1e-12) / 127.0
                shape = (-1,) + (1,) * (w.dim() - 1)
                w.copy_((w / scale.view(shape)).round().clamp(-128, 127) * scale.view(shape))
    return rounded


@STAGES.register("quantize-int8")
class Int8Quantization(Stage[QuantizeParams]):
    produces = "int8"

    def apply(self, state: ChainState) -> StageResult:
        p = self.params
        if p.backend not in torch.backends.quantized.supported_engines:
            raise TrojanscopeError(
                f"this torch build has no '{p.backend}' quantized engine (it has "
                f"{', '.join(torch.backends.quantized.supported_engines)})."
            )
        torch.backends.quantized.engine = p.backend
        model = copy.deepcopy(state.model).to(CPU).eval()
        with warnings.catch_warnings():
            # torch.ao's observers and quantized tensors announce their deprecation in favour of
            # torchao; they are what this torch build runs int8 with.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                quantized = self._quantize(model, state)
            except TrojanscopeError:
                raise
            except Exception as exc:  # torch.ao raises many types on graphs it cannot handle
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise TrojanscopeError(
                    f"stage 'quantize-int8' cannot quantize {type(model).__name__} "
                    f"({p.mode}): {first.rstrip('.')}."
                ) from None
        float_model = int8_rounded(state.model).to(CPU)
        quantized_modules = sum(
            1 for m in quantized.modules() if type(m).__module__.startswith("torch.ao.nn.quantized")
        )
        return StageResult(
            state.next(model=quantized, form="int8", float_model=float_model, device=CPU),
            {
                "engine": p.backend,
                "quantized_modules": quantized_modules,
                "localized_on": "float copy with int8-rounded weights",
            },
        )

    def _quantize(self, model: nn.Module, state: ChainState) -> nn.Module:
        p = self.params
        try:
            from torch.ao.quantization import get_default_qconfig_mapping, quantize_dynamic
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
        except ImportError:
            raise TrojanscopeError(
                "this torch build has no torch.ao.quantization (newer releases moved it to "
                "torchao): stage 'quantize-int8' needs it."
            ) from None
        if p.mode == "dynamic":
            return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        train = state.task.splits.train
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        sample = train.subset(order[: p.calibration])
        prepared = prepare_fx(model, get_default_qconfig_mapping(p.backend), (sample.x[:1],))
        with torch.no_grad():
            for xb, _ in batches(sample, 256):
                prepared(xb)
        return convert_fx(prepared)
