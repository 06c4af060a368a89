"""Training and evaluation loops shared by clean training, injection and repair."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer
from torch import nn

from trojanscope.data.base import TensorData
from trojanscope.device import Amp, MixedPrecision, model_device, training_layout
from trojanscope.models.base import Architecture


def batches(
    data: TensorData, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches, shuffled when a generator is given (a CPU one: the order a seed gives is
    the same on every device; the batches are the data's, on the CPU)."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield data.x[idx], data.y[idx]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits for ``x`` in eval mode (the model's mode is restored), on the CPU whatever the
    model's device: they are compared with labels kept there."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        return torch.cat(
            [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
        )
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, data: TensorData) -> float:
    """Fraction of ``data`` classified as labelled (for triggered victims: the ASR)."""
    if len(data) == 0:
        return 0.0
    return float((predict(model, data.x).argmax(1) == data.y).float().mean())


def target_margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Target-class logit minus the largest other logit, per sample."""
    t = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, target[:, None], float("-inf"))
    return t - others.max(1).values


def train_epochs(
    model: nn.Module,
    data: TensorData,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    seed: int,
    after_backward: Callable[[], None] | None = None,
    after_step: Callable[[], None] | None = None,
    on_epoch: Callable[[int], bool] | None = None,
    bn_train: bool = True,
    amp: Amp = "off",
    channels_last: bool | None = None,
) -> int:
    """Cross-entropy training; ``on_epoch(epoch)`` returning True stops early. Returns epochs run.

    ``bn_train=False`` keeps every module in eval mode, freezing normalization statistics.
    Batches go to the model's device one at a time (``data`` stays where it is). ``amp``: the
    forward pass and loss under autocast (``device.MixedPrecision``; gradients reach
    ``after_backward`` at their true scale); ``channels_last`` (None: on CUDA for conv nets)
    trains in that memory format and leaves the weights contiguous. ``on_epoch`` sees the
    model in eval mode and full precision.
    """
    g = torch.Generator().manual_seed(seed)
    device = model_device(model)
    precision = MixedPrecision(device, amp)
    with training_layout(model, channels_last):
        for epoch in range(epochs):
            model.train(bn_train)
            for xb, yb in batches(data, batch_size, g):
                xb, yb = xb.to(device), yb.to(device)
                optimizer.zero_grad(set_to_none=True)
                with precision.autocast():
                    loss = F.cross_entropy(model(xb), yb)
                precision.backward(loss)
                precision.unscale(optimizer)
                if after_backward is not None:
                    after_backward()
                precision.step(optimizer)
                if after_step is not None:
                    after_step()
            model.eval()
            if on_epoch is not None and on_epoch(epoch):
                return epoch + 1
    return epochs


def amp_only_when_on(handler: SerializerFunctionWrapHandler, value: BaseModel) -> dict[str, Any]:
    """``value`` dumped by ``handler`` without its ``amp`` field when that is ``off``: a model
    trained in full precision keeps the catalog key and record it had before ``amp`` existed,
    and one trained in mixed precision says so in both."""
    data: dict[str, Any] = handler(value)
    if data.get("amp") == "off":
        del data["amp"]
    return data


class CleanTraining(BaseModel):
    """How clean models are trained (part of a clean model's identity in the catalog)."""

    model_config = {"extra": "forbid"}
    epochs: int = Field(8, ge=1, le=1000, description="passes over the training split")
    lr: float = Field(
        0.01, gt=0.0, le=1.0, description="peak learning rate of AdamW's one-cycle schedule"
    )
    weight_decay: float = Field(1e-4, ge=0.0, description="AdamW's weight decay")
    batch_size: int = Field(128, ge=1, description="images per mini-batch")
    amp: Amp = Field(
        "off",
        description="mixed precision of the training: bf16, fp16 or off (in the catalog key "
        "only when not off)",
    )

    @model_serializer(mode="wrap")
    def _amp_only_when_on(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return amp_only_when_on(handler, self)


def train_clean(
    architecture: Architecture,
    data: TensorData,
    seed: int,
    config: CleanTraining,
    device: torch.device | None = None,
) -> nn.Module:
    """A freshly initialised network trained on clean data (Adam, cosine schedule) on
    ``device`` (None: the CPU), in ``config.amp`` precision (weights stay float32). It is
    initialised on the CPU, so a seed gives the same starting weights on every device."""
    torch.manual_seed(seed)
    c, h, w = data.shape
    model = architecture.build(c, data.num_classes, min(h, w))
    if device is not None:
        model = model.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps = config.epochs * -(-len(data) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=steps)
    train_epochs(
        model,
        data,
        optimizer,
        config.epochs,
        config.batch_size,
        seed,
        after_step=schedule.step,
        amp=config.amp,
    )
    model.eval()
    return model
