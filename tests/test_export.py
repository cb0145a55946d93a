"""export_tflite: built-in ops only, quantization, the self-check, the CLI, the bench."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_eigenconv import DeCEFConv2D, SVDConv2D
from keras_eigenconv.cli import main as cli_main
from keras_eigenconv.deploy import (
    CHECK_TOLERANCE,
    ExportCheckError,
    bench_tflite,
    check_tflite,
    export_tflite,
    run_tflite,
    tflite_ops,
)

BUILTIN_OK = {
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "CONCATENATION",
    "FULLY_CONNECTED",
    "MEAN",
    "SOFTMAX",
    "DEQUANTIZE",
    "QUANTIZE",
    "ADD",
    "RELU",
}


@pytest.fixture(scope="module", autouse=True)
def _timing_cache(tmp_path_factory):
    """One timing cache for the module: each layer shape is measured once."""
    old = os.environ.get("KERAS_EIGENCONV_TIMING_CACHE")
    path = tmp_path_factory.mktemp("cache") / "timings.json"
    os.environ["KERAS_EIGENCONV_TIMING_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["KERAS_EIGENCONV_TIMING_CACHE"]
    else:
        os.environ["KERAS_EIGENCONV_TIMING_CACHE"] = old


@pytest.fixture(scope="module")
def trained(digits):
    """A digits CNN with a DeCEF (+BatchNorm) and an SVD layer, trained to > 85%."""
    keras.utils.set_random_seed(0)
    x, y = digits
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            DeCEFConv2D(32, 3, rank=4, padding="same", implementation="factorized"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            SVDConv2D(32, 3, rank=8, strides=2, padding="same", activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x[:1400], y[:1400], epochs=20, batch_size=64, verbose=0)
    acc = model.evaluate(x[1400:], y[1400:], verbose=0)[1]
    assert acc > 0.85, acc
    return model


def test_float32_export_matches_keras(trained, digits, tmp_path):
    x, y = digits
    before = [w.copy() for w in trained.get_weights()]
    n_layers = len(trained.layers)
    report = export_tflite(
        trained, tmp_path / "m.tflite", check_data=x[1400:], labels=y[1400:], verbose=False
    )
    assert Path(report.path).stat().st_size == report.size_bytes > 0
    assert set(report.ops) <= BUILTIN_OK, report.ops
    assert report.num_samples == len(x) - 1400
    assert report.max_abs_error < 1e-5
    assert report.top1_agreement == 1.0
    assert report.tflite_accuracy == report.keras_accuracy > 0.85
    assert report.prepare["folded_batchnorms"] and report.prepare["dropped"] == ["dropout"]
    # the user's model is unchanged
    assert len(trained.layers) == n_layers
    for a, b in zip(before, trained.get_weights()):
        np.testing.assert_array_equal(a, b)
    # the file runs on its own, and equals Keras there too
    got = run_tflite(report.path, x[:5])[0]
    np.testing.assert_allclose(got, np.asarray(trained(x[:5])), atol=1e-5)


def test_without_prepare_the_factor_ops_are_exported(trained, digits, tmp_path):
    x, _ = digits
    report = export_tflite(
        trained, tmp_path / "raw.tflite", prepare=False, check_data=x[:50], verbose=False
    )
    assert report.prepare is None
    assert "DEPTHWISE_CONV_2D" in report.ops  # DeCEF's depthwise, as trained
    assert report.max_abs_error < 1e-5


@pytest.mark.parametrize("mode", ["float16", "dynamic", "int8"])
def test_quantized_exports(trained, digits, tmp_path, mode):
    x, y = digits
    report = export_tflite(
        trained,
        tmp_path / f"{mode}.tflite",
        quantize=mode,
        representative_data=x[:300],
        num_calibration_steps=100,
        check_data=x[1400:],
        labels=y[1400:],
        verbose=False,
    )
    assert set(report.ops) <= BUILTIN_OK, report.ops
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=report.path)
    dtypes = {np.dtype(d["dtype"]) for d in it.get_tensor_details()}
    assert np.dtype(np.float16 if mode == "float16" else np.int8) in dtypes
    assert report.top1_agreement >= (0.99 if mode == "float16" else 0.95)
    assert abs(report.tflite_accuracy - report.keras_accuracy) <= 0.03
    if mode == "float16":
        assert report.max_abs_error < 1e-2
    if mode == "int8":
        assert it.get_input_details()[0]["dtype"] == np.int8
        assert it.get_output_details()[0]["dtype"] == np.int8


def test_the_check_fails_when_the_tflite_is_another_model(trained, digits, tmp_path):
    """The self-check raises by default when the .tflite disagrees with Keras: here the
    file of ``trained`` is checked, through the public check, against a model of the same
    architecture with fresh weights."""
    x, _ = digits
    report = export_tflite(
        trained, tmp_path / "a.tflite", prepare=False, check_data=x[:50], verbose=False
    )
    assert report.passed and report.relative_error <= CHECK_TOLERANCE[None]
    other = keras.Sequential.from_config(trained.get_config())  # same layers, fresh weights
    with pytest.raises(ExportCheckError, match="disagrees with Keras.*float32 tolerance"):
        check_tflite(other, report.path, x[:50])
    with pytest.warns(UserWarning, match="disagrees with Keras"):
        figures = check_tflite(other, report.path, x[:50], on_mismatch="warn")
    assert figures["passed"] is False and figures["relative_error"] > figures["tolerance"]
    figures = check_tflite(trained, report.path, x[:50])
    assert figures["passed"] and figures["tolerance"] == CHECK_TOLERANCE[None]
    with pytest.raises(ValueError, match="on_mismatch must be"):
        check_tflite(trained, report.path, x[:5], on_mismatch="ignore it")


def test_int8_needs_representative_data(trained, tmp_path):
    with pytest.raises(ValueError, match="representative_data"):
        export_tflite(trained, tmp_path / "q.tflite", quantize="int8", verbose=False)
    with pytest.raises(ValueError, match="quantize must be one of"):
        export_tflite(trained, tmp_path / "q.tflite", quantize="int4", verbose=False)


class MatrixDet(keras.layers.Layer):
    """A layer whose op (tf.MatrixDeterminant) has no LiteRT built-in kernel."""

    def call(self, x):
        return keras.ops.expand_dims(keras.ops.det(x[..., 0]), -1)


def test_non_builtin_op_is_named(tmp_path):
    inp = keras.Input((4, 4, 1))
    model = keras.Model(inp, MatrixDet(name="my_det")(inp))
    with pytest.raises(ValueError, match=r"tf\.MatrixDeterminant.*my_det"):
        export_tflite(model, tmp_path / "det.tflite", verbose=False)
    assert not (tmp_path / "det.tflite").exists()


def test_random_inputs_when_no_data(tmp_path):
    inp = keras.Input((6, 6, 3))
    conv = keras.layers.Conv2D(8, 3)
    conv(np.zeros((1, 6, 6, 3), "float32"))
    model = keras.Model(inp, SVDConv2D.from_conv2d(conv, rank=4)(inp))
    report = export_tflite(model, tmp_path / "r.tflite", num_check_samples=3, verbose=False)
    assert report.num_samples == 3 and report.max_abs_error < 1e-5
    assert "CONV_2D" in tflite_ops(Path(report.path).read_bytes())


def test_cli_export_and_bench(trained, digits, tmp_path, capsys):
    x, y = digits
    src = tmp_path / "model.keras"
    trained.save(src)
    np.savez(tmp_path / "check.npz", x=x[1400:1500], y=y[1400:1500])
    np.save(tmp_path / "calib.npy", x[:100])
    out = tmp_path / "model_int8.tflite"
    code = cli_main(
        [
            "export",
            str(src),
            "-o",
            str(out),
            "--quantize",
            "int8",
            "--representative-data",
            str(tmp_path / "calib.npy"),
            "--check-data",
            str(tmp_path / "check.npz"),
            "--json",
            str(tmp_path / "report.json"),
        ]
    )
    assert code == 0 and out.exists()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["quantize"] == "int8" and report["top1_agreement"] >= 0.95
    assert "accuracy: LiteRT" in capsys.readouterr().out
    fp32 = tmp_path / "model.tflite"
    assert cli_main(["export", str(src), "--check-data", str(tmp_path / "check.npz")]) == 0
    assert fp32.exists()
    code = cli_main(
        [
            "bench",
            str(fp32),
            str(out),
            "--threads",
            "1",
            "--runs",
            "3",
            "--json",
            str(tmp_path / "bench.json"),
        ]
    )
    assert code == 0
    timings = json.loads((tmp_path / "bench.json").read_text())
    assert timings[str(fp32)]["ratio"] == 1.0
    assert all(t["median_ms"] > 0 for t in timings.values())
    assert "median ms" in capsys.readouterr().out
    assert cli_main(["export", str(src), "--quantize", "int8"]) == 1  # no calibration data
    assert cli_main(["bench", str(tmp_path / "missing.tflite")]) == 1


def test_bench_ratios(tmp_path):
    paths = {}
    for name, filters in (("small", 8), ("big", 64)):
        inp = keras.Input((32, 32, 16))
        model = keras.Model(inp, keras.layers.Conv2D(filters, 3, padding="same")(inp))
        paths[name] = export_tflite(
            model, tmp_path / f"{name}.tflite", prepare=False, check=False, verbose=False
        ).path
    res = bench_tflite(paths, num_threads=1, rounds=5)
    assert list(res) == ["small", "big"]
    assert res["small"]["ratio"] == 1.0
    assert res["big"]["ratio"] == res["big"]["median_ms"] / res["small"]["median_ms"]
    assert res["big"]["p10_ms"] <= res["big"]["median_ms"] <= res["big"]["p90_ms"]
    # paired per-round ratios: exactly 1 for the first model, a spread around the median
    assert res["small"]["paired_ratio"] == res["small"]["paired_p90"] == 1.0
    big = res["big"]
    assert big["paired_p10"] <= big["paired_ratio"] <= big["paired_p90"]
    assert big["paired_ratio"] > 2  # 8x the MACs of "small"


@pytest.mark.slow
def test_latency_benchmark_quick(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = "latency_test_quick"
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "latency.py"),
            "--quick",
            "--methods",
            "DeCEF,SVD",
            "--out",
            out,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_EIGENCONV_TIMING_CACHE": str(tmp_path / "t.json")},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = root / "benchmarks" / "results"
    data = json.loads((results / f"{out}.json").read_text())
    (results / f"{out}.json").unlink()
    (results / f"{out}.md").unlink()
    models = [r["model"] for r in data["rows"]]
    assert models == ["original", "DeCEF", "SVD"]
    for r in data["rows"]:
        assert r["latency_ms"] > 0 and r["max_abs_error"] < 1e-4
        assert 0 < r["mac_ratio"] <= 1.0


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_timing_flatbuffer_has_the_exports_ops(quantize):
    from keras_eigenconv import compress
    from keras_eigenconv.deploy.litert import (
        convert_for_timing,
        convert_model,
        random_representative,
        tflite_converter,
        tflite_ops,
    )

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 8))
    y = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inp)
    y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
    y = keras.layers.Conv2D(16, 3, padding="same")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    model, _ = compress.convert(
        keras.Model(inp, keras.layers.Dense(4)(y)), method="svd", rank=4, progress=False
    )
    rep = random_representative((1, 16, 16, 8))
    fast = convert_for_timing(model, quantize, rep)
    full = convert_model(tflite_converter(model, quantize, rep))
    assert tflite_ops(fast) == tflite_ops(full)
    assert abs(len(fast) - len(full)) < 0.05 * len(full)  # the same weights, as constants


@pytest.mark.parametrize("name, value", [("num_calibration_steps", 0), ("num_check_samples", -1)])
def test_bad_export_counts_are_refused_by_name_before_any_work(tmp_path, name, value):
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match=rf"^export_tflite: {name} must be an int >= 1, got "):
        export_tflite(model, tmp_path / "m.tflite", verbose=False, **{name: value})
    assert not (tmp_path / "m.tflite").exists()
