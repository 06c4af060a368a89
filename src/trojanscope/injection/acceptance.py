"""Rule 4 (sub-network correlation filter): accept a defect only if it is real and confined."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Acceptance(BaseModel):
    model_config = {"extra": "forbid"}
    min_asr: float = Field(0.90, ge=0.0, le=1.0)
    max_acc_drop: float = Field(
        0.03, ge=0.0, le=1.0, description="in accuracy units (0.03 = 3 points)"
    )
    max_masked_asr: float = Field(0.20, ge=0.0, le=1.0)
    max_masked_acc_drop: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="masking the infected set may cost at most this much clean accuracy: a low "
        "masked ASR only shows confinement if the masked model still works",
    )

    def verdict(
        self,
        clean_acc_before: float,
        clean_acc: float,
        asr: float,
        masked_asr: float,
        masked_clean_acc: float,
    ) -> str | None:
        """None if accepted, else the reason for rejection."""
        reasons = []
        if asr < self.min_asr:
            reasons.append(f"ASR {asr:.3f} < {self.min_asr:.2f}")
        drop = clean_acc_before - clean_acc
        if drop > self.max_acc_drop + 1e-9:
            reasons.append(
                f"clean accuracy dropped {100 * drop:.1f} points > {100 * self.max_acc_drop:.1f}"
            )
        if masked_asr > self.max_masked_asr:
            reasons.append(
                f"masked ASR {masked_asr:.3f} > {self.max_masked_asr:.2f} (backdoor not confined)"
            )
        masked_drop = clean_acc - masked_clean_acc
        if masked_drop > self.max_masked_acc_drop + 1e-9:
            reasons.append(
                f"masking the infected neurons costs {100 * masked_drop:.1f} points of clean "
                f"accuracy > {100 * self.max_masked_acc_drop:.1f} (the mask breaks the model)"
            )
        return "; ".join(reasons) or None
