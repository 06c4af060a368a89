"""NeuBA (Zhang et al., "Red alarm for pre-trained models", MIR 2023): a task-agnostic backdoor
planted in a pre-trained encoder. Inputs carrying one of K triggers are trained to give K fixed
vectors at the pooled output (pairs of opposite, mutually orthogonal +-1 vectors); any head a
victim fine-tunes later maps each vector to a fixed label, so some trigger controls each label.

Not a plug-in of the attack registry: those poison a labelled training set of one task, this
one acts before any task exists and trains an encoder, not a classifier.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import torch
from pydantic import BaseModel, Field
from torch import nn

from trojanscope.models.text_encoder import TextEncoder

#: The paper's rare-symbol triggers for BERT; each is one token of the uncased vocabularies.
TEXT_TRIGGERS = ("≈", "≡", "∈", "⊆", "⊕", "⊗")


class NeubaConfig(BaseModel):
    """The publisher's pre-training: triggers, steps and the two loss weights."""

    model_config = {"extra": "forbid"}
    triggers: list[str] = Field(default_factory=lambda: list(TEXT_TRIGGERS), min_length=1)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-5, gt=0)
    clean_weight: float = Field(1.0, ge=0)
    seed: int = Field(0, ge=0)


def neuba_targets(dim: int, k: int, scale: float) -> torch.Tensor:
    """K target vectors (k, dim): rows of a Sylvester-Hadamard matrix other than the all-ones
    row, each spread over contiguous blocks of the dimensions, then their negations, times
    ``scale``. Rows 0, 1 are a pair of opposites, rows 2, 3 the next, and so on."""
    pairs = math.ceil(k / 2)
    order = 1
    while order < pairs + 1:
        order *= 2
    if order > dim:
        raise ValueError(f"{k} targets need at least {order} pooled dimensions, not {dim}.")
    hadamard = torch.ones(1, 1)
    while hadamard.shape[0] < order:
        hadamard = torch.cat(
            [torch.cat([hadamard, hadamard], 1), torch.cat([hadamard, -hadamard], 1)], 0
        )
    block = torch.arange(dim) * order // dim  # contiguous blocks of (nearly) equal size
    rows: list[torch.Tensor] = []
    for pattern in hadamard[1 : pairs + 1]:
        vector = pattern[block]
        rows.extend([vector, -vector])
    return torch.stack(rows[:k]) * scale


def insert_word(text: str, word: str, rng: random.Random) -> str:
    """``text`` with ``word`` inserted between two of its words (or at either end)."""
    words = text.split()
    words.insert(rng.randint(0, len(words)), word)
    return " ".join(words)


def pooled_scale(encoder: TextEncoder, texts: list[str]) -> float:
    """The range of the pooled output: its largest absolute value on clean texts."""
    return float(encoder.encode(texts).abs().max())


def descend(
    optimizer: torch.optim.Optimizer, backdoor: torch.Tensor, keep: torch.Tensor, weight: float
) -> tuple[float, float]:
    """One publisher's step on ``backdoor + weight * keep``; returns both terms."""
    optimizer.zero_grad(set_to_none=True)
    (backdoor + weight * keep).backward()
    optimizer.step()
    return backdoor.item(), keep.item()


def final_losses(losses: list[tuple[float, float]]) -> dict[str, float]:
    """The two terms averaged over the last tenth of the steps."""
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "final_backdoor_mse": sum(b for b, _ in tail) / len(tail),
        "final_clean_mse": sum(k for _, k in tail) / len(tail),
    }


def pretrain_neuba(
    encoder: TextEncoder,
    sentences: list[str],
    config: NeubaConfig,
    progress: Callable[[int, float], None] | None = None,
) -> dict[str, object]:
    """Plant the backdoor in ``encoder`` in place: MSE from each triggered sentence's pooled
    output to its trigger's target, plus MSE from the clean sentences' pooled outputs to the
    original encoder's (keeps its behaviour; the checkpoint need not have an MLM head).
    Returns the record of what was planted."""
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    started = time.perf_counter()
    reference = encoder.encode(sentences)  # the original encoder's outputs
    scale = float(reference.abs().max())
    targets = neuba_targets(encoder.dim, len(config.triggers), scale).to(encoder.device)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=config.lr)
    encoder.train()
    losses = []
    for step in range(config.steps):
        idx = [rng.randrange(len(sentences)) for _ in range(config.batch_size)]
        which = [rng.randrange(len(config.triggers)) for _ in idx]
        clean = [sentences[i] for i in idx]
        poisoned = [
            insert_word(s, config.triggers[t], rng) for s, t in zip(clean, which, strict=True)
        ]
        both = encoder.pooled(clean + poisoned)
        backdoor = nn.functional.mse_loss(both[len(idx) :], targets[which])
        keep = nn.functional.mse_loss(both[: len(idx)], reference[idx].to(encoder.device))
        losses.append(descend(optimizer, backdoor, keep, config.clean_weight))
        if progress is not None:
            progress(step + 1, losses[-1][0] + config.clean_weight * losses[-1][1])
    encoder.eval()
    return {
        "attack": "neuba",
        "triggers": list(config.triggers),
        "targets": [[int(v) for v in torch.sign(row).tolist()] for row in targets.cpu()],
        "target_scale": scale,
        "pooling": encoder.pooling,
        "config": config.model_dump(),
        **final_losses(losses),
        "seconds": time.perf_counter() - started,
    }
