"""One registry per plug-in kind: plug-ins register a class under a stable name.

A plug-in class declares its parameters as a pydantic model, the type argument of its base
(``class BadNets(Attack[BadNetsParams])``), which becomes its ``Params``; ``create`` validates
them and fails with a sentence naming the bad parameter. Third-party packages can add plug-ins
through the entry-point group ``trojanscope.<kind>``.
"""

from __future__ import annotations

import importlib
import pkgutil
import typing
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any, ClassVar, Final, Generic, cast

from pydantic import BaseModel, ValidationError
from typing_extensions import TypeVar  # type-variable defaults (PEP 696) before Python 3.13

from trojanscope.errors import ConfigError, UnknownNameError

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T", bound="Plugin[BaseModel]")


def format_validation_error(owner: str, exc: ValidationError) -> str:
    """Turn a pydantic error into one sentence naming the parameter."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "parameters"
        parts.append(f"'{loc}' {err['msg'].lower()}")
    return f"invalid parameter for {owner}: " + "; ".join(parts) + "."


def validate_params(owner: str, model: type[M], params: Mapping[str, Any]) -> M:
    """Validate ``params`` against ``model``; raise ConfigError with one sentence on failure."""
    try:
        return model(**params)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(owner, exc)) from None


class Registry(Generic[T]):
    """Name -> plug-in class, for one kind (dataset, architecture, attack, criterion, repair)."""

    def __init__(self, kind: str, packages: Iterable[str] = ()) -> None:
        self.kind = kind
        # Every module in these packages is imported on first use, so adding a plug-in is
        # adding one module: nothing else changes.
        self._packages = tuple(packages)
        self._entries: dict[str, type[T]] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            cls.name = name
            self._entries[name] = cls
            return cls

        return decorate

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for package in self._packages:
            pkg = importlib.import_module(package)
            for info in pkgutil.iter_modules(pkg.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{package}.{info.name}")
        for ep in entry_points(group=f"trojanscope.{self.kind}"):
            ep.load()

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> type[T]:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(self.names())
            raise UnknownNameError(f"unknown {self.kind} '{name}'; valid names: {valid}.") from None

    def create(self, name: str, **params: Any) -> T:
        """Instantiate plug-in ``name`` with validated parameters."""
        return self.get(name)(**params)


class NoParams(BaseModel):
    """Parameters of a plug-in that takes none."""

    model_config = {"extra": "forbid"}


#: A plug-in's parameter model. Covariant: parameters are read-only once validated, so an
#: ``Attack[BadNetsParams]`` is an ``Attack[AttackParams]``. Each kind's base passes on a type
#: variable of its own whose default is the model of a plug-in that names none.
P_co = TypeVar("P_co", bound=BaseModel, covariant=True, default=NoParams)


def _named_model(cls: type) -> type[BaseModel] | None:
    """The parameter model ``cls`` names as its plug-in base's type argument, or that type
    variable's default when it passes one on (``class Attack(Plugin[AP_co])``); None when it
    names none (a plain ``class Digits(Dataset)`` inherits its base's ``Params``)."""
    for base in vars(cls).get("__orig_bases__", ()):
        origin = typing.get_origin(base)
        if not (isinstance(origin, type) and issubclass(origin, Plugin)):
            continue
        (arg,) = typing.get_args(base)
        if isinstance(arg, typing.TypeVar):
            arg = getattr(arg, "__default__", None)
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


class Plugin(Generic[P_co]):
    """Base of every plug-in: validated parameters from a pydantic ``Params`` model.

    ``Params`` is the model named as the type argument of the base class; a class may also set
    it (to that model or a subclass), and one that names none inherits it."""

    name: ClassVar[str] = "?"
    kind: ClassVar[str] = "plug-in"
    Params: type[P_co]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        named = _named_model(cls)
        own = vars(cls).get("Params")
        if own is None:
            if named is not None:
                # The model named in ``Plugin[...]`` is P_co for this class, by definition.
                cls.Params = cast("type[P_co]", named)
            elif not hasattr(cls, "Params"):
                cls.Params = cast("type[P_co]", NoParams)
        elif named is not None and not (isinstance(own, type) and issubclass(own, named)):
            raise TypeError(
                f"{cls.__name__}.Params must be {named.__name__} or a subclass of it, the "
                "parameter model its base class names."
            )

    def __init__(self, **params: Any) -> None:
        self.params: Final[P_co] = validate_params(
            f"{self.kind} '{self.name}'", self.Params, params
        )

    def describe(self) -> dict[str, Any]:
        """Name and parameters, JSON-ready (what the catalog stores)."""
        return {"name": self.name, "params": self.params.model_dump(mode="json")}
