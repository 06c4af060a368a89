"""What every attack shares: the trigger is stamped on the images' device."""

import pytest
import torch

from tests.stand_in import stand_in
from trojanscope.attacks.base import ATTACKS
from trojanscope.device import CPU


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_stamps_its_trigger_on_the_images_device(name, digits):
    """Triggers are kept on the CPU; images on a stand-in accelerator are triggered there,
    exactly as on the CPU, and the stored trigger stays on the CPU."""
    attack = ATTACKS.create(name, seed=3)
    x = digits.test.x[:16]
    expected = attack.apply(x)
    with stand_in() as device:
        stamped = attack.apply(x.to(device))
        assert stamped.device == device
        stamped = stamped.cpu()
    assert torch.equal(stamped, expected)
    assert all(t.device == CPU for t in attack.trigger(digits.shape).values())
