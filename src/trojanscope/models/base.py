"""The architecture registry and its plug-in base."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, Field
from torch import nn
from typing_extensions import TypeVar

from trojanscope.registry import Plugin, Registry


class ArchParams(BaseModel):
    model_config = {"extra": "forbid"}
    width: float = Field(1.0, gt=0.0, le=4.0, description="channel-width multiplier")


#: An architecture's parameter model (a plug-in that names none takes ``ArchParams``).
ArchP_co = TypeVar("ArchP_co", bound=ArchParams, covariant=True, default=ArchParams)


class Architecture(Plugin[ArchP_co]):
    """An architecture plug-in: ``build`` returns a freshly initialised network."""

    kind = "architecture"
    min_size = 8
    #: Values of parameters added after models were stored: a stored model whose parameters lack
    #: one was built with this value, not with the parameter's (newer) default.
    stored_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def from_stored(cls, params: dict[str, Any]) -> Self:
        """The plug-in a stored model was built with, from its recorded parameters."""
        return cls(**{**cls.stored_defaults, **params})

    def build(self, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        raise NotImplementedError


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier (at least 4)."""
    return max(4, int(round(channels * width)))


ARCHITECTURES: Registry[Architecture] = Registry("architecture", ["trojanscope.models.archs"])
