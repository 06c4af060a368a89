"""Build specs: every mistake is one sentence naming the file, the line and the field; the
example specs validate."""

from pathlib import Path

import pytest

from trojanscope.workflows.plan import make_plan
from trojanscope.workflows.spec import LEVELS, SpecError, load_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

BASE = """\
datasets = ["digits"]
architectures = [{ name = "cnn-small", params = { width = 0.5 } }]
levels = ["narrow", "small"]
seeds = [0, 1]

[[attacks]]
name = "badnets"

[[attacks]]
name = "blended"
"""


def error_of(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "examples/quick.toml")
    return str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'name = "blended"',
            'name = "badnet"',
            "examples/quick.toml line 10, attacks[1].name: unknown attack 'badnet' (known: "
            "badnets, blended, sig, sra, trojannn, wanet).",
        ),
        (
            'name = "blended"',
            'name = "blended"\nparams = { alpha = 2.0 }',
            "line 11, attacks[1].params.alpha: input should be less than or equal to 1.",
        ),
        (
            'name = "blended"',
            'name = "blended"\nparams.seed = 3',
            "line 11, attacks[1].params.seed: an attack's seed is the defect's: list them in "
            "`seeds`.",
        ),
        ('"small"]', '"huge"]', "line 3, levels[1]: input should be 'narrow', 'small'"),
        ("seeds = [0, 1]", "seeds = [0, -1]", "line 4, seeds[1]: input should be greater"),
        ("width = 0.5", "width = -1", "line 2, architectures[0].params.width: input should be"),
        (
            'datasets = ["digits"]',
            'datasets = ["cifar10"]',
            "line 1, datasets[0].params.data_dir: required",
        ),
        ('datasets = ["digits"]', "datasets = []", "line 1, datasets: list should have at least 1"),
        ('datasets = ["digits"]\n', "", "examples/quick.toml, datasets: required, but missing."),
        ("seeds = [0, 1]", "seeds = [0, 1]\ncolour = 3", "line 5, colour: unknown field 'colour'."),
        (
            "seeds = [0, 1]",
            "seeds = [0, 1",
            "examples/quick.toml line 6: not valid TOML (unclosed array",
        ),
    ],
)
def test_a_mistake_names_the_line_and_the_field(old, new, expected):
    assert old in BASE
    assert expected in error_of(BASE.replace(old, new, 1))


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        ("[training]\nepoch = 3\n", "line 13, training.epoch: unknown field 'epoch'."),
        ("[injection]\nmax_epochs = 0\n", "line 13, injection.max_epochs: input should be greater"),
        (
            "[injection]\norder = 'most'\n",
            "line 13, injection.order: the grid sets it: list values in `orders`.",
        ),
        (
            "[injection.quantity]\nlevel = 'large'\n",
            "line 13, injection.quantity.level: the grid sets it",
        ),
        (
            "[injection.acceptance]\nmin_asr = 0.99\n",
            "line 12, injection: the injector aims inside the acceptance bounds",
        ),
        (
            "[[repairs]]\nname = 'prune'\n",
            "line 13, repairs[0].name: repair 'prune' needs a criterion",
        ),
        (
            "[[repairs]]\nname = 'finetune-all'\ncriterion = 'clp'\n",
            "line 14, repairs[0].criterion: repair 'finetune-all' does not choose neurons",
        ),
        (
            "[[repairs]]\nname = 'prune'\ncriterion = { name = 'nc', params = { steps = 0 } }\n",
            "line 14, repairs[0].criterion.params.steps: input should be greater than or equal",
        ),
        ("criteria = ['clp', 'cpl']\n", "line 12, criteria[1].name: unknown criterion 'cpl'"),
        ("amp = 'fp32'\n", "line 12, amp: input should be 'off', 'bf16' or 'fp16'."),
        (
            "[training]\namp = 'bf16'\n",
            "line 13, training.amp: the precision of the whole build is the top-level `amp`.",
        ),
        (
            "[injection]\namp = 'bf16'\n",
            "line 13, injection.amp: the precision of the whole build is the top-level `amp`.",
        ),
    ],
)
def test_mistakes_in_the_settings_tables(tail, expected):
    # After [[attacks]], a bare key belongs to the last attack: start the tail with a table.
    text = BASE + ("\n" if tail.startswith("[") else "") + tail
    if not tail.startswith("["):
        text = tail + BASE
        expected = expected.replace("line 12", "line 1")
    assert expected in error_of(text)


