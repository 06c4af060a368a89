"""Scoring a localization against the ground truth (DESIGN.md, Metrics)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from trojanscope.neurons import NeuronRef


@dataclass(frozen=True)
class LocalizationMetrics:
    k: int
    precision: float
    recall: float
    f1: float
    wji: float
    auroc: float
    ap: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def top_k(
    neurons: list[NeuronRef], scores: np.ndarray | Sequence[float], k: int
) -> list[NeuronRef]:
    """The k highest-scoring neurons; ties keep the neurons' enumeration order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [neurons[i] for i in order[:k]]


def weighted_jaccard(truth: dict[NeuronRef, float], selected: list[NeuronRef]) -> float:
    """WJI = sum min(g, p) / sum max(g, p); g the contribution vector, p = 1/k on the selection."""
    p = {ref: 1.0 / len(selected) for ref in selected} if selected else {}
    union = set(truth) | set(p)
    num = sum(min(truth.get(r, 0.0), p.get(r, 0.0)) for r in union)
    den = sum(max(truth.get(r, 0.0), p.get(r, 0.0)) for r in union)
    return num / den if den > 0 else 0.0


def score(
    neurons: list[NeuronRef],
    scores: np.ndarray | list[float],
    truth: dict[NeuronRef, float],
    k: int | None = None,
) -> LocalizationMetrics:
    """Metrics of a full ranking against ``truth`` (infected neuron -> contribution)."""
    scores = np.asarray(scores, dtype=np.float64)
    k = len(truth) if k is None else k
    selected = top_k(neurons, scores, k)
    hits = len(set(selected) & set(truth))
    precision = hits / k if k else 0.0
    recall = hits / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    labels = np.array([ref in truth for ref in neurons], dtype=int)
    if 0 < labels.sum() < len(labels):
        auroc = float(roc_auc_score(labels, scores))
        ap = float(average_precision_score(labels, scores))
    else:  # undefined without both classes
        auroc = ap = math.nan
    return LocalizationMetrics(
        k, precision, recall, f1, weighted_jaccard(truth, selected), auroc, ap
    )


def layer_hit_rate(
    neurons: list[NeuronRef], scores: np.ndarray | list[float], truth: dict[NeuronRef, float]
) -> dict[str, float]:
    """For each layer holding infected neurons: the fraction of them among that layer's top-n
    neurons, n = the layer's number of infected neurons (does the criterion find the defect
    inside each layer, whatever its scale across layers?)."""
    scores = np.asarray(scores, dtype=np.float64)
    rates: dict[str, float] = {}
    for layer in sorted({ref.layer for ref in truth}):
        positions = [i for i, ref in enumerate(neurons) if ref.layer == layer]
        infected = {ref for ref in truth if ref.layer == layer}
        chosen = top_k([neurons[i] for i in positions], scores[positions], len(infected))
        rates[layer] = len(infected & set(chosen)) / len(infected)
    return rates
