"""Per-neuron ground truth of a defect: contribution to the backdoor and activation shift."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from trojanscope.data.base import TensorData
from trojanscope.models.training import predict, target_margin
from trojanscope.neurons import NeuronRef, activation_shift, layer_map, mask_neurons

#: An infected neuron carries the backdoor if masking it alone removes at least this share of
#: the set's summed margin drops (training may leave some of the set unused).
CARRYING_SHARE = 0.02


@dataclass(frozen=True)
class InfectedNeuron:
    ref: NeuronRef
    rank: int  # position in the injection order
    contribution: float
    activation_shift: float
    carrying: bool = True  # its own contribution is at least CARRYING_SHARE


def ground_truth(
    model: nn.Module,
    infected: list[NeuronRef],
    clean_victims: TensorData,
    triggered: TensorData,
) -> list[InfectedNeuron]:
    """Contribution: mean drop of the target margin on triggered inputs when the neuron alone
    is masked, clipped at 0 and normalised to sum 1 (uniform if all drops are 0, and then no
    neuron is ``carrying``)."""
    base = target_margin(predict(model, triggered.x), triggered.y).mean()
    drops = []
    for ref in infected:
        with mask_neurons(model, [ref]):
            masked = target_margin(predict(model, triggered.x), triggered.y).mean()
        drops.append(max(0.0, float(base - masked)))
    total = sum(drops)
    contrib = [d / total for d in drops] if total > 0 else [1 / len(drops)] * len(drops)
    shift = activation_shift(model, clean_victims.x, triggered.x)
    layers = layer_map(model)
    assert all(ref.layer in layers for ref in infected)
    return [
        InfectedNeuron(
            ref, rank, c, float(shift[ref.layer][ref.index]), total > 0 and c >= CARRYING_SHARE
        )
        for rank, (ref, c) in enumerate(zip(infected, contrib, strict=True))
    ]
