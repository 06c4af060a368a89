"""Rule 3 and 4: masked injection, exact confinement, acceptance recomputed, ground truth."""

import copy

import pytest
import torch

from tests.stand_in import stand_in, to_host
from trojanscope.attacks.base import ATTACKS
from trojanscope.data.base import DATASETS
from trojanscope.device import CPU, model_device, resolve_device
from trojanscope.injection.ownership import trainable_masks
from trojanscope.injection.pipeline import InjectionConfig, attack_success_rate, inject_defect
from trojanscope.injection.quantity import Quantity
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import CleanTraining, accuracy, train_clean
from trojanscope.neurons import NeuronRef, mask_neurons


def assert_identical_outside(clean_state, defect_model, infected, edges=None):
    """Every parameter entry and buffer not owned by the infected set is bit-identical."""
    edges = edges or InjectionConfig().edges
    masks = trainable_masks(defect_model, [n.ref for n in infected], edges)
    changed_inside = 0
    for name, value in defect_model.state_dict().items():
        before = clean_state[name]
        owned = masks.get(name, torch.zeros_like(before, dtype=torch.bool))
        assert torch.equal(value[~owned], before[~owned]), f"{name} changed outside the set"
        changed_inside += int((value[owned] != before[owned]).sum())
    assert changed_inside > 0, "injection changed nothing"


def test_bit_identical_outside_infected_set(clean_state, small_defect):
    assert_identical_outside(clean_state, small_defect.model, small_defect.infected)


def test_clean_model_is_untouched(clean_digits_model, clean_state, small_defect):
    for name, value in clean_digits_model.state_dict().items():
        assert torch.equal(value, clean_state[name])


@pytest.mark.parametrize("fixture", ["narrow_defect", "small_defect"])
def test_accepted_defect_meets_the_filter_recomputed(fixture, request, digits, clean_digits_model):
    outcome = request.getfixturevalue(fixture)
    attack = ATTACKS.create("badnets", seed=0)
    view = attack.poison_test(digits.test)
    asr = attack_success_rate(outcome.model, view)
    acc_drop = accuracy(clean_digits_model, digits.test) - accuracy(outcome.model, digits.test)
    refs = [n.ref for n in outcome.infected]
    with mask_neurons(outcome.model, refs):
        masked = attack_success_rate(outcome.model, view)
    with mask_neurons(clean_digits_model, refs):
        masked_before = attack_success_rate(clean_digits_model, view)
    assert asr >= 0.90
    assert acc_drop <= 0.03
    assert masked - masked_before <= 0.20
    # under fan-in edges the masked defect is the masked clean model, so necessity is exact
    assert masked == masked_before == outcome.masked_asr_before
    # the backdoor is new: the clean model does not already do this
    assert attack_success_rate(clean_digits_model, view) < 0.2


def test_ground_truth_is_complete(narrow_defect, small_defect):
    for outcome in (narrow_defect, small_defect):
        contributions = [n.contribution for n in outcome.infected]
        assert sum(contributions) == pytest.approx(1.0)
        assert all(c >= 0 for c in contributions)
        assert [n.rank for n in outcome.infected] == list(range(len(outcome.infected)))
        assert all(n.activation_shift >= 0 for n in outcome.infected)
    # one per eligible layer of cnn-small but the input layer (thin-layer rule)
    assert [n.ref.layer for n in narrow_defect.infected] == ["conv2", "conv3", "fc1"]


def test_fan_in_only_is_also_confined(clean_digits_model, clean_state, digits):
    config = InjectionConfig(quantity=Quantity(level="small"), edges="fan-in", max_epochs=2)
    outcome = inject_defect(clean_digits_model, digits, ATTACKS.create("badnets"), config, 0)
    assert_identical_outside(clean_state, outcome.model, outcome.infected, "fan-in")


