"""Every registered method's layer trains from scratch with ``fit`` on a ``tf.data`` pipeline
of real data (scikit-learn's digits), parametrized over the registry: a new method is tested
by registering it.

The layer is the method's replacement of a hidden layer of a small CNN (a 3x3 ``Conv2D``
8 -> 16, or the ``Dense`` 144 -> 32 for ``Dense`` methods), at about 80 % energy, then freshly
initialized from its config. Measured here (seed 0, 297 held-out digits): 0.89 (tt_dense)
to 0.94 (decef); a broken layer (no gradient, wrong output) stays near chance (0.1).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_eigenconv.compress import get_method, registered_methods
from keras_eigenconv.layers import BasisConv2D


def _dataset(x, y, batch=64):
    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=0)
        .batch(batch)
        .prefetch(tf.data.AUTOTUNE)
    )


def _fresh_layer(m):
    """The method's layer replacing a trained-looking source, re-created from its config."""
    rng = np.random.default_rng(0)
    if m.layer.source_type is keras.layers.Dense:
        source = keras.layers.Dense(32, activation="relu")
        source.build((None, 8 * 8 * 8))
    else:
        source = keras.layers.Conv2D(16, 3, padding="same", activation="relu")
        source.build((None, 8, 8, 8))
    source.kernel.assign(rng.normal(size=source.kernel.shape).astype("float32"))
    layer = m.build(source, energy=0.8)
    return type(layer).from_config({**layer.get_config(), "seed": 0})


@pytest.mark.parametrize("name", registered_methods())
def test_small_cnn_learns_digits(name, digits):
    keras.utils.set_random_seed(0)
    x, y = digits
    m = get_method(name)
    layer = _fresh_layer(m)
    body = [keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, padding="same", activation="relu")]
    if m.layer.source_type is keras.layers.Dense:
        body += [keras.layers.Flatten(), layer]
    else:
        body += [layer, keras.layers.Flatten()]
    model = keras.Sequential([*body, keras.layers.Dense(10)])
    model.compile(
        keras.optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    frozen = np.asarray(layer.basis).copy() if isinstance(layer, BasisConv2D) else None
    hist = model.fit(_dataset(x[:1500], y[:1500]), epochs=5, verbose=0)
    loss = hist.history["loss"]
    assert loss[-1] < 0.3 * loss[0], loss
    _, acc = model.evaluate(_dataset(x[1500:], y[1500:]), verbose=0)
    assert acc > 0.85, acc
    if frozen is not None:
        np.testing.assert_array_equal(frozen, layer.basis)
