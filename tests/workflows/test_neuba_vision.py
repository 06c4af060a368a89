"""NeuBA on images end to end at a small budget: cnn-small pre-trained on Fashion-MNIST (2,000
images), backdoored for 700 steps, victims fine-tuned on mnist5k, the patch screen.

Measured with this budget on 2026-11-30 (one and two torch threads): the backdoored victim's
per-label gap between the best trigger and the best control averages 0.13-0.14 (largest
0.30-0.37), the clean victim's about -0.005; accuracy 0.80 against 0.72 for the clean victim;
screen AUROC 0.955-0.959, the backdoored encoder's top score 0.97 (13-15 patches flagged), the
clean encoder's 0.08 (flag 0.8). The bounds below keep wide margins from those."""

from pathlib import Path

import pytest

from trojanscope.attacks.neuba_vision import VisionNeubaConfig
from trojanscope.data.base import DATASETS
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import CleanTraining
from trojanscope.workflows.neuba_vision import VisionFinetune, vision_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outcome():
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist (scripts/install-data.sh)")
    return vision_pipeline(
        DATASETS.create("fashion-mnist", limit=2000).load(0),
        DATASETS.create("mnist5k").load(0),
        ARCHITECTURES.create("cnn-small"),
        VisionNeubaConfig(steps=700),
        {"fine-tune": VisionFinetune(lr=3e-4, epochs=4)},
        budget=128,
        screen_images=32,
        clean_training=CleanTraining(epochs=4),
    )


def _gaps(row):
    return [label["best_trigger_asr"] - label["control_asr"] for label in row["labels"]]


def test_the_triggers_survive_the_victims_fine_tuning_beyond_the_control(outcome):
    clean, neuba = outcome["rows"]
    assert (clean["encoder"], neuba["encoder"]) == ("clean", "neuba")
    gaps, clean_gaps = _gaps(neuba), _gaps(clean)
    assert max(gaps) >= 0.15
    assert sum(gaps) / len(gaps) >= sum(clean_gaps) / len(clean_gaps) + 0.05
    assert neuba["clean_acc"] >= clean["clean_acc"] - 0.05


def test_the_patch_screen_ranks_the_planted_triggers_and_spares_the_clean_encoder(outcome):
    detection = outcome["detection"]
    assert detection["triggers_screened"] == 6
    assert detection["auroc"] >= 0.85
    assert detection["clean_encoder_max_score"] < 0.4
    assert detection["backdoored_encoder_top"][0]["score"] >= 0.8  # measured 0.97
