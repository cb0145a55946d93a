"""Robustness probes: the public API and the CLI used as a careless user would.

One section per numbered item of the issue "Nothing lost, nothing silent" (each failed
before the fix): 1. atomic export, 2. int8 calibration arguments, 3. threads and process-wide
state, 4. the timing cache, 5. budgets, 6. advice in errors, 7. one-line CLI errors,
8. unbounded work in layers. The probes are tables over the public writers, functions and
CLI verbs, so a new writer or verb is one more row. Every probe asserts the exact outcome:
an error naming the problem, the previous file intact (no partial or temporary file left),
and the user's model unchanged.

Write failures are made real without privileges (tests run as root, so ``chmod`` does not
stop writes): a regular FILE used as the folder, a directory where a file is expected, and
failures injected into the package's own writer module (``keras_eigenconv._io``: its
``os.fsync``/``os.replace`` and the file object's ``write``). Nothing of TensorFlow, Keras or
LiteRT is mocked.
"""

import errno
import json
import math
import multiprocessing
import os
import sys
import threading
import time
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import random_conv

import keras_eigenconv  # noqa: F401  (registers the layers)
from keras_eigenconv import _io
from keras_eigenconv.analysis import analyze
from keras_eigenconv.cli import main as cli_main
from keras_eigenconv.cli.commands import save_model_atomically
from keras_eigenconv.compress import convert, get_method, registered_methods
from keras_eigenconv.compress.ranks import parse_budget
from keras_eigenconv.deploy import (
    ExportCheckError,
    TimingCache,
    TimingCacheWarning,
    bench_tflite,
    export_tflite,
    prepare_for_inference,
    run_tflite,
)
from keras_eigenconv.deploy.litert import convert_model, tflite_converter
from keras_eigenconv.layers import NaiveTTConv2D, SVDConv2D, TTConv2D, TTDense

L = keras.layers


# ---- shared models and helpers ---------------------------------------------------------


def _small_model(channels=3, size=8):
    """Input -> SVDConv2D (from a random conv) -> pooling -> Dense softmax."""
    inp = keras.Input((size, size, channels))
    conv = random_conv((1, size, size, channels), filters=8, kernel_size=3, padding="same")
    y = SVDConv2D.from_conv2d(conv, rank=2)(inp)
    y = L.GlobalAveragePooling2D()(y)
    y = L.Dense(4, activation="softmax")(y)
    return keras.Model(inp, y)


@pytest.fixture(scope="module")
def small():
    keras.utils.set_random_seed(0)
    return _small_model()


