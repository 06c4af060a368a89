"""The JSON records the commands print with ``--json`` (and `quickstart --json FILE` writes):
defined once here, printed by the command line and checked key for key by the tests, against
the commands' output and against the README's schemas. (`scan --json` is the exception: the
scan command starts on the standard library alone.)"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Counts(_Record):
    """Jobs of one kind: planned, built now, reused from the catalog."""

    planned: int = 0
    built: int = 0
    reused: int = 0


class DefectCounts(Counts):
    """Defect jobs, and how many of those defects are accepted or rejected."""

    accepted: int = 0
    rejected: int = 0


class CellSummary(DefectCounts):
    """One cell of the grid (its defects differ only by seed)."""

    dataset: str
    arch: str
    attack: str
    order: str
    level: str


class BuildSummary(_Record):
    """What `db build` did."""

    spec: str
    db: str
    workers: int
    device: str
    seconds: float
    swept: int  # orphan artifacts and temporary files of interrupted builds, removed
    clean_models: Counts
    defects: DefectCounts
    analyses_built: int  # localizations and repairs recorded now
    cells: list[CellSummary]


class ArtifactProblem(_Record):
    sha256: str
    path: str
    referenced_by: list[str]


class VerifyReport(_Record):
    """What `db verify` found (``ok``: nothing missing, corrupt or orphaned)."""

    db: str
    ok: bool
    checked: int
    missing: list[ArtifactProblem]
    corrupt: list[ArtifactProblem]
    orphans: list[str]


class DefectRecord(_Record):
    """A defect as `db query` lists it."""

    id: int
    key: str
    status: str
    reason: str | None
    dataset: str
    arch: str
    arch_params: dict[str, object]
    attack: str
    order: str
    level: str
    seed: int
    clean_model_key: str
    clean_acc: float
    asr: float
    masked_asr: float
    patched_asr: float | None
    n_infected: int
    weights_sha256: str
    trigger_sha256: str


class ReasonCount(_Record):
    reason: str
    count: int


class CellStats(_Record):
    """Accepted and rejected defects of one cell, with the rejection reasons by rule."""

    dataset: str
    arch: str
    attack: str
    order: str
    level: str
    accepted: int
    rejected: int
    reasons: list[ReasonCount]


class Stats(_Record):
    """What `db stats` prints."""

    db: str
    defects: int
    accepted: int
    rejected: int
    cells: list[CellStats]


class ExportedCase(_Record):
    """One defect `db export --format bdefects4nn` wrote, and its folder under the export."""

    defect_id: int
    key: str
    status: str
    path: str


class ExportSummary(_Record):
    """What `db export --format bdefects4nn` wrote."""

    db: str
    out: str
    format: str
    defects: int
    clean_models: int
    files: int
    cases: list[ExportedCase]


class ImportedCase(_Record):
    """One case folder `db import` read: the defect it is in the catalog, and whether this
    import added it (False: the catalog held it already)."""

    path: str
    defect_id: int
    key: str
    imported: bool


class ImportSummary(_Record):
    """What `db import` did."""

    source: str
    db: str
    format: str
    found: int
    imported: int
    present: int
    clean_models_imported: int
    cases: list[ImportedCase]


# -- the records of quickstart, inject, db list / show / export, localize, repair, bench,
# report study, manifest verify and audit. Numbers are dumped as computed (``model_dump()``,
# not JSON mode), so what the commands print is what they printed before these models.


class DefectSummary(_Record):
    """A defect as `inject` and `db list` print it."""

    id: int
    attack: str
    level: str
    seed: int
    status: str
    reason: str | None
    clean_acc: float
    asr: float
    masked_asr: float
    masked_asr_before: float | None
    masked_clean_acc: float | None
    patched_asr: float | None
    n_infected: int
    n_carrying: int


class QuickstartDefect(DefectSummary):
    """A defect of the quickstart, with the seconds its injection took."""

    seconds: float


class LocalizationSummary(_Record):
    """A stored localization scored against the ground truth (``extra``: the per-layer hit
    rate, the scores against the carrying neurons, and what the criterion found)."""

    defect_id: int
    criterion: str
    precision: float
    recall: float
    f1: float
    wji: float
    auroc: float | None
    ap: float | None
    seconds: float
    cost_forward: float
    extra: dict[str, Any]


class QuickstartClean(_Record):
    """The quickstart's clean model."""

    id: int
    dataset: str
    arch: str
    arch_params: dict[str, Any]
    seed: int
    clean_acc: float
    seconds: float


class QuickstartResult(_Record):
    """What `quickstart --json FILE` writes."""

    clean_model: QuickstartClean
    defects: list[QuickstartDefect]
    localization: list[LocalizationSummary]


