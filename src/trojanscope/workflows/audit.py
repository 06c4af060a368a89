"""`trojanscope audit`: scan a model file, load it safely, screen it for a backdoor.

Order matters: the file is scanned first and a dangerous (or inconclusive) scan stops the audit
before anything is loaded; weights are then read with safetensors or ``torch.load(weights_only=
True)``, never by unpickling arbitrary objects. Screening: data-free CLP outlier neurons per
layer, and with clean data Neural Cleanse's label anomaly index (the reversed trigger is kept).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trojanscope.data.base import DATASETS
from trojanscope.device import CPU
from trojanscope.errors import CorruptArtifactError, TrojanscopeError
from trojanscope.localization.base import CRITERIA, EvidenceData
from trojanscope.localization.patch_screen import PROBE_IMAGES, patch_note, screen_sizes
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import accuracy
from trojanscope.models.vision_encoder import VisionEncoder
from trojanscope.neurons import classifier_name, eligible_layers
from trojanscope.report.audit_result import CLP_THRESHOLD, AuditResult
from trojanscope.scan.findings import FileReport, overall_verdict
from trojanscope.scan.scanner import Scanner
from trojanscope.workflows.neuba_vision import sample

_WIDTHS = (1.0, 0.5, 0.25, 0.125, 2.0, 0.75)
#: Candidate patches per size screened on a model file (fewer than for an encoder folder:
#: Neural Cleanse runs too).
MODEL_PATCH_BUDGET = 256


#: Terminal escape sequences (torch puts some in its error messages).
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def load_state(path: Path, fmt: str, device: torch.device = CPU) -> dict[str, torch.Tensor]:
    """The tensors of a scanned model file: safetensors, or a torch checkpoint read with
    ``weights_only=True`` (unwrapping the usual {"state_dict": ...} containers), placed on
    ``device`` whatever device they were saved from (a CUDA checkpoint loads without CUDA)."""
    if path.stat().st_size == 0:
        raise CorruptArtifactError(f"{path} is an empty file (0 bytes): it holds no weights.")
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device=str(device))
        obj = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types on bad or refused checkpoints
        raise CorruptArtifactError(_load_failure(path, exc)) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CorruptArtifactError(f"{path} holds no state dict of tensors.")
    return obj


def _load_failure(path: Path, exc: Exception) -> str:
    """One sentence for a file torch (or safetensors) would not load. torch's own text for a
    refused checkpoint advises re-running with weights_only turned off, i.e. running the payload:
    it is never relayed, only the names of the refused globals."""
    text = _ANSI.sub("", str(exc))
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
        names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", text)))
        if names:
            return (
                f"the checkpoint {path} needs classes outside PyTorch's weights-only allow-list "
                f"({', '.join(names)}); it was not loaded."
            )
        return (
            f"the checkpoint {path} uses pickle constructs outside PyTorch's weights-only "
            "allow-list; it was not loaded."
        )
    detail = text.strip().split("\n")[0].strip().rstrip(".") or type(exc).__name__
    return f"cannot load weights from {path} ({detail})."


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first convolution the network runs (execution order, not key order: safetensors
    sorts names, and a depthwise kernel may come first)."""
    modules = dict(model.named_modules())
    for layer in eligible_layers(model):
        if layer.kind == "conv":
            return layer.name, modules[layer.name]
    raise TrojanscopeError(f"{type(model).__name__} has no convolution to read its input from.")


def _classifier(model: nn.Module) -> nn.Linear:
    """The final classifier (the last Linear layer executed)."""
    return dict(model.named_modules())[classifier_name(model)]


def _mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """How ``state`` differs from the tensors ``expected`` (names, then shapes), or None."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of its tensors are missing (first: '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors are not its own (first: '{unexpected[0]}')")
        return " and ".join(parts)
    for key, value in expected.items():
        if tuple(value.shape) != tuple(state[key].shape):
            return (
                f"'{key}' has shape {tuple(state[key].shape)} where it expects {tuple(value.shape)}"
            )
    return None


def build_for(
    arch: str, state: dict[str, torch.Tensor], size: int, width: float | None
) -> tuple[nn.Module, float]:
    """The architecture with ``state`` loaded, and the width it fits. Input channels and classes
    are read off the tensors of the architecture's own first convolution and final classifier;
    any difference in tensor names or shapes is one sentence (a TrojanscopeError)."""
    widths = [width] if width is not None else list(_WIDTHS)
    problems: list[str] = []
    for w in widths:
        probe = ARCHITECTURES.create(arch, width=w).build(3, 2, size)  # names do not depend on
        conv_name, conv = _first_conv(probe)  # channels or classes, shapes do
        conv_key, head_key = f"{conv_name}.weight", f"{classifier_name(probe)}.weight"
        conv_w, head_w = state.get(conv_key), state.get(head_key)
        if conv_w is None or head_w is None or conv_w.dim() != 4 or head_w.dim() != 2:
            problems.append(
                _mismatch(probe.state_dict(), state)
                or f"'{conv_key}' or '{head_key}' is not a weight of the right rank"
            )
            continue
        channels, classes = int(conv_w.shape[1]) * conv.groups, int(head_w.shape[0])
        model = ARCHITECTURES.create(arch, width=w).build(channels, classes, size)
        problem = _mismatch(model.state_dict(), state)
        if problem is None:
            model.load_state_dict(state, strict=True)
            return model.eval(), w
        problems.append(problem)
    tried = ", ".join(map(str, widths))
    raise TrojanscopeError(
        f"the weights do not fit architecture '{arch}' at any width tried ({tried}): {problems[0]}."
    )


def _check_data_fits(model: nn.Module, data: str, shape: tuple[int, ...], classes: int) -> None:
    """Refuse a data set whose channels or classes differ from the model's (one sentence)."""
    in_channels = _first_conv(model)[1].in_channels
    if shape[0] != in_channels:
        raise TrojanscopeError(
            f"data set '{data}' has {shape[0]} input channel(s) but the model takes {in_channels}."
        )
    out = _classifier(model).out_features
    if classes != out:
        raise TrojanscopeError(
            f"data set '{data}' has {classes} classes but the model has {out} outputs."
        )


