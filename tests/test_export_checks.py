"""export_tflite's and check_tflite's smaller promises, pinned exactly: the messages users
act on, the report's text, how many samples are read from an iterable, and the relative
error's floor. Written for the mutants of ``deploy/export.py`` that the other export tests
let survive; every model here is tiny and exported without the timed rewrite."""

import errno
import json
import os
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_eigenconv import _io
from keras_eigenconv.deploy import ExportCheckError, check_tflite, export_tflite
from keras_eigenconv.deploy.export import _samples

L = keras.layers
RNG = np.random.default_rng(0)
X = RNG.random((40, 8, 8, 3), dtype=np.float32)


def _model(scale: float = 1.0, classes: int = 4, seed: int = 0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    y = L.GlobalAveragePooling2D()(L.Conv2D(8, 3, activation="relu")(inp))
    y = L.Dense(classes)(y)
    return keras.Model(inp, L.Rescaling(scale)(y), name="tiny")


@pytest.fixture(scope="module")
def tiny():
    return _model()


def _export(model, path, **kwargs):
    return export_tflite(model, path, prepare=False, verbose=False, **kwargs)


def _message(fn, *args, error=ValueError, **kwargs) -> str:
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_a_multi_input_model_is_told_every_fix(tmp_path):
    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    model = keras.Model([a, b], L.Add()([a, b]), name="two")
    got = _message(
        export_tflite,
        model,
        tmp_path / "m.tflite",
        quantize="int8",
        representative_data=X,
        check_data=X,
        verbose=False,
    )
    assert got == (
        "export_tflite: model 'two' has 2 inputs, but the self-check and int8 calibration "
        "and representative_data and check_data need(s) a single-input model: pass "
        "check=False to export without it; use quantize=None, 'float16' or 'dynamic'; "
        "leave it out; leave it out (and pass check=False)."
    )


def test_data_errors_name_the_argument_exactly(tiny, tmp_path):
    path = tmp_path / "m.tflite"
    assert _message(_export, tiny, path, quantize="int8") == (
        "export_tflite: quantize='int8' needs representative_data (a few hundred typical "
        "inputs, shaped like the model's input) to calibrate the activation ranges."
    )
    bad = X[:4].copy()
    bad[1, 0, 0, 0] = np.nan
    bad[3, 2, 2, 1] = np.inf
    bad[3, 2, 2, 2] = np.nan
    assert _message(_export, tiny, path, check_data=bad) == (
        "export_tflite: check_data holds 3 NaN or inf value(s) in 2 of 4 samples; pass "
        "finite inputs (NaN calibration gives NaN quantization ranges, and a NaN check "
        "compares nothing)."
    )
    # known dimensions must match, even with the right number of them
    assert _message(_export, tiny, path, check_data=np.zeros((4, 6, 8, 3))) == (
        "export_tflite: check_data has samples of shape (6, 8, 3), the model takes "
        "(8, 8, 3). Pass data shaped (N, *model_input_shape)."
    )
    # one sample (no batch axis) of the wrong shape: said as such, not as samples of (8, 4)
    assert _message(_export, tiny, path, check_data=np.zeros((8, 8, 4))) == (
        "export_tflite: check_data has shape (8, 8, 4): neither one sample of the model's "
        "input shape (8, 8, 3) nor a batch of them. Pass data shaped (N, *model_input_shape)."
    )
    assert _message(_export, tiny, path, check_data=X[:4], labels=[1, 2, 3]) == (
        "export_tflite: 3 labels for 4 check inputs."
    )
    assert _message(_export, tiny, path, check_data=X[:4], labels=1) == (
        "export_tflite: a scalar labels for 4 check inputs."
    )
    assert not path.exists()


def test_check_tflite_argument_errors(tiny, tmp_path):
    path = _export(tiny, tmp_path / "m.tflite", check=False).path
    assert _message(check_tflite, tiny, path, X[:2], quantize="int4") == (
        "check_tflite: quantize must be one of (None, 'float16', 'dynamic', 'int8'), got 'int4'."
    )
    for tolerance in (0, 0.0, -1.0, float("inf"), True):
        assert _message(check_tflite, tiny, path, X[:2], tolerance=tolerance) == (
            f"check_tflite: tolerance must be a positive number, got {tolerance!r}."
        )
    assert check_tflite(tiny, path, X[:2], tolerance=0.5)["tolerance"] == 0.5


def test_a_keras_output_without_a_litert_output_of_its_shape_is_named(tmp_path):
    path = _export(_model(classes=5), tmp_path / "five.tflite", check=False).path
    got = _message(check_tflite, _model(classes=4), path, X[:3])
    assert got == (
        "check_tflite: no LiteRT output has the shape (3, 4) of a Keras output "
        "(LiteRT outputs: [(3, 5)])."
    )


def test_the_relative_error_of_small_outputs_is_taken_at_their_scale(tmp_path):
    """Outputs near 0.01: the error is relative to their max |y| (the 1e-3 floor is far
    below), so a file of another model fails the check."""
    small = _model(scale=0.01, seed=1)
    path = _export(small, tmp_path / "small.tflite", check=False).path
    other = _model(scale=0.01, seed=2)
    figures = check_tflite(other, path, X[:8], on_mismatch="ignore")
    scale = figures["output_scale"]
    assert 1e-4 < scale < 0.1
    assert figures["relative_error"] == pytest.approx(figures["max_abs_error"] / scale)
    assert figures["relative_error"] > 0.1 and figures["passed"] is False
    assert check_tflite(small, path, X[:8])["passed"]


def test_an_int8_output_is_allowed_its_quantization_step(tmp_path):
    """An int8 output cannot be closer to Keras than its quantization step: the relative
    error subtracts the step that the file's output tensor declares."""
    from ai_edge_litert.interpreter import Interpreter

    model = _model(seed=3)
    report = _export(model, tmp_path / "q.tflite", quantize="int8", representative_data=X)
    (out,) = Interpreter(model_path=report.path).get_output_details()
    step = float(out["quantization"][0])
    assert out["dtype"] == np.int8 and step > 0
    figures = check_tflite(model, report.path, X[:8], quantize="int8")
    err, scale = figures["max_abs_error"], figures["output_scale"]
    assert err > 0
    assert figures["relative_error"] == pytest.approx(max(err - step, 0.0) / max(scale, 1e-3))


class TracedDiffers(L.Layer):
    """Doubles its input when Keras runs it eagerly and passes it through when traced for
    the export: a model whose ``.tflite`` differs from Keras."""

    def call(self, x):
        return x * 2.0 if tf.executing_eagerly() else x


def _differing_model():
    inp = keras.Input((8, 8, 3))
    y = L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(inp))
    return keras.Model(inp, TracedDiffers()(y))


