"""Rule 1 (order): each neuron's contribution to the clean task, mean |activation x dL/da|."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trojanscope.data.base import TensorData
from trojanscope.device import model_device
from trojanscope.neurons import eligible_layers, layer_outputs


def clean_contributions(
    model: nn.Module, data: TensorData, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Per-layer (width,) first-order Taylor importance on clean data, averaged over samples
    and positions (on the CPU). Needs gradients with respect to activations, so hooks keep the
    graph."""
    layers = eligible_layers(model)
    device = model_device(model)
    modules = dict(model.named_modules())
    totals = {layer.name: torch.zeros(layer.width, dtype=torch.float64) for layer in layers}
    acts: dict[str, torch.Tensor] = {}
    handles = []
    for layer in layers:

        def hook(_m: nn.Module, _i: object, out: torch.Tensor, name: str = layer.name) -> None:
            out.retain_grad()
            acts[name] = out

        handles.append(modules[layer.output].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(data), batch_size):
            xb = data.x[start : start + batch_size].to(device)
            yb = data.y[start : start + batch_size].to(device)
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb, reduction="sum").backward()
            for name, a in acts.items():
                assert a.grad is not None  # retain_grad() on a tensor the loss depends on
                taylor = (a.detach() * a.grad).abs()
                dims = [0] + list(range(2, taylor.dim()))
                positions = taylor[0, 0].numel() if taylor.dim() > 2 else 1
                totals[name] += taylor.sum(dim=dims).cpu().double() / positions
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {name: (t / len(data)).float() for name, t in totals.items()}


#: A neuron positive on fewer than this share of (sample, position) pairs counts as dead.
MIN_LIVE_SHARE = 0.01


@torch.no_grad()
def live_neurons(
    model: nn.Module, data: TensorData, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Per-layer (width,) bool: the neuron is positive (passes the ReLU that follows it) on at
    least ``MIN_LIVE_SHARE`` of the clean inputs and positions. A dead neuron passes no gradient,
    so the backdoor cannot be trained into it; it is never chosen while a live one is left.
    On the CPU."""
    positive: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(data), batch_size):
            for name, out in layer_outputs(model, data.x[start : start + batch_size]).items():
                per_neuron = (out > 0).transpose(0, 1).reshape(out.shape[1], -1)
                positive[name] = positive.get(name, 0) + per_neuron.sum(1).cpu().double()
                counts[name] = counts.get(name, 0) + per_neuron.shape[1]
    finally:
        model.train(was_training)
    return {name: positive[name] / counts[name] >= MIN_LIVE_SHARE for name in positive}
