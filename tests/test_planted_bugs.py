"""Tests that fail on the bugs planted by the audit of issue 16.

Each test names the planted bug it catches: the inference rewrite folding every layer to a
dense conv while its report says otherwise, the budget allocator without its give-back
step, the conversion report showing the squared kernel error, and ``from_conv2d`` dropping
a (trained, non-zero) bias.
"""

import keras
import numpy as np
import pytest

from keras_eigenconv import SVDConv2D, convert
from keras_eigenconv.deploy import candidate_arrangements, prepare_for_inference
from keras_eigenconv.deploy.litert import convert_model, tflite_converter, tflite_ops


@pytest.fixture(autouse=True)
def _timing_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_EIGENCONV_TIMING_CACHE", str(tmp_path / "timings.json"))


def _flat_types(layer) -> list[str]:
    if isinstance(layer, keras.Sequential):
        return [t for sub in layer.layers for t in _flat_types(sub)]
    return [type(layer).__name__]


def _wide_model(rng):
    """Two 3x3 convs 96 -> 96 at rank 4: the factorized forms need ~20x fewer MACs than
    the folded dense conv, so no sensible chooser picks "dense" for them."""
    inp = keras.Input((16, 16, 96))
    x = inp
    for i in range(2):
        conv = keras.layers.Conv2D(96, 3, padding="same", name=f"src{i}")
        conv.build((None, 16, 16, 96))
        conv.kernel.assign(rng.normal(size=(3, 3, 96, 96)).astype("float32") * 0.05)
        conv.bias.assign(rng.normal(size=96).astype("float32"))
        x = SVDConv2D.from_conv2d(conv, rank=4, name=f"svd{i}")(x)
    return keras.Model(inp, x)


def test_prepared_graph_holds_the_reported_arrangement():
    """Planted bug: prepare_for_inference always folds to dense, the report says "native"."""
    rng = np.random.default_rng(0)
    model = _wide_model(rng)
    prepared, report = prepare_for_inference(model, strategy="cost_model", return_report=True)
    originals = {layer.name: layer for layer in model.layers}
    choices = [r["choice"] for r in report.rows]
    assert len(choices) == 2 and "dense" not in choices, choices
    for r in report.rows:
        want = _flat_types_list(candidate_arrangements(originals[r["name"]])[r["choice"]])
        assert _flat_types(prepared.get_layer(r["name"])) == want, r
    # and in the .tflite: a factorized 3x3 -> 1x1 pair is two convolutions per layer, a
    # dense fold one
    ops = tflite_ops(convert_model(tflite_converter(prepared, None)))
    n_conv = sum(op in ("CONV_2D", "DEPTHWISE_CONV_2D") for op in ops)
    want_conv = sum(
        sum(t in ("Conv2D", "DepthwiseConv2D") for t in _flat_types(prepared.get_layer(r["name"])))
        for r in report.rows
    )
    assert n_conv == want_conv >= 4, ops
    x = rng.random((2, 16, 16, 96), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(prepared(x)), np.asarray(model(x)), atol=1e-3)


def _flat_types_list(layers) -> list[str]:
    return [t for layer in layers for t in _flat_types(layer)]


def _trained_cnn(rng):
    """Two 3x3 convs with random ("trained") kernels and non-zero biases."""
    inp = keras.Input((10, 10, 8))
    x = inp
    for i, n in enumerate((12, 16)):
        conv = keras.layers.Conv2D(n, 3, padding="same", name=f"conv{i}")
        x = conv(x)
        conv.kernel.assign(rng.normal(size=conv.kernel.shape).astype("float32"))
        conv.bias.assign(rng.normal(size=n).astype("float32"))
    return keras.Model(inp, x)


@pytest.mark.parametrize(
    "method", ["decef", "basis", "svd", "svd_spatial", "tucker2", "cp", "tt", "ssc"]
)
def test_report_error_and_bias_match_the_rebuilt_kernel(method):
    """Planted bugs: the report shows the squared error; a sign flip in a truncated
    spatial-SVD factor; ``from_conv2d`` drops a trained (non-zero) bias."""
    rng = np.random.default_rng(1)
    model = _trained_cnn(rng)
    new, report = convert(model, method=method, rank=3, skip_first=False, require_saving=False)
    assert len(report.replaced) == 2, report
    for row in report.replaced:
        src = model.get_layer(row.name)
        rebuilt = new.get_layer(row.name).to_source()
        w = np.asarray(src.kernel, np.float64)
        w_r = np.asarray(rebuilt.kernel, np.float64)
        err = np.linalg.norm(w - w_r) / np.linalg.norm(w)
        assert 0.01 < err < 0.99  # truncated: err and err**2 differ
        assert row.relative_error == pytest.approx(err, rel=1e-3, abs=1e-6), row
        np.testing.assert_allclose(np.asarray(rebuilt.bias), np.asarray(src.bias), atol=1e-6)
