"""The shared layer code (``layers/base.py``) on its edges, fast: argument checks by their
messages, names and defaults carried through ``from_conv2d``, calibration statistics used
exactly when the method needs them, a zero initializer, and the unequal-stride depthwise
path on a non-square input.

``tests/test_contract.py`` runs every method through the contract; these tests pin what
its mutation run (``scripts/mutation.py --modules base``) found unpinned.
"""

import keras
import numpy as np
import pytest

from keras_eigenconv import CPConv2D, DeCEFConv2D, SVDConv2D
from keras_eigenconv.layers.base import (
    AUTO_FACTORIZED_THRESHOLD,
    AUTO_TRAINING_THRESHOLD,
    safe_depthwise_conv,
)


def _conv(filters=6, channels=4, kernel=3, seed=0, **kwargs):
    conv = keras.layers.Conv2D(filters, kernel, padding="same", **kwargs)
    conv.build((None, 8, 8, channels))
    rng = np.random.default_rng(seed)
    conv.kernel.assign(rng.normal(size=conv.kernel.shape).astype("float32"))
    conv.bias.assign(rng.normal(size=conv.bias.shape).astype("float32"))
    return conv


def test_argument_errors_name_the_layer_the_argument_and_the_fix():
    with pytest.raises(
        ValueError,
        match=r"^SVDConv2D 'svd_bad': rank=40 is outside \[1, \d+\]\. Pass a rank in that "
        r"range, or energy=\.\.\. to choose it from the spectrum\.$",
    ):
        SVDConv2D(6, 3, rank=40, name="svd_bad").build((None, 8, 8, 4))
    with pytest.raises(
        ValueError,
        match=r"energy=1\.5 must be in \(0, 1\], the share of the kernel's squared Frobenius "
        r"norm to keep \(e\.g\. 0\.9\)\.$",
    ):
        SVDConv2D.from_conv2d(_conv(), energy=1.5)
    with pytest.raises(
        ValueError,
        match=r"^DeCEFConv2D 'd': strides > 1 together with dilation_rate > 1 is not supported "
        r"\(as in keras\.layers\.Conv2D\)\.$",
    ):
        DeCEFConv2D(4, 3, rank=2, strides=2, dilation_rate=2, name="d")
    with pytest.raises(
        ValueError, match=r"^SVDConv2D 's': implementation must be one of .*, got 'fast'\.$"
    ):
        SVDConv2D(4, 3, rank=2, implementation="fast", name="s")
    with pytest.raises(
        ValueError,
        match=r"dilation_rate=\(3, 3\), strides=\(1, 1\), padding=valid: the input is smaller "
        r"than the \(dilated\) kernel",
    ):
        SVDConv2D(4, 3, rank=2, dilation_rate=3).build((None, 5, 5, 4))


def test_one_filter_is_a_valid_layer():
    layer = SVDConv2D(1, 3, rank=1, padding="same")
    layer.build((None, 8, 8, 2))
    assert tuple(layer.compute_output_shape((None, 8, 8, 2))) == (None, 8, 8, 1)
    with pytest.raises(ValueError, match="filters must be a positive int, got 0"):
        SVDConv2D(0, 3, rank=1)


def test_from_conv2d_keeps_the_given_name_and_the_auto_default():
    conv = _conv()
    layer = SVDConv2D.from_conv2d(conv, rank=2, name="renamed")
    assert layer.name == "renamed"
    assert layer.implementation == "auto" and layer.get_config()["implementation"] == "auto"
    assert SVDConv2D.from_source(conv, rank=2, name="via_source").name == "via_source"
    assert SVDConv2D.from_conv2d(conv, rank=2).name == conv.name


def test_statistics_are_used_exactly_when_the_method_needs_them():
    conv = _conv(filters=6, channels=4)
    kernel = np.asarray(conv.kernel)
    # responses dominated by the last output channel: the data-aware rank-1 SVD keeps it
    weights = np.diag([1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1.0])
    stats = {"response": weights}
    free = SVDConv2D.from_conv2d(conv, rank=1)
    aware = SVDConv2D.from_conv2d(conv, rank=1, statistics=stats)

    def last_channel_error(layer):
        k = np.asarray(layer.to_conv2d().kernel)
        return np.linalg.norm(k[..., -1] - kernel[..., -1])

    assert last_channel_error(aware) < 0.5 * last_channel_error(free)
    # CP needs no statistics: passing some changes nothing
    t_free = CPConv2D.from_conv2d(conv, rank=3)
    t_stats = CPConv2D.from_conv2d(conv, rank=3, statistics=stats)
    for a, b in zip(t_free.get_weights(), t_stats.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_zero_initializer_gives_finite_zero_factors():
    layer = SVDConv2D(4, 3, rank=2, padding="same", kernel_initializer="zeros")
    layer.build((None, 8, 8, 3))
    for w in layer.get_weights():
        assert np.all(np.isfinite(w))
    np.testing.assert_array_equal(np.asarray(layer(np.ones((1, 8, 8, 3)))), 0.0)


def test_training_and_inference_implementations_follow_their_own_cost_models():
    # "auto" decides twice: for inference by the forward-time estimate, for training by the
    # training-step estimate, each against its own threshold; find a layer where they differ
    differing = 0
    for rank in (1, 4, 8, 16, 24, 32, 48, 64):
        layer = SVDConv2D(64, 3, rank=rank, padding="same")
        shape = (None, 16, 16, 64)
        layer.build(shape)
        forward = layer.time_ratio_estimate(shape) < AUTO_FACTORIZED_THRESHOLD
        training = layer.training_time_ratio_estimate(shape) < AUTO_TRAINING_THRESHOLD
        assert layer.resolved_implementation == ("factorized" if forward else "dense")
        assert layer.resolved_training_implementation == ("factorized" if training else "dense")
        differing += forward != training
    assert differing > 0


@pytest.mark.parametrize("strides", [(1, 2), (2, 3), (3, 1)])
@pytest.mark.parametrize("shape", [(1, 9, 13, 3), (1, 14, 7, 5)])
def test_unequal_strides_depthwise_equals_keras_on_non_square_inputs(strides, shape):
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape).astype("float32")
    kernel = rng.normal(size=(3, 3, shape[-1], 1)).astype("float32")
    for padding in ("same", "valid"):
        got = np.asarray(safe_depthwise_conv(x, kernel, strides, padding))
        want = np.asarray(keras.ops.depthwise_conv(x, kernel, strides=strides, padding=padding))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
