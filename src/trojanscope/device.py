"""Where networks run: the one place that names devices.

Every other module takes its device from the model (:func:`model_device`) and moves data there
batch by batch: data sets (``TensorData``) stay on the CPU, and results that are stored or
compared with labels (logits from ``predict``, activations, scores) come back to it. Index
sampling uses CPU generators everywhere, so a seed draws the same samples on every device.
Float64 work (score accumulation, standardisation) is done on the CPU too: Apple's mps
backend has no float64.
"""

from __future__ import annotations

import re

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


def is_cuda(device: torch.device | None) -> bool:
    """True for a CUDA device (a scheduler such as Ray then reserves a GPU for the job)."""
    return device is not None and device.type == "cuda"


def assigned_device(device: torch.device | None) -> torch.device | None:
    """``device`` as seen by a job that a scheduler placed on one GPU: the scheduler (Ray)
    makes only that GPU visible (``CUDA_VISIBLE_DEVICES``), so every CUDA device becomes the
    first visible one; any other device is kept as it is."""
    return torch.device("cuda", 0) if is_cuda(device) else device
