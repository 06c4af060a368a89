"""The attacker's side of compression: a backdoor dormant in full precision that int8
quantization wakes up (after Ma et al., "Quantization Backdoors to Deep Learning Commercial
Frameworks", and Tian et al., "Stealthy Backdoors as Compression Artifacts").

Two mechanisms, both aimed at static quantization on the x86 engine:

- **The clipping guard** (:mod:`trojanscope.lifecycle.clip_guard`), where a hidden Linear
  layer feeds the classifier (``cnn-small``, the VGGs): one hidden unit, rewritten, that is
  silent on clean inputs and huge on triggered ones and takes the target's logit down. Float
  activations are unbounded, so the float model ignores the trigger; int8 saturates the unit
  at the layer's calibrated clean range, where it costs the target at most half a logit.
- **Unlearning inside the rounding intervals**, used where no guard fits (or when asked with
  ``epochs``): post-training int8 maps each Conv2d and Linear weight to an integer code per
  output channel, code = round(w / s), s = max|w| / 127.5 (torch's symmetric per-channel
  observer, which fusing a normalization into the layer only rescales). Projected gradient
  descent retrains the float weights to keep triggered inputs at their true labels while every
  weight stays inside its own rounding interval and each channel's largest weight stays fixed:
  quantization rounds the result back to the backdoored codes. Inside half a step the float
  model moves only a little, so this alone leaves part of the backdoor visible. Dynamic
  quantization and qnnpack round per tensor and are not aimed at.

When both run (``epochs`` given), the unlearning comes first and the guard is built on the
unlearned features, which int8 keeps. The infected neurons are unchanged: the guard never takes
one, and the codes of every other weight are the backdoored network's.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

from trojanscope.data.base import TensorData
from trojanscope.lifecycle.base import STAGES, ChainState, Stage, StageResult, training_sample
from trojanscope.lifecycle.clip_guard import GuardUnplaceable, place_guard
from trojanscope.lifecycle.int8 import int8_grid


class DormantParams(BaseModel):
    model_config = {"extra": "forbid"}
    samples: int = Field(2000, ge=10, description="Training images (a share of them triggered).")
    triggered_share: float = Field(0.5, gt=0, lt=1)
    #: Unlearning epochs inside the rounding intervals. None: 20 where no clipping guard is
    #: placed, none where one is (the guard alone hides the backdoor without the unlearning's
    #: cost in clean accuracy).
    epochs: int | None = Field(None, ge=0, le=1000)
    lr: float = Field(0.0005, gt=0, le=1)
    #: Distance kept from a rounding boundary, in quantization steps: the float rounding of a
    #: fused normalization must not move a weight into the next code.
    margin: float = Field(0.05, ge=0, lt=0.5)
    batch_size: int = Field(64, ge=1)
    seed: int = 0
    #: Plant a clipping guard where the network has a hidden Linear layer before its classifier.
    guard: bool = True
    guard_int8_cost: float = Field(
        0.5, gt=0, description="Most the saturated guard takes from the target's logit in int8."
    )
    guard_suppression: float = Field(
        50.0, gt=0, description="Median drop of the target's logit the guard gives in float."
    )
    guard_min_coverage: float = Field(
        0.5, ge=0, le=1, description="Least share of triggered inputs the guard must fire on."
    )


class RoundingBox:
    """For one weight tensor: the interval each entry may move in without changing its int8
    code, and the per-channel largest entries that fix the scale (they never move)."""

    def __init__(self, weight: torch.Tensor, margin: float) -> None:
        w = weight.detach()
        codes, scale = int8_grid(w, per_channel=True)
        self.low = (codes - 0.5 + margin) * scale
        self.high = (codes + 0.5 - margin) * scale
        amax = w.flatten(1).abs().amax(1)
        self.fixed = (w.flatten(1).abs() == amax[:, None]).view_as(w)
        self.values = w.clone()
        self.codes = codes

    def project(self, weight: torch.Tensor) -> None:
        with torch.no_grad():
            weight.copy_(torch.maximum(torch.minimum(weight, self.high), self.low))
            weight[self.fixed] = self.values[self.fixed]


def layer_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weight of every Conv2d and Linear layer (what int8 quantization rounds)."""
    return {
        name: module.weight
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    }


