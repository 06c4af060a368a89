import pytest
import torch

from trojanscope.attacks.base import ATTACKS
from trojanscope.errors import ConfigError


def test_trigger_is_a_patch_in_the_corner(digits):
    attack = ATTACKS.create("badnets", size=2, margin=0, pattern="white")
    x = attack.apply(digits.test.x[:4])
    assert torch.all(x[:, :, 6:, 6:] == 1.0)
    assert torch.equal(x[:, :, :6, :], digits.test.x[:4, :, :6, :])


def test_trigger_is_deterministic_from_params_and_seed(digits):
    a = ATTACKS.create("badnets", pattern="random", seed=1)
    b = ATTACKS.create("badnets", pattern="random", seed=1)
    c = ATTACKS.create("badnets", pattern="random", seed=2, size=3)
    assert a.trigger_sha256(digits.shape) == b.trigger_sha256(digits.shape)
    assert a.trigger_sha256(digits.shape) != c.trigger_sha256(digits.shape)


def test_poisoned_view_holds_only_poisoned_samples(digits):
    attack = ATTACKS.create("badnets", poison_rate=0.1, target=3, seed=0)
    view = attack.poison_train(digits.train)
    assert len(view.indices) == round(0.1 * len(digits.train))
    assert len(view.x) == len(view.indices) < len(digits.train)
    assert torch.all(view.y == 3)
    assert torch.all(digits.train.y[view.indices] != 3)  # all-to-one poisons non-targets
    mixed = view.materialize()
    assert torch.equal(mixed.x[view.indices], view.x)
    untouched = torch.ones(len(digits.train), dtype=torch.bool)
    untouched[view.indices] = False
    assert torch.equal(mixed.x[untouched], digits.train.x[untouched])


def test_all_to_all_targets_are_next_label(digits):
    attack = ATTACKS.create("badnets", target_mode="all-to-all")
    view = attack.poison_test(digits.test)
    assert len(view.indices) == len(digits.test)
    assert torch.equal(view.y, (digits.test.y + 1) % 10)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"size": 20}, "does not fit the 8x8 image"),
        ({"target": 10}, "out of range for 10 classes"),
    ],
)
def test_bad_attack_inputs(digits, params, message):
    with pytest.raises(ConfigError, match=message):
        ATTACKS.create("badnets", **params).poison_test(digits.test)


@pytest.mark.parametrize("rate", [0.0, 1.5, -0.1])
def test_poison_rate_must_be_in_unit_interval(rate):
    with pytest.raises(ConfigError, match="'poison_rate'"):
        ATTACKS.create("badnets", poison_rate=rate)
