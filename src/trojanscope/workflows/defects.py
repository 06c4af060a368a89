"""Building the catalog: clean models, defects and localization results, each reused if present.

Every function here records an entry with its artifacts in one catalog transaction
(``Catalog.record``), so a build that is interrupted resumes where it stopped with nothing
half-written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from sqlalchemy import select
from torch import nn

from trojanscope.attacks.base import ATTACKS, Attack
from trojanscope.data.base import DATASETS, Splits
from trojanscope.data.poison import PoisonedView
from trojanscope.database.catalog import Catalog, content_key
from trojanscope.database.schema import (
    EXTRA_ARTIFACTS,
    Base,
    CleanModel,
    Defect,
    InfectedNeuronRow,
    Localization,
    RepairRow,
)
from trojanscope.database.store import Blob
from trojanscope.errors import CatalogError, ConfigError, CorruptArtifactError
from trojanscope.injection.groundtruth import InfectedNeuron
from trojanscope.injection.pipeline import InjectionConfig, inject_defect
from trojanscope.localization.base import CRITERIA, EvidenceData
from trojanscope.localization.metrics import layer_hit_rate, score
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import CleanTraining, accuracy, train_clean
from trojanscope.neurons import NeuronRef, all_neurons

#: A catalog table whose entries are found by content key.
T = TypeVar("T", CleanModel, Defect, Localization, RepairRow)
#: The largest row id SQLite stores (a signed 64-bit integer).
SQLITE_MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class CleanSpec:
    """What determines a clean model."""

    dataset: str
    arch: str
    seed: int = 0
    dataset_params: dict[str, Any] | None = None
    arch_params: dict[str, Any] | None = None
    training: CleanTraining = field(default_factory=CleanTraining)

    def resolved(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Validated, defaulted dataset and architecture parameters (the catalog's identity)."""
        ds = DATASETS.create(self.dataset, **(self.dataset_params or {}))
        arch = ARCHITECTURES.create(self.arch, **(self.arch_params or {}))
        ds_params = ds.params.model_dump(mode="json")
        if ds_params.get("data_dir"):  # one identity for ./x, ~/x and /abs/x
            ds_params["data_dir"] = str(Path(ds_params["data_dir"]).expanduser().resolve())
        return ds_params, arch.params.model_dump(mode="json")

    def splits(self) -> Splits:
        return load_splits(self.dataset, self.resolved()[0], self.seed)

    def key(self) -> str:
        """The clean model's catalog key: a hash of everything that determines it."""
        ds_params, arch_params = self.resolved()
        training = self.training.model_dump(mode="json")
        return content_key(
            "clean", self.dataset, ds_params, self.arch, arch_params, self.seed, training
        )


def load_splits(dataset: str, params: dict[str, Any], seed: int) -> Splits:
    """The splits of a data set (cached: every defect of a clean model shares them; callers
    never modify them in place)."""
    splits = _cached_splits(dataset, json.dumps(params, sort_keys=True), seed)
    labels = splits.train.y.unique().tolist()
    if len(labels) < 2:
        raise ConfigError(
            f"data set '{dataset}' holds only one class ({', '.join(map(str, labels)) or 'none'}"
            " in its training split); a classifier needs at least 2."
        )
    return splits


@functools.lru_cache(maxsize=4)
def _cached_splits(dataset: str, params_json: str, seed: int) -> Splits:
    return DATASETS.create(dataset, **json.loads(params_json)).load(seed)


def _build_model(row: CleanModel) -> nn.Module:
    shape = row.input_shape
    arch = ARCHITECTURES.get(row.arch).from_stored(row.arch_params)
    return arch.build(shape["channels"], shape["num_classes"], min(shape["height"], shape["width"]))


def eligible_neuron_count(clean: CleanModel) -> int:
    """How many eligible neurons the network of ``clean`` has (its architecture, no weights)."""
    return len(all_neurons(_build_model(clean)))


