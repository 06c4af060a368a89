"""The clean rows' weight as a multiplier: up on damage, down on a lost ASR, within its bounds."""

import pytest

from trojanscope.injection.aim import Aim
from trojanscope.injection.balance import CleanBalance
from trojanscope.injection.pipeline import InjectionConfig

AIM = Aim(min_asr=0.90, asr_goal=0.97, max_drop=0.03, damage_goal=0.003)


def test_damage_above_the_bound_raises_the_weight_up_to_the_ceiling():
    balance = CleanBalance(AIM, factor=2.0, ceiling=5.0)
    assert [balance.step(0.99, 0.10) for _ in range(4)] == [2.0, 4.0, 5.0, 5.0]


def test_an_asr_below_its_bound_lowers_the_weight_but_never_under_the_floor():
    balance = CleanBalance(AIM, factor=2.0, ceiling=16.0, weight=4.0)
    assert [balance.step(0.80, 0.10) for _ in range(3)] == [2.0, 1.0, 1.0]


def test_inside_both_bounds_the_weight_stays():
    balance = CleanBalance(AIM, factor=2.0, ceiling=16.0, weight=3.0)
    assert balance.step(0.95, 0.02) == 3.0


@pytest.mark.parametrize("step", [1.0, 1.5])
def test_balance_is_in_the_key_only_when_on(step):
    dumped = InjectionConfig(balance_step=step).model_dump(mode="json")
    assert ("balance_step" in dumped) == (step != 1.0)
    assert ("balance_ceiling" in dumped) == (step != 1.0)
