"""The build spec: a TOML file that declares a grid of defects (data sets x architectures x
attacks x injection orders x levels x seeds), how clean models are trained and defects
injected, and which criteria and repairs run on the accepted ones.

Every field is validated (pydantic, unknown fields refused) and each plug-in's parameters by
that plug-in's own model; a mistake is one sentence naming the file, the line and the field.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from trojanscope.attacks.base import ATTACKS, injectable_attacks, require_injectable
from trojanscope.data.base import DATASETS
from trojanscope.device import Amp
from trojanscope.errors import ConfigError
from trojanscope.injection.pipeline import InjectionConfig
from trojanscope.injection.quantity import LevelName, Order
from trojanscope.localization.base import CRITERIA
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import CleanTraining
from trojanscope.registry import Registry
from trojanscope.repair.base import REPAIRS
from trojanscope.workflows.tomlpos import locate

#: The defect-quantity levels, in order (the reference database's four).
LEVELS: tuple[LevelName, ...] = get_args(LevelName)
#: Seeds reach NumPy and scikit-learn, which take 32-bit unsigned integers.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
#: Where an error is: keys and list indices, as pydantic reports them.
Loc = tuple[str | int, ...]


class SpecError(ConfigError):
    """A build spec that cannot be read or validated (one sentence: file, line, field)."""


class PluginEntry(BaseModel):
    """A registered plug-in and its parameters; a bare string is the name alone."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    registry: ClassVar[Registry[Any]]
    name: str = Field(description="the plug-in's registered name")
    params: dict[str, Any] = Field(
        default_factory=dict, description="the plug-in's own parameters (see its table)"
    )

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        names = cls.known_names()
        if name not in names:
            unknown = f"unknown {cls.registry.kind} '{name}' (known: {', '.join(names)})"
            raise ValueError(cls.refusal(name) or unknown)
        return name

    @classmethod
    def known_names(cls) -> list[str]:
        """The names a spec may give here."""
        return cls.registry.names()

    @classmethod
    def refusal(cls, name: str) -> str | None:
        """Why a registered name is not among ``known_names`` (None: it is not registered)."""
        return None

    def param_errors(self) -> Iterator[tuple[Loc, str]]:
        """The plug-in's own validation of ``params`` (locations relative to the entry)."""
        try:
            self.registry.get(self.name).Params.model_validate(self.params)
        except ValidationError as exc:
            for err in exc.errors():
                yield ("params", *err["loc"]), _message(err)


class DatasetEntry(PluginEntry):
    registry = DATASETS


class ArchitectureEntry(PluginEntry):
    registry = ARCHITECTURES


class AttackEntry(PluginEntry):
    registry = ATTACKS

    @classmethod
    def known_names(cls) -> list[str]:
        return injectable_attacks()  # NeuBA is planted by pre-training, not by a grid

    @classmethod
    def refusal(cls, name: str) -> str | None:
        if name not in ATTACKS.names():
            return None
        try:
            require_injectable(name)
        except ConfigError as exc:
            return str(exc).rstrip(".")
        return None

    def param_errors(self) -> Iterator[tuple[Loc, str]]:
        if "seed" in self.params:
            yield ("params", "seed"), "an attack's seed is the defect's: list them in `seeds`"
            return
        yield from super().param_errors()


class CriterionEntry(PluginEntry):
    registry = CRITERIA


class RepairEntry(PluginEntry):
    """A repair method; a neuron repair names the criterion that chooses its ``k`` neurons
    (default k: the ground-truth size)."""

    registry = REPAIRS
    criterion: CriterionEntry | None = Field(
        None,
        description="the criterion whose top-k neurons a neuron repair treats (a name or "
        "{ name, params }); finetune-all takes none",
    )
    k: int | None = Field(
        None, ge=1, description="how many neurons (none: the defect's ground-truth size)"
    )

    def param_errors(self) -> Iterator[tuple[Loc, str]]:
        yield from super().param_errors()
        uses_neurons = REPAIRS.get(self.name).uses_neurons
        if uses_neurons and self.criterion is None:
            yield ("name",), f"repair '{self.name}' needs a criterion to choose its neurons"
        if not uses_neurons and (self.criterion is not None or self.k is not None):
            field = "criterion" if self.criterion is not None else "k"
            yield (field,), f"repair '{self.name}' does not choose neurons: remove {field}"
        if self.criterion is not None:
            for loc, msg in self.criterion.param_errors():
                yield ("criterion", *loc), msg


#: Injection fields the grid sets: a spec lists them at the top level instead.
GRID_FIELDS = {("order",): "orders", ("quantity", "level"): "levels"}


