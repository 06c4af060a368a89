import pytest
import torch

from tests.stand_in import stand_in, to_host
from trojanscope.device import CPU, model_device, resolve_device
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import CleanTraining, accuracy, predict, train_clean


@pytest.mark.parametrize("arch", ["cnn-small", "resnet18"])
@pytest.mark.parametrize(("channels", "size"), [(1, 8), (3, 28), (1, 32)])
def test_forward_shapes(arch, channels, size):
    model = ARCHITECTURES.create(arch, width=0.25).build(channels, 7, size).eval()
    assert model(torch.rand(2, channels, size, size)).shape == (2, 7)


def test_width_multiplier_scales_channels():
    narrow = ARCHITECTURES.create("resnet18", width=0.25).build(3, 10, 32)
    full = ARCHITECTURES.create("resnet18", width=1.0).build(3, 10, 32)
    assert narrow.conv1.out_channels == 16 and full.conv1.out_channels == 64
    assert sum(p.numel() for p in full.parameters()) > 10 * sum(
        p.numel() for p in narrow.parameters()
    )


def test_clean_training_learns(digits, clean_digits_model):
    assert accuracy(clean_digits_model, digits.test) > 0.9


def test_clean_training_is_deterministic(digits):
    sub = digits.train.subset(torch.arange(200))
    cfg = CleanTraining(epochs=1)
    a = train_clean(ARCHITECTURES.create("cnn-small", width=0.25), sub, 1, cfg)
    b = train_clean(ARCHITECTURES.create("cnn-small", width=0.25), sub, 1, cfg)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka


def test_training_on_a_device_gives_the_cpus_weights(digits):
    """Placed on resolve_device("cpu"), or on a stand-in accelerator that computes on the CPU,
    a network trains to exactly the weights of today's CPU training; predictions come back on
    the CPU."""
    sub, cfg = digits.train.subset(torch.arange(400)), CleanTraining(epochs=2)
    arch = ARCHITECTURES.create("cnn-small", width=0.5)
    reference = train_clean(arch, sub, 3, cfg)
    on_cpu = train_clean(arch, sub, 3, cfg, resolve_device("cpu"))
    with stand_in() as device:
        elsewhere = train_clean(arch, sub, 3, cfg, device)
        assert model_device(elsewhere) == device
        logits = predict(elsewhere, digits.test.x)
        accuracy_elsewhere = accuracy(elsewhere, digits.test)
        state = to_host(elsewhere.state_dict())
    assert logits.device == CPU and torch.equal(logits, predict(reference, digits.test.x))
    assert accuracy_elsewhere == accuracy(reference, digits.test)
    for name, value in reference.state_dict().items():
        assert torch.equal(on_cpu.state_dict()[name], value), name
        assert torch.equal(state[name], value), name
