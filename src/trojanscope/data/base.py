"""Tensor data sets and the dataset registry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, Field
from sklearn.model_selection import train_test_split
from typing_extensions import TypeVar

from trojanscope.registry import Plugin, Registry


@dataclass
class TensorData:
    """Images (N, C, H, W) float32 in [0, 1] and integer labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, idx: torch.Tensor | np.ndarray) -> TensorData:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return TensorData(self.x[idx], self.y[idx], self.num_classes)


@dataclass
class Splits:
    train: TensorData
    test: TensorData

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.train.shape


class SplitParams(BaseModel):
    model_config = {"extra": "forbid"}
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)


#: A data set's parameter model (a plug-in that names none takes ``SplitParams``).
DP_co = TypeVar("DP_co", bound=BaseModel, covariant=True, default=SplitParams)


class Dataset(Plugin[DP_co]):
    """A data set plug-in: ``load(seed)`` returns deterministic, stratified train/test splits."""

    kind = "dataset"

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images as float32 (N, C, H, W) in [0, 1] and int64 labels."""
        raise NotImplementedError

    def load(self, seed: int = 0) -> Splits:
        """A stratified split of ``arrays()`` with ``test_fraction`` of it for testing (a data
        set whose parameters are not ``SplitParams`` has its own split and overrides this)."""
        params = self.params
        if not isinstance(params, SplitParams):
            raise NotImplementedError(
                f"{type(self).__name__} has no test_fraction parameter: it must override load()."
            )
        x, y = self.arrays()
        idx_train, idx_test = train_test_split(
            np.arange(len(y)), test_size=params.test_fraction, random_state=seed, stratify=y
        )
        num_classes = int(y.max()) + 1
        xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))
        full = TensorData(xt, yt, num_classes)
        return Splits(full.subset(np.sort(idx_train)), full.subset(np.sort(idx_test)))


DATASETS: Registry[Dataset[BaseModel]] = Registry("dataset", ["trojanscope.data.sets"])
