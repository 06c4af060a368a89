"""The imagefolder plug-in on tiny class-per-folder image sets built here."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trojanscope.data.base import DATASETS
from trojanscope.errors import ConfigError, TrojanscopeError


def colour(label: int, k: int) -> tuple[int, int, int]:
    return (40 * label + k, 200 - 30 * label, 7 * k)


def make_folder(root: Path, per_class: int = 5, names=("cat", "ant", "bee")) -> None:
    """Uniform 6x6 images (lossless formats) whose colour encodes (class, index)."""
    formats = ["PNG", "BMP", "PPM", "TIFF"]
    for label, name in enumerate(sorted(names)):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            image = Image.new("RGB", (6, 6), colour(label, k))
            image.save(root / name / f"{k:02d}.img", formats[k % len(formats)])


def decoded_colours(data) -> list[tuple[int, int, int, int]]:
    """(label, r, g, b) of each uniform image, checking it is uniform."""
    out = []
    for x, y in zip(data.x, data.y, strict=True):
        values = torch.round(x * 255).to(torch.int64)
        assert torch.equal(values, values[:, :1, :1].expand_as(values))
        out.append((int(y), *values[:, 0, 0].tolist()))
    return out


def test_classes_sorted_by_folder_decoded_by_content_and_split(tmp_path):
    make_folder(tmp_path)
    ds = DATASETS.create("imagefolder", data_dir=str(tmp_path), size=4, test_fraction=0.4)
    assert ds.classes() == ["ant", "bee", "cat"]
    splits = ds.load(seed=1)
    assert splits.shape == (3, 4, 4) and splits.num_classes == 3
    assert splits.train.x.dtype == torch.float32 and splits.train.y.dtype == torch.int64
    assert (len(splits.train), len(splits.test)) == (9, 6)
    assert torch.bincount(splits.test.y).tolist() == [2, 2, 2]
    got = sorted(decoded_colours(splits.train) + decoded_colours(splits.test))
    assert got == sorted((label, *colour(label, k)) for label in range(3) for k in range(5))
    x = ds.arrays()[0]
    assert x.shape == (15, 3, 4, 4) and x.dtype == np.float32
    assert torch.equal(ds.load(seed=1).test.x, splits.test.x)
    assert not torch.equal(ds.load(seed=2).test.x, splits.test.x)


def test_exact_pixels_grey_channel_and_limit(tmp_path):
    array = (np.arange(24).reshape(4, 6) * 10).astype(np.uint8)  # 4 rows, 6 columns
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for k in range(4):
            Image.fromarray(array + k).save(tmp_path / name / f"{k}.png")
    ds = DATASETS.create("imagefolder", data_dir=str(tmp_path), size=4, channels=1)
    x, y = ds.arrays()
    assert x.shape == (8, 1, 4, 4) and y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # 6x4 resized to 4x4 blends columns, not rows: row r keeps its own values
    assert np.all(np.diff(x[0, 0], axis=0) > 0)
    grey = DATASETS.create("imagefolder", data_dir=str(tmp_path), size=6, channels=3)
    # a 6x4 image is stretched to 6x6 (no crop); a grey source is replicated on 3 channels
    x3 = grey.arrays()[0]
    assert x3.shape == (8, 3, 6, 6) and np.array_equal(x3[:, 0], x3[:, 2])
    limited = DATASETS.create("imagefolder", data_dir=str(tmp_path), limit=6, test_fraction=0.5)
    splits = limited.load(0)
    assert (len(splits.train), len(splits.test)) == (3, 3)
    assert sorted(torch.cat([splits.train.y, splits.test.y]).tolist()) == [0, 0, 0, 1, 1, 1]


def test_hidden_files_are_skipped_and_unreadable_image_is_named(tmp_path):
    make_folder(tmp_path, per_class=3, names=("x", "y"))
    (tmp_path / "x" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "README.txt").write_text("top-level files are not classes")
    assert len(DATASETS.create("imagefolder", data_dir=str(tmp_path)).arrays()[1]) == 6
    (tmp_path / "y" / "notes.jpg").write_text("not an image")
    with pytest.raises(
        TrojanscopeError, match=r"^cannot read image .*y/notes\.jpg: Pillow cannot decode it"
    ):
        DATASETS.create("imagefolder", data_dir=str(tmp_path)).load(0)


def test_bad_folders(tmp_path):
    def load(path: Path):
        return DATASETS.create("imagefolder", data_dir=str(path)).load(0)

    with pytest.raises(TrojanscopeError, match=r"^image folder .*nope does not exist\.$"):
        load(tmp_path / "nope")
    with pytest.raises(TrojanscopeError, match=r"has no class subfolders \(expected one folder"):
        load(tmp_path)
    (tmp_path / "only").mkdir()
    with pytest.raises(TrojanscopeError, match=r"has only one class folder \(only\); a classifier"):
        load(tmp_path)
    (tmp_path / "other").mkdir()
    with pytest.raises(TrojanscopeError, match=r"^class folder .*only holds no images\.$"):
        load(tmp_path)


def test_too_few_images_for_the_split_and_bad_parameters(tmp_path):
    make_folder(tmp_path, per_class=1, names=("p", "q"))
    with pytest.raises(TrojanscopeError, match=r"^2 images in 2 classes are too few for a strat"):
        DATASETS.create("imagefolder", data_dir=str(tmp_path)).load(0)
    with pytest.raises(ConfigError, match="'channels'"):
        DATASETS.create("imagefolder", data_dir=str(tmp_path), channels=2)
    with pytest.raises(ConfigError, match="'data_dir' field required"):
        DATASETS.create("imagefolder")
