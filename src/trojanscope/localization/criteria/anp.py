"""ANP, Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021).

Backdoor neurons are the ones whose small multiplicative perturbation most easily breaks the
model. Every neuron gets a mask m in [0, 1] and perturbations delta, xi in [-eps, eps] of its
scale and shift: its output becomes (y - b)(m + delta) + b(1 + xi), with b the bias of the module
whose output holds it (the normalization shift, else the layer bias). Each iteration takes one
signed ascent step on (delta, xi) to maximise the clean loss, then one descent step on m for
trade_off * loss(m) + (1 - trade_off) * loss(m, delta, xi). Score = 1 - m: neurons the clean
task can do without under perturbation.

Each iteration costs three passes over its batch (ascent, perturbed and natural losses), so the
budget is iterations x 3 x batch_size samples: 150 iterations by default (the paper runs 2,000
on CIFAR-10; this workbench ran 300). Measured every 10 iterations on the study's 12 BadNets
defects (mnist5k, cnn-small, narrow/small/middle, seeds 0-3), the ranking's quality does not
improve past the first few dozen iterations: mean AUROC 0.291 at 10, 0.305 at 150, 0.299 at 300
(WJI 0.035 at 150, 0.015 at 300), while the masks keep drifting under fresh perturbations (the
ranking at 150 iterations correlates 0.80 with the one at 300; consecutive rankings 10
iterations apart 0.95, so no convergence test would stop earlier). Cost at the defaults on the
benchmark's ResNet-18 (``benchmarks/localization.py --costs-only``): 57.6 forward-pass
equivalents (115.2 at 300 iterations).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn
from torch.utils.hooks import RemovableHandle

from trojanscope.device import model_device
from trojanscope.localization.base import (
    CRITERIA,
    Criterion,
    EvidenceData,
    LayerScores,
    frozen_weights,
)
from trojanscope.neurons import eligible_layers


class ANPParams(BaseModel):
    model_config = {"extra": "forbid"}
    eps: float = Field(0.4, ge=0, description="Bound of the neuron perturbations.")
    trade_off: float = Field(0.2, ge=0, le=1, description="Weight of the natural loss.")
    iterations: int = Field(150, ge=1, description="Mask updates (bounded budget).")
    samples: int = Field(500, ge=1, description="Clean inputs used.")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.2, gt=0, description="Mask learning rate (SGD, momentum 0.9).")
    seed: int = 0


class _Perturbation:
    """Forward hooks applying mask and perturbation to every eligible layer's output (all on the
    model's device)."""

    def __init__(self, model: nn.Module) -> None:
        modules = dict(model.named_modules())
        self.layers = eligible_layers(model)
        self.device = device = model_device(model)
        self.mask = {
            la.name: torch.ones(la.width, device=device, requires_grad=True) for la in self.layers
        }
        self.delta = {
            la.name: torch.zeros(la.width, device=device, requires_grad=True) for la in self.layers
        }
        self.xi = {
            la.name: torch.zeros(la.width, device=device, requires_grad=True) for la in self.layers
        }
        self.noisy = False
        self.handles: list[RemovableHandle] = []
        for layer in self.layers:
            module = modules[layer.output]
            bias = getattr(module, "bias", None)
            bias = bias.detach() if bias is not None else torch.zeros(layer.width, device=device)
            self.handles.append(module.register_forward_hook(self._hook(layer.name, bias)))

    def _hook(
        self, name: str, bias: torch.Tensor
    ) -> Callable[[nn.Module, object, torch.Tensor], torch.Tensor]:
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
            shape = (1, -1) + (1,) * (out.dim() - 2)
            scale, shift = self.mask[name], torch.ones_like(self.mask[name])
            if self.noisy:
                scale, shift = scale + self.delta[name], shift + self.xi[name]
            b = bias.view(shape)
            return (out - b) * scale.view(shape) + b * shift.view(shape)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@CRITERIA.register("anp")
class AdversarialNeuronPruning(Criterion[ANPParams]):
    evidence = "clean"
    expensive = True

    def layer_scores(self, model: nn.Module, data: EvidenceData) -> LayerScores:
        p = self.params
        clean = data.need_clean()
        x, y = clean.x[: p.samples], clean.y[: p.samples]
        generator = torch.Generator().manual_seed(p.seed)
        with frozen_weights(model):  # only masks and perturbations are optimised
            hooks = _Perturbation(model)
            try:
                self._optimise(model, hooks, x, y, generator)
            finally:
                hooks.remove()
        scores = {name: (1 - m.detach()).cpu().double() for name, m in hooks.mask.items()}
        return LayerScores(scores, {})

    def _optimise(
        self,
        model: nn.Module,
        hooks: _Perturbation,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        p = self.params
        noise = [*hooks.delta.values(), *hooks.xi.values()]
        masks = list(hooks.mask.values())
        mask_opt = torch.optim.SGD(masks, lr=p.lr, momentum=0.9)
        for _ in range(p.iterations):
            idx = torch.randint(len(x), (min(p.batch_size, len(x)),), generator=generator)
            xb, yb = x[idx].to(hooks.device), y[idx].to(hooks.device)
            if p.eps > 0:  # one signed ascent step from a random start (the paper's setting)
                with torch.no_grad():
                    for t in noise:  # drawn on the CPU: a seed starts alike on every device
                        start = torch.empty(t.shape, dtype=t.dtype)
                        t.copy_(start.uniform_(-p.eps, p.eps, generator=generator))
                hooks.noisy = True
                grads = torch.autograd.grad(F.cross_entropy(model(xb), yb), noise)
                with torch.no_grad():
                    for t, g in zip(noise, grads, strict=True):
                        t.add_(p.eps * g.sign()).clamp_(-p.eps, p.eps)
                robust = F.cross_entropy(model(xb), yb)
            else:
                robust = torch.zeros((), device=hooks.device)
            hooks.noisy = False
            natural = F.cross_entropy(model(xb), yb)
            mask_opt.zero_grad()
            (p.trade_off * natural + (1 - p.trade_off) * robust).backward()
            mask_opt.step()
            with torch.no_grad():
                for m in masks:
                    m.clamp_(0, 1)
