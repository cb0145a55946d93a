"""prepare_for_inference's smaller promises, each pinned exactly: the cache file it was
given, its errors, its printed report, BatchNorm folding without centre or scale, the
depthwise tiling with biases, call arguments, several inputs, the equality check.

Written for the mutants of ``deploy/rewrite.py`` that the broader tests let survive."""

import json
import warnings

import keras
import numpy as np
import pytest

from keras_eigenconv import DeCEFConv2D
from keras_eigenconv.deploy import fold_batchnorm, prepare_for_inference, rewrite
from keras_eigenconv.deploy.rewrite import PrepareReport
from keras_eigenconv.layers import ChannelTile


@pytest.fixture(autouse=True)
def _timing_cache(tmp_path, monkeypatch):
    path = tmp_path / "default-timings.json"
    monkeypatch.setenv("KERAS_EIGENCONV_TIMING_CACHE", str(path))
    return path


def _decef_model(seed=0, hw=8, c=8):
    rng = np.random.default_rng(seed)
    conv = keras.layers.Conv2D(c, 3, padding="same")
    conv.build((None, None, None, c))
    conv.kernel.assign(rng.normal(size=conv.kernel.shape).astype("float32"))
    conv.bias.assign(rng.normal(size=c).astype("float32"))
    inp = keras.Input((hw, hw, c))
    return keras.Model(inp, DeCEFConv2D.from_conv2d(conv, rank=2)(inp))


def test_the_given_cache_file_is_the_one_written(_timing_cache, tmp_path):
    own = tmp_path / "mine.json"
    _, report = prepare_for_inference(
        _decef_model(), cache_path=own, num_threads=1, return_report=True
    )
    assert report.measured > 0
    assert len(json.loads(own.read_text())["entries"]) == report.measured
    assert not _timing_cache.exists()  # not the default one


def test_an_unbuilt_sequential_model_is_refused_with_the_fix():
    model = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="is not built; call it on an input or give it"):
        prepare_for_inference(model)


def test_the_printed_report_gives_milliseconds():
    report = PrepareReport("cost_model")
    report.rows.append(
        {
            "name": "c1",
            "type": "SVDConv2D",
            "input_shape": (1, 8, 8, 4),
            "times": {"factorized": 0.25, "dense": 0.0015},
            "choice": "dense",
        }
    )
    assert str(report).splitlines() == [
        "prepare_for_inference (cost_model):",
        "  c1 (1, 8, 8, 4): dense  (factorized 250.000 ms, dense 1.500 ms)",
    ]


@pytest.mark.parametrize("center,scale", [(False, True), (True, False), (False, False)])
def test_fold_batchnorm_without_centre_or_scale(center, scale):
    rng = np.random.default_rng(1)
    x = rng.random((2, 6, 6, 3), dtype=np.float32)
    conv = keras.layers.Conv2D(4, 3)
    y = conv(x)
    bn = keras.layers.BatchNormalization(center=center, scale=scale)
    bn(y)
    bn.moving_mean.assign(rng.normal(size=4))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=4))
    if scale:
        bn.gamma.assign(rng.uniform(0.5, 1.5, size=4))
    if center:
        bn.beta.assign(rng.normal(size=4))
    want = np.asarray(bn(conv(x), training=False))
    np.testing.assert_allclose(np.asarray(fold_batchnorm(conv, bn)(x)), want, atol=1e-5)


def _tiling_pair(rng, use_bias, c=3, r=2, n=5):
    dw = keras.layers.DepthwiseConv2D(3, depth_multiplier=r, use_bias=use_bias, name="dw")
    dw.build((None, None, None, c))
    dw.kernel.assign(rng.normal(size=dw.kernel.shape).astype("float32"))
    if use_bias:
        dw.bias.assign(rng.normal(size=c * r).astype("float32"))
    pw = keras.layers.Conv2D(n, 1, name="pw")
    pw.build((None, None, None, c * r))
    pw.kernel.assign(rng.normal(size=pw.kernel.shape).astype("float32"))
    pw.bias.assign(rng.normal(size=n).astype("float32"))
    return dw, pw


