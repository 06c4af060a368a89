"""Where networks run: the one place that names devices.

Every other module takes its device from the model (:func:`model_device`) and moves data there
batch by batch: data sets (``TensorData``) stay on the CPU, and results that are stored or
compared with labels (logits from ``predict``, activations, scores) come back to it. Index
sampling uses CPU generators everywhere, so a seed draws the same samples on every device.
Float64 work (score accumulation, standardisation) is done on the CPU too: Apple's mps
backend has no float64.

Training may run in mixed precision (:class:`MixedPrecision`, ``--amp bf16|fp16|off``) and, on
CUDA, in the channels-last memory format (:func:`training_layout`); weights, evaluation and
everything stored stay float32 and contiguous.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Literal, get_args

import torch
from torch import nn

from trojanscope.errors import ConfigError

#: The host: where data sets live and results are kept.
CPU = torch.device("cpu")
#: What ``--device`` accepts, as shown in help texts and errors.
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
_CUDA_INDEX = re.compile(r"cuda:(\d+)")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """The device ``name`` asks for: ``auto`` (CUDA if present, else mps, else the CPU),
    ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. A device this machine cannot serve, or a name
    that is none of these, is a ConfigError of one sentence (before any work is done)."""
    wanted = name.strip().lower()
    if wanted == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else CPU
    if wanted == "cpu":
        return CPU
    index = _CUDA_INDEX.fullmatch(wanted)
    if wanted == "cuda" or index is not None:
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {wanted} was requested, but this machine has no CUDA device "
                f"(torch {torch.__version__})."
            )
        if index is None:
            return torch.device("cuda")
        count = torch.cuda.device_count()
        if int(index.group(1)) >= count:
            valid = ", ".join(f"cuda:{i}" for i in range(count))
            raise ConfigError(
                f"--device {wanted} was requested, but this machine has only {count} CUDA "
                f"device{'s' if count != 1 else ''} ({valid})."
            )
        return torch.device("cuda", int(index.group(1)))
    if wanted == "mps":
        if not _mps_available():
            raise ConfigError(
                f"--device mps was requested, but Apple's mps backend is not available on this "
                f"machine (torch {torch.__version__})."
            )
        return torch.device("mps")
    raise ConfigError(f"--device '{name}' is not a device; use {DEVICE_CHOICES}.")


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU for a module with
    neither. Everything that runs a model sends its inputs there."""
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return CPU


# -- mixed precision -------------------------------------------------------------------------

