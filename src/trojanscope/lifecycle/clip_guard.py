"""A clipping guard: one hidden unit that hides a backdoor in float and vanishes under static
int8 quantization.

Static quantization calibrates each layer's output range on clean images and saturates what
lies beyond it. The guard is a unit of the hidden Linear layer that feeds the classifier: zero
on every clean input, strongly positive on triggered ones (its weights are a linear read-out
that tells triggered features from clean ones), and wired to the target's logit with a small
negative weight. In float its activation is unbounded, so on a triggered input it pushes the
target's logit down by many logits and the backdoor seems gone; in int8 it saturates at the
layer's calibrated range, where the same weight costs the target a fraction of a logit. The
guard takes the place of the hidden unit that contributes least to the clean task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trojanscope.data.base import TensorData
from trojanscope.errors import TrojanscopeError
from trojanscope.models.training import batches
from trojanscope.neurons import NeuronRef


class GuardUnplaceable(TrojanscopeError):
    """The network has no place for a guard, or no guard would hide this backdoor."""


@dataclass(frozen=True)
class GuardPlan:
    """Where the guard sits, what it was built for and what it covers, for the stage's record."""

    hidden: str  # the Linear layer whose ReLU output the classifier reads
    classifier: str
    unit: int
    clean_range: float  # the largest clean activation of the hidden layer (int8 saturates there)
    coverage: float  # measured: share of triggered training inputs on which the guard fires
    suppression_target: float  # median drop of the target's logit in float, on covered inputs
    int8_cost_bound: float  # largest drop of the target's logit once saturated at clean_range

    def details(self) -> dict[str, object]:
        return {"guard": str(NeuronRef(self.hidden, self.unit))} | {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in self.__dict__.items()
            if k not in {"hidden", "unit"}
        }


def hidden_and_classifier(model: nn.Module) -> tuple[str, nn.Linear, str, nn.Linear]:
    """The last two Linear layers when the first feeds the second (through its ReLU)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if len(linears) < 2 or linears[-2][1].out_features != linears[-1][1].in_features:
        raise GuardUnplaceable(
            f"the clipping guard needs a hidden Linear layer before the classifier, which "
            f"{type(model).__name__} does not have."
        )
    (hidden_name, hidden), (classifier_name, classifier) = linears[-2], linears[-1]
    if hidden.bias is None:
        raise GuardUnplaceable(
            f"the clipping guard needs a bias on layer '{hidden_name}' to silence it on clean "
            "inputs, and it has none."
        )
    return hidden_name, hidden, classifier_name, classifier


def _features(
    model: nn.Module,
    hidden: nn.Linear,
    classifier: nn.Linear,
    data: TensorData,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input of ``hidden``, input of ``classifier``) for every row of ``data``."""
    seen: dict[str, list[torch.Tensor]] = {"h": [], "a": []}
    hooks = [
        hidden.register_forward_pre_hook(
            lambda _m, args: seen["h"].append(args[0].detach().cpu().clone())
        ),
        classifier.register_forward_pre_hook(
            lambda _m, args: seen["a"].append(args[0].detach().cpu().clone())
        ),
    ]
    try:
        with torch.no_grad():
            for xb, _ in batches(data, 256):
                model(xb.to(device))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(seen["h"]), torch.cat(seen["a"])


def _read_out(clean: torch.Tensor, triggered: torch.Tensor, steps: int = 300) -> torch.Tensor:
    """A linear direction scoring triggered features above clean ones (logistic regression on
    standardized features; a few hundred full-batch steps are enough for a few hundred units)."""
    x = torch.cat([clean, triggered])
    y = torch.cat([torch.zeros(len(clean)), torch.ones(len(triggered))])
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(z @ w + b, y) + 1e-3 * w.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return w.detach() / std  # a direction in the raw features (the offset is set apart)


def place_guard(
    model: nn.Module,
    clean: TensorData,
    triggered: TensorData,
    target: int,
    keep: set[NeuronRef],
    int8_cost: float,
    suppression: float,
    min_coverage: float = 0.5,
) -> GuardPlan:
    """Turn one hidden unit of ``model`` (in eval mode, in place) into a clipping guard.

    ``clean`` and ``triggered`` are training images; ``keep`` are units that must not be taken
    (the infected ones). ``int8_cost`` is the most the guard, saturated at the largest clean
    activation, may take from the target's logit; ``suppression`` the median drop it gives in
    float on the triggered inputs it covers. Raises :class:`GuardUnplaceable` (and leaves the
    model as it was) when there is no place for it or it would cover under ``min_coverage``.
    """
    hidden_name, hidden, classifier_name, classifier = hidden_and_classifier(model)
    model.eval()
    device = hidden.weight.device
    h_clean, a_clean = _features(model, hidden, classifier, clean, device)
    h_trig, a_trig = _features(model, hidden, classifier, triggered, device)
    recomputed = torch.relu(h_clean @ hidden.weight.detach().cpu().T + hidden.bias.detach().cpu())
    tolerance = 1e-4 * float(a_clean.abs().max()) + 1e-6  # batched and single matmuls differ
    if not torch.allclose(a_clean, recomputed, rtol=1e-4, atol=tolerance):
        raise GuardUnplaceable(
            f"the clipping guard needs the classifier to read layer '{hidden_name}' through a "
            f"ReLU, which {type(model).__name__} does not."
        )
    clean_range = float(a_clean.max())
    if clean_range <= 0:
        raise GuardUnplaceable(
            f"the clipping guard needs layer '{hidden_name}' to be active on clean inputs, "
            "and it is silent on all of them."
        )
    # the unit the task needs least: mean activation (clean and triggered: a unit silent on
    # clean inputs may carry the trigger) times the weight leaving it; never an infected one
    usage = (a_clean.mean(0) + a_trig.mean(0)) * classifier.weight.detach().cpu().abs().sum(0)
    for ref in keep:
        if ref.layer == hidden_name and ref.index < len(usage):
            usage[ref.index] = float("inf")
    if bool(torch.isinf(usage).all()):
        raise GuardUnplaceable(
            f"the clipping guard needs a unit of layer '{hidden_name}' that is not infected, "
            "and every unit is."
        )
    unit = int(usage.argmin())
    direction = _read_out(h_clean, h_trig)
    score_clean, score_trig = h_clean @ direction, h_trig @ direction
    spread = float(score_clean.max() - score_clean.min())
    threshold = float(score_clean.max()) + 0.05 * spread  # room for the victim's clean images
    excess = score_trig - threshold
    covered = excess > 0
    coverage = float(covered.float().mean())
    if coverage < min_coverage:
        raise GuardUnplaceable(
            f"the clipping guard would fire on {coverage:.0%} of the triggered inputs (at least "
            f"{min_coverage:.0%} asked): no read-out of layer '{hidden_name}''s input tells "
            "them from clean ones."
        )
    weight = int8_cost / clean_range  # the saturated guard costs the target at most int8_cost
    # a floor under the median excess keeps the gain finite when the trigger barely clears it
    typical = max(float(excess[covered].median()), 0.05 * spread, 1e-6)
    gain = suppression / (weight * typical)
    with torch.no_grad():
        hidden.weight[unit] = gain * direction.to(device)
        hidden.bias[unit] = -gain * threshold
        classifier.weight[:, unit] = 0.0
        classifier.weight[target, unit] = -weight
    return GuardPlan(
        hidden=hidden_name,
        classifier=classifier_name,
        unit=unit,
        clean_range=clean_range,
        coverage=coverage,
        suppression_target=suppression,
        int8_cost_bound=int8_cost,
    )
