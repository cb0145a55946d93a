"""Tucker2Conv2D and CPConv2D: equivalence, truncation, rank rules, saving, LiteRT, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from helpers import max_rel_err as _max_err
from helpers import random_conv as _conv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_eigenconv import decompositions as dec
from keras_eigenconv import model_cost
from keras_eigenconv.layers import CPConv2D, Tucker2Conv2D

conv_configs = st.fixed_dictionaries(
    {
        "filters": st.integers(1, 7),
        "kernel_size": st.sampled_from([1, 3, (3, 1), (1, 3), (2, 3), (5, 3)]),
        "padding": st.sampled_from(["same", "valid"]),
        "use_bias": st.booleans(),
        "activation": st.sampled_from([None, "relu"]),
        "step": st.sampled_from([("s", 1), ("s", 2), ("s", (2, 1)), ("d", 2), ("d", (1, 2))]),
    }
)


@pytest.mark.parametrize("cls", [Tucker2Conv2D, CPConv2D])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=conv_configs, channels=st.integers(1, 5), size=st.integers(9, 13))
def test_full_rank_reproduces_conv2d(cls, cfg, channels, size):
    cfg = dict(cfg)
    kind, step = cfg.pop("step")
    cfg["strides" if kind == "s" else "dilation_rate"] = step
    x = np.random.default_rng(1).normal(size=(2, size, size + 1, channels)).astype("float32")
    conv = _conv(x.shape, **cfg)
    expected = conv(x)
    for impl in ("factorized", "dense"):
        layer = cls.from_conv2d(conv, implementation=impl)
        assert layer.resolved_implementation == impl
        assert _max_err(expected, layer(x)) < 2e-5, (impl, layer.rank)
        assert layer.compute_output_shape(x.shape) == tuple(expected.shape)


def test_tucker_error_falls_with_rank_and_pairs_work():
    conv = _conv((1, 8, 8, 6), filters=10, kernel_size=3)
    errs = [
        Tucker2Conv2D.from_conv2d(conv, rank=(r, r + 4)).relative_error(conv) for r in range(1, 7)
    ]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[0] > 0.3 and errs[-1] < 1e-5
    layer = Tucker2Conv2D.from_conv2d(conv, rank=(3, 5))
    assert layer.ranks == (3, 5) and layer.first.shape == (1, 1, 6, 3)
    assert layer.core.shape == (3, 3, 3, 5) and layer.last.shape == (1, 1, 5, 10)
    assert Tucker2Conv2D.from_conv2d(conv, rank=4).ranks == (4, 4)


def test_tucker_energy_and_vbmf_rank_rules():
    conv = _conv((1, 8, 8, 8), filters=12, kernel_size=3)
    w = np.asarray(conv.kernel, np.float64)
    s_in, s_out = dec.tucker2_spectra(w)
    for e in (0.5, 0.9):
        r1, r2 = Tucker2Conv2D.from_conv2d(conv, energy=e).ranks
        assert s_in[:r1].sum() / s_in.sum() >= e > s_in[: r1 - 1].sum() / s_in.sum()
        assert s_out[:r2].sum() / s_out.sum() >= e > s_out[: r2 - 1].sum() / s_out.sum()
    # a kernel of channel ranks (2, 3) plus small noise: VBMF finds both
    rng = np.random.default_rng(5)
    core = rng.normal(size=(3, 3, 2, 3))
    lowrank = np.einsum("ca,xyab,nb->xycn", rng.normal(size=(8, 2)), core, rng.normal(size=(12, 3)))
    conv.kernel.assign((lowrank + 0.01 * rng.normal(size=lowrank.shape)).astype("float32"))
    layer = Tucker2Conv2D.from_conv2d(conv, rank="vbmf")
    assert layer.ranks == (2, 3)
    assert layer.relative_error(conv) < 0.05


def test_vbmf_rank_recovers_the_rank_of_noisy_matrices():
    rng = np.random.default_rng(0)
    for true, shape in [(1, (40, 90)), (5, (64, 144)), (12, (200, 80))]:
        y = rng.normal(size=(shape[0], true)) @ rng.normal(size=(true, shape[1]))
        y += 0.5 * rng.normal(size=shape)
        assert dec.vbmf_rank(y) == true
    assert dec.vbmf_rank(rng.normal(size=(30, 50))) == 0  # pure noise
    with pytest.raises(ValueError, match="2-D"):
        dec.vbmf_rank(np.ones(5))


def test_cp_error_falls_and_is_reported():
    conv = _conv((1, 8, 8, 4), filters=6, kernel_size=3)
    layers = [CPConv2D.from_conv2d(conv, rank=r) for r in (2, 8, 20, 36)]
    errs = [layer.decomposition_error for layer in layers]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[0] > 0.3 and errs[-1] < 1e-6  # 36 = 3*3*min(4, 6): exact
    for layer in layers:
        assert layer.decomposition_error == pytest.approx(layer.relative_error(conv), abs=1e-6)


def test_cp_is_exact_where_the_cp_rank_suffices():
    rng = np.random.default_rng(3)
    r = 3
    w = np.einsum("xr,yr,cr,nr->xycn", *(rng.normal(size=(d, r)) for d in (3, 3, 5, 7)))
    conv = _conv((1, 8, 8, 5), filters=7, kernel_size=3)
    conv.kernel.assign(w.astype("float32"))
    layer = CPConv2D.from_conv2d(conv, rank=r)
    assert layer.decomposition_error < 1e-4
    # energy finds that rank (a smaller one cannot keep 99.99%)
    assert CPConv2D.from_conv2d(conv, energy=0.9999).rank == r


@pytest.mark.parametrize("cls,rank", [(Tucker2Conv2D, (3, 4)), (CPConv2D, 5)])
def test_keras_round_trip_and_config(cls, rank, tmp_path):
    inputs = keras.Input((10, 10, 4))
    layer = cls(6, 3, rank=rank, strides=2, padding="same", activation="relu")
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(0).normal(size=(2, 10, 10, 4)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    clone = cls.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert type(loaded.layers[-1]) is cls


@pytest.mark.parametrize("cls,rank", [(Tucker2Conv2D, (3, 4)), (CPConv2D, 5)])
@pytest.mark.parametrize("impl", ["factorized", "dense"])
def test_litert_matches_keras(cls, rank, impl):
    inputs = keras.Input((12, 12, 4), batch_size=1)
    layer = cls(6, 3, rank=rank, strides=2, padding="same", implementation=impl)
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(0).normal(size=(1, 12, 12, 4)).astype("float32")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interp = Interpreter(model_content=converter.convert())
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)


def test_costs_count_the_factor_ops():
    t = Tucker2Conv2D(32, 3, rank=(8, 16), padding="same")
    t.build((None, 16, 16, 24))
    c = t.cost((16, 16, 24))
    assert c.params == 24 * 8 + 9 * 8 * 16 + 16 * 32 + 32
    assert c.macs == 256 * (24 * 8 + 9 * 8 * 16 + 16 * 32)
    cp = CPConv2D(32, 3, rank=10, padding="same")
    inputs = keras.Input((16, 16, 24))
    model = keras.Model(inputs, cp(inputs))
    assert model.count_params() == 10 * (24 + 3 + 3 + 32) + 32
    assert model_cost(model).total.macs == 256 * 10 * (24 + 3 + 3 + 32)


def test_clear_errors():
    with pytest.raises(ValueError, match="Tucker2Conv2D.*pair"):
        Tucker2Conv2D(8, 3, rank=(1, 2, 3))
    with pytest.raises(ValueError, match="outside"):
        Tucker2Conv2D(8, 3, rank=(2, 9)).build((None, 8, 8, 4))
    conv = _conv((1, 8, 8, 4), filters=6, kernel_size=3)
    with pytest.raises(ValueError, match="vbmf"):
        Tucker2Conv2D.from_conv2d(conv, rank="bayes")
    with pytest.raises(ValueError, match="energy"):
        Tucker2Conv2D.from_conv2d(conv, energy=1.5)
    with pytest.raises(ValueError, match="not both"):
        CPConv2D.from_conv2d(conv, rank=2, energy=0.5)
    with pytest.raises(ValueError, match="outside"):
        CPConv2D.from_conv2d(conv, rank=37)
    with pytest.raises(ValueError, match="needs a keras.layers.Conv2D"):
        CPConv2D.from_conv2d(keras.layers.Dense(3))
    before = np.asarray(conv.kernel).copy()
    Tucker2Conv2D.from_conv2d(conv, rank=2)
    CPConv2D.from_conv2d(conv, rank=2)
    np.testing.assert_array_equal(before, conv.kernel)  # the user's layer is untouched