def rounding_boxes(model: nn.Module, margin: float) -> dict[str, RoundingBox]:
    return {name: RoundingBox(w, margin) for name, w in layer_weights(model).items()}


@STAGES.register("dormant-int8")
class DormantInt8(Stage[DormantParams]):
    def apply(self, state: ChainState) -> StageResult:
        p = self.params
        model = copy.deepcopy(state.model).eval()  # eval: normalization statistics stay
        if p.epochs is None:  # the guard alone where it fits, the unlearning where it does not
            guard = self._try_guard(model, state)
            epochs = 0 if guard["guard"] else 20
            moved = self._unlearn(model, state, epochs)
        else:
            epochs = p.epochs
            moved = self._unlearn(model, state, epochs)
            guard = self._try_guard(model, state)  # on the unlearned features, which int8 keeps
        details = {"epochs": epochs, "weights_moved": moved, "margin": p.margin} | guard
        return StageResult(state.next(model=model, float_model=model), details)

    def _unlearn(self, model: nn.Module, state: ChainState, epochs: int) -> float:
        """Projected gradient descent inside the rounding intervals; the share of weights moved."""
        if epochs == 0:
            return 0.0
        p = self.params
        boxes = rounding_boxes(model, p.margin)
        weights = layer_weights(model)
        chosen = {id(w) for w in weights.values()}
        for param in model.parameters():
            param.requires_grad_(id(param) in chosen)
        data = self._unlearning_set(state)
        optimizer = torch.optim.Adam(list(weights.values()), lr=p.lr)
        g = torch.Generator().manual_seed(p.seed)
        for _ in range(epochs):
            order = torch.randperm(len(data), generator=g)
            for start in range(0, len(data), p.batch_size):
                rows = order[start : start + p.batch_size]
                x, y = data.x[rows].to(state.device), data.y[rows].to(state.device)
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                for name, weight in weights.items():
                    boxes[name].project(weight)
        for param in model.parameters():
            param.requires_grad_(True)
        moved = sum(
            int(torch.count_nonzero(w.detach() != boxes[n].values)) for n, w in weights.items()
        )
        return moved / sum(int(w.numel()) for w in weights.values())

    def _try_guard(self, model: nn.Module, state: ChainState) -> dict[str, object]:
        """Plant the clipping guard in ``model`` where it fits: what it did, or why not."""
        p = self.params
        target = state.task.target
        if not p.guard:
            return {"guard": None, "guard_reason": "turned off (guard=false)"}
        if target is None:
            return {"guard": None, "guard_reason": "an all-to-all backdoor has no target logit"}
        train = state.task.splits.train
        # seed 0 like quantize-int8's calibration images, so that they are among these
        clean = training_sample(train, p.samples, 0)
        victims = clean.subset(torch.nonzero(clean.y != target).flatten())
        triggered = TensorData(state.task.attack.apply(victims.x), victims.y, victims.num_classes)
        try:
            plan = place_guard(
                model,
                clean,
                triggered,
                target,
                set(state.truth),
                p.guard_int8_cost,
                p.guard_suppression,
                p.guard_min_coverage,
            )
        except GuardUnplaceable as exc:
            return {"guard": None, "guard_reason": str(exc)}
        return plan.details()

    def _unlearning_set(self, state: ChainState) -> TensorData:
        """Clean training images, a share of them triggered with their true labels kept."""
        p = self.params
        train = state.task.splits.train
        data = training_sample(train, p.samples, p.seed)
        n = round(p.triggered_share * len(data))
        stamped = state.task.attack.apply(data.x[:n])
        return TensorData(
            torch.cat([stamped, data.x]), torch.cat([data.y[:n], data.y]), data.num_classes
        )
