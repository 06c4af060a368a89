import copy

import pytest
import torch

from tests.stand_in import stand_in, to_host
from trojanscope.device import model_device, resolve_device
from trojanscope.injection.ownership import trainable_masks
from trojanscope.localization.base import CRITERIA, EvidenceData
from trojanscope.localization.metrics import top_k
from trojanscope.models.training import predict
from trojanscope.neurons import mask_neurons
from trojanscope.repair.base import REPAIRS, der, run_repair


def evidence(outcome, splits):
    view = outcome.poisoned_test
    return EvidenceData(splits.test, splits.test.subset(view.indices), view.poisoned())


def repair(name, outcome, splits, neurons, **params):
    return run_repair(
        REPAIRS.create(name, **params),
        outcome.model,
        neurons,
        splits.train,
        splits.test,
        outcome.poisoned_test.poisoned(),
    )


def test_der_formula():
    assert der(1.0, 0.0, 0.9, 0.9) == 1.0  # backdoor gone at no cost
    assert der(1.0, 1.0, 0.9, 0.9) == 0.5  # nothing changed
    assert der(1.0, 0.0, 0.9, 0.5) == pytest.approx(0.8)  # 0.4 accuracy lost
    assert der(0.5, 0.8, 0.9, 0.95) == 0.5  # gains never count


def test_pruning_the_oracles_top_k_removes_an_accepted_backdoor(narrow_defect, digits):
    result = CRITERIA.create("oracle").run(narrow_defect.model, evidence(narrow_defect, digits))
    chosen = top_k(result.neurons, result.scores.numpy(), len(narrow_defect.infected))
    outcome = repair("prune", narrow_defect, digits, chosen)
    assert narrow_defect.asr >= 0.9 and outcome.asr_after <= 0.20
    assert outcome.der > 0.8


def test_pruning_is_masking_made_permanent(small_defect, digits):
    neurons = [n.ref for n in small_defect.infected]
    pruned = repair("prune", small_defect, digits, neurons).model
    x = digits.test.x[:64]
    with mask_neurons(small_defect.model, neurons):
        masked = predict(small_defect.model, x)
    assert torch.allclose(predict(pruned, x), masked, atol=1e-5)


@pytest.mark.parametrize("method", ["prune", "finetune", "finetune-all"])
def test_repairs_never_change_the_original_model(method, small_defect, digits):
    before = {k: v.clone() for k, v in small_defect.model.state_dict().items()}
    neurons = [n.ref for n in small_defect.infected]
    outcome = repair(
        method, small_defect, digits, neurons, **({} if method == "prune" else {"epochs": 2})
    )
    after = small_defect.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    changed = outcome.model.state_dict()
    assert any(not torch.equal(before[k], changed[k]) for k in before)


def test_neuron_finetuning_moves_only_the_neurons_own_entries(small_defect, digits):
    neurons = [n.ref for n in small_defect.infected[:3]]
    outcome = repair("finetune", small_defect, digits, neurons, epochs=2)
    masks = trainable_masks(small_defect.model, neurons)
    original = dict(small_defect.model.named_parameters())
    for name, p in outcome.model.named_parameters():
        outside = ~masks[name] if name in masks else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(p.detach()[outside], original[name].detach()[outside]), name
    assert outcome.neurons == neurons


def test_whole_model_finetuning_ignores_the_neurons(small_defect, digits):
    outcome = repair("finetune-all", small_defect, digits, [n.ref for n in small_defect.infected])
    assert outcome.neurons == []
    assert 0 <= outcome.asr_after <= 1 and outcome.clean_acc_after > 0.8


def test_bad_repair_parameter_is_a_clear_error():
    from trojanscope.errors import ConfigError

    with pytest.raises(ConfigError, match="'epochs'"):
        REPAIRS.create("finetune", epochs=0)


@pytest.mark.parametrize("method", ["prune", "finetune", "finetune-all"])
def test_repairs_on_a_device_give_the_cpus_weights(method, narrow_defect, digits):
    """Every repair of the defect placed on resolve_device("cpu") and on a stand-in
    accelerator that computes on the CPU: the same repaired weights and figures."""
    neurons = [n.ref for n in narrow_defect.infected]
    params = {} if method == "prune" else {"epochs": 2}

    def repaired_on(device):
        model = copy.deepcopy(narrow_defect.model).to(device)
        triggered = narrow_defect.poisoned_test.poisoned()
        return run_repair(
            REPAIRS.create(method, **params), model, neurons, digits.train, digits.test, triggered
        )

    expected = repaired_on(resolve_device("cpu"))
    with stand_in() as device:
        outcome = repaired_on(device)
        assert model_device(outcome.model) == device
        state = to_host(outcome.model.state_dict())
    for name, value in expected.model.state_dict().items():
        assert torch.equal(state[name], value), name
    assert (outcome.clean_acc_after, outcome.asr_after) == (
        expected.clean_acc_after,
        expected.asr_after,
    )


def test_whole_model_finetuning_restarts_a_diverged_run_at_half_the_rate(small_defect, digits):
    """Adam at rate 1 wrecks any network in one epoch; the guard halves the rate until the
    accuracy on the defender's clean samples holds, and records the rate it kept."""
    outcome = repair("finetune-all", small_defect, digits, [], lr=1.0, epochs=2, halvings=20)
    details = outcome.details
    assert details["restarts"] >= 1 and not details["diverged"]
    assert details["lr"] == 1.0 / 2 ** details["restarts"]
    assert outcome.clean_acc_after > 0.8


def test_whole_model_finetuning_without_restarts_keeps_the_diverged_run(small_defect, digits):
    outcome = repair("finetune-all", small_defect, digits, [], lr=1.0, epochs=2, halvings=0)
    assert outcome.details == {"lr": 1.0, "restarts": 0, "diverged": True}
    assert outcome.clean_acc_after < 0.5


def test_a_repair_implementing_neither_apply_method_says_so():
    from trojanscope.repair.base import Repair

    class Nothing(Repair):
        name = "nothing"

    with pytest.raises(NotImplementedError, match="nothing"):
        Nothing().apply(torch.nn.Linear(1, 1), [], None)
