"""A build spec as jobs: one per clean model and one per defect (with its criteria and
repairs), each named by the catalog key of what it records, so that a job already in the
catalog is skipped and two builds of one spec agree on every key."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from trojanscope.attacks.base import ATTACKS, require_injectable
from trojanscope.data.base import DATASETS
from trojanscope.database.catalog import Catalog
from trojanscope.database.schema import CleanModel, Defect, Localization, RepairRow
from trojanscope.injection.pipeline import InjectionConfig
from trojanscope.localization.base import CRITERIA
from trojanscope.models.base import ARCHITECTURES
from trojanscope.workflows.defects import CleanSpec, defect_key, get_defect, localization_key
from trojanscope.workflows.labels import plugin_label
from trojanscope.workflows.spec import BuildSpec, CriterionEntry, RepairEntry
from trojanscope.workflows.study import repair_request


@dataclass(frozen=True)
class Cell:
    """A cell of the grid: the defects that differ only by seed."""

    dataset: str
    arch: str
    attack: str
    order: str
    level: str

    @property
    def label(self) -> str:
        return f"{self.dataset} / {self.arch} / {self.attack} / {self.order} / {self.level}"


@dataclass(frozen=True)
class CleanJob:
    """Train (or find) one clean model."""

    key: str
    spec: CleanSpec
    label: str


@dataclass(frozen=True)
class DefectJob:
    """Inject one defect into its clean model, then run the criteria and repairs on it if it
    is accepted."""

    key: str
    clean: CleanJob
    attack: str
    attack_params: dict[str, Any]
    config: InjectionConfig
    seed: int
    cell: Cell
    criteria: tuple[CriterionEntry, ...] = ()
    repairs: tuple[RepairEntry, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.cell.label} / seed {self.seed}"


@dataclass
class Plan:
    """The jobs of a spec, clean models first, and those already complete in a catalog."""

    clean: list[CleanJob]
    defects: list[DefectJob]
    #: Keys of the jobs whose entries are all in the catalog.
    done: set[str] = field(default_factory=set)
    #: Status of the defects already in the catalog, by key.
    statuses: dict[str, str] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return [job.key for job in self.clean] + [job.key for job in self.defects]

    def todo(self) -> tuple[list[CleanJob], list[DefectJob]]:
        return (
            [j for j in self.clean if j.key not in self.done],
            [j for j in self.defects if j.key not in self.done],
        )


def _unique(jobs: Iterable[Any]) -> list[Any]:
    """Jobs in order, each key once (a spec may list the same thing twice)."""
    return list({job.key: job for job in jobs}.values())


def make_plan(spec: BuildSpec) -> Plan:
    """Every job of ``spec`` with its key (no data is read and nothing is trained)."""
    configs = {
        (level, order): spec.injection_config(level, order)
        for level in spec.levels
        for order in spec.orders
    }
    clean_jobs, defect_jobs = [], []
    for ds in spec.datasets:
        for arch in spec.architectures:
            for clean_seed in spec.clean_seeds:
                clean_spec = CleanSpec(
                    dataset=ds.name,
                    arch=arch.name,
                    seed=clean_seed,
                    dataset_params=dict(ds.params),
                    arch_params=dict(arch.params),
                    training=spec.clean_training(),
                )
                ds_label = plugin_label(DATASETS, ds.name, ds.params)
                arch_label = plugin_label(ARCHITECTURES, arch.name, arch.params)
                label = f"{ds_label} / {arch_label} / clean seed {clean_seed}"
                clean = CleanJob(clean_spec.key(), clean_spec, label)
                clean_jobs.append(clean)
                for attack in spec.attacks:
                    require_injectable(attack.name)
                    attack_label = plugin_label(ATTACKS, attack.name, attack.params)
                    for order in spec.orders:
                        for level in spec.levels:
                            config = configs[level, order]
                            cell = Cell(ds_label, arch_label, attack_label, order, level)
                            for seed in spec.seeds:
                                made = ATTACKS.create(attack.name, seed=seed, **attack.params)
                                defect_jobs.append(
                                    DefectJob(
                                        key=defect_key(clean.key, made, config, seed),
                                        clean=clean,
                                        attack=attack.name,
                                        attack_params=dict(attack.params),
                                        config=config,
                                        seed=seed,
                                        cell=cell,
                                        criteria=tuple(spec.criteria),
                                        repairs=tuple(spec.repairs),
                                    )
                                )
    return Plan(_unique(clean_jobs), _unique(defect_jobs))


def _criterion_params(entry: CriterionEntry) -> dict[str, Any]:
    return dict(CRITERIA.create(entry.name, **entry.params).params.model_dump(mode="json"))


def analysis_keys(job: DefectJob, defect: Defect) -> list[str]:
    """The keys of the localizations and repairs ``job`` records on the accepted ``defect``
    (a repair also records the localization of its criterion)."""
    chosen = [*job.criteria, *(r.criterion for r in job.repairs if r.criterion is not None)]
    keys = [localization_key(defect.id, c.name, _criterion_params(c)) for c in chosen]
    for repair in job.repairs:
        criterion = repair.criterion
        request = repair_request(
            defect,
            repair.name,
            None if criterion is None else criterion.name,
            repair.k,
            repair.params,
            None if criterion is None else criterion.params,
        )
        keys.append(request.key)
    return keys


def recorded(job: CleanJob | DefectJob, catalog: Catalog) -> tuple[bool, str | None]:
    """Whether every entry of ``job`` is in ``catalog`` now (as :func:`check_catalog` decides
    for a whole plan), and the status of its defect if it is recorded (None for a clean
    model): what a build asks of a job another build held."""
    if isinstance(job, CleanJob):
        with catalog.session() as session:
            clean_id = session.scalar(select(CleanModel.id).where(CleanModel.key == job.key))
        return clean_id is not None, None
    with catalog.session() as session:
        defect_id = session.scalar(select(Defect.id).where(Defect.key == job.key))
    if defect_id is None:
        return False, None
    row = get_defect(catalog, defect_id)
    if row.status != "accepted":
        return True, row.status
    keys = analysis_keys(job, row)
    with catalog.session() as session:
        found = set(session.scalars(select(Localization.key).where(Localization.key.in_(keys))))
        found |= set(session.scalars(select(RepairRow.key).where(RepairRow.key.in_(keys))))
    return all(k in found for k in keys), row.status


def check_catalog(plan: Plan, catalog: Catalog) -> Plan:
    """Mark the jobs whose entries are all in ``catalog`` as done (a defect job is done when
    its defect is rejected, or accepted with every localization and repair recorded)."""
    with catalog.session() as session:
        clean_keys = set(session.scalars(select(CleanModel.key)))
        defects = dict(session.execute(select(Defect.key, Defect.id)).all())
        recorded = set(session.scalars(select(Localization.key)))
        recorded |= set(session.scalars(select(RepairRow.key)))
    plan.done = {job.key for job in plan.clean if job.key in clean_keys}
    for job in plan.defects:
        defect_id = defects.get(job.key)
        if defect_id is None:
            continue
        row = get_defect(catalog, defect_id)
        plan.statuses[job.key] = row.status
        if row.status != "accepted" or all(k in recorded for k in analysis_keys(job, row)):
            plan.done.add(job.key)
    return plan
