"""Each stage on the digits defect (cnn-small) and on a ResNet-18 at width 0.25."""

from __future__ import annotations

import pytest
import torch

from trojanscope.attacks.base import ATTACKS
from trojanscope.data.base import DATASETS
from trojanscope.errors import ConfigError, TrojanscopeError
from trojanscope.lifecycle.base import STAGES, ChainState, Task, renormalised
from trojanscope.lifecycle.int8 import int8_grid, int8_rounded
from trojanscope.lifecycle.stages.prune_magnitude import _dead_neurons
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import accuracy, predict
from trojanscope.neurons import NeuronRef, layer_outputs


def apply(name: str, state: ChainState, **params):
    return STAGES.create(name, **params).apply(state)


def test_registry_lists_the_stages():
    assert {
        "finetune-transfer",
        "quantize-int8",
        "prune-magnitude",
        "distill",
        "onnx-export",
    } <= set(STAGES.names())


def test_unstructured_pruning_reaches_its_sparsity_and_leaves_the_input_alone(defect_state):
    before = {k: v.clone() for k, v in defect_state.model.state_dict().items()}
    result = apply("prune-magnitude", defect_state, sparsity=0.5)
    assert result.details["weight_sparsity"] == pytest.approx(0.5, abs=0.01)
    for key, value in defect_state.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert result.state.form == "float" and result.state.float_model is result.state.model


def test_channel_pruning_removes_neurons_and_their_ground_truth(defect_state):
    result = apply("prune-magnitude", defect_state, sparsity=0.5, structure="channel")
    removed = {NeuronRef.parse(n) for n in result.details["removed_infected"]}
    assert result.details["removed_neurons"] > 0
    assert not removed & set(result.state.truth)
    assert set(result.state.truth) | removed == set(defect_state.truth)
    if result.state.truth:
        assert sum(result.state.truth.values()) == pytest.approx(1.0)
    # every removed channel outputs exactly zero, whatever the input
    dead = _dead_neurons(result.state.model)
    assert len(dead) == result.details["removed_neurons"] > 0
    outputs = layer_outputs(result.state.model, defect_state.task.splits.test.x[:32])
    for ref in dead:
        assert torch.count_nonzero(outputs[ref.layer][:, ref.index]) == 0, ref


def test_recovery_fine_tuning_keeps_the_pruned_weights_at_zero(defect_state):
    result = apply("prune-magnitude", defect_state, sparsity=0.6, recover_epochs=1)
    assert result.details["weight_sparsity"] == pytest.approx(0.6, abs=0.01)


def test_recovery_after_channel_pruning_trains_the_network_it_returns(defect_state):
    params = {"sparsity": 0.3, "structure": "channel", "recover_epochs": 1}
    result = apply("prune-magnitude", defect_state, **params)
    dead = _dead_neurons(result.state.model)
    outputs = layer_outputs(result.state.model, defect_state.task.splits.test.x[:32])
    for ref in dead:  # the removed channels stayed silent through the recovery
        assert torch.count_nonzero(outputs[ref.layer][:, ref.index]) == 0, ref


def test_renormalised_truth():
    a, b, c = NeuronRef("l", 0), NeuronRef("l", 1), NeuronRef("l", 2)
    assert renormalised({a: 0.5, b: 0.25, c: 0.25}, {a}) == {b: 0.5, c: 0.5}
    assert renormalised({a: 1.0, b: 0.0}, {a}) == {b: 1.0}
    assert renormalised({a: 1.0}, {a}) == {}


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_quantization_runs_the_quantized_kernels(defect_state, mode):
    result = apply("quantize-int8", defect_state, mode=mode)
    state = result.state
    assert state.form == "int8" and state.device.type == "cpu"
    assert result.details["quantized_modules"] > 0
    test = defect_state.task.splits.test
    # int8 rounding moves a few decisions at most on this small network
    assert abs(accuracy(state.model, test) - accuracy(defect_state.model, test)) < 0.1
    assert state.float_model is not None and state.truth == defect_state.truth


def test_the_float_copy_holds_the_weights_the_int8_kernels_use(defect_state):
    quantized = apply("quantize-int8", defect_state).state.model
    codes = {
        name: module.weight().int_repr()
        for name, module in quantized.named_modules()
        if callable(getattr(module, "weight", None))
    }
    assert codes
    for name, module in defect_state.model.named_modules():
        if name in codes:
            ours, _ = int8_grid(module.weight)
            # fusing a normalization with a negative scale flips a channel's signs; there the
            # extreme weight's code is 127 where ours, negated, is 128 (torch clamps it)
            theirs = codes[name].flatten(1).int()
            flip = torch.where((theirs * ours.flatten(1).int()).sum(1) < 0, -1, 1)
            diff = ours.flatten(1).int() * flip[:, None] - theirs
            assert (diff.abs() <= 1).all() and ((diff != 0).sum(1) <= 1).all(), name
            # ... and only at the channel's largest weight, where the rounding is clamped
            w = module.weight.detach().flatten(1).abs()
            assert (w[diff != 0] == w.amax(1, keepdim=True).expand_as(w)[diff != 0]).all(), name
    rounded = int8_rounded(defect_state.model)
    for (name, w), (_, r) in zip(
        defect_state.model.named_parameters(), rounded.named_parameters(), strict=True
    ):
        if name.endswith("weight") and w.dim() > 1:
            step = w.flatten(1).abs().amax(1) / 127.5
            assert ((w - r).flatten(1).abs() <= step[:, None] / 2 + 1e-7).all(), name