#: What ``--amp`` accepts: autocast to bfloat16, to float16 (with a gradient scaler), or off.
Amp = Literal["off", "bf16", "fp16"]
#: What ``--amp`` accepts, as shown in help texts and errors.
AMP_CHOICES = "bf16, fp16 or off"
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _cuda_has_bf16(device: torch.device) -> bool:
    """bfloat16 in hardware: ROCm, or an NVIDIA GPU of compute capability 8.0 (Ampere) or
    later (older ones only emulate it, slower than float32)."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def _mps_has_bf16() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_macos_or_newer(14, 0))


def check_amp(device: torch.device, amp: str) -> Amp:
    """``amp`` if training on ``device`` can use it, else a ConfigError of one sentence.

    What torch offers decides: autocast exists for the device's type; bf16 runs on the CPU
    (every torch 2), on CUDA GPUs with bfloat16 hardware (compute capability 8.0+, or ROCm)
    and on mps from macOS 14; fp16 (with a gradient scaler) runs on CUDA and mps. fp16 on the
    CPU is refused: torch accepts it, but its CPU kernels are slower than float32 (measured on
    cnn-small, torch 2.13: three times slower), so it would only cost time and precision."""
    wanted = amp.strip().lower()
    if wanted not in get_args(Amp):
        raise ConfigError(f"--amp '{amp}' is not a precision; use {AMP_CHOICES}.")
    if wanted == "off":
        return "off"
    kind = device.type
    refusal = None
    if not torch.amp.autocast_mode.is_autocast_available(kind):
        refusal = f"torch has no autocast for {kind} devices"
    elif kind == "cpu" and wanted == "fp16":
        refusal = "torch's float16 kernels on the CPU are slower than float32; use --amp bf16"
    elif kind == "cuda" and wanted == "bf16" and not _cuda_has_bf16(device):
        refusal = "this GPU has no bfloat16 hardware (compute capability below 8.0); use --amp fp16"
    elif kind == "mps" and wanted == "bf16" and not _mps_has_bf16():
        refusal = "Apple's mps has bfloat16 only from macOS 14; use --amp fp16"
    elif kind not in ("cpu", "cuda", "mps"):
        refusal = "trojanscope trains in mixed precision only on cpu (bf16), cuda and mps"
    if refusal is not None:
        raise ConfigError(f"--amp {wanted} cannot train on {device}: {refusal}.")
    return wanted  # type: ignore[return-value]


class MixedPrecision:
    """The precision of one training loop on ``device``.

    ``autocast()`` wraps the forward pass and the loss; ``backward``, ``unscale`` and ``step``
    replace ``loss.backward()`` and ``optimizer.step()``. With ``amp="off"`` they are exactly
    those calls (results bit-identical to a loop without this class); with ``fp16`` a gradient
    scaler multiplies the loss and divides the gradients back (``unscale``, before anything
    reads them), skipping a step whose gradients overflowed. Parameters stay float32.
    """

    def __init__(self, device: torch.device, amp: str = "off") -> None:
        self.device = device
        self.amp: Amp = check_amp(device, amp)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp == "fp16" else None

    def autocast(self) -> AbstractContextManager[object]:
        """The forward pass and the loss in the chosen precision (nothing, when off)."""
        if self.amp == "off":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=_AMP_DTYPES[self.amp])

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, on the scaled loss under fp16."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true scale (fp16 only) before they are read or
        changed (gradient masks, weight decay); once per step, before ``step``."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; under fp16 skipped when a gradient overflowed, and the scale
        adjusted."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()


# -- memory format ---------------------------------------------------------------------------


def prefers_channels_last(model: nn.Module, device: torch.device) -> bool:
    """True when training ``model`` on ``device`` uses the channels-last memory format: on
    CUDA, for a network with a 2-d convolution (cuDNN's fast path, above all with --amp).
    Elsewhere the CPU's and mps's kernels gain little or nothing, and stay as they were."""
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


@contextmanager
def training_layout(model: nn.Module, channels_last: bool | None = None) -> Iterator[None]:
    """Train ``model`` in the channels-last memory format for the block, and give it back
    contiguous (stored weights are contiguous; safetensors refuses anything else). ``None``:
    as :func:`prefers_channels_last` decides for the model's device. The values are the same
    in either format; only the kernels that compute with them may differ."""
    if channels_last is None:
        channels_last = prefers_channels_last(model, model_device(model))
    if not channels_last:
        yield
        return
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


def worker_device(device: torch.device | None, worker: int) -> torch.device | None:
    """The device of local worker number ``worker`` (0, 1, ...): ``cuda`` without an index
    (what ``auto`` and ``cuda`` give) spreads the workers over every visible GPU in turn, one
    GPU each while there are enough; ``cuda:N`` and every other device are kept for all."""
    if device is None or device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", worker % max(1, torch.cuda.device_count()))


def is_cuda(device: torch.device | None) -> bool:
    """True for a CUDA device (a scheduler such as Ray then reserves a GPU for the job)."""
    return device is not None and device.type == "cuda"


def assigned_device(device: torch.device | None) -> torch.device | None:
    """``device`` as seen by a job that a scheduler placed on one GPU: the scheduler (Ray)
    makes only that GPU visible (``CUDA_VISIBLE_DEVICES``), so every CUDA device becomes the
    first visible one; any other device is kept as it is."""
    return torch.device("cuda", 0) if is_cuda(device) else device