@pytest.fixture(autouse=True)
def _private_timing_cache(tmp_path, monkeypatch):
    """Never touch the user's ~/.cache: the default timing cache lives in tmp_path."""
    monkeypatch.setenv("KERAS_EIGENCONV_TIMING_CACHE", str(tmp_path / "default_cache.json"))


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def _assert_unchanged(model, before):
    after = model.get_weights()
    assert len(after) == len(before)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def _leftovers(folder, keep):
    """Files in ``folder`` other than ``keep`` (temporary or partial files)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


X8 = np.random.default_rng(1).random((6, 8, 8, 3), dtype=np.float32)


@pytest.fixture
def good_tflite(tmp_path, small):
    """A good .tflite already at the target path, and its bytes."""
    path = tmp_path / "out" / "model.tflite"
    export_tflite(small, path, prepare=False, verbose=False)
    return path, path.read_bytes()


# ---- 1. export is atomic ---------------------------------------------------------------

# Arguments that fail; each must fail before any work (no timing cache written) and leave the
# existing file as it was.
BAD_EXPORT_ARGS = {
    "check_data of the wrong shape": (
        dict(check_data=np.zeros((4, 5, 5, 3), "float32")),
        "check_data has samples of shape",
    ),
    "labels not matching check_data": (
        dict(check_data=X8, labels=np.zeros(3, "int32")),
        "3 labels for 6 check inputs",
    ),
    "labels without check_data": (dict(labels=[1, 2]), "labels need check_data"),
    "NaN check_data": (dict(check_data=np.full((2, 8, 8, 3), np.nan)), "NaN or inf"),
    "string check_data": (dict(check_data=np.array(["a", "b"])), "must hold numbers"),
    "empty check_data": (dict(check_data=np.zeros((0, 8, 8, 3))), "check_data is empty"),
    "unknown quantize": (dict(quantize="int4"), "quantize must be one of"),
    "unknown check mode": (dict(check="maybe"), "check must be 'raise', 'warn' or False"),
    "unknown strategy": (dict(strategy="fastest"), "strategy must be one of"),
    "num_check_samples=0": (dict(num_check_samples=0), "num_check_samples must be an int"),
    "num_threads=0": (dict(num_threads=0), "num_threads must be an int"),
}


@pytest.mark.parametrize("case", sorted(BAD_EXPORT_ARGS))
def test_bad_export_arguments_fail_up_front_and_keep_the_old_file(case, good_tflite, small):
    path, old = good_tflite
    kwargs, message = BAD_EXPORT_ARGS[case]
    before = _weights(small)
    cache = path.parent / "cache.json"
    with pytest.raises(ValueError, match=message):
        export_tflite(small, path, cache_path=cache, verbose=False, **kwargs)
    assert path.read_bytes() == old
    assert _leftovers(path.parent, {path.name}) == []
    assert not cache.exists()  # failed before the (timed) inference rewrite
    _assert_unchanged(small, before)


class TracedDiffers(L.Layer):
    """Doubles its input when Keras runs it eagerly and passes it through when it is traced
    for the export: a real model whose ``.tflite`` differs from Keras."""

    def call(self, x):
        return x * 2.0 if tf.executing_eagerly() else x


def _differing_model():
    inp = keras.Input((8, 8, 3))
    y = L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(inp))
    return keras.Model(inp, TracedDiffers()(y))


def test_a_failing_self_check_writes_nothing_and_keeps_the_old_file(good_tflite):
    path, old = good_tflite
    model = _differing_model()
    with pytest.raises(ExportCheckError, match=r"disagrees with Keras.*left unchanged"):
        export_tflite(model, path, prepare=False, check_data=X8, verbose=False)
    assert path.read_bytes() == old
    assert run_tflite(path, X8[:2])[0].shape == (2, 4)  # still the good, loadable model
    assert _leftovers(path.parent, {path.name}) == []
    with pytest.raises(ExportCheckError, match="was not written"):
        export_tflite(model, path.parent / "new.tflite", prepare=False, verbose=False)
    assert not (path.parent / "new.tflite").exists()
    # warn: written, flagged; False: written, not checked
    with pytest.warns(UserWarning, match="disagrees with Keras"):
        report = export_tflite(model, path, prepare=False, check="warn", verbose=False)
    assert report.passed is False and path.read_bytes() != old
    report = export_tflite(model, path, prepare=False, check=False, verbose=False)
    assert report.passed is None and report.max_abs_error is None
    assert "no self-check" in str(report)


def _fail_fsync(monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(_io.os, "fsync", fsync)


def _fail_replace(monkeypatch):
    def replace(src, dst):
        raise OSError(errno.EXDEV, "rename failed (injected)")

    monkeypatch.setattr(_io.os, "replace", replace)


class _HalfWriter:
    """A file whose ``write`` writes half of the data, then fails (a full disk)."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _fail_half_write(monkeypatch):
    real_open = open

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _HalfWriter(f) if "w" in mode else f

    monkeypatch.setattr(_io, "open", fake_open, raising=False)


INJECTED = {"fsync fails": _fail_fsync, "rename fails": _fail_replace}
INJECTED["write fails half-way"] = _fail_half_write


def _plot_model():
    inp = keras.Input((8, 8, 3))
    return keras.Model(inp, L.Conv2D(8, 3)(L.Conv2D(8, 3)(inp)))


