"""`trojanscope audit`: scan a model file, load it safely, screen it for a backdoor.

Order matters: the file is scanned first and a dangerous (or inconclusive) scan stops the audit
before anything is loaded; weights are then read with safetensors or ``torch.load(weights_only=
True)``, never by unpickling arbitrary objects. Screening: data-free CLP outlier neurons per
layer, and with clean data Neural Cleanse's label anomaly index (the reversed trigger is kept).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trojanscope.data.base import DATASETS
from trojanscope.errors import CorruptArtifactError, TrojanscopeError
from trojanscope.localization.base import CRITERIA, EvidenceData
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import accuracy
from trojanscope.scan.findings import FileReport, overall_verdict
from trojanscope.scan.scanner import Scanner

#: CLP flags channels whose standardised Lipschitz bound exceeds this (the CLP paper's u = 3).
CLP_THRESHOLD = 3.0
_WIDTHS = (1.0, 0.5, 0.25, 0.125, 2.0, 0.75)


@dataclass
class AuditResult:
    model: str
    verdict: str  # dangerous-file, inconclusive-scan, backdoor-suspected, no-backdoor-found, ...
    scan_verdict: str
    scan: list[FileReport]
    arch: str | None = None
    arch_params: dict[str, Any] = field(default_factory=dict)
    clean_acc: float | None = None
    clp_outliers: list[dict[str, Any]] = field(default_factory=list)
    layer_scores: dict[str, list[float]] = field(default_factory=dict)
    nc: dict[str, Any] | None = None
    reversed_trigger: dict[str, torch.Tensor] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return {"no-backdoor-found": 0, "inconclusive-scan": 3}.get(self.verdict, 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "scan_verdict": self.scan_verdict,
            "scan": [r.as_dict() for r in self.scan],
            "arch": self.arch,
            "arch_params": self.arch_params,
            "clean_acc": self.clean_acc,
            "clp_outliers": self.clp_outliers,
            "nc": self.nc,
            "notes": self.notes,
        }


def load_state(path: Path, fmt: str) -> dict[str, torch.Tensor]:
    """The tensors of a scanned model file: safetensors, or a torch checkpoint read with
    ``weights_only=True`` (unwrapping the usual {"state_dict": ...} containers)."""
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on bad or refused checkpoints
        raise CorruptArtifactError(
            f"cannot load weights from {path}: {exc}".split("\n")[0]
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CorruptArtifactError(f"{path} holds no state dict of tensors.")
    return obj


def build_for(
    arch: str, state: dict[str, torch.Tensor], size: int, width: float | None
) -> nn.Module:
    """The architecture with ``state`` loaded; input channels, classes and width inferred."""
    convs = [v for v in state.values() if v.dim() == 4]
    linears = [v for k, v in state.items() if v.dim() == 2 and k.endswith("weight")]
    if not convs or not linears:
        raise TrojanscopeError(
            f"the weights do not look like a '{arch}' network (no conv or linear)."
        )
    # Key order is not reliable (safetensors sorts names): try every plausible shape.
    channels = sorted({int(v.shape[1]) for v in convs} & {1, 3}) or [int(convs[0].shape[1])]
    classes = sorted({int(v.shape[0]) for v in linears})
    for w in [width] if width is not None else _WIDTHS:
        for c in channels:
            for k in classes:
                model = ARCHITECTURES.create(arch, width=w).build(c, k, size)
                try:
                    model.load_state_dict(state, strict=True)
                except RuntimeError:
                    continue
                return model.eval(), w
    raise TrojanscopeError(
        f"the weights do not fit architecture '{arch}' at any width tried "
        f"({', '.join(map(str, [width] if width is not None else _WIDTHS))})."
    )


def audit_model(
    path: Path,
    arch: str | None,
    data: str | None = None,
    width: float | None = None,
    nc_params: dict[str, Any] | None = None,
) -> AuditResult:
    reports = Scanner().scan_file(path)
    scan_verdict = overall_verdict(reports)
    result = AuditResult(str(path), "", scan_verdict, reports)
    if scan_verdict == "dangerous":
        result.verdict = "dangerous-file"
        result.notes.append("loading this file can run code: it was not loaded.")
        return result
    if scan_verdict in ("inconclusive", "error"):
        result.verdict = "inconclusive-scan"
        result.notes.append("the scan could not finish: the file was not loaded.")
        return result
    if arch is None:
        result.verdict = "scanned-only"
        result.notes.append("no --arch given: the weights were not screened for a backdoor.")
        return result
    splits = DATASETS.create(data).load(0) if data else None
    size = min(splits.shape[1:]) if splits else 28
    state = load_state(path, reports[0].format)
    model, found_width = build_for(arch, state, size, width)
    result.arch = arch
    result.arch_params = {"width": found_width}
    clp = CRITERIA.create("clp").run(model, EvidenceData())
    for ref, z in zip(clp.neurons, clp.scores.tolist(), strict=True):
        result.layer_scores.setdefault(ref.layer, []).append(z)
        if z > CLP_THRESHOLD:
            result.clp_outliers.append({"neuron": str(ref), "clp_z": z})
    suspected = False
    if splits is not None:
        if splits.shape[0] != next(v for v in state.values() if v.dim() == 4).shape[1]:
            raise TrojanscopeError(f"data set '{data}' does not fit the model's input channels.")
        result.clean_acc = accuracy(model, splits.test)
        nc = CRITERIA.create("nc", **(nc_params or {})).run(model, EvidenceData(clean=splits.test))
        result.nc = {k: v for k, v in nc.extra.items()}
        result.reversed_trigger = nc.artifacts
        suspected = nc.extra["detected_label"] is not None
    else:
        result.notes.append(
            "no --data given: only data-free CLP screening (outlier neurons are hints, not proof)."
        )
    result.verdict = "backdoor-suspected" if suspected else "no-backdoor-found"
    return result
