"""Attack plug-in base: a trigger fully determined by (attack, parameters, seed)."""

from __future__ import annotations

import hashlib
from typing import Literal

import torch
from pydantic import BaseModel, Field
from safetensors.torch import save
from torch import nn
from typing_extensions import TypeVar

from trojanscope.data.base import TensorData
from trojanscope.data.poison import PoisonedView
from trojanscope.errors import ConfigError
from trojanscope.neurons import NeuronRef
from trojanscope.registry import Plugin, Registry


class AttackParams(BaseModel):
    model_config = {"extra": "forbid"}
    target: int = Field(0, ge=0, description="target label (all-to-one)")
    target_mode: Literal["all-to-one", "all-to-all"] = "all-to-one"
    poison_rate: float = Field(0.1, gt=0.0, le=1.0, description="fraction of training data")


def image_shape(x: torch.Tensor) -> tuple[int, int, int]:
    """The (C, H, W) shape of the images in batch ``x`` (N, C, H, W)."""
    _, c, h, w = x.shape
    return int(c), int(h), int(w)


#: An attack's parameter model (a plug-in that names none takes ``AttackParams``).
AP_co = TypeVar("AP_co", bound=AttackParams, covariant=True, default=AttackParams)


class Attack(Plugin[AP_co]):
    """A poisoning attack. Subclasses define the trigger; the base does targets and poisoning."""

    kind = "attack"

    #: How the injection trains the infected neurons; None = the injection config decides.
    #: (SRA overrides it: its backdoor is a subnet cut off from the host.)
    injection_edges: Literal["fan-in+fan-out", "fan-in", "subnet"] | None = None
    #: False for an attack planted otherwise than by the injector's poisoning (NeuBA's
    #: pre-training): it stamps its trigger, but no grid injects it.
    injectable: bool = True
    #: The command that plants a non-injectable attack (named in the refusal).
    planted_by: str = ""

    def __init__(self, seed: int = 0, **params: object) -> None:
        super().__init__(**params)
        self.seed = seed
        self._stored: dict[str, torch.Tensor] | None = None

    # -- the trigger -----------------------------------------------------------------------
    def make_trigger(self, shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        """Build the trigger's tensors for images of ``shape`` (C, H, W); deterministic."""
        raise NotImplementedError

    def trigger(self, shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        """The trigger's tensors: the stored ones if set, else built from (params, seed)."""
        return self._stored if self._stored is not None else self.make_trigger(shape)

    def set_trigger(self, tensors: dict[str, torch.Tensor]) -> None:
        """Use stored trigger tensors (for triggers that depend on a model, e.g. TrojanNN)."""
        self._stored = dict(tensors)

    def prepare(self, clean: nn.Module, infected: list[NeuronRef], data: TensorData) -> None:
        """Called by the injection once the infected neurons are chosen, before poisoning.
        Attacks whose trigger depends on the clean model and those neurons build it here."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on a batch of images (N, C, H, W) in [0, 1], on ``x``'s device
        (trigger tensors are kept on the CPU and sent there)."""
        raise NotImplementedError

    def trigger_sha256(self, shape: tuple[int, int, int]) -> str:
        tensors = {k: v.contiguous() for k, v in self.trigger(shape).items()}
        return hashlib.sha256(save(tensors)).hexdigest()

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "seed": self.seed}

    # -- targets ---------------------------------------------------------------------------
    def validate(self, shape: tuple[int, int, int], num_classes: int) -> None:
        """Raise ConfigError if the attack cannot apply to this data."""
        if self.params.target >= num_classes:
            raise ConfigError(
                f"target label {self.params.target} is out of range for {num_classes} classes."
            )

    def target_of(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        if self.params.target_mode == "all-to-all":
            return (y + 1) % num_classes
        return torch.full_like(y, self.params.target)

    def victims(self, data: TensorData) -> torch.Tensor:
        """Indices of samples the backdoor should flip (all-to-one: those not of the target)."""
        if self.params.target_mode == "all-to-all":
            return torch.arange(len(data))
        return torch.nonzero(data.y != self.params.target).flatten()

    # -- poisoned views --------------------------------------------------------------------
    def _view(self, data: TensorData, idx: torch.Tensor) -> PoisonedView:
        idx = torch.sort(idx).values
        x = self.apply(data.x[idx])
        return PoisonedView(data, idx, x, self.target_of(data.y[idx], data.num_classes))

    def poison_train(self, data: TensorData) -> PoisonedView:
        """Poison a ``poison_rate`` fraction of the training set, chosen by the seed."""
        self.validate(data.shape, data.num_classes)
        pool = self.victims(data)
        n = max(1, round(self.params.poison_rate * len(data)))
        n = min(n, len(pool))
        g = torch.Generator().manual_seed(self.seed)
        return self._view(data, pool[torch.randperm(len(pool), generator=g)[:n]])

    def poison_test(self, data: TensorData) -> PoisonedView:
        """Every test sample the backdoor should flip, triggered: the ASR evaluation set."""
        self.validate(data.shape, data.num_classes)
        return self._view(data, self.victims(data))


class MaskPatternAttack(Attack[AP_co]):
    """Triggers of the form x * (1 - mask) + pattern * mask (patch and blend attacks)."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]
        t = self.trigger((c, h, w))
        mask, pattern = t["mask"].to(x.device), t["pattern"].to(x.device)
        return (x * (1 - mask) + pattern * mask).clamp(0.0, 1.0)


ATTACKS: Registry[Attack] = Registry("attack", ["trojanscope.attacks.methods"])


def injectable_attacks() -> list[str]:
    """The attacks the injector plants by poisoning (what an attack grid runs)."""
    return [name for name in ATTACKS.names() if ATTACKS.get(name).injectable]


def require_injectable(name: str) -> None:
    """Refuse, before any work, to inject an attack that is planted otherwise."""
    cls = ATTACKS.get(name)
    if not cls.injectable:
        raise ConfigError(
            f"attack '{name}' is not injected by poisoning training data; it is planted by "
            f"{cls.planted_by or 'another command'}."
        )