# Every writer of the package: (file name, old content, write(path, model)).
WRITERS = {
    ".tflite (export_tflite)": (
        "m.tflite",
        b"old tflite",
        lambda path, model: export_tflite(model, path, prepare=False, verbose=False),
    ),
    ".keras (CLI convert -o)": (
        "m.keras",
        b"old keras",
        lambda path, model: save_model_atomically(model, path),
    ),
    ".png (analyze plot)": (
        "ranks.png",
        b"old png",
        lambda path, model: analyze(_plot_model(), plot=path),
    ),
    ".json (timing cache)": (
        "timings.json",
        b'{"version": 1, "entries": {}}',
        lambda path, model: TimingCache(path).save({"k": {"seconds": 1.0}}),
    ),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("failure", sorted(INJECTED))
def test_a_failure_mid_write_keeps_the_old_file(writer, failure, tmp_path, small, monkeypatch):
    name, old, write = WRITERS[writer]
    if failure == "write fails half-way" and name.endswith((".keras", ".png")):
        pytest.skip("Keras and matplotlib write the temporary file themselves")
    path = tmp_path / name
    path.write_bytes(old)
    before = _weights(small)
    INJECTED[failure](monkeypatch)
    if name == "timings.json":  # the cache never raises: it warns and keeps timings in memory
        with pytest.warns(TimingCacheWarning, match="in memory"):
            merged = write(path, small)
        assert "k" in merged
    else:
        with pytest.raises(OSError, match="injected"):
            write(path, small)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert _leftovers(tmp_path, {name, name + ".lock"}) == []
    _assert_unchanged(small, before)


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("where", ["under a regular file", "a directory"])
def test_unwritable_targets_fail_clearly(writer, where, tmp_path, small):
    name, _, write = WRITERS[writer]
    if where == "under a regular file":
        (tmp_path / "afile").write_text("not a folder")
        path, error, message = tmp_path / "afile" / name, NotADirectoryError, "is a file"
    else:
        path, error, message = tmp_path / name, IsADirectoryError, "is a directory"
        path.mkdir()
    if name == "timings.json":  # the cache warns and keeps its timings in memory
        with pytest.warns(TimingCacheWarning, match="in memory"):
            write(path, small)
    else:
        with pytest.raises(error, match=message) as info:
            write(path, small)
        assert str(path) in str(info.value)
    if where == "a directory":
        assert path.is_dir() and not any(path.iterdir())
    else:
        assert (tmp_path / "afile").read_text() == "not a folder"


def test_atomic_writes_keep_the_targets_permissions_and_fsync(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text("{}")
    os.chmod(path, 0o640)
    synced = []
    real = _io.os.fsync
    monkeypatch.setattr(_io.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    _io.atomic_write_text(path, '{"a": 1}')
    assert json.loads(path.read_text()) == {"a": 1}
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)
    assert synced  # the data reached the disk before the rename


# ---- 2. int8 that is not int8 -----------------------------------------------------------

CALIBRATION = {
    "steps=-5": (dict(num_calibration_steps=-5), "num_calibration_steps must be an int >= 1"),
    "steps=0": (dict(num_calibration_steps=0), "num_calibration_steps must be an int >= 1"),
    "steps=2.5": (dict(num_calibration_steps=2.5), "num_calibration_steps must be an int"),
    "steps=True": (dict(num_calibration_steps=True), "num_calibration_steps must be an int"),
    "NaN data": (dict(representative_data=np.full((8, 8, 8, 3), np.nan)), "NaN or inf"),
    "inf data": (
        dict(representative_data=np.where(X8 > 0.5, np.inf, X8)),
        "NaN or inf value",
    ),
    "wrong shape": (
        dict(representative_data=np.zeros((8, 8, 8))),
        r"has shape \(8, 8, 8\): neither one sample",
    ),
    "strings": (dict(representative_data=[["a"]] * 4), "must hold numbers"),
    "empty": (dict(representative_data=[]), "representative_data is empty"),
    "none": (dict(representative_data=None), "needs representative_data"),
}


@pytest.mark.parametrize("case", sorted(CALIBRATION))
def test_int8_calibration_arguments_are_checked(case, tmp_path, small):
    kwargs = {"representative_data": X8, **CALIBRATION[case][0]}
    with pytest.raises(ValueError, match=CALIBRATION[case][1]):
        export_tflite(
            small, tmp_path / "q.tflite", quantize="int8", prepare=False, verbose=False, **kwargs
        )
    assert not (tmp_path / "q.tflite").exists()


def test_a_valid_int8_export_is_int8(tmp_path, small):
    report = export_tflite(
        small,
        tmp_path / "q.tflite",
        quantize="int8",
        representative_data=X8,
        num_calibration_steps=6,
        prepare=False,
        verbose=False,
    )
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=report.path)
    assert it.get_input_details()[0]["dtype"] == np.int8
    assert report.passed and math.isfinite(report.max_abs_error)


# ---- 3. threads: no process-wide state --------------------------------------------------


def test_conversion_leaves_sys_stdout_alone(small, capsys):
    """The converter calls the representative generator inside ``convert()``: there,
    ``sys.stdout`` must still be the process's stdout (it was a StringIO)."""
    seen = []
    original = sys.stdout

    def gen():
        for i in range(3):
            seen.append(sys.stdout)
            yield [X8[i : i + 1]]

    content = convert_model(tflite_converter(small, "int8", gen, int8_io=True))
    assert content and seen and all(s is original for s in seen)
    assert sys.stdout is original
    assert "Saved artifact" not in capsys.readouterr().out  # and nothing was printed


def test_prepare_from_several_threads(tmp_path, capsys):
    cache = tmp_path / "shared_timings.json"
    models = [_small_model(channels=c) for c in (3, 5, 6)]
    original = sys.stdout
    errors, reports = [], []

    def work(model):
        try:
            reports.append(
                prepare_for_inference(model, cache_path=cache, num_threads=1, return_report=True)
            )
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sys.stdout is original
    print("still visible")
    assert "still visible" in capsys.readouterr().out
    measured = sum(r.measured for _, r in reports)
    entries = TimingCache(cache).load()
    assert measured == len(entries) >= len(models)  # no thread lost another's entries
    assert _leftovers(tmp_path, {cache.name, cache.name + ".lock"}) == []


def test_timing_cache_saves_from_many_threads(tmp_path):
    path = tmp_path / "timings.json"
    errors = []

    def work(i):
        try:
            for j in range(25):
                TimingCache(path).save({f"{i}-{j}": {"seconds": float(j)}})
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(TimingCache(path).load()) == 200
    assert _leftovers(tmp_path, {path.name, path.name + ".lock"}) == []


def _save_entries(path, i):
    for j in range(20):
        TimingCache(path).save({f"p{i}-{j}": {"seconds": 1.0}})


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method")
def test_timing_cache_saves_from_several_processes(tmp_path):
    path = str(tmp_path / "timings.json")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_save_entries, args=(path, i)) for i in range(3)]
    with warnings.catch_warnings():  # fork in a multi-threaded process (TF): children only
        warnings.simplefilter("ignore", DeprecationWarning)  # write files
        for p in procs:
            p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(TimingCache(path).load()) == 60


