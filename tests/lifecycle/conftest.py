"""A chain's first state: the digits BadNets `small` defect of the shared fixtures."""

from __future__ import annotations

import pytest

from trojanscope.attacks.base import ATTACKS
from trojanscope.lifecycle.base import ChainState, Task


@pytest.fixture(scope="module")
def defect_state(small_defect, digits) -> ChainState:
    view = small_defect.poisoned_test
    task = Task(
        dataset="digits",
        splits=digits,
        attack=ATTACKS.create("badnets", seed=0),
        clean_victims=digits.test.subset(view.indices),
        triggered=view.poisoned(),
        target=0,
    )
    truth = {n.ref: n.contribution for n in small_defect.infected}
    model = small_defect.model.eval()
    return ChainState(model, "float", task, truth, model)
