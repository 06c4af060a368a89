"""`trojanscope audit ENCODER_DIR` on an image encoder folder: scan it, rebuild it from its
safetensors weights, and screen two-colour patch candidates of several sizes for task-agnostic
(NeuBA-style) triggers on clean images, without any downstream task."""

from __future__ import annotations

from pathlib import Path

import torch

from trojanscope.data.base import DATASETS
from trojanscope.device import CPU
from trojanscope.errors import TrojanscopeError
from trojanscope.localization.patch_screen import PROBE_IMAGES, patch_note, screen_sizes
from trojanscope.models.vision_encoder import VisionEncoder
from trojanscope.report.audit_result import AuditResult
from trojanscope.scan.scanner import Scanner
from trojanscope.workflows.audit import scanned
from trojanscope.workflows.neuba_vision import sample
from trojanscope.workflows.neuba_vision_store import ENCODER, load_image_model, load_splits

#: Candidates per size when the budget is left to its default.
DEFAULT_PATCH_BUDGET = 512


def _probe_images(data: str | None, record: dict[str, object], path: Path) -> torch.Tensor:
    """Clean images of the folder's input shape: ``data``, else the data set it was
    pre-trained on when that is registered here (the record is data: only a name to look up)."""
    pretraining = record.get("pretraining")
    name = data or (pretraining.get("dataset") if isinstance(pretraining, dict) else None)
    if not isinstance(name, str) or name not in DATASETS.names():
        raise TrojanscopeError(
            f"{path} names no registered data set to draw clean images from; give --data."
        )
    splits = load_splits(name, None)
    if list(splits.shape) != record.get("input_shape"):
        raise TrojanscopeError(
            f"data set '{name}' has {splits.shape} images but {path} takes "
            f"{record.get('input_shape')}."
        )
    return sample(splits.train, PROBE_IMAGES, seed=0)


def audit_vision_encoder(
    path: Path,
    budget: int | None = DEFAULT_PATCH_BUDGET,
    data: str | None = None,
    device: torch.device | None = None,
) -> AuditResult:
    """Scan the folder; if nothing is dangerous or unread, rebuild the encoder and screen
    ``budget`` candidates of each size of ``PATCH_SIZES`` (None: the default budget)."""
    result = scanned(path, Scanner().scan_directory(path), "folder")
    scan_verdict = result.scan_verdict
    if result.verdict:
        return result
    model, record = load_image_model(path, ENCODER, device or CPU, scan=False)
    encoder = VisionEncoder(model)
    images = _probe_images(data, record, path)
    result.patch_screen = screen_sizes(encoder, images, budget or DEFAULT_PATCH_BUDGET)
    result.arch = str(record["arch"])
    result.arch_params = {"width": record["width"], "dim": encoder.dim, "pooling": "penultimate"}
    result.notes.append(patch_note(result.patch_screen))
    if result.patch_screen["flagged_patches"]:
        result.verdict = "backdoor-suspected"
    elif scan_verdict == "suspicious":
        result.verdict = "suspicious-file"
    else:
        result.verdict = "no-backdoor-found"
    return result
