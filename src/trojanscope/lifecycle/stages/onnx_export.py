"""Deployment: export with torch's ONNX exporter and run in onnxruntime.

Records the largest absolute deviation of the runtime's logits from PyTorch's on the same clean
and triggered test inputs; the chain's clean accuracy and ASR after this stage are the
runtime's. An ONNX graph has no PyTorch neurons to localize.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import warnings

import torch
from pydantic import BaseModel, Field
from torch import nn

from trojanscope.device import CPU
from trojanscope.errors import TrojanscopeError
from trojanscope.lifecycle.base import STAGES, ChainState, Stage, StageResult
from trojanscope.lifecycle.runtime import OnnxRuntimeModule
from trojanscope.models.training import predict


class OnnxParams(BaseModel):
    model_config = {"extra": "forbid"}
    opset: int = Field(18, ge=17, le=23, description="ONNX opset version.")
    compare: int = Field(512, ge=1, description="Clean and triggered inputs compared each.")


def export_onnx(model: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    """The model as ONNX bytes, batch size dynamic; the exporter's progress chatter is muted."""
    quiet = io.StringIO()
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with (
            contextlib.redirect_stdout(quiet),
            contextlib.redirect_stderr(quiet),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=["x"],
                output_names=["logits"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                opset_version=opset,
            )
    except Exception as exc:  # the exporter raises many types for unsupported graphs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrojanscopeError(
            f"torch's ONNX exporter cannot export this model: {first.rstrip('.')}."
        ) from None
    finally:
        onnx_log.setLevel(level)
    if program is None:
        raise TrojanscopeError("torch's ONNX exporter returned no program for this model.")
    return program.model_proto.SerializeToString()


@STAGES.register("onnx-export")
class OnnxExport(Stage[OnnxParams]):
    produces = "onnx"

    def apply(self, state: ChainState) -> StageResult:
        p = self.params
        model = copy.deepcopy(state.model).to(CPU).eval()
        task = state.task
        onnx_bytes = export_onnx(model, task.splits.test.x[:2], p.opset)
        runtime = OnnxRuntimeModule(onnx_bytes)
        deviation = {}
        for name, x in (("clean", task.splits.test.x), ("triggered", task.triggered.x)):
            x = x[: p.compare]
            deviation[name] = (
                float((predict(runtime, x) - predict(model, x)).abs().max()) if len(x) else 0.0
            )
        return StageResult(
            state.next(model=runtime, form="onnx", float_model=None, device=CPU),
            {
                "opset": p.opset,
                "bytes": len(onnx_bytes),
                "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
                "max_abs_deviation": max(deviation.values()),
                "deviation": deviation,
            },
        )
