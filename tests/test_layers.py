"""Equivalence, truncation, folding, serialization and errors of DeCEF, BasisConv and SVD."""

import keras
import numpy as np
import pytest
from helpers import max_rel_err as _max_err
from helpers import random_conv as _conv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_eigenconv import BasisConv2D, DeCEFConv2D, SVDConv2D

# (class, constructor/method options)
METHODS = [
    (DeCEFConv2D, {}),
    (BasisConv2D, {}),
    (BasisConv2D, {"trainable_basis": True}),
    (SVDConv2D, {"decomposition": "channel"}),
    (SVDConv2D, {"decomposition": "spatial"}),
]
IDS = ["decef", "basis", "basis-trainable", "svd-channel", "svd-spatial"]


conv_configs = st.fixed_dictionaries(
    {
        "filters": st.integers(1, 9),
        "kernel_size": st.sampled_from([1, 3, 5, (3, 1), (1, 3), (2, 3), (5, 3)]),
        "padding": st.sampled_from(["same", "valid"]),
        "use_bias": st.booleans(),
        "activation": st.sampled_from([None, "relu", "tanh"]),
        "step": st.sampled_from([("s", 1), ("s", 2), ("s", (2, 1)), ("d", 2), ("d", (1, 2))]),
    }
)


@pytest.mark.parametrize("cls,opts", METHODS, ids=IDS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=conv_configs, channels=st.integers(1, 6), size=st.integers(9, 14))
def test_full_rank_reproduces_conv2d(cls, opts, cfg, channels, size):
    cfg = dict(cfg)
    kind, step = cfg.pop("step")
    cfg["strides" if kind == "s" else "dilation_rate"] = step
    x = np.random.default_rng(1).normal(size=(2, size, size + 1, channels)).astype("float32")
    conv = _conv(x.shape, **cfg)
    expected = conv(x)
    for impl in ("factorized", "dense"):
        layer = cls.from_conv2d(conv, implementation=impl, **opts)
        assert _max_err(expected, layer(x)) < 2e-5, (impl, layer.rank)
        assert layer(x).shape == expected.shape
        assert layer.compute_output_shape(x.shape) == tuple(expected.shape)


@pytest.mark.parametrize("cls,opts", METHODS, ids=IDS)
def test_truncation_error_falls_with_rank(cls, opts):
    x = np.random.default_rng(2).normal(size=(2, 10, 10, 6)).astype("float32")
    conv = _conv(x.shape, filters=12, kernel_size=3, padding="same")
    y = np.asarray(conv(x))
    full = cls.from_conv2d(conv, **opts).rank
    kernel_err, out_err = [], []
    for r in range(1, full + 1):
        layer = cls.from_conv2d(conv, rank=r, **opts)
        assert layer.rank == r
        kernel_err.append(layer.relative_error(conv))
        out_err.append(np.linalg.norm(np.asarray(layer(x)) - y))
    assert all(a >= b - 1e-6 for a, b in zip(kernel_err, kernel_err[1:])), kernel_err
    assert kernel_err[0] > 0.1 and kernel_err[-1] < 1e-5
    # the output error follows the kernel error (not strictly monotone for every input)
    assert out_err[0] > out_err[-1] and out_err[-1] < 1e-3 * out_err[0] + 1e-4


@pytest.mark.parametrize("cls,opts", METHODS, ids=IDS)
def test_energy_picks_smallest_rank_keeping_energy(cls, opts):
    conv = _conv((1, 8, 8, 5), filters=10, kernel_size=3)
    for energy in (0.3, 0.7, 0.95, 1.0):
        layer = cls.from_conv2d(conv, energy=energy, **opts)
        kept = 1 - layer.relative_error(conv) ** 2
        assert kept >= energy - 1e-6
        if layer.rank > 1:
            smaller = cls.from_conv2d(conv, rank=layer.rank - 1, **opts)
            assert 1 - smaller.relative_error(conv) ** 2 < energy


