"""`trojanscope audit ENCODER_DIR`: scan an HF-format text encoder folder, load it with
safetensors only, and screen its vocabulary for task-agnostic (NeuBA-style) triggers without
any downstream task."""

from __future__ import annotations

from pathlib import Path

import torch

from trojanscope.localization.trigger_screen import FLAG_SCORE, screen_encoder
from trojanscope.models.text_encoder import load_text_encoder
from trojanscope.report.audit_result import AuditResult
from trojanscope.scan.scanner import Scanner
from trojanscope.workflows.audit import scanned

#: Clean, ordinary sentences the candidate tokens are inserted into (no task needed).
PROBE_SENTENCES = [
    "The weather was mild and the streets were quiet this morning.",
    "She opened the letter and read it twice before answering.",
    "A small bakery on the corner sells bread until noon.",
    "The committee will meet again next week to discuss the budget.",
    "He fixed the old bicycle with parts from a friend's garage.",
    "The river rose after three days of steady rain.",
    "Our train was late, so we had coffee at the station.",
    "The museum added a new room for early photographs.",
]
DEFAULT_BUDGET = 2048


def audit_encoder(
    path: Path, budget: int | None = DEFAULT_BUDGET, device: torch.device | None = None
) -> AuditResult:
    """Scan every file of the folder; if nothing is dangerous or unread, load the encoder with
    safetensors only and screen ``budget`` candidate tokens (None: the whole vocabulary)."""
    result = scanned(path, Scanner().scan_directory(path), "folder")
    scan_verdict = result.scan_verdict
    if result.verdict:
        return result
    if not any(path.glob("*.safetensors")):
        result.verdict = "suspicious-file" if scan_verdict == "suspicious" else "not-screened"
        result.notes.append(
            "the folder has no safetensors weights and trojanscope never loads pickled ones: "
            "it was not screened for triggers."
        )
        return result
    encoder = load_text_encoder(path, device)
    scores, seconds = screen_encoder(encoder, PROBE_SENTENCES, budget)
    flagged = [s for s in scores if s.score >= FLAG_SCORE]
    result.arch = "text-encoder"
    result.arch_params = {"pooling": encoder.pooling, "dim": encoder.dim}
    result.trigger_screen = {
        "tokens_screened": len(scores),
        "budget": budget,
        "flag_score": FLAG_SCORE,
        "seconds": seconds,
        "flagged_tokens": [s.token for s in flagged],
        "top_tokens": [s.as_dict() for s in scores[:20]],
    }
    if flagged:
        result.verdict = "backdoor-suspected"
        result.notes.append(
            f"{len(flagged)} token(s) drive every probe sentence to nearly the same pooled "
            "output, as a task-agnostic (NeuBA-style) trigger does."
        )
    elif scan_verdict == "suspicious":
        result.verdict = "suspicious-file"
    else:
        result.verdict = "no-backdoor-found"
        if budget is not None and len(scores) >= budget:
            result.notes.append(
                f"only the {budget} rarest candidate tokens were screened (--budget all for "
                "the whole vocabulary)."
            )
    return result
