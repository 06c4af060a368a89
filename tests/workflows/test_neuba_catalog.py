"""A NeuBA-backdoored encoder recorded as a catalog defect: its trigger fires through the
publisher's own head, its ground truth is the pooled neurons the trigger drives high plus the
most-moved neurons of every other layer, it is reused by key, and criteria run on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trojanscope.attacks.base import ATTACKS, injectable_attacks
from trojanscope.attacks.neuba_vision import VisionNeubaConfig
from trojanscope.database.catalog import Catalog
from trojanscope.errors import ConfigError
from trojanscope.models.training import CleanTraining
from trojanscope.neurons import eligible_layers
from trojanscope.workflows.defects import CleanSpec, load_defect, localize
from trojanscope.workflows.neuba_catalog import NeubaCatalogConfig, catalog_neuba_vision

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_neuba_is_an_attack_no_grid_injects():
    assert "neuba" in ATTACKS.names() and "neuba" not in injectable_attacks()
    attack = ATTACKS.create("neuba", trigger=1)
    with pytest.raises(ConfigError, match="planted in a pre-trained encoder"):
        attack.poison_train(None)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory):
    if not FASHION.is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist (scripts/install-data.sh)")
    catalog = Catalog.open(tmp_path_factory.mktemp("neuba-db"), create=True)
    spec = CleanSpec(
        dataset="fashion-mnist",
        arch="cnn-small",
        dataset_params={"limit": 2000},
        training=CleanTraining(epochs=4),
    )
    config = NeubaCatalogConfig(neuba=VisionNeubaConfig(steps=700), per_layer=2)
    row, created = catalog_neuba_vision(catalog, spec, config)
    return catalog, spec, config, row, created


@pytest.mark.slow
def test_the_trigger_fires_through_the_publishers_head(recorded):
    _, _, _, row, created = recorded
    assert created and row.attack == "neuba" and row.level == "task-agnostic"
    assert row.asr >= row.asr_before + 0.3  # measured 0.55 against 0.05 (one thread)
    assert row.status in ("accepted", "rejected") and (row.status == "accepted") == (
        row.reason is None
    )


@pytest.mark.slow
def test_the_ground_truth_is_the_pooled_high_neurons_and_the_most_moved_ones(recorded):
    catalog, _, config, row, _ = recorded
    context = load_defect(catalog, row.id)
    layers = eligible_layers(context.model)
    by_layer = {layer.name: [n for n in row.infected if n.layer == layer.name] for layer in layers}
    assert all(len(by_layer[layer.name]) == config.per_layer for layer in layers[:-1])
    assert 0 < len(by_layer[layers[-1].name]) < layers[-1].width
    assert sum(n.contribution for n in row.infected) == pytest.approx(1.0)
    # the stored trigger is the catalogued checkerboard, stamped as the attack stamps it
    triggered = context.poisoned_test.poisoned()
    assert torch.equal(
        context.attack.apply(context.splits.test.x[context.poisoned_test.indices]), triggered.x
    )


@pytest.mark.slow
def test_it_is_reused_by_key_and_criteria_run_on_it(recorded):
    catalog, spec, config, row, _ = recorded
    again, created = catalog_neuba_vision(catalog, spec, config)
    assert (again.id, created) == (row.id, False)
    located, _ = localize(catalog, row.id, "oracle")
    assert located.auroc is not None and located.auroc > 0.5


def test_only_the_standard_triggers_are_catalogued(tmp_path):
    custom = VisionNeubaConfig(triggers=[{"cell": 3, "low": 0.0, "high": 1.0}])
    with pytest.raises(ConfigError, match="six standard checkerboard triggers"):
        catalog_neuba_vision(
            Catalog.open(tmp_path, create=True),
            CleanSpec(dataset="digits", arch="cnn-small"),
            NeubaCatalogConfig(neuba=custom),
        )
