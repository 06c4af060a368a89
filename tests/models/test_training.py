"""Training loops: mixed precision (off: bit-identical to the loop before it existed; bf16:
learns, weights stay float32) and the channels-last memory format (weights back contiguous)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trojanscope.data.base import Splits, TensorData
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import (
    CleanTraining,
    batches,
    predict,
    train_clean,
    train_epochs,
)


@pytest.fixture(scope="module")
def few(digits: Splits) -> TensorData:
    """600 training digits: enough to see learning, fast to train on."""
    return digits.train.subset(torch.arange(600))


def fresh(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ARCHITECTURES.create("cnn-small", width=0.5).build(1, 10, 8)


def reference_epochs(model, data, optimizer, epochs, batch_size, seed):
    """The loop of ``train_epochs`` as it was before mixed precision (no callbacks)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train(True)
        for xb, yb in batches(data, batch_size, g):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()
        model.eval()


def mean_loss(model: nn.Module, data: TensorData) -> float:
    return float(F.cross_entropy(predict(model, data.x), data.y))


def test_amp_off_is_bit_identical_to_the_loop_before_it(few):
    ours, theirs = fresh(), fresh()
    train_epochs(ours, few, torch.optim.AdamW(ours.parameters(), lr=0.01), 2, 64, 3, amp="off")
    reference_epochs(theirs, few, torch.optim.AdamW(theirs.parameters(), lr=0.01), 2, 64, 3)
    theirs_state = theirs.state_dict()
    for name, value in ours.state_dict().items():
        assert torch.equal(value, theirs_state[name]), name


def test_bf16_training_learns_and_keeps_float32_weights(few):
    untrained = mean_loss(fresh(), few)
    model = train_clean(
        ARCHITECTURES.create("cnn-small", width=0.5), few, 0, CleanTraining(epochs=8, amp="bf16")
    )
    assert mean_loss(model, few) < 0.5 * untrained  # evaluated in full precision
    for name, value in model.state_dict().items():
        assert value.dtype in (torch.float32, torch.int64), name  # int64: batches seen
        assert value.is_contiguous(), name


def test_channels_last_training_means_the_same_and_stores_contiguous(few, digits):
    plain, last = fresh(), fresh()
    for model, layout in ((plain, False), (last, True)):
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        train_epochs(model, few, opt, 2, 64, 0, channels_last=layout)
    assert all(t.is_contiguous() for t in last.state_dict().values())
    # Other kernels round differently; the network learned the same thing.
    agree = predict(plain, digits.test.x).argmax(1) == predict(last, digits.test.x).argmax(1)
    assert float(agree.float().mean()) > 0.9


def test_clean_training_names_amp_only_when_on():
    assert "amp" not in CleanTraining().model_dump(mode="json")
    assert "amp" not in CleanTraining(amp="off").model_dump()
    assert CleanTraining(amp="bf16").model_dump(mode="json")["amp"] == "bf16"
    assert CleanTraining.model_validate({"epochs": 8}).amp == "off"  # records made before amp
    with pytest.raises(ValueError, match="'off', 'bf16' or 'fp16'"):
        CleanTraining(amp="fp32")  # type: ignore[arg-type]
