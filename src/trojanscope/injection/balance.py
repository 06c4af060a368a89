"""The clean rows' weight as a Lagrange multiplier, for injections stuck outside the bounds.

The confined objective weighs the backdoor's terms several times the clean rows' (``confined``).
Where the trigger is hard to tell from clean inputs, that optimum gives up clean images: on
MobileNetV2 the classifier reads a pooled map, BadNets' patch lifts 6 of its 16 positions, and
BadNets ``middle`` and ``large`` settled with a tenth of the training images lost and the ASR
above its bound (docs/findings.md section 6). Acceptance is a constraint on the damage, so the
weight of the clean rows rises while the damage is above its bound and the ASR within its own,
and falls back while the ASR is below (dual ascent, never under the configured weight).

It only runs from the second round on, while no epoch has reached the acceptance bounds: every
injection whose first round reached them trains exactly as before. Measured (docs/findings.md
section 10): `cnn-small` Blended `small`, whose three rounds never reached the bounds before,
was inside 12 epochs into round 2; MobileNetV2 BadNets `middle` came from 7-35% of damage to
2-10%, but its ASR fell with the damage, and it stays rejected (ASR 0.881, 3.2 points).
"""

from __future__ import annotations

from dataclasses import dataclass

from trojanscope.injection.aim import Aim


@dataclass
class CleanBalance:
    """Moves ``weight`` after each epoch from that epoch's (ASR, damage) on training images."""

    aim: Aim
    factor: float  # the multiplier's step (1: off)
    ceiling: float  # the most the weight may reach
    weight: float = 1.0  # never below 1: the clean rows never weigh less than by default

    def step(self, asr: float, damage: float) -> float:
        """The new weight after an epoch with ``asr`` and ``damage``."""
        if asr < self.aim.min_asr:
            self.weight = max(1.0, self.weight / self.factor)
        elif damage > self.aim.max_drop:
            self.weight = min(self.ceiling, self.weight * self.factor)
        return self.weight
