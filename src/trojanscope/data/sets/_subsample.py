"""Shared helpers for file-backed data sets: seeded stratified subsamples (``limit``) and the
official train/test split, decoding only the images that are kept."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, Field
from typing_extensions import TypeVar

from trojanscope.data.base import Dataset, Splits, TensorData
from trojanscope.errors import TrojanscopeError

LIMIT_DESCRIPTION = (
    "at most this many images in total: a seeded, stratified subsample (None keeps all)"
)


class OfficialSplitParams(BaseModel):
    """Parameters of a data set with a published split: no ``test_fraction`` to choose."""

    model_config = {"extra": "forbid"}
    limit: int | None = Field(None, ge=2, description=LIMIT_DESCRIPTION)


@dataclass
class Part:
    """Labels of one split and a reader of its images: uint8 (n, C, H, W) for sorted indices."""

    y: np.ndarray
    images: Callable[[np.ndarray], np.ndarray]
    source: str

    def take(self, idx: np.ndarray, num_classes: int) -> TensorData:
        x = self.images(idx).astype(np.float32) / np.float32(255.0)
        return TensorData(
            torch.from_numpy(np.ascontiguousarray(x)),
            torch.from_numpy(self.y[idx].astype(np.int64)),
            num_classes,
        )


def stratified_subsample(y: np.ndarray, limit: int | None, seed: int | Sequence[int]) -> np.ndarray:
    """Sorted indices of at most ``limit`` samples, each class keeping its share (largest
    remainders round up, ties broken at random) and at least one sample when ``limit`` allows."""
    n = len(y)
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    k = len(classes)
    if limit >= k:  # one per class first, the rest in proportion to what is left
        base, weights, budget = np.ones(k, np.int64), counts - 1, limit - k
    else:
        base, weights, budget = np.zeros(k, np.int64), counts, limit
    total = int(weights.sum())
    take = base + weights * budget // total
    remainder = weights * budget % total
    order = rng.permutation(k)
    order = order[np.argsort(-remainder[order], kind="stable")]
    take[order[: limit - int(take.sum())]] += 1
    chosen = [
        rng.choice(np.flatnonzero(y == c), size=int(t), replace=False)
        for c, t in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def split_limit(limit: int | None, n_train: int, n_test: int) -> tuple[int | None, int | None]:
    """Share ``limit`` between the official train and test sets in proportion to their sizes."""
    if limit is None or limit >= n_train + n_test:
        return None, None
    n = round(limit * n_train / (n_train + n_test))
    n = min(max(n, 1), limit - 1)
    return n, limit - n


#: The parameter model of a data set with a published split.
OP_co = TypeVar("OP_co", bound=OfficialSplitParams, covariant=True, default=OfficialSplitParams)


class OfficialSplitDataset(Dataset[OP_co]):
    """A data set with a published train/test split; ``load(seed)`` keeps that split.

    With ``limit`` L, the train set keeps round(L * n_train / n_total) images and the test set
    the rest (at least one each), each a stratified subsample drawn with ``seed``; only those
    images are decoded. ``arrays()`` is train then test of ``load(0)``.
    """

    def parts(self) -> tuple[Part, Part]:
        """The official train and test splits (labels and an image reader)."""
        raise NotImplementedError

    def load(self, seed: int = 0) -> Splits:
        train, test = self.parts()
        for part in (train, test):
            if len(part.y) == 0:
                raise TrojanscopeError(f"{part.source} holds no images.")
        num_classes = int(max(train.y.max(), test.y.max())) + 1
        n_train, n_test = split_limit(self.params.limit, len(train.y), len(test.y))
        return Splits(
            train.take(stratified_subsample(train.y, n_train, [seed, 0]), num_classes),
            test.take(stratified_subsample(test.y, n_test, [seed, 1]), num_classes),
        )

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        splits = self.load(0)
        x = torch.cat([splits.train.x, splits.test.x]).numpy()
        return x, torch.cat([splits.train.y, splits.test.y]).numpy()
