"""The README's JSON schemas and the records of workflows/records.py, key for key: the
documentation cannot drift from what the commands print."""

from __future__ import annotations

import re
from pathlib import Path

from trojanscope.workflows.records import (
    LocalizationSummary,
    QuickstartClean,
    QuickstartDefect,
    QuickstartResult,
    RepairRecord,
    StudyReport,
)

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def keys_of(model) -> list[str]:
    return list(model.model_fields)


def documented(start: str, end: str) -> list[str]:
    """The quoted keys of the README between ``start`` and the next ``end``, in order."""
    i = README.index(start)
    return re.findall(r'"(\w+)"', README[i : README.index(end, i + len(start))])


def test_the_quickstart_json_is_documented_key_for_key():
    assert documented('{"clean_model": {', "}") == ["clean_model", *keys_of(QuickstartClean)]
    assert documented(' "defects": [{', "}]") == ["defects", *keys_of(QuickstartDefect)]
    # the localization entries, up to their free-form "extra" (its keys are the criterion's)
    assert documented(' "localization": [{', '"extra"') == [
        "localization",
        *keys_of(LocalizationSummary)[:-1],
    ]
    assert keys_of(LocalizationSummary)[-1] == "extra"
    assert keys_of(QuickstartResult) == ["clean_model", "defects", "localization"]


def test_the_repair_json_is_documented_key_for_key():
    assert documented("`repair --json` prints `{", "}`") == keys_of(RepairRecord)


def test_the_study_report_json_is_documented_key_for_key():
    assert documented('`--json` prints `{"html"', "}`") == keys_of(StudyReport)


def test_the_lifecycle_json_is_documented_key_for_key():
    from trojanscope.workflows.records import LifecycleRecord, StageLocalization, StageRecord

    assert documented("`lifecycle --json` prints\n`{", '"localization": [{') == [
        *keys_of(LifecycleRecord),
        *keys_of(StageRecord)[:-1],
    ]
    assert documented('"localization": [{"criterion"', "}]}]}") == [
        "localization",
        *keys_of(StageLocalization),
    ]
