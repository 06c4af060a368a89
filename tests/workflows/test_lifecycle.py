"""A stored defect through a chain of stages: each link measured, the defect unchanged."""

from __future__ import annotations

import pytest

from tests.database.conftest import built, template  # noqa: F401 (fixtures)
from trojanscope.errors import ConfigError, TrojanscopeError, UnknownNameError
from trojanscope.workflows.defects import get_defect, localize
from trojanscope.workflows.lifecycle import parse_stages, run_lifecycle
from trojanscope.workflows.query import stats
from trojanscope.workflows.study import repair_defect, select_defects


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


TRANSFER = {"dataset": "synthetic", "dataset_params": {"size": 8, "n": 400}, "epochs": 1}


def test_links_are_stored_and_a_chain_run_again_resumes_from_them(built):  # noqa: F811
    catalog, _, _, _, defect, _ = built
    chain = [("prune-magnitude", {"sparsity": 0.3}), ("quantize-int8", {"mode": "dynamic"})]
    first = run_lifecycle(catalog, defect.id, chain[:1], criteria=["clp"])
    pruned = get_defect(catalog, first[1].defect_id)
    assert pruned.status == "link" and pruned.parent_id == defect.id
    assert pruned.stage == "prune-magnitude" and pruned.stage_params["sparsity"] == 0.3
    assert pruned.clean_model_id == defect.clean_model_id  # same data, same architecture
    assert pruned.asr == pytest.approx(first[1].asr) and not first[1].reused
    # the longer chain extends the stored one: the pruned link is found, not recomputed
    second = run_lifecycle(catalog, defect.id, chain, criteria=["clp"])
    assert [link.reused for link in second] == [False, True, False]
    assert second[1].defect_id == pruned.id and second[1].asr == first[1].asr
    assert second[1].localization == first[1].localization
    quantized = get_defect(catalog, second[2].defect_id)
    assert quantized.parent_id == pruned.id and quantized.stage_details["form"] == "int8"
    assert {(n.layer, n.index) for n in quantized.infected} <= {
        (n.layer, n.index) for n in pruned.infected
    }
    # the study selects injected defects only unless links are asked for
    assert [d.id for d in select_defects(catalog)] == [defect.id]
    links = select_defects(catalog, "status=link,stage=quantize-int8")
    assert [d.id for d in links] == [quantized.id]
    assert stats(catalog).defects == 1
    # a chain started at the int8 link starts from int8: nothing follows it
    with pytest.raises(TrojanscopeError, match="cannot follow 'quantize-int8'"):
        run_lifecycle(catalog, quantized.id, [("prune-magnitude", {})])


def test_a_link_is_localized_and_repaired_like_a_defect(built):  # noqa: F811
    catalog, _, _, _, defect, _ = built
    links = run_lifecycle(catalog, defect.id, [("prune-magnitude", {"sparsity": 0.3})], ["clp"])
    link_id = links[1].defect_id
    row, created = localize(catalog, link_id, "oracle")
    assert created and row.defect_id == link_id and 0.0 <= row.wji <= 1.0
    repaired, _ = repair_defect(catalog, link_id, "prune", "oracle")
    assert repaired.asr_before == pytest.approx(links[1].asr, abs=1e-6)


def test_transfer_and_distillation_links_get_their_own_clean_model(built):  # noqa: F811
    catalog, _, _, _, defect, _ = built
    links = run_lifecycle(
        catalog, defect.id, [("finetune-transfer", TRANSFER)], criteria=["oracle"]
    )
    transfer = get_defect(catalog, links[1].defect_id)
    clean = transfer.clean_model
    assert clean.id != defect.clean_model_id and clean.dataset == "synthetic"
    assert clean.input_shape["num_classes"] == 4 and clean.training["stage"] == "finetune-transfer"
    assert transfer.target == links[1].target and transfer.target_mode == "all-to-one"
    assert links[1].localization  # the link's data, victims and truth load back
    # a second chain from the same defect reuses the transferred clean model
    distill = {"arch": "cnn-small", "width": 0.5, "epochs": 1, "samples": 200}
    links = run_lifecycle(
        catalog,
        defect.id,
        [("finetune-transfer", TRANSFER), ("distill", distill)],
        criteria=["oracle"],
    )
    student = get_defect(catalog, links[2].defect_id)
    assert links[1].reused and student.clean_model.arch_params["width"] == 0.5
    assert student.clean_model.training["from_clean_model"] == clean.key
    assert student.infected == [] and links[2].localization == []
    with pytest.raises(ConfigError, match="no infected neurons"):
        localize(catalog, student.id, "oracle")