def test_onnx_runtime_agrees_with_pytorch(defect_state):
    result = apply("onnx-export", defect_state)
    assert result.state.form == "onnx" and result.state.float_model is None
    assert result.details["max_abs_deviation"] < 1e-4
    x = defect_state.task.triggered.x
    agree = predict(result.state.model, x).argmax(1) == predict(defect_state.model, x).argmax(1)
    assert agree.float().mean() > 0.99


def test_transfer_replaces_the_head_and_the_task(defect_state):
    params = {"dataset": "synthetic", "dataset_params": {"size": 8, "n": 400}, "epochs": 2}
    result = apply("finetune-transfer", defect_state, **params)
    state = result.state
    assert state.task.dataset == "synthetic" and state.task.splits.num_classes == 4
    assert predict(state.model, state.task.splits.test.x[:4]).shape == (4, 4)
    assert 0 <= state.task.target < 4 and result.details["target"] == state.task.target
    assert (state.task.clean_victims.y != state.task.target).all()
    assert state.truth == defect_state.truth
    # the encoder's weights moved (everything trains by default); the input's did not
    assert not torch.equal(state.model.conv1.weight, defect_state.model.conv1.weight)


def test_transfer_of_the_head_alone_leaves_the_encoder_untouched(defect_state):
    params = {"dataset": "synthetic", "dataset_params": {"size": 8, "n": 400}, "epochs": 1}
    result = apply("finetune-transfer", defect_state, trainable="head", **params)
    for (name, w), (_, v) in zip(
        defect_state.model.named_parameters(), result.state.model.named_parameters(), strict=True
    ):
        if not name.startswith("fc."):
            assert torch.equal(w, v), name


def test_transfer_refuses_data_of_another_shape(defect_state):
    with pytest.raises(ConfigError, match="needs a data set of the model's image shape 1x8x8"):
        apply("finetune-transfer", defect_state, dataset="synthetic")  # 16 px by default


def test_distillation_leaves_a_student_without_ground_truth(defect_state):
    result = apply("distill", defect_state, width=0.25, epochs=1, samples=200)
    assert result.state.truth == {}
    assert result.details["parameters"][1] < result.details["parameters"][0]


def test_a_stage_refuses_a_form_it_cannot_start_from():
    with pytest.raises(TrojanscopeError, match="'onnx-export' cannot follow 'quantize-int8'"):
        STAGES.create("onnx-export").check_follows("int8", "quantize-int8")


@pytest.fixture(scope="module")
def resnet_state() -> ChainState:
    """An untrained ResNet-18 at width 0.25 on 28 px images: the stages' plumbing, not a
    backdoor."""
    splits = DATASETS.create("synthetic", size=28, n=200).load(0)
    torch.manual_seed(0)
    model = ARCHITECTURES.create("resnet18", width=0.25).build(1, splits.num_classes, 28).eval()
    test = splits.test
    task = Task("synthetic", splits, ATTACKS.create("badnets"), test, test, None)
    return ChainState(model, "float", task, {NeuronRef("layer1.0.conv1", 0): 1.0}, model)


@pytest.mark.parametrize(
    "name, params",
    [
        ("prune-magnitude", {"sparsity": 0.5, "structure": "channel"}),
        ("quantize-int8", {"calibration": 64}),
        ("onnx-export", {"compare": 64}),
        ("distill", {"epochs": 1, "samples": 64}),
        (
            "finetune-transfer",
            {"dataset": "synthetic", "dataset_params": {"size": 28, "n": 100}, "epochs": 1},
        ),
        ("dormant-int8", {"epochs": 1, "samples": 32}),
    ],
)
def test_each_stage_runs_on_resnet18(resnet_state, name, params):
    result = apply(name, resnet_state, **params)
    logits = predict(result.state.model, resnet_state.task.splits.test.x[:8])
    assert logits.shape == (8, resnet_state.task.splits.num_classes)
    assert torch.isfinite(logits).all()
    if name == "onnx-export":
        assert result.details["max_abs_deviation"] < 1e-3


class _Untraceable(torch.nn.Module):
    """Data-dependent control flow: FX graph mode cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 4)

    def forward(self, x):
        x = x.flatten(1)
        if x.sum() > 0:
            x = x * 2
        return self.fc(x)


def test_a_network_the_quantizer_cannot_trace_gets_one_sentence():
    splits = DATASETS.create("synthetic", size=8, n=40).load(0)
    model = _Untraceable()
    task = Task("synthetic", splits, ATTACKS.create("badnets"), splits.test, splits.test, None)
    state = ChainState(model, "float", task, {}, model)
    with pytest.raises(
        TrojanscopeError, match="stage 'quantize-int8' cannot quantize _Untraceable"
    ):
        apply("quantize-int8", state)


def test_the_int8_engine_is_resolved_into_the_parameters():
    """A stored link's parameters (and so its catalog key) name the engine that made it."""
    from trojanscope.lifecycle.stages.quantize_int8 import QuantizeParams

    params = QuantizeParams().model_dump(mode="json")
    assert params["backend"] in torch.backends.quantized.supported_engines
    assert QuantizeParams(backend="qnnpack").backend == "qnnpack"
