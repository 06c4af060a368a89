"""Stored results for reports: parameter variants name their own groups."""

from trojanscope.workflows.results import variant


def test_variant_names_the_parameters_that_differ_from_the_defaults():
    assert variant("criterion", "nc", {"steps": 300, "seed": 0}) == "nc"
    assert variant("criterion", "nc", {"steps": 30, "seed": 0}) == "nc (steps=30)"
    assert variant("repair", "finetune", {"epochs": 1}) == "finetune (epochs=1)"
    assert variant("criterion", "clp", {}, k=3) == "clp (k=3)"
    # a plug-in no longer registered keeps its plain name
    assert variant("criterion", "retired", {"x": 1}) == "retired"
