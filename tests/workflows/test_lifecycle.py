"""A stored defect through a chain of stages: each link measured, the defect unchanged."""

from __future__ import annotations

import pytest

from tests.database.conftest import built, template  # noqa: F401 (fixtures)
from trojanscope.errors import ConfigError, TrojanscopeError, UnknownNameError
from trojanscope.workflows.defects import get_defect
from trojanscope.workflows.lifecycle import parse_stages, run_lifecycle


def test_parse_stages_reads_names_and_parameters():
    assert parse_stages("prune-magnitude, quantize-int8(mode=dynamic)") == [
        ("prune-magnitude", {}),
        ("quantize-int8", {"mode": "dynamic"}),
    ]
    stages = parse_stages(
        'finetune-transfer(dataset=synthetic,dataset_params={"size": 8, "n": 400},epochs=2)'
    )
    assert stages == [
        (
            "finetune-transfer",
            {"dataset": "synthetic", "dataset_params": {"size": 8, "n": 400}, "epochs": 2},
        )
    ]


@pytest.mark.parametrize(
    "text, error, words",
    [
        ("prune", UnknownNameError, "prune"),
        ("prune-magnitude(sparsity)", ConfigError, "is not KEY=VALUE"),
        ("prune-magnitude;onnx-export", ConfigError, "expected ','"),
        ("", ConfigError, "at least one stage"),
    ],
)
def test_parse_stages_refuses_bad_lists(text, error, words):
    with pytest.raises(error, match=words):
        parse_stages(text)


def test_chain_measures_every_link_and_leaves_the_defect_alone(built):  # noqa: F811
    catalog, _, _, _, defect, _ = built
    links = run_lifecycle(
        catalog,
        defect.id,
        [("prune-magnitude", {"sparsity": 0.3}), ("onnx-export", {})],
        criteria=["oracle", "clp"],
    )
    original, pruned, onnx = links
    assert [link.stage for link in links] == ["original", "prune-magnitude", "onnx-export"]
    assert original.asr == pytest.approx(defect.asr, abs=1e-6)
    assert original.clean_acc == pytest.approx(defect.clean_acc, abs=1e-6)
    assert [loc["criterion"] for loc in original.localization] == ["oracle", "clp"]
    assert original.remaining_infected == len(defect.infected)
    assert pruned.params["sparsity"] == 0.3 and pruned.localization
    # the runtime computes what PyTorch computes: the same decisions, no localization
    assert onnx.max_abs_deviation is not None and onnx.max_abs_deviation < 1e-4
    assert onnx.asr == pytest.approx(pruned.asr, abs=0.02) and onnx.localization == []
    assert get_defect(catalog, defect.id).weights_sha256 == defect.weights_sha256


def test_an_impossible_chain_is_refused_before_any_work(built):  # noqa: F811
    catalog, _, _, _, defect, _ = built
    with pytest.raises(TrojanscopeError, match="cannot follow 'onnx-export'"):
        run_lifecycle(catalog, defect.id, [("onnx-export", {}), ("prune-magnitude", {})])
    with pytest.raises(ConfigError, match="sparsity"):
        run_lifecycle(catalog, defect.id, [("prune-magnitude", {"sparsity": 2})])
