"""TTConv2D, NaiveTTConv2D and TTDense: equivalence, truncation, init, saving, LiteRT, errors."""

import keras
import numpy as np
import pytest
from helpers import max_rel_err as _max_err
from helpers import random_conv as _conv
from helpers import tflite_run as _litert
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_eigenconv import model_cost
from keras_eigenconv.layers import NaiveTTConv2D, TTConv2D, TTDense


def _dense(m, units, seed=0, **kwargs):
    dense = keras.layers.Dense(units, **kwargs)
    dense.build((None, m))
    rng = np.random.default_rng(seed)
    dense.kernel.assign(rng.normal(size=(m, units)).astype("float32"))
    dense.bias.assign(rng.normal(size=units).astype("float32"))
    return dense


conv_configs = st.fixed_dictionaries(
    {
        "filters": st.sampled_from([1, 4, 6, 8, 12]),
        "kernel_size": st.sampled_from([1, 3, (3, 1), (2, 3), 5]),
        "padding": st.sampled_from(["same", "valid"]),
        "use_bias": st.booleans(),
        "step": st.sampled_from([("s", 1), ("s", 2), ("s", (2, 1)), ("d", 2), ("d", (1, 2))]),
    }
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cfg=conv_configs,
    channels=st.sampled_from([1, 2, 4, 6, 8]),
    num_modes=st.integers(1, 3),
    size=st.integers(9, 12),
)
def test_full_tt_rank_reproduces_conv2d(cfg, channels, num_modes, size):
    cfg = dict(cfg)
    kind, step = cfg.pop("step")
    cfg["strides" if kind == "s" else "dilation_rate"] = step
    x = np.random.default_rng(1).normal(size=(2, size, size + 1, channels)).astype("float32")
    conv = _conv(x.shape, **cfg)
    expected = conv(x)
    for impl in ("factorized", "dense"):
        layer = TTConv2D.from_conv2d(conv, implementation=impl, num_modes=num_modes)
        assert layer.resolved_implementation == impl
        assert len(layer.modes(channels)[0]) == num_modes
        assert _max_err(expected, layer(x)) < 2e-5, (impl, layer.rank, layer.modes(channels))
        assert layer.compute_output_shape(x.shape) == tuple(expected.shape)
    naive = NaiveTTConv2D.from_conv2d(conv)
    assert _max_err(expected, naive(x)) < 2e-5


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.sampled_from([1, 6, 12, 16, 30]),
    units=st.sampled_from([1, 4, 8, 10]),
    num_modes=st.integers(1, 4),
    activation=st.sampled_from([None, "relu"]),
)
def test_full_tt_rank_reproduces_dense(m, units, num_modes, activation):
    dense = _dense(m, units, activation=activation)
    x = np.random.default_rng(2).normal(size=(3, m)).astype("float32")
    x3 = np.random.default_rng(3).normal(size=(2, 5, m)).astype("float32")
    for impl in ("factorized", "dense"):
        layer = TTDense.from_dense(dense, implementation=impl, num_modes=num_modes)
        assert layer.resolved_implementation == impl
        assert _max_err(dense(x), layer(x)) < 2e-5
        assert _max_err(dense(x3), layer(x3)) < 2e-5
        assert layer(x3).shape == (2, 5, units)


def test_error_falls_with_tt_rank_and_energy_keeps_energy():
    conv = _conv((1, 8, 8, 8), filters=16, kernel_size=3)
    full = TTConv2D.from_conv2d(conv, num_modes=2).tt_ranks(8)
    errs = [
        TTConv2D.from_conv2d(conv, rank=r, num_modes=2).relative_error(conv)
        for r in (1, 2, 4, 8, 16, 32)
    ]
    assert all(a > b for a, b in zip(errs, errs[1:-1])), errs
    assert errs[0] > 0.5 and errs[-1] < 1e-5, (errs, full)
    naive = [NaiveTTConv2D.from_conv2d(conv, rank=r).relative_error(conv) for r in (1, 3, 9, 72)]
    assert all(a > b for a, b in zip(naive, naive[1:])) and naive[-1] < 1e-5, naive
    dense = _dense(64, 32)
    derrs = [TTDense.from_dense(dense, rank=r).relative_error(dense) for r in (1, 2, 4, 8, 16)]
    assert all(a > b for a, b in zip(derrs, derrs[1:])) and derrs[-1] < 1e-5, derrs
    for e in (0.5, 0.9, 0.99):
        for layer, ref in (
            (TTConv2D.from_conv2d(conv, energy=e), conv),
            (NaiveTTConv2D.from_conv2d(conv, energy=e), conv),
            (TTDense.from_dense(dense, energy=e), dense),
        ):
            assert 1 - layer.relative_error(ref) ** 2 >= e - 1e-6


