"""Devices: which name gives which device on which machine (machines simulated by patching
torch's availability checks), the device of a model, and no device named outside device.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trojanscope.device import CPU, model_device, resolve_device
from trojanscope.errors import ConfigError


@pytest.fixture
def machine(monkeypatch):
    """Simulate a machine with ``cuda`` CUDA devices and mps present or not."""

    def make(cuda: int = 0, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return make


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(0, False, "cpu"), (0, True, "mps"), (1, False, "cuda"), (2, True, "cuda")],
)
def test_auto_prefers_cuda_then_mps_then_the_cpu(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert resolve_device() == resolve_device("auto") == torch.device(expected)


def test_explicit_devices_the_machine_has(machine):
    machine(cuda=2, mps=True)
    assert resolve_device("cpu") == CPU == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(" CUDA:0 ") == torch.device("cuda", 0)
    assert resolve_device("mps") == torch.device("mps")


def test_the_cpu_is_always_served(machine):
    machine(cuda=0, mps=False)
    assert resolve_device("cpu") == CPU


def _one_sentence(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    text = str(exc.value)
    assert text.endswith(".") and "\n" not in text and text.count(". ") == 0, text
    return text


def test_cuda_without_cuda_is_refused(machine):
    machine(cuda=0, mps=True)
    with pytest.raises(ConfigError) as exc:
        resolve_device("cuda")
    assert _one_sentence(exc) == (
        f"--device cuda was requested, but this machine has no CUDA device "
        f"(torch {torch.__version__})."
    )
    with pytest.raises(ConfigError, match="--device cuda:0 was requested, but this machine has"):
        resolve_device("cuda:0")


def test_a_cuda_index_beyond_the_machines_is_refused(machine):
    machine(cuda=1)
    with pytest.raises(ConfigError) as exc:
        resolve_device("cuda:3")
    assert _one_sentence(exc) == (
        "--device cuda:3 was requested, but this machine has only 1 CUDA device (cuda:0)."
    )
    machine(cuda=2)
    with pytest.raises(ConfigError, match=r"only 2 CUDA devices \(cuda:0, cuda:1\)"):
        resolve_device("cuda:2")


def test_mps_without_mps_is_refused(machine):
    machine(cuda=1, mps=False)
    with pytest.raises(ConfigError) as exc:
        resolve_device("mps")
    assert "--device mps was requested, but Apple's mps backend is not available" in (
        _one_sentence(exc)
    )


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:-1", "cuda:x", "cuda0", "mps:0", "", "tpu"])
def test_malformed_names_are_refused(machine, name):
    machine(cuda=2, mps=True)
    with pytest.raises(ConfigError) as exc:
        resolve_device(name)
    assert _one_sentence(exc) == (
        f"--device '{name}' is not a device; use auto, cpu, cuda, cuda:N or mps."
    )


def test_model_device_reads_the_first_parameter_or_buffer():
    assert model_device(nn.Linear(2, 2)) == CPU
    assert model_device(nn.BatchNorm1d(2, affine=False)) == CPU  # buffers only
    assert model_device(nn.ReLU()) == CPU  # neither: the CPU
    assert model_device(nn.Linear(2, 2).to(resolve_device("cpu"))) == CPU
    meta = nn.Linear(2, 2, device="meta")  # another device than the CPU, on any machine
    assert model_device(meta) == torch.device("meta")
    assert model_device(nn.Sequential(nn.ReLU(), meta)) == torch.device("meta")
