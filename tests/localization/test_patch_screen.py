"""The image trigger screen: its candidate family and its scores."""

import torch

from trojanscope.attacks.neuba_vision import VISION_TRIGGERS
from trojanscope.localization.patch_screen import candidate_patches, screen_patches
from trojanscope.models.vision_encoder import VisionEncoder


def test_the_candidates_hold_the_checkerboard_family_within_the_budget():
    candidates = candidate_patches(4, 300)
    assert len(candidates) == 300
    assert {t.name for t in VISION_TRIGGERS} <= set(candidates)
    assert all(p.shape == (4, 4) and len(p.unique()) == 2 for p in candidates.values())
    assert len(candidate_patches(4, 10)) == 10


class _Detector(torch.nn.Module):
    """Pooled output (10 dims): the means of a 3x3 grid of the image, which a patch moves
    differently at each position, and a saturated unit that fires where a bright 4x4 square
    sits (a planted trigger in miniature)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(10, 2)

    def forward(self, x):
        grid = torch.nn.functional.adaptive_avg_pool2d(x, 3).flatten(1)
        square = torch.nn.functional.avg_pool2d(x, 4, stride=1).amax((1, 2, 3))
        return self.fc(torch.cat([grid, 5 * (square > 0.99).float()[:, None]], 1))


def test_a_patch_that_drives_every_image_to_one_vector_scores_highest():
    torch.manual_seed(0)
    blocks = torch.rand(16, 1, 3, 3) * 0.5  # images whose grid means differ widely
    images = torch.nn.functional.interpolate(blocks, size=12)
    candidates = {"solid": torch.ones(4, 4), **candidate_patches(4, 40)}
    scores = screen_patches(VisionEncoder(_Detector()), images, candidates)
    assert scores[0].name == "solid" and scores[0].score > 0.9
    assert max(s.score for s in scores[1:]) < 0.5


def test_the_audit_screen_skips_patches_too_large_for_the_images():
    from trojanscope.localization.patch_screen import patch_note, screen_sizes
    from trojanscope.models.base import ARCHITECTURES
    from trojanscope.models.vision_encoder import VisionEncoder

    torch.manual_seed(0)
    encoder = VisionEncoder(ARCHITECTURES.create("cnn-small", width=0.25).build(1, 10, 8).eval())
    record = screen_sizes(encoder, torch.rand(4, 1, 8, 8), per_size=8)
    assert record["sizes"] == [] and record["patches_screened"] == 0
    assert "too small for the trigger patch screen" in patch_note(record)
    record = screen_sizes(encoder, torch.rand(4, 1, 16, 16), per_size=8)
    assert record["sizes"] == [3, 4] and record["patches_screened"] == 16
