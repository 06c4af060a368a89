"""The clipping guard: silent on clean inputs, loud on triggered ones, wired to the target."""

from __future__ import annotations

import copy

import pytest
import torch

from trojanscope.data.base import TensorData
from trojanscope.lifecycle.clip_guard import GuardUnplaceable, place_guard
from trojanscope.models.base import ARCHITECTURES
from trojanscope.neurons import NeuronRef


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
    assert int(torch.count_nonzero(column)) == 1 and float(column[target]) < 0
    # in float it takes many logits from the target; saturated at the clean range, half a logit
    drop = -float(column[target]) * fired[fired > 0]
    assert float(drop.median()) > 10
    assert -float(column[target]) * plan.clean_range <= 0.5 + 1e-6
    assert NeuronRef(plan.hidden, plan.unit) not in defect_state.truth


def test_a_network_without_a_hidden_linear_layer_is_refused_in_one_sentence(defect_state):
    model = ARCHITECTURES.create("resnet18", width=0.25).build(1, 10, 8)
    clean, triggered = _inputs(defect_state)
    with pytest.raises(GuardUnplaceable, match="hidden Linear layer") as err:
        place_guard(model, clean, triggered, 0, set(), 0.5, 50.0)
    assert "\n" not in str(err.value)


def _toy(bias: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, 8, bias=bias),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 10),
    )


def _silent() -> torch.nn.Module:
    model = _toy()
    with torch.no_grad():
        model[1].bias.fill_(-1e3)
    return model


@pytest.mark.parametrize(
    "build, keep, same_inputs, reason",
    [
        (lambda: _toy(bias=False), set(), False, "needs a bias on layer '1'"),
        (_toy, {NeuronRef("1", i) for i in range(8)}, False, "every unit is"),
        (_silent, set(), False, "silent on all of them"),
        (_toy, set(), True, "would fire on 0% of the triggered inputs"),
    ],
)
def test_where_no_guard_fits_it_says_why_and_leaves_the_model(
    defect_state, build, keep, same_inputs, reason
):
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clean, triggered = _inputs(defect_state)
    if same_inputs:  # no trigger: nothing tells the two apart
        triggered = clean
    with pytest.raises(GuardUnplaceable, match=reason) as err:
        place_guard(model, clean, triggered, 0, keep, 0.5, 50.0)
    assert "\n" not in str(err.value)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
