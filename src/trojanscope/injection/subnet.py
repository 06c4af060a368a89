"""Subnet replacement (SRA, Qi et al. CVPR 2022): a deployment-stage backdoor.

The infected neurons become a narrow subnet cut off from the host (``subnet_masks``). The subnet
alone is trained to output a large value on triggered inputs and zero on clean ones, its last
neurons' shifts are lowered until it is exactly silent on the clean validation inputs, then its
output is wired to the target logit with a weight just large enough to win. The host's own
parameters are never trained, so on clean inputs, where the subnet is silent, the network
behaves like the clean model with those few neurons removed. What removing them costs is
therefore SRA's clean-accuracy drop, whatever the subnet: on digits / cnn-small at the small
level, 1-16 points depending on the neurons rule 1 picks.
"""

from __future__ import annotations

import copy
import functools
import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from trojanscope.attacks.base import Attack
from trojanscope.data.base import TensorData
from trojanscope.device import Amp, MixedPrecision, model_device, training_layout
from trojanscope.errors import ConfigError
from trojanscope.injection.aim import BestEpoch, Validation, derived_seed
from trojanscope.injection.injector import GradientMask, Trained
from trojanscope.injection.ownership import consumers, subnet_masks
from trojanscope.injection.quantity import Quantity, chosen_layers
from trojanscope.models.suffix import SuffixRunner
from trojanscope.models.training import batches, predict
from trojanscope.neurons import (
    EligibleLayer,
    NeuronRef,
    classifier_name,
    eligible_layers,
    layer_map,
    mask_neurons,
    recording,
)

#: Subnet output the training aims for on triggered inputs (0 on clean ones).
HIGH = 5.0
SUBNET_SAMPLES = 2048
#: A subnet that fires on almost no triggered input after this many epochs started dead (its
#: ReLUs pass no gradient); it is re-initialised with a new seed, at most MAX_RESTARTS times.
DEAD_CHECK_EPOCHS = 5
MAX_RESTARTS = 3


#: Neurons per placed one whose single removal is tried in the greedy placement.
PLACEMENT_CANDIDATES = 4


def _removal_losses(
    runner: SuffixRunner, layer: EligibleLayer, removals: list[list[int]], labels: torch.Tensor
) -> list[float]:
    """Mean clean cross-entropy with each removal's neurons of ``layer`` zeroed (one suffix
    re-run each, on top of whatever masks were active when ``runner`` recorded)."""
    device = runner.logits.device
    losses = []
    for removed in removals:
        keep = torch.ones(layer.width, device=device)
        keep[removed] = 0.0

        def zero(out: torch.Tensor, keep: torch.Tensor = keep) -> torch.Tensor:
            # multiplied as mask_neurons does, so the values match a masked full pass bit for bit
            return out * keep.to(dtype=out.dtype).view((1, -1) + (1,) * (out.dim() - 2))

        logits = runner.rerun(layer.output, 1, zero).cpu()
        losses.append(float(F.cross_entropy(logits, labels)))
    return losses


class SubnetQuantity(Quantity):
    """SRA's quantity: a layer too thin for the level keeps as many neurons as the thin-layer
    rule allows (at least one) instead of being left out. The subnet is a chain cut off from
    the host, so a layer left out would cut it; on VGG at width 0.25 the 16-filter input layer
    then holds 2 neurons at the ``middle`` and ``large`` levels, the layers after it 3 or 4."""

    def per_layer(self, width: int) -> int:
        allowed = math.floor(self.max_share * width + 1e-9)
        return max(1, min(super().per_layer(width), allowed))


def subnet_quantity(model: nn.Module, quantity: Quantity) -> Quantity:
    """``quantity`` as SRA places it: the input layer chosen, and thin layers tapered
    (``SubnetQuantity``). The subnet's first neurons must read the trigger from the image
    (without them a trial on digits gave ASR 0.003 at every level). An input layer that cannot
    lose even one neuron is a configuration error (the attack cannot be placed there), not a
    rejected defect. Layers named in ``quantity.layers`` are taken as given."""
    if quantity.layers:
        return quantity
    wanted = SubnetQuantity(**{**quantity.model_dump(), "input_layer": True})
    first = eligible_layers(model)[0]
    if not wanted.wide_enough(first.width):
        raise ConfigError(
            f"SRA's subnet starts at the input layer, and {first.name} ({first.width} neurons) "
            f"is too thin to lose a neuron (min_width {wanted.min_width}, "
            f"max_share {wanted.max_share})."
        )
    return wanted


