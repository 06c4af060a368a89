"""Catalog keys of clean models and defects, and stored models rebuilt as they were trained:
mixed precision enters keys only when on; VGG's pool rounding always does."""

from __future__ import annotations

from types import SimpleNamespace

from torch import nn

from trojanscope.attacks.base import ATTACKS
from trojanscope.injection.pipeline import InjectionConfig
from trojanscope.injection.quantity import Quantity
from trojanscope.models.training import CleanTraining
from trojanscope.workflows.defects import CleanSpec, _build_model, defect_key

#: Keys computed before ``amp`` existed (digits / cnn-small, seed 0; BadNets small, seed 0),
#: with the injection defaults of then (patched weight 1, no detection term, no necessity round,
#: rounds of 30 epochs, no balance of the clean rows).
CLEAN_KEY = "bbb521e683d72f9416603f4ce64b0762fcaef0127f97d1d42695db6920d31be0"
DEFECT_KEY = "657dc9e4ad6e652b61f855089c56b5ca412d481959641cfdbf7cee89de076df3"


def keys(amp: str) -> tuple[str, str]:
    clean = CleanSpec("digits", "cnn-small", training=CleanTraining(amp=amp)).key()
    config = InjectionConfig(
        quantity=Quantity(level="small"),
        amp=amp,
        patched_weight=1.0,
        detect_weight=0.0,
        necessity_weight=0.0,
        max_epochs=30,
        balance_step=1.0,
    )
    return clean, defect_key(clean, ATTACKS.create("badnets", seed=0), config, 0)


def test_keys_are_unchanged_when_amp_is_off():
    assert CleanSpec("digits", "cnn-small").key() == CLEAN_KEY
    assert keys("off") == (CLEAN_KEY, DEFECT_KEY)


def test_amp_makes_entries_of_their_own():
    bf16, fp16 = keys("bf16"), keys("fp16")
    assert len({CLEAN_KEY, bf16[0], fp16[0]}) == 3
    assert len({DEFECT_KEY, bf16[1], fp16[1]}) == 3
    # the defect's own setting counts too, not only its clean model's
    clean_off = keys("off")[0]
    config = InjectionConfig(
        quantity=Quantity(level="small"),
        amp="bf16",
        patched_weight=1.0,
        detect_weight=0.0,
        necessity_weight=0.0,
    )
    assert defect_key(clean_off, ATTACKS.create("badnets", seed=0), config, 0) != DEFECT_KEY
    assert config.model_dump(mode="json")["amp"] == "bf16"
    assert "amp" not in InjectionConfig().model_dump(mode="json")


def _row(arch_params: dict[str, object]) -> SimpleNamespace:
    shape = {"channels": 1, "num_classes": 10, "height": 28, "width": 28}
    return SimpleNamespace(arch="vgg11", arch_params=arch_params, input_shape=shape)


def test_a_vgg_stored_before_ceil_pools_is_rebuilt_with_flooring_pools():
    old = _build_model(_row({"width": 0.25}))
    new = _build_model(_row({"width": 0.25, "ceil_pools": True}))
    assert not any(m.ceil_mode for m in old.modules() if isinstance(m, nn.MaxPool2d))
    assert all(m.ceil_mode for m in new.modules() if isinstance(m, nn.MaxPool2d))


def test_the_pool_mode_enters_the_clean_model_key():
    ceil = CleanSpec(dataset="digits", arch="vgg11", arch_params={"width": 0.25})
    floor = CleanSpec(
        dataset="digits", arch="vgg11", arch_params={"width": 0.25, "ceil_pools": False}
    )
    assert ceil.key() != floor.key()
    assert ceil.resolved()[1]["ceil_pools"] is True
