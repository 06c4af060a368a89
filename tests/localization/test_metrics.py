import numpy as np
import pytest

from trojanscope.localization.metrics import score, weighted_jaccard
from trojanscope.neurons import NeuronRef

NEURONS = [NeuronRef("conv1", i) for i in range(10)]
TRUTH = {NEURONS[0]: 0.5, NEURONS[1]: 0.3, NEURONS[2]: 0.2}


def test_perfect_ranking():
    m = score(NEURONS, np.arange(10)[::-1].astype(float), TRUTH)
    assert (m.k, m.precision, m.recall, m.f1, m.auroc, m.ap) == (3, 1.0, 1.0, 1.0, 1.0, 1.0)
    # WJI: sum min(g, 1/3) / sum max(g, 1/3) = (1/3 + 0.3 + 0.2) / (0.5 + 1/3 + 1/3)
    assert m.wji == pytest.approx((1 / 3 + 0.3 + 0.2) / (0.5 + 2 / 3))


def test_reversed_ranking():
    m = score(NEURONS, np.arange(10).astype(float), TRUTH)
    assert (m.precision, m.recall, m.f1, m.wji, m.auroc) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert m.ap == pytest.approx((1 / 8 + 2 / 9 + 3 / 10) / 3)


def test_random_ranking_is_near_chance():
    rng = np.random.default_rng(0)
    neurons = [NeuronRef("l", i) for i in range(2000)]
    truth = {n: 1 / 200 for n in neurons[:200]}
    m = score(neurons, rng.random(2000), truth)
    assert abs(m.auroc - 0.5) < 0.05
    assert abs(m.precision - 0.1) < 0.05
    assert abs(m.ap - 0.1) < 0.05


def test_partial_hit_and_explicit_k():
    scores = np.zeros(10)
    scores[[0, 5]] = [2.0, 1.0]
    m = score(NEURONS, scores, TRUTH, k=2)
    assert (m.precision, m.recall) == (0.5, pytest.approx(1 / 3))
    assert m.f1 == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert m.wji == pytest.approx(0.5 / (0.5 + 0.5 + 0.3 + 0.2))


def test_constant_scores_are_chance_for_auroc():
    assert score(NEURONS, np.ones(10), TRUTH).auroc == 0.5


def test_weighted_jaccard_identity():
    selected = list(TRUTH)
    uniform = {n: 1 / 3 for n in selected}
    assert weighted_jaccard(uniform, selected) == pytest.approx(1.0)


def test_layer_hit_rate_ranks_within_each_infected_layer():
    from trojanscope.localization.metrics import layer_hit_rate

    neurons = [NeuronRef("a", i) for i in range(4)] + [NeuronRef("b", i) for i in range(4)]
    truth = {NeuronRef("a", 0): 0.5, NeuronRef("b", 1): 0.25, NeuronRef("b", 2): 0.25}
    # layer a: neuron 0 is a's best; layer b: 1 is in b's top 2, 2 is not
    scores = [9.0, 1.0, 0.0, 0.0, 0.0, 0.5, 0.1, 0.9]
    assert layer_hit_rate(neurons, scores, truth) == {"a": 1.0, "b": 0.5}
