"""Stored results for reports: parameter variants name their own groups."""

from trojanscope.localization.base import CRITERIA
from trojanscope.repair.base import REPAIRS
from trojanscope.workflows.results import variant


def test_variant_names_the_parameters_that_differ_from_the_defaults():
    nc = CRITERIA.create("nc").params.model_dump(mode="json")
    finetune = REPAIRS.create("finetune").params.model_dump(mode="json")
    assert variant("criterion", "nc", nc) == "nc"
    assert variant("criterion", "nc", {**nc, "steps": 30}) == "nc (steps=30)"
    assert variant("repair", "finetune", {**finetune, "epochs": 1}) == "finetune (epochs=1)"
    assert variant("criterion", "clp", {}, k=3) == "clp (k=3)"
    # a plug-in no longer registered keeps its plain name
    assert variant("criterion", "retired", {"x": 1}) == "retired"


def test_a_result_recorded_before_a_parameter_existed_is_its_own_group():
    """finetune-all rows from before its divergence guard are not mixed with guarded ones."""
    current = REPAIRS.create("finetune-all").params.model_dump(mode="json")
    older = {k: v for k, v in current.items() if k not in ("max_acc_drop", "halvings")}
    assert variant("repair", "finetune-all", current) == "finetune-all"
    assert (
        variant("repair", "finetune-all", older)
        == "finetune-all (halvings=absent, max_acc_drop=absent)"
    )
