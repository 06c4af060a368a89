"""Rule 4 (sub-network correlation filter): accept a defect only if it is real and confined:
the infected set is necessary (masking it removes the backdoor) and sufficient (the backdoor
fires with everything outside it held at clean activations).

Necessity is judged against the clean model under the same mask. Zeroing neurons is itself an
intervention: on Fashion-MNIST / cnn-small (width 0.5) the *clean* model with SIG's two
neurons per layer zeroed sends 27% of the triggered victims to the target (0% unmasked), and
under fan-in edges the masked injected model is that masked clean model, bit for bit. What is
left of the backdoor under the mask is the masked ASR above that baseline."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Acceptance(BaseModel):
    model_config = {"extra": "forbid"}
    min_asr: float = Field(0.90, ge=0.0, le=1.0, description="lowest test ASR accepted")
    max_acc_drop: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        description="largest clean-accuracy drop accepted, in accuracy units (0.03 = 3 points)",
    )
    max_masked_asr: float = Field(
        0.20,
        ge=0.0,
        le=1.0,
        description="masked ASR allowed above the clean model's under the same mask",
    )
    max_masked_acc_drop: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="masking the infected set may cost at most this much clean accuracy: a low "
        "masked ASR only shows confinement if the masked model still works",
    )
    min_patched_ratio: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="the ASR with every neuron outside the set held at its clean-input "
        "activation must be at least this share of the ASR: the set carries the backdoor alone "
        "(0: measured and recorded, not required, as for an injection without confine)",
    )

    def verdict(
        self,
        clean_acc_before: float,
        clean_acc: float,
        asr: float,
        masked_asr: float,
        masked_clean_acc: float,
        patched_asr: float | None = None,
        masked_asr_before: float = 0.0,
    ) -> str | None:
        """None if accepted, else the reason for rejection (``patched_asr`` None: the
        sufficiency rule is not checked, as for defects recorded before it existed;
        ``masked_asr_before``: the clean model's target rate on triggered victims under the same
        mask)."""
        reasons = []
        if asr < self.min_asr:
            reasons.append(f"ASR {asr:.3f} < {self.min_asr:.2f}")
        drop = clean_acc_before - clean_acc
        if drop > self.max_acc_drop + 1e-9:
            reasons.append(
                f"clean accuracy dropped {100 * drop:.1f} points > {100 * self.max_acc_drop:.1f}"
            )
        if masked_asr - masked_asr_before > self.max_masked_asr + 1e-9:
            baseline = (
                f" above the clean model's {masked_asr_before:.3f} under the same mask"
                if masked_asr_before
                else ""
            )
            reasons.append(
                f"masked ASR {masked_asr:.3f} > {self.max_masked_asr:.2f}{baseline} (backdoor "
                "not confined)"
            )
        masked_drop = clean_acc - masked_clean_acc
        if masked_drop > self.max_masked_acc_drop + 1e-9:
            reasons.append(
                f"masking the infected neurons costs {100 * masked_drop:.1f} points of clean "
                f"accuracy > {100 * self.max_masked_acc_drop:.1f} (the mask breaks the model)"
            )
        if patched_asr is not None and patched_asr < self.min_patched_ratio * asr - 1e-9:
            reasons.append(
                f"patched ASR {patched_asr:.3f} < {self.min_patched_ratio:.2f} x ASR (the "
                "backdoor also travels outside the infected set)"
            )
        return "; ".join(reasons) or None
