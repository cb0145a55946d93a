"""SSConv2D: pattern maths, equivalence with the Keras layers it generalizes, costs, export."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import tflite_run
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from keras_eigenconv import decompositions as dec
from keras_eigenconv.cost import layer_cost
from keras_eigenconv.layers.ssc import SSConv2D, _shuffle, set_ssc_implementation

RNG = np.random.default_rng(0)


def _x(shape):
    return RNG.normal(size=shape).astype("float32")


def _randomize(layer):
    layer.set_weights([RNG.normal(size=w.shape).astype("float32") for w in layer.get_weights()])


# ---- pattern maths (NumPy) -------------------------------------------------------------


def test_hetconv_pattern_is_one_channel_shift_per_filter():
    p = dec.SSCPattern(
        8, 8, (3, 3), groups=4, kernel_span=1, pointwise_span=3, layout="interleaved"
    )
    conn = p.connections  # (C, N)
    for n in range(8):
        full = np.flatnonzero(conn[:, n] == dec.structured.FULL)
        np.testing.assert_array_equal(full, np.arange(n % 4, 8, 4))
        assert np.all(conn[:, n][np.setdiff1d(np.arange(8), full)] == dec.structured.POINTWISE)


@settings(max_examples=25, deadline=None)
@given(
    g=st.sampled_from([1, 2, 3, 4]),
    cg=st.integers(1, 3),
    ng=st.integers(1, 3),
    k=st.sampled_from([1, 2, 3]),
    a=st.integers(0, 4),
    b=st.integers(0, 4),
    layout=st.sampled_from(dec.SSC_LAYOUTS),
    seed=st.integers(0, 10**6),
)
def test_project_dense_roundtrip_and_best_shift(g, cg, ng, k, a, b, layout, seed):
    a, b = min(a, g), min(b, g - min(a, g))
    if a + b == 0:
        a = 1
    c, n = g * cg, g * ng
    w = np.random.default_rng(seed).normal(size=(k, k, c, n))
    energies = dec.ssc_shift_energies(w, g, a, b, layout)
    for shift in range(c):
        p = dec.SSCPattern(c, n, (k, k), g, a, b, layout, shift)
        kern, pw = dec.ssc_project(w, p)
        dense = dec.ssc_dense_kernel(p, kern, pw)
        # the dense kernel is W on the connected entries and zero elsewhere
        mask = np.zeros_like(w, dtype=bool)
        th, tw = p.tap
        mask[:, :, p.connections == dec.structured.FULL] = True
        mask[th, tw][p.connections == dec.structured.POINTWISE] = True
        np.testing.assert_array_equal(dense, np.where(mask, w, 0.0))
        assert np.count_nonzero(dense) == p.num_weights  # random W: no accidental zeros
        np.testing.assert_allclose(energies[shift], (dense**2).sum(), rtol=1e-9)
    best = dec.ssc_best_shift(w, g, a, b, layout)
    assert energies[best] >= energies.max() * (1 - 1e-9)


@settings(max_examples=30, deadline=None)
@given(
    length=st.integers(1, 12),
    k=st.integers(1, 4),
    s=st.integers(1, 3),
    d=st.integers(1, 3),
    padding=st.sampled_from(["same", "valid"]),
)
def test_center_tap_window_matches_one_tap_conv(length, k, s, d, padding):
    if s > 1 and d > 1:
        d = 1
    assume(padding == "same" or length >= (k - 1) * d + 1)
    tap = (k - 1) // 2
    x = np.arange(1, length + 1, dtype="float32").reshape(1, length, 1, 1)
    kernel = np.zeros((k, 1, 1, 1), "float32")
    kernel[tap] = 1.0
    want = np.asarray(tf.nn.convolution(x, kernel, s, padding.upper(), dilations=d))[0, :, 0, 0]
    lo, hi, start, trim = dec.center_tap_window(length, k, s, d, padding, tap)
    xp = np.pad(x[0, :, 0, 0], (lo, hi))
    np.testing.assert_array_equal(xp[start : len(xp) - trim : s], want)
    if s == 1:
        assert dec.center_tap_window(None, k, s, d, padding, tap) == (lo, hi, start, trim)


# ---- the layer generalizes the Keras layers (same weights, same output) ------------------


def test_grouped_conv_is_a_configuration():
    x = _x((2, 9, 9, 8))
    ref = keras.layers.Conv2D(12, 3, groups=4, strides=2, padding="same")
    ref.build(x.shape)
    _randomize(ref)
    ss = SSConv2D(12, 3, groups=4, strides=2, padding="same", implementation="factorized")
    ss.build(x.shape)
    ss.set_weights(ref.get_weights())  # the same compact layout
    np.testing.assert_allclose(ss(x), ref(x), atol=1e-5)


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_is_a_configuration(multiplier):
    x = _x((2, 8, 8, 6))
    ref = keras.layers.DepthwiseConv2D(3, depth_multiplier=multiplier, padding="valid")
    ref.build(x.shape)
    _randomize(ref)
    ss = SSConv2D(6 * multiplier, 3, groups=6, implementation="factorized")
    ss.build(x.shape)
    k, bias = ref.get_weights()
    ss.set_weights([k.reshape(3, 3, 1, 6 * multiplier), bias])
    np.testing.assert_allclose(ss(x), ref(x), atol=1e-5)


@pytest.mark.parametrize("groups,kernel_size", [(1, 1), (2, 1), (1, 3), (2, 3)])
def test_pointwise_is_a_configuration(groups, kernel_size):
    x = _x((2, 7, 7, 8))
    ref = keras.layers.Conv2D(8, 1, groups=groups)
    ref.build(x.shape)
    _randomize(ref)
    # kernel_size=1: a (grouped) 1x1 conv; kernel_size=3 with kernel_span=0: every connection
    # is the centre tap of the 3x3 window (padding "same" keeps the size)
    ss = SSConv2D(
        8,
        kernel_size,
        groups=groups,
        kernel_span=0 if kernel_size > 1 else 1,
        pointwise_span=1 if kernel_size > 1 else 0,
        padding="same",
        implementation="factorized",
    )
    ss.build(x.shape)
    ss.set_weights(ref.get_weights())  # the compact layout of a grouped Conv2D
    np.testing.assert_allclose(ss(x), ref(x), atol=1e-5)


def test_hetconv_equals_masked_conv2d():
    x = _x((2, 10, 10, 8))
    het = SSConv2D(
        16,
        3,
        groups=4,
        pointwise_span=3,
        layout="interleaved",
        padding="same",
        implementation="factorized",
    )
    het.build(x.shape)
    _randomize(het)
    dense = het.to_conv2d()
    kern = dense.kernel.numpy()
    for n in range(16):  # HetConv-4: k x k on every 4th channel from n % 4, 1x1 elsewhere
        for c in range(8):
            nz = np.count_nonzero(kern[:, :, c, n])
            assert nz == (9 if c % 4 == n % 4 else 1)
            if nz == 1:
                assert kern[1, 1, c, n] != 0
    np.testing.assert_allclose(het(x), dense(x), atol=1e-5)


CONFIGS = [
    dict(groups=1),
    dict(groups=2),
    dict(groups=4, pointwise_span=3, layout="interleaved"),
    dict(groups=4, kernel_span=2, pointwise_span=1, shift=3),
    dict(groups=2, kernel_span=0, pointwise_span=1, layout="interleaved", shift=1),
    dict(groups=4, kernel_span=4),
    dict(groups=2, pointwise_span=1, shift=1),
]


@settings(max_examples=20, deadline=None)
@given(
    cfg=st.sampled_from(CONFIGS),
    k=st.sampled_from([1, 2, 3]),
    hw=st.integers(5, 9),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    padding=st.sampled_from(["same", "valid"]),
    impl=st.sampled_from(["factorized", "dense"]),
)
def test_from_conv2d_full_pattern_exact_and_paths_agree(
    cfg, k, hw, stride, dilation, padding, impl
):
    if stride > 1:
        dilation = 1
    x = _x((2, hw, hw, 8))
    conv = keras.layers.Conv2D(
        8, k, strides=stride, dilation_rate=dilation, padding=padding, activation="relu"
    )
    y_conv = conv(x)
    # groups=1: the pattern is the whole kernel, so the layer is exact
    full = SSConv2D.from_conv2d(conv, implementation=impl)
    np.testing.assert_allclose(full(x), y_conv, atol=1e-5)
    # any pattern: the layer equals the Conv2D of its projected kernel, on both paths
    ss = SSConv2D.from_conv2d(conv, implementation=impl, **cfg)
    assert ss.resolved_implementation == impl
    np.testing.assert_allclose(ss(x), ss.to_conv2d()(x), atol=1e-5)


def test_from_conv2d_error_falls_as_kernel_span_grows_and_best_shift_wins():
    conv = keras.layers.Conv2D(16, 3)
    conv.build((None, 8, 8, 16))
    errors = [
        SSConv2D.from_conv2d(conv, groups=8, rank=r).relative_error(conv) for r in range(1, 9)
    ]
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-6
    w = conv.kernel.numpy()
    for shift in range(16):
        fixed = SSConv2D.from_conv2d(conv, groups=4, pointwise_span=1, shift=shift)
        best = SSConv2D.from_conv2d(conv, groups=4, pointwise_span=1)
        assert best.relative_error(conv) <= fixed.relative_error(conv) + 1e-9
    kept = 1 - best.relative_error(conv) ** 2
    e = dec.ssc_shift_energies(w, 4, 1, 1)
    np.testing.assert_allclose(kept, e.max() / (w.astype(float) ** 2).sum(), rtol=1e-5)
    # energy picks the smallest kernel_span keeping that share
    by_energy = SSConv2D.from_conv2d(conv, groups=8, energy=0.5)
    shares = [1 - e**2 for e in errors]
    assert by_energy.kernel_span == next(r for r, s in enumerate(shares, 1) if s >= 0.5 - 1e-6)
    assert conv.kernel.shape == (3, 3, 16, 16)  # the user's layer is untouched
    np.testing.assert_array_equal(conv.kernel.numpy(), w)


# ---- arrangements of the factorized path --------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    a=st.integers(1, 8),
    b=st.integers(1, 8),
    s=st.integers(0, 63),
    seed=st.integers(0, 2**16),
)
def test_channel_shuffle_plan_and_shuffle_op(a, b, s, seed):
    c = a * b
    s %= c
    i, j = np.meshgrid(np.arange(a), np.arange(b), indexing="ij")
    index = np.empty(c, int)
    index[(j * a + i).ravel()] = ((i * b + j + s) % c).ravel()
    rs, ra, rb = dec.channel_shuffle_plan(index)
    got = np.empty(c, int)
    ii, jj = np.meshgrid(np.arange(ra), np.arange(rb), indexing="ij")
    got[(jj * ra + ii).ravel()] = ((ii * rb + jj + rs) % c).ravel()
    np.testing.assert_array_equal(got, index)
    x = _x((2, 3, 3, c))
    np.testing.assert_array_equal(np.asarray(_shuffle(x, index)), x[..., index])
    # any index at all: _shuffle is x[..., index] (a gather when not a rolled transpose)
    other = np.random.default_rng(seed).integers(0, c, size=c + 2)
    with pytest.raises(ValueError):
        dec.channel_shuffle_plan(other)
    np.testing.assert_array_equal(np.asarray(_shuffle(x, other)), x[..., other])


@settings(max_examples=25, deadline=None)
@given(
    # only valid patterns (1 <= a + b <= groups), drawn directly: no example is rejected
    gab=st.sampled_from(
        [(g, a, b) for g in (1, 2, 4) for a in range(5) for b in range(5) if 1 <= a + b <= g]
    ),
    cg=st.integers(1, 3),
    ng=st.integers(1, 3),
    k=st.sampled_from([1, 2, 3]),
    layout=st.sampled_from(dec.SSC_LAYOUTS),
    seed=st.integers(0, 2**16),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    padding=st.sampled_from(["same", "valid"]),
)
def test_arrangements_equal_the_masked_conv(
    gab, cg, ng, k, layout, seed, stride, dilation, padding
):
    """Every arrangement (and auto) computes the projected dense conv, on any pattern."""
    g, a, b = gab
    if stride > 1:
        dilation = 1
    c, n = g * cg, g * ng
    shift = int(np.random.default_rng(seed).integers(0, c))
    x = _x((2, 7, 7, c))
    cfg = dict(groups=g, kernel_span=a, pointwise_span=b, layout=layout, shift=shift)
    outs, ref = [], None
    for arrangement in ("grouped", "full_pointwise", "auto"):
        layer = SSConv2D(
            n,
            k,
            strides=stride,
            dilation_rate=dilation,
            padding=padding,
            implementation="factorized",
            arrangement=arrangement,
            **cfg,
        )
        layer.build((None, 7, 7, c))
        if ref is None:
            _randomize(layer)
            weights = layer.get_weights()
            ref = np.asarray(layer.to_conv2d()(x))
        layer.set_weights(weights)
        outs.append(np.asarray(layer(x)))
    for out in outs:
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-5)


def test_full_pointwise_executed_macs_and_auto_choice():
    het = dict(groups=4, pointwise_span=3, layout="interleaved")
    layer = SSConv2D(64, 3, padding="same", implementation="factorized", **het)
    layer.build((None, 8, 8, 64))
    assert layer.resolved_arrangement == "full_pointwise"  # cheaper by the LiteRT cost model
    assert layer.estimated_time("full_pointwise") < layer.estimated_time("grouped")
    structure = layer.cost((8, 8, 64)).macs
    assert structure == 64 * (9 * 16 * 64 + 3 * 16 * 64)  # 3 CN per pixel
    assert layer.executed_macs((8, 8, 64)) == 64 * (9 * 16 * 64 + 64 * 64)  # 3.25 CN
    set_ssc_implementation(layer, "factorized", arrangement="grouped")
    assert layer.executed_macs((8, 8, 64)) == structure
    set_ssc_implementation(layer, "dense")
    assert layer.executed_macs((8, 8, 64)) == 64 * 9 * 64 * 64
    narrow = SSConv2D(64, 3, padding="same", groups=4, pointwise_span=1)
    narrow.build((None, 8, 8, 64))
    assert narrow.resolved_arrangement == "grouped"  # C*N would cost more than b*C/G*N
    with pytest.raises(ValueError, match="arrangement"):
        SSConv2D(8, 3, arrangement="diagonal")


@pytest.mark.parametrize(
    "cfg",
    [
        dict(groups=4, pointwise_span=3, layout="interleaved"),  # HetConv-4
        dict(groups=4, pointwise_span=3, layout="interleaved", shift=5),
        dict(groups=4, pointwise_span=3, shift=3),
        dict(groups=4, pointwise_span=1),
    ],
)
def test_tflite_has_no_gather(cfg):
    inputs = keras.Input((8, 8, 16), batch_size=1)
    layer = SSConv2D(16, 3, padding="same", activation="relu", **cfg)
    model = keras.Model(inputs, layer(inputs))
    _randomize(layer)
    x = _x((1, 8, 8, 16))
    got, ops = tflite_run(model, x)
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)
    assert "GATHER" not in ops, ops
    assert "CONV_2D" in ops


def test_unknown_spatial_dims_and_old_configs_load():
    layer = SSConv2D(8, 3, groups=4, pointwise_span=3, layout="interleaved", shift=1)
    layer.build((None, None, None, 8))
    _randomize(layer)
    spec = tf.TensorSpec((None, None, None, 8), tf.float32)
    fn = tf.function(layer, input_signature=[spec])
    x = _x((2, 6, 5, 8))
    np.testing.assert_allclose(fn(x), layer.to_conv2d()(x), atol=1e-5)
    config = layer.get_config()
    del config["arrangement"]  # saved before the argument existed
    old = SSConv2D.from_config(config)
    old.build((None, 6, 5, 8))
    old.set_weights(layer.get_weights())
    assert old.arrangement == "auto"
    np.testing.assert_allclose(old(x), layer(x), atol=1e-5)


# ---- costs -------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS)
def test_cost_counts_nonzeros(cfg):
    layer = SSConv2D(8, 3, strides=2, padding="same", **cfg)
    layer.build((None, 10, 10, 8))
    _randomize(layer)
    nnz = np.count_nonzero(layer.to_conv2d().kernel.numpy())
    cost = layer.cost((10, 10, 8))
    assert cost.params == nnz + 8 == sum(math.prod(w.shape) for w in layer.trainable_weights)
    assert cost.macs == 5 * 5 * nnz
    assert layer_cost(layer, (1, 10, 10, 8)) == cost


# ---- bad input ---------------------------------------------------------------------------


def test_clear_errors():
    with pytest.raises(ValueError, match="groups=3 must divide.*choose groups among"):
        SSConv2D(8, 3, groups=3)
    layer = SSConv2D(8, 3, groups=4, name="ssc")
    with pytest.raises(ValueError, match="SSConv2D 'ssc'.*6 input channels.*\\[1, 2\\]"):
        layer.build((None, 8, 8, 6))
    with pytest.raises(ValueError, match="kernel_span \\+ pointwise_span"):
        SSConv2D(8, 3, groups=2, kernel_span=1, pointwise_span=2)
    with pytest.raises(ValueError, match="layout"):
        SSConv2D(8, 3, layout="diagonal")
    with pytest.raises(ValueError, match="alias"):
        SSConv2D(8, 3, groups=2, kernel_span=1, rank=2)
    with pytest.raises(ValueError, match="known spatial dims"):
        layer = SSConv2D(8, 3, groups=2, pointwise_span=1, strides=2, implementation="factorized")
        spec = tf.TensorSpec((None, None, None, 8), tf.float32)
        tf.function(layer, input_signature=[spec]).get_concrete_function()
    conv = keras.layers.Conv2D(8, 3)
    with pytest.raises(ValueError, match="not built"):
        SSConv2D.from_conv2d(conv)
    conv.build((None, 8, 8, 8))
    with pytest.raises(ValueError, match="energy"):
        SSConv2D.from_conv2d(conv, energy=1.5)
    with pytest.raises(ValueError, match="shift must be"):
        SSConv2D.from_conv2d(conv, groups=2, shift=8)


# ---- saving, export, training ------------------------------------------------------------


def test_keras_roundtrip_bit_exact(tmp_path):
    inputs = keras.Input((8, 8, 4))
    y = SSConv2D(8, 3, groups=2, pointwise_span=1, layout="interleaved", shift=1, padding="same")(
        inputs
    )
    y = SSConv2D(8, 3, groups=4, kernel_span=2, implementation="dense", activation="relu")(y)
    model = keras.Model(inputs, y)
    x = _x((3, 8, 8, 4))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert loaded.layers[1].get_config() == model.layers[1].get_config()


@pytest.mark.parametrize(
    "cfg",
    [
        dict(groups=4, pointwise_span=3, layout="interleaved"),
        dict(groups=8),  # depthwise
        dict(groups=2, kernel_span=0, pointwise_span=2),
    ],
)
def test_litert_builtin_ops_and_parity(cfg):
    inputs = keras.Input((12, 12, 8), batch_size=1)
    layer = SSConv2D(
        8, 3, strides=2, padding="same", activation="relu", implementation="factorized", **cfg
    )
    model = keras.Model(inputs, layer(inputs))
    _randomize(layer)
    assert layer.resolved_implementation == "factorized"
    x = _x((1, 12, 12, 8))
    got, ops = tflite_run(model, x)
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)
    assert not any("FLEX" in op.upper() for op in ops), ops
    assert "CONV_2D" in ops or "DEPTHWISE_CONV_2D" in ops


def test_set_implementation_keeps_outputs():
    inputs = keras.Input((8, 8, 8))
    model = keras.Model(inputs, SSConv2D(8, 3, groups=4, pointwise_span=1)(inputs))
    x = _x((2, 8, 8, 8))
    y = model(x)
    assert set_ssc_implementation(model, "dense") == 1
    assert model.layers[1].resolved_implementation == "dense"
    np.testing.assert_allclose(model(x), y, atol=1e-5)


def test_trains_on_digits(digits):
    x, y = digits
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            SSConv2D(
                32,
                3,
                groups=4,
                pointwise_span=3,
                layout="interleaved",
                padding="same",
                activation="relu",
            ),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    hist = model.fit(x[:1500], y[:1500], epochs=3, batch_size=32, verbose=0)
    _, acc = model.evaluate(x[1500:], y[1500:], verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert acc > 0.85


def test_auto_runs_dense_in_keras():
    """TensorFlow's grouped convs are far slower than dense ones on CPU (benchmarks/layers.py),
    so "auto" runs the dense path; the outputs are the same as the grouped ops'."""
    layer = SSConv2D(8, 3, groups=4, padding="same")
    fact = SSConv2D(8, 3, groups=4, padding="same", implementation="factorized")
    x = _x((2, 9, 9, 8))
    layer(x)
    fact(x)
    assert layer.resolved_implementation == "dense"
    fact.set_weights(layer.get_weights())
    np.testing.assert_allclose(layer(x), fact(x), atol=1e-5)
