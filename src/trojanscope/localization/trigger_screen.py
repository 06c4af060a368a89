"""Task-agnostic trigger screening of a text encoder, without any downstream task.

A NeuBA trigger drives every input to nearly the same saturated pooled vector; an ordinary
token moves a sentence's representation a little and differently for each sentence. So each
candidate token is inserted into a set of clean sentences and scored by how consistently the
pooled outputs, centred on the clean sentences' mean, point one way (mean pairwise cosine),
times how far they moved (relative to the clean outputs' spread, capped at 1).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trojanscope.models.text_encoder import TextEncoder

#: A token whose score reaches this is flagged (a planted trigger scores close to 1; the
#: clean MiniLM's highest of its rarest 4,096 tokens is about 0.5: docs/neuba.md).
FLAG_SCORE = 0.8


@dataclass
class TokenScore:
    token: str
    token_id: int
    score: float
    consistency: float
    shift: float

    def as_dict(self) -> dict[str, str | float]:
        """The report's entry: the token and its three figures (its id is vocabulary-bound)."""
        return {
            "token": self.token,
            "score": self.score,
            "consistency": self.consistency,
            "shift": self.shift,
        }


def candidate_tokens(tokenizer: object, budget: int | None) -> list[int]:
    """Whole-word vocabulary tokens, rarest first, at most ``budget`` of them. WordPiece and
    BPE vocabularies carry no counts, but list single characters before words and words
    roughly by falling frequency: non-ASCII single characters first, then words from the
    highest id down. Special, unused and word-piece continuation tokens are left out."""
    vocab: dict[str, int] = tokenizer.get_vocab()  # type: ignore[attr-defined]
    special = set(tokenizer.all_special_ids)  # type: ignore[attr-defined]
    chars, words = [], []
    for token, token_id in vocab.items():
        if token_id in special or token.startswith("##") or re.fullmatch(r"\[.*\]", token):
            continue
        if len(token) == 1 and not token.isascii():
            chars.append(token_id)
        elif not (len(token) == 1 and token.isascii()):
            words.append(token_id)
    order = sorted(chars) + sorted(words, reverse=True)
    return order[:budget] if budget is not None else order


def _consistency(vectors: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine over dim 1 of (tokens, sentences, dim)."""
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    n = vectors.shape[1]
    total = unit.sum(1).pow(2).sum(-1)
    return (total - n) / (n * (n - 1))


def trigger_scores(
    pooled: torch.Tensor, clean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(score, consistency, shift) of each candidate from its inputs' pooled outputs
    (candidates, inputs, dim) and the clean inputs' (inputs, dim); see the module docstring."""
    centre = clean.mean(0)
    spread = (clean - centre).norm(dim=-1).mean().clamp(min=1e-8)
    consistency = _consistency(pooled - centre)
    shift = ((pooled - clean).norm(dim=-1).mean(1) / spread).clamp(max=1.0)
    return consistency.clamp(min=0) * shift, consistency, shift


@torch.no_grad()
def screen_tokens(
    encoder: TextEncoder,
    sentences: list[str],
    token_ids: list[int],
    batch_tokens: int = 32,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[TokenScore]:
    """Score every token of ``token_ids`` (see the module docstring), highest first."""
    if len(sentences) < 2:
        raise ValueError("screening needs at least two clean sentences.")
    encoder.eval()
    device = encoder.device
    rng = random.Random(seed)
    encoded = [
        encoder.tokenizer(s, truncation=True, max_length=encoder.max_length - 1)["input_ids"]
        for s in sentences
    ]
    # one insertion point per sentence, after [CLS] and before [SEP], the same for every token
    points = [rng.randint(1, len(ids) - 1) for ids in encoded]
    clean = encoder.encode(sentences)
    length = max(len(ids) for ids in encoded) + 1
    pad = int(encoder.tokenizer.pad_token_id or 0)
    scores: list[TokenScore] = []
    for start in range(0, len(token_ids), batch_tokens):
        chunk = token_ids[start : start + batch_tokens]
        ids = torch.full((len(chunk) * len(encoded), length), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        row = 0
        for token in chunk:
            for sentence, point in zip(encoded, points, strict=True):
                seq = sentence[:point] + [token] + sentence[point:]
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
                row += 1
        pooled = encoder(ids.to(device), mask.to(device)).float().cpu()
        pooled = pooled.view(len(chunk), len(encoded), -1)
        score, consistency, shift = trigger_scores(pooled, clean)
        for k, token in enumerate(chunk):
            scores.append(
                TokenScore(
                    token=encoder.tokenizer.convert_ids_to_tokens(token),
                    token_id=int(token),
                    score=float(score[k]),
                    consistency=float(consistency[k]),
                    shift=float(shift[k]),
                )
            )
        if progress is not None:
            progress(len(chunk))
    return sorted(scores, key=lambda s: -s.score)


def screen_encoder(
    encoder: TextEncoder, sentences: list[str], budget: int | None = 4096, seed: int = 0
) -> tuple[list[TokenScore], float]:
    """All candidate tokens of the encoder's vocabulary within ``budget``, scored; and the
    seconds it took."""
    started = time.perf_counter()
    scores = screen_tokens(
        encoder, sentences, candidate_tokens(encoder.tokenizer, budget), seed=seed
    )
    return scores, time.perf_counter() - started
