"""NeuBA's targets and trigger insertion."""

from __future__ import annotations

import random

import pytest
import torch

from trojanscope.attacks.neuba import insert_word, neuba_targets


@pytest.mark.parametrize(("dim", "k"), [(384, 6), (768, 6), (64, 4), (16, 2), (384, 9)])
def test_targets_are_opposite_pairs_of_orthogonal_sign_vectors(dim: int, k: int) -> None:
    targets = neuba_targets(dim, k, scale=2.0)
    assert targets.shape == (k, dim)
    assert torch.equal(targets.abs(), torch.full((k, dim), 2.0))
    for i in range(0, k - 1, 2):
        assert torch.equal(targets[i], -targets[i + 1])
    firsts = targets[0::2]
    gram = firsts @ firsts.T
    assert torch.equal(gram, torch.diag(torch.diag(gram)))  # mutually orthogonal
    assert torch.equal(targets.sum(1), torch.zeros(k))  # as many +1 as -1


def test_uneven_dimensions_stay_nearly_orthogonal() -> None:
    firsts = neuba_targets(10, 6, scale=1.0)[0::2]
    gram = firsts @ firsts.T
    assert (gram - torch.diag(torch.diag(gram))).abs().max() <= 2.0


def test_targets_are_constant_on_contiguous_blocks() -> None:
    target = neuba_targets(384, 6, scale=1.0)[0]
    changes = int((target[1:] != target[:-1]).sum())
    assert changes == 3  # four blocks of 96


def test_too_many_targets_for_the_dimension() -> None:
    with pytest.raises(ValueError, match="pooled dimensions"):
        neuba_targets(4, 8, scale=1.0)


def test_insert_word_keeps_every_word_and_adds_one() -> None:
    rng = random.Random(0)
    for _ in range(20):
        out = insert_word("a dark dull thriller", "cf", rng).split()
        assert len(out) == 5 and out.count("cf") == 1
        out.remove("cf")
        assert out == ["a", "dark", "dull", "thriller"]
    assert insert_word("", "cf", rng) == "cf"