# ---- 4. the timing cache: corrupt, unreadable, read-only -------------------------------

CORRUPT = {
    "random bytes": os.urandom(64) + b"\xff\xfe",
    "UTF-16 JSON": json.dumps({"version": 1, "entries": {}}).encode("utf-16"),
    "a JSON list": b"[1, 2, 3]",
    "entries of the wrong type": b'{"version": 1, "entries": [1, 2]}',
    "truncated JSON": b'{"version": 1, "entries": {"a": {"seconds": 1.',
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_a_corrupt_cache_is_moved_aside(case, tmp_path, small):
    cache = tmp_path / "timings.json"
    cache.write_bytes(CORRUPT[case])
    with pytest.warns(TimingCacheWarning, match="moved it to"):
        new = prepare_for_inference(small, strategy="cost_model", cache_path=cache)
    assert isinstance(new, keras.Model)
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == CORRUPT[case]


def test_null_entries_are_dropped_with_a_warning(tmp_path, small):
    cache = tmp_path / "timings.json"
    good = {"seconds": 1e-3, "features": {"conv": 1.0, "ops": 1.0}}
    cache.write_text(json.dumps({"version": 1, "entries": {"a": None, "b": good, "c": {}}}))
    with pytest.warns(TimingCacheWarning, match="dropped 2 malformed entries"):
        prepare_for_inference(small, strategy="cost_model", cache_path=cache)
    with pytest.warns(TimingCacheWarning, match="dropped 2"):  # still in the file: warned again
        assert TimingCache(cache).load() == {"b": good}


def test_export_measures_past_a_corrupt_cache_and_starts_a_new_one(tmp_path, small):
    cache = tmp_path / "timings.json"
    cache.write_bytes(CORRUPT["random bytes"])
    with pytest.warns(TimingCacheWarning, match="started a new cache"):
        report = export_tflite(small, tmp_path / "m.tflite", cache_path=cache, verbose=False)
    assert report.passed and report.prepare["measured"] >= 2
    assert len(json.loads(cache.read_text())["entries"]) == report.prepare["measured"]


@pytest.mark.parametrize("where", ["a directory", "under a regular file", "a read-only file"])
def test_an_unusable_cache_location_keeps_timings_in_memory(where, tmp_path, small):
    if where == "a directory":
        cache = tmp_path / "timings.json"
        cache.mkdir()
        message = "is a directory"
    elif where == "under a regular file":
        (tmp_path / "afile").write_text("x")
        cache = tmp_path / "afile" / "timings.json"
        message = "keeping the timings in memory"
    else:
        cache = tmp_path / "timings.json"
        cache.write_text('{"version": 1, "entries": {}}')
        os.chmod(cache, 0o444)
        message = "read-only"
    with pytest.warns(TimingCacheWarning, match=message):
        _, report = prepare_for_inference(small, cache_path=cache, return_report=True)
    assert report.measured >= 2  # timed all the same
    if where == "a read-only file":
        assert cache.read_text() == '{"version": 1, "entries": {}}'  # not replaced
    elif where == "a directory":
        assert cache.is_dir() and not any(cache.iterdir())


# ---- 5. budgets are never missed silently -----------------------------------------------


def _nan_kernel_model():
    inp = keras.Input((16, 16, 3))
    y = L.Conv2D(16, 3, padding="same", name="c1")(inp)
    y = L.Conv2D(32, 3, padding="same", name="c2")(y)
    y = L.Conv2D(32, 3, padding="same", name="c3")(y)
    model = keras.Model(inp, y)
    k = np.asarray(model.get_layer("c2").kernel).copy()
    k[0, 0, 0, 0] = np.nan
    model.get_layer("c2").kernel.assign(k)
    return model


def test_a_missed_budget_raises_naming_the_layer():
    model = _nan_kernel_model()
    before = [np.asarray(w).copy() for w in model.weights]
    with pytest.raises(ValueError, match=r"budget .* was missed.*c2 \(cannot convert.*NaN"):
        convert(model, method="svd", budget={"macs": 0.5})
    for a, w in zip(before, model.weights):
        np.testing.assert_array_equal(a, np.asarray(w))


def test_strict_false_returns_with_budget_met_false_and_a_warning():
    with pytest.warns(UserWarning, match=r"missed.*could not be reduced: c2"):
        new, report = convert(_nan_kernel_model(), method="svd", budget={"macs": 0.5}, strict=False)
    assert report.budget_met is False and report.macs_ratio > 0.5
    assert report.to_dict()["budget_met"] is False and "budget MISSED" in str(report)
    assert isinstance(new, keras.Model)


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), 0.5])
def test_numpy_budgets_are_numbers(value):
    inp = keras.Input((16, 16, 3))
    y = L.Conv2D(32, 3, padding="same")(L.Conv2D(16, 3, padding="same")(inp))
    model = keras.Model(inp, L.Conv2D(32, 3, padding="same")(y))
    _, report = convert(model, method="svd", budget={"macs": value})
    assert report.budget_met is True and report.macs_ratio <= 0.5
    assert parse_budget({"params": np.int64(1000)}) == ("params", 1000.0)


