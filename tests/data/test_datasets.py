import pytest
import torch

from trojanscope.data.base import DATASETS
from trojanscope.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "params", "shape", "n"),
    [
        ("digits", {}, (1, 8, 8), 1797),
        ("mnist5k", {}, (1, 28, 28), 5000),
        ("synthetic", {"n": 300, "size": 12, "channels": 3}, (3, 12, 12), 300),
    ],
)
def test_splits_are_deterministic_scaled_and_channel_first(name, params, shape, n):
    a = DATASETS.create(name, **params).load(seed=3)
    b = DATASETS.create(name, **params).load(seed=3)
    c = DATASETS.create(name, **params).load(seed=4)
    assert a.shape == shape
    assert len(a.train) + len(a.test) == n
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.test.x, c.test.x)
    assert a.train.x.dtype == torch.float32 and a.train.y.dtype == torch.int64
    assert float(a.train.x.min()) >= 0.0 and float(a.train.x.max()) <= 1.0
    # stratified: every class appears in the test split
    assert set(a.test.y.tolist()) == set(range(a.num_classes))


def test_synthetic_classes_are_distinct_shapes():
    splits = DATASETS.create("synthetic", n=400, num_classes=4, noise=0.0).load(0)
    means = [splits.train.x[splits.train.y == c].mean(0) for c in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(means[i], means[j], atol=1e-3)


def test_synthetic_rejects_bad_size():
    with pytest.raises(ConfigError, match="'size'"):
        DATASETS.create("synthetic", size=4)
