"""NC, Neural Cleanse (Wang et al., IEEE S&P 2019): reverse-engineer a trigger for every label.

For each label t, a mask m and a pattern p (both in [0, 1], through tanh) are optimised so that
x' = (1 - m) x + m p is classified as t, with an L1 penalty on m whose weight adapts as in the
paper (raised while the reversed trigger succeeds, lowered while it fails). A backdoor target
needs a much smaller mask than the other labels: its median-absolute-deviation anomaly index
(|norm - median| / (1.4826 MAD)) exceeds ``threshold`` on the small side. Neurons are scored by
their activation shift under the reversed trigger of the most anomalous label (the oracle's
statistic, with the reversed trigger in place of the attacker's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

from trojanscope.localization.base import (
    CRITERIA,
    Criterion,
    EvidenceData,
    LayerScores,
    frozen_weights,
    trigger_shift,
)
from trojanscope.models.training import predict


class NCParams(BaseModel):
    model_config = {"extra": "forbid"}
    samples: int = Field(512, ge=1, description="Clean inputs used.")
    steps: int = Field(300, ge=1, description="Optimisation steps per label.")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.1, gt=0)
    init_cost: float = Field(1e-3, ge=0, description="Initial weight of the mask's L1 norm.")
    success: float = Field(0.95, gt=0, le=1, description="Attack rate a reversed trigger needs.")
    threshold: float = Field(2.0, gt=0, description="Anomaly index flagging a target label.")
    seed: int = 0


def reverse_trigger(
    model: nn.Module, x: torch.Tensor, label: int, p: NCParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(mask (1, H, W), pattern (C, H, W), L1 norm of the smallest successful mask)."""
    _, c, h, w = x.shape
    mask_raw = torch.zeros(1, h, w, requires_grad=True)
    pattern_raw = torch.zeros(c, h, w, requires_grad=True)
    optimizer = torch.optim.Adam([mask_raw, pattern_raw], lr=p.lr, betas=(0.5, 0.9))
    cost = p.init_cost
    best: tuple[torch.Tensor, torch.Tensor] | None = None
    best_norm = float("inf")
    target = torch.full((p.batch_size,), label, dtype=torch.long)
    for step in range(p.steps):
        idx = torch.randint(len(x), (p.batch_size,), generator=generator)
        mask = torch.tanh(mask_raw) / 2 + 0.5
        pattern = torch.tanh(pattern_raw) / 2 + 0.5
        logits = model((1 - mask) * x[idx] + mask * pattern)
        ce = F.cross_entropy(logits, target[: len(idx)])
        l1 = mask.sum()
        optimizer.zero_grad()
        (ce + cost * l1).backward()
        optimizer.step()
        rate = float((logits.argmax(1) == label).float().mean())
        if rate >= p.success and float(l1.detach()) < best_norm:
            best = (mask.detach().clone(), pattern.detach().clone())
            best_norm = float(l1.detach())
        # Adaptive cost (the paper's schedule, simplified): every 10 steps, push the mask
        # smaller while the trigger works, relax the penalty while it does not.
        if step % 10 == 9:
            if rate >= p.success:
                cost = cost * 1.5 if cost > 0 else p.init_cost or 1e-3
            else:
                cost /= 1.5**1.5
    if best is None:  # never succeeded: its norm is that of the final mask, not small
        mask = (torch.tanh(mask_raw) / 2 + 0.5).detach()
        return mask, (torch.tanh(pattern_raw) / 2 + 0.5).detach(), float(mask.sum())
    return best[0], best[1], best_norm


def anomaly_indices(norms: torch.Tensor) -> torch.Tensor:
    """Median-absolute-deviation anomaly index of each label's mask norm (signed: negative =
    smaller than the median, the side a backdoor target lies on)."""
    median = norms.median()
    mad = 1.4826 * (norms - median).abs().median()
    return (norms - median) / mad.clamp_min(1e-12)


@CRITERIA.register("nc")
class NeuralCleanse(Criterion[NCParams]):
    evidence = "clean"
    expensive = True

    def layer_scores(self, model: nn.Module, data: EvidenceData) -> LayerScores:
        p = self.params
        clean = data.need_clean()
        x = clean.x[: p.samples]
        generator = torch.Generator().manual_seed(p.seed)
        with frozen_weights(model):  # only the trigger is optimised
            reversed_ = [
                reverse_trigger(model, x, label, p, generator) for label in range(clean.num_classes)
            ]
        norms = torch.tensor([r[2] for r in reversed_], dtype=torch.float64)
        index = anomaly_indices(norms)
        candidate = int(norms.argmin())
        mask, pattern, _ = reversed_[candidate]
        victims = x[predict(model, x).argmax(1) != candidate]
        victims = victims if len(victims) else x
        triggered = (1 - mask) * victims + mask * pattern
        scores = trigger_shift(model, victims, triggered)
        flagged = -float(index[candidate]) > p.threshold
        extra: dict[str, object] = {
            "detected_label": candidate if flagged else None,
            "candidate_label": candidate,
            "anomaly_index": -float(index[candidate]),
            "mask_norms": norms.tolist(),
            "reversed_mask": mask,
            "reversed_pattern": pattern,
        }
        return LayerScores(scores, extra)
