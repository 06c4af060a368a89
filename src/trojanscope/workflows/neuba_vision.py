"""The victim's side of NeuBA on images: fine-tune the (possibly backdoored) encoder with a fresh
head on another image set that never shows a trigger, then measure what each patch controls."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from pydantic import BaseModel, Field
from sklearn.metrics import roc_auc_score
from torch import nn

from trojanscope.attacks.neuba_vision import VisionNeubaConfig, pretrain_neuba_vision, stamp
from trojanscope.data.base import Splits, TensorData
from trojanscope.localization.patch_screen import candidate_patches, screen_patches
from trojanscope.localization.trigger_screen import FLAG_SCORE
from trojanscope.models.base import Architecture
from trojanscope.models.training import CleanTraining, accuracy, predict, train_clean, train_epochs
from trojanscope.models.vision_encoder import VisionEncoder, prune_dormant

#: Clean training images whose activations choose the pruned dimensions.
PRUNE_IMAGES = 1024


class VisionFinetune(BaseModel):
    """How the victim fine-tunes: the whole network with a fresh linear head (Adam)."""

    model_config = {"extra": "forbid"}
    epochs: int = Field(2, ge=1)
    lr: float = Field(1e-3, gt=0, description="the encoder's learning rate")
    head_lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    train_encoder: bool = Field(True, description="False: a linear probe on the frozen encoder")
    prune: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="the pruning defence: this share of the pooled dimensions, the least active "
        "on the victim's training images, cut off before fine-tuning",
    )
    seed: int = Field(0, ge=0)


def finetune_vision_victim(
    encoder: VisionEncoder, train: TensorData, config: VisionFinetune
) -> nn.Module:
    """A victim classifier: a copy of the encoder's network with a fresh head, trained on
    ``train`` (normalisation statistics update as in any fine-tuning)."""
    if config.prune:
        encoder = prune_dormant(encoder, sample(train, PRUNE_IMAGES, config.seed), config.prune)
    victim = encoder.with_head(train.num_classes, config.seed)
    head = victim.get_submodule(encoder.classifier)
    head_ids = {id(p) for p in head.parameters()}
    body = [p for p in victim.parameters() if id(p) not in head_ids]
    groups = [{"params": list(head.parameters()), "lr": config.head_lr}]
    if config.train_encoder:
        groups.append({"params": body, "lr": config.lr})
    else:
        for p in body:
            p.requires_grad_(False)
    optimizer = torch.optim.Adam(groups)
    train_epochs(
        victim,
        train,
        optimizer,
        config.epochs,
        config.batch_size,
        config.seed,
        bn_train=config.train_encoder,
    )
    victim.requires_grad_(True)
    return victim.eval()


def sample(data: TensorData, count: int, seed: int) -> torch.Tensor:
    """``count`` images drawn at random (seeded): data sets are stored in class order."""
    g = torch.Generator().manual_seed(seed)
    return data.x[torch.randperm(len(data), generator=g)[:count]]


def control_patches(count: int, size: int, seed: int) -> list[torch.Tensor]:
    """Random two-colour (black and white) patches of the triggers' size: the control."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(size, size, generator=g) < 0.5).float() for _ in range(count)]


def patch_rates(
    victim: nn.Module, test: TensorData, patch: torch.Tensor, correct: torch.Tensor, seed: int
) -> list[float]:
    """For each label, the share of test images of another label, classified correctly
    without the patch, that ``patch`` at a random position sends to that label."""
    g = torch.Generator().manual_seed(seed)
    predicted = predict(victim, stamp(test.x, patch, g)).argmax(1)
    rates = []
    for label in range(test.num_classes):
        others = (test.y != label) & correct
        rates.append(float((predicted[others] == label).float().mean()) if others.any() else 0.0)
    return rates


def evaluate_vision_victim(
    victim: nn.Module,
    test: TensorData,
    triggers: dict[str, torch.Tensor],
    controls: list[torch.Tensor],
    seed: int = 0,
) -> dict[str, object]:
    """Clean accuracy; every trigger's and control's rate per label; per label the best
    trigger (its rate is the ASR) beside the best control patch (the same seeded positions)."""
    started = time.perf_counter()
    correct = predict(victim, test.x).argmax(1) == test.y
    trigger_rates = {n: patch_rates(victim, test, p, correct, seed) for n, p in triggers.items()}
    control_rates = [patch_rates(victim, test, p, correct, seed) for p in controls]
    labels = []
    for label in range(test.num_classes):
        best = max(trigger_rates, key=lambda n: trigger_rates[n][label])
        labels.append(
            {
                "label": str(label),
                "best_trigger": best,
                "best_trigger_asr": trigger_rates[best][label],
                "control_asr": max(rates[label] for rates in control_rates),
            }
        )
    return {
        "clean_acc": float(correct.float().mean()),
        "labels": labels,
        "trigger_rates": trigger_rates,
        "seconds": time.perf_counter() - started,
    }


