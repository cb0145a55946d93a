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

from keras_eigenconv import BasisConv2D, CPConv2D, DeCEFConv2D, SVDConv2D
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


def _depthwise_reference(x, kernel, strides, padding):
    """NumPy depthwise conv (multiplier 1), padded as TensorFlow's "same" pads."""
    (kh, kw), (sh, sw) = kernel.shape[:2], strides
    _, h, w, c = x.shape
    if padding == "same":
        out = (-(-h // sh), -(-w // sw))
        th = max((out[0] - 1) * sh + kh - h, 0)
        tw = max((out[1] - 1) * sw + kw - w, 0)
        x = np.pad(x, ((0, 0), (th // 2, th - th // 2), (tw // 2, tw - tw // 2), (0, 0)))
    else:
        out = ((h - kh) // sh + 1, (w - kw) // sw + 1)
    y = np.zeros((x.shape[0], *out, c), np.float64)
    for i in range(out[0]):
        for j in range(out[1]):
            patch = x[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
            y[:, i, j, :] = np.einsum("bhwc,hwc->bc", patch, kernel[..., 0])
    return y


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


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a TensorFlow trace")
def test_unequal_strides_depthwise_with_unknown_spatial_dims():
    import tensorflow as tf

    # 1x1 kernel, stride 1 rows: "same" pads nothing (total 0), also when the height is a
    # tensor in the trace
    kernel = np.random.default_rng(2).normal(size=(1, 3, 2, 1)).astype("float32")
    traced = tf.function(
        lambda t: safe_depthwise_conv(t, kernel, (1, 2), "same"),
        input_signature=[tf.TensorSpec((None, None, None, 2), tf.float32)],
    )
    x = np.random.default_rng(3).normal(size=(1, 6, 8, 2)).astype("float32")
    got = np.asarray(traced(x))
    np.testing.assert_allclose(got, _depthwise_reference(x, kernel, (1, 2), "same"), atol=1e-5)


def test_set_output_projection_replaces_the_last_map_and_maybe_the_bias():
    layer = DeCEFConv2D.from_conv2d(_conv(filters=6, channels=4), rank=3)
    name = layer._output_factor
    old_bias = np.asarray(layer.bias).copy()
    shape = tuple(getattr(layer, name).shape)
    new = np.random.default_rng(4).normal(size=shape).astype("float32")
    layer.set_output_projection(new, None)
    np.testing.assert_array_equal(np.asarray(getattr(layer, name)), new)
    np.testing.assert_array_equal(np.asarray(layer.bias), old_bias)
    layer.set_output_projection(new, np.arange(6.0))
    np.testing.assert_array_equal(np.asarray(layer.bias), np.arange(6.0, dtype="float32"))
    cp = CPConv2D.from_conv2d(_conv(), rank=2)  # no output factor of its own
    with pytest.raises(NotImplementedError, match="CPConv2D has no refittable output map"):
        cp.set_output_projection(new, None)


def test_a_3d_input_is_refused_by_the_input_spec():
    layer = SVDConv2D(4, 3, rank=2)
    layer.build((None, 8, 8, 3))
    with pytest.raises(ValueError, match="expected ndim=4, found ndim=3"):
        layer(np.zeros((8, 8, 3), "float32"))


def test_spatial_svd_ranks_from_its_own_statistics():
    conv = _conv(filters=6, channels=4)
    kernel = np.asarray(conv.kernel)
    rows = {"rows": np.eye(3 * 4)}  # (kh*C, kh*C): white rows, the data-free spectrum
    free = SVDConv2D.rank_for(kernel, energy=0.9, decomposition="spatial")
    aware = SVDConv2D.from_conv2d(conv, energy=0.9, decomposition="spatial", statistics=rows)
    assert aware.rank == free


def test_rank_and_energy_together_are_refused_naming_the_layer_class():
    with pytest.raises(ValueError, match=r"^SVDConv2D: pass rank or energy, not both\.$"):
        SVDConv2D.rank_for(np.asarray(_conv().kernel), rank=2, energy=0.9)


def test_from_source_passes_the_statistics_on():
    conv = _conv(filters=6, channels=4)
    stats = {"response": np.diag([1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1.0])}
    via_source = SVDConv2D.from_source(conv, rank=1, statistics=stats)
    direct = SVDConv2D.from_conv2d(conv, rank=1, statistics=stats)
    free = SVDConv2D.from_source(conv, rank=1)
    for a, b in zip(via_source.get_weights(), direct.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(via_source.get_weights()[0], free.get_weights()[0])


def test_a_frozen_basis_is_a_non_trainable_weight():
    layer = BasisConv2D(8, 3, rank=4, trainable_basis=False)
    layer.build((None, 8, 8, 3))
    assert [w.name for w in layer.non_trainable_weights] == ["basis"]
    assert "basis" not in [w.name for w in layer.trainable_weights]
    trainable = BasisConv2D(8, 3, rank=4, trainable_basis=True)
    trainable.build((None, 8, 8, 3))
    assert "basis" in [w.name for w in trainable.trainable_weights]


def test_the_training_estimate_spreads_the_rebuild_of_the_c_channel_kernel():
    from keras_eigenconv.layers.base import OP_TIME_PER_MAC_TRAINING

    layer = SVDConv2D(32, 3, rank=8, padding="same")
    shape = (None, 12, 12, 48)  # H != C: the rebuild is counted over the C input channels
    layer.build(shape)
    est = sum(OP_TIME_PER_MAC_TRAINING[k] * m for k, m in layer.op_macs(shape))
    for batch in (1, 16):
        want = est / (layer.dense_macs(shape) + layer.rebuild_macs(48) / batch)
        assert layer.training_time_ratio_estimate(shape, batch=batch) == pytest.approx(want)


def test_grouped_convs_and_bad_geometry_are_refused_by_name():
    grouped = keras.layers.Conv2D(8, 3, groups=2, name="g")
    grouped.build((None, 8, 8, 4))
    with pytest.raises(
        ValueError,
        match=r"^SVDConv2D\.from_conv2d: Conv2D .g. has groups=2; only groups=1 is supported\. "
        r"Leave grouped "
        r"convolutions as they are\.$",
    ):
        SVDConv2D.from_conv2d(grouped, rank=2)
    with pytest.raises(ValueError, match=r"^SVDConv2D 'k': kernel_size must be "):
        SVDConv2D(4, (3, 3, 3), rank=2, name="k")
    with pytest.raises(ValueError, match=r"^SVDConv2D 'd': dilation_rate must be "):
        SVDConv2D(4, 3, rank=2, dilation_rate=(1, 0), name="d")
