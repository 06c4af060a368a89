"""One defect from a clean model: order, quantity, masked injection, acceptance, ground truth."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from pydantic import BaseModel, Field
from torch import nn

from trojanscope.attacks.base import Attack
from trojanscope.data.base import Splits, TensorData
from trojanscope.data.poison import PoisonedView
from trojanscope.injection.acceptance import Acceptance
from trojanscope.injection.contribution import clean_contributions
from trojanscope.injection.groundtruth import InfectedNeuron, ground_truth
from trojanscope.injection.injector import masked_training
from trojanscope.injection.ownership import Edges, trainable_masks
from trojanscope.injection.quantity import Order, Quantity, select_infected
from trojanscope.injection.subnet import subnet_replacement
from trojanscope.models.training import accuracy
from trojanscope.neurons import NeuronRef, mask_neurons


class InjectionConfig(BaseModel):
    """Everything that determines an injection besides the attack, the clean model and the seed."""

    model_config = {"extra": "forbid"}
    quantity: Quantity = Quantity()
    order: Order = "least"
    edges: Edges = "fan-in+fan-out"
    lr: float = Field(0.005, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_epochs: int = Field(30, ge=1, le=1000)
    batch_size: int = Field(128, ge=1)
    calibration_size: int = Field(512, ge=1, description="clean samples for the order rule")
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    asr_goal: float = Field(0.97, ge=0.0, le=1.0, description="early stop on validation ASR")
    acceptance: Acceptance = Acceptance()


@dataclass
class DefectOutcome:
    model: nn.Module
    infected: list[InfectedNeuron]
    status: str  # "accepted" or "rejected"
    reason: str | None
    clean_acc_before: float
    clean_acc: float
    asr: float
    masked_asr: float
    masked_clean_acc: float  # clean accuracy with the infected neurons masked
    asr_before: float  # the clean model's rate of target predictions on triggered victims
    epochs: int
    seconds: float
    poisoned_test: PoisonedView

    @property
    def acc_drop(self) -> float:
        return self.clean_acc_before - self.clean_acc


def _split_validation(
    data: TensorData, fraction: float, seed: int
) -> tuple[TensorData, TensorData]:
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=g)
    n_val = max(1, int(fraction * len(data)))
    return data.subset(torch.sort(order[n_val:]).values), data.subset(
        torch.sort(order[:n_val]).values
    )


def _poison_and_train(
    clean: nn.Module,
    infected: list[NeuronRef],
    attack: Attack,
    fit: TensorData,
    val: TensorData,
    config: InjectionConfig,
    seed: int,
) -> tuple[nn.Module, int]:
    """Masked-gradient training on clean data mixed with poisoned data (rule 3)."""
    masks = trainable_masks(clean, infected, attack.injection_edges or config.edges)
    mixed = attack.poison_train(fit).materialize()
    val_poison = attack.poison_test(val)
    val_acc_before = accuracy(clean, val)

    def done(model: nn.Module, _epoch: int) -> bool:
        return (
            attack_success_rate(model, val_poison) >= config.asr_goal
            and val_acc_before - accuracy(model, val) <= config.acceptance.max_acc_drop
        )

    return masked_training(
        clean,
        masks,
        mixed,
        config.lr,
        config.weight_decay,
        config.max_epochs,
        config.batch_size,
        seed,
        done,
    )


def attack_success_rate(model: nn.Module, view: PoisonedView) -> float:
    """Fraction of triggered victims classified as the attacker's target."""
    return accuracy(model, view.poisoned())


def inject_defect(
    clean: nn.Module,
    splits: Splits,
    attack: Attack,
    config: InjectionConfig,
    seed: int,
) -> DefectOutcome:
    """Plant ``attack`` into the neurons chosen by the rules; never modifies ``clean``."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    attack.validate(splits.shape, splits.num_classes)
    g = torch.Generator().manual_seed(seed)
    calib_idx = torch.randperm(len(splits.train), generator=g)[: config.calibration_size]
    contributions = clean_contributions(clean, splits.train.subset(calib_idx))
    infected = select_infected(clean, contributions, config.quantity, config.order, seed)
    attack.prepare(clean, infected, splits.train.subset(calib_idx))
    fit, val = _split_validation(splits.train, config.validation_fraction, seed)
    if attack.injection_edges == "subnet":
        model, epochs = subnet_replacement(
            clean,
            infected,
            attack,
            fit,
            val,
            config.lr,
            config.max_epochs,
            config.batch_size,
            seed,
        )
    else:
        model, epochs = _poison_and_train(clean, infected, attack, fit, val, config, seed)
    test_poison = attack.poison_test(splits.test)
    clean_acc_before = accuracy(clean, splits.test)
    clean_acc = accuracy(model, splits.test)
    asr = attack_success_rate(model, test_poison)
    with mask_neurons(model, infected):
        masked_asr = attack_success_rate(model, test_poison)
        masked_clean_acc = accuracy(model, splits.test)
    reason = config.acceptance.verdict(
        clean_acc_before, clean_acc, asr, masked_asr, masked_clean_acc
    )
    victims = splits.test.subset(test_poison.indices)
    truth = ground_truth(model, infected, victims, test_poison.poisoned())
    return DefectOutcome(
        model=model,
        infected=truth,
        status="rejected" if reason else "accepted",
        reason=reason,
        clean_acc_before=clean_acc_before,
        clean_acc=clean_acc,
        asr=asr,
        masked_asr=masked_asr,
        masked_clean_acc=masked_clean_acc,
        asr_before=attack_success_rate(clean, test_poison),
        epochs=epochs,
        seconds=time.perf_counter() - started,
        poisoned_test=test_poison,
    )