class BuildSpec(BaseModel):
    """A grid of defects and what to run on the accepted ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    datasets: list[DatasetEntry] = Field(
        min_length=1, description="the data sets of the grid (clean models train on each)"
    )
    architectures: list[ArchitectureEntry] = Field(
        min_length=1, description="the architectures of the grid"
    )
    attacks: list[AttackEntry] = Field(
        min_length=1,
        description="the attacks of the grid (their params never hold a seed: that is the "
        "defect's, from `seeds`)",
    )
    orders: list[Order] = Field(
        default_factory=lambda: list[Order](["least"]),
        min_length=1,
        description="injection rule 1, the order neurons are chosen in: the least or most "
        "useful to the clean task first, or at random",
    )
    levels: list[LevelName] = Field(
        default_factory=lambda: list(LEVELS),
        min_length=1,
        description="injection rule 2, the defect-quantity levels (by default 1, 2, 3, 4 "
        "neurons per chosen layer; see `injection.quantity`)",
    )
    seeds: list[Seed] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="defect seeds: each is one defect per cell (the attack's trigger, poisoned "
        "samples and training order)",
    )
    clean_seeds: list[Seed] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="clean-model seeds: one clean model per data set x architecture x clean "
        "seed, shared by its defects",
    )
    training: CleanTraining = Field(CleanTraining(), description="how the clean models are trained")
    injection: dict[str, Any] = Field(
        default_factory=dict,
        description="the injection settings of every defect (an InjectionConfig without "
        "`order`, `quantity.level` and `amp`)",
    )
    criteria: list[CriterionEntry] = Field(
        default_factory=list,
        description="localization criteria run on every accepted defect (stored, reused by "
        "`bench` and `report study`)",
    )
    repairs: list[RepairEntry] = Field(
        default_factory=list,
        description="repairs of every accepted defect, each a table { name, params, "
        "criterion, k } (`[[repairs]]` in TOML)",
    )
    amp: Amp = Field(
        "off",
        description="mixed precision of clean training and injection: bf16, fp16 or off (in "
        "the keys only when not off; the device must support it)",
    )

    def clean_training(self) -> CleanTraining:
        """How the clean models are trained: ``training`` in the spec's precision."""
        return self.training.model_copy(update={"amp": self.amp})

    def injection_config(self, level: str, order: str) -> InjectionConfig:
        """The injection settings of one level and order."""
        quantity = {**self.injection.get("quantity", {}), "level": level}
        return InjectionConfig.model_validate(
            {**self.injection, "quantity": quantity, "order": order, "amp": self.amp}
        )

    def problems(self) -> Iterator[tuple[Loc, str]]:
        """What the field types cannot check: each plug-in's parameters, repairs and their
        criteria, the injection settings."""
        kinds: dict[str, list[Any]] = {
            "datasets": list(self.datasets),
            "architectures": list(self.architectures),
            "attacks": list(self.attacks),
            "criteria": list(self.criteria),
            "repairs": list(self.repairs),
        }
        for kind, entries in kinds.items():
            for i, entry in enumerate(entries):
                for loc, msg in entry.param_errors():
                    yield (kind, i, *loc), msg
        for path, top in GRID_FIELDS.items():
            value: Any = self.injection
            for part in path:
                value = value.get(part) if isinstance(value, Mapping) else None
            if value is not None:
                yield ("injection", *path), f"the grid sets it: list values in `{top}`"
                return
        # One precision per build: the top-level `amp` sets clean training and injection.
        for section, given in (
            ("training", "amp" in self.training.model_fields_set),
            ("injection", "amp" in self.injection),
        ):
            if given:
                yield (section, "amp"), "the precision of the whole build is the top-level `amp`"
                return
        try:
            self.injection_config(self.levels[0], self.orders[0])
        except ValidationError as exc:
            for err in exc.errors():
                yield ("injection", *err["loc"]), _message(err)


def _message(err: ErrorDetails) -> str:
    """A pydantic error as the end of a sentence (without the field)."""
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return f"unknown field '{err['loc'][-1]}'" if err["loc"] else "unknown field"
    if kind == "missing":
        return "required, but missing"
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return msg[:1].lower() + msg[1:]


def field_name(loc: Loc) -> str:
    """``("attacks", 1, "name")`` -> ``attacks[1].name``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the spec"


def _where(source: str, text: str, loc: Loc) -> str:
    line = locate(text, loc)
    return f"{source} line {line}" if line is not None else source


def _fail(source: str, text: str, problems: list[tuple[Loc, str]]) -> SpecError:
    loc, msg = problems[0]
    more = len(problems) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return SpecError(f"{_where(source, text, loc)}, {field_name(loc)}: {msg.rstrip('.')}{tail}.")


_TOML_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


def parse_spec(text: str, source: str = "the spec", base: Path | None = None) -> BuildSpec:
    """Validate a spec's TOML ``text``; ``source`` names it in errors and a relative
    ``data_dir`` is taken from ``base`` (the spec's folder; None: the working directory)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_POSITION.search(str(exc))
        what = _TOML_POSITION.sub("", str(exc))
        what = what[:1].lower() + what[1:]
        if found is None or found.group(1) is None:
            raise SpecError(f"{source}: not valid TOML ({what}).") from None
        line, column = found.groups()
        raise SpecError(
            f"{source} line {line}: not valid TOML ({what}, column {column})."
        ) from None
    try:
        spec = BuildSpec.model_validate(data)
    except ValidationError as exc:
        raise _fail(source, text, [(tuple(e["loc"]), _message(e)) for e in exc.errors()]) from None
    problems = list(spec.problems())
    if problems:
        raise _fail(source, text, problems)
    return _anchor_data_dirs(spec, base)


def _anchor_data_dirs(spec: BuildSpec, base: Path | None) -> BuildSpec:
    """Relative ``data_dir`` parameters are relative to the spec's folder, as in a Makefile."""
    if base is None:
        return spec
    datasets = []
    for entry in spec.datasets:
        data_dir = entry.params.get("data_dir")
        if isinstance(data_dir, str) and not Path(data_dir).expanduser().is_absolute():
            params = {**entry.params, "data_dir": str(base / data_dir)}
            entry = entry.model_copy(update={"params": params})
        datasets.append(entry)
    return spec.model_copy(update={"datasets": datasets})


def load_spec(path: Path) -> BuildSpec:
    """Read and validate the spec file ``path`` (errors name it with the line and field)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"no build spec at {path}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SpecError(f"cannot read the build spec {path}: {reason}.") from None
    return parse_spec(text, str(path), path.parent)