def test_resnet18_injection_is_confined():
    splits = DATASETS.create("synthetic", n=240, size=8).load(0)
    arch = ARCHITECTURES.create("resnet18", width=0.25)
    clean = train_clean(arch, splits.train, 0, CleanTraining(epochs=1))
    state = {k: v.clone() for k, v in clean.state_dict().items()}
    config = InjectionConfig(quantity=Quantity(level="narrow"), max_epochs=1)
    outcome = inject_defect(clean, splits, ATTACKS.create("badnets", size=2), config, 0)
    # one neuron in each of the 20 conv layers but the stem (the input layer is left out)
    assert len(outcome.infected) == 19 and "conv1" not in {n.ref.layer for n in outcome.infected}
    assert_identical_outside(state, outcome.model, outcome.infected)


def test_weak_budget_is_rejected_with_a_reason(clean_digits_model, digits):
    config = InjectionConfig(quantity=Quantity(level="narrow"), max_epochs=1, lr=1e-5)
    outcome = inject_defect(clean_digits_model, digits, ATTACKS.create("badnets"), config, 0)
    assert outcome.status == "rejected"
    assert "ASR" in outcome.reason
    assert (outcome.attempts, outcome.epochs) == (config.max_attempts, config.max_attempts)
    assert outcome.aim_score < 0  # the kept weights are outside the bounds on training images


def test_retries_resume_from_the_best_epoch_and_stay_confined(
    clean_digits_model, clean_state, digits
):
    """One epoch per round cannot meet the goals: every round runs, each continuing from the
    best snapshot so far, and the result is still bit-identical outside the infected set."""
    config = InjectionConfig(quantity=Quantity(level="small"), max_epochs=1, max_attempts=2)
    outcome = inject_defect(clean_digits_model, digits, ATTACKS.create("badnets"), config, 0)
    assert (outcome.attempts, outcome.epochs) == (2, 2)
    assert_identical_outside(clean_state, outcome.model, outcome.infected)


def test_every_defect_records_its_patched_asr_and_carrying_neurons(small_defect, digits):
    """The sufficiency measure is recomputed exactly from the stored outcome; the carrying flag
    follows the contributions."""
    from trojanscope.injection.groundtruth import CARRYING_SHARE
    from trojanscope.injection.pipeline import patched_success_rate

    view = small_defect.poisoned_test
    victims = digits.test.subset(view.indices)
    infected = [n.ref for n in small_defect.infected]
    assert patched_success_rate(small_defect.model, infected, victims, view) == (
        small_defect.patched_asr
    )
    assert 0.0 <= small_defect.patched_asr <= 1.0
    for n in small_defect.infected:
        assert n.carrying is (n.contribution >= CARRYING_SHARE)
    # holding every neuron outside an empty set at its clean activation is the clean model's
    # verdict on the clean victims: the target only where the clean model already says so
    assert patched_success_rate(small_defect.model, [], victims, view) <= 0.2


def test_confined_injection_stays_inside_the_set_and_picks_live_neurons(
    clean_digits_model, clean_state, digits
):
    """confine=True: fan-in edges, the patched and preservation terms; still bit-identical
    outside the set, and no infected neuron is dead on clean data."""
    from trojanscope.injection.contribution import live_neurons

    config = InjectionConfig(
        quantity=Quantity(level="small"), edges="fan-in", confine=True, max_epochs=2
    )
    outcome = inject_defect(clean_digits_model, digits, ATTACKS.create("badnets"), config, 0)
    assert_identical_outside(clean_state, outcome.model, outcome.infected, "fan-in")
    live = live_neurons(clean_digits_model, digits.train.subset(torch.arange(512)))
    assert all(bool(live[n.ref.layer][n.ref.index]) for n in outcome.infected)


@pytest.mark.parametrize("attack", ["badnets", "sra"])
def test_injection_on_a_device_gives_the_cpus_defect(attack, clean_digits_model, digits):
    """The confined objective (BadNets) and the subnet replacement (SRA) on a stand-in
    accelerator that computes on the CPU: the same weights, figures and ground truth as on
    resolve_device("cpu"), the poisoned data and the trigger back on the CPU."""
    config = InjectionConfig(quantity=Quantity(level="narrow"), max_epochs=3, max_attempts=1)

    def inject(model):
        return inject_defect(model, digits, ATTACKS.create(attack, seed=0), config, 0)

    reference = inject(copy.deepcopy(clean_digits_model).to(resolve_device("cpu")))
    with stand_in() as device:
        outcome = inject(copy.deepcopy(clean_digits_model).to(device))
        assert model_device(outcome.model) == device
        state = to_host(outcome.model.state_dict())
    for name, value in reference.model.state_dict().items():
        assert torch.equal(state[name], value), name
    figures = ("status", "reason", "clean_acc", "asr", "masked_asr", "patched_asr", "epochs")
    assert [getattr(outcome, f) for f in figures] == [getattr(reference, f) for f in figures]
    assert outcome.infected == reference.infected
    view = outcome.poisoned_test
    assert view.x.device == view.indices.device == CPU
    assert torch.equal(view.x, reference.poisoned_test.x)


