"""Devices: which name gives which device on which machine (machines simulated by patching
torch's availability checks), the device of a model, and no device named outside device.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import trojanscope
from tests.stand_in import STAND_IN, DeviceMismatchError, stand_in, to_host
from trojanscope.device import (
    CPU,
    MixedPrecision,
    check_amp,
    model_device,
    prefers_channels_last,
    resolve_device,
    training_layout,
    worker_device,
)
from trojanscope.errors import ConfigError

SRC = Path(trojanscope.__file__).parent


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


def test_local_workers_spread_over_the_gpus_one_each(machine):
    machine(cuda=2)
    cuda = resolve_device("auto")
    assert [worker_device(cuda, w) for w in range(3)] == [
        torch.device("cuda", 0),
        torch.device("cuda", 1),
        torch.device("cuda", 0),  # more workers than GPUs: they share, in turn
    ]
    pinned = resolve_device("cuda:1")  # a GPU named by the user is every worker's
    assert {worker_device(pinned, w) for w in range(3)} == {pinned}
    assert worker_device(CPU, 1) == CPU and worker_device(None, 1) is None


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


def test_the_stand_in_accelerator_refuses_what_an_accelerator_refuses():
    """The stand-in of the device tests: CPU data behind another device, mixing refused."""
    with stand_in() as device:
        assert device == STAND_IN != CPU
        x = torch.arange(4.0).to(device)
        assert x.device == device and (x + 1).device == device
        assert torch.equal((x * torch.tensor(2.0)).cpu(), torch.arange(0.0, 8.0, 2.0))  # 0-dim
        with pytest.raises(DeviceMismatchError, match="same device"):
            x + torch.ones(4)
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        with pytest.raises(TypeError, match="float64"):
            x.double()  # Apple's mps has no float64: the stand-in refuses it too
        assert x[[1, 3]].tolist() == [1.0, 3.0] and float(x.sum()) == 6.0
        assert torch.zeros(2, device=device).device == device
        assert torch.tensor([1, 2], device=device).cpu().tolist() == [1, 2]
        model = nn.Linear(4, 2).to(device)
        assert model_device(model) == device
        with pytest.raises(DeviceMismatchError):
            model(torch.ones(1, 4))
        state = to_host(model.state_dict())
    assert all(t.device == CPU for t in state.values())


# -- no device named outside device.py ---------------------------------------------------------

_DEVICE_NAME = re.compile(r"(cpu|cuda|mps)(:\d+)?")


def _dotted(node: ast.expr) -> str:
    """Dotted source text of a call target (``torch.load``), '' if not a plain name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def device_assumptions(source: str) -> list[str]:
    """What in ``source`` pins a device, as 'line: what': a device name as a string
    (``device="cuda"``, ``.to("cpu")``, ``map_location="cpu"``), ``.cuda()`` / ``.mps()``
    calls, a device-bound generator, and ``torch.load`` without ``map_location``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and _DEVICE_NAME.fullmatch(str(node.value)):
            found.append((node.lineno, f"'{node.value}'"))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if isinstance(node.func, ast.Attribute) and node.func.attr in ("cuda", "mps"):
            found.append((node.lineno, f".{node.func.attr}()"))
        keywords = {kw.arg for kw in node.keywords}
        if name.endswith("Generator") and (node.args or "device" in keywords):
            found.append((node.lineno, f"{name} on a device"))
        if name == "torch.load" and "map_location" not in keywords:
            found.append((node.lineno, "torch.load without map_location"))
    return [f"{line}: {what}" for line, what in sorted(found)]


def test_the_device_check_finds_what_it_forbids():
    source = (
        "import torch\n"
        "x = torch.zeros(3, device='cuda')\n"
        "y = x.cuda()\n"
        "z = x.to('cpu')\n"
        "w = torch.load(p, weights_only=True)\n"
        "g = torch.Generator(device=d)\n"
        "m = torch.load(p, map_location='cuda:1', weights_only=True)\n"
        "ok = torch.load(p, map_location=CPU, weights_only=True)\n"
        "fine = x.to(model_device(m)).cpu(), torch.Generator(), 'the cpu', torch.zeros(3)\n"
    )
    assert device_assumptions(source) == [
        "2: 'cuda'",
        "3: .cuda()",
        "4: 'cpu'",
        "5: torch.load without map_location",
        "6: torch.Generator on a device",
        "7: 'cuda:1'",
    ]


def test_no_module_but_device_py_names_a_device():
    offenders = {
        str(path.relative_to(SRC)): found
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "device.py"
        and (found := device_assumptions(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


# -- mixed precision and memory format ---------------------------------------------------------


def test_amp_the_cpu_serves_bf16_and_off():
    assert check_amp(CPU, "off") == "off" and check_amp(CPU, " BF16 ") == "bf16"


@pytest.mark.parametrize(
    ("device", "amp", "message"),
    [
        (
            CPU,
            "fp16",
            "--amp fp16 cannot train on cpu: torch's float16 kernels on the CPU are "
            "slower than float32; use --amp bf16.",
        ),
        (CPU, "fp32", "--amp 'fp32' is not a precision; use bf16, fp16 or off."),
        (
            STAND_IN,
            "bf16",
            "--amp bf16 cannot train on meta: torch has no autocast for meta devices.",
        ),
    ],
)
def test_amp_a_device_cannot_serve_is_one_sentence(device, amp, message):
    with pytest.raises(ConfigError) as info:
        check_amp(device, amp)
    assert str(info.value) == message
    assert check_amp(device, "off") == "off"  # full precision runs anywhere


@pytest.mark.parametrize(("major", "bf16"), [(7, False), (8, True), (9, True)])
def test_amp_on_cuda_bf16_needs_compute_capability_8(monkeypatch, major, bf16):
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 5))
    gpu = torch.device("cuda", 1)  # only named: no CUDA is needed to check
    assert check_amp(gpu, "fp16") == "fp16"
    if bf16:
        assert check_amp(gpu, "bf16") == "bf16"
    else:
        with pytest.raises(ConfigError, match=r"cuda:1: this GPU has no bfloat16 hardware"):
            check_amp(gpu, "bf16")


@pytest.mark.parametrize("macos14", [False, True])
def test_amp_on_mps_bf16_needs_macos_14(monkeypatch, macos14):
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: macos14)
    mps = torch.device("mps")
    assert check_amp(mps, "fp16") == "fp16"
    if macos14:
        assert check_amp(mps, "bf16") == "bf16"
    else:
        with pytest.raises(ConfigError, match="bfloat16 only from macOS 14"):
            check_amp(mps, "bf16")


def test_mixed_precision_off_is_the_plain_calls():
    precision = MixedPrecision(CPU, "off")
    assert precision.scaler is None
    with precision.autocast():
        assert not torch.is_autocast_enabled("cpu")
    precision = MixedPrecision(CPU, "bf16")
    with precision.autocast():
        assert torch.is_autocast_enabled("cpu")
        assert nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.bfloat16


def test_channels_last_only_for_conv_nets_on_cuda():
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    mlp = nn.Sequential(nn.Linear(2, 2))
    assert prefers_channels_last(conv, torch.device("cuda"))
    assert not prefers_channels_last(mlp, torch.device("cuda", 0))
    assert not prefers_channels_last(conv, CPU) and not prefers_channels_last(conv, STAND_IN)


def test_training_layout_gives_the_weights_back_contiguous():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with training_layout(model, channels_last=True):
        weight = model[0].weight
        assert weight.is_contiguous(memory_format=torch.channels_last)
        assert not weight.is_contiguous()
    assert all(t.is_contiguous() for t in model.state_dict().values())
    assert model[0].weight is weight  # the same parameters (an optimizer keeps them)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with training_layout(model):  # automatic: not on the CPU
        assert model[0].weight.is_contiguous()
