"""Layers convert to .tflite with built-in ops only, and LiteRT matches Keras."""

import keras
import numpy as np
import pytest
from helpers import tflite_run

from keras_eigenconv import BasisConv2D, DeCEFConv2D, SVDConv2D

CASES = [
    (DeCEFConv2D, {}, "factorized"),
    (DeCEFConv2D, {}, "dense"),
    (BasisConv2D, {}, "factorized"),
    (BasisConv2D, {}, "dense"),
    (BasisConv2D, {"batch_norm": True}, "factorized"),  # BatchNorm forces factorized
    (SVDConv2D, {}, "factorized"),
    (SVDConv2D, {}, "dense"),
    (SVDConv2D, {"decomposition": "spatial"}, "factorized"),
    (SVDConv2D, {"decomposition": "spatial"}, "dense"),
]


@pytest.mark.parametrize("cls,opts,impl", CASES)
def test_litert_matches_keras(cls, opts, impl):
    inputs = keras.Input((12, 12, 4), batch_size=1)
    layer = cls(
        6, 3, rank=3, strides=2, padding="same", activation="relu", implementation=impl, **opts
    )
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(0).normal(size=(1, 12, 12, 4)).astype("float32")
    got, ops = tflite_run(model, x)
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)
    assert not any("FLEX" in op.upper() for op in ops), ops
    if impl == "factorized" and cls is DeCEFConv2D:
        assert "DEPTHWISE_CONV_2D" in ops
