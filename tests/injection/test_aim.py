"""The injector's aim: scores inside the acceptance bounds, best-epoch snapshots, retry seeds."""

import pytest
import torch
from torch import nn

from trojanscope.errors import ConfigError
from trojanscope.injection.aim import Aim, BestEpoch, derived_seed
from trojanscope.injection.pipeline import InjectionConfig
from trojanscope.registry import validate_params

AIM = Aim(min_asr=0.90, asr_goal=0.97, max_drop=0.03, damage_goal=0.005)


@pytest.mark.parametrize(
    ("asr", "damage", "expected"),
    [
        (0.97, 0.005, 1.0),  # both goals met exactly
        (0.90, 0.0, 0.0),  # ASR on its acceptance bound
        (1.00, 0.03, 0.0),  # damage on the clean-accuracy bound
        (0.935, 0.0, 0.5),  # half-way to the ASR goal
        (0.99, 0.0175, 0.5),  # half-way to the damage goal
        (0.83, 0.0, -1.0),  # outside: one goal-margin below the ASR bound
    ],
)
def test_score_is_the_worse_margin_in_units_of_the_aim(asr, damage, expected):
    assert AIM.score(asr, damage) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("excess", "expected"),
    [(0.20, 0.0), (0.10, 1.0), (0.0, 2.0), (0.30, -1.0), (-0.05, 2.5)],
)
def test_the_necessity_margin_is_zero_on_the_bound_and_one_at_half_of_it(excess, expected):
    aim = Aim(0.90, 0.97, 0.03, 0.005, max_masked_excess=0.20)
    assert aim.necessity(excess) == pytest.approx(expected)


def test_a_zero_necessity_bound_is_met_only_without_excess():
    assert AIM.necessity(0.0) >= 1.0 > 0.0 > AIM.necessity(0.01)


def test_best_epoch_keeps_the_best_weights_and_stops_after_patience():
    model = nn.Linear(2, 1)
    best = BestEpoch(patience=2)
    stops = []
    for value, score in [(1.0, 0.2), (2.0, 1.1), (3.0, 0.9), (4.0, 1.3), (5.0, 0.5)]:
        with torch.no_grad():
            model.weight.fill_(value)
        stops.append(best.offer(model, score))
    # goals first met by the second epoch; two more epochs of patience, then stop
    assert stops == [False, False, False, True, True]
    assert best.met and best.score == 1.3
    best.restore(model)
    assert torch.equal(model.weight, torch.full((1, 2), 4.0))


def test_best_epoch_half_way_to_the_goals_stops_once_the_best_is_stall_epochs_old():
    model = nn.Linear(2, 1)
    best = BestEpoch(patience=0, stall=2)
    stops = []
    # below half-way (0.4) it keeps going however long the best is unbeaten
    for value, score in [(1.0, 0.4), (0.0, -2.0), (0.0, 0.1), (2.0, 0.7), (3.0, 0.1), (4.0, 0.7)]:
        with torch.no_grad():
            model.weight.fill_(value)
        stops.append(best.offer(model, score))
    assert stops == [False, False, False, False, False, True]  # a tie is no improvement
    assert best.stalled and not best.met
    best.restore(model)
    assert torch.equal(model.weight, torch.full((1, 2), 2.0))


def test_retry_seeds_are_derived_deterministically():
    assert derived_seed(7, 0) == 7
    retries = [derived_seed(7, attempt) for attempt in (1, 2, 3)]
    assert retries == [derived_seed(7, attempt) for attempt in (1, 2, 3)]
    assert len({7, *retries, derived_seed(8, 1)}) == 5
    assert all(0 <= s < 2**31 for s in retries)


@pytest.mark.parametrize("params", [{"asr_goal": 0.9}, {"damage_goal": 0.03}])
def test_the_aim_must_lie_inside_the_acceptance_bounds(params):
    with pytest.raises(ConfigError, match="aims inside the acceptance bounds"):
        validate_params("injection", InjectionConfig, params)
