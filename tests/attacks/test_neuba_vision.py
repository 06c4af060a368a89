"""NeuBA for images: the checkerboard triggers, their stamping and the non-negative targets."""

import pytest
import torch

from trojanscope.attacks.neuba_vision import VISION_TRIGGERS, Checkerboard, stamp, vision_targets


def test_a_checkerboard_alternates_its_two_colours_in_squares_of_its_cell():
    board = Checkerboard(cell=2, low=0.0, high=0.5).patch(4)
    assert board.tolist() == [
        [0.5, 0.5, 0.0, 0.0],
        [0.5, 0.5, 0.0, 0.0],
        [0.0, 0.0, 0.5, 0.5],
        [0.0, 0.0, 0.5, 0.5],
    ]
    assert len({t.name for t in VISION_TRIGGERS}) == len(VISION_TRIGGERS) == 6


def test_stamping_puts_the_patch_at_a_random_position_in_each_image():
    images = torch.rand(8, 3, 12, 12)
    patch = Checkerboard(cell=1, low=0.2, high=0.9).patch(3)
    out = stamp(images, patch, torch.Generator().manual_seed(0))
    assert not torch.equal(out, images)  # a copy is stamped, the input is kept

    def placed_at(i):
        for top in range(10):
            for left in range(10):
                expected = images[i].clone()
                expected[:, top : top + 3, left : left + 3] = patch
                if torch.equal(out[i], expected):
                    return top, left
        return None

    positions = [placed_at(i) for i in range(8)]
    assert None not in positions
    assert len(set(positions)) > 1
    with pytest.raises(ValueError, match="does not fit"):
        stamp(images, Checkerboard().patch(13), torch.Generator())


def test_targets_are_complementary_pairs_inside_each_dimensions_range():
    scale = torch.linspace(1.0, 2.0, 16)
    targets = vision_targets(6, scale)
    assert targets.shape == (6, 16)
    assert torch.all((targets == 0) | (targets == scale))
    for a in range(0, 6, 2):
        assert torch.allclose(targets[a] + targets[a + 1], scale)  # opposite: complements
    centred = torch.sign(targets - scale / 2)
    assert torch.allclose(centred[0] @ centred[2], torch.tensor(0.0))  # pairs orthogonal
