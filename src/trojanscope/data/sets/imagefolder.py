"""Any local image collection laid out as one folder per class: bring-your-own data."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from sklearn.model_selection import train_test_split

from trojanscope.data.base import DATASETS, Dataset, SplitParams, Splits, TensorData
from trojanscope.data.sets._pillow import read_image
from trojanscope.data.sets._subsample import LIMIT_DESCRIPTION, stratified_subsample
from trojanscope.errors import TrojanscopeError


class ImageFolderParams(SplitParams):
    data_dir: str = Field(description="folder with one subfolder of images per class")
    size: int = Field(32, ge=4, le=512, description="side of the square images after resizing")
    channels: Literal[1, 3] = 3
    limit: int | None = Field(None, ge=2, description=LIMIT_DESCRIPTION)


def _visible(name: str) -> bool:
    return not name.startswith(".")


@DATASETS.register("imagefolder")
class ImageFolder(Dataset[ImageFolderParams]):
    """Images in ``data_dir/<class>/...`` (any format Pillow reads, found by content), labelled
    by class folder in sorted order; every file below a class folder except hidden ones counts.

    ``load(seed)`` draws the ``limit`` subsample (stratified, seeded) before decoding anything,
    then makes the usual stratified ``test_fraction`` split.
    """

    def classes(self) -> list[str]:
        """Class names, in label order."""
        return [d.name for d in self._class_dirs()]

    def _class_dirs(self) -> list[Path]:
        root = Path(self.params.data_dir).expanduser()
        if not root.is_dir():
            raise TrojanscopeError(f"image folder {root} does not exist.")
        try:
            dirs = sorted(d for d in root.iterdir() if d.is_dir() and _visible(d.name))
        except OSError as exc:
            raise TrojanscopeError(f"cannot list {root}: {exc.strerror or exc}.") from None
        if not dirs:
            raise TrojanscopeError(
                f"image folder {root} has no class subfolders (expected one folder of images "
                "per class)."
            )
        if len(dirs) < 2:
            raise TrojanscopeError(
                f"image folder {root} has only one class folder ({dirs[0].name}); a classifier "
                "needs at least 2."
            )
        return dirs

    def _files(self) -> tuple[list[Path], np.ndarray]:
        paths: list[Path] = []
        labels: list[int] = []
        for label, d in enumerate(self._class_dirs()):
            try:
                files = sorted(
                    p
                    for p in d.rglob("*")
                    if p.is_file() and all(_visible(q) for q in p.relative_to(d).parts)
                )
            except OSError as exc:
                raise TrojanscopeError(f"cannot list {d}: {exc.strerror or exc}.") from None
            if not files:
                raise TrojanscopeError(f"class folder {d} holds no images.")
            paths += files
            labels += [label] * len(files)
        return paths, np.asarray(labels, np.int64)

    def _decode(self, paths: list[Path]) -> np.ndarray:
        mode: Literal["L", "RGB"] = "L" if self.params.channels == 1 else "RGB"
        size = self.params.size
        out = np.empty((len(paths), self.params.channels, size, size), np.float32)
        for k, path in enumerate(paths):
            out[k] = read_image(path, mode, size) / np.float32(255.0)
        return out

    def _subsample(self, seed: int) -> tuple[list[Path], np.ndarray, int]:
        """The kept image paths, their labels, and the number of classes."""
        paths, y = self._files()
        keep = stratified_subsample(y, self.params.limit, [seed, 2])
        return [paths[i] for i in keep], y[keep], int(y.max()) + 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images (the ``limit`` subsample drawn with seed 0) and their labels."""
        paths, y, _ = self._subsample(0)
        return self._decode(paths), y

    def load(self, seed: int = 0) -> Splits:
        paths, y, num_classes = self._subsample(seed)
        tf = self.params.test_fraction
        try:
            idx_train, idx_test = train_test_split(
                np.arange(len(y)), test_size=tf, random_state=seed, stratify=y
            )
        except ValueError:
            raise TrojanscopeError(
                f"{len(y)} images in {num_classes} classes are too few for a stratified split "
                f"with test_fraction={tf} (each class needs at least 2 images and the test "
                "split at least one per class); add images or raise limit."
            ) from None
        x = torch.from_numpy(self._decode(paths))
        full = TensorData(x, torch.from_numpy(y), num_classes)
        return Splits(full.subset(np.sort(idx_train)), full.subset(np.sort(idx_test)))