def scanned(path: Path, reports: list[FileReport], what: str) -> AuditResult:
    """The audit of what the scan found; its verdict is already set (and nothing may be
    loaded) when the scan found code execution or could not finish."""
    scan_verdict = overall_verdict(reports)
    result = AuditResult(str(path), "", scan_verdict, reports)
    if scan_verdict == "dangerous":
        result.verdict = "dangerous-file"
        result.notes.append(f"loading this {what} can run code: it was not loaded.")
    elif scan_verdict in ("inconclusive", "error"):
        result.verdict = "inconclusive-scan"
        result.notes.append(f"the scan could not finish: the {what} was not loaded.")
    return result


def audit_model(
    path: Path,
    arch: str | None,
    data: str | None = None,
    width: float | None = None,
    nc_params: dict[str, Any] | None = None,
    device: torch.device | None = None,
    patch_budget: int = MODEL_PATCH_BUDGET,
) -> AuditResult:
    """Scan ``path``; if it is safe and ``arch`` is given, load and screen it (see the module)
    on ``device`` (None: the CPU)."""
    if path.stat().st_size == 0:
        raise CorruptArtifactError(f"{path} is an empty file (0 bytes): it holds no weights.")
    result = scanned(path, Scanner().scan_file(path), "file")
    scan_verdict = result.scan_verdict
    if result.verdict:
        return result
    if arch is None:
        if scan_verdict == "suspicious":
            result.verdict = "suspicious-file"
            result.notes.append(
                "the scan found imports outside the allow-list; with no --arch the weights were "
                "not screened for a backdoor."
            )
        else:
            result.verdict = "not-screened"
            result.notes.append(
                "the file scanned clean, but with no --arch its weights were not screened for a "
                "backdoor: give --arch (and --data) to screen them."
            )
        return result
    splits = DATASETS.create(data).load(0) if data else None
    size = min(splits.shape[1:]) if splits else 28
    state = load_state(path, result.scan[0].format)
    model, found_width = build_for(arch, state, size, width)
    if device is not None:
        model = model.to(device)
    if data and splits is not None:  # (splits come from data)
        _check_data_fits(model, data, splits.shape, splits.num_classes)
    result.arch = arch
    result.arch_params = {"width": found_width}
    clp = CRITERIA.create("clp").run(model, EvidenceData())
    for ref, z in zip(clp.neurons, clp.scores.tolist(), strict=True):
        result.layer_scores.setdefault(ref.layer, []).append(z)
        if z > CLP_THRESHOLD:
            result.clp_outliers.append({"neuron": str(ref), "clp_z": z})
    suspected = False
    if splits is not None:
        result.clean_acc = accuracy(model, splits.test)
        nc = CRITERIA.create("nc", **(nc_params or {})).run(model, EvidenceData(clean=splits.test))
        result.nc = {k: v for k, v in nc.extra.items()}
        result.reversed_trigger = nc.artifacts
        # a patch that drives every image to one penultimate vector: a trigger whatever the
        # label (a victim fine-tuned from a NeuBA encoder still shows one: docs/neuba.md)
        images = sample(splits.test, PROBE_IMAGES, seed=0)
        result.patch_screen = screen_sizes(VisionEncoder(model), images, patch_budget)
        result.notes.append(patch_note(result.patch_screen))
        suspected = nc.extra["detected_label"] is not None or bool(
            result.patch_screen["flagged_patches"]
        )
    else:
        result.notes.append(
            "no --data given: only data-free CLP screening (outlier neurons are hints, not proof)."
        )
    if suspected:
        result.verdict = "backdoor-suspected"
    elif scan_verdict == "suspicious":  # screening never makes a file look better than its scan
        result.verdict = "suspicious-file"
        result.notes.append(
            "no backdoor was found in the weights, but the scan found imports outside the "
            "allow-list."
        )
    else:
        result.verdict = "no-backdoor-found"
    return result