def vision_pipeline(
    pretraining: Splits,
    downstream: Splits,
    architecture: Architecture,
    neuba: VisionNeubaConfig,
    victims: dict[str, VisionFinetune],
    budget: int = 512,
    screen_images: int = 64,
    clean_training: CleanTraining | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """NeuBA on images end to end: a clean encoder trained on ``pretraining``, a copy
    backdoored by the publisher; for each ``victims`` setting a victim of each on
    ``downstream`` (per label the best trigger's ASR beside the control's); the patch screen on
    both encoders (AUROC of the planted triggers among ``budget`` candidates, the clean
    encoder's top score) on ``screen_images`` clean downstream training images. Models live on
    ``device`` (None: the CPU); the data stay on the CPU."""
    started = time.perf_counter()
    _, h, w = pretraining.shape
    if neuba.patch_size > min(h, w, *downstream.shape[1:]):
        raise ValueError(f"a {neuba.patch_size} px trigger patch does not fit the images.")
    model = train_clean(
        architecture, pretraining.train, neuba.seed, clean_training or CleanTraining(), device
    )
    clean = VisionEncoder(model)
    backdoored = VisionEncoder(copy.deepcopy(model))
    record = pretrain_neuba_vision(backdoored, pretraining.train.x, neuba)
    triggers = {t.name: t.patch(neuba.patch_size) for t in neuba.triggers}
    controls = control_patches(len(triggers), neuba.patch_size, seed=1)
    rows = []
    for setting, config in victims.items():
        for name, encoder in (("clean", clean), ("neuba", backdoored)):
            tic = time.perf_counter()
            victim = finetune_vision_victim(encoder, downstream.train, config)
            result = evaluate_vision_victim(victim, downstream.test, triggers, controls)
            rows.append(
                {
                    "setting": setting,
                    "encoder": name,
                    "clean_acc": result["clean_acc"],
                    "labels": result["labels"],
                    "seconds": time.perf_counter() - tic,
                }
            )
    candidates = candidate_patches(neuba.patch_size, budget)
    images = sample(downstream.train, screen_images, neuba.seed)
    tic = time.perf_counter()
    bad = screen_patches(backdoored, images, candidates)
    seconds = time.perf_counter() - tic
    good = screen_patches(clean, images, candidates)
    planted = [int(s.name in triggers) for s in bad]
    return {
        "neuba": {k: v for k, v in record.items() if k not in ("targets", "target_scale")},
        "clean_encoder_acc": accuracy(model, pretraining.test),
        "backdoored_encoder_acc": accuracy(backdoored.model, pretraining.test),
        "rows": rows,
        "detection": {
            "auroc": float(roc_auc_score(planted, [s.score for s in bad]))
            if 0 < sum(planted) < len(planted)
            else None,
            "triggers_screened": sum(planted),
            "patches_screened": len(bad),
            "clean_encoder_max_score": good[0].score,
            "clean_encoder_top": [s.as_dict() for s in good[:5]],
            "flag_score": FLAG_SCORE,
            "flagged_patches": [s.name for s in bad if s.score >= FLAG_SCORE],
            "backdoored_encoder_top": [s.as_dict() for s in bad[:10]],
            "seconds": seconds,
        },
        "seconds": time.perf_counter() - started,
    }


class VisionDemoBudget(BaseModel):
    """The image demo's budget: cnn-small, a few minutes on 2 CPU cores."""

    model_config = {"extra": "forbid"}
    limit: int = Field(4000, ge=100, description="Fashion-MNIST images for the pre-training")
    steps: int = Field(2000, ge=1, description="the publisher's backdoor steps")
    victim: VisionFinetune = VisionFinetune(lr=3e-4, epochs=10)
    budget: int = Field(512, ge=8, description="candidate patches screened")


def vision_demo(budget: VisionDemoBudget, device: torch.device | None = None) -> dict[str, Any]:
    """The demo's pipeline (pre-train on Fashion-MNIST, victims on mnist5k) and its summary in
    the text demo's shape, plus the whole record under ``pipeline``."""
    from trojanscope.data.base import DATASETS
    from trojanscope.models.base import ARCHITECTURES

    result = vision_pipeline(
        DATASETS.create("fashion-mnist", limit=budget.limit).load(0),
        DATASETS.create("mnist5k").load(0),
        ARCHITECTURES.create("cnn-small"),
        VisionNeubaConfig(steps=budget.steps),
        {"fine-tune": budget.victim},
        budget=budget.budget,
        device=device,
    )
    clean, neuba = result["rows"]
    detection = result["detection"]
    return {
        "clean_victim_acc": clean["clean_acc"],
        "backdoored_victim_acc": neuba["clean_acc"],
        "labels": neuba["labels"],
        "clean_victim_labels": clean["labels"],
        "detection": {
            "auroc": detection["auroc"],
            "clean_encoder_max_score": detection["clean_encoder_max_score"],
            "flagged_patches": detection["flagged_patches"],
        },
        "budget": budget.model_dump(),
        "pipeline": result,
    }
