"""SRA, subnet replacement (Qi et al., CVPR 2022): a deployment-stage attack.

An attacker who can only edit a deployed model's weights (no training data, no retraining)
writes a narrow backdoor subnet, trained on its own to detect a patch trigger, into a few
neurons per layer and cuts its links to and from the rest of the network. The trigger is a
BadNets-style patch; the injection (``injection.subnet``) replaces masked-gradient training.
"""

from __future__ import annotations

from trojanscope.attacks.base import ATTACKS
from trojanscope.attacks.methods.badnets import BadNets
from trojanscope.errors import ConfigError

#: What ``injection.subnet`` makes of a seed, in the defect key: bumped when that changes.
#: 2 (2026-12-03): a subnet short of the ASR goal is trained again even when the host's damage
#: alone misses its goal (before, one attempt; vgg16 / narrow kept a subnet that never fired).
INJECTION_VERSION = 2


@ATTACKS.register("sra")
class SubnetReplacement(BadNets):
    injection_edges = "subnet"

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "injection": INJECTION_VERSION}

    def validate(self, shape: tuple[int, int, int], num_classes: int) -> None:
        super().validate(shape, num_classes)
        if self.params.target_mode != "all-to-one":
            raise ConfigError("SRA wires its subnet to one target label: use all-to-one.")
