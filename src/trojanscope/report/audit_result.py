"""What `trojanscope audit` found about a model file: the result its HTML report renders and
its ``--json`` record is made from (the audit itself: ``trojanscope.workflows.audit``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from trojanscope.scan.findings import FileReport

#: CLP flags channels whose standardised Lipschitz bound exceeds this (the CLP paper's u = 3).
CLP_THRESHOLD = 3.0


@dataclass
class AuditResult:
    model: str
    #: dangerous-file, suspicious-file, inconclusive-scan, not-screened, backdoor-suspected or
    #: no-backdoor-found
    verdict: str
    scan_verdict: str
    scan: list[FileReport]
    arch: str | None = None
    arch_params: dict[str, Any] = field(default_factory=dict)
    clean_acc: float | None = None
    clp_outliers: list[dict[str, Any]] = field(default_factory=list)
    layer_scores: dict[str, list[float]] = field(default_factory=dict)
    nc: dict[str, Any] | None = None
    reversed_trigger: dict[str, torch.Tensor] | None = None
    #: a text encoder's task-agnostic trigger screen (`audit ENCODER_DIR`)
    trigger_screen: dict[str, Any] | None = None
    #: an image encoder's task-agnostic patch screen (`audit ENCODER_DIR`)
    patch_screen: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 no backdoor found, or not screened (no --arch) after a clean scan; 3 inconclusive
        scan; 1 otherwise (dangerous or suspicious file, backdoor suspected)."""
        return {"no-backdoor-found": 0, "not-screened": 0, "inconclusive-scan": 3}.get(
            self.verdict, 1
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "scan_verdict": self.scan_verdict,
            "scan": [r.as_dict() for r in self.scan],
            "arch": self.arch,
            "arch_params": self.arch_params,
            "clean_acc": self.clean_acc,
            "clp_outliers": self.clp_outliers,
            "nc": self.nc,
            "trigger_screen": self.trigger_screen,
            "patch_screen": self.patch_screen,
            "notes": self.notes,
        }
