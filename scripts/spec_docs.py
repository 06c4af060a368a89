"""Render the field tables of docs/build-spec.md from the build spec's pydantic models.

The page's prose is written by hand; each table sits between two markers,

    <!-- generated: NAME by scripts/spec_docs.py -->
    ...
    <!-- end generated: NAME -->

and is rendered from the models' ``model_fields`` (type, default, allowed values, description),
so it follows the code. ``python scripts/spec_docs.py`` rewrites the tables in place;
``--check`` exits 1 when the page differs from what the models give (a test runs the same
check, so the page cannot drift).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from trojanscope.attacks.base import ATTACKS, injectable_attacks
from trojanscope.data.base import DATASETS
from trojanscope.injection.acceptance import Acceptance
from trojanscope.injection.pipeline import InjectionConfig
from trojanscope.injection.quantity import Quantity
from trojanscope.localization.base import CRITERIA
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import CleanTraining
from trojanscope.registry import Registry
from trojanscope.repair.base import REPAIRS
from trojanscope.workflows.spec import BuildSpec, PluginEntry, RepairEntry

PAGE = Path(__file__).resolve().parent.parent / "docs" / "build-spec.md"
BLOCK = re.compile(
    r"(<!-- generated: (?P<name>[\w-]+) by scripts/spec_docs\.py -->\n)"
    r".*?"
    r"(<!-- end generated: (?P=name) -->)",
    re.DOTALL,
)
#: Fields a spec does not set where the model has them, and where it sets them instead.
NOT_IN_A_SPEC = {
    (InjectionConfig, "order"): "the grid's `orders`",
    (InjectionConfig, "amp"): "the top-level `amp`",
    (CleanTraining, "amp"): "the top-level `amp`",
    (Quantity, "level"): "the grid's `levels`",
}
#: Where a nested model's fields are listed.
SECTIONS = {
    CleanTraining: "[`[training]`](#training)",
    Quantity: "[`[injection.quantity]`](#injectionquantity)",
    Acceptance: "[`[injection.acceptance]`](#injectionacceptance)",
}


def type_name(annotation: Any) -> str:
    """A field's type in the words of a TOML file (Literal choices go to "allowed")."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return "string" if all(isinstance(a, str) for a in args) else "literal"
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or none" if type(None) in args else "")
    if origin is list:
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "table"
    if isinstance(annotation, type) and issubclass(annotation, PluginEntry):
        return "name or { name, params }"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    return {str: "string", int: "integer", float: "float", bool: "boolean"}.get(
        annotation, str(annotation)
    )


def _bounds(metadata: list[Any]) -> list[str]:
    out = []
    for m in metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if isinstance(m, getattr(annotated_types, attr.capitalize())):
                out.append(f"{sign} {getattr(m, attr)}")
        if isinstance(m, annotated_types.MinLen):
            out.append(f"at least {m.min_length} entr{'y' if m.min_length == 1 else 'ies'}")
        if isinstance(m, FieldInfo):
            out += _bounds(m.metadata)
    return out


def allowed(annotation: Any, metadata: list[Any]) -> str:
    """Choices and bounds of a field (and of a list's items)."""
    parts = [f"`{a}`" for a in _literals(annotation)]
    parts = [", ".join(parts)] if parts else []
    parts += _bounds(metadata)
    origin = typing.get_origin(annotation)
    if origin is list or origin is typing.Annotated:
        for arg in typing.get_args(annotation)[1:] if origin is typing.Annotated else []:
            parts += _bounds([arg])
        inner = typing.get_args(annotation)[0] if origin is list else None
        if inner is not None and typing.get_origin(inner) is typing.Annotated:
            parts += [f"each {b}" for b in _bounds(list(typing.get_args(inner)[1:]))]
    if isinstance(annotation, type) and issubclass(annotation, PluginEntry):
        parts.append(f"a registered {annotation.registry.kind}")
    return "; ".join(parts) or "-"


def _literals(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return list(typing.get_args(annotation))
    if origin in (list, typing.Annotated, typing.Union, types.UnionType):
        return [v for a in typing.get_args(annotation) for v in _literals(a)]
    return []


def default_text(info: FieldInfo) -> str:
    """A field's default as TOML would write it."""
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return f"see {SECTIONS.get(type(value), 'below')}"
    if value is None:
        return "none"
    if value == {} or value == []:
        return "empty"
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def field_table(model: type[BaseModel], prefix: str = "", skip: tuple[str, ...] = ()) -> str:
    """One row per field of ``model``: name, type, default, allowed values, what it does."""
    rows = [
        "| field | type | default | allowed | what it does |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        what = info.description or "-"
        where = NOT_IN_A_SPEC.get((model, name))
        if where is not None:
            what = f"not set here in a spec ({where} sets it): {info.description or name}"
        kind = type_name(info.annotation)
        rows.append(
            f"| `{prefix}{name}` | {_cell(kind)} | {_cell(default_text(info))} | "
            f"{_cell(allowed(info.annotation, info.metadata))} | {_cell(what)} |"
        )
    return "\n".join(rows) + "\n"


def plugin_tables(registry: Registry[Any], names: list[str] | None = None) -> str:
    """Each in-project plug-in of ``registry`` (or those of ``names``) with its parameters
    (plug-ins other packages add through entry points are theirs to document)."""
    out = []
    for name in registry.names() if names is None else names:
        cls = registry.get(name)
        if not cls.__module__.startswith("trojanscope."):
            continue
        doc = (cls.__doc__ or "").strip().split("\n\n")[0]
        out.append(f"**`{name}`**" + (f": {' '.join(doc.split())}\n" if doc else "\n"))
        params: type[BaseModel] = cls.Params
        if not params.model_fields:
            out.append("No parameters.\n")
            continue
        out.append(field_table(params, "params."))
    return "\n".join(out)


def blocks() -> dict[str, str]:
    """Every generated table, by block name."""
    return {
        "spec": field_table(BuildSpec),
        "entry": field_table(PluginEntry),
        "repair-entry": field_table(RepairEntry, skip=("name", "params")),
        "training": field_table(CleanTraining),
        "injection": field_table(InjectionConfig),
        "quantity": field_table(Quantity, "quantity."),
        "acceptance": field_table(Acceptance, "acceptance."),
        "datasets": plugin_tables(DATASETS),
        "architectures": plugin_tables(ARCHITECTURES),
        # a spec grid injects by poisoning: NeuBA, planted by pre-training, is not listed
        "attacks": plugin_tables(ATTACKS, injectable_attacks()),
        "criteria": plugin_tables(CRITERIA),
        "repairs": plugin_tables(REPAIRS),
    }


def render(page: str) -> str:
    """``page`` with every generated block rendered afresh (unknown block names refused)."""
    tables = blocks()
    seen: set[str] = set()

    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in tables:
            raise SystemExit(f"docs/build-spec.md: unknown generated block '{name}'.")
        seen.add(name)
        return f"{match[1]}\n{tables[name]}\n{match[3]}"

    out = BLOCK.sub(fill, page)
    missing = sorted(set(tables) - seen)
    if missing:
        raise SystemExit(f"docs/build-spec.md lacks the generated block(s) {', '.join(missing)}.")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    parser.add_argument("--page", type=Path, default=PAGE)
    args = parser.parse_args()
    text = args.page.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print(f"{args.page} is stale: run python scripts/spec_docs.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.page.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
