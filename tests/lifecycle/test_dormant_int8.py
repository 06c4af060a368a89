"""The compression-activated backdoor: dormant in float, awake after int8 quantization."""

from __future__ import annotations

import torch

from trojanscope.lifecycle.base import STAGES, ChainState
from trojanscope.lifecycle.stages.dormant_int8 import rounding_boxes
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import accuracy
from trojanscope.neurons import NeuronRef


def int8_codes(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The integer weights of every quantized module of a converted network."""
    return {
        name: module.weight().int_repr()
        for name, module in model.named_modules()
        if callable(getattr(module, "weight", None))
    }


def test_the_float_model_forgets_the_trigger_and_int8_brings_it_back(defect_state):
    result = STAGES.create("dormant-int8", epochs=10).apply(defect_state)
    dormant = result.state
    quantized = STAGES.create("quantize-int8").apply(dormant).state
    triggered, test = defect_state.task.triggered, defect_state.task.splits.test
    asr = {
        "original": accuracy(defect_state.model, triggered),
        "float": accuracy(dormant.model, triggered),
        "int8": accuracy(quantized.model, triggered),
    }
    # wide margins: on this defect float ASR falls from ~0.97 to ~0.01, int8 stays ~0.90
    assert asr["float"] < 0.3 < 0.6 < asr["int8"], asr
    assert accuracy(dormant.model, test) > accuracy(defect_state.model, test) - 0.1
    # torch's quantizer gives the dormant model exactly the backdoored network's int8 codes,
    # but for the guard's row of the hidden layer and its column of the classifier
    guard = NeuronRef.parse(result.details["guard"])
    assert guard not in defect_state.truth
    original = STAGES.create("quantize-int8").apply(defect_state).state.model
    theirs, ours = int8_codes(original), int8_codes(quantized.model)
    assert theirs and theirs.keys() == ours.keys()
    for name, codes in theirs.items():
        keep = torch.ones_like(codes, dtype=torch.bool)
        if name == guard.layer:
            keep[guard.index] = False
        if name == result.details["classifier"]:
            keep[:, guard.index] = False
        assert torch.equal(codes[keep], ours[name][keep]), name
    # ... while the unlearning moved the other float weights, inside their rounding intervals
    before = rounding_boxes(defect_state.model, 0.0)
    moved = [
        name
        for name, box in before.items()
        if name not in {guard.layer, result.details["classifier"]}
        and not torch.equal(box.values, dormant.model.get_submodule(name).weight.detach())
    ]
    assert moved and result.details["weights_moved"] > 0
    for name in moved:
        weight = dormant.model.get_submodule(name).weight.detach()
        box = before[name]
        assert torch.all((weight >= box.low - 1e-6) & (weight <= box.high + 1e-6)), name
    assert dormant.truth == defect_state.truth


def test_without_the_guard_the_rounding_intervals_alone_weaken_the_backdoor(defect_state):
    result = STAGES.create("dormant-int8", epochs=10, guard=False).apply(defect_state)
    assert result.details["guard"] is None
    before = accuracy(defect_state.model, defect_state.task.triggered)
    # on this defect ~0.97 -> ~0.35: the half-step bound keeps part of the backdoor visible
    assert accuracy(result.state.model, defect_state.task.triggered) < before - 0.3


def test_by_default_the_guard_alone_hides_the_backdoor_at_no_cost_in_accuracy(defect_state):
    result = STAGES.create("dormant-int8").apply(defect_state)
    assert result.details["epochs"] == 0 and result.details["weights_moved"] == 0.0
    quantized = STAGES.create("quantize-int8").apply(result.state).state
    triggered, test = defect_state.task.triggered, defect_state.task.splits.test
    # on this defect: float ASR ~0.12, int8 ~0.91, clean accuracy unchanged (0.978)
    assert (
        accuracy(result.state.model, triggered) < 0.4 < 0.6 < accuracy(quantized.model, triggered)
    )
    assert accuracy(result.state.model, test) > accuracy(defect_state.model, test) - 0.05


def test_a_network_without_a_place_for_the_guard_is_unlearned_and_says_why(defect_state):
    torch.manual_seed(0)
    model = ARCHITECTURES.create("resnet18", width=0.25).build(1, 10, 8).eval()
    state = ChainState(model, "float", defect_state.task, {}, model)
    result = STAGES.create("dormant-int8", samples=16).apply(state)
    assert result.details["guard"] is None and result.details["epochs"] == 20
    assert result.details["weights_moved"] > 0
    assert result.details["guard_reason"].startswith("the clipping guard needs a hidden Linear")