@pytest.mark.parametrize("use_bias", [True, False])
def test_tiling_a_depthwise_multiplier_keeps_the_output_and_names(use_bias):
    rng = np.random.default_rng(2)
    dw, pw = _tiling_pair(rng, use_bias)
    x = rng.random((2, 7, 7, 3), dtype=np.float32)
    want = np.asarray(pw(dw(x)))
    tiled = rewrite._tile_depthwise([dw, pw])
    assert [type(t).__name__ for t in tiled] == ["ChannelTile", "DepthwiseConv2D", "Conv2D"]
    assert isinstance(tiled[0], ChannelTile) and tiled[0].name == "dw_tile"
    assert tiled[1].name == "dw" and tiled[1].depth_multiplier == 1
    y = x
    for layer in tiled:
        y = layer(y)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)
    # nothing to tile: None; a layer before the pair is kept in front
    assert rewrite._tile_depthwise([pw]) is None
    relu = keras.layers.ReLU()
    assert rewrite._tile_depthwise([relu, dw, pw])[0] is relu


def test_renamed_is_a_copy_with_the_new_name_and_the_same_weights():
    rng = np.random.default_rng(3)
    conv = keras.layers.Conv2D(4, 3, name="old")
    conv.build((None, None, None, 2))
    conv.kernel.assign(rng.normal(size=conv.kernel.shape).astype("float32"))
    assert rewrite._renamed(conv, "old") is conv
    new = rewrite._renamed(conv, "new")
    assert type(new) is keras.layers.Conv2D and new.name == "new" and new is not conv
    for a, b in zip(conv.get_weights(), new.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    new.kernel.assign(np.zeros(new.kernel.shape, "float32"))  # its own buffers
    assert np.abs(np.asarray(conv.kernel)).sum() > 0
    dense = keras.layers.Dense(3)
    dense.build((None, 5))
    assert rewrite._renamed(dense, "d2").kernel.shape == (5, 3)


@keras.saving.register_keras_serializable(package="test_rewrite_checks")
class _Scale(keras.layers.Layer):
    def call(self, x, factor=1.0):
        return x * factor


def test_call_arguments_of_the_model_s_layers_are_kept():
    inner = _decef_model(seed=4)
    inp = keras.Input((8, 8, 8))
    out = _Scale()(inner.layers[-1](inp), factor=3.0)
    model = keras.Model(inp, out)
    x = np.random.default_rng(4).random((2, 8, 8, 8), dtype=np.float32)
    prepared = prepare_for_inference(model, strategy="cost_model")
    np.testing.assert_allclose(np.asarray(prepared(x)), np.asarray(model(x)), atol=1e-5)


def test_a_model_with_two_inputs_is_rewritten_and_checked():
    layer = _decef_model(seed=5).layers[-1]
    a, b = keras.Input((8, 8, 8)), keras.Input((8, 8, 8))
    model = keras.Model([a, b], keras.layers.Add()([layer(a), b]))
    rng = np.random.default_rng(5)
    xs = [rng.random((2, 8, 8, 8), dtype=np.float32) for _ in range(2)]
    prepared = prepare_for_inference(model, strategy="cost_model", check=True)
    np.testing.assert_allclose(np.asarray(prepared(xs)), np.asarray(model(xs)), atol=1e-5)


def test_the_equality_check_warns_nothing():
    model = _decef_model(seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error", UserWarning
        )  # e.g. Keras's "structure of inputs doesn't match"
        prepare_for_inference(model, strategy="cost_model", check=True)


def test_the_equality_check_fails_on_a_different_model():
    model = _decef_model(seed=6)
    other = keras.models.clone_model(model)
    other.set_weights([w + 1.0 for w in model.get_weights()])
    rewrite._check_equal(model, model, (8, 8))  # itself: passes
    with pytest.raises(RuntimeError, match="rewritten model differs"):
        rewrite._check_equal(model, other, (8, 8))


def test_a_batchnorm_off_the_last_axis_does_not_stop_the_later_folds():
    inp = keras.Input((6, 6, 4))
    y = keras.layers.Conv2D(4, 1)(inp)
    y = keras.layers.BatchNormalization(axis=1)(y)  # not foldable: over rows
    y = keras.layers.Conv2D(4, 3, padding="same")(y)
    y = keras.layers.BatchNormalization(name="late_bn")(y)
    model = keras.Model(inp, y)
    _, report = prepare_for_inference(model, strategy="cost_model", return_report=True)
    assert report.folded_batchnorms == ["late_bn"]


def linear(x):  # a user's identity named "linear": trusted to be linear
    return x


def test_an_activation_named_linear_counts_as_linear():
    inp = keras.Input((6, 6, 4))
    y = keras.layers.Conv2D(4, 3, activation=linear)(inp)
    y = keras.layers.BatchNormalization(name="bn")(y)
    _, report = prepare_for_inference(
        keras.Model(inp, y), strategy="cost_model", return_report=True
    )
    assert report.folded_batchnorms == ["bn"]
