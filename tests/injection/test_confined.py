import copy

import torch

from trojanscope.attacks.base import ATTACKS
from trojanscope.injection.confined import ConfinedObjective
from trojanscope.neurons import NeuronRef


def test_preservation_is_zero_on_the_clean_model_and_grows_when_the_set_drifts(
    clean_digits_model, digits
):
    attack = ATTACKS.create("badnets", seed=0)
    data = digits.train.subset(torch.arange(256))
    infected = [NeuronRef("conv2", 3), NeuronRef("fc1", 5)]

    def loss(model, patched, preserve):
        objective = ConfinedObjective(
            clean_digits_model, infected, attack, attack.poison_train(data), data, patched, preserve
        )
        return float(objective.loss(model, torch.arange(len(objective))))

    model = copy.deepcopy(clean_digits_model)
    assert loss(model, 0.0, 1.0) == loss(model, 0.0, 0.0)  # no drift at the start
    with torch.no_grad():
        model.fc1.weight[5] += 0.5  # the set's own weights move: its clean activations drift
    assert loss(model, 0.0, 1.0) > loss(model, 0.0, 0.0)
    assert loss(model, 1.0, 0.0) > loss(model, 0.0, 0.0)  # the backdoor terms add to the loss
