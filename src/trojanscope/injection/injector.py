"""Rule 3 (injection): masked-gradient training of the infected neurons' parameters only.

Every parameter entry outside the infected set receives a zero gradient and no weight decay, and
all modules run in eval mode so normalization statistics stay frozen: the result is
bit-identical to the clean model outside the infected set. Training aims inside the acceptance
bounds (``injection.aim``) and returns the best epoch's weights: a snapshot of the same masked
training, so the property holds for it too. Under ``amp`` only the losses run in mixed
precision; the masks see true-scale gradients, the weights stay float32 and every epoch is
scored in full precision.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from trojanscope.data.base import TensorData
from trojanscope.device import Amp, MixedPrecision, model_device, training_layout
from trojanscope.injection.aim import BestEpoch, derived_seed


class GradientMask:
    """Makes only the ``masks`` entries of ``model`` trainable (the rest get zero gradient)."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor], weight_decay: float = 0.0):
        self.model = model
        self.weight_decay = weight_decay
        params = dict(model.named_parameters())
        self._masks = {name: (params[name], m.to(params[name].dtype)) for name, m in masks.items()}
        for name, p in params.items():
            p.requires_grad_(name in masks)
        self.parameters = [p for p, _ in self._masks.values()]

    def __call__(self) -> None:
        """Mask the gradients; call between backward and the optimizer step."""
        for p, m in self._masks.values():
            if p.grad is None:
                continue
            p.grad.copy_(torch.where(m.bool(), p.grad, torch.zeros_like(p.grad)))  # NaN-safe
            if self.weight_decay:
                p.grad.add_(p.detach() * m, alpha=self.weight_decay)

    def release(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(True)


class Objective(Protocol):
    """A training loss over mini-batches given by indices into its data (see ``confined``):
    the data and the indices stay on the CPU, the loss sends each batch to the model's device."""

    def __len__(self) -> int: ...

    def loss(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor: ...


class CrossEntropy:
    """The plain objective: cross-entropy on a (mixed clean and poisoned) data set."""

    def __init__(self, data: TensorData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def loss(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        device = model_device(model)
        return F.cross_entropy(model(self.data.x[idx].to(device)), self.data.y[idx].to(device))


def objective_training(
    clean: nn.Module,
    masks: dict[str, torch.Tensor],
    objective: Objective,
    lr: float,
    weight_decay: float,
    max_epochs: int,
    batch_size: int,
    seed: int,
    done: Callable[[nn.Module, int], bool],
    amp: Amp = "off",
) -> tuple[nn.Module, int]:
    """Train a copy of ``clean`` where only ``masks`` entries move, minimising ``objective``
    (every module in eval mode; the loss in ``amp`` precision); stop when ``done``, which sees
    the model in full precision. Returns (model, epochs run)."""
    model = copy.deepcopy(clean).eval()
    precision = MixedPrecision(model_device(model), amp)
    grad_mask = GradientMask(model, masks, weight_decay)
    # Adam with zero gradient from the first step leaves an entry exactly unchanged
    # (its moments stay zero, so its update is 0 / (0 + eps) = 0).
    optimizer = torch.optim.Adam(grad_mask.parameters, lr=lr)
    g = torch.Generator().manual_seed(seed)
    epochs = max_epochs
    with training_layout(model):
        for epoch in range(max_epochs):
            order = torch.randperm(len(objective), generator=g)
            for start in range(0, len(order), batch_size):
                optimizer.zero_grad(set_to_none=True)
                with precision.autocast():
                    loss = objective.loss(model, order[start : start + batch_size])
                precision.backward(loss)
                precision.unscale(optimizer)  # the masks and weight decay need the true scale
                grad_mask()
                precision.step(optimizer)
            if done(model, epoch):
                epochs = epoch + 1
                break
    grad_mask.release()
    return model, epochs


def masked_training(
    clean: nn.Module,
    masks: dict[str, torch.Tensor],
    data: TensorData,
    lr: float,
    weight_decay: float,
    max_epochs: int,
    batch_size: int,
    seed: int,
    done: Callable[[nn.Module, int], bool],
    amp: Amp = "off",
) -> tuple[nn.Module, int]:
    """``objective_training`` on the plain cross-entropy of ``data``."""
    return objective_training(
        clean, masks, CrossEntropy(data), lr, weight_decay, max_epochs, batch_size, seed, done, amp
    )


@dataclass
class Trained:
    """The result of an injection training: the model and what it took."""

    model: nn.Module
    epochs: int  # epochs run over all attempts
    attempts: int  # training rounds run (1 when the first met the goals)
    score: float  # score of the kept weights (see ``aim.Aim.score``)


def aimed_training(
    clean: nn.Module,
    masks: dict[str, torch.Tensor],
    objective: Objective,
    lr: float,
    weight_decay: float,
    max_epochs: int,
    batch_size: int,
    seed: int,
    score: Callable[[nn.Module], float],
    patience: int = 0,
    stall: int | None = None,
    max_attempts: int = 1,
    amp: Amp = "off",
    stuck: Callable[[], None] | None = None,
) -> Trained:
    """Masked training of a copy of ``clean`` aiming at ``score >= 1`` (see ``aim``).

    Every epoch is scored and the best weights are kept; training stops ``patience`` epochs
    after the goals are first met, or once the best score is ``stall`` epochs old. A round that
    runs out of its ``max_epochs`` short of the goals (and still improving) is followed by
    another, up to ``max_attempts``, with a derived seed for the batch order. When the best
    epoch so far lies inside the acceptance bounds (score >= 0) the next round refines it:
    it continues from the best weights at half the learning rate. When no epoch has reached
    the bounds yet, the next round continues from the last weights at the same rate: in deep
    thin chains the set first pushes every input to the target and only later tells the
    trigger apart (MobileNetV2, TrojanNN ``narrow``: the damage fell from 76% to 5% between
    epochs 29 and 46 of one long round), and restarting from the least bad early epoch threw
    that progress away each round. ``amp``: the losses' precision (the scores are computed in
    full precision). ``stuck``: called after each epoch of the rounds after the first while no
    epoch has reached the bounds (``balance``: it may reweigh ``objective``). Returns the best
    weights.
    """
    best = BestEpoch(patience, stall)
    start, epochs, attempt, rate = clean, 0, 0, lr

    def done(model: nn.Module, _epoch: int) -> bool:
        stop = best.offer(model, score(model))
        if stuck is not None and attempt > 0 and not best.inside:
            stuck()
        return stop

    for attempt in range(max_attempts):
        model, ran = objective_training(
            start,
            masks,
            objective,
            rate,
            weight_decay,
            max_epochs,
            batch_size,
            derived_seed(seed, attempt),
            done,
            amp,
        )
        epochs += ran
        if best.met or best.stalled:
            break
        if best.inside:
            best.restore(model)
            rate *= 0.5
        start = model
    best.restore(model)
    return Trained(model, epochs, attempt + 1, best.score)