class InfectedNeuron(_Record):
    neuron: str
    rank: int
    contribution: float
    activation_shift: float
    carrying: bool | None


class DefectDetail(DefectSummary):
    """One defect as `db show` prints it: its record, infected neurons, localizations."""

    dataset: str
    arch: str
    arch_params: dict[str, Any]
    clean_model_id: int
    clean_acc_before: float
    asr_before: float
    attack_params: dict[str, Any]
    injection: dict[str, Any]
    epochs: int
    weights_sha256: str
    trigger_sha256: str
    poisoned_test_sha256: str
    seconds: float
    infected: list[InfectedNeuron]
    localization: list[LocalizationSummary]
    #: A lifecycle link's parent, stage, parameters and details (None: built by injection).
    link: dict[str, Any] | None = None


class TopNeuron(_Record):
    neuron: str
    score: float


class LocalizeRecord(LocalizationSummary):
    """What `localize` prints: the scored localization and its top-k neurons."""

    k: int
    evidence: str
    params: dict[str, Any]
    reused: bool
    top: list[TopNeuron]


class RepairRecord(_Record):
    """What `repair` prints."""

    defect_id: int
    method: str
    criterion: str | None
    k: int
    clean_acc_before: float
    clean_acc_after: float
    asr_before: float
    asr_after: float
    asr_drop: float
    acc_drop: float
    der: float
    seconds: float
    weights_sha256: str
    # what the run chose on its own, e.g. finetune-all's {lr, restarts, diverged}
    details: dict[str, Any]
    reused: bool


class BenchRepair(_Record):
    """What `bench repair` prints: one row per repair, and the aggregated table."""

    rows: list[dict[str, Any]]
    table: list[dict[str, Any]]


class BenchLocalize(BenchRepair):
    """What `bench localize` prints: rows, the aggregated table, the plots written."""

    plots: list[str]


class StudyReport(_Record):
    """What `report study` wrote, and how much it shows."""

    html: str
    markdown: str
    plots: list[str]
    defects: int
    localizations: int
    repairs: int


class JobCounts(_Record):
    planned: int
    todo: int


class BuildPlan(_Record):
    """What `db build --dry-run` would build."""

    clean_models: JobCounts
    defects: JobCounts


class ExportedWeights(_Record):
    """What `db export ID --out FILE` wrote."""

    out: str
    kind: str
    id: int
    sha256: str


class EditedEntry(_Record):
    path: str
    expected_sha256: str
    actual_sha256: str


class RefusedEntry(_Record):
    path: str
    reason: str


class ManifestReport(_Record):
    """What `manifest verify` found (``ok``: nothing edited, missing, extra or refused)."""

    ok: bool
    verified: list[str]
    edited: list[EditedEntry]
    missing: list[str]
    extra: list[str]
    refused: list[RefusedEntry]


class AuditRecord(_Record):
    """What `audit` found (``scan``: the scan's file reports, as `scan --json` prints them)."""

    model: str
    verdict: str
    exit_code: int
    scan_verdict: str
    scan: list[dict[str, Any]]
    arch: str | None
    arch_params: dict[str, Any]
    clean_acc: float | None
    clp_outliers: list[dict[str, Any]]
    nc: dict[str, Any] | None
    trigger_screen: dict[str, Any] | None = None
    patch_screen: dict[str, Any] | None = None
    notes: list[str]
    report: str


class StageLocalization(_Record):
    """One criterion's figures after a lifecycle stage (against the remaining infected set)."""

    criterion: str
    wji: float
    auroc: float | None
    f1: float
    seconds: float


class StageRecord(_Record):
    """One link of a lifecycle chain: what the stage did and what was measured after it."""

    stage: str
    #: The catalog entry: the defect itself for "original", else the link (status "link"),
    #: which `localize`, `repair`, `export` and `audit` take like any defect id.
    defect_id: int
    reused: bool  # found in the catalog (a resumed chain) rather than computed now
    params: dict[str, Any]
    clean_acc: float
    asr: float
    target: int | None  # the label the backdoor sends inputs to (None: all-to-all)
    seconds: float
    max_abs_deviation: float | None  # ONNX: runtime versus PyTorch logits (None elsewhere)
    remaining_infected: int
    details: dict[str, Any]
    localization: list[StageLocalization]


class LifecycleRecord(_Record):
    """What `lifecycle --json` prints: the defect as stored, then each stage."""

    defect_id: int
    stages: list[StageRecord]


class BenchLifecycle(BenchRepair):
    """What `bench lifecycle` prints: one row per defect and link, the table by position,
    stage and level, and the plot written."""

    plot: str
