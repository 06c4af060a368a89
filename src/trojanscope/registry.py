"""One registry per plug-in kind: plug-ins register a class under a stable name.

A plug-in class declares its parameters as a pydantic model in ``Params``; ``create`` validates
them and fails with a sentence naming the bad parameter. Third-party packages can add plug-ins
through the entry-point group ``trojanscope.<kind>``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from trojanscope.errors import ConfigError, UnknownNameError

T = TypeVar("T")


def format_validation_error(owner: str, exc: ValidationError) -> str:
    """Turn a pydantic error into one sentence naming the parameter."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "parameters"
        parts.append(f"'{loc}' {err['msg'].lower()}")
    return f"invalid parameter for {owner}: " + "; ".join(parts) + "."


def validate_params(owner: str, model: type[BaseModel], params: dict[str, Any]) -> BaseModel:
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
            cls.name = name  # type: ignore[attr-defined]
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


class Plugin:
    """Base of every plug-in: validated parameters from a pydantic ``Params`` model."""

    name: str = "?"
    kind: str = "plug-in"
    Params: type[BaseModel] = NoParams

    def __init__(self, **params: Any) -> None:
        self.params = validate_params(f"{self.kind} '{self.name}'", self.Params, params)

    def describe(self) -> dict[str, Any]:
        """Name and parameters, JSON-ready (what the catalog stores)."""
        return {"name": self.name, "params": self.params.model_dump(mode="json")}
