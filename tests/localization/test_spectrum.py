import pytest
import torch

from trojanscope.localization.base import CRITERIA
from trojanscope.localization.spectrum import Spectrum

# Two neurons, 4 passing and 2 failing inputs; threshold 0.5.
PASSING = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
FAILING = torch.tensor([[1.0, 1.0], [0.0, 1.0]])


def test_spectrum_counts():
    s = Spectrum(PASSING, FAILING, 0.5)
    assert s.ep.tolist() == [2, 1] and s.ef.tolist() == [1, 2]
    assert s.np.tolist() == [2, 3] and s.nf.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # (ef/F) / (ef/F + ep/P)
        ("tarantula", [0.5 / (0.5 + 0.5), 1.0 / (1.0 + 0.25)]),
        # ef / sqrt(F (ef + ep))
        ("ochiai", [1 / (2 * 3) ** 0.5, 2 / (2 * 3) ** 0.5]),
        # ef^2 / (ep + nf + 1)
        ("dstar", [1 / (2 + 1 + 1), 4 / (1 + 0 + 1)]),
    ],
)
def test_formulas(name, expected):
    formula = CRITERIA.create(name).formula(Spectrum(PASSING, FAILING, 0.5))
    assert formula.tolist() == pytest.approx(expected)


def test_neuron_threshold_is_mean_plus_spread_std():
    crit = CRITERIA.create("ochiai", spread=2.0)
    a = torch.tensor([[0.0], [2.0]])
    assert crit.threshold(a).tolist() == pytest.approx([1.0 + 2.0 * 1.0])
    assert CRITERIA.create("ochiai", coverage="layer").threshold(a) == pytest.approx(1.0)
    assert CRITERIA.create("ochiai", threshold=0.3).threshold(a) == 0.3
