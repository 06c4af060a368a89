"""`trojanscope audit ENCODER_DIR` on an image encoder folder: scan it, rebuild it from its
safetensors weights, and screen two-colour patch candidates of several sizes for task-agnostic
(NeuBA-style) triggers on clean images, without any downstream task."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from trojanscope.data.base import DATASETS
from trojanscope.errors import TrojanscopeError
from trojanscope.localization.patch_screen import PatchScore, candidate_patches, screen_patches
from trojanscope.localization.trigger_screen import FLAG_SCORE
from trojanscope.models.vision_encoder import VisionEncoder
from trojanscope.report.audit_result import AuditResult
from trojanscope.scan.scanner import Scanner
from trojanscope.workflows.audit import scanned
from trojanscope.workflows.neuba_vision import sample
from trojanscope.workflows.neuba_vision_store import ENCODER, load_image_model, load_splits

#: Candidate sizes: a trigger shows at its own size and at larger ones (a larger candidate
#: contains it); on a clean cnn-small the top score grows with the size (0.05 at 4 px, 0.25 at
#: 6, 0.52 at 8: docs/neuba.md), so the screen stops at 6.
PATCH_SIZES = (3, 4, 6)
#: Candidates per size when the budget is left to its default.
DEFAULT_PATCH_BUDGET = 512
#: Clean images every candidate is stamped on.
PROBE_IMAGES = 64


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
    ``budget`` candidates of each size in ``PATCH_SIZES`` (None: the default budget)."""
    result = scanned(path, Scanner().scan_directory(path), "folder")
    scan_verdict = result.scan_verdict
    if result.verdict:
        return result
    model, record = load_image_model(path, ENCODER, device or torch.device("cpu"), scan=False)
    encoder = VisionEncoder(model)
    images = _probe_images(data, record, path)
    per_size = budget or DEFAULT_PATCH_BUDGET
    started = time.perf_counter()
    scores: list[PatchScore] = []
    size_limit = min(images.shape[2:])
    sizes = [s for s in PATCH_SIZES if s <= size_limit]
    for size in sizes:
        found = screen_patches(encoder, images, candidate_patches(size, per_size))
        scores += [PatchScore(f"{size}px {s.name}", s.score, s.consistency, s.shift) for s in found]
    scores.sort(key=lambda s: -s.score)
    flagged = [s for s in scores if s.score >= FLAG_SCORE]
    result.arch = str(record["arch"])
    result.arch_params = {"width": record["width"], "dim": encoder.dim, "pooling": "penultimate"}
    result.patch_screen = {
        "patches_screened": len(scores),
        "sizes": sizes,
        "per_size": per_size,
        "probe_images": len(images),
        "flag_score": FLAG_SCORE,
        "seconds": time.perf_counter() - started,
        "flagged_patches": [s.name for s in flagged],
        "top_patches": [s.as_dict() for s in scores[:20]],
    }
    if flagged:
        result.verdict = "backdoor-suspected"
        result.notes.append(
            f"{len(flagged)} patch(es) drive every probe image to nearly the same pooled "
            "output, as a task-agnostic (NeuBA-style) trigger does."
        )
    elif scan_verdict == "suspicious":
        result.verdict = "suspicious-file"
    else:
        result.verdict = "no-backdoor-found"
        result.notes.append(
            f"two-colour patches of {', '.join(map(str, sizes))} px were screened; a trigger "
            "outside that family shows only as far as it resembles one."
        )
    return result
