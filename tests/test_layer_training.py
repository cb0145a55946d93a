"""Each layer trains with fit on a tf.data pipeline of real data (sklearn digits)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_eigenconv import BasisConv2D, DeCEFConv2D, SVDConv2D

LAYERS = [
    ("decef", lambda: DeCEFConv2D(16, 3, rank=3, padding="same", activation="relu")),
    ("basis", lambda: BasisConv2D(16, 3, rank=8, padding="same", activation="relu", seed=0)),
    (
        "basis-bn",
        lambda: BasisConv2D(
            16, 3, rank=8, padding="same", activation="relu", batch_norm=True, seed=0
        ),
    ),
    ("svd", lambda: SVDConv2D(16, 3, rank=4, padding="same", activation="relu")),
    (
        "svd-spatial",
        lambda: SVDConv2D(
            16, 3, rank=4, padding="same", activation="relu", decomposition="spatial"
        ),
    ),
]


def _dataset(x, y, batch=64):
    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=0)
        .batch(batch)
        .prefetch(tf.data.AUTOTUNE)
    )


@pytest.mark.parametrize("name,make", LAYERS, ids=[n for n, _ in LAYERS])
def test_small_cnn_learns_digits(name, make, digits):
    x, y = digits
    layer = make()
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            layer,
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        keras.optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    frozen = np.asarray(layer.basis).copy() if isinstance(layer, BasisConv2D) else None
    hist = model.fit(_dataset(x[:1500], y[:1500]), epochs=5, verbose=0)
    loss = hist.history["loss"]
    assert loss[-1] < 0.6 * loss[0], loss
    _, acc = model.evaluate(_dataset(x[1500:], y[1500:]), verbose=0)
    assert acc > 0.5, acc  # 10 classes: chance is 0.1
    if frozen is not None:
        np.testing.assert_array_equal(frozen, layer.basis)