def load_weights(
    catalog: Catalog, clean: CleanModel, sha256: str, device: torch.device | None = None
) -> nn.Module:
    """The network of ``clean``'s architecture with the stored weights ``sha256``, on
    ``device`` (None: the CPU)."""
    model = _build_model(clean)
    state = catalog.store.get(sha256)  # on the CPU: loaded there, then moved
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise CorruptArtifactError(
            f"weights {sha256[:12]} do not fit architecture '{clean.arch}' {clean.arch_params}."
        ) from None
    return (model if device is None else model.to(device)).eval()


def ensure_clean_model(
    catalog: Catalog, spec: CleanSpec, device: torch.device | None = None
) -> tuple[CleanModel, nn.Module, Splits]:
    """The clean model for ``spec`` on ``device`` (None: the CPU), trained now only if the
    catalog lacks it."""
    row, model, splits, _ = build_clean_model(catalog, spec, device)
    return row, model, splits


def build_clean_model(
    catalog: Catalog, spec: CleanSpec, device: torch.device | None = None
) -> tuple[CleanModel, nn.Module, Splits, bool]:
    """As :func:`ensure_clean_model`, and whether the entry was recorded now (False: it was
    in the catalog, or another builder recorded it first)."""
    ds_params, arch_params = spec.resolved()
    training = spec.training.model_dump(mode="json")
    key = spec.key()
    splits = load_splits(spec.dataset, ds_params, spec.seed)
    row = find_by_key(catalog, CleanModel, key)
    if row is not None:
        check_splits(row, splits)
        return row, load_weights(catalog, row, row.weights_sha256, device), splits, False
    started = time.perf_counter()
    arch = ARCHITECTURES.create(spec.arch, **arch_params)
    model = train_clean(arch, splits.train, spec.seed, spec.training, device)
    weights = catalog.store.encode(model.state_dict())
    row = CleanModel(
        key=key,
        dataset=spec.dataset,
        dataset_params=ds_params,
        arch=spec.arch,
        arch_params=arch_params,
        seed=spec.seed,
        training=training,
        input_shape=input_shape_of(splits),
        clean_acc=accuracy(model, splits.test),
        weights_sha256=weights.sha256,
        seconds=time.perf_counter() - started,
    )
    if not _insert(catalog, row, [weights]):  # another builder got there first: use its entry
        row = raced_entry(catalog, CleanModel, key)  # and its weights (equal on the CPU; on an
        model = load_weights(catalog, row, row.weights_sha256, device)  # accelerator, maybe not)
        return row, model, splits, False
    return row, model, splits, True


def find_by_key(catalog: Catalog, table: type[T], key: str) -> T | None:
    """The entry of ``table`` (a clean model, localization, repair, ...) with key ``key``."""
    with catalog.session() as session:
        return session.scalar(select(table).where(table.key == key))


def raced_entry(catalog: Catalog, table: type[T], key: str) -> T:
    """The entry another process recorded under ``key`` while this one computed it."""
    found = find_by_key(catalog, table, key)
    if found is None:  # the insert failed on something else than the key: say so
        raise CatalogError(
            f"cannot record the {table.__tablename__} entry {key} in {catalog.root}."
        )
    return found


def _insert(catalog: Catalog, row: Base, artifacts: Sequence[Blob] = ()) -> bool:
    """Record ``row`` with its artifacts in one transaction; False if an entry with its key
    already exists (two builders raced for the same entry: both results are equivalent, the
    first one stays and nothing of the second is written)."""
    return catalog.record(row, artifacts)


def defect_key(clean_key: str, attack: Attack, config: InjectionConfig, seed: int) -> str:
    """A defect's catalog key: its clean model's key, the attack (name, parameters, seed),
    the injection configuration and the seed."""
    return content_key("defect", clean_key, attack.describe(), config.model_dump(mode="json"), seed)