def _validation(clean, digits, infected, seed=0):
    from trojanscope.injection.aim import Validation

    config = InjectionConfig()
    attack = ATTACKS.create("badnets", seed=seed)
    everyone = torch.arange(len(digits.train))
    return Validation(clean, digits.train, attack, everyone[:0], config.aim(), seed, infected)


def test_scoring_by_the_changed_part_alone_measures_what_whole_passes_measure(
    clean_digits_model, small_defect, digits
):
    """Validation re-runs only what follows the trained modules, from values recorded on the
    clean model: the defect's ASR, damage and patched ASR are the same, bit for bit."""
    infected = [n.ref for n in small_defect.infected]
    validation = _validation(clean_digits_model, digits, infected)
    whole = validation.measure(small_defect.model)
    masks = trainable_masks(clean_digits_model, infected, "fan-in")
    validation.rerun_changed({name.rpartition(".")[0] for name in masks})
    assert validation._parts is not None and validation._patched is not None
    assert validation.measure(small_defect.model) == whole
    assert whole[0] > 0.5  # the defect fires: the check compares real figures


def test_on_a_plain_network_the_masked_defect_is_the_masked_clean_model(
    clean_digits_model, small_defect, digits
):
    """Under fan-in edges the necessity excess is exactly 0: the necessity round never runs
    on a plain network, so its defects are those made before the round existed."""
    infected = [n.ref for n in small_defect.infected]
    validation = _validation(clean_digits_model, digits, infected)
    assert validation.masked_excess(small_defect.model) == 0.0
    assert InjectionConfig().model_dump()["necessity_weight"] == 1.0
    assert "necessity_weight" not in InjectionConfig(necessity_weight=0).model_dump()


def test_the_necessity_round_runs_when_the_set_is_short_of_necessary_and_keeps_the_better(
    clean_digits_model, clean_state, digits
):
    """A target bias no mask reaches sends masked victims to the target: the round runs from
    the given weights; what it returns carries its own score and stays inside the set."""
    from trojanscope.injection.confined import ConfinedObjective
    from trojanscope.injection.injector import Trained
    from trojanscope.injection.pipeline import _necessity_round

    attack = ATTACKS.create("badnets", seed=0)
    infected = [NeuronRef("fc1", 5), NeuronRef("conv2", 3)]
    start = copy.deepcopy(clean_digits_model)
    with torch.no_grad():
        start.fc.bias[0] += 100.0  # BadNets' default target: 0
    validation = _validation(clean_digits_model, digits, infected)
    assert validation.aim.necessity(validation.masked_excess(start)) < 1.0
    data = digits.train.subset(torch.arange(256))
    objective = ConfinedObjective(
        clean_digits_model, infected, attack, attack.poison_train(data), data, 1.0, 1.0
    )
    config = InjectionConfig(max_epochs=1, max_attempts=1)
    masks = trainable_masks(clean_digits_model, infected, "fan-in")
    given = Trained(start, epochs=4, attempts=1, score=validation(start))
    result = _necessity_round(given, masks, objective, validation, config, 0)
    assert (result.epochs, result.attempts) == (5, 2)
    assert result.score == validation.necessity_score(result.model)
    assert result.score >= validation.necessity_score(start)
    for name, value in result.model.state_dict().items():
        owned = masks.get(name, torch.zeros_like(value, dtype=torch.bool))
        assert torch.equal(value[~owned], start.state_dict()[name][~owned]), name
