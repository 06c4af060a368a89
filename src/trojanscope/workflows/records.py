"""The JSON records of `db build`, `db verify`, `db query`, `db stats`, `db export
--format bdefects4nn` and `db import`: defined once here,
printed by the command line with ``--json`` and checked key for key by the tests."""

from __future__ import annotations

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
