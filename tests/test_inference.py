"""prepare_for_inference: equivalent arrangements, BatchNorm folding, the LiteRT timing cache."""

import json

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_eigenconv import BasisConv2D, DeCEFConv2D, SVDConv2D
from keras_eigenconv.deploy import (
    CostModel,
    LiteRTTimer,
    candidate_arrangements,
    fold_batchnorm,
    prepare_for_inference,
)
from keras_eigenconv.layers import ChannelTile


@pytest.fixture(autouse=True)
def _timing_cache(tmp_path, monkeypatch):
    path = tmp_path / "timings.json"
    monkeypatch.setenv("KERAS_EIGENCONV_TIMING_CACHE", str(path))
    return path


def _randomize_bn(bn, rng):
    n = bn.moving_mean.shape[0]
    bn.moving_mean.assign(rng.normal(size=n))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=n))
    bn.gamma.assign(rng.uniform(0.5, 1.5, size=n))
    bn.beta.assign(rng.normal(size=n))


def _run(layers, x):
    for layer in layers:
        x = layer(x)
    return np.asarray(x)


LAYERS = [
    (DeCEFConv2D, {}),
    (SVDConv2D, {"decomposition": "channel"}),
    (SVDConv2D, {"decomposition": "spatial"}),
    (BasisConv2D, {"batch_norm": True}),
]


@settings(max_examples=12, deadline=None)
@given(
    which=st.integers(0, len(LAYERS) - 1),
    c=st.integers(1, 6),
    n=st.integers(1, 7),
    k=st.integers(1, 3),
    hw=st.integers(5, 9),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    padding=st.sampled_from(["valid", "same"]),
    truncate=st.booleans(),
)
def test_every_arrangement_equals_the_layer(
    which, c, n, k, hw, stride, dilation, padding, truncate
):
    if stride > 1:
        dilation = 1
    cls, opts = LAYERS[which]
    rng = np.random.default_rng(c * 100 + n)
    conv = keras.layers.Conv2D(
        n, k, strides=stride, padding=padding, dilation_rate=dilation, activation="relu"
    )
    x = rng.random((2, hw, hw, c), dtype=np.float32)
    conv(x)
    conv.bias.assign(rng.normal(size=n))
    layer = cls.from_conv2d(conv, rank=1 if truncate else None, **opts)
    if cls is BasisConv2D:
        _randomize_bn(layer.bn, rng)
    want = np.asarray(layer(x))
    cands = candidate_arrangements(layer)
    assert {"factorized", "dense"} <= set(cands)
    if cls is DeCEFConv2D and layer.rank > 1:
        assert "tiled" in cands
        assert any(isinstance(q, ChannelTile) for q in cands["tiled"])
        dws = [q for q in cands["tiled"] if isinstance(q, keras.layers.DepthwiseConv2D)]
        assert dws[0].depth_multiplier == 1
    for name, layers in cands.items():
        np.testing.assert_allclose(_run(layers, x), want, atol=2e-5, err_msg=name)


def test_fold_batchnorm_conv_depthwise_dense():
    rng = np.random.default_rng(1)
    x4 = rng.random((2, 7, 7, 3), dtype=np.float32)
    cases = [
        (keras.layers.Conv2D(5, 3, padding="same"), x4),
        (keras.layers.Conv2D(6, 3, groups=3, use_bias=False), x4),
        (keras.layers.DepthwiseConv2D(3, depth_multiplier=2), x4),
        (keras.layers.Dense(4), rng.random((2, 9), dtype=np.float32)),
    ]
    for layer, x in cases:
        y = layer(x)
        bn = keras.layers.BatchNormalization()
        bn(y)
        _randomize_bn(bn, rng)
        folded = fold_batchnorm(layer, bn)
        want = np.asarray(bn(layer(x), training=False))
        np.testing.assert_allclose(np.asarray(folded(x)), want, atol=1e-5)
    relu = keras.layers.Conv2D(2, 1, activation="relu")
    bn = keras.layers.BatchNormalization()
    bn(relu(x4))
    with pytest.raises(ValueError, match="linear activation"):
        fold_batchnorm(relu, bn)


def _compressed_model(rng):
    """A functional model with every kind of rewrite: compressed layers (+BN), Conv+BN,
    a shared layer, a Dropout, a branch."""
    x = inp = keras.Input((12, 12, 4))
    c1 = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)
    c1(np.zeros((1, 12, 12, 4), "float32"))
    y = BasisConv2D.from_conv2d(c1, rank=8, batch_norm=True)(x)
    y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
    c2 = keras.layers.Conv2D(16, 3, padding="same")
    c2(np.zeros((1, 12, 12, 16), "float32"))
    z = DeCEFConv2D.from_conv2d(c2, rank=4)(y)
    z = keras.layers.Dropout(0.5, name="dropout")(keras.layers.BatchNormalization()(z))
    y = keras.layers.Add()([y, z])
    c3 = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")
    c3(np.zeros((1, 12, 12, 16), "float32"))
    y = SVDConv2D.from_conv2d(c3, rank=5)(y)
    y = keras.layers.Conv2D(8, 3, padding="same")(y)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    out = keras.layers.Dense(3)(y)
    model = keras.Model(inp, out)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            _randomize_bn(layer, rng)
        if isinstance(layer, BasisConv2D):
            _randomize_bn(layer.bn, rng)
    return model


