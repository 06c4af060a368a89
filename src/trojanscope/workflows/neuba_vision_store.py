"""NeuBA on images command by command, on folders: the publisher's pre-trained (and
backdoored) image encoder, the victim's fine-tuned classifier, and their evaluation.

A folder holds ``model.safetensors`` (the whole network: an encoder keeps the head it was
pre-trained with, a victim its own) and ``trojanscope-encoder.json``: its ``kind``, the
architecture, width and input shape to rebuild it, and what was done to it. Folders are
scanned before they are read and rebuilt from tensors only (nothing is unpickled).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import save_file
from torch import nn

from trojanscope.attacks.neuba_vision import Checkerboard, VisionNeubaConfig, pretrain_neuba_vision
from trojanscope.data.base import DATASETS, Splits
from trojanscope.device import CPU
from trojanscope.errors import TrojanscopeError
from trojanscope.fileio import replace_dir_atomic
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.text_encoder import RECORD, json_object
from trojanscope.models.training import CleanTraining, accuracy, train_clean
from trojanscope.models.vision_encoder import PrunedPooling, VisionEncoder
from trojanscope.workflows.audit import build_for, load_state
from trojanscope.workflows.neuba_pipeline import refuse_unsafe_folder
from trojanscope.workflows.neuba_vision import (
    VisionFinetune,
    control_patches,
    evaluate_vision_victim,
    finetune_vision_victim,
)

WEIGHTS = "model.safetensors"
ENCODER = "image-encoder"
VICTIM = "image-victim"
#: Seed of the random control patches (the pipeline's, so folders and demo agree).
CONTROL_SEED = 1


def load_splits(dataset: str, limit: int | None) -> Splits:
    """A registered image data set's seed-0 splits, at most ``limit`` images when given."""
    return DATASETS.create(dataset, **({"limit": limit} if limit else {})).load(0)


def read_record(path: Path, kind: str | None = None) -> dict[str, Any]:
    """The folder's record (bounded JSON); one sentence when it is missing, unreadable or of
    another kind than ``kind``."""
    try:
        record = json_object(path / RECORD)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TrojanscopeError(f"{path / RECORD} is not a readable record ({exc}).") from None
    found = record.get("kind")
    if kind is not None and found != kind:
        what = {ENCODER: "an image encoder folder", VICTIM: "an image victim folder"}[kind]
        raise TrojanscopeError(
            f"{path} is not {what} written by trojanscope neuba (its record says kind {found!r})."
        )
    return record


def _scan_first(path: Path) -> None:
    if not path.is_dir():
        raise TrojanscopeError(f"{path} is not a folder.")
    refuse_unsafe_folder(path)


def _geometry(record: dict[str, Any], path: Path) -> tuple[str, float, tuple[int, int, int]]:
    """The architecture, width and input shape the record names (validated: it is data)."""
    arch, width, shape = record.get("arch"), record.get("width"), record.get("input_shape")
    if (
        isinstance(arch, str)
        and isinstance(width, int | float)
        and isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(v, int) and 0 < v <= 4096 for v in shape)
    ):
        return arch, float(width), (shape[0], shape[1], shape[2])
    raise TrojanscopeError(f"{path / RECORD} lacks a valid arch, width and input_shape.")