def build_defect(
    catalog: Catalog,
    clean: CleanModel,
    model: nn.Module,
    splits: Splits,
    attack_name: str,
    attack_params: dict[str, Any],
    config: InjectionConfig,
    seed: int,
) -> tuple[Defect, bool]:
    """Inject one defect into ``model`` and record it (accepted or rejected).

    Returns the record and whether it was created now (False: it was already in the catalog).
    """
    attack = ATTACKS.create(attack_name, seed=seed, **attack_params)
    attack.validate(splits.shape, splits.num_classes)
    key = defect_key(clean.key, attack, config, seed)
    existing = get_defect_by_key(catalog, key)
    if existing is not None:
        return existing, False
    outcome = inject_defect(model, splits, attack, config, seed)
    view = outcome.poisoned_test
    p = attack.params
    store = catalog.store
    artifacts = [
        store.encode(outcome.model.state_dict()),
        store.encode(attack.trigger(splits.shape)),
        store.encode({"indices": view.indices, "x": view.x, "y": view.y}),
    ]
    row = Defect(
        key=key,
        clean_model_id=clean.id,
        attack=attack_name,
        attack_params=attack.describe()["params"],
        target_mode=p.target_mode,
        target=p.target,
        poison_rate=p.poison_rate,
        injection=config.model_dump(mode="json"),
        level=config.quantity.level,
        seed=seed,
        status=outcome.status,
        reason=outcome.reason,
        clean_acc_before=outcome.clean_acc_before,
        clean_acc=outcome.clean_acc,
        asr=outcome.asr,
        masked_asr=outcome.masked_asr,
        masked_asr_before=outcome.masked_asr_before,
        patched_asr=outcome.patched_asr,
        masked_clean_acc=outcome.masked_clean_acc,
        asr_before=outcome.asr_before,
        epochs=outcome.epochs,
        attempts=outcome.attempts,
        aim_score=outcome.aim_score,
        weights_sha256=artifacts[0].sha256,
        trigger_sha256=artifacts[1].sha256,
        poisoned_test_sha256=artifacts[2].sha256,
        seconds=outcome.seconds,
    )
    row.infected = infected_rows(outcome.infected)
    if not _insert(catalog, row, artifacts):
        return get_defect(catalog, raced_entry(catalog, Defect, key).id), False
    return get_defect(catalog, row.id), True


def infected_rows(truth: Sequence[InfectedNeuron]) -> list[InfectedNeuronRow]:
    """The catalog rows of a defect's ground truth."""
    return [
        InfectedNeuronRow(
            layer=n.ref.layer,
            index=n.ref.index,
            rank=n.rank,
            contribution=n.contribution,
            activation_shift=n.activation_shift,
            carrying=n.carrying,
        )
        for n in truth
    ]


def get_defect_by_key(catalog: Catalog, key: str) -> Defect | None:
    with catalog.session() as session:
        row_id = session.scalar(select(Defect.id).where(Defect.key == key))
    return None if row_id is None else get_defect(catalog, row_id)


def get_defect(catalog: Catalog, defect_id: int) -> Defect:
    """A defect with its clean model and infected neurons loaded."""
    if not 0 < defect_id <= SQLITE_MAX_ID:  # SQLite cannot even look such an id up
        raise CatalogError(f"no defect with id {defect_id} in {catalog.root}.")
    with catalog.session() as session:
        row = session.get(Defect, defect_id)
        if row is None:
            raise CatalogError(f"no defect with id {defect_id} in {catalog.root}.")
        _ = row.clean_model, row.infected  # load before the session closes
        session.expunge_all()
    return row


def list_defects(catalog: Catalog) -> list[Defect]:
    with catalog.session() as session:
        rows = list(session.scalars(select(Defect).order_by(Defect.id)))
        for row in rows:
            _ = row.clean_model, row.infected
        session.expunge_all()
    return rows


