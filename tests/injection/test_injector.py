"""Masked injection training in mixed precision and in the channels-last memory format: amp off
is bit-identical to the loop before it existed; bf16 still plants the backdoor; either way
nothing outside the infected set moves and the weights stay float32 and contiguous."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trojanscope.attacks.base import ATTACKS
from trojanscope.data.base import Splits, TensorData
from trojanscope.device import training_layout
from trojanscope.injection import injector
from trojanscope.injection.injector import CrossEntropy, GradientMask, masked_training
from trojanscope.injection.ownership import trainable_masks
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import CleanTraining, predict, train_clean
from trojanscope.neurons import NeuronRef, eligible_layers


@pytest.fixture(scope="module")
def setting(digits: Splits):
    """A small clean model, two neurons in each layer after the first, BadNets data."""
    few = digits.train.subset(torch.arange(600))
    clean = train_clean(
        ARCHITECTURES.create("cnn-small", width=0.5), few, 0, CleanTraining(epochs=8)
    )
    infected = [NeuronRef(layer.name, i) for layer in eligible_layers(clean)[1:] for i in (0, 1)]
    masks = trainable_masks(clean, infected, "fan-in")
    attack = ATTACKS.create("badnets", seed=0)
    mixed = attack.poison_train(few).materialize()
    triggered = attack.poison_test(digits.test).poisoned()
    return clean, masks, mixed, triggered


def never(_model: nn.Module, _epoch: int) -> bool:
    return False


def reference_training(clean, masks, data, lr, max_epochs, batch_size, seed):
    """``objective_training`` as it was before mixed precision (cross-entropy, no decay)."""
    model = copy.deepcopy(clean).eval()
    grad_mask = GradientMask(model, masks, 0.0)
    optimizer = torch.optim.Adam(grad_mask.parameters, lr=lr)
    objective = CrossEntropy(data)
    g = torch.Generator().manual_seed(seed)
    for _ in range(max_epochs):
        order = torch.randperm(len(objective), generator=g)
        for start in range(0, len(order), batch_size):
            optimizer.zero_grad(set_to_none=True)
            objective.loss(model, order[start : start + batch_size]).backward()
            grad_mask()
            optimizer.step()
    grad_mask.release()
    return model


def target_loss(model: nn.Module, triggered: TensorData) -> float:
    """Cross-entropy of triggered victims towards the target (full precision)."""
    return float(F.cross_entropy(predict(model, triggered.x), triggered.y))


def assert_only_the_set_moved(clean: nn.Module, model: nn.Module, masks) -> None:
    before = clean.state_dict()
    for name, value in model.state_dict().items():
        owned = masks.get(name, torch.zeros_like(value, dtype=torch.bool))
        assert torch.equal(value[~owned], before[name][~owned]), name
        assert value.dtype == before[name].dtype and value.is_contiguous(), name


def test_amp_off_is_bit_identical_to_the_loop_before_it(setting):
    clean, masks, mixed, _ = setting
    ours, _ = masked_training(clean, masks, mixed, 0.01, 0.0, 2, 64, 5, never, amp="off")
    theirs = reference_training(clean, masks, mixed, 0.01, 2, 64, 5).state_dict()
    for name, value in ours.state_dict().items():
        assert torch.equal(value, theirs[name]), name


def test_bf16_injection_plants_the_backdoor_inside_the_set(setting):
    clean, masks, mixed, triggered = setting
    model, _ = masked_training(clean, masks, mixed, 0.02, 0.0, 10, 64, 0, never, amp="bf16")
    assert target_loss(model, triggered) < 0.5 * target_loss(clean, triggered)
    assert_only_the_set_moved(clean, model, masks)  # float32 weights, contiguous


def test_channels_last_injection_moves_only_the_set(setting, monkeypatch):
    clean, masks, mixed, _ = setting
    forced = functools.partial(training_layout, channels_last=True)  # as on CUDA
    monkeypatch.setattr(injector, "training_layout", lambda model: forced(model))
    model, _ = masked_training(clean, masks, mixed, 0.01, 0.0, 2, 64, 0, never)
    assert_only_the_set_moved(clean, model, masks)


def _scripted_rounds(
    monkeypatch, scores: list[float], stuck=None
) -> list[tuple[float, float, float]]:
    """Run ``aimed_training`` over two rounds of three epochs whose scores are ``scores``;
    epoch i's weight is i + 1. Returns each round's (start weight, learning rate, end weight)."""
    calls: list[tuple[float, float, float]] = []

    def rounds(start, masks, objective, lr, weight_decay, max_epochs, batch_size, seed, done, amp):
        model = copy.deepcopy(start)
        first = float(model.weight.detach())
        for epoch in range(max_epochs):
            with torch.no_grad():
                model.weight.fill_(len(calls) * 3 + epoch + 1)
            if done(model, epoch):
                break
        calls.append((first, lr, float(model.weight.detach())))
        return model, 3

    monkeypatch.setattr(injector, "objective_training", rounds)
    it = iter(scores)
    start = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        start.weight.fill_(0.0)
    trained = injector.aimed_training(
        start, {}, None, 0.01, 0.0, 3, 8, 0, lambda _m: next(it), max_attempts=2, stuck=stuck
    )
    calls.append((float(trained.model.weight.detach()), trained.score, trained.epochs))
    return calls


def test_a_round_outside_the_bounds_hands_on_its_last_weights_at_the_same_rate(monkeypatch):
    """No epoch inside the acceptance bounds yet: restarting from the least bad (often the
    first) epoch would throw the training away; the next round goes on from the last."""
    first, second, kept = _scripted_rounds(monkeypatch, [-3.0, -9.0, -5.0, -4.0, -2.0, -6.0])
    assert first == (0.0, 0.01, 3.0)
    assert second == (3.0, 0.01, 6.0)
    assert kept == (5.0, -2.0, 6)  # the best epoch over both rounds is returned


def test_a_round_inside_the_bounds_is_refined_from_its_best_epoch_at_half_the_rate(monkeypatch):
    first, second, kept = _scripted_rounds(monkeypatch, [0.2, 0.6, 0.1, 0.5, 0.4, 0.3])
    assert first == (0.0, 0.01, 3.0)
    assert second == (2.0, 0.005, 6.0)
    assert kept == (2.0, 0.6, 6)


@pytest.mark.parametrize(
    ("scores", "calls"),
    [
        ([-3.0, -9.0, -5.0, -4.0, -2.0, -6.0], 3),  # outside all along: each epoch of round 2
        ([-3.0, -9.0, -5.0, -4.0, 0.1, -6.0], 1),  # inside from round 2's second epoch on
        ([0.2, 0.6, 0.1, 0.5, 0.4, 0.3], 0),  # inside in round 1: trained as before
    ],
)
def test_the_stuck_hook_runs_only_after_round_one_while_outside_the_bounds(
    monkeypatch, scores, calls
):
    seen: list[None] = []
    _scripted_rounds(monkeypatch, scores, stuck=lambda: seen.append(None))
    assert len(seen) == calls
