"""GTSRB traffic signs from the official folder layout, cropped to each sign, official split."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
from pydantic import Field

from trojanscope.data.base import DATASETS
from trojanscope.data.sets._pillow import read_image
from trojanscope.data.sets._subsample import OfficialSplitDataset, OfficialSplitParams, Part
from trojanscope.errors import TrojanscopeError

HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
NEEDED = ("Filename", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")
TEST_CSV = "GT-final_test.csv"
Box = tuple[int, int, int, int]


class GtsrbParams(OfficialSplitParams):
    data_dir: str = Field(
        description="the GTSRB folder (holding Final_Training and Final_Test), or its parent"
    )
    size: int = Field(32, ge=4, le=512, description="side of the square images after the crop")


def _read_csv(csv_path: Path, folder: Path) -> tuple[list[Path], list[Box], list[int]]:
    """Image paths, ROI boxes (right and bottom exclusive) and class ids of one GT-*.csv."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise TrojanscopeError(f"cannot read {csv_path}: {exc.strerror or exc}.") from None
    rows = csv.DictReader(io.StringIO(text), delimiter=";")
    missing = [c for c in NEEDED if c not in (rows.fieldnames or [])]
    if missing:
        raise TrojanscopeError(
            f"{csv_path} lacks the column(s) {', '.join(missing)} (expected {HEADER})."
        )
    paths, boxes, labels = [], [], []
    for row in rows:
        where = f"{csv_path} line {rows.line_num}"
        name = row["Filename"] or ""
        try:
            x1, y1, x2, y2, label = (int(row[c]) for c in NEEDED[1:])
        except (TypeError, ValueError):
            raise TrojanscopeError(f"{where}: the ROI and ClassId must be integers.") from None
        if not name or Path(name).name != name or not (folder / name).is_file():
            raise TrojanscopeError(f"{where} names image '{name}', which is not in {folder}.")
        if label < 0 or x2 < x1 or y2 < y1:
            raise TrojanscopeError(f"{where}: negative ClassId or empty ROI.")
        paths.append(folder / name)
        boxes.append((x1, y1, x2 + 1, y2 + 1))  # GTSRB's ROI corners are inclusive
        labels.append(label)
    return paths, boxes, labels


@DATASETS.register("gtsrb")
class Gtsrb(OfficialSplitDataset[GtsrbParams]):
    """GTSRB (51,839 photos of 43 German traffic signs), one of BDefects4NN's data sets."""

    def _part(self, paths: list[Path], boxes: list[Box], labels: list[int], src: str) -> Part:
        size = self.params.size

        def images(idx: np.ndarray) -> np.ndarray:
            out = np.empty((len(idx), 3, size, size), np.uint8)
            for k, i in enumerate(idx):
                out[k] = read_image(paths[i], "RGB", size, boxes[i])
            return out

        return Part(np.asarray(labels, np.int64), images, src)

    def parts(self) -> tuple[Part, Part]:
        root = Path(self.params.data_dir).expanduser()
        if not root.is_dir():
            raise TrojanscopeError(f"GTSRB folder {root} does not exist.")
        if (root / "GTSRB" / "Final_Training").is_dir():
            root = root / "GTSRB"
        train_dir = root / "Final_Training" / "Images"
        try:
            entries = sorted(train_dir.iterdir()) if train_dir.is_dir() else []
        except OSError as exc:
            raise TrojanscopeError(f"cannot list {train_dir}: {exc.strerror or exc}.") from None
        class_dirs = [d for d in entries if d.is_dir() and re.fullmatch(r"\d{5}", d.name)]
        if not class_dirs:
            raise TrojanscopeError(
                f"no GTSRB training set in {root} (expected Final_Training/Images/000NN/ "
                "folders with GT-000NN.csv and .ppm images); pass the extracted GTSRB folder."
            )
        paths: list[Path] = []
        boxes: list[Box] = []
        labels: list[int] = []
        for d in class_dirs:
            gt = d / f"GT-{d.name}.csv"
            if not gt.is_file():
                raise TrojanscopeError(f"GTSRB class folder {d} has no {gt.name}.")
            class_paths, class_boxes, class_labels = _read_csv(gt, d)
            paths += class_paths
            boxes += class_boxes
            labels += class_labels
        test_dir = root / "Final_Test" / "Images"
        places = (test_dir, test_dir.parent, root)
        found = [p / TEST_CSV for p in places if (p / TEST_CSV).is_file()]
        if not test_dir.is_dir() or not found:
            raise TrojanscopeError(
                f"no labelled GTSRB test set in {root} (expected Final_Test/Images/ with .ppm "
                f"images and {TEST_CSV}, the ground truth from GTSRB_Final_Test_GT.zip)."
            )
        return (
            self._part(paths, boxes, labels, str(train_dir)),
            self._part(*_read_csv(found[0], test_dir), str(test_dir)),
        )
