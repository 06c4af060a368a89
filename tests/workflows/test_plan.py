"""Plans: keys are hashes of what determines each result, identical for identical specs
however they are written, shared clean models, duplicates planned once."""

from trojanscope.models.training import CleanTraining
from trojanscope.workflows.defects import CleanSpec
from trojanscope.workflows.plan import make_plan
from trojanscope.workflows.spec import parse_spec

SPEC = """\
datasets = ["digits"]
architectures = ["cnn-small"]
attacks = ["badnets", { name = "blended", params = { alpha = 0.2 } }]
levels = ["narrow", "small"]
seeds = [0, 1]
[training]
epochs = 3
"""

# The same spec written otherwise: tables instead of inline values, other key order, a
# parameter spelled out at its default value.
SAME = """\
seeds = [0, 1]
levels = ["narrow", "small"]
architectures = [{ name = "cnn-small", params = { width = 1.0 } }]
datasets = [{ name = "digits" }]

[training]
epochs = 3

[[attacks]]
name = "badnets"

[[attacks]]
name = "blended"
[attacks.params]
alpha = 0.2
"""


def keys(text: str) -> list[str]:
    return make_plan(parse_spec(text)).keys


def test_identical_specs_plan_identical_keys():
    assert keys(SPEC) == keys(SPEC) == keys(SAME)
    assert len(set(keys(SPEC))) == 1 + 2 * 2 * 2


def test_every_input_of_a_result_changes_its_key():
    base = set(keys(SPEC))
    for old, new in [
        ("epochs = 3", "epochs = 4"),  # clean training: every key
        (
            'architectures = ["cnn-small"]',
            'architectures = [{ name = "cnn-small", params = { width = 0.5 } }]',
        ),
        ("alpha = 0.2", "alpha = 0.3"),
        ("seeds = [0, 1]", "seeds = [0, 1]\norders = ['most']"),
        ("epochs = 3", "epochs = 3\n[injection]\nmax_epochs = 5"),
    ]:
        changed = set(keys(SPEC.replace(old, new)))
        assert changed != base, new
    one_attack = set(keys(SPEC.replace("alpha = 0.2", "alpha = 0.3")))
    assert len(base & one_attack) == 1 + 4  # the clean model and the BadNets defects stay


def test_clean_models_are_shared_and_keyed_as_the_catalog_keys_them():
    plan = make_plan(parse_spec(SPEC))
    assert len(plan.clean) == 1
    assert {job.clean.key for job in plan.defects} == {plan.clean[0].key}
    expected = CleanSpec("digits", "cnn-small", 0, {}, {}, CleanTraining(epochs=3)).key()
    assert plan.clean[0].key == expected


def test_a_job_listed_twice_is_planned_once():
    twice = SPEC.replace('levels = ["narrow", "small"]', 'levels = ["narrow", "small", "narrow"]')
    assert keys(twice) == keys(SPEC)


def test_cells_are_labelled_with_the_parameters_off_their_defaults():
    plan = make_plan(parse_spec(SPEC.replace("alpha = 0.2", "alpha = 0.1")))
    cells = sorted({(j.cell.attack, j.cell.level) for j in plan.defects})
    assert cells == [
        ("badnets", "narrow"),
        ("badnets", "small"),
        ("blended alpha=0.1", "narrow"),
        ("blended alpha=0.1", "small"),
    ]
    assert plan.defects[0].label == "digits / cnn-small / badnets / least / narrow / seed 0"
