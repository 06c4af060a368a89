"""CIFAR-10 from its binary release (never the pickle one), with the official split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from trojanscope.data.base import DATASETS
from trojanscope.data.sets._subsample import OfficialSplitDataset, OfficialSplitParams, Part
from trojanscope.errors import TrojanscopeError

RECORD = 1 + 3 * 32 * 32  # one label byte, then the red, green and blue 32x32 planes
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
PICKLE_FILES = ("data_batch_1", "test_batch", "batches.meta")


class Cifar10Params(OfficialSplitParams):
    data_dir: str = Field(
        description="folder of data_batch_1.bin .. data_batch_5.bin and test_batch.bin "
        "(cifar-10-batches-bin, or its parent)"
    )


def _read_batch(path: Path) -> np.ndarray:
    """The records of one batch file as a read-only uint8 array (n, 3073)."""
    try:
        size = path.stat().st_size
        if size == 0 or size % RECORD:
            raise TrojanscopeError(
                f"{path} is {size} bytes, not a positive multiple of the {RECORD}-byte "
                "CIFAR-10 record (is it the CIFAR-10 binary release?)."
            )
        records = np.memmap(path, np.uint8, mode="r").reshape(-1, RECORD)
    except OSError as exc:
        raise TrojanscopeError(f"cannot read {path}: {exc.strerror or exc}.") from None
    labels = records[:, 0]
    bad = np.flatnonzero(labels > 9)
    if len(bad):
        raise TrojanscopeError(
            f"{path} record {int(bad[0])} has label {int(labels[bad[0]])}, not a CIFAR-10 class "
            "(0-9; CIFAR-100 binaries are not supported)."
        )
    return records


def _part(paths: list[Path]) -> Part:
    batches = [_read_batch(p) for p in paths]
    offsets = np.cumsum([0] + [len(b) for b in batches])
    labels = np.concatenate([b[:, 0] for b in batches]).astype(np.int64)

    def images(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), 3, 32, 32), np.uint8)
        which = np.searchsorted(offsets, idx, side="right") - 1
        for b, batch in enumerate(batches):
            sel = which == b
            out[sel] = batch[idx[sel] - offsets[b], 1:].reshape(-1, 3, 32, 32)
        return out

    return Part(labels, images, ", ".join(str(p) for p in paths))


@DATASETS.register("cifar10")
class Cifar10(OfficialSplitDataset[Cifar10Params]):
    """CIFAR-10 (60,000 32x32 colour images, 10 classes), the benchmark BDefects4NN used."""

    def parts(self) -> tuple[Part, Part]:
        root = Path(self.params.data_dir).expanduser()
        if not root.is_dir():
            raise TrojanscopeError(f"CIFAR-10 folder {root} does not exist.")
        data_dir = root / "cifar-10-batches-bin"
        if not (data_dir / TRAIN_FILES[0]).is_file():
            data_dir = root
        names = (*TRAIN_FILES, TEST_FILE)
        missing = [n for n in names if not (data_dir / n).is_file()]
        if len(missing) == len(names):
            for folder in (root, root / "cifar-10-batches-py"):
                if any((folder / n).is_file() for n in PICKLE_FILES):
                    raise TrojanscopeError(
                        f"{folder} holds the python (pickle) release of CIFAR-10, which "
                        "trojanscope never unpickles; pass the folder of the binary release "
                        "(cifar-10-binary.tar.gz, data_batch_1.bin ... test_batch.bin) instead."
                    )
            raise TrojanscopeError(
                f"no CIFAR-10 binary files in {root} (expected data_batch_1.bin .. "
                "data_batch_5.bin and test_batch.bin, from cifar-10-binary.tar.gz)."
            )
        if missing:
            raise TrojanscopeError(
                f"incomplete CIFAR-10 binary release in {data_dir}: missing {', '.join(missing)}."
            )
        return _part([data_dir / n for n in TRAIN_FILES]), _part([data_dir / TEST_FILE])
