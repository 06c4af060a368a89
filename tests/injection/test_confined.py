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
        return objective.loss(model, torch.arange(len(objective))).item()

    model = copy.deepcopy(clean_digits_model)
    assert loss(model, 0.0, 1.0) == loss(model, 0.0, 0.0)  # no drift at the start
    with torch.no_grad():
        model.fc1.weight[5] += 0.5  # the set's own weights move: its clean activations drift
    assert loss(model, 0.0, 1.0) > loss(model, 0.0, 0.0)
    assert loss(model, 1.0, 0.0) > loss(model, 0.0, 0.0)  # the backdoor terms add to the loss


def test_the_detection_term_asks_each_infected_neuron_to_rise_on_the_trigger(
    clean_digits_model, digits
):
    """At the clean model the infected neurons do not answer the trigger, so the term adds to
    the loss; a neuron made to answer it (a large weight on the trigger's corner) adds less.
    Off, the term stays out of the defect's key (as in the keys made before it)."""
    from trojanscope.injection.pipeline import InjectionConfig

    attack = ATTACKS.create("badnets", seed=0)
    data = digits.train.subset(torch.arange(256))
    infected = [NeuronRef("conv1", 2)]

    def loss(model, detect):
        torch.manual_seed(0)
        objective = ConfinedObjective(
            clean_digits_model,
            infected,
            attack,
            attack.poison_train(data),
            data,
            1.0,
            0.0,
            detect_weight=detect,
        )
        return objective.loss(model, torch.arange(len(objective))).item()

    model = copy.deepcopy(clean_digits_model)
    assert loss(model, 1.0) > loss(model, 0.0)
    shortfall = loss(model, 1.0) - loss(model, 0.0)
    with torch.no_grad():  # conv1's neuron 2 made a detector of bright pixels
        model.conv1.weight[2] = 5.0
    assert loss(model, 1.0) - loss(model, 0.0) < shortfall
    assert InjectionConfig().model_dump()["detect_margin"] == 3.0  # on by default
    assert "detect_weight" not in InjectionConfig(detect_weight=0.0).model_dump()


def test_the_necessity_term_grows_when_the_masked_network_sends_the_trigger_to_the_target(
    clean_digits_model, digits
):
    """With the set masked, a network that still sends triggered victims to the target (here:
    a target bias no mask reaches) pays the term; off, it stays out of the key."""
    from trojanscope.injection.pipeline import InjectionConfig

    attack = ATTACKS.create("badnets", seed=0)
    data = digits.train.subset(torch.arange(256))

    def term(model):
        def loss(weight):
            torch.manual_seed(0)
            objective = ConfinedObjective(
                clean_digits_model,
                [NeuronRef("fc1", 5)],
                attack,
                attack.poison_train(data),
                data,
                1.0,
                0.0,
                mask_weight=weight,
            )
            return objective.loss(model, torch.arange(len(objective))).item()

        return loss(1.0) - loss(0.0)

    model = copy.deepcopy(clean_digits_model)
    at_clean = term(model)
    assert at_clean > 0
    with torch.no_grad():
        model.fc.bias[attack.target_of(torch.tensor([1]), 10)] += 100.0
    assert term(model) > 5.0 > at_clean
    assert "mask_weight" not in InjectionConfig().model_dump()
    assert InjectionConfig(mask_weight=1.0).model_dump()["mask_weight"] == 1.0