def test_prepare_is_equivalent_and_leaves_the_model_alone(_timing_cache, tmp_path):
    rng = np.random.default_rng(2)
    model = _compressed_model(rng)
    before = [w.copy() for w in model.get_weights()]
    nodes = {layer.name: len(layer._inbound_nodes) for layer in model.layers}
    x = rng.random((4, 12, 12, 4), dtype=np.float32)
    want = np.asarray(model(x, training=False))

    prepared, report = prepare_for_inference(model, return_report=True)
    np.testing.assert_allclose(np.asarray(prepared(x)), want, atol=1e-5)
    # the user's model: same weights, no new calls of its layers
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert {layer.name: len(layer._inbound_nodes) for layer in model.layers} == nodes
    # what was rewritten
    types = {type(layer).__name__ for layer in prepared.layers}
    assert not types & {"BasisConv2D", "DeCEFConv2D", "SVDConv2D", "BatchNormalization"}
    assert not types & {"Dropout"}
    assert len(report.folded_batchnorms) == 3
    assert report.dropped == ["dropout"]
    assert [r["type"] for r in report.rows] == ["BasisConv2D", "DeCEFConv2D", "SVDConv2D"]
    for r in report.rows:
        assert r["choice"] == min(r["times"], key=r["times"].get)
        assert all(t > 0 for t in r["times"].values())
    # the printed report: one line per layer with its choice and times, then the folds
    lines = str(report).splitlines()
    assert lines[0] == "prepare_for_inference (measure):"
    for line, r in zip(lines[1:4], report.rows, strict=True):
        times = ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in r["times"].items())
        assert line == f"  {r['name']} {r['input_shape']}: {r['choice']}  ({times})"
    assert lines[4:] == ["  folded BatchNorms: 3", "  dropped: dropout"]
    # the cache holds every candidate; a second run measures nothing
    entries = json.loads(_timing_cache.read_text())["entries"]
    assert len(entries) == report.measured == sum(len(r["times"]) for r in report.rows)
    again, report2 = prepare_for_inference(model, return_report=True)
    assert report2.measured == 0
    assert [r["times"] for r in report2.rows] == [r["times"] for r in report.rows]
    # saves and loads back
    path = tmp_path / "prepared.keras"
    prepared.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(prepared(x)))


def test_prepare_sequential_and_cost_model(_timing_cache):
    rng = np.random.default_rng(3)
    conv = keras.layers.Conv2D(24, 3, padding="same")
    conv(np.zeros((1, 10, 10, 8), "float32"))
    model = keras.Sequential(
        [
            keras.Input((10, 10, 8)),
            DeCEFConv2D.from_conv2d(conv, rank=6),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GaussianNoise(0.1),
        ]
    )
    _randomize_bn(model.layers[1], rng)
    x = rng.random((2, 10, 10, 8), dtype=np.float32)
    prepared, report = prepare_for_inference(model, strategy="cost_model", return_report=True)
    np.testing.assert_allclose(np.asarray(prepared(x)), np.asarray(model(x)), atol=1e-5)
    assert report.measured == 0 and not _timing_cache.exists()
    # the calibrated default model: a multiplier-6 depthwise is slower than the tiled form
    assert report.rows[0]["choice"] in ("tiled", "dense")
    assert report.rows[0]["times"]["tiled"] < report.rows[0]["times"]["factorized"]
    assert report.folded_batchnorms and report.dropped == ["gaussian_noise"]


def test_layers_without_inference_layers_run_natively_or_dense():
    from keras_eigenconv.layers import TTConv2D

    rng = np.random.default_rng(4)
    conv = keras.layers.Conv2D(32, 3, padding="same")
    conv(np.zeros((1, 14, 14, 32), "float32"))
    layer = TTConv2D.from_conv2d(conv, rank=4)
    assert layer.inference_layers() is None
    inp = keras.Input((14, 14, 32))
    model = keras.Model(inp, layer(inp))
    x = rng.random((2, 14, 14, 32), dtype=np.float32)
    prepared, report = prepare_for_inference(model, return_report=True)
    assert set(report.rows[0]["times"]) == {"native", "dense"}
    np.testing.assert_allclose(np.asarray(prepared(x)), np.asarray(model(x)), atol=1e-4)


def test_cost_model_fit_recovers_coefficients(_timing_cache):
    rng = np.random.default_rng(5)
    true = {
        "conv": 2e-11,
        "pointwise": 1e-11,
        "depthwise": 4e-11,
        "depthwise_multiplier": 3e-10,
        "copy": 1e-10,
        "ops": 6e-6,
    }
    entries = {}
    for i in range(30):
        feats = {k: float(rng.uniform(0, 1e7)) for k in true}
        feats["ops"] = float(rng.integers(1, 4))
        secs = sum(true[k] * v for k, v in feats.items())
        entries[str(i)] = {"seconds": secs, "features": feats}
    _timing_cache.write_text(json.dumps({"version": 1, "entries": entries}))
    fit = CostModel.from_cache()
    for k, v in true.items():
        assert fit.coef[k] == pytest.approx(v, rel=1e-3)


def test_timer_times_are_positive_and_cached(_timing_cache):
    conv = keras.layers.Conv2D(8, 3, padding="same")
    conv.build((None, None, None, 8))
    timer = LiteRTTimer(num_threads=1, rounds=3)
    t = timer.time({"a": [conv]}, (1, 8, 8, 8))
    assert t["a"] > 0 and timer.measured == 1
    assert LiteRTTimer(num_threads=1).time({"b": [conv]}, (1, 8, 8, 8)) == {"b": t["a"]}
    assert LiteRTTimer(num_threads=2).time({"a": [conv]}, (1, 8, 8, 8))  # other key: measured


def test_prepare_errors():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="functional or Sequential"):
        prepare_for_inference(Sub())
    inp = keras.Input((4, 4, 1))
    model = keras.Model(inp, keras.layers.Conv2D(2, 1)(inp))
    with pytest.raises(ValueError, match="strategy"):
        prepare_for_inference(model, strategy="guess")
