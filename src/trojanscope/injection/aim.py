"""Where the injector aims: a margin inside the acceptance bounds, judged without the test set.

The test set decides acceptance (rule 4). If training stopped as soon as its own figures touched
the acceptance bounds, the test figures would land on their edge and another CPU's
floating-point kernels would flip the verdict. So every epoch is scored by how far inside the
bounds it is, in units of the margin aimed for; training goes on ``patience`` epochs after the
goals are first met, and the best epoch is kept.

Clean damage is judged on training images: the share the clean model classifies correctly and
the injected model does not. The injector has no clean image the clean model has not seen (the
test set is the referee; the validation split was part of the clean model's training data), and
on seen images damage shows smaller. Measured on digits / cnn-small (BadNets, Blended, TrojanNN,
seeds 0-4), where the clean model fits its training images: the test accuracy drop was 1.5-4
times the damage, and the first epoch reaching the ASR goal often lost 2-12 test points; with
Blended, seed 2, 3.6 points while every validation image kept its class. The whole training
split resolves such epochs, and a few epochs later they settle: the default goal of 0.3% kept
every test drop of BadNets, Blended, TrojanNN, SIG and WaNet (seeds 0-4) at or below 1.4
points, half the 3 allowed. On mnist5k the test drop stayed near 0 from 0.9% damage on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from trojanscope.attacks.base import Attack
from trojanscope.data.base import TensorData
from trojanscope.models.suffix import ChangedPart, patched_rerun
from trojanscope.models.training import accuracy, predict
from trojanscope.neurons import NeuronRef, mask_neurons, patched_layers, patched_logits

#: A score at or above this meets both goals (see ``Aim.score``).
GOAL = 1.0
#: A best score at least half-way from the acceptance bounds to the goals may stall (see
#: ``BestEpoch``); below it, training goes on while epochs remain.
HALFWAY = 0.5
#: Training images the score is measured on (a seeded subset of larger training splits).
CHECK_SAMPLES = 1024
#: Largest record of the check images' values kept to re-run only the trained part (bytes).
RERUN_BUDGET = 1 << 30
#: Rows per patched pass (as ``patched_logits`` batches them).
PATCHED_BATCH = 256


@dataclass(frozen=True)
class Aim:
    """The acceptance bounds and the goals inside them (accuracy units: 0.03 = 3 points)."""

    min_asr: float
    asr_goal: float
    max_drop: float
    damage_goal: float
    min_patched_ratio: float = 0.0  # 0: sufficiency not aimed at
    max_masked_excess: float = 0.0  # acceptance.max_masked_asr (see ``necessity``)

    @property
    def patched_goal(self) -> float:
        """The patched / ordinary ASR ratio aimed at: half-way from the bound to 1."""
        return (1.0 + self.min_patched_ratio) / 2

    def necessity(self, excess: float) -> float:
        """The necessity margin of a masked-ASR ``excess`` over the clean model's under the same
        mask: 0 on the acceptance bound, 1 on the goal (half the bound)."""
        half = self.max_masked_excess / 2
        if half <= 0:
            return GOAL if excess <= 0 else -GOAL
        return (self.max_masked_excess - excess) / half

    def score(self, asr: float, damage: float, patched_asr: float | None = None) -> float:
        """The worst of the margins, each 0 on its acceptance bound and 1 on its goal:
        >= 1 all goals met, in [0, 1) inside the bounds but short of a goal, < 0 outside."""
        asr_margin = (asr - self.min_asr) / (self.asr_goal - self.min_asr)
        damage_margin = (self.max_drop - damage) / (self.max_drop - self.damage_goal)
        margins = [asr_margin, damage_margin]
        if patched_asr is not None and self.min_patched_ratio > 0:
            ratio = patched_asr / max(asr, 1e-9)
            margins.append(
                (ratio - self.min_patched_ratio) / (self.patched_goal - self.min_patched_ratio)
            )
        return min(margins)


class Validation:
    """Scores a model by its ASR and its clean damage, both on training images.

    Damage is measured on (up to ``CHECK_SAMPLES``) training images, the ASR on the triggered
    victims among them that the injection never trained on with the trigger
    (``seen_triggered``: indices into ``train``). Being many, they track the test ASR better
    than the validation split alone (measured on digits, BadNets and WaNet over 40 epochs: worst
    error 3-6 points instead of 4-11).
    """

    def __init__(
        self,
        clean: nn.Module,
        train: TensorData,
        attack: Attack,
        seen_triggered: torch.Tensor,
        aim: Aim,
        seed: int,
        infected: list[NeuronRef] | None = None,
    ) -> None:
        self.aim = aim
        self.infected = infected
        self.clean = clean
        self._masked_before: float | None = None
        self.last: tuple[float, float, float | None] | None = None  # the latest ``measure``
        g = torch.Generator().manual_seed(seed)
        check = torch.randperm(len(train), generator=g)[:CHECK_SAMPLES]
        self.images, self.labels = train.x[check], train.y[check]
        self.clean_right = predict(clean, self.images).argmax(1) == self.labels
        unseen = torch.ones(len(train), dtype=torch.bool)
        unseen[seen_triggered] = False
        view = attack.poison_test(train.subset(check[unseen[check]]))
        self.triggered = view.poisoned()
        self.paired = view.base.x[view.indices]  # the clean image of each triggered one
        self._parts: tuple[ChangedPart, ChangedPart] | None = None
        self._patched: tuple[ChangedPart, ChangedPart] | None = None

    def rerun_changed(self, modules: set[str]) -> None:
        """Score from now on by re-running only what follows ``modules`` (those masked training
        moves) on the check images and the triggered ones: upstream, the trained copies compute
        the clean model's values. The patched ASR re-runs from the patched layers on as well
        (upstream of them the triggered images pass unpatched). Each record that would exceed
        its share of ``RERUN_BUDGET`` is left out, and that measure takes whole passes."""
        budget = RERUN_BUDGET // 4
        images = ChangedPart.record(self.clean, modules, self.images, budget)
        triggered = ChangedPart.record(self.clean, modules, self.triggered.x, budget)
        self._parts = None if images is None or triggered is None else (images, triggered)
        if self.infected is None or self.aim.min_patched_ratio <= 0:
            return
        held = modules | {layer.output for layer in patched_layers(self.clean, self.infected)}
        paired = ChangedPart.record(self.clean, held, self.paired, budget, PATCHED_BATCH)
        patched = ChangedPart.record(self.clean, held, self.triggered.x, budget, PATCHED_BATCH)
        self._patched = None if paired is None or patched is None else (paired, patched)

    def _logits(self, model: nn.Module, which: int) -> torch.Tensor:
        if self._parts is not None:
            return self._parts[which].logits(model)
        return predict(model, (self.images, self.triggered.x)[which])

    def damage(self, model: nn.Module) -> float:
        """Share of the check images the clean model classifies right and ``model`` does not."""
        wrong = self._logits(model, 0).argmax(1) != self.labels
        return float((self.clean_right & wrong).float().mean())

    def asr(self, model: nn.Module) -> float:
        """Share of the triggered check images sent to the target."""
        if len(self.triggered) == 0:
            return 0.0
        return float((self._logits(model, 1).argmax(1) == self.triggered.y).float().mean())

    def patched_asr(self, model: nn.Module) -> float | None:
        """ASR with every neuron outside the infected set held at its clean-input activation."""
        if self.infected is None or self.aim.min_patched_ratio <= 0:
            return None
        if self._patched is None:
            logits = patched_logits(model, self.infected, self.paired, self.triggered.x)
        else:
            logits = patched_rerun(model, self.infected, *self._patched)
        return float((logits.argmax(1) == self.triggered.y).float().mean())

    def measure(self, model: nn.Module) -> tuple[float, float, float | None]:
        """(ASR, damage, patched ASR or None) of ``model``; kept as ``last``."""
        self.last = self.asr(model), self.damage(model), self.patched_asr(model)
        return self.last

    def __call__(self, model: nn.Module) -> float:
        return self.aim.score(*self.measure(model))

    def masked_excess(self, model: nn.Module) -> float:
        """The triggered check images' target rate with the infected set masked, above the
        clean model's under the same mask (the necessity rule on training images)."""
        if self.infected is None:
            raise ValueError("necessity is measured on an infected set; none was given")
        if self._masked_before is None:
            with mask_neurons(self.clean, self.infected):
                self._masked_before = accuracy(self.clean, self.triggered)
        with mask_neurons(model, self.infected):
            return accuracy(model, self.triggered) - self._masked_before

    def necessity_score(self, model: nn.Module) -> float:
        """The score with the necessity margin as one more goal (see ``Aim.necessity``)."""
        return min(self(model), self.aim.necessity(self.masked_excess(model)))