_FIGURES = r"max abs error [\d.e+-]+, [\d.e+-]+ of the output scale [\d.e+-]+"


def test_a_failing_check_says_what_to_do(tmp_path):
    model, path = _differing_model(), tmp_path / "d.tflite"
    got = _message(_export, model, path, check_data=X[:6], error=ExportCheckError)
    assert re.fullmatch(
        "export_tflite: the .tflite model disagrees with Keras on 6 check inputs: "
        + _FIGURES
        + r", above the float32 tolerance 0.0001 \(CHECK_TOLERANCE\)\. "
        + re.escape(
            f"{path} was not written. Check the data (e.g. the input scaling the model was "
            "trained with), or pass check='warn' to write it anyway."
        ),
        got,
    ), got
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = _export(model, path, check_data=X[:6], check="warn")
    (w,) = [w for w in caught if "disagrees" in str(w.message)]
    assert str(w.message).endswith(f"; wrote {path} anyway (check='warn').")
    assert report.passed is False and path.exists()


def test_check_warn_warns_at_the_callers_line(tmp_path):
    # (deselected in the mutation runs: mutmut's trampoline is one more frame between the
    # caller and export_tflite, which the warning's stacklevel counts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _export(_differing_model(), tmp_path / "d.tflite", check_data=X[:6], check="warn")
    (w,) = [w for w in caught if "disagrees" in str(w.message)]
    assert w.filename == __file__  # the line that called export_tflite, via _export


def test_the_report_text(tiny, tmp_path):
    report = _export(tiny, tmp_path / "m.tflite", check=False)
    ops = ", ".join(sorted(set(report.ops)))
    assert str(report) == (
        f"exported {report.path} (float32, {report.size_bytes / 1024:.1f} KiB, ops: {ops})\n"
        "no self-check (check=False)"
    )


def test_the_default_check_takes_the_first_32_representative_samples(tiny, tmp_path):
    report = _export(tiny, tmp_path / "m.tflite", representative_data=X)
    assert report.num_samples == 32 and report.passed


class _Counting:
    """An iterable of batches that counts how many were taken."""

    def __init__(self, batches):
        self.batches, self.taken = batches, 0

    def __iter__(self):
        for b in self.batches:
            self.taken += 1
            yield b


