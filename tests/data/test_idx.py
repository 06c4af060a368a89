"""IDX reader and the mnist / fashion-mnist plug-ins, on tiny IDX files built here."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from trojanscope.data.base import DATASETS
from trojanscope.data.sets._subsample import stratified_subsample
from trojanscope.data.sets.idx import read_idx
from trojanscope.errors import ConfigError, TrojanscopeError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0C: ">i4"}[type_code]
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)


def make_set(folder: Path, n_train: int, n_test: int, gz: bool = False, h: int = 4, w: int = 5):
    """Images whose pixels encode (split, index, position); labels cycle over 3 classes."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    out = {}
    for prefix, n, offset in (("train", n_train, 0), ("t10k", n_test, 100)):
        images = (np.arange(n * h * w).reshape(n, h, w) * 7 + offset) % 256
        images = images.astype(np.uint8)
        labels = (np.arange(n) % 3).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_parses_header_and_data(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", array, gz)
    got = read_idx(tmp_path / "a")
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, array)


def test_read_idx_reads_big_endian_int32(tmp_path):
    array = np.array([1, -2, 70000], np.int64)
    (tmp_path / "b").write_bytes(idx_bytes(array, 0x0C))
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), array)


def test_read_idx_rejects_wrong_magic(tmp_path):
    (tmp_path / "x").write_bytes(b"\x89PNG" + bytes(20))
    with pytest.raises(TrojanscopeError, match=r"is not an IDX file \(magic bytes 89 50 4e 47"):
        read_idx(tmp_path / "x")


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_rejects_truncated_file(tmp_path, gz):
    data = idx_bytes(np.zeros((3, 4, 4), np.uint8))[:-5]
    (tmp_path / "t").write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(TrojanscopeError, match=r"is truncated: .* promises 48 data bytes .* 43"):
        read_idx(tmp_path / "t")


def test_read_idx_rejects_trailing_bytes_and_cut_gzip(tmp_path):
    (tmp_path / "long").write_bytes(idx_bytes(np.zeros(4, np.uint8)) + b"\0")
    with pytest.raises(TrojanscopeError, match=r"is longer than its IDX header \(4,\) says"):
        read_idx(tmp_path / "long")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(400, np.uint8)))[:-12])
    with pytest.raises(TrojanscopeError, match=r"^cannot read .*cut\.gz"):
        read_idx(tmp_path / "cut.gz")


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(TrojanscopeError, match=r"IDX file .*nope does not exist\.$"):
        read_idx(tmp_path / "nope")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_uses_the_official_split_exactly(tmp_path, gz):
    raw = make_set(tmp_path, 7, 4, gz=gz)
    splits = DATASETS.create("mnist", data_dir=str(tmp_path)).load(seed=5)
    assert splits.shape == (1, 4, 5) and splits.num_classes == 3
    for part, prefix in ((splits.train, "train"), (splits.test, "t10k")):
        images, labels = raw[prefix]
        assert part.x.dtype == torch.float32 and part.y.dtype == torch.int64
        assert torch.equal(part.x, torch.from_numpy(images[:, None] / np.float32(255.0)))
        assert part.y.tolist() == labels.tolist()


def test_limit_is_shared_in_proportion_stratified_and_seeded(tmp_path):
    raw = make_set(tmp_path, 60, 30)
    make = DATASETS.create("mnist", data_dir=str(tmp_path), limit=18)
    a, b, c = make.load(1), make.load(1), make.load(2)
    assert (len(a.train), len(a.test)) == (12, 6)  # 18 * 60 / 90 train, the rest test
    assert torch.bincount(a.train.y).tolist() == [4, 4, 4]
    assert torch.bincount(a.test.y).tolist() == [2, 2, 2]
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.x, b.test.x)
    assert not torch.equal(a.train.x, c.train.x)
    # every kept image is an original test image with its own label
    images, labels = raw["t10k"]
    flat = images.reshape(len(images), -1)
    for x, y in zip(a.test.x, a.test.y, strict=True):
        (i,) = np.flatnonzero((flat == np.round(x.numpy().ravel() * 255)).all(1))
        assert labels[i] == y


def test_stratified_subsample_keeps_rare_classes():
    y = np.array([0] * 90 + [1] * 9 + [2] * 1)
    idx = stratified_subsample(y, 10, 0)
    assert len(idx) == 10 and np.all(np.diff(idx) > 0)
    # one per class first, then 7 more shared 89:8:0 by largest remainder (6.42, 0.58, 0)
    assert np.bincount(y[idx]).tolist() == [7, 2, 1]
    assert np.bincount(y[stratified_subsample(y, 2, 0)], minlength=3).tolist() == [2, 0, 0]
    assert stratified_subsample(y, None, 0).tolist() == list(range(100))
    assert stratified_subsample(y, 500, 0).tolist() == list(range(100))


def test_missing_directory_names_files_and_remedy(tmp_path):
    with pytest.raises(
        TrojanscopeError,
        match=r"^no Fashion-MNIST IDX files in .*nope \(expected train-images-idx3-ubyte\[\.gz\], "
        r".*t10k-labels-idx1-ubyte\[\.gz\]\); install Debian's dataset-fashion-mnist or pass "
        r"data_dir\.$",
    ):
        DATASETS.create("fashion-mnist", data_dir=str(tmp_path / "nope")).load(0)


def test_incomplete_and_inconsistent_files(tmp_path):
    make_set(tmp_path, 6, 3)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(TrojanscopeError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\]\.$"):
        DATASETS.create("mnist", data_dir=str(tmp_path)).load(0)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(TrojanscopeError, match=r"has 3 images but .* has 2 labels\.$"):
        DATASETS.create("mnist", data_dir=str(tmp_path)).load(0)


def test_parameters_are_validated():
    with pytest.raises(ConfigError, match="'data_dir' field required"):
        DATASETS.create("mnist")
    with pytest.raises(ConfigError, match="'test_fraction'"):
        DATASETS.create("fashion-mnist", test_fraction=0.3)
    with pytest.raises(ConfigError, match="'limit'"):
        DATASETS.create("fashion-mnist", limit=1)
    params = DATASETS.create("fashion-mnist").params.model_dump(mode="json")
    assert params == {"limit": None, "data_dir": str(FASHION)}
    DATASETS.create("fashion-mnist", **params)  # the catalog round-trips dumped parameters


def test_real_fashion_mnist_with_a_small_limit():
    if not (FASHION / "train-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    splits = DATASETS.create("fashion-mnist", limit=140).load(0)
    assert splits.shape == (1, 28, 28) and splits.num_classes == 10
    assert (len(splits.train), len(splits.test)) == (120, 20)
    assert torch.bincount(splits.train.y).tolist() == [12] * 10
    assert torch.bincount(splits.test.y).tolist() == [2] * 10
    assert float(splits.train.x.max()) == 1.0 and float(splits.train.x.min()) == 0.0
