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
from typing import Literal, Self

import torch
from pydantic import BaseModel, Field, model_validator
from torch import nn

from trojanscope.device import CPU
from trojanscope.errors import TrojanscopeError
from trojanscope.lifecycle.base import STAGES, ChainState, Stage, StageResult, training_sample
from trojanscope.lifecycle.int8 import int8_rounded
from trojanscope.models.training import batches


class QuantizeParams(BaseModel):
    model_config = {"extra": "forbid"}
    mode: Literal["static", "dynamic"] = "static"
    calibration: int = Field(256, ge=1, description="Clean training images for the observers.")
    #: None: x86 where this torch build has it, else qnnpack (ARM). Resolved when the
    #: parameters are read, so a stored link's parameters name the engine that made it.
    backend: Literal["x86", "qnnpack"] | None = None

    @model_validator(mode="after")
    def _resolve_backend(self) -> Self:
        if self.backend is None:
            engines = torch.backends.quantized.supported_engines
            self.backend = "x86" if "x86" in engines else "qnnpack"
        return self


@STAGES.register("quantize-int8")
class Int8Quantization(Stage[QuantizeParams]):
    produces = "int8"

    def apply(self, state: ChainState) -> StageResult:
        p = self.params
        engines = torch.backends.quantized.supported_engines
        backend = p.backend or "x86"  # the validator filled it in
        if backend not in engines:
            raise TrojanscopeError(
                f"this torch build has no '{backend}' quantized engine (it has "
                f"{', '.join(engines)})."
            )
        torch.backends.quantized.engine = backend
        model = copy.deepcopy(state.model).to(CPU).eval()
        with warnings.catch_warnings():
            # torch.ao's observers and quantized tensors announce their deprecation in favour of
            # torchao; they are what this torch build runs int8 with.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                quantized = self._quantize(model, state, backend)
            except TrojanscopeError:
                raise
            except Exception as exc:  # torch.ao raises many types on graphs it cannot handle
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise TrojanscopeError(
                    f"stage 'quantize-int8' cannot quantize {type(model).__name__} "
                    f"({p.mode}): {first.rstrip('.')}."
                ) from None
        # the weights the kernels use: static x86 rounds each output channel, dynamic
        # quantization and qnnpack round each Linear (and, static, Conv2d) tensor as a whole
        layers = (nn.Linear,) if p.mode == "dynamic" else (nn.Conv2d, nn.Linear)
        per_channel = p.mode == "static" and backend == "x86"
        float_model = int8_rounded(state.model, layers, per_channel).to(CPU)
        quantized_modules = sum(
            1 for m in quantized.modules() if type(m).__module__.startswith("torch.ao.nn.quantized")
        )
        return StageResult(
            state.next(model=quantized, form="int8", float_model=float_model, device=CPU),
            {
                "engine": backend,
                "quantized_modules": quantized_modules,
                "localized_on": "float copy with the int8 weights, dequantized",
            },
        )

    def _quantize(self, model: nn.Module, state: ChainState, backend: str) -> nn.Module:
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
        sample = training_sample(train, p.calibration, 0)
        prepared = prepare_fx(model, get_default_qconfig_mapping(backend), (sample.x[:1],))
        with torch.no_grad():
            for xb, _ in batches(sample, 256):
                prepared(xb)
        return convert_fx(prepared)
