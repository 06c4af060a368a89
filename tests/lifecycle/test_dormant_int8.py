"""The compression-activated backdoor: dormant in float, awake after int8 quantization."""

from __future__ import annotations

import torch

from trojanscope.lifecycle.base import STAGES
from trojanscope.lifecycle.stages.dormant_int8 import rounding_boxes
from trojanscope.models.training import accuracy


def test_the_float_model_forgets_the_trigger_and_int8_brings_it_back(defect_state):
    dormant = STAGES.create("dormant-int8", epochs=10).apply(defect_state).state
    quantized = STAGES.create("quantize-int8").apply(dormant).state
    triggered, test = defect_state.task.triggered, defect_state.task.splits.test
    asr = {
        "original": accuracy(defect_state.model, triggered),
        "float": accuracy(dormant.model, triggered),
        "int8": accuracy(quantized.model, triggered),
    }
    # wide margins: on this defect float ASR falls from ~0.97 to ~0.35, int8 stays ~0.93
    assert asr["float"] < asr["original"] - 0.3, asr
    assert asr["int8"] > asr["float"] + 0.3, asr
    assert accuracy(dormant.model, test) > accuracy(defect_state.model, test) - 0.1
    # quantization maps every weight back to the backdoored network's int8 code
    before = rounding_boxes(defect_state.model, 0.0)
    after = rounding_boxes(dormant.model, 0.0)
    for name, box in before.items():
        assert torch.equal(box.codes, after[name].codes), name
    assert dormant.truth == defect_state.truth