def load_image_model(
    path: Path, kind: str, device: torch.device = CPU, scan: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """Scan (unless the caller just did), then rebuild the folder's network from its safetensors
    weights and record. A pruned victim gets its ``PrunedPooling`` back (the kept dimensions
    are a stored buffer)."""
    if scan:
        _scan_first(path)
    record = read_record(path, kind)
    arch, width, shape = _geometry(record, path)
    if not (path / WEIGHTS).is_file():
        raise TrojanscopeError(f"{path} has no {WEIGHTS}; trojanscope does not load pickled ones.")
    state = load_state(path / WEIGHTS, "safetensors")
    keep_keys = [k for k in state if k.endswith(".keep")]
    keep = None
    if keep_keys:  # a pruned victim: '<classifier>.head.*' and '<classifier>.keep'
        prefix = keep_keys[0][: -len("keep")]
        keep = state.pop(keep_keys[0])
        state = {
            (k[: len(prefix)] + k[len(prefix) + len("head.") :] if k.startswith(prefix) else k): v
            for k, v in state.items()
        }
    model, _ = build_for(arch, state, min(shape[1:]), width)
    if keep is not None:
        encoder = VisionEncoder(model)
        head = model.get_submodule(encoder.classifier)
        assert isinstance(head, nn.Linear)
        if keep.shape != (encoder.dim,):
            raise TrojanscopeError(f"{path / WEIGHTS}: the pruning mask does not fit the head.")
        model.set_submodule(encoder.classifier, PrunedPooling(keep, head))
    return model.to(device).eval(), record


def _save(out: Path, model: nn.Module, record: dict[str, Any]) -> None:
    import json

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with replace_dir_atomic(out) as tmp:
        save_file(state, str(tmp / WEIGHTS))
        (tmp / RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")


def pretrain_vision_to(
    out: Path,
    arch: str,
    width: float,
    dataset: str,
    limit: int | None,
    config: VisionNeubaConfig,
    device: torch.device,
    clean_out: Path | None = None,
    training: CleanTraining | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Pre-train ``arch`` on ``dataset`` (the clean encoder, written to ``clean_out`` when
    given), plant NeuBA in a copy and write it to ``out``; returns its record."""
    splits = load_splits(dataset, limit)
    if config.patch_size > min(splits.shape[1:]):
        raise TrojanscopeError(
            f"a {config.patch_size} px trigger does not fit {dataset}'s "
            f"{splits.shape[1]}x{splits.shape[2]} images."
        )
    geometry = {"arch": arch, "width": width, "input_shape": list(splits.shape)}
    pretraining = {"dataset": dataset, "limit": limit}
    if say is not None:
        say(f"pre-training {arch} on {dataset} ({len(splits.train)} images)")
    model = train_clean(
        ARCHITECTURES.create(arch, width=width),
        splits.train,
        config.seed,
        training or CleanTraining(),
        device,
    )
    clean_acc = accuracy(model, splits.test)
    if clean_out is not None:
        _save(
            clean_out,
            model,
            {"kind": ENCODER, **geometry, "pretraining": {**pretraining, "acc": clean_acc}},
        )
    if say is not None:
        say(f"clean accuracy {clean_acc:.3f}; planting the backdoor ({config.steps} steps)")
    encoder = VisionEncoder(copy.deepcopy(model))
    neuba = pretrain_neuba_vision(encoder, splits.train.x, config)
    record = {
        "kind": ENCODER,
        **geometry,
        "pretraining": {
            **pretraining,
            "acc": accuracy(encoder.model, splits.test),
            "clean_acc": clean_acc,
        },
        "neuba": neuba,
    }
    _save(out, encoder.model, record)
    return record


def task_key(dataset: str, limit: int | None, splits: Splits) -> dict[str, Any]:
    """What identifies the victim's task and its test split (evaluate checks it)."""
    test = splits.test
    digest = hashlib.sha256(test.x.numpy().tobytes() + test.y.numpy().tobytes()).hexdigest()
    return {"dataset": dataset, "limit": limit, "labels": test.num_classes, "test_sha256": digest}


def _fits(record: dict[str, Any], splits: Splits, dataset: str, path: Path) -> None:
    shape = tuple(record.get("input_shape") or ())
    if shape != splits.shape:
        raise TrojanscopeError(
            f"{path} takes {shape} images but data set '{dataset}' has {splits.shape}."
        )


def finetune_vision_to(
    encoder_dir: Path,
    out: Path,
    dataset: str,
    limit: int | None,
    config: VisionFinetune,
    device: torch.device,
) -> float:
    """Fine-tune the folder's encoder as the victim would (fresh head, whole network; the
    pruning defence first when ``config.prune``); write the victim; its test accuracy."""
    model, record = load_image_model(encoder_dir, ENCODER, device)
    splits = load_splits(dataset, limit)
    _fits(record, splits, dataset, encoder_dir)
    victim = finetune_vision_victim(VisionEncoder(model), splits.train, config)
    acc = accuracy(victim, splits.test)
    _save(
        out,
        victim,
        {
            "kind": VICTIM,
            "arch": record["arch"],
            "width": record["width"],
            "input_shape": record["input_shape"],
            "encoder": str(encoder_dir),
            "task": task_key(dataset, limit, splits),
            "finetune": config.model_dump(),
            "test_acc": acc,
        },
    )
    return acc


def planted_triggers(encoder_dir: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The checkerboards the NeuBA record of ``encoder_dir`` names, as patches, and their size."""
    neuba = read_record(encoder_dir, ENCODER).get("neuba")
    try:
        if not isinstance(neuba, dict):
            raise ValueError("no NeuBA record")
        config = VisionNeubaConfig(
            triggers=[Checkerboard.model_validate(t) for t in neuba["triggers"]],
            patch_size=neuba["patch_size"],
        )
    except (KeyError, TypeError, ValueError, ValidationError):
        raise TrojanscopeError(
            f"{encoder_dir} holds no NeuBA record (written by neuba vision-pretrain)."
        ) from None
    return {t.name: t.patch(config.patch_size) for t in config.triggers}, config.patch_size


def evaluate_vision_from(
    victim_dir: Path,
    encoder_dir: Path,
    clean_victim_dir: Path | None,
    device: torch.device,
) -> dict[str, Any]:
    """Per label, the best planted trigger's rate on the victim's test split beside random
    black-and-white patches of the same size (the control); the clean victim's accuracy."""
    triggers, size = planted_triggers(encoder_dir)
    dirs = [victim_dir] + ([clean_victim_dir] if clean_victim_dir is not None else [])
    victims = [load_image_model(d, VICTIM, device) for d in dirs]
    task = victims[0][1].get("task")
    if not isinstance(task, dict) or not isinstance(task.get("dataset"), str):
        raise TrojanscopeError(f"{victim_dir}'s record names no task.")
    splits = load_splits(task["dataset"], task.get("limit"))
    for folder, (_, record) in zip(dirs, victims, strict=True):
        if record.get("task") != task_key(task["dataset"], task.get("limit"), splits):
            raise TrojanscopeError(
                f"{folder} was fine-tuned on another task or split than {victim_dir} "
                f"({task['dataset']}, limit {task.get('limit')}), or the data set changed."
            )
    controls = control_patches(len(triggers), size, seed=CONTROL_SEED)
    result = evaluate_vision_victim(victims[0][0], splits.test, triggers, controls)
    return {
        "clean_victim_acc": accuracy(victims[1][0], splits.test) if len(victims) > 1 else None,
        "backdoored_victim_acc": result["clean_acc"],
        "labels": result["labels"],
        "trigger_rates": result["trigger_rates"],
        "task": task,
    }