class BestEpoch:
    """Keeps a copy of the best-scoring weights (the earliest on ties) and says when to stop:
    ``patience`` epochs after the goals were first met, or when the best score, at least
    half-way from the bounds to the goals, is ``stall`` epochs old (on mnist5k the damage goal
    can be out of reach at a comfortable margin: more epochs would only cost time).

    Snapshots are copies of one masked training, so outside the infected set they equal the
    clean model bit for bit, like every epoch they are taken from.
    """

    def __init__(self, patience: int = 0, stall: int | None = None) -> None:
        self.patience = patience
        self.stall = stall
        self.score = float("-inf")
        self.state: dict[str, torch.Tensor] | None = None
        self._since_met: int | None = None
        self._since_best = 0

    @property
    def met(self) -> bool:
        return self.score >= GOAL

    @property
    def inside(self) -> bool:
        """The best epoch lies inside the acceptance bounds (a score of 0 is on them)."""
        return self.score >= 0

    @property
    def stalled(self) -> bool:
        return (
            not self.met
            and self.score >= HALFWAY
            and self.stall is not None
            and self._since_best >= self.stall
        )

    def offer(self, model: nn.Module, score: float) -> bool:
        """Keep ``model``'s weights if ``score`` beats the best; True when training should stop."""
        self._since_best += 1
        if score > self.score:
            self.score, self._since_best = score, 0
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if self.met:
            self._since_met = 0 if self._since_met is None else self._since_met + 1
        return self.stalled or (self._since_met is not None and self._since_met >= self.patience)

    def restore(self, model: nn.Module) -> None:
        """Load the best weights into ``model`` (no-op before any snapshot)."""
        if self.state is not None:
            model.load_state_dict(self.state)


def derived_seed(seed: int, attempt: int) -> int:
    """The seed of a retry: ``seed`` itself for the first attempt, then a stable hash of both."""
    if attempt == 0:
        return seed
    digest = hashlib.sha256(f"trojanscope-attempt:{seed}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
