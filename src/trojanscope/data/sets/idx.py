"""MNIST and Fashion-MNIST from local IDX files (plain or .gz), with their official split."""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np
from pydantic import Field
from typing_extensions import TypeVar

from trojanscope.data.base import DATASETS
from trojanscope.data.sets._subsample import OfficialSplitDataset, OfficialSplitParams, Part
from trojanscope.errors import TrojanscopeError

# IDX type byte -> numpy dtype (multi-byte types are big-endian)
IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CHUNK = 1 << 20


def _read_exactly(f: io.BufferedIOBase, n: int) -> bytes:
    """Up to ``n`` bytes, read in chunks so a lying header cannot force a huge allocation."""
    parts, left = [], n
    while left > 0:
        chunk = f.read(min(left, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (gzip-compressed or not, sniffed by content) into a numpy array."""
    path = Path(path)
    if not path.exists():
        raise TrojanscopeError(f"IDX file {path} does not exist.")
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            magic = _read_exactly(f, 4)
            if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in IDX_TYPES:
                raise TrojanscopeError(
                    f"{path} is not an IDX file (magic bytes {magic.hex(' ') or 'none'}; "
                    "expected 00 00, a type code such as 08 and the number of dimensions)."
                )
            ndim = magic[3]
            header = _read_exactly(f, 4 * ndim)
            if len(header) < 4 * ndim:
                raise TrojanscopeError(f"{path} is truncated inside its IDX header.")
            dims = tuple(int(d) for d in np.frombuffer(header, ">u4"))
            dtype = np.dtype(IDX_TYPES[magic[2]])
            expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
            data = _read_exactly(f, expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; EOFError is a cut-off gzip stream
        raise TrojanscopeError(f"cannot read {path}: {exc}.") from None
    if len(data) < expected:
        raise TrojanscopeError(
            f"{path} is truncated: its IDX header {dims} promises {expected} data bytes "
            f"but only {len(data)} follow."
        )
    if len(data) > expected:
        raise TrojanscopeError(f"{path} is longer than its IDX header {dims} says.")
    return np.frombuffer(data, dtype).reshape(dims)


def _find(data_dir: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    return None


class IdxParams(OfficialSplitParams):
    """Parameters of a data set read from IDX files."""

    data_dir: str = Field(description="folder of the IDX files")


IP_co = TypeVar("IP_co", bound=IdxParams, covariant=True, default=IdxParams)


class _IdxDataset(OfficialSplitDataset[IP_co]):
    """Images and labels from the four standard IDX files; train-* is train, t10k-* is test."""

    title = "?"
    hint = "?"

    def parts(self) -> tuple[Part, Part]:
        data_dir = Path(self.params.data_dir).expanduser()
        stems = [stem for pair in IDX_FILES.values() for stem in pair]
        found = {stem: _find(data_dir, stem) for stem in stems}
        expected = ", ".join(f"{stem}[.gz]" for stem in stems)
        if not any(found.values()):
            raise TrojanscopeError(
                f"no {self.title} IDX files in {data_dir} (expected {expected}); {self.hint}."
            )
        missing = [f"{stem}[.gz]" for stem, p in found.items() if p is None]
        if missing:
            raise TrojanscopeError(
                f"incomplete {self.title} IDX files in {data_dir}: missing {', '.join(missing)}."
            )
        paths = {stem: p for stem, p in found.items() if p is not None}
        (train, train_hw), (test, test_hw) = (
            _part(paths[img], paths[lab]) for img, lab in IDX_FILES.values()
        )
        if train_hw != test_hw:
            raise TrojanscopeError(
                f"{self.title} train images are {train_hw[0]}x{train_hw[1]} pixels "
                f"but test images are {test_hw[0]}x{test_hw[1]}."
            )
        return train, test


def _part(images_path: Path, labels_path: Path) -> tuple[Part, tuple[int, int]]:
    """One split from its image and label files, checked against each other."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise TrojanscopeError(
            f"{images_path} holds {images.dtype} data of shape {images.shape}, "
            "not unsigned-byte images (N, height, width)."
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise TrojanscopeError(
            f"{labels_path} holds {labels.dtype} data of shape {labels.shape}, "
            "not unsigned-byte labels (N,)."
        )
    if len(images) != len(labels):
        raise TrojanscopeError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels."
        )
    part = Part(labels.astype(np.int64), lambda idx: images[idx][:, None], str(images_path))
    return part, (images.shape[1], images.shape[2])


class FashionMnistParams(IdxParams):
    data_dir: str = Field(
        "/usr/share/datasets/fashion-mnist",
        description="folder of the IDX files (default: where Debian's dataset-fashion-mnist puts "
        "them)",
    )


class MnistParams(IdxParams):
    data_dir: str = Field(description="folder of the MNIST IDX files")


@DATASETS.register("fashion-mnist")
class FashionMnist(_IdxDataset[FashionMnistParams]):
    """Fashion-MNIST (70,000 28x28 grey images, 10 classes): a harder drop-in for MNIST."""

    title = "Fashion-MNIST"
    hint = "install Debian's dataset-fashion-mnist or pass data_dir"


@DATASETS.register("mnist")
class Mnist(_IdxDataset[MnistParams]):
    """The full MNIST (70,000 28x28 digits, 10 classes) from IDX files the user supplies."""

    title = "MNIST"
    hint = "pass data_dir, the folder that holds the MNIST IDX files"