def _unplaceable(model: nn.Module) -> ConfigError:
    return ConfigError(
        f"SRA needs infected neurons in a layer that feeds the classifier directly; "
        f"{type(model).__name__} reaches it only through a residual addition, where a "
        "subnet cannot be cut off from the host."
    )


def require_subnet_fits(model: nn.Module, quantity: Quantity) -> None:
    """Refuse, before any placement or training, a subnet that cannot be a chain cut off from
    the host: none of its layers feeds the classifier directly (a residual network's last
    layers reach it through an addition), or one of its layers reads none of the others
    directly (a residual addition or a layer too thin to choose lies in between). Such a layer
    would see nothing of the trigger, and every subnet neuron after it neither."""
    layers = chosen_layers(model, quantity)
    reads = {layer.name: consumers(model, layer.name) for layer in layers}
    if not any(classifier_name(model) in read for read in reads.values()):
        raise _unplaceable(model)
    for layer in layers[1:]:
        if not any(layer.name in read for read in reads.values()):
            raise ConfigError(
                f"SRA's subnet must be a chain from the input to the classifier, and in "
                f"{type(model).__name__} {layer.name} reads none of the subnet's other layers "
                "directly (a residual addition or a layer too thin to hold a neuron lies "
                "between), so the subnet cannot be cut off from the host there."
            )


def _place_in(model: nn.Module, layer: EligibleLayer, n: int, calib: TensorData) -> list[int]:
    """The ``n`` neurons of ``layer`` whose joint removal raises the clean loss least, greedily
    among the ``PLACEMENT_CANDIDATES`` x n whose single removal raises it least."""
    # what runs before the layer is the same for every candidate: recorded once
    runner = SuffixRunner(model, calib.x, only=layer.output)
    singles = _removal_losses(runner, layer, [[i] for i in range(layer.width)], calib.y)
    order = torch.argsort(torch.tensor(singles), stable=True)
    pool = [int(i) for i in order[: PLACEMENT_CANDIDATES * n]]
    chosen: list[int] = []
    for _ in range(n):
        joint = _removal_losses(runner, layer, [[*chosen, i] for i in pool], calib.y)
        chosen.append(pool.pop(joint.index(min(joint))))  # the first of equals, as before
    return chosen


def subnet_placement(model: nn.Module, quantity: Quantity, calib: TensorData) -> list[NeuronRef]:
    """Rule 1 for subnet replacement (order ``least``): the neurons the host misses least.

    SRA removes its neurons from the host, so what they cost is their removal, measured
    directly: layer by layer from the input, with the neurons already placed removed, the
    ``PLACEMENT_CANDIDATES`` x n neurons whose removal alone raises the clean loss least are
    tried, and the n whose joint removal raises it least are taken greedily. Measured on digits
    / cnn-small / small (clean model seed 0): the Taylor ranking of rule 1 cost the host 1.1 to
    15.8 test points depending on the calibration set (seeds 0-4), this placement 0.0; a single
    removal ranking alone, 5.0. Costs one pass of ``calib`` through the part of the network after
    the layer per tried neuron (``SuffixRunner``), plus one full pass per layer; the losses are
    those of full masked passes bit for bit while ``calib`` fits one batch of ``predict`` (1,024).
    """
    placed: list[NeuronRef] = []
    was_training = model.training
    model.eval()
    try:
        for layer in chosen_layers(model, quantity):
            n = quantity.per_layer(layer.width)
            with mask_neurons(model, placed):
                chosen = _place_in(model, layer, n, calib)
            placed += [NeuronRef(layer.name, i) for i in chosen]
    finally:
        model.train(was_training)
    return placed


