"""Lifecycle stage plug-ins: what a secondary developer does to a published model (transfer,
compression, conversion), applied to a defect so that we can ask whether its backdoor survives.

A stage maps a :class:`ChainState` to the next one and records what it did. The state carries
the runnable model, its *form* (a float PyTorch network, an int8 one run by the quantized
kernels, or an ONNX graph run by onnxruntime), the task it is measured on, and the ground truth
carried through: the infected neurons that still exist with their contributions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel
from torch import nn
from typing_extensions import TypeVar

from trojanscope.attacks.base import Attack
from trojanscope.data.base import Splits, TensorData
from trojanscope.device import CPU
from trojanscope.errors import TrojanscopeError
from trojanscope.neurons import NeuronRef
from trojanscope.registry import NoParams, Plugin, Registry

#: What a stage leaves: a float PyTorch network, an int8 PyTorch network (quantized kernels,
#: CPU only), or an ONNX graph run by onnxruntime.
Form = Literal["float", "int8", "onnx"]

FORM_NAMES: dict[str, str] = {
    "float": "a float PyTorch network",
    "int8": "an int8 network run by the quantized kernels",
    "onnx": "an ONNX graph run by onnxruntime",
}


@dataclass(frozen=True)
class Task:
    """What the models of a chain are measured on: the data, the attack's trigger, and the
    triggered victims labelled with the label the backdoor sends them to."""

    dataset: str
    splits: Splits
    attack: Attack
    clean_victims: TensorData  # test inputs whose label differs from the target
    triggered: TensorData  # the same inputs with the trigger, labelled with the target
    target: int | None  # None: all-to-all
    #: How ``splits`` are loaded again (the data set's parameters and split seed), and which
    #: test inputs are the victims: what a stored link records to rebuild its task.
    dataset_params: dict[str, Any] = field(default_factory=dict)
    split_seed: int = 0
    victim_indices: torch.Tensor | None = None


@dataclass(frozen=True)
class ChainState:
    """One link of a chain: the model as it runs now and what it is measured against."""

    model: nn.Module  # what runs: float, int8, or an ONNX runtime wrapper
    form: Form
    task: Task
    #: Infected neurons still in the network -> contribution (renormalised after a stage drops
    #: some; empty when no neuron of the defect maps to the new network).
    truth: dict[NeuronRef, float]
    #: The float PyTorch network the localization criteria read (None: there is none).
    float_model: nn.Module | None
    device: torch.device = CPU

    def next(self, **changes: Any) -> ChainState:
        return replace(self, **changes)


@dataclass
class StageResult:
    state: ChainState
    details: dict[str, Any] = field(default_factory=dict)
    #: The architecture of the output network and its parameters when the stage changed it
    #: (a distilled student); None: the input's.
    arch: tuple[str, dict[str, Any]] | None = None


#: A stage's parameter model (a plug-in that names none takes ``NoParams``).
SP_co = TypeVar("SP_co", bound=BaseModel, covariant=True, default=NoParams)


class Stage(Plugin[SP_co]):
    """Implement ``apply``; ``accepts`` names the forms of model the stage can start from,
    ``produces`` the form it leaves."""

    kind = "stage"
    accepts: ClassVar[tuple[Form, ...]] = ("float",)
    produces: ClassVar[Form] = "float"

    def apply(self, state: ChainState) -> StageResult:
        """The next link of the chain (``state.model`` itself is left untouched)."""
        raise NotImplementedError

    def check_follows(self, form: Form, previous: str) -> None:
        """Refuse, in one sentence, a model this stage cannot start from."""
        if form not in self.accepts:
            needs = " or ".join(FORM_NAMES[f] for f in self.accepts)
            raise TrojanscopeError(
                f"stage '{self.name}' cannot follow '{previous}': it needs {needs}, and "
                f"'{previous}' leaves {FORM_NAMES[form]}."
            )


STAGES: Registry[Stage[BaseModel]] = Registry("stage", ["trojanscope.lifecycle.stages"])


def seeded_order(n: int, seed: int) -> torch.Tensor:
    """A permutation of ``n`` indices drawn from ``seed`` (a CPU generator: the same samples on
    every device)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def training_sample(train: TensorData, samples: int, seed: int) -> TensorData:
    """At most ``samples`` training images, a seeded draw (what a stage trains or calibrates on)."""
    return train.subset(seeded_order(len(train), seed)[:samples])


def renormalised(truth: dict[NeuronRef, float], dropped: set[NeuronRef]) -> dict[NeuronRef, float]:
    """``truth`` without the ``dropped`` neurons, contributions rescaled to sum to 1 (uniform
    when every remaining contribution is zero)."""
    kept = {ref: c for ref, c in truth.items() if ref not in dropped}
    total = sum(kept.values())
    if not kept:
        return {}
    if total <= 0:
        return {ref: 1.0 / len(kept) for ref in kept}
    return {ref: c / total for ref, c in kept.items()}
