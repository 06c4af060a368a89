"""The gtsrb plug-in on a tiny copy of the official layout (PPM images and GT-*.csv) built here."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trojanscope.data.base import DATASETS
from trojanscope.errors import TrojanscopeError

HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
ROI = (1, 2, 4, 5)  # inclusive corners: columns 1-4, rows 2-5, a 4x4 crop


def pixels(seed: int, width: int, height: int = 8) -> np.ndarray:
    rows, cols, ch = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    return ((seed * 37 + rows * 3 + cols * 5 + ch * 60) % 256).astype(np.uint8)


def write_folder(folder: Path, csv_name: str, items: list[tuple[int, int]]) -> list[np.ndarray]:
    """``items`` = (class id, seed); returns each image's expected ROI crop, channel first."""
    folder.mkdir(parents=True, exist_ok=True)
    lines, crops = [HEADER], []
    for k, (label, seed) in enumerate(items):
        width = 7 + k % 3
        array = pixels(seed, width)
        name = f"{k:05d}.ppm"
        Image.fromarray(array).save(folder / name)
        lines.append(f"{name};{width};8;{';'.join(map(str, ROI))};{label}")
        crops.append(array[ROI[1] : ROI[3] + 1, ROI[0] : ROI[2] + 1].transpose(2, 0, 1))
    (folder / csv_name).write_text("\n".join(lines) + "\n")
    return crops


def make_gtsrb(root: Path, per_class: int = 3, n_test: int = 6) -> dict:
    train_x, train_y = [], []
    for label in range(3):
        items = [(label, 10 * label + j) for j in range(per_class)]
        train_x += write_folder(
            root / "Final_Training" / "Images" / f"{label:05d}", f"GT-{label:05d}.csv", items
        )
        train_y += [label] * per_class
    test_items = [(k % 3, 100 + k) for k in range(n_test)]
    test_x = write_folder(root / "Final_Test" / "Images", "GT-final_test.csv", test_items)
    return {
        "train": (np.stack(train_x), train_y),
        "test": (np.stack(test_x), [label for label, _ in test_items]),
    }


def test_official_layout_is_cropped_to_the_roi_exactly(tmp_path):
    raw = make_gtsrb(tmp_path)
    splits = DATASETS.create("gtsrb", data_dir=str(tmp_path), size=4).load(seed=2)
    assert splits.shape == (3, 4, 4) and splits.num_classes == 3
    for part, name in ((splits.train, "train"), (splits.test, "test")):
        images, labels = raw[name]
        assert part.x.dtype == torch.float32 and part.y.dtype == torch.int64
        assert torch.equal(part.x, torch.from_numpy(images / np.float32(255.0)))
        assert part.y.tolist() == labels


def test_resize_parent_folder_and_limit(tmp_path):
    make_gtsrb(tmp_path / "GTSRB", per_class=6, n_test=9)
    ds = DATASETS.create("gtsrb", data_dir=str(tmp_path), limit=18)
    a, b = ds.load(0), ds.load(0)
    assert a.shape == (3, 32, 32)
    assert float(a.train.x.min()) >= 0.0 and float(a.train.x.max()) <= 1.0
    assert (len(a.train), len(a.test)) == (12, 6)  # 18 * 18 / 27 train, the rest test
    assert torch.bincount(a.train.y).tolist() == [4, 4, 4]
    assert torch.bincount(a.test.y).tolist() == [2, 2, 2]
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.x, b.test.x)


def test_wrong_layouts_are_named(tmp_path):
    def load():
        return DATASETS.create("gtsrb", data_dir=str(tmp_path), size=4).load(0)

    with pytest.raises(TrojanscopeError, match=r"^GTSRB folder .*nope does not exist\.$"):
        DATASETS.create("gtsrb", data_dir=str(tmp_path / "nope")).load(0)
    (tmp_path / "Final_Training" / "Images").mkdir(parents=True)
    with pytest.raises(
        TrojanscopeError,
        match=r"^no GTSRB training set in .* \(expected Final_Training/Images/000NN/ folders "
        r"with GT-000NN\.csv and \.ppm images\); pass the extracted GTSRB folder\.$",
    ):
        load()
    make_gtsrb(tmp_path)
    (tmp_path / "Final_Test" / "Images" / "GT-final_test.csv").rename(
        tmp_path / "Final_Test" / "Images" / "GT-final_test.test.csv"
    )
    with pytest.raises(TrojanscopeError, match=r"^no labelled GTSRB test set in .*GT-final_test"):
        load()
    (tmp_path / "Final_Test" / "GT-final_test.csv").write_text(
        (tmp_path / "Final_Test" / "Images" / "GT-final_test.test.csv").read_text()
    )
    assert len(load().test) == 6  # the ground truth may sit next to Images/
    (tmp_path / "Final_Training" / "Images" / "00001" / "GT-00001.csv").unlink()
    with pytest.raises(TrojanscopeError, match=r"GTSRB class folder .*00001 has no GT-00001\.csv"):
        load()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("00000.ppm;7;8;1;2;4;5", r"lacks the column\(s\) ClassId \(expected Filename;Width"),
        ("00000.ppm;7;8;1;x;4;5;0", r"line 2: the ROI and ClassId must be integers\.$"),
        ("missing.ppm;7;8;1;2;4;5;0", r"line 2 names image 'missing\.ppm', which is not in"),
        ("../00000.ppm;7;8;1;2;4;5;0", r"line 2 names image '\.\./00000\.ppm', which is not in"),
        ("00000.ppm;7;8;4;2;1;5;0", r"line 2: negative ClassId or empty ROI\.$"),
        ("00000.ppm;7;8;20;2;24;5;0", r"the region \(20, 2, 25, 6\) lies outside the 7x8 image"),
    ],
)
def test_bad_csv_rows_are_named(tmp_path, line, message):
    make_gtsrb(tmp_path)
    csv_path = tmp_path / "Final_Training" / "Images" / "00000" / "GT-00000.csv"
    header = HEADER if line.count(";") == 7 else HEADER.rsplit(";", 1)[0]
    csv_path.write_text(f"{header}\n{line}\n")
    with pytest.raises(TrojanscopeError, match=message):
        DATASETS.create("gtsrb", data_dir=str(tmp_path), size=4).load(0)


def test_corrupt_image_is_named(tmp_path):
    make_gtsrb(tmp_path)
    bad = tmp_path / "Final_Test" / "Images" / "00002.ppm"
    bad.write_bytes(b"P6\n7 8\n255\n" + bytes(10))  # header promises 168 pixels
    with pytest.raises(TrojanscopeError, match=r"^cannot read image .*00002\.ppm: Pillow cannot"):
        DATASETS.create("gtsrb", data_dir=str(tmp_path), size=4).load(0)
