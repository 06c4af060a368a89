"""The clipping guard: silent on clean inputs, loud on triggered ones, wired to the target."""

from __future__ import annotations

import copy

import pytest
import torch

from trojanscope.data.base import TensorData
from trojanscope.errors import TrojanscopeError
from trojanscope.lifecycle.clip_guard import place_guard
from trojanscope.models.base import ARCHITECTURES


def _inputs(state):
    train = state.task.splits.train
    clean = train.subset(torch.arange(300))
    victims = clean.subset(torch.nonzero(clean.y != state.task.target).flatten())
    triggered = TensorData(state.task.attack.apply(victims.x), victims.y, victims.num_classes)
    return clean, triggered


def _unit_output(model, layer: str, unit: int, x: torch.Tensor) -> torch.Tensor:
    seen = []
    hook = model.get_submodule(layer).register_forward_hook(
        lambda _m, _a, out: seen.append(torch.relu(out[:, unit]))
    )
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen[0]


def test_the_guard_is_silent_on_clean_inputs_and_fires_on_triggered_ones(defect_state):
    model = copy.deepcopy(defect_state.model)
    clean, triggered = _inputs(defect_state)
    target = defect_state.task.target
    plan = place_guard(model, clean, triggered, target, set(defect_state.truth), 0.5, 50.0)
    assert plan.coverage > 0.5
    assert torch.all(_unit_output(model, plan.hidden, plan.unit, clean.x) == 0)
    fired = _unit_output(model, plan.hidden, plan.unit, triggered.x)
    # most triggered inputs drive it past the clean range, where int8 saturates
    assert float((fired > plan.clean_range).float().mean()) > 0.5
    column = model.get_submodule(plan.classifier).weight.detach()[:, plan.unit]
    assert float(column[target]) * plan.clean_range == pytest.approx(-0.5)
    assert int(torch.count_nonzero(column)) == 1


def test_a_network_without_a_hidden_linear_layer_is_refused_in_one_sentence(defect_state):
    model = ARCHITECTURES.create("resnet18", width=0.25).build(1, 10, 8)
    clean, triggered = _inputs(defect_state)
    with pytest.raises(TrojanscopeError, match="hidden Linear layer") as err:
        place_guard(model, clean, triggered, 0, set(), 0.5, 50.0)
    assert "\n" not in str(err.value)
