"""scikit-learn's bundled handwritten digits: 1,797 images of 8x8 pixels, 10 classes."""

import numpy as np
from sklearn.datasets import load_digits

from trojanscope.data.base import DATASETS, Dataset


@DATASETS.register("digits")
class Digits(Dataset):
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        bunch = load_digits()
        x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
        return x, bunch.target.astype(np.int64)