def test_samples_reads_only_as_many_batches_as_it_needs():
    batches = [X[i : i + 4] for i in range(0, 40, 4)]  # ten batches of 4
    data = _Counting(batches)
    got = _samples(data, 6, "data", 3)
    assert got.shape == (6, 8, 8, 3) and data.taken == 2
    data = _Counting(batches)
    assert _samples(data, 8, "data", 3).shape == (8, 8, 8, 3) and data.taken == 2  # exactly enough
    data = _Counting(batches)
    np.testing.assert_array_equal(_samples(data, None, "data", 3), X)
    assert data.taken == 10
    # single samples (items of the model's input rank) count one each
    data = _Counting(list(X[:5]))
    np.testing.assert_array_equal(_samples(data, 3, "data", 3), X[:3])
    assert data.taken == 3
    data = _Counting([X[0], X[1:4], X[4]])  # samples and batches mixed
    np.testing.assert_array_equal(_samples(data, None, "data", 3), X[:5])
    assert "different shapes ([(4, 4, 3), (8, 8, 3)])" in _message(
        _samples, [X[0], X[1, :4, :4]], None, "representative_data", sample_ndim=3
    )


def test_an_unbatched_dataset_calibrates_and_checks(tiny, tmp_path):
    """``tf.data.Dataset.from_tensor_slices(x)`` yields single images: each is a sample
    (it was once concatenated along its height and refused)."""
    ds = tf.data.Dataset.from_tensor_slices(X)
    report = _export(
        tiny,
        tmp_path / "q.tflite",
        quantize="int8",
        representative_data=ds,
        num_calibration_steps=20,
        check_data=tf.data.Dataset.from_tensor_slices((X[:12], np.zeros(12))),
    )
    assert report.num_samples == 12 and report.passed


def test_one_array_sample_without_its_batch_axis_is_one_check_input(tiny, tmp_path):
    report = _export(tiny, tmp_path / "m.tflite", check_data=X[0])
    assert report.num_samples == 1 and report.passed


def test_float32_data_is_not_copied():
    """A few hundred float32 images are read in place, not duplicated."""
    got = _samples(X, None, "data", 3)
    assert np.shares_memory(got, X)
    assert _samples(X.astype(np.float64), None, "data", 3).dtype == np.float32


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_write_names_the_tflite_file(failing, tiny, tmp_path, monkeypatch):
    def fail(*args):
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(_io.os, failing, fail)
    path = tmp_path / "m.tflite"
    got = _message(_export, tiny, path, check=False, error=OSError)
    monkeypatch.undo()
    assert got == (
        f"[Errno {errno.ENOSPC}] cannot write the .tflite file {path}: No space left on "
        "device (injected)"
    )
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_the_timed_rewrite_keeps_its_measurements_in_the_given_cache(tmp_path):
    # export_tflite(prepare=True) hands cache_path to prepare_for_inference: the timings of
    # the factorized layer's arrangements land in that file, not in the default cache
    from keras_eigenconv import SVDConv2D

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    conv = L.Conv2D(16, 3, padding="same")
    conv(np.zeros((1, 8, 8, 3), "float32"))
    model = keras.Model(inp, SVDConv2D.from_conv2d(conv, rank=2)(inp))
    cache = tmp_path / "own" / "timings.json"
    report = export_tflite(
        model,
        tmp_path / "m.tflite",
        cache_path=cache,
        num_threads=1,
        check_data=X[:2],
        verbose=False,
    )
    assert report.passed and cache.exists()
    keys = [json.loads(k) for k in json.loads(cache.read_text())["entries"]]
    assert keys and all(k["threads"] == 1 for k in keys)  # timed with the export's threads


def test_num_threads_is_refused_by_name(tiny, tmp_path):
    assert _message(_export, tiny, tmp_path / "m.tflite", num_threads=0) == (
        "export_tflite: num_threads must be an int >= 1, got 0."
    )


def test_check_tflites_warning_points_outside_the_package(tmp_path):
    # at the caller's line (stacklevel); under mutation testing the caller is mutmut's
    # trampoline, so this only asserts that it is not export.py itself
    from keras_eigenconv.deploy import export

    path = _export(_model(seed=1), tmp_path / "a.tflite", check=False).path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures = check_tflite(_model(seed=2), path, X[:4], on_mismatch="warn")
    (w,) = [w for w in caught if "disagrees" in str(w.message)]
    assert not figures["passed"]
    assert not os.path.samefile(w.filename, export.__file__), w.filename


def test_int8_calibration_reads_the_first_num_calibration_steps_samples(tmp_path):
    """The activation ranges come from the first ``num_calibration_steps`` samples, each of
    them: the last of the three (10x larger) sets the input's int8 range, the samples after
    them (100x larger) do not."""
    from ai_edge_litert.interpreter import Interpreter

    rep = X.copy()
    rep[2] *= 10.0
    rep[3:] *= 100.0
    report = _export(
        _model(seed=4),
        tmp_path / "q.tflite",
        quantize="int8",
        representative_data=rep,
        num_calibration_steps=3,
        check=False,
    )
    (inp,) = Interpreter(model_path=report.path).get_input_details()
    scale = float(inp["quantization"][0])
    assert 9 / 255 < scale < 10.1 / 255, scale * 255  # the range of 10 X[2], in [0, 10)
