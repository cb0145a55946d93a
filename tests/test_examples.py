"""The examples run end to end on sklearn digits with --smoke (as a user would run them)."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

import keras_eigenconv  # noqa: F401  (registers the layers for load_model)

ROOT = Path(__file__).resolve().parents[1]


def _run(script, tmp_path):
    out = tmp_path / "model.keras"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, out


@pytest.mark.slow
def test_train_decef_cifar10_smoke(tmp_path):
    stdout, out = _run("train_decef_cifar10.py", tmp_path)
    assert "DeCEF ranks per conv" in stdout
    model = keras.models.load_model(out)
    kinds = {type(la).__name__ for la in model.layers}
    assert "DeCEFConv2D" in kinds  # at least one conv became DeCEF
    assert "replaced 0 of" not in stdout


@pytest.mark.slow
def test_finetune_applications_smoke(tmp_path):
    stdout, out = _run("finetune_applications.py", tmp_path)
    assert "final val accuracy" in stdout
    model = keras.models.load_model(out)
    assert model.output_shape == (None, 10)
