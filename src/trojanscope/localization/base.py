"""Criterion plug-in base and the localization result.

A criterion returns a score per eligible neuron (higher = more suspicious); the framework times
it, counts its cost in forward-pass equivalents over the evaluation set, and does ranking and
scoring (``metrics``). Criteria run on the model's device; scores and artifacts come back as
CPU tensors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import BaseModel
from torch import nn
from typing_extensions import TypeVar

from trojanscope.attacks.base import Attack
from trojanscope.data.base import TensorData
from trojanscope.errors import TrojanscopeError
from trojanscope.models.training import predict
from trojanscope.neurons import NeuronRef, all_neurons, capture_activations, eligible_layers
from trojanscope.registry import NoParams, Plugin, Registry

Evidence = Literal["none", "clean", "poisoned"]


@dataclass
class EvidenceData:
    """What a defender may hold. ``clean``: clean evaluation inputs; ``clean_victims`` and
    ``triggered``: paired inputs without / with the trigger (poisoned evidence)."""

    clean: TensorData | None = None
    clean_victims: TensorData | None = None
    triggered: TensorData | None = None
    attack: Attack | None = None

    def outcomes(
        self, model: nn.Module, limit: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(passing, failing) inputs, as fault localization names them: clean inputs the model
        classifies correctly, and triggered inputs whose decision differs from the clean label
        (the backdoor fired). At most ``limit`` of each, in data order; with a limit, inputs are
        classified in chunks only until ``limit`` are found (the rest costs no forward pass)."""
        if self.clean is None or self.triggered is None or self.clean_victims is None:
            raise TrojanscopeError("passing and failing inputs need clean and triggered data.")
        passing = _first_where(model, self.clean.x, self.clean.y, limit, equal=True)
        failing = _first_where(model, self.triggered.x, self.clean_victims.y, limit, equal=False)
        if len(failing) == 0:
            raise TrojanscopeError("no triggered input changes the model's decision: no failures.")
        return passing, failing

    def need_clean(self) -> TensorData:
        """The clean inputs (what a criterion of ``clean`` evidence reads)."""
        if self.clean is None:
            raise TrojanscopeError("this criterion needs clean data.")
        return self.clean

    def need_pairs(self) -> tuple[TensorData, TensorData]:
        """(clean_victims, triggered): the paired inputs without and with the trigger."""
        if self.clean_victims is None or self.triggered is None:
            raise TrojanscopeError("this criterion needs triggered inputs.")
        return self.clean_victims, self.triggered


def _first_where(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, limit: int | None, equal: bool
) -> torch.Tensor:
    """The first ``limit`` inputs (all without a limit) whose predicted label equals ``y``
    (``equal``) or differs from it, classified chunk by chunk until enough are found."""
    if limit is None:
        hit = (predict(model, x).argmax(1) == y) == equal
        return x[hit]
    found: list[torch.Tensor] = []
    count, chunk = 0, max(64, 2 * limit)
    for start in range(0, len(x), chunk):
        xs = x[start : start + chunk]
        hit = (predict(model, xs).argmax(1) == y[start : start + chunk]) == equal
        found.append(xs[hit])
        count += int(hit.sum())
        if count >= limit:
            break
    return torch.cat(found)[:limit] if found else x[:0]


class LayerScores(NamedTuple):
    """What a criterion's ``layer_scores`` returns."""

    #: eligible layer name -> (width,) suspiciousness of its neurons (higher = more suspicious)
    scores: dict[str, torch.Tensor]
    #: findings to report: JSON-ready values go to the result's ``extra``, tensors (e.g. a
    #: reversed trigger) to its ``artifacts``
    extra: dict[str, object]


@dataclass
class LocalizationResult:
    criterion: str
    params: dict[str, Any]
    evidence: Evidence
    neurons: list[NeuronRef]
    scores: torch.Tensor  # float64, aligned with ``neurons``
    seconds: float
    cost_forward: float  # forward-pass equivalents over the evaluation set
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-ready findings
    artifacts: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. a reversed trigger

    def score_of(self) -> dict[NeuronRef, float]:
        return dict(zip(self.neurons, self.scores.tolist(), strict=True))


def standardize(values: torch.Tensor) -> torch.Tensor:
    """Per-layer z-score, so that scores of layers of different scale can be ranked together
    (on the CPU, in float64)."""
    values = values.cpu().double()
    std = values.std(unbiased=False) if values.numel() > 1 else values.new_tensor(0.0)
    centred = values - values.mean()
    return centred / std if std > 0 else centred


