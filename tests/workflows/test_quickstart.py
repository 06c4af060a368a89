"""The demo itself: the default quickstart on mnist5k, as `make demo` runs it."""

import pytest

from trojanscope.database.catalog import Catalog
from trojanscope.injection.pipeline import attack_success_rate
from trojanscope.localization.base import quick_criteria
from trojanscope.workflows.defects import CleanSpec, load_defect
from trojanscope.workflows.quickstart import LEVELS, run_quickstart


@pytest.mark.slow
def test_default_quickstart_builds_accepted_defects_at_every_level(tmp_path):
    catalog = Catalog.open(tmp_path / "db", create=True)
    steps = []
    # the demo's defaults, one seed of the two (the demo's second seed doubles the time)
    spec = CleanSpec("mnist5k", "cnn-small")
    result = run_quickstart(catalog, spec, seeds=[0], step=steps.append)
    assert result["clean_model"]["clean_acc"] > 0.93
    defects = result["defects"]
    assert [d["level"] for d in defects] == list(LEVELS)
    accepted = [d for d in defects if d["status"] == "accepted"]
    # the bar: at least three of the four levels pass every rule, sufficiency included
    # (measured: all four, patched ASR 0.94-1.00); a margin for another CPU's trajectories
    assert len(accepted) >= 3
    assert all(d["reason"] for d in defects if d["status"] == "rejected")
    for d in accepted:
        ctx = load_defect(catalog, d["id"])
        assert attack_success_rate(ctx.model, ctx.poisoned_test) >= 0.9
    assert len(result["localization"]) == len(accepted) * len(quick_criteria())
    assert "ablation" in quick_criteria()
    # every defect says whether its set is sufficient, and which of its neurons carry it
    assert all(0.0 <= d["patched_asr"] <= 1.0 for d in defects)
    assert all(0 <= d["n_carrying"] <= d["n_infected"] for d in defects)
    assert all("carrying" in loc["extra"] for loc in result["localization"])
    # resuming reuses every entry
    again = run_quickstart(catalog, spec, seeds=[0])
    assert [d["id"] for d in again["defects"]] == [d["id"] for d in defects]