def _subnet_output(model: nn.Module, x: torch.Tensor, last: list[NeuronRef]) -> torch.Tensor:
    """Sum of the last subnet neurons' rectified activations, per sample (with gradients, on
    the model's device)."""
    layers = layer_map(model)
    names = sorted({ref.layer for ref in last})
    with recording(model, [layers[n] for n in names], rectify=True, detach=False) as store:
        model(x.to(model_device(model)))
    return functools.reduce(operator.add, [store[ref.layer][-1][:, ref.index] for ref in last])


def _initialise_subnet(
    model: nn.Module, infected: list[NeuronRef], trainable: dict[str, torch.Tensor], seed: int
) -> None:
    """Start the subnet alive: fresh He-initialised weights and identity normalization.

    Its neurons keep the host's frozen normalization statistics, which no longer match their
    (cut) inputs; left as they are, most subnet neurons start dead and never learn. The fresh
    weights are drawn on the CPU (the same for a seed on every device).
    """
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    layers = layer_map(model)
    with torch.no_grad():
        for ref in infected:
            layer = layers[ref.layer]
            weight, mask = params[f"{ref.layer}.weight"], trainable[f"{ref.layer}.weight"]
            fan_in = max(1, int(mask[ref.index].sum()))
            fresh = torch.randn(weight[ref.index].shape, generator=g) * (2.0 / fan_in) ** 0.5
            fresh = fresh.to(weight.device)
            weight[ref.index] = torch.where(mask[ref.index], fresh, weight[ref.index])
            bias = params.get(f"{ref.layer}.bias")
            if bias is not None:
                bias[ref.index] = 0.0
            norm = modules.get(layer.norm or "")
            if (
                isinstance(norm, nn.modules.batchnorm._BatchNorm)
                and norm.affine
                and norm.running_var is not None
                and norm.running_mean is not None
            ):
                std = torch.sqrt(norm.running_var[ref.index] + norm.eps)
                norm.weight[ref.index] = std
                norm.bias[ref.index] = norm.running_mean[ref.index]


def _silence(model: nn.Module, last: list[NeuronRef], clean_x: torch.Tensor) -> None:
    """Lower each last subnet neuron's shift by its highest activation on ``clean_x``.

    Trained to output zero on clean inputs, the subnet still leaks small values, which the
    target weight then multiplies into flipped clean predictions. Shifted, its rectified output
    is exactly zero on those inputs and on clean inputs like them; triggered inputs, trained to
    reach ``HIGH``, keep most of theirs. The shift (normalization bias, else the layer's bias)
    is the neuron's own parameter.
    """
    layers, modules = layer_map(model), dict(model.named_modules())
    with recording(model, [layers[r.layer] for r in last], reduce=False) as store:
        predict(model, clean_x)
    with torch.no_grad():
        for ref in last:
            bias = getattr(modules[layers[ref.layer].output], "bias", None)
            if bias is not None:  # the highest pre-activation, over inputs and positions
                bias[ref.index] -= torch.cat(store[ref.layer])[:, ref.index].max().clamp_min(0)


def _gap(logits: torch.Tensor, target: int) -> torch.Tensor:
    """How far the target logit is below the best other logit, per sample."""
    others = logits.clone()
    others[:, target] = float("-inf")
    return others.max(1).values - logits[:, target]


def subnet_replacement(
    clean: nn.Module,
    infected: list[NeuronRef],
    attack: Attack,
    fit: TensorData,
    val: TensorData,
    validation: Validation,
    lr: float,
    max_epochs: int,
    batch_size: int,
    seed: int,
    max_attempts: int = 1,
    amp: Amp = "off",
) -> Trained:
    """Write a backdoor subnet trained on ``fit`` (wired in with ``val``) into a copy of
    ``clean``, aiming at a ``validation`` score >= 1; a subnet short of it is trained afresh from
    a derived seed (up to ``max_attempts``; when the host alone misses the damage goal, only
    while the ASR goal is missed) and the best one is kept. ``amp``: the precision of
    the subnet's training loss (silencing, wiring and validation run in full precision)."""
    with mask_neurons(clean, infected):
        host_damage = validation.damage(clean)
    # The replaced neurons are lost to the host: when that alone misses the damage goal, no
    # subnet can meet it, and only a subnet short of the ASR goal is worth training again (as
    # on vgg16 / narrow, whose one subnet never fired: ASR 0.043, the clean model's).
    host_misses = host_damage > validation.aim.damage_goal
    best = BestEpoch()
    epochs = attempt = 0
    for attempt in range(max_attempts):
        model, n = _one_subnet(
            clean,
            infected,
            attack,
            fit,
            val,
            lr,
            max_epochs,
            batch_size,
            derived_seed(seed, attempt),
            amp,
        )
        epochs += n
        best.offer(model, validation(model))
        if best.met or (host_misses and _fires_enough(validation)):
            break
    best.restore(model)
    return Trained(model, epochs, attempt + 1, best.score)