@dataclass
class DefectContext:
    """Everything needed to study a stored defect."""

    defect: Defect
    model: nn.Module
    splits: Splits
    attack: Attack
    poisoned_test: PoisonedView

    @property
    def truth(self) -> dict[NeuronRef, float]:
        return {NeuronRef(n.layer, n.index): n.contribution for n in self.defect.infected}

    @property
    def carrying_truth(self) -> dict[NeuronRef, float] | None:
        """The neurons of the set that carry the backdoor, with their contributions renormalised
        (None for a defect recorded before the flag existed)."""
        if any(n.carrying is None for n in self.defect.infected):
            return None
        kept = {
            NeuronRef(n.layer, n.index): n.contribution for n in self.defect.infected if n.carrying
        }
        total = sum(kept.values())
        return {ref: c / total for ref, c in kept.items()} if total > 0 else None

    def evidence(self) -> EvidenceData:
        view = self.poisoned_test
        return EvidenceData(
            clean=self.splits.test,
            clean_victims=self.splits.test.subset(view.indices),
            triggered=view.poisoned(),
            attack=self.attack,
        )


def input_shape_of(splits: Splits) -> dict[str, Any]:
    """A clean model's ``input_shape`` record: image shape, classes, and the data's fingerprint."""
    c, h, w = splits.shape
    return {
        "channels": c,
        "height": h,
        "width": w,
        "num_classes": splits.num_classes,
        "splits_sha256": splits_fingerprint(splits),
    }


def splits_fingerprint(splits: Splits) -> str:
    """sha256 of the split tensors: stored poisoned indices only make sense on the same data."""
    h = hashlib.sha256()
    for t in (splits.train.x, splits.train.y, splits.test.x, splits.test.y):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def check_splits(clean: CleanModel, splits: Splits) -> None:
    """Refuse ``splits`` unless they are the data ``clean`` was catalogued with (its stored
    fingerprint): a model, its defects and their poisoned indices only make sense on them."""
    expected = clean.input_shape.get("splits_sha256")
    if expected is not None and splits_fingerprint(splits) != expected:
        raise CatalogError(
            f"the data of clean model {clean.id} ({clean.dataset}) differ from when it was "
            "catalogued (files or library changed): it and its defects cannot be reused."
        )


def load_defect(
    catalog: Catalog, defect_id: int, device: torch.device | None = None
) -> DefectContext:
    """A stored defect with its model on ``device`` (None: the CPU) and its data (CPU)."""
    row = get_defect(catalog, defect_id)
    clean = row.clean_model
    splits = load_splits(clean.dataset, clean.dataset_params, clean.seed)
    check_splits(clean, splits)
    stored = catalog.store.get(row.poisoned_test_sha256)
    try:
        view = PoisonedView(splits.test, stored["indices"], stored["x"], stored["y"])
    except (KeyError, ValueError):
        raise CorruptArtifactError(
            f"poisoned test data of defect {defect_id} is malformed."
        ) from None
    attack = ATTACKS.create(row.attack, seed=row.seed, **row.attack_params)
    attack.set_trigger(catalog.store.get(row.trigger_sha256))
    return DefectContext(
        row, load_weights(catalog, clean, row.weights_sha256, device), splits, attack, view
    )


def require_truth(row: Defect) -> None:
    """Refuse, in one sentence, to score against an entry with no infected neuron (a
    distilled lifecycle link: its student's neurons are not the teacher's)."""
    if not row.infected:
        made = f" (a '{row.stage}' link)" if row.stage else ""
        raise ConfigError(
            f"defect {row.id}{made} has no infected neurons: nothing to score a localization "
            "or choose a repair's neurons against."
        )


def localization_key(defect_id: int, criterion: str, params: dict[str, Any]) -> str:
    return content_key("localization", defect_id, criterion, params)


