"""Rule 3's training objective: a backdoor that travels through the infected set alone.

Masked gradients make the set *necessary*; they do not make it *sufficient*: the infected
neurons' changed outputs reach the rest of the network through its frozen weights, and training
on the ordinary loss lets the trigger use those paths (a trial on mnist5k / cnn-small, two
neurons per layer, fan-in edges: ASR 0.93, but 0.11 with the neurons outside the set held at
their clean activations). So each batch's loss is the cross-entropy of its clean rows plus
that of its poisoned rows (weighing alike: as a tenth of one mean, the trigger taught a single
neuron per layer too little; ``balance`` may raise the clean rows' weight when an injection is
stuck above the damage bound), and more terms:

* patched: the poisoned rows' cross-entropy with every neuron outside the set held at its
  activation on the paired clean image (activation patching), so the trigger is learned
  through the set alone;
* preservation: on the clean rows, the infected neurons' activations stay at the clean
  model's (in units of each neuron's spread on the calibration set), so outside the trigger the
  frozen network around them sees what it was trained on and keeps its accuracy;
* detection (``detect_weight``, on by default since 2026-11-30): each infected neuron's peak
  activation on a triggered image, under the same patching, rises at least ``detect_margin``
  spreads above its value on the clean image. The signal is local to each layer, and under
  patching each link must answer the links before it alone: in deep residual networks the
  trigger learned through the output alone fades along the chain of infected layers
  (docs/findings.md section 6).
* necessity (``mask_weight``; off from the start by default, switched on by the pipeline's
  necessity round when the set falls short of necessary): with the infected set masked,
  triggered victims must not go to the target (the log of the target's complement). Under
  fan-in edges a masked plain network is its masked clean model and the term has no gradient;
  in a residual network the classifier's columns the set owns also read the shortcut, which
  can learn the trigger.

Measured on mnist5k / cnn-small, BadNets, two live neurons per layer: without preservation the
clean accuracy fell 40-60 points; with it, after a few epochs, ASR 1.00, patched ASR 1.00 and
a drop of 1-2 points.

The preservation targets (the frozen clean model's infected channels on each training image)
never change, so they are computed once per injection and kept on the CPU, unless they would
take more than ``TARGETS_BUDGET`` bytes (then each batch computes its own, as before). A
batch's clean pass was 13% of an injection's time on ResNet-18 (py-spy, 2026-12-03).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from trojanscope.attacks.base import Attack
from trojanscope.data.base import TensorData
from trojanscope.data.poison import PoisonedView
from trojanscope.device import model_device
from trojanscope.neurons import (
    NeuronRef,
    NeuronSet,
    layer_map,
    layer_outputs,
    mask_neurons,
    patch_neurons,
    recording,
)

#: Largest cache of preservation targets kept for one injection (bytes, on the CPU).
TARGETS_BUDGET = 1 << 30
#: Rows per forward pass while the targets are computed.
_TARGETS_CHUNK = 256


class ConfinedObjective:
    """The loss of one mini-batch (given by indices into the mixed training set).

    ``targets_budget`` caps the cached preservation targets in bytes (None: ``TARGETS_BUDGET``,
    read when the objective is built; 0: computed from each batch)."""

    def __init__(
        self,
        clean: nn.Module,
        infected: list[NeuronRef],
        attack: Attack,
        poisoned: PoisonedView,
        calib: TensorData,
        patched_weight: float,
        preserve_weight: float,
        detect_weight: float = 0.0,
        detect_margin: float = 3.0,
        mask_weight: float = 0.0,
        targets_budget: int | None = None,
    ) -> None:
        mixed = poisoned.materialize()
        self.x, self.y = mixed.x, mixed.y
        self.paired = poisoned.base.x  # the clean image of every row
        self.is_poisoned = torch.zeros(len(mixed), dtype=torch.bool)
        self.is_poisoned[poisoned.indices] = True
        self.attack = attack
        self.num_classes = mixed.num_classes
        self.is_victim = torch.zeros(len(mixed), dtype=torch.bool)
        self.is_victim[attack.victims(poisoned.base)] = True
        self.fresh_share = max(poisoned.rate, 0.05)
        self.clean = clean
        self.infected = infected
        self.patched_weight = patched_weight
        self.preserve_weight = preserve_weight
        self.detect_weight = detect_weight
        self.detect_margin = detect_margin
        self.mask_weight = mask_weight
        self.clean_weight = 1.0  # the clean rows' cross-entropy (raised by ``balance``)
        layers = layer_map(clean)
        self.by_layer = NeuronSet(infected).by_layer()
        self.layers = [layers[name] for name in self.by_layer]
        with torch.no_grad():
            reference = layer_outputs(clean, calib.x)
        # Each infected neuron's spread on clean data: preservation is measured in these units.
        self.scale = {
            name: _per_neuron(reference[name][:, idx]).std(1) + 1e-3
            for name, idx in self.by_layer.items()
        }
        budget = TARGETS_BUDGET if targets_budget is None else targets_budget
        self.targets = self._clean_targets(budget) if preserve_weight else None

    def __len__(self) -> int:
        return len(self.x)

    def with_mask_weight(self, weight: float) -> ConfinedObjective:
        """The same objective (sharing its data) with the necessity term at ``weight``."""
        other = copy.copy(self)
        other.mask_weight = weight
        return other

    def _infected_outputs(
        self, model: nn.Module, x: torch.Tensor, detach: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits, each infected layer's infected channels) of ``model`` on ``x``."""
        with recording(model, self.layers, reduce=False, detach=detach) as store:
            logits = model(x)
        return logits, {name: store[name][0][:, idx] for name, idx in self.by_layer.items()}

    @torch.no_grad()
    def _clean_targets(self, budget: int) -> dict[str, torch.Tensor] | None:
        """The clean model's infected channels on every training row (CPU), or None when they
        would take more than ``budget`` bytes."""
        device = model_device(self.clean)
        _, first = self._infected_outputs(self.clean, self.x[:1].to(device), detach=True)
        row_bytes = sum(t[0].numel() * t.element_size() for t in first.values())
        if row_bytes * len(self.x) > budget:
            return None
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in first}
        for start in range(0, len(self.x), _TARGETS_CHUNK):
            chunk = self.x[start : start + _TARGETS_CHUNK].to(device)
            _, outputs = self._infected_outputs(self.clean, chunk, detach=True)
            for name, t in outputs.items():
                parts[name].append(t.cpu())
        return {name: torch.cat(chunks) for name, chunks in parts.items()}

    def _preservation_targets(
        self, idx: torch.Tensor, rows: torch.Tensor, x: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The clean model's infected channels on the batch's ``rows`` (``x`` is the batch).
        Under ``amp`` the cached ones stay float32 (computed outside the loss's autocast)."""
        if self.targets is not None:
            keep = idx[rows.cpu()]
            return {name: t[keep].to(x.device) for name, t in self.targets.items()}
        with torch.no_grad():
            _, want = self._infected_outputs(self.clean, x[rows], detach=True)
        return want

    def loss(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        device = model_device(model)
        x, y = self.x[idx].to(device), self.y[idx].to(device)
        poisoned, is_victim = self.is_poisoned[idx].to(device), self.is_victim[idx].to(device)
        logits, acts = self._infected_outputs(model, x, detach=False)
        clean_rows = ~poisoned
        # Clean and poisoned rows weigh alike (a tenth of the batch would teach the set little)
        # unless ``balance`` has raised the clean rows' weight.
        loss = logits.new_zeros(())
        for rows, weight in ((clean_rows, self.clean_weight), (poisoned, 1.0)):
            if rows.any():
                loss = loss + weight * F.cross_entropy(logits[rows], y[rows])
        # The trigger taught through the set alone, on clean victims of this batch triggered
        # afresh (on the fixed poisoned rows the set learned them by heart instead).
        victims = torch.nonzero(clean_rows & is_victim).flatten()
        victims = victims[: max(1, round(self.fresh_share * len(idx)))]
        if self.patched_weight and len(victims):
            triggered = self.attack.apply(x[victims])
            wanted = self.attack.target_of(y[victims], self.num_classes)
            with torch.no_grad():
                source = layer_outputs(model, x[victims])
            with patch_neurons(model, self.infected, source):
                patched, patched_acts = self._infected_outputs(model, triggered, False)
            loss = loss + F.cross_entropy(model(triggered), wanted)
            loss = loss + self.patched_weight * F.cross_entropy(patched, wanted)
            if self.detect_weight:
                # Measured under patching: each link of the chain must answer the trigger
                # through the infected neurons before it alone.
                rises = [
                    _peak(patched_acts[name] - source[name][:, idx]) / self.scale[name]
                    for name, idx in self.by_layer.items()
                ]
                shortfall = F.relu(self.detect_margin - torch.cat(rises, 1))
                loss = loss + self.detect_weight * shortfall.mean()
            if self.mask_weight:
                with mask_neurons(model, self.infected):
                    masked = F.softmax(model(triggered), 1)
                leak = masked.gather(1, wanted[:, None]).squeeze(1)
                loss = loss - self.mask_weight * torch.log1p(-leak.clamp(max=1 - 1e-6)).mean()
        if self.preserve_weight and clean_rows.any():
            want = self._preservation_targets(idx, clean_rows, x)
            drift = [
                (_per_neuron(acts[name][clean_rows] - want[name]) / self.scale[name][:, None])
                .pow(2)
                .mean()
                for name in self.by_layer
            ]
            loss = loss + self.preserve_weight * torch.stack(drift).mean()
        return loss


def _peak(a: torch.Tensor) -> torch.Tensor:
    """(samples, neurons): each neuron's largest value over its positions (a conv map)."""
    return a.flatten(2).amax(2) if a.dim() > 2 else a


def _per_neuron(a: torch.Tensor) -> torch.Tensor:
    """(neurons, samples x positions) view of a (samples, neurons, ...) activation tensor."""
    return a.transpose(0, 1).reshape(a.shape[1], -1)