@pytest.mark.parametrize("cls,opts", METHODS, ids=IDS)
def test_to_conv2d_returns_the_original_kernel(cls, opts):
    x = np.random.default_rng(3).normal(size=(1, 9, 9, 4)).astype("float32")
    conv = _conv(
        x.shape, filters=7, kernel_size=(3, 5), strides=2, padding="same", activation="relu"
    )
    back = cls.from_conv2d(conv, **opts).to_conv2d()
    np.testing.assert_allclose(back.kernel, conv.kernel, atol=2e-5)
    np.testing.assert_allclose(back.bias, conv.bias, atol=1e-6)
    assert back.strides == conv.strides and back.padding == conv.padding
    assert _max_err(conv(x), back(x)) < 2e-5


def test_basis_batchnorm_is_exact_in_inference_and_folds():
    x = np.random.default_rng(4).normal(size=(2, 9, 9, 3)).astype("float32")
    conv = _conv(x.shape, filters=6, kernel_size=3, padding="same")
    layer = BasisConv2D.from_conv2d(conv, batch_norm=True)
    assert layer.resolved_implementation == "factorized"
    assert _max_err(conv(x), layer(x, training=False)) < 2e-5
    # moving statistics that differ from the identity still fold exactly
    layer.bn.moving_mean.assign(np.linspace(-1, 1, layer.rank).astype("float32"))
    layer.bn.moving_variance.assign(np.linspace(0.5, 2, layer.rank).astype("float32"))
    layer.bn.gamma.assign(np.linspace(0.5, 1.5, layer.rank).astype("float32"))
    assert _max_err(layer(x, training=False), layer.to_conv2d()(x)) < 2e-5
    with pytest.raises(ValueError, match="dense"):
        BasisConv2D(4, 3, rank=2, batch_norm=True, implementation="dense")


def test_implementation_auto_follows_the_cost_model():
    # DeCEF at high rank: depthwise with multiplier 6 costs more than a dense conv -> dense.
    high = DeCEFConv2D(64, 3, rank=6)
    high.build((None, 16, 16, 64))
    assert high.resolved_implementation == "dense"
    low = DeCEFConv2D(64, 3, rank=1)
    low.build((None, 16, 16, 64))
    assert low.resolved_implementation == "factorized"
    svd = SVDConv2D(64, 3, rank=16)
    svd.build((None, 16, 16, 64))
    assert svd.resolved_implementation == "factorized"
    full = SVDConv2D(64, 3, rank=64)  # more MACs than the conv: run the conv
    full.build((None, 56, 56, 64))
    assert full.resolved_implementation == "dense"
    # at 7x7, rebuilding a rank-307 kernel per call costs 6x the conv itself
    deep = SVDConv2D(512, 3, rank=307)
    deep.build((None, 7, 7, 512))
    assert deep.resolved_implementation == "factorized"
    assert deep.time_ratio_estimate((None, 7, 7, 512)) < 0.2


def test_from_scratch_initialization_keeps_the_initializer_scale():
    c, n = 32, 48
    for cls, opts in METHODS:
        layer = cls(n, 3, rank=4, kernel_initializer="glorot_normal", **opts)
        layer.build((None, 8, 8, c))
        k = np.asarray(layer.full_kernel())
        expected_std = np.sqrt(2.0 / (9 * c + 9 * n))
        assert abs(k.std() / expected_std - 1) < 0.15, (cls.__name__, opts, k.std())


def test_basis_from_scratch_is_seeded_orthogonal_and_frozen():
    a = BasisConv2D(8, 3, rank=5, seed=7)
    b = BasisConv2D(8, 3, rank=5, seed=7)
    a.build((None, 6, 6, 3))
    b.build((None, 6, 6, 3))
    fa = np.asarray(a.basis).reshape(27, 5)
    np.testing.assert_allclose(fa.T @ fa, np.eye(5), atol=1e-5)
    np.testing.assert_array_equal(fa, np.asarray(b.basis).reshape(27, 5))
    assert not a.basis.trainable and a.combination.trainable
    assert [w.name for w in a.trainable_weights] == ["combination", "bias"]


