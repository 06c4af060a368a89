"""Repair plug-in base, the repair budget, and before/after evaluation (DER).

A repair takes a defective model, the neurons a criterion ranked most suspicious and the
defender's small clean set, and returns a new model: the original is never modified.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, Field
from torch import nn
from typing_extensions import TypeVar

from trojanscope.data.base import TensorData
from trojanscope.models.training import accuracy
from trojanscope.neurons import NeuronRef, check_neurons
from trojanscope.registry import NoParams, Plugin, Registry


class FineTuneBudget(BaseModel):
    """The clean-data budget of a fine-tuning repair (the same for every method compared)."""

    model_config = {"extra": "forbid"}
    samples: int = Field(500, ge=1, description="Clean training samples the defender holds.")
    epochs: int = Field(10, ge=1, le=1000)
    lr: float = Field(0.005, gt=0, le=1)
    batch_size: int = Field(64, ge=1)
    seed: int = 0


#: A repair's parameter model (a plug-in that names none takes ``NoParams``).
RP_co = TypeVar("RP_co", bound=BaseModel, covariant=True, default=NoParams)


class Repair(Plugin[RP_co]):
    """Implement ``apply``; set ``uses_neurons = False`` for a baseline that ignores them."""

    kind = "repair"
    uses_neurons: ClassVar[bool] = True

    def apply(self, model: nn.Module, neurons: list[NeuronRef], clean: TensorData) -> nn.Module:
        """A repaired copy of ``model`` (``model`` itself is left untouched)."""
        return self.apply_with_details(model, neurons, clean)[0]

    def apply_with_details(
        self, model: nn.Module, neurons: list[NeuronRef], clean: TensorData
    ) -> tuple[nn.Module, dict[str, Any]]:
        """``apply``'s copy and what the run chose on its own (e.g. a rate it backed off to),
        recorded with the repair; a repair that chooses nothing implements ``apply`` alone."""
        if type(self).apply is Repair.apply:
            raise NotImplementedError(f"repair '{self.name}' implements neither apply method")
        return self.apply(model, neurons, clean), {}

    def clean_subset(self, clean: TensorData) -> TensorData:
        """The defender's clean set: a seeded sample of ``samples`` training inputs."""
        p = self.params
        n = min(getattr(p, "samples", len(clean)), len(clean))
        g = torch.Generator().manual_seed(getattr(p, "seed", 0))
        return clean.subset(torch.randperm(len(clean), generator=g)[:n])


REPAIRS: Registry[Repair[BaseModel]] = Registry("repair", ["trojanscope.repair.methods"])


def der(asr_before: float, asr_after: float, acc_before: float, acc_after: float) -> float:
    """Defence effectiveness rating: (max(0, ASR drop) - max(0, accuracy drop) + 1) / 2."""
    return (max(0.0, asr_before - asr_after) - max(0.0, acc_before - acc_after) + 1) / 2


@dataclass
class RepairOutcome:
    method: str
    params: dict[str, Any]
    neurons: list[NeuronRef]
    clean_acc_before: float
    clean_acc_after: float
    asr_before: float
    asr_after: float
    seconds: float
    model: nn.Module
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def asr_drop(self) -> float:
        return self.asr_before - self.asr_after

    @property
    def acc_drop(self) -> float:
        return self.clean_acc_before - self.clean_acc_after

    @property
    def der(self) -> float:
        return der(self.asr_before, self.asr_after, self.clean_acc_before, self.clean_acc_after)


def run_repair(
    repair: Repair[BaseModel],
    model: nn.Module,
    neurons: list[NeuronRef],
    clean_train: TensorData,
    clean_test: TensorData,
    triggered: TensorData,
) -> RepairOutcome:
    """Apply ``repair`` and measure clean accuracy and ASR (``triggered`` labelled with the
    attacker's targets) before and after."""
    neurons = list(neurons) if repair.uses_neurons else []
    check_neurons(model, neurons)
    acc_before, asr_before = accuracy(model, clean_test), accuracy(model, triggered)
    started = time.perf_counter()
    repaired, details = repair.apply_with_details(model, neurons, clean_train)
    repaired.eval()
    seconds = time.perf_counter() - started
    return RepairOutcome(
        method=repair.name,
        params=repair.params.model_dump(mode="json"),
        neurons=neurons,
        clean_acc_before=acc_before,
        clean_acc_after=accuracy(repaired, clean_test),
        asr_before=asr_before,
        asr_after=accuracy(repaired, triggered),
        seconds=seconds,
        model=repaired,
        details=details,
    )