def localize(
    catalog: Catalog,
    defect_id: int,
    criterion: str,
    params: dict[str, Any] | None = None,
    context: DefectContext | None = None,
    device: torch.device | None = None,
) -> tuple[Localization, bool]:
    """Run ``criterion`` on a stored defect; record its scores and metrics (reused if present).

    ``context``: the defect already loaded (saves reloading it for every criterion); otherwise
    it is loaded on ``device`` (None: the CPU)."""
    crit = CRITERIA.create(criterion, **(params or {}))
    key = localization_key(defect_id, criterion, crit.params.model_dump(mode="json"))
    existing = find_by_key(catalog, Localization, key)
    if existing is not None:
        return existing, False
    ctx = context if context is not None else load_defect(catalog, defect_id, device)
    require_truth(ctx.defect)
    result = crit.run(ctx.model, ctx.evidence())
    metrics = score(result.neurons, result.scores.numpy(), ctx.truth)
    scores = catalog.store.encode(
        {"scores": result.scores},
        {"neurons": json.dumps([str(n) for n in result.neurons]), "criterion": criterion},
    )
    artifacts = [scores]
    extra = dict(result.extra)
    extra["layer_hit_rate"] = layer_hit_rate(result.neurons, result.scores.numpy(), ctx.truth)
    # The same ranking scored against the neurons that carry the backdoor (None: no flags, or
    # no neuron carries it alone).
    carrying = ctx.carrying_truth
    extra["carrying"] = (
        None
        if carrying is None
        else _finite(score(result.neurons, result.scores.numpy(), carrying).as_dict())
    )
    if result.artifacts:
        artifacts.append(catalog.store.encode(result.artifacts))
        extra[EXTRA_ARTIFACTS] = artifacts[-1].sha256
    row = Localization(
        key=key,
        defect_id=defect_id,
        criterion=criterion,
        params=result.params,
        evidence=result.evidence,
        scores_sha256=scores.sha256,
        seconds=result.seconds,
        cost_forward=result.cost_forward,
        extra=extra,
        **_finite(metrics.as_dict()),
    )
    if not _insert(catalog, row, artifacts):
        return raced_entry(catalog, Localization, key), False
    return row, True


def load_scores(catalog: Catalog, row: Localization) -> tuple[list[NeuronRef], list[float]]:
    """The stored ranking of a localization: neurons and their scores."""
    stored = catalog.store.get(row.scores_sha256)
    names = json.loads(catalog.store.metadata(row.scores_sha256).get("neurons", "[]"))
    scores = stored.get("scores")
    if scores is None or len(names) != len(scores):
        raise CorruptArtifactError(f"scores of localization {row.id} are malformed.")
    return [NeuronRef.parse(n) for n in names], scores.tolist()


def list_localizations(catalog: Catalog, defect_id: int | None = None) -> list[Localization]:
    with catalog.session() as session:
        query = select(Localization).order_by(Localization.id)
        if defect_id is not None:
            query = query.where(Localization.defect_id == defect_id)
        return list(session.scalars(query))


def defect_summary(row: Defect) -> dict[str, Any]:
    """The stable JSON form of a defect record (the quickstart's ``defects`` entries)."""
    return {
        "id": row.id,
        "attack": row.attack,
        "level": row.level,
        "seed": row.seed,
        "status": row.status,
        "reason": row.reason,
        "clean_acc": row.clean_acc,
        "asr": row.asr,
        "masked_asr": row.masked_asr,
        "masked_asr_before": row.masked_asr_before,
        "masked_clean_acc": row.masked_clean_acc,
        "patched_asr": row.patched_asr,
        "n_infected": len(row.infected),
        "n_carrying": sum(bool(n.carrying) for n in row.infected),
    }


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready metrics: NaN (undefined) becomes None."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


def localization_summary(row: Localization) -> dict[str, Any]:
    return {
        "defect_id": row.defect_id,
        "criterion": row.criterion,
        "precision": row.precision,
        "recall": row.recall,
        "f1": row.f1,
        "wji": row.wji,
        "auroc": row.auroc,
        "ap": row.ap,
        "seconds": row.seconds,
        "cost_forward": row.cost_forward,
        "extra": row.extra or {},
    }