@pytest.mark.parametrize("value", [np.nan, np.inf, -0.5, 0, True, "0.5", None, np.bool_(True)])
def test_bad_budgets_are_refused(value):
    with pytest.raises(ValueError, match=r"budget\['macs'\]=.* must be a positive, finite"):
        parse_budget({"macs": value})


# ---- 6. the advice in errors works ------------------------------------------------------


def test_two_input_export_advice_works(tmp_path):
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], L.Dense(2)(L.Concatenate()([a, b])))
    with pytest.raises(ValueError, match="pass check=False to export without it"):
        export_tflite(model, tmp_path / "two.tflite", verbose=False)
    report = export_tflite(model, tmp_path / "two.tflite", check=False, verbose=False)
    assert report.size_bytes > 0 and (tmp_path / "two.tflite").exists()


def test_lambda_model_advice_works(tmp_path):
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, L.Lambda(lambda t: t * 2.0)(L.Conv2D(4, 3)(inp)))
    with pytest.raises(
        ValueError,
        match=r"cannot rebuild model '.*' for inference: .* To export the model as it is, "
        r"without the inference rewrite, pass prepare=False to export_tflite \(keras-eigenconv "
        r"export --no-prepare\), or replace the layer \(e\.g\. a Lambda by a registered "
        r"custom layer\)\.",
    ):
        export_tflite(model, tmp_path / "l.tflite", strategy="cost_model", verbose=False)
    report = export_tflite(model, tmp_path / "l.tflite", prepare=False, verbose=False)
    assert report.passed


