"""Quiet command line, untouched library: TensorFlow's logs are hidden in the
``keras-eigenconv`` process only (``keras_eigenconv._quiet``), never for library users."""

import json
import os
import re
import subprocess
import sys

import pytest

from keras_eigenconv import _quiet

# a line TensorFlow, absl, CUDA, oneDNN, the TFLite converter or LiteRT writes
TF_LOG = re.compile(
    r"^[IWEF]\d{4} |absl::|oneDNN|cuInit|cudart|cuda_|fully_quantize|Statistics for quantized"
    r"|tensorflow/|WARNING:tensorflow|WARNING:absl|XNNPACK delegate|cpu_feature_guard",
    re.MULTILINE,
)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(extra)
    return env


@pytest.mark.parametrize(
    "argv,orig_argv,expected",
    [
        (["/venv/bin/keras-eigenconv", "demo"], ["python", "/venv/bin/keras-eigenconv"], True),
        (["-m", "demo"], ["python", "-m", "keras_eigenconv", "demo"], True),
        (["-m"], ["python3", "-u", "-mkeras_eigenconv"], True),
        (["-m", "x"], ["python", "-m", "keras_eigenconv.cli.main", "x"], True),
        # other programs that import the library: untouched
        (["-m", "-q"], ["python", "-m", "pytest", "-q"], False),
        (["-m"], ["python", "-m", "keras_eigenconv_extra"], False),
        (["-c"], ["python", "-c", "import keras_eigenconv"], False),
        (["train.py"], ["python", "train.py"], False),
        (["/x/keras-eigenconv-like"], ["python", "/x/keras-eigenconv-like"], False),
        ([], ["python"], False),
    ],
)
def test_only_the_cli_process_counts_as_the_cli(argv, orig_argv, expected):
    assert _quiet.is_cli_process(argv, orig_argv) is expected


def test_verbose_turns_quiet_off():
    assert _quiet.quiet_requested(["keras-eigenconv", "demo", "--quick"])
    assert not _quiet.quiet_requested(["keras-eigenconv", "demo", "--verbose"])
    assert not _quiet.quiet_requested(["keras-eigenconv", "--verbose", "demo"])
    assert _quiet.quiet_requested(["keras-eigenconv", "x", "--", "--verbose"])


def test_importing_the_library_changes_no_global_state():
    # everything the package itself imports first, then a snapshot, then the package
    code = r"""
import io, json, logging, os, sys, warnings
import numpy, keras, tensorflow, sklearn, matplotlib
try:
    import ai_edge_litert.interpreter
except ImportError:
    pass
def snapshot():
    st = os.fstat(2)
    return {
        "environ": dict(os.environ),
        "fd2": [st.st_dev, st.st_ino],
        "stderr_is_original": sys.stderr is sys.__stderr__,
        "stdout_is_original": sys.stdout is sys.__stdout__,
        "loggers": {n: logging.getLogger(n).level for n in ("", "tensorflow", "absl", "keras")},
        "filters": [repr(f) for f in warnings.filters],
    }
before = snapshot()
import keras_eigenconv
from keras_eigenconv import _quiet
after = snapshot()
print(json.dumps({"before": before, "after": after, "silenced": _quiet.is_silenced()}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["silenced"] is False
    # (Keras itself sets TF_CPP_MIN_LOG_LEVEL=1 when imported; the package adds nothing)
    assert got["after"]["environ"].get("TF_CPP_MIN_LOG_LEVEL") != "3"
    for key in ("environ", "fd2", "stderr_is_original", "stdout_is_original", "loggers"):
        assert got["after"][key] == got["before"][key], key
    assert got["after"]["filters"] == got["before"]["filters"]


def _cli(*args, verbose=False):
    argv = [sys.executable, "-m", "keras_eigenconv", *args] + (["--verbose"] if verbose else [])
    return subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=300)


def test_cli_error_is_one_line_without_tensorflow_logs():
    proc = _cli("convert", "nosuchnet", "--weights", "none")
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert not TF_LOG.search(out), out[:2000]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-eigenconv convert: error:"), lines
    assert "nosuchnet" in lines[0] and "--verbose" in lines[0]


def test_cli_verbose_shows_tensorflow_logs():
    # the same command with --verbose: TensorFlow's import-time lines (written to fd 2
    # before absl's log is initialized: oneDNN, cudart, cpu_feature_guard) come through
    proc = _cli("convert", "nosuchnet", "--weights", "none", verbose=True)
    assert proc.returncode == 1
    assert TF_LOG.search(proc.stderr), proc.stderr[:2000]
    assert "keras-eigenconv convert: error:" in proc.stderr
