"""An ONNX graph run by onnxruntime behind the ``nn.Module`` interface, so that the chain's
evaluation (accuracy, ASR) treats it like any model."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class OnnxRuntimeModule(nn.Module):
    """Logits from an onnxruntime session on the CPU (no parameters, no gradients)."""

    def __init__(self, onnx_bytes: bytes) -> None:
        super().__init__()
        import onnxruntime as ort  # heavy; only the ONNX stage needs it

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.session: Any = ort.InferenceSession(
            onnx_bytes, options, providers=["CPUExecutionProvider"]
        )
        self.input_name: str = self.session.get_inputs()[0].name
        self.onnx_bytes = onnx_bytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
        return torch.from_numpy(self.session.run(None, feed)[0])