def test_paper_rank_lists_and_ranks_above_full_are_exact():
    layer = TTConv2D(64, 3, rank=[22, 20, 20, 1])  # r0 = 22 > 3*3, as in the paper
    layer.build((None, 8, 8, 64))
    assert layer.tt_ranks(64) == (22, 20, 20, 1) and layer.modes(64) == ((4, 4, 4), (4, 4, 4))
    assert layer.count_params() == 22 * 9 + 22 * 16 * 20 + 20 * 16 * 20 + 20 * 16 + 64
    conv = _conv((1, 6, 6, 4), filters=4, kernel_size=3)
    big = TTConv2D.from_conv2d(conv, rank=[30, 30], num_modes=2)
    assert big.tt_ranks(4) == (30, 30, 1) and big.relative_error(conv) < 1e-6
    dense_layer = TTDense(16, rank=[1, 5, 1], in_modes=(4, 6), out_modes=(4, 4))
    dense_layer.build((None, 24))
    assert dense_layer.tt_ranks(24) == (1, 5, 1)


def test_glorot_scaled_core_init_matches_glorot_normal_variance():
    c, n = 64, 128
    target = 2.0 / (9 * c + 9 * n)
    layer = TTConv2D(n, 3, rank=[16, 16, 16], kernel_initializer="glorot_normal", seed=1)
    layer.build((None, 8, 8, c))
    k = np.asarray(layer.full_kernel())
    assert abs(k.var() / target - 1) < 0.1
    # every core has the same share: sigma^2 = (target / (16 * 16 * 16)) ** (1 / 4)
    sigma = (target / 16**3) ** (1 / 8)
    for name in layer._factor_names:
        assert abs(np.asarray(getattr(layer, name)).std() / sigma - 1) < 0.15, name
    # TTDense: sigma per core from the closed-form Glorot variance; average over seeds
    ratios = []
    for seed in range(4):
        dense = TTDense(
            256,
            rank=16,
            in_modes=(8, 8, 8),
            out_modes=(8, 8, 4),
            kernel_initializer="glorot_normal",
            seed=seed,
        )
        dense.build((None, 512))
        ratios.append(np.asarray(dense.full_kernel()).var() / (2.0 / (512 + 256)))
    assert abs(np.mean(ratios) - 1) < 0.2, ratios


def test_to_conv2d_and_to_dense_return_the_original_kernels():
    conv = _conv(
        (1, 9, 9, 4), filters=8, kernel_size=3, strides=2, padding="same", activation="relu"
    )
    back = TTConv2D.from_conv2d(conv).to_conv2d()
    np.testing.assert_allclose(back.kernel, conv.kernel, atol=2e-5)
    assert back.strides == conv.strides and back.activation is conv.activation
    dense = _dense(24, 12, activation="tanh")
    back = TTDense.from_dense(dense).to_dense()
    np.testing.assert_allclose(back.kernel, dense.kernel, atol=2e-5)
    np.testing.assert_allclose(back.bias, dense.bias)


def _tt_model(impl):
    inputs = keras.Input((8, 8, 4))
    y = TTConv2D(8, 3, rank=3, padding="same", activation="relu", num_modes=2, implementation=impl)(
        inputs
    )
    y = NaiveTTConv2D(6, 3, rank=[2, 3, 2], strides=2)(y)
    y = keras.layers.Flatten()(y)
    y = TTDense(10, rank=[1, 4, 1], in_modes=(6, 9), out_modes=(2, 5), implementation=impl)(y)
    return keras.Model(inputs, y)


@pytest.mark.parametrize("impl", ["factorized", "dense"])
def test_keras_round_trip_and_config(impl, tmp_path):
    model = _tt_model(impl)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype("float32")
    path = tmp_path / "tt.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    for layer in model.layers[1:]:
        if isinstance(layer, (TTConv2D, NaiveTTConv2D, TTDense)):
            clone = type(layer).from_config(layer.get_config())
            assert clone.get_config() == layer.get_config()
    # model_cost and count_params agree on the parameters
    assert model_cost(model).total.params == model.count_params()