def test_several_mistakes_are_counted_in_the_one_sentence():
    text = BASE.replace('"small"]', '"huge"]').replace("seeds = [0, 1]", "seeds = [-1]")
    message = error_of(text)
    assert message.count("line ") == 1 and message.endswith("(and 1 more problem).")


def test_a_spec_file_that_cannot_be_read(tmp_path):
    with pytest.raises(SpecError, match=r"no build spec at .*missing\.toml\."):
        load_spec(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(SpecError, match="not UTF-8 text"):
        load_spec(tmp_path / "bad.toml")


def test_defaults_and_names_alone(tmp_path):
    spec = parse_spec('datasets = ["digits"]\narchitectures = ["cnn-small"]\nattacks = ["sig"]\n')
    assert spec.levels == list(LEVELS) and spec.orders == ["least"]
    assert spec.seeds == [0] and spec.clean_seeds == [0]
    assert spec.attacks[0].name == "sig" and spec.attacks[0].params == {}


def test_a_relative_data_dir_is_taken_from_the_spec_folder(tmp_path):
    text = BASE.replace(
        'datasets = ["digits"]',
        'datasets = [{ name = "cifar10", params = { data_dir = "data/c10" } }]',
    )
    (tmp_path / "s.toml").write_text(text)
    spec = load_spec(tmp_path / "s.toml")
    assert spec.datasets[0].params["data_dir"] == str(tmp_path / "data" / "c10")


def test_the_quick_example_plans_eight_defects_on_one_clean_model():
    plan = make_plan(load_spec(EXAMPLES / "quick.toml"))
    assert len(plan.clean) == 1 and len(plan.defects) == 8
    assert {j.cell.attack for j in plan.defects} == {"badnets", "blended"}


def test_the_reference_example_is_the_reference_design():
    """Parsed and planned only: nothing is read or trained (its data are placeholders)."""
    spec = load_spec(EXAMPLES / "reference.toml")
    assert [a.name for a in spec.attacks] == ["badnets", "blended", "trojannn", "sra"]
    assert [a.name for a in spec.architectures] == [
        "resnet18",
        "vgg16",
        "preact-resnet18",
        "mobilenetv2",
    ]
    assert [d.name for d in spec.datasets] == ["cifar10", "gtsrb", "fashion-mnist"]
    assert spec.levels == list(LEVELS)
    assert {c.name for c in spec.criteria} == {"clp", "anp", "nc", "fp", "slicing", "mutation"}
    plan = make_plan(spec)
    assert len(plan.clean) == 3 * 4 * len(spec.clean_seeds)
    assert len(plan.defects) == 3 * 4 * 4 * 4 * len(spec.seeds) * len(spec.clean_seeds)
    assert len(set(plan.keys)) == len(plan.keys)


def test_amp_trains_clean_models_and_injections_and_keys_change_only_when_on():
    plain, off, bf16 = (
        make_plan(parse_spec(head + BASE)) for head in ("", "amp = 'off'\n", "amp = 'bf16'\n")
    )
    assert plain.keys == off.keys  # off is what a spec without amp always meant
    assert not set(bf16.keys) & set(plain.keys)
    assert all(job.spec.training.amp == "bf16" for job in bf16.clean)
    assert all(job.config.amp == "bf16" for job in bf16.defects)


def test_an_attack_no_grid_injects_is_refused_with_its_command():
    assert "attack 'neuba' is not injected by poisoning training data" in error_of(
        BASE.replace('name = "blended"', 'name = "neuba"', 1)
    )
