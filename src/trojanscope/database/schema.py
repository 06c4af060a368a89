"""Catalog tables: clean models, defects, their infected neurons, localizations, repairs, and
the claims of the build jobs running now."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class CleanModel(Base):
    __tablename__ = "clean_models"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)  # hash of everything below
    dataset: Mapped[str] = mapped_column(String(64))
    dataset_params: Mapped[dict[str, Any]]
    arch: Mapped[str] = mapped_column(String(64))
    arch_params: Mapped[dict[str, Any]]
    seed: Mapped[int]
    training: Mapped[dict[str, Any]]
    input_shape: Mapped[dict[str, Any]]  # {"channels", "height", "width", "num_classes"}
    clean_acc: Mapped[float] = mapped_column(Float)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    # Where an imported entry came from: {"format", "source", "files": {path: sha256}} (None:
    # built here, or recorded before imports existed).
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    defects: Mapped[list[Defect]] = relationship(back_populates="clean_model")


class Defect(Base):
    __tablename__ = "defects"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    clean_model_id: Mapped[int] = mapped_column(ForeignKey("clean_models.id"))
    attack: Mapped[str] = mapped_column(String(64))
    attack_params: Mapped[dict[str, Any]]
    target_mode: Mapped[str] = mapped_column(String(16))
    target: Mapped[int]
    poison_rate: Mapped[float] = mapped_column(Float)
    injection: Mapped[dict[str, Any]]
    level: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int]
    status: Mapped[str] = mapped_column(String(16))  # accepted / rejected / link
    reason: Mapped[str | None] = mapped_column(Text)
    clean_acc_before: Mapped[float] = mapped_column(Float)
    clean_acc: Mapped[float] = mapped_column(Float)
    asr: Mapped[float] = mapped_column(Float)
    masked_asr: Mapped[float] = mapped_column(Float)
    masked_clean_acc: Mapped[float | None] = mapped_column(Float)
    # The clean model's target rate on triggered victims under the same mask (what zeroing the
    # set does on its own; None: recorded before it was measured).
    masked_asr_before: Mapped[float | None] = mapped_column(Float, nullable=True)
    asr_before: Mapped[float] = mapped_column(Float)
    epochs: Mapped[int]
    # ASR with every neuron outside the set held at clean activations (None: recorded before
    # the sufficiency check existed).
    patched_asr: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Training rounds the injector ran (None: recorded before retries existed).
    attempts: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The injector's score of the kept weights on training images (``injection.aim``): >= 1
    # its goals met, [0, 1) inside the acceptance bounds short of a goal, < 0 outside; below 1
    # the training ended on its budget or a stall, not on its goals (None: recorded before it,
    # or not made by the injector).
    aim_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    trigger_sha256: Mapped[str] = mapped_column(String(64))
    poisoned_test_sha256: Mapped[str] = mapped_column(String(64))
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    # Where an imported defect came from: {"format", "source", "files": {path: sha256}} (None:
    # built here, or recorded before imports existed).
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # A lifecycle link (status "link"): the entry it was derived from, the stage that derived
    # it and its parameters, and what the stage recorded (its output's form, the ONNX
    # deviation, the transfer's control rate). None on a defect built by injection.
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("defects.id"), nullable=True, index=True
    )
    stage: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stage_params: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    stage_details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    clean_model: Mapped[CleanModel] = relationship(back_populates="defects")
    infected: Mapped[list[InfectedNeuronRow]] = relationship(
        back_populates="defect", order_by="InfectedNeuronRow.rank", cascade="all, delete-orphan"
    )
    localizations: Mapped[list[Localization]] = relationship(
        back_populates="defect", cascade="all, delete-orphan"
    )
    repairs: Mapped[list[RepairRow]] = relationship(
        back_populates="defect", cascade="all, delete-orphan"
    )


class InfectedNeuronRow(Base):
    __tablename__ = "infected_neurons"
    id: Mapped[int] = mapped_column(primary_key=True)
    defect_id: Mapped[int] = mapped_column(ForeignKey("defects.id"), index=True)
    layer: Mapped[str] = mapped_column(String(256))
    index: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int]  # position in the injection order
    contribution: Mapped[float] = mapped_column(Float)
    activation_shift: Mapped[float] = mapped_column(Float)
    # Masking it alone removes a share of the backdoor (None: recorded before the flag existed).
    carrying: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    defect: Mapped[Defect] = relationship(back_populates="infected")


class Localization(Base):
    __tablename__ = "localizations"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    defect_id: Mapped[int] = mapped_column(ForeignKey("defects.id"), index=True)
    criterion: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]]
    evidence: Mapped[str] = mapped_column(String(16))
    scores_sha256: Mapped[str] = mapped_column(String(64))
    k: Mapped[int]
    precision: Mapped[float] = mapped_column(Float)
    recall: Mapped[float] = mapped_column(Float)
    f1: Mapped[float] = mapped_column(Float)
    wji: Mapped[float] = mapped_column(Float)
    auroc: Mapped[float | None] = mapped_column(Float)  # undefined when every neuron is infected
    ap: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    cost_forward: Mapped[float] = mapped_column(Float)
    # Findings beyond the scores (NC's detected label, per-layer hit rate, artifact hashes).
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    defect: Mapped[Defect] = relationship(back_populates="localizations")


class RepairRow(Base):
    __tablename__ = "repairs"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    defect_id: Mapped[int] = mapped_column(ForeignKey("defects.id"), index=True)
    method: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]]
    criterion: Mapped[str | None] = mapped_column(String(64))  # None: the repair ignores it
    criterion_params: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    k: Mapped[int]
    neurons: Mapped[dict[str, Any]]  # {"names": [...]}: what was pruned / fine-tuned
    clean_acc_before: Mapped[float] = mapped_column(Float)
    clean_acc_after: Mapped[float] = mapped_column(Float)
    asr_before: Mapped[float] = mapped_column(Float)
    asr_after: Mapped[float] = mapped_column(Float)
    der: Mapped[float] = mapped_column(Float)
    weights_sha256: Mapped[str] = mapped_column(String(64))  # the repaired model
    seconds: Mapped[float] = mapped_column(Float)
    # What the run chose on its own (finetune-all: the rate it backed off to); None: nothing,
    # or recorded before repairs reported it.
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    defect: Mapped[Defect] = relationship(back_populates="repairs")


class JobClaim(Base):
    """A build job some process is running now (see ``database.claims``): one row per job
    key, removed when the job ends; a row whose owner died is taken over."""

    __tablename__ = "job_claims"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # the job's catalog key
    owner: Mapped[str] = mapped_column(String(300))  # host:pid:random, unique per build
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    # When the owner process started (Linux /proc ticks; None elsewhere): a reused pid is not
    # mistaken for the owner.
    process_start: Mapped[str | None] = mapped_column(String(32), nullable=True)
    started: Mapped[float] = mapped_column(Float)  # seconds since the epoch (database clock
    heartbeat: Mapped[float] = mapped_column(Float)  # on PostgreSQL, else the host's)


#: The columns of each table that name artifacts of the store (a localization may name one
#: more in ``extra["artifacts_sha256"]``): what ``integrity`` checks and keeps.
ARTIFACT_COLUMNS: dict[type[Base], tuple[str, ...]] = {
    CleanModel: ("weights_sha256",),
    Defect: ("weights_sha256", "trigger_sha256", "poisoned_test_sha256"),
    Localization: ("scores_sha256",),
    RepairRow: ("weights_sha256",),
}
#: The key of ``Localization.extra`` that names a criterion's own artifacts.
EXTRA_ARTIFACTS = "artifacts_sha256"
