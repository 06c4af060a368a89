"""Stored models are rebuilt with the network they were trained as."""

from types import SimpleNamespace

from torch import nn

from trojanscope.database.build import CleanSpec, _build_model


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