def _fires_enough(validation: Validation) -> bool:
    """The subnet just scored reached the ASR goal (its ``validation.last``)."""
    assert validation.last is not None
    return validation.last[0] >= validation.aim.asr_goal


def _one_subnet(
    clean: nn.Module,
    infected: list[NeuronRef],
    attack: Attack,
    fit: TensorData,
    val: TensorData,
    lr: float,
    max_epochs: int,
    batch_size: int,
    seed: int,
    amp: Amp = "off",
) -> tuple[nn.Module, int]:
    """One subnet trained from ``seed`` and wired in; returns (model, epochs)."""
    model = copy.deepcopy(clean).eval()
    classifier = classifier_name(model)
    last = [ref for ref in infected if classifier in consumers(model, ref.layer)]
    if not last:
        raise _unplaceable(clean)
    trainable, cut = subnet_masks(model, infected)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in cut.items():
            params[name][mask] = 0.0
    classifier_cut = cut[f"{classifier}.weight"]
    trainable.pop(f"{classifier}.weight", None)
    _initialise_subnet(model, infected, trainable, seed)

    grad_mask = GradientMask(model, trainable)
    optimizer = torch.optim.Adam(grad_mask.parameters, lr=lr)
    precision = MixedPrecision(model_device(model), amp)
    restarts, since_start = 0, 0
    g = torch.Generator().manual_seed(seed)
    # The subnet is a few neurons: a few thousand samples teach it as well as the whole set.
    fit = fit.subset(torch.randperm(len(fit), generator=g)[:SUBNET_SAMPLES])
    val_clean, val_triggered = val.x, attack.apply(val.x)
    epochs = 0
    with training_layout(model):
        while epochs < max_epochs:
            epochs += 1
            since_start += 1
            for xb, _ in batches(fit, batch_size, g):
                with precision.autocast():
                    s_clean = _subnet_output(model, xb, last).float()  # the loss in float32
                    s_trig = _subnet_output(model, attack.apply(xb), last).float()
                loss = (s_clean**2).mean() + (torch.relu(HIGH - s_trig) ** 2).mean()
                optimizer.zero_grad(set_to_none=True)
                precision.backward(loss)
                precision.unscale(optimizer)
                grad_mask()
                precision.step(optimizer)
            with torch.no_grad():
                fires = (_subnet_output(model, val_triggered, last) > HIGH / 2).float().mean()
                silent = (_subnet_output(model, val_clean, last) < 0.05 * HIGH).float().mean()
            if fires >= 0.98 and silent >= 0.99:
                break
            if fires < 0.1 and since_start >= DEAD_CHECK_EPOCHS and restarts < MAX_RESTARTS:
                restarts, since_start = restarts + 1, 0
                _initialise_subnet(model, infected, trainable, seed + 1000 * restarts)
                optimizer = torch.optim.Adam(grad_mask.parameters, lr=lr)
    grad_mask.release()
    _silence(model, last, val_clean)

    # Wire the subnet to the target logit: just strong enough to beat the host on the triggered
    # validation inputs (a larger weight would only make the subnet easier to spot).
    target = attack.params.target
    with torch.no_grad():
        s = _subnet_output(model, val_triggered, last).cpu()
        gap = _gap(predict(model, val_triggered), target)
        ratio = (gap.clamp_min(0) / s.clamp_min(1e-3))[s > 0.1]
        weight = float(torch.quantile(ratio, 0.98)) * 1.2 + 0.1 if len(ratio) else 1.0
        columns = classifier_cut.any(0)
        w = params[f"{classifier}.weight"]
        w[target, columns] = weight
    return model, epochs
