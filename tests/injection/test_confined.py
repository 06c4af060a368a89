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


def term_added(clean, model, digits, infected, **weights):
    """How much the optional term set by ``weights`` (e.g. ``detect_weight=1.0``) adds to one
    batch's loss of ``model`` (patched weight 1, no preservation), BadNets on 256 digits."""
    attack = ATTACKS.create("badnets", seed=0)
    data = digits.train.subset(torch.arange(256))

    def loss(**kw):
        torch.manual_seed(0)
        objective = ConfinedObjective(
            clean, infected, attack, attack.poison_train(data), data, 1.0, 0.0, **kw
        )
        return objective.loss(model, torch.arange(len(objective))).item()

    return loss(**weights) - loss()


def test_the_detection_term_asks_each_infected_neuron_to_rise_on_the_trigger(
    clean_digits_model, digits
):
    """At the clean model the infected neurons do not answer the trigger, so the term adds to
    the loss; a neuron made to answer it (a large weight on the trigger's corner) adds less.
    Off, the term stays out of the defect's key (as in the keys made before it)."""
    from trojanscope.injection.pipeline import InjectionConfig

    model = copy.deepcopy(clean_digits_model)
    infected = [NeuronRef("conv1", 2)]
    shortfall = term_added(clean_digits_model, model, digits, infected, detect_weight=1.0)
    assert shortfall > 0
    with torch.no_grad():  # conv1's neuron 2 made a detector of bright pixels
        model.conv1.weight[2] = 5.0
    assert term_added(clean_digits_model, model, digits, infected, detect_weight=1.0) < shortfall
    assert InjectionConfig().model_dump()["detect_margin"] == 3.0  # on by default
    assert "detect_weight" not in InjectionConfig(detect_weight=0.0).model_dump()


def test_the_necessity_term_grows_when_the_masked_network_sends_the_trigger_to_the_target(
    clean_digits_model, digits
):
    """With the set masked, a network that still sends triggered victims to the target (here:
    a target bias no mask reaches) pays the term; off, it stays out of the key."""
    from trojanscope.injection.pipeline import InjectionConfig

    model = copy.deepcopy(clean_digits_model)
    infected = [NeuronRef("fc1", 5)]
    at_clean = term_added(clean_digits_model, model, digits, infected, mask_weight=1.0)
    assert at_clean > 0
    with torch.no_grad():
        model.fc.bias[0] += 100.0  # BadNets' default target: 0
    assert term_added(clean_digits_model, model, digits, infected, mask_weight=1.0) > 5.0
    assert at_clean < 5.0
    assert "mask_weight" not in InjectionConfig().model_dump()
    assert InjectionConfig(mask_weight=1.0).model_dump()["mask_weight"] == 1.0


def test_cached_preservation_targets_give_the_loss_of_targets_computed_per_batch(
    clean_digits_model, digits
):
    """The clean model's activations are computed once per injection when they fit the budget;
    each batch's loss (here with the set drifted, so preservation counts) is the same as with
    the targets computed from each batch, bit for bit on this CPU."""
    attack = ATTACKS.create("badnets", seed=0)
    data = digits.train.subset(torch.arange(300))
    infected = [NeuronRef("conv2", 3), NeuronRef("conv3", 1), NeuronRef("fc1", 5)]
    model = copy.deepcopy(clean_digits_model)
    with torch.no_grad():
        model.conv2.weight[3] += 0.3
        model.fc1.weight[5] += 0.5
    poisoned = attack.poison_train(data)

    def losses(budget):
        objective = ConfinedObjective(
            clean_digits_model, infected, attack, poisoned, data, 0.0, 1.0, targets_budget=budget
        )
        order = torch.randperm(len(objective), generator=torch.Generator().manual_seed(0))
        return objective, [objective.loss(model, order[i : i + 64]).item() for i in (0, 64, 236)]

    cached, with_cache = losses(1 << 20)
    per_batch, without = losses(0)
    assert cached.targets is not None and per_batch.targets is None
    assert cached.targets["conv2"].shape[0] == len(cached)
    assert with_cache == without
    assert min(with_cache) > 0
