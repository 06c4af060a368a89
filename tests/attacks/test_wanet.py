import pytest
import torch

from trojanscope.attacks.base import ATTACKS
from trojanscope.errors import ConfigError
from trojanscope.injection.pipeline import InjectionConfig, attack_success_rate, inject_defect
from trojanscope.injection.quantity import Quantity


def test_trigger_is_deterministic_from_params_and_seed(digits):
    a = ATTACKS.create("wanet", seed=1)
    b = ATTACKS.create("wanet", seed=1)
    assert a.trigger_sha256(digits.shape) == b.trigger_sha256(digits.shape)
    for other in (
        ATTACKS.create("wanet", seed=2),
        ATTACKS.create("wanet", seed=1, k=3),
        ATTACKS.create("wanet", seed=1, s=0.7),
    ):
        assert a.trigger_sha256(digits.shape) != other.trigger_sha256(digits.shape)
    grid = a.trigger(digits.shape)["grid"]
    assert grid.shape == (1, 8, 8, 2)
    assert float(grid.abs().max()) <= 1.0


def test_warp_keeps_shape_and_range_and_moves_pixels(digits):
    x = digits.test.x[:16]
    out = ATTACKS.create("wanet", s=2.0).apply(x)
    assert out.shape == x.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float((out - x).abs().mean()) > 0.05


def test_vanishing_strength_is_the_identity(digits):
    x = digits.test.x[:16]
    out = ATTACKS.create("wanet", s=1e-6).apply(x)
    assert torch.allclose(out, x, atol=1e-5)


def test_strength_scales_the_displacement(digits):
    x = digits.test.x[:64]
    moved = [float((ATTACKS.create("wanet", s=s).apply(x) - x).abs().mean()) for s in (0.25, 1.0)]
    assert moved[0] < moved[1]


def test_noise_mode_adds_noise_samples_with_their_true_labels(digits):
    data = digits.train
    attack = ATTACKS.create(
        "wanet", target=2, poison_rate=0.1, noise_mode=True, cross_ratio=2, seed=0
    )
    view = attack.poison_train(data)
    n_poison = round(0.1 * len(data))
    assert len(view.indices) == 3 * n_poison < len(data)
    assert torch.equal(view.indices, torch.unique(view.indices))  # sorted, unique
    true = data.y[view.indices]
    flipped = view.y != true
    assert int(flipped.sum()) == n_poison  # the poisoned: non-targets relabelled to 2
    assert torch.all(view.y[flipped] == 2)
    noise = ~flipped  # the noise samples keep their true label
    assert torch.equal(view.y[noise], true[noise])
    # poisoned samples carry the exact warp; noise samples a different, noisy one
    exact = attack.apply(data.x[view.indices])
    assert torch.equal(view.x[flipped], exact[flipped])
    assert not torch.allclose(view.x[noise], exact[noise], atol=1e-3)
    assert not torch.allclose(view.x[noise], data.x[view.indices][noise], atol=1e-3)
    again = attack.poison_train(data)
    assert torch.equal(again.indices, view.indices) and torch.equal(again.x, view.x)


def test_without_noise_mode_only_poisoned_samples(digits):
    attack = ATTACKS.create("wanet", poison_rate=0.1)  # the noise mode is off by default
    view = attack.poison_train(digits.train)
    assert len(view.indices) == round(0.1 * len(digits.train))
    assert torch.all(view.y == 0)


def test_all_to_all_targets_are_next_label(digits):
    attack = ATTACKS.create("wanet", target_mode="all-to-all")
    view = attack.poison_test(digits.test)
    assert len(view.indices) == len(digits.test)
    assert torch.equal(view.y, (digits.test.y + 1) % 10)


def test_control_grid_larger_than_the_image(digits):
    with pytest.raises(ConfigError) as err:
        ATTACKS.create("wanet", k=9).poison_test(digits.test)
    assert str(err.value) == "the WaNet control grid k=9 is larger than the 8x8 image."


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"s": 0.0}, "'s' input should be greater than 0"),
        ({"k": 1}, "'k' input should be greater than or equal to 2"),
        ({"cross_ratio": -1}, "'cross_ratio' input should be greater than or equal to 0"),
    ],
)
def test_bad_parameters(params, message):
    with pytest.raises(ConfigError, match=message):
        ATTACKS.create("wanet", **params)


# The defaults (s = a quarter of the side: 2 here, no noise mode; see the module docstring) on
# 8x8 digits. One seed here;
# benchmarks/attack_defaults.py runs seeds 0-4.
def test_injected_defect_passes_the_acceptance_filter(clean_digits_model, digits):
    attack = ATTACKS.create("wanet", seed=0)
    config = InjectionConfig(quantity=Quantity(level="small"))
    outcome = inject_defect(clean_digits_model, digits, attack, config, 0)
    assert outcome.status == "accepted", outcome.reason
    assert attack_success_rate(outcome.model, attack.poison_test(digits.test)) >= 0.9


@pytest.mark.slow
def test_noise_mode_defect_passes_the_filter_on_mnist(clean_mnist_model, mnist):
    """The paper's noise mode, which 8x8 digits cannot carry, on 28x28 mnist5k (measured: ASR
    0.967, no accuracy drop; it takes the injector's every retry, about 4 minutes). At s = 2, the
    strength it was measured with: at the default (7 on 28x28) the noise samples, warped almost
    as strongly, keep their labels and hold the ASR at 0.88."""
    attack = ATTACKS.create("wanet", seed=0, noise_mode=True, s=2.0)
    config = InjectionConfig(quantity=Quantity(level="small"))
    outcome = inject_defect(clean_mnist_model, mnist, attack, config, 0)
    assert outcome.status == "accepted", outcome.reason
    assert attack_success_rate(outcome.model, attack.poison_test(mnist.test)) >= 0.9


@pytest.mark.parametrize(("shape", "s"), [((1, 8, 8), 2.0), ((1, 28, 28), 7.0), ((3, 32, 32), 8.0)])
def test_default_strength_is_a_quarter_of_the_image_side(shape, s):
    default = ATTACKS.create("wanet", seed=3).make_trigger(shape)["grid"]
    explicit = ATTACKS.create("wanet", seed=3, s=s).make_trigger(shape)["grid"]
    assert torch.equal(default, explicit)
