"""The ``keras-eigenconv convert`` command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import keras_eigenconv  # noqa: F401
from keras_eigenconv.cli import main

L = keras.layers


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture
def saved_model(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((10, 10, 3)),
            L.Conv2D(8, 3, padding="same", activation="relu", name="c1"),
            L.Conv2D(64, 3, padding="same", name="c2"),
            L.Conv2D(64, 3, padding="same", name="c3"),
            L.GlobalAveragePooling2D(),
            L.Dense(4),
        ]
    )
    rng = np.random.default_rng(0)
    for layer in model.layers:  # trained-looking: non-zero biases, kernels of mixed scales
        if layer.weights:
            layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32") * 0.2)
            layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))
    path = tmp_path / "model.keras"
    model.save(path)
    return path, model


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["convert", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--method", "--energy", "--budget-macs", "--round-to", "--weights", "-o"):
        assert flag in out
    assert "keras-eigenconv convert resnet50 --method decef --energy 0.9" in out
    assert "decef" in out and "svd_spatial" in out


def test_convert_a_keras_file(tmp_path, saved_model, capsys):
    path, model = saved_model
    out, md, js = tmp_path / "small.keras", tmp_path / "r.md", tmp_path / "r.json"
    code = main(
        [
            "convert", str(path), "--method", "svd", "--budget-macs", "0.5", "--round-to", "8",
            "-o", str(out), "--markdown", str(md), "--json", str(js), "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "c2" in printed and "MACs:" in printed and f"saved {out}" in printed
    report = json.loads(js.read_text())
    assert report["replaced"] >= 1 and report["macs_ratio"] <= 0.5
    assert "| layer |" in md.read_text()
    small = keras.saving.load_model(out)
    assert any(isinstance(lay, keras_eigenconv.SVDConv2D) for lay in small.layers)
    # the report's numbers: MACs of the saved file, each layer's kernel error and bias
    from keras_eigenconv.cost import model_cost

    assert report["macs_ratio"] == pytest.approx(
        model_cost(small).total.macs / model_cost(model).total.macs
    )
    assert report["total_after"]["macs"] == model_cost(small).total.macs
    rows = {r["name"]: r for r in report["layers"]}
    expected = keras.models.clone_model(model)
    expected.set_weights(model.get_weights())
    for layer in small.layers:
        if not isinstance(layer, keras_eigenconv.SVDConv2D):
            continue
        row, src = rows[layer.name], model.get_layer(layer.name)
        assert row["replaced"] and row["method"] == "svd"
        w, w_r = np.asarray(src.kernel), np.asarray(layer.to_source().kernel)
        err = np.linalg.norm(w - w_r) / np.linalg.norm(w)
        assert row["relative_error"] == pytest.approx(err, rel=1e-3, abs=1e-6)
        np.testing.assert_allclose(np.asarray(layer.to_source().bias), np.asarray(src.bias))
        expected.get_layer(layer.name).kernel.assign(w_r)
    assert sum(r["replaced"] for r in rows.values()) == report["replaced"]
    # the saved file computes the original network with exactly those rebuilt kernels
    x = np.random.default_rng(1).random((8, 10, 10, 3)).astype("float32")
    y_small, y_expected = np.asarray(small(x)), np.asarray(expected(x))
    np.testing.assert_allclose(y_small, y_expected, atol=1e-4 * np.abs(y_expected).max())
    # ... and exporting it gives a .tflite that agrees with Keras, as its report says
    np.save(tmp_path / "check.npy", x)
    tfl, ej = tmp_path / "small.tflite", tmp_path / "e.json"
    code = main(
        ["export", str(out), "-o", str(tfl), "--check-data", str(tmp_path / "check.npy"),
         "--json", str(ej)]
    )  # fmt: skip
    assert code == 0
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tfl))
    interp.resize_tensor_input(interp.get_input_details()[0]["index"], x.shape)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    y_tfl = interp.get_tensor(interp.get_output_details()[0]["index"])
    exported = json.loads(ej.read_text())
    assert exported["passed"] is True and exported["num_samples"] == 8
    measured = float(np.abs(y_tfl - y_small).max())
    assert measured <= 1e-4 * np.abs(y_small).max()
    assert exported["max_abs_error"] == pytest.approx(measured, rel=0.5, abs=1e-6)


def test_convert_can_fix_each_layers_measured_training_path(
    tmp_path, saved_model, capsys, monkeypatch
):
    path, _ = saved_model
    out = tmp_path / "tuned.keras"
    monkeypatch.setenv("KERAS_EIGENCONV_TIMING_CACHE", str(tmp_path / "timings.json"))
    code = main(
        ["convert", str(path), "--method", "svd", "--rank", "2", "--tune-training", "4",
         "-o", str(out), "--no-progress", "--json", str(tmp_path / "r.json"),
         "--markdown", str(tmp_path / "r.md")]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "training paths measured at batch 4" in printed
    saved = keras.saving.load_model(out)
    tuned = [la for la in saved.layers if isinstance(la, keras_eigenconv.SVDConv2D)]
    assert tuned and all(la.training_implementation in ("factorized", "dense") for la in tuned)
    # the reports carry the per-layer table: what was timed and chosen
    paths = json.loads((tmp_path / "r.json").read_text())["training_paths"]
    assert paths["batch"] == 4 and paths["measured"] >= 2 * len(tuned)
    assert [r["chosen"] for r in paths["layers"]] == [la.training_implementation for la in tuned]
    assert all(r["factorized_ms"] > 0 and r["dense_ms"] > 0 for r in paths["layers"])
    md = (tmp_path / "r.md").read_text()
    assert "### Training paths\n\n- training paths measured at batch 4" in md
    assert md.endswith("|\n") and md.count("| factorized_ms |") == 1
    # each choice is the faster of the two paths timed, cached next to the LiteRT cache
    from keras_eigenconv.deploy import TrainStepTimer

    timer = TrainStepTimer(tmp_path / "train_step_timings.json", batch=4)
    for la in tuned:
        paths = {
            t: [type(la).from_config({**la.get_config(), "training_implementation": t})]
            for t in ("factorized", "dense")
        }
        got = timer.time(paths, tuple(la.input.shape))
        assert la.training_implementation == min(got, key=lambda t: (got[t], t != "dense"))
    assert timer.measured == 0


@pytest.mark.parametrize(
    "extra, message",
    [(["--tune-training", "0"], "the fit batch size, >= 1")],
)
def test_convert_checks_tune_training_before_loading(extra, message, capsys):
    assert main(["convert", "missing/model.keras", "--method", "svd", *extra]) == 1
    err = capsys.readouterr().err
    assert "keras-eigenconv convert: error:" in err and message in err


def test_convert_an_application_by_name(capsys):
    code = main(
        ["convert", "VGG16", "--weights", "none", "--input-shape", "32,32,3", "--rank", "4"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "block2_conv1" in printed and "kept: first conv" in printed


@pytest.mark.parametrize(
    "argv,message",
    [
        (["convert", "resnet5", "--weights", "none"], "Did you mean resnet50"),
        (["convert", "missing/model.keras"], "no such model file"),
        (["convert", "vgg16", "--weights", "none", "--method", "nope"], "Unknown method 'nope'"),
        (["convert", "vgg16", "--weights", "none", "--energy", "1.5"], "energy=1.5"),
    ],
)
def test_errors_exit_1_with_a_message(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "keras-eigenconv convert: error:" in err and message in err


@pytest.mark.parametrize(
    "argv",
    [
        ["convert", "vgg16", "--rank", "many"],
        ["convert", "vgg16", "--rank", "3", "--energy", "0.9"],
        ["convert", "vgg16", "--input-shape", "32,32"],
        ["convert"],
    ],
)
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_console_script_exit_codes():
    exe = Path(sys.executable).parent / "keras-eigenconv"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "keras_eigenconv"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    bad = subprocess.run(
        [*cmd, "convert", "nosuchnet", "--weights", "none"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 1 and "nosuchnet" in bad.stderr


@pytest.fixture
def saved_mobilenet(tmp_path):
    """Two inverted-residual blocks (hidden 64, 96) at 24x24, saved as .keras."""
    inp = keras.Input((24, 24, 3))
    h = L.Conv2D(16, 3, padding="same", name="stem")(inp)
    for i, hidden in enumerate((64, 96)):
        y = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(hidden, 1, name=f"b{i}_expand")(h)))
        y = L.ReLU(6.0)(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same")(y)))
        h = L.Add()([h, L.BatchNormalization()(L.Conv2D(16, 1, name=f"b{i}_project")(y))])
    model = keras.Model(inp, L.Dense(4)(L.GlobalAveragePooling2D()(h)))
    path = tmp_path / "mobile.keras"
    model.save(path)
    return path, model


def test_prune_channels_command(tmp_path, saved_mobilenet, capsys):
    from keras_eigenconv.cost import model_cost

    path, model = saved_mobilenet
    out, js = tmp_path / "thin.keras", tmp_path / "r.json"
    code = main(
        ["prune-channels", str(path), "--budget-macs", "0.7", "-o", str(out), "--json", str(js)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "b0_expand" in printed and f"saved {out}" in printed
    report = json.loads(js.read_text())
    thin = keras.saving.load_model(out)
    ratio = model_cost(thin).total.macs / model_cost(model).total.macs
    assert report["macs_ratio"] == pytest.approx(ratio) and ratio <= 0.7
    assert thin.get_layer("b1_expand").filters < 96
    # --keep as a count, and a measured latency budget on a target
    assert main(["prune-channels", str(path), "--keep", "16", "--json", str(js)]) == 0
    assert {b["kept"] for b in json.loads(js.read_text())["blocks"]} == {16}
    code = main(
        ["prune-channels", str(path), "--budget-latency", "0.9", "--target", "litert-fp32",
         "--feedback-rounds", "2", "--no-strict", "--no-progress", "--json", str(js)]
    )  # fmt: skip
    assert code == 0
    lat = json.loads(js.read_text())["latency"]
    assert lat["target"] == "litert-fp32 (2 threads)" and 1 <= len(lat["feedback"]) <= 2
    assert "latency on litert-fp32 (2 threads)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--budget-macs", "0.7", "--target", "litert-int8"], "--target is used with"),
        (["--budget-latency", "1.5"], "a share of the original latency"),
        (["--budget-latency", "0.7", "--feedback-rounds", "0"], "an int in 1..10"),
        (["--budget-macs", "0.7", "-o", "thin.h5"], "saved as .keras"),
        (["--keep", "1.5"], "or a channel count (an int > 1)"),
    ],
)
def test_prune_channels_errors_before_loading(extra, message, capsys):
    assert main(["prune-channels", "missing/model.keras", *extra]) == 1
    err = capsys.readouterr().err
    assert "keras-eigenconv prune-channels: error:" in err and message in err


def test_prune_channels_needs_a_budget_or_keep():
    with pytest.raises(SystemExit) as exc:
        main(["prune-channels", "model.keras"])
    assert exc.value.code == 2