# ---- 7. the CLI: one line on stderr, never a traceback ----------------------------------


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, small):
    d = tmp_path_factory.mktemp("cli")
    small.save(d / "m.keras")
    (d / "bad.h5").write_bytes(os.urandom(256))
    (d / "bad.keras").write_bytes(os.urandom(256))
    (d / "bad.npy").write_bytes(b"not numpy")
    (d / "afile").write_text("a regular file")
    export_tflite(small, d / "m.tflite", prepare=False, verbose=False)
    return d


# argv (with {d} for the folder), exit code, words the one line must hold
CLI_PROBES = [
    (["convert", "{d}/bad.h5"], 1, ["bad.h5", "file signature not found"]),
    (["export", "{d}/bad.h5"], 1, ["bad.h5", "cannot load"]),
    (["analyze", "{d}/bad.h5"], 1, ["bad.h5", "cannot load"]),
    (["convert", "{d}/bad.keras"], 1, ["bad.keras", "not a valid .keras file"]),
    (["export", "{d}/bad.keras"], 1, ["bad.keras", "not a valid .keras file"]),
    (["convert", "{d}/m.keras", "--json", "{d}/afile/r.json"], 1, ["afile", "is a file"]),
    (["convert", "{d}/m.keras", "--markdown", "{d}"], 1, ["is a directory"]),
    (["convert", "{d}/m.keras", "-o", "{d}"], 1, ["-o", ".keras"]),
    (["convert", "{d}/m.keras", "-o", "{d}/afile/x.keras"], 1, ["afile", "is a file"]),
    (["export", "{d}/m.keras", "-o", "{d}"], 1, ["is a directory"]),
    (["export", "{d}/m.keras", "--json", "{d}/afile/r.json"], 1, ["is a file"]),
    (["export", "{d}/m.keras", "--check-data", "{d}/bad.npy"], 1, ["bad.npy", "not a readable"]),
    (["export", "{d}/m.keras", "--check-data", "{d}/none.npy"], 1, ["none.npy", "no such"]),
    (["export", "{d}/m.keras", "--quantize", "int8"], 1, ["--representative-data"]),
    (["export", "{d}/m.keras", "--calibration-steps", "-5"], 2, ["--calibration-steps", ">= 1"]),
    (["export", "{d}/m.keras", "--calibration-steps", "0"], 2, ["--calibration-steps", ">= 1"]),
    (["bench", "{d}"], 1, ["is a directory"]),
    (["bench", "{d}/m.keras"], 1, ["m.keras", "not a loadable .tflite"]),
    (["bench", "{d}/m.tflite", "--runs", "0"], 2, ["--runs", ">= 1"]),
    (["bench", "{d}/m.tflite", "--json", "{d}/afile/b.json"], 1, ["is a file"]),
    (["analyze", "{d}/m.keras", "--plot", "{d}/afile/p.png"], 1, ["afile", "is a file"]),
    (["convert", "{d}/m.keras", "--budget-macs", "nan"], 2, ["--budget-macs", "finite"]),
    (["convert", "{d}/m.keras", "--round-to", "0"], 2, ["--round-to", ">= 1"]),
    (["demo", "-o", "{d}/afile", "--quick"], 1, ["afile", "is a file"]),
]


def _run_cli(argv, d, capsys):
    argv = [a.replace("{d}", str(d)) for a in argv]
    try:
        code = cli_main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,code,words", CLI_PROBES, ids=[" ".join(a).replace("{d}/", "") for a, _, _ in CLI_PROBES]
)
def test_cli_failures_are_one_line(argv, code, words, cli_files, capsys):
    before = {p.name: p.read_bytes() for p in cli_files.iterdir() if p.is_file()}
    got, err = _run_cli(argv, cli_files, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"keras-eigenconv {argv[0]}: error: "), lines[0]
    assert "Traceback" not in err
    for w in words:
        assert w.replace("{d}", str(cli_files)) in lines[0], lines[0]
    after = {p.name: p.read_bytes() for p in cli_files.iterdir() if p.is_file()}
    assert after == before  # nothing written, nothing lost


