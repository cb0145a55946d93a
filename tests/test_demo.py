"""The README's first command, `keras-eigenconv demo`, in a reduced mode."""

import json
import subprocess
import sys


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "keras_eigenconv", "demo", "--quick", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["original", "decef", "svd"]
    original = rows[0]
    for r in rows[1:]:
        assert r["MAC ratio"] <= 0.55  # converted at a 50% MAC budget
        assert r["params"] < original["params"]
        assert r["latency ms"] > 0 and r["tflite KiB"] > 0
    for r in rows:
        # the int8 .tflite, run on the whole test split, agrees with its Keras model: a
        # broken export or quantization (accuracy near chance, 0.1) cannot meet this
        assert abs(r["int8 acc"] - r["accuracy"]) <= 0.05, r
    for name in ("original", "decef", "svd"):
        assert (out / f"{name}.keras").exists()
        assert (out / f"{name}_int8.tflite").read_bytes()[4:8] == b"TFL3"
    assert (out / "accuracy_vs_macs.png").exists() and (out / "ranks.png").exists()
    table = proc.stdout
    assert "latency ratio" in table and "decef" in table and str(out) in table


def test_demo_rejects_a_bad_budget(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_eigenconv",
            "demo",
            "--budget",
            "1.5",
            "-o",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "--budget must be in (0, 1]" in proc.stderr
