"""Effective-rank analysis on a network trained on real data (sklearn digits)."""

import keras
import numpy as np
import pytest

from keras_eigenconv.analysis import MEASURES, analyze, filter_ranks


def _cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )


def test_trained_filters_have_lower_effective_rank_than_at_init(digits, tmp_path):
    x, y = digits
    model = _cnn()
    before = analyze(model)
    # 10 epochs at 3e-3 then 2 at 3e-4 (47 steps an epoch): held-out accuracy 0.939-0.953
    # over seeds 0-3 (10 epochs at 3e-3 alone gave 0.852-0.939, too close to any bound)
    lr = keras.optimizers.schedules.PiecewiseConstantDecay([470], [3e-3, 3e-4])
    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x[:1500], y[:1500], epochs=12, batch_size=32, verbose=0)
    assert model.evaluate(x[1500:], y[1500:], verbose=0)[1] > 0.9
    png = tmp_path / "ranks.png"
    after = analyze(model, plot=png)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    # The paper's observation: training lowers the effective rank of the filters,
    # for whole filters (BasisConv/SVD rank) and per channel (DeCEF rank).
    for measure in ("filter_entropy", "filter_energy90", "decef_entropy", "decef_energy90"):
        assert after.mean(measure) < before.mean(measure) - 0.03, measure
    # On this 4-conv network the trained ranks are flat to slightly falling with depth
    # (measured depth trend of the whole-filter energy rank over seeds 0-3: -0.14 to +0.04).
    assert after.depth_trend("filter_energy90") <= 0.05
    assert len(after.rows) == 4 and after.rows[0]["kernel"] == (3, 3, 1, 16)
    for row in after.rows:
        for m in MEASURES:
            assert 0.0 < row[m] <= 1.0
    assert "filter_entropy" in str(after) and after.to_markdown().startswith("| depth")
    assert after.to_dict()["layers"][1]["layer"] == model.layers[1].name


def test_filter_ranks_of_known_matrices():
    rng = np.random.default_rng(0)
    # rank-2 whole-filter matrix (27 x 8): energy ranks 2/8, entropy rank <= 2
    a = rng.normal(size=(27, 2)) @ rng.normal(size=(2, 8))
    r = filter_ranks(a.reshape(3, 3, 3, 8))
    assert r["filter_energy99"] == pytest.approx(2 / 8)
    assert r["filter_entropy"] <= 2 / 8 + 1e-9
    # 1x1 convs have no per-channel eigen-filter rank
    assert filter_ranks(rng.normal(size=(1, 1, 4, 4)))["decef_entropy"] is None


def test_analyze_needs_convs_and_finite_weights():
    dense_only = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="no built Conv2D"):
        analyze(dense_only)
    model = _cnn()
    k = np.asarray(model.layers[0].kernel).copy()
    k[0, 0, 0, 0] = np.nan
    model.layers[0].kernel.assign(k)
    with pytest.raises(ValueError, match="NaN"):
        analyze(model)


def test_analyze_command_line(tmp_path):
    import json
    import subprocess
    import sys

    path = tmp_path / "cnn.keras"
    _cnn().save(path)
    png, js = tmp_path / "r.png", tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_eigenconv",
            "analyze",
            str(path),
            "--plot",
            str(png),
            "--json",
            str(js),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "filter_entropy" in proc.stdout and png.exists()
    assert len(json.loads(js.read_text())["layers"]) == 4
    bad = subprocess.run(
        [sys.executable, "-m", "keras_eigenconv", "analyze", "no_such_model"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "neither a .keras file" in bad.stderr
