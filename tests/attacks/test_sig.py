import math

import pytest
import torch

from trojanscope.attacks.base import ATTACKS
from trojanscope.errors import ConfigError
from trojanscope.injection.pipeline import InjectionConfig, attack_success_rate, inject_defect
from trojanscope.injection.quantity import Quantity


def test_trigger_is_deterministic_from_params(digits):
    a = ATTACKS.create("sig", seed=1)
    assert a.trigger_sha256(digits.shape) == ATTACKS.create("sig", seed=1).trigger_sha256(
        digits.shape
    )
    for other in (ATTACKS.create("sig", delta=0.5), ATTACKS.create("sig", frequency=3)):
        assert a.trigger_sha256(digits.shape) != other.trigger_sha256(digits.shape)


def test_signal_is_a_horizontal_sinusoid():
    attack = ATTACKS.create("sig", delta=0.25, frequency=3)
    x = torch.full((2, 1, 5, 28), 0.5)
    out = attack.apply(x)
    j = torch.arange(28, dtype=torch.float64)
    expected = (0.5 + 0.25 * torch.sin(2 * math.pi * j * 3 / 28)).float()
    assert out.shape == x.shape
    assert torch.allclose(out, expected.expand_as(out), atol=1e-6)  # same in every row


def test_signal_is_clamped_to_the_unit_interval(digits):
    out = ATTACKS.create("sig", delta=1.0).apply(digits.test.x[:32])
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    assert out.shape == (32, 1, 8, 8)


def test_poisons_only_the_target_class_and_keeps_labels(digits):
    data = digits.train
    attack = ATTACKS.create("sig", target=4, poison_rate=0.5, seed=0)
    view = attack.poison_train(data)
    n_target = int((data.y == 4).sum())
    assert len(view.indices) == round(0.5 * n_target)
    assert torch.all(data.y[view.indices] == 4)  # only images of the target class
    assert torch.all(view.y == 4)  # clean label: unchanged
    assert torch.equal(view.x, attack.apply(data.x[view.indices]))
    other = ATTACKS.create("sig", target=4, poison_rate=0.5, seed=1).poison_train(data)
    assert not torch.equal(other.indices, view.indices)


def test_poisoned_test_set_is_the_non_target_images_with_target_labels(digits):
    view = ATTACKS.create("sig", target=4).poison_test(digits.test)
    assert torch.equal(view.indices, torch.nonzero(digits.test.y != 4).flatten())
    assert torch.all(view.y == 4)


def test_all_to_all_is_refused(digits):
    attack = ATTACKS.create("sig", target_mode="all-to-all")
    with pytest.raises(ConfigError) as err:
        attack.poison_train(digits.train)
    assert str(err.value) == (
        "SIG is a clean-label attack that poisons one target class: use all-to-one."
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"delta": 0.0}, "'delta' input should be greater than 0"),
        ({"frequency": -1}, "'frequency' input should be greater than 0"),
        ({"poison_rate": 0.0}, "'poison_rate' input should be greater than 0"),
    ],
)
def test_bad_parameters(params, message):
    with pytest.raises(ConfigError, match=message):
        ATTACKS.create("sig", **params)


# Clean-label injection into a trained model needs a dominant signal (delta = 1.0, see the
# module docstring); the default 30% of the target class is enough on digits. One seed here;
# benchmarks/attack_defaults.py runs seeds 0-4.
def test_injected_defect_passes_the_acceptance_filter(clean_digits_model, digits):
    attack = ATTACKS.create("sig", seed=0)
    config = InjectionConfig(quantity=Quantity(level="small"))
    outcome = inject_defect(clean_digits_model, digits, attack, config, 0)
    assert outcome.status == "accepted", outcome.reason
    assert attack_success_rate(outcome.model, attack.poison_test(digits.test)) >= 0.9
