"""The cifar10 plug-in on a tiny binary release built here; the pickle release is refused."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from trojanscope.data.base import DATASETS
from trojanscope.errors import TrojanscopeError


def records(labels: list[int], start: int) -> tuple[bytes, np.ndarray]:
    """Records whose pixels encode (start + record, channel, row, col)."""
    n = len(labels)
    images = (np.arange(n * 3072).reshape(n, 3, 32, 32) + start * 3072) % 251
    images = images.astype(np.uint8)
    rows = np.concatenate([np.array(labels, np.uint8)[:, None], images.reshape(n, -1)], axis=1)
    return rows.tobytes(), images


def make_release(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Five training batches of 4 records (classes 0-3) and a test batch of 8."""
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        labels = [(i + j) % 4 for j in range(4)]
        data, images = records(labels, 4 * i)
        (folder / f"data_batch_{i}.bin").write_bytes(data)
        train_x.append(images)
        train_y += labels
    test_labels = [j % 4 for j in range(8)]
    data, test_images = records(test_labels, 100)
    (folder / "test_batch.bin").write_bytes(data)
    return {
        "train": (np.concatenate(train_x), np.array(train_y)),
        "test": (test_images, np.array(test_labels)),
    }


def test_records_parse_exactly_with_the_official_split(tmp_path):
    raw = make_release(tmp_path)
    splits = DATASETS.create("cifar10", data_dir=str(tmp_path)).load(seed=3)
    assert splits.shape == (3, 32, 32) and splits.num_classes == 4
    for part, name in ((splits.train, "train"), (splits.test, "test")):
        images, labels = raw[name]
        assert part.x.dtype == torch.float32 and part.y.dtype == torch.int64
        assert torch.equal(part.x, torch.from_numpy(images / np.float32(255.0)))
        assert part.y.tolist() == labels.tolist()
    assert len(splits.train) == 20 and len(splits.test) == 8


def test_channel_first_layout_of_one_record(tmp_path):
    make_release(tmp_path)
    record = np.zeros(3073, np.uint8)
    record[0] = 7  # label
    record[1 + 0 * 1024 + 1 * 32 + 2] = 255  # red plane, row 1, column 2
    record[1 + 1 * 1024 + 31 * 32 + 0] = 51  # green plane, row 31, column 0
    record[1 + 2 * 1024 + 0 * 32 + 31] = 102  # blue plane, row 0, column 31
    (tmp_path / "test_batch.bin").write_bytes(record.tobytes())
    test = DATASETS.create("cifar10", data_dir=str(tmp_path)).load(0).test
    assert test.y.tolist() == [7]
    x = test.x[0] * 255
    nonzero = {tuple(i): round(float(x[tuple(i)])) for i in torch.nonzero(x).tolist()}
    assert nonzero == {(0, 1, 2): 255, (1, 31, 0): 51, (2, 0, 31): 102}


def test_limit_parent_folder_and_determinism(tmp_path):
    make_release(tmp_path / "cifar-10-batches-bin")
    ds = DATASETS.create("cifar10", data_dir=str(tmp_path), limit=14)
    a, b = ds.load(0), ds.load(0)
    assert (len(a.train), len(a.test)) == (10, 4)  # 14 * 20 / 28 train, the rest test
    assert sorted(torch.bincount(a.train.y).tolist()) == [2, 2, 3, 3]
    assert torch.bincount(a.test.y).tolist() == [1, 1, 1, 1]
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    seeds = {tuple(ds.load(s).train.x[:, 0, 0, 0].tolist()) for s in range(4)}
    assert len(seeds) > 1


class _Boom:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # unpickling would create the marker file


def test_pickle_release_is_refused_never_unpickled(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "unpickled"
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (folder / name).write_bytes(pickle.dumps(_Boom(marker)))
    for data_dir in (tmp_path, folder):
        with pytest.raises(
            TrojanscopeError,
            match=r"holds the python \(pickle\) release of CIFAR-10, which trojanscope never "
            r"unpickles; pass the folder of the binary release",
        ):
            DATASETS.create("cifar10", data_dir=str(data_dir)).load(0)
    assert not marker.exists()


def test_bad_layouts_and_sizes(tmp_path):
    with pytest.raises(TrojanscopeError, match=r"^CIFAR-10 folder .*nope does not exist\.$"):
        DATASETS.create("cifar10", data_dir=str(tmp_path / "nope")).load(0)
    with pytest.raises(TrojanscopeError, match=r"^no CIFAR-10 binary files in .*test_batch\.bin"):
        DATASETS.create("cifar10", data_dir=str(tmp_path)).load(0)
    make_release(tmp_path)
    (tmp_path / "data_batch_4.bin").unlink()
    with pytest.raises(TrojanscopeError, match=r"missing data_batch_4\.bin\.$"):
        DATASETS.create("cifar10", data_dir=str(tmp_path)).load(0)
    (tmp_path / "data_batch_4.bin").write_bytes(bytes(3073 * 2 + 5))
    with pytest.raises(TrojanscopeError, match=r"is 6151 bytes, not a positive multiple of the"):
        DATASETS.create("cifar10", data_dir=str(tmp_path)).load(0)
    (tmp_path / "data_batch_4.bin").write_bytes(b"")
    with pytest.raises(TrojanscopeError, match=r"is 0 bytes"):
        DATASETS.create("cifar10", data_dir=str(tmp_path)).load(0)
    (tmp_path / "data_batch_4.bin").write_bytes(bytes([0] * 3073 + [12] + [0] * 3072))
    with pytest.raises(TrojanscopeError, match=r"record 1 has label 12, not a CIFAR-10 class"):
        DATASETS.create("cifar10", data_dir=str(tmp_path)).load(0)