def test_cli_debug_shows_the_traceback(cli_files):
    with pytest.raises(ValueError, match="not a valid .keras file"):
        cli_main(["--debug", "convert", str(cli_files / "bad.keras")])
    with pytest.raises(ValueError, match="not a valid .keras file"):
        cli_main(["convert", str(cli_files / "bad.keras"), "--debug"])


def test_bench_arguments_are_checked(cli_files):
    for kwargs, message in (
        (dict(rounds=0), "rounds must be an int >= 1"),
        (dict(num_threads=0), "num_threads must be an int >= 1"),
        (dict(warmup=-1), "warmup must be an int >= 0"),
        (dict(runs_per_round=0), "runs_per_round must be an int >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            bench_tflite([cli_files / "m.tflite"], **kwargs)
    with pytest.raises(ValueError, match="no .tflite files"):
        bench_tflite([])


# ---- 8. unbounded work: huge ranks, bad cost() shapes -----------------------------------

HUGE_RANKS = {
    "TTConv2D.from_conv2d rank=10**6": lambda conv, dense: TTConv2D.from_conv2d(conv, rank=10**6),
    "TTConv2D.from_conv2d rank=2000": lambda conv, dense: TTConv2D.from_conv2d(conv, rank=2000),
    "TTConv2D(rank=[10**5]*3).build": lambda conv, dense: TTConv2D(64, 3, rank=[10**5] * 3).build(
        (None, 8, 8, 64)
    ),
    "NaiveTTConv2D.from_conv2d rank=10**6": lambda conv, dense: NaiveTTConv2D.from_conv2d(
        conv, rank=10**6
    ),
    "NaiveTTConv2D.from_conv2d rank=2000": lambda conv, dense: NaiveTTConv2D.from_conv2d(
        conv, rank=2000
    ),
    "TTDense.from_dense rank=10**6": lambda conv, dense: TTDense.from_dense(dense, rank=10**6),
    "TTDense(rank=3000).build": lambda conv, dense: TTDense(256, rank=3000).build((None, 512)),
}


@pytest.mark.parametrize("case", sorted(HUGE_RANKS))
def test_huge_tt_ranks_are_refused_before_allocating(case):
    conv = random_conv((1, 8, 8, 64), filters=64, kernel_size=3)
    dense = L.Dense(256)
    dense.build((None, 512))
    t = time.perf_counter()
    with pytest.raises(ValueError, match=r"exceed the full TT-ranks .* Pass ranks at most"):
        HUGE_RANKS[case](conv, dense)
    assert time.perf_counter() - t < 30  # refused, not computed (it took minutes or OOM)


def test_ranks_above_full_within_the_limit_still_work():
    layer = TTConv2D(64, 3, rank=[22, 20, 20, 1])  # the paper's r0 = 22 > 3*3
    layer.build((None, 8, 8, 64))
    assert layer.tt_ranks(64) == (22, 20, 20, 1)


BAD_SHAPES = ["abc", (16, 16), (16, 16, 0), (16, 16, -3), (16, 16, 2.5), 7, (16, None, None)]


_LAYERS = {}


def _method_layer(name):
    """One converted layer per registered method (built once)."""
    if name not in _LAYERS:
        method = get_method(name)
        if method.layer.source_type is L.Dense:
            source = L.Dense(8)
            source.build((None, 12))
        else:
            source = random_conv((1, 9, 9, 4), filters=8, kernel_size=3, padding="same")
        _LAYERS[name] = method.build(source, energy=0.7)
    return _LAYERS[name]


@pytest.mark.parametrize("name", registered_methods())
def test_cost_rejects_bad_shapes_for_every_method(name):
    layer = _method_layer(name)
    dense = isinstance(layer, TTDense)
    for shape in BAD_SHAPES:
        if dense and shape == (16, 16):  # (batch, features) is a valid Dense shape
            shape = (16, 0)
        with pytest.raises(ValueError, match=r"\.cost: input_shape must be"):
            layer.cost(shape)
    good = (None, 12) if dense else (9, 9, 4)
    assert layer.cost(good).macs > 0