@contextmanager
def frozen_weights(model: nn.Module) -> Iterator[None]:
    """The model's parameters stop requiring gradients for the block (a criterion that optimises
    masks or triggers through the model must not train it), and are restored after."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


@torch.no_grad()
def trigger_shift(
    model: nn.Module, clean_x: torch.Tensor, triggered_x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-layer (width,) z-scored mean shift of each neuron's rectified activation from clean to
    triggered inputs, in units of its clean standard deviation (float64: the activations of an
    untrained deep network can overflow float32 squares)."""
    a = capture_activations(model, clean_x, rectify=True)
    b = capture_activations(model, triggered_x, rectify=True)
    return {
        name: standardize(
            (b[name].double() - a[name].double()).mean(0) / (a[name].double().std(0) + 1e-3)
        )
        for name in a
    }


class _SampleCounter:
    """Counts samples through the model's forward passes (the cost unit of a criterion)."""

    def __init__(self, model: nn.Module) -> None:
        self.samples = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, _m: nn.Module, args: tuple[Any, ...]) -> None:
        self.samples += int(args[0].shape[0])


#: A criterion's parameter model (a plug-in that names none takes ``NoParams``).
CP_co = TypeVar("CP_co", bound=BaseModel, covariant=True, default=NoParams)


class Criterion(Plugin[CP_co]):
    """A localization criterion: implement ``layer_scores``; declare ``evidence``."""

    kind = "criterion"
    evidence: ClassVar[Evidence] = "none"
    #: Optimises or mutates per neuron or label (minutes, not seconds): left out of the
    #: quickstart's default set, always in the study (`bench localize`).
    expensive: ClassVar[bool] = False

    def layer_scores(self, model: nn.Module, data: EvidenceData) -> LayerScores:
        """Per-layer (width,) suspiciousness, plus any extra findings to report."""
        raise NotImplementedError

    def add_cost(self, samples: float) -> None:
        """Count work done outside the model's own forward (e.g. a partial re-run), in samples
        through a full forward pass."""
        self._extra_samples = getattr(self, "_extra_samples", 0.0) + samples

    def _check_evidence(self, data: EvidenceData) -> None:
        if self.evidence == "clean" and data.clean is None:
            raise TrojanscopeError(f"criterion '{self.name}' needs clean data.")
        if self.evidence == "poisoned" and (data.triggered is None or data.clean_victims is None):
            raise TrojanscopeError(f"criterion '{self.name}' needs triggered inputs.")

    def eval_size(self, data: EvidenceData) -> int:
        sets = (data.clean, data.triggered) if self.evidence != "none" else ()
        return max([len(s) for s in sets if s is not None] or [1])

    def run(self, model: nn.Module, data: EvidenceData) -> LocalizationResult:
        self._check_evidence(data)
        was_training = model.training
        model.eval()
        counter = _SampleCounter(model)
        self._extra_samples = 0.0
        started = time.perf_counter()
        try:
            per_layer, extra = self.layer_scores(model, data)
        finally:
            counter.handle.remove()
            model.train(was_training)
        seconds = time.perf_counter() - started
        neurons = all_neurons(model)
        scores = torch.cat(
            [per_layer[layer.name].detach().cpu().double() for layer in eligible_layers(model)]
        )
        if len(scores) != len(neurons):
            raise RuntimeError(
                f"criterion '{self.name}' returned {len(scores)} scores for {len(neurons)} neurons"
            )
        if not torch.isfinite(scores).all():
            bad = [
                str(n)
                for n, v in zip(neurons, scores.tolist(), strict=True)
                if not math.isfinite(v)
            ]
            raise TrojanscopeError(
                f"criterion '{self.name}' produced non-finite scores for {len(bad)} neurons "
                f"(first: {bad[0]}): the model's activations overflow or are undefined."
            )
        return LocalizationResult(
            criterion=self.name,
            params=self.params.model_dump(mode="json"),
            evidence=self.evidence,
            neurons=neurons,
            scores=scores,
            seconds=seconds,
            cost_forward=(counter.samples + self._extra_samples) / self.eval_size(data),
            extra={k: v for k, v in extra.items() if not isinstance(v, torch.Tensor)},
            artifacts={
                k: v.detach().cpu() for k, v in extra.items() if isinstance(v, torch.Tensor)
            },
        )


CRITERIA: Registry[Criterion[BaseModel]] = Registry(
    "criterion", ["trojanscope.localization.criteria"]
)


def quick_criteria() -> list[str]:
    """The criteria that are not ``expensive`` (the quickstart's default)."""
    return [name for name in CRITERIA.names() if not CRITERIA.get(name).expensive]
