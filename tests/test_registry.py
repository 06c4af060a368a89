import pytest

from trojanscope.attacks.base import ATTACKS
from trojanscope.data.base import DATASETS
from trojanscope.errors import ConfigError, UnknownNameError
from trojanscope.localization.base import CRITERIA
from trojanscope.models.base import ARCHITECTURES


def test_builtin_plugins_are_registered():
    assert {"digits", "mnist5k", "synthetic"} <= set(DATASETS.names())
    assert {"cnn-small", "resnet18"} <= set(ARCHITECTURES.names())
    assert "badnets" in ATTACKS.names()
    assert {"clp", "fp", "oracle", "random"} <= set(CRITERIA.names())


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError, match="valid names: .*cnn-small.*resnet18"):
        ARCHITECTURES.create("vgg99")


def test_bad_parameter_is_named():
    with pytest.raises(ConfigError, match="'width'"):
        ARCHITECTURES.create("resnet18", width=-1)
    with pytest.raises(ConfigError, match="'nonsense'"):
        DATASETS.create("digits", nonsense=3)