@pytest.mark.parametrize("impl", ["factorized", "dense"])
def test_litert_matches_keras(impl):
    inputs = keras.Input((10, 10, 8), batch_size=1)
    y = TTConv2D(12, 3, rank=[4, 5], strides=2, padding="same", num_modes=2, implementation=impl)(
        inputs
    )
    y = keras.layers.Flatten()(y)
    y = TTDense(6, rank=3, in_modes=(10, 30), out_modes=(2, 3), implementation=impl)(y)
    model = keras.Model(inputs, y)
    x = np.random.default_rng(0).normal(size=(1, 10, 10, 8)).astype("float32")
    got, ops = _litert(model, x)
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)
    assert not any("FLEX" in op.upper() for op in ops), ops
    if impl == "factorized":
        assert "DEPTHWISE_CONV_2D" in ops and "CONV_2D" not in ops


def test_costs():
    layer = TTConv2D(
        16,
        3,
        rank=[5, 4],
        in_modes=(2, 4),
        out_modes=(4, 4),
        padding="same",
        implementation="factorized",
    )
    layer.build((None, 8, 8, 8))
    params = 9 * 5 + 5 * 2 * 4 * 4 + 4 * 4 * 4 + 16
    contract = 4 * (5 * 2 * 4 * 4) + 4 * (4 * 4 * 4)  # per pixel: S*R*c*a*s*b
    c = layer.cost((8, 8, 8))
    assert c.params == params == layer.count_params()
    assert c.macs == 64 * (9 * 8 * 5 + contract)
    dense_impl = TTConv2D(16, 3, rank=[5, 4], num_modes=2, implementation="dense")
    dense_impl.build((None, 8, 8, 8))
    assert dense_impl.cost((8, 8, 8)).macs == 36 * 9 * 8 * 16  # valid: 6x6 out
    d = TTDense(8, rank=3, in_modes=(4, 6), out_modes=(2, 4), implementation="factorized")
    d.build((None, 24))
    assert d.cost((None, 24)).params == 4 * 2 * 3 + 3 * 6 * 4 + 8 == d.count_params()
    assert d.cost((None, 24)).macs == 6 * 4 * 2 * 3 + 2 * 3 * 6 * 4  # 288 > 24 * 8
    auto = TTDense(8, rank=3, in_modes=(4, 6), out_modes=(2, 4))
    auto.build((None, 24))
    assert auto.resolved_implementation == "dense"  # the fewer MACs
    assert auto.cost((None, 5, 24)).macs == 5 * 24 * 8
    tt_auto = TTConv2D(16, 3, rank=2, num_modes=2)
    tt_auto.build((None, 8, 8, 8))
    assert tt_auto.resolved_implementation == "dense"  # measured: factorized is slower


def test_clear_errors():
    with pytest.raises(ValueError, match="TTConv2D.*out_modes.*product is 8"):
        TTConv2D(8, 3, rank=2, out_modes=(2, 2))
    with pytest.raises(ValueError, match="same length"):
        TTConv2D(8, 3, rank=2, in_modes=(2, 2), out_modes=(2, 4, 1))
    with pytest.raises(ValueError, match="in_modes.*product is 6"):
        TTConv2D(8, 3, rank=2, in_modes=(2, 2), out_modes=(2, 4)).build((None, 8, 8, 6))
    with pytest.raises(ValueError, match="3 TT-ranks"):
        TTConv2D(8, 3, rank=[2, 2], num_modes=3)
    with pytest.raises(ValueError, match="implementation"):
        TTDense(8, rank=2, implementation="fast")
    with pytest.raises(ValueError, match="from_dense needs a keras.layers.Dense"):
        TTDense.from_dense(keras.layers.Conv2D(3, 3))
    with pytest.raises(ValueError, match="not built"):
        TTDense.from_dense(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="not both"):
        TTConv2D.from_conv2d(_conv((1, 6, 6, 4), filters=4, kernel_size=3), rank=2, energy=0.5)
    dense = _dense(12, 4)
    before = np.asarray(dense.kernel).copy()
    TTDense.from_dense(dense, rank=2)
    np.testing.assert_array_equal(before, dense.kernel)
    # "full" is the paper's name for the dense path
    assert TTConv2D(8, 3, rank=2, implementation="full").implementation == "dense"
