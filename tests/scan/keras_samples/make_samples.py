"""Writes the genuine Keras 3 files next to this script (run once by hand, not by the tests).

Keras is not a dependency of trojanscope: install it in a throwaway place and run e.g.
``pip install --target /tmp/k keras namex optree ml-dtypes absl-py`` then
``KERAS_BACKEND=torch PYTHONPATH=/tmp/k python make_samples.py``. The Lambda layer's function
is harmless (it doubles its input); the tests only ever read these files as data.
"""

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402

HERE = Path(__file__).parent


@keras.saving.register_keras_serializable(package="samplepkg")
class ScaledDense(keras.layers.Dense):
    """A custom layer: loading the file needs this class."""


def benign() -> keras.Model:
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)]
    )
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return model


def with_lambda() -> keras.Model:
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2)(keras.layers.Lambda(lambda t: t * 2)(inputs))
    return keras.Model(inputs, outputs)


def with_custom_layer() -> keras.Model:
    return keras.Sequential([keras.Input((4,)), ScaledDense(2)])


if __name__ == "__main__":
    benign().save(HERE / "benign.keras")
    with_lambda().save(HERE / "lambda.keras")
    with_custom_layer().save(HERE / "custom.keras")
    benign().save(HERE / "benign.h5")  # Keras 3's legacy HDF5 writer
    with_lambda().save(HERE / "lambda.h5")
