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


def test_parameter_model_is_the_base_type_argument():
    from pydantic import BaseModel

    from trojanscope.localization.base import Criterion
    from trojanscope.localization.spectrum import SpectrumCriterion, SpectrumParams
    from trojanscope.registry import NoParams

    class MyParams(BaseModel):
        model_config = {"extra": "forbid"}
        depth: int = 3

    class Named(Criterion[MyParams]):
        pass

    class Inherits(Named):
        pass

    class Plain(Criterion):
        pass

    class Spectral(SpectrumCriterion):
        pass

    assert Named.Params is MyParams and Inherits.Params is MyParams
    assert Named(depth=5).params.depth == 5
    assert Plain.Params is NoParams  # the kind's default
    assert Spectral.Params is SpectrumParams  # an intermediate base's default
    with pytest.raises(ConfigError, match="'depth'"):
        Named(depth="deep")


def test_params_contradicting_the_type_argument_is_refused():
    from pydantic import BaseModel

    from trojanscope.attacks.base import Attack, AttackParams

    class Other(BaseModel):
        pass

    class Narrower(AttackParams):
        size: int = 2

    class Fine(Attack[AttackParams]):
        Params = Narrower  # a subclass of the named model is allowed

    assert Fine().params == Narrower()
    with pytest.raises(TypeError, match="Params must be AttackParams"):

        class Wrong(Attack[AttackParams]):
            Params = Other
