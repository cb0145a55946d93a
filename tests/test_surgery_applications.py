"""convert() on keras.applications models (weights=None, small inputs).

Full rank: the converted model's outputs equal the original's. ``energy=0.9``: fewer MACs. No
ImageNet weights offline, so for the energy check every Conv2D kernel is first given the
decaying spectrum of trained filters (METHODS.md section 1: trained filters are low rank):
its filters are scaled by ``0.7**n`` (floored at 1e-3); random Glorot kernels have flat
spectra, where 90% of the energy needs nearly every rank.

The cheap models run by default; the rest are marked slow (CI runs both). The slow set is a
representative model of each family (ResNet/V2, VGG, Inception, Xception, MobileNet V1/V3,
EfficientNet V1/V2, DenseNet, NASNet, ConvNeXt; this Keras has no RegNet), at the smallest
input each accepts.
"""

import keras
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from keras_eigenconv.compress import convert
from keras_eigenconv.cost import model_cost

A = keras.applications
S32 = {"input_shape": (32, 32, 3)}


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Single-threaded BLAS: on a loaded 2-core machine multithreaded OpenBLAS SVDs spin and
    run up to 100x slower (measured), which says nothing about the code under test."""
    with threadpool_limits(1, user_api="blas"):
        yield


# (constructor, kwargs, method): spatial methods for models rich in k x k convs, channel SVD
# for models made of depthwise + 1x1 convs.
CHEAP = [
    ("ResNet50", S32, "decef"),
    ("MobileNetV2", {**S32, "alpha": 0.35}, "svd"),
]
SLOW = [
    ("ResNet50V2", S32, "decef"),
    ("VGG16", S32, "decef"),
    ("InceptionV3", {"input_shape": (75, 75, 3)}, "decef"),
    ("Xception", {"input_shape": (71, 71, 3)}, "decef"),
    ("MobileNet", {**S32, "alpha": 0.25}, "svd"),
    ("MobileNetV3Small", {**S32, "alpha": 0.75, "minimalistic": True}, "svd"),
    ("EfficientNetB0", {**S32, "include_top": False}, "svd"),
    ("EfficientNetV2B0", {**S32, "include_top": False}, "decef"),
    ("DenseNet121", S32, "decef"),
    ("NASNetMobile", S32, "svd"),
    ("ConvNeXtTiny", S32, "basis"),
]


def _build(name, kwargs):
    keras.utils.set_random_seed(0)
    return getattr(A, name)(weights=None, **kwargs)


def _trained_like(model):
    """Give every Conv2D kernel a decaying spectrum over its filters (see module doc)."""
    for layer in model.layers:
        if type(layer) is keras.layers.Conv2D:
            w = layer.get_weights()
            n = w[0].shape[-1]
            w[0] = w[0] * np.maximum(0.7 ** np.arange(n), 1e-3).astype("float32")
            layer.set_weights(w)
        elif isinstance(layer, keras.Model):
            _trained_like(layer)


def _check(name, kwargs, method):
    model = _build(name, kwargs)
    x = np.random.default_rng(0).random((2, *model.input_shape[1:])).astype("float32")
    new, report = convert(model, method=method, skip_first=False, require_saving=False)
    assert len(report.replaced) >= 1, report
    ref, out = np.asarray(model(x)), np.asarray(new(x))
    scale = np.max(np.abs(ref)) + 1e-6
    assert np.max(np.abs(out - ref)) <= 1e-3 * scale, (np.max(np.abs(out - ref)), scale)

    _trained_like(model)
    small, report = convert(model, method=method, energy=0.9)
    assert report.replaced, report
    assert model_cost(small).total.macs < model_cost(model).total.macs
    assert report.macs_ratio < 1


@pytest.mark.parametrize("name,kwargs,method", CHEAP, ids=[c[0] for c in CHEAP])
def test_application_cheap(name, kwargs, method):
    _check(name, kwargs, method)


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs,method", SLOW, ids=[c[0] for c in SLOW])
def test_application_slow(name, kwargs, method):
    _check(name, kwargs, method)
