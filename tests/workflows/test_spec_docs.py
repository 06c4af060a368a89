"""docs/build-spec.md's field tables are what scripts/spec_docs.py renders from the models."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("spec_docs", ROOT / "scripts" / "spec_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["spec_docs"] = module
    spec.loader.exec_module(module)
    return module


def test_the_committed_page_equals_what_the_models_render() -> None:
    page = (ROOT / "docs" / "build-spec.md").read_text(encoding="utf-8")
    assert _script().render(page) == page, "run python scripts/spec_docs.py"


def test_every_spec_field_is_described() -> None:
    docs = _script()
    for model in (
        docs.BuildSpec,
        docs.CleanTraining,
        docs.InjectionConfig,
        docs.Quantity,
        docs.Acceptance,
        docs.PluginEntry,
        docs.RepairEntry,
    ):
        bare = [name for name, info in model.model_fields.items() if not info.description]
        assert bare == [], f"{model.__name__}: fields without a description: {bare}"


def test_a_page_without_a_block_is_refused() -> None:
    with pytest.raises(SystemExit, match="lacks the generated block"):
        _script().render("# nothing generated\n")
