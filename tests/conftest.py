"""Shared fixtures: quiet TensorFlow, seeded Keras, the real data bundled with scikit-learn."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled 8x8 digits: ``x (1797, 8, 8, 1)`` in [0, 1], ``y (1797,)``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]
    return x, d.target.astype("int32")