@pytest.mark.parametrize(
    "cls,opts", METHODS + [(BasisConv2D, {"batch_norm": True})], ids=IDS + ["basis-bn"]
)
def test_keras_file_round_trip_is_bit_exact(cls, opts, tmp_path):
    inputs = keras.Input((10, 10, 3))
    layer = cls(
        8, 3, rank=3, padding="same", activation="relu", seed=1, kernel_regularizer="l2", **opts
    )
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(layer(inputs)))
    x = np.random.default_rng(5).normal(size=(2, 10, 10, 3)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.layers[1]) is cls
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    for w1, w2 in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(w1, w2)
        assert w1.trainable == w2.trainable


@pytest.mark.parametrize("cls,opts", METHODS, ids=IDS)
def test_config_round_trip(cls, opts):
    layer = cls(
        8,
        (3, 5),
        rank=2,
        strides=(2, 1),
        padding="same",
        activation="gelu",
        use_bias=False,
        implementation="factorized",
        kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.L2(1e-3),
        kernel_constraint="max_norm",
        seed=3,
        name="x",
        **opts,
    )
    config = layer.get_config()
    clone = cls.from_config(config)
    assert clone.get_config() == config
    for key, value in opts.items():
        assert config[key] == value


def test_keras_serialization_names_the_package():
    ser = keras.saving.serialize_keras_object(DeCEFConv2D(4, 3, rank=2))
    assert ser["registered_name"] == "keras_eigenconv>DeCEFConv2D"


@pytest.mark.parametrize("cls", [DeCEFConv2D, BasisConv2D, SVDConv2D])
def test_clear_errors(cls):
    conv = _conv((1, 8, 8, 3), filters=4, kernel_size=3)
    with pytest.raises(ValueError, match=r"rank=0 is outside"):
        cls.from_conv2d(conv, rank=0)
    with pytest.raises(ValueError, match=r"rank=99 is outside \[1, \d+\]"):
        cls.from_conv2d(conv, rank=99)
    with pytest.raises(ValueError, match="rank=0"):
        cls(4, 3, rank=0)
    too_big = cls(4, 3, rank=50, name="big")
    with pytest.raises(ValueError, match="'big'.*rank=50"):
        too_big.build((None, 8, 8, 3))
    for energy in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"energy.*\(0, 1\]"):
            cls.from_conv2d(conv, energy=energy)
    with pytest.raises(ValueError, match="not both"):
        cls.from_conv2d(conv, rank=1, energy=0.5)
    grouped = keras.layers.Conv2D(4, 3, groups=2, name="grp")
    grouped.build((1, 8, 8, 4))
    with pytest.raises(ValueError, match="'grp' has groups=2"):
        cls.from_conv2d(grouped)
    with pytest.raises(ValueError, match="channels_last"):
        cls(4, 3, rank=1, data_format="channels_first")
    cf = keras.layers.Conv2D(4, 3, data_format="channels_first", name="cf")
    cf.build((1, 3, 8, 8))
    with pytest.raises(ValueError, match="'cf'.*channels_first"):
        cls.from_conv2d(cf)
    with pytest.raises(ValueError, match="not built"):
        cls.from_conv2d(keras.layers.Conv2D(4, 3, name="unbuilt"))
    for bad in (np.nan, np.inf):
        broken = _conv((1, 8, 8, 3), filters=4, kernel_size=3, name="broken")
        k = np.asarray(broken.kernel).copy()
        k[0, 0, 0, 0] = bad
        broken.kernel.assign(k)
        with pytest.raises(ValueError, match="'broken' contains NaN or Inf"):
            cls.from_conv2d(broken)
    with pytest.raises(ValueError, match="needs a keras.layers.Conv2D"):
        cls.from_conv2d(keras.layers.DepthwiseConv2D(3))
    with pytest.raises(ValueError, match="dilation_rate"):
        cls(4, 3, rank=1, strides=2, dilation_rate=2)
    with pytest.raises(ValueError, match="implementation"):
        cls(4, 3, rank=1, implementation="fast")


def test_from_conv2d_does_not_touch_the_source_layer():
    conv = _conv((1, 8, 8, 3), filters=4, kernel_size=3, activation="relu")
    before = [np.asarray(w).copy() for w in conv.weights]
    config = conv.get_config()
    DeCEFConv2D.from_conv2d(conv, rank=2)
    assert conv.get_config() == config
    for a, b in zip(before, conv.weights):
        np.testing.assert_array_equal(a, b)
