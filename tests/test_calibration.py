"""Data-aware conversion (``convert(..., calibration_data=...)``), its maths and its checks.

The network is a small CNN trained here on scikit-learn's digits (real data, 16x16); the
calibration set is 128 of its training images, the measurements use the held-out test
images (never seen by the calibration).
"""

import keras
import numpy as np
import pytest

import keras_eigenconv as ke
from keras_eigenconv import decompositions as dec
from keras_eigenconv.compress import calibration as cal
from keras_eigenconv.demo import load_digits_images


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    x, y, xt, yt = load_digits_images(size=16, seed=0)
    L = keras.layers
    inp = keras.Input((16, 16, 1))
    h = L.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inp)
    h = L.Conv2D(32, 3, padding="same", use_bias=False, name="c2")(h)
    h = L.BatchNormalization(momentum=0.9, name="bn2")(h)
    h = L.ReLU()(h)
    h = L.MaxPooling2D()(h)
    h = L.Conv2D(48, 3, padding="same", activation="relu", name="c3")(h)
    h = L.Conv2D(48, 3, padding="same", activation="relu", name="c4")(h)
    h = L.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, L.Dense(10, name="head")(h))
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=10, batch_size=64, verbose=0)
    return model, x, xt, yt


def _output_error(model, new, x):
    a, b = np.asarray(model(x)), np.asarray(new(x))
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


@pytest.mark.parametrize("method", ["svd", "decef", "tucker2"])
def test_data_aware_beats_data_free_at_every_budget(trained, method):
    model, x, xt, _ = trained
    weights = [np.asarray(w).copy() for w in model.weights]
    for budget in (0.7, 0.5, 0.35):
        free, rep_free = ke.convert(model, method=method, budget={"macs": budget})
        aware, rep = ke.convert(
            model, method=method, budget={"macs": budget}, calibration_data=x[:128]
        )
        assert rep.macs_ratio <= budget + 1e-9
        e_free, e_aware = _output_error(model, free, xt), _output_error(model, aware, xt)
        assert e_aware < e_free, (method, budget, e_aware, e_free)
        assert {r.objective.split("+")[0] for r in rep.replaced} == {"data"}
        assert all(r.output_error is not None for r in rep.replaced)
        assert rep.calibration["fit_samples"] + rep.calibration["heldout_samples"] == 128
        assert rep_free.calibration is None
    for w, before in zip(model.weights, weights):  # the user's model is untouched
        np.testing.assert_array_equal(np.asarray(w), before)


def test_the_refit_lowers_the_output_error(trained):
    model, x, xt, _ = trained
    kw = dict(method="svd", budget={"macs": 0.35}, calibration_data=x[:128])
    plain, _ = ke.convert(model, refit=False, batchnorm=None, **kw)
    refitted, rep = ke.convert(model, batchnorm=None, **kw)
    assert any("refit" in r.objective for r in rep.replaced)
    assert _output_error(model, refitted, xt) < _output_error(model, plain, xt)


def test_methods_that_cannot_use_data_say_so(trained):
    model, x, _, _ = trained
    _, rep = ke.convert(model, method="cp", rank=4, calibration_data=x[:64])
    assert rep.replaced
    assert all(r.objective.startswith("kernel") for r in rep.replaced)
    assert "kernel" in str(rep)


def test_whitened_low_rank_is_the_closed_form_optimum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 10)) @ rng.normal(size=(10, 10))  # correlated inputs
    w = rng.normal(size=(10, 6))
    for r in (1, 2, 4):
        a, b, e = dec.whitened_low_rank(w, x.T @ x, r, ridge=0.0)
        u, s, vt = np.linalg.svd(x @ w, full_matrices=False)
        best = (u[:, :r] * s[:r]) @ vt[:r]  # Eckart-Young: best rank-r approximation of XW
        np.testing.assert_allclose(x @ a @ b, best, atol=1e-8)
        pa, pb, pe = dec.response_projection(w, w.T @ x.T @ x @ w, r)
        np.testing.assert_allclose(x @ pa @ pb, best, atol=1e-8)
        np.testing.assert_allclose(e[: len(pe)], pe, rtol=1e-8)
        # the energies give the error: ||XW - XW_r||^2 = sum of the energies after r
        err2 = np.linalg.norm(x @ w - x @ a @ b) ** 2
        np.testing.assert_allclose(err2, e[r:].sum(), rtol=1e-8)
        # and it beats the kernel's own truncated SVD on this data
        ku, ks, kvt = np.linalg.svd(w, full_matrices=False)
        kernel_best = (ku[:, :r] * ks[:r]) @ kvt[:r]
        assert err2 <= np.linalg.norm(x @ w - x @ kernel_best) ** 2 + 1e-9


def test_least_squares_refit_matches_lstsq():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(200, 5))
    y = z @ rng.normal(size=(5, 3)) + np.array([1.0, -2.0, 0.5]) + 0.01 * rng.normal(size=(200, 3))
    k, b = dec.least_squares_refit(z.T @ z, z.T @ y, z.sum(0), y.sum(0), len(z), ridge=0.0)
    ref, *_ = np.linalg.lstsq(np.hstack([z, np.ones((200, 1))]), y, rcond=None)
    np.testing.assert_allclose(k, ref[:5], atol=1e-9)
    np.testing.assert_allclose(b, ref[5], atol=1e-9)


def test_recalibrate_batchnorm_restores_the_input_statistics(trained):
    model, x, _, _ = trained
    broken = keras.models.clone_model(model)
    broken.set_weights(model.get_weights())
    bn = broken.get_layer("bn2")
    bn.moving_mean.assign(np.full(bn.moving_mean.shape, 5.0, "float32"))
    bn.moving_variance.assign(np.full(bn.moving_variance.shape, 9.0, "float32"))
    fixed = ke.recalibrate_batchnorm(broken, x[:256], batch_size=32)
    assert float(np.asarray(bn.moving_mean)[0]) == 5.0  # the input model is untouched
    # the BN's input is c2's output (nothing before it is a BatchNorm): exact statistics
    probe = keras.Model(broken.inputs, broken.get_layer("c2").output)
    h = np.asarray(probe(x[:256])).reshape(-1, 32).astype(np.float64)
    new_bn = fixed.get_layer("bn2")
    np.testing.assert_allclose(np.asarray(new_bn.moving_mean), h.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(new_bn.moving_variance), h.var(0), rtol=1e-3, atol=1e-5)
    # the statistics do not depend on the broken ones: recalibrating the trained model
    # gives the same network
    xt = x[256:512]
    again = ke.recalibrate_batchnorm(model, x[:256], batch_size=32)
    np.testing.assert_array_equal(np.asarray(again(xt)), np.asarray(fixed(xt)))
    # and it is close to the trained one again (not exactly: training kept a moving
    # average over changing weights, measured 0.10-0.14 here, against 1.0 broken)
    e_broken, e_fixed = _output_error(model, broken, xt), _output_error(model, fixed, xt)
    assert e_fixed < 0.2 and e_broken > 0.9


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 8, 8, 1), "float32"), r"shape \(8, 8, 1\).*\(16, 16, 1\)"),
        (np.zeros((0, 16, 16, 1), "float32"), "empty"),
        (np.full((4, 16, 16, 1), np.nan, "float32"), "NaN or Inf"),
        (np.full((4, 16, 16, 1), np.inf, "float32"), "NaN or Inf"),
        (np.array([["a"] * 16] * 16)[None, ..., None], "dtype"),
        ("calib.npy", "string"),
        (42, "must be an array"),
    ],
)
def test_bad_calibration_data_is_refused_before_any_work(trained, bad, match):
    model, *_ = trained
    with pytest.raises(ValueError, match=match):
        ke.convert(model, method="svd", budget={"macs": 0.5}, calibration_data=bad)


def test_calibration_batches_accept_datasets_and_iterables(trained):
    import tensorflow as tf

    model, x, _, _ = trained
    ds = tf.data.Dataset.from_tensor_slices((x[:40], np.zeros(40))).batch(16)
    batches = cal.calibration_batches(ds, model)
    assert [len(b) for b in batches] == [16, 16, 8]
    assert len(cal.calibration_batches(iter([x[:5], x[5:9]]), model, steps=1)) == 1
    with pytest.raises(ValueError, match="calibration_steps"):
        cal.calibration_batches(x, model, steps=0)


def test_distill_recovers_the_teacher_on_unlabeled_data(trained):
    model, x, xt, _ = trained
    student, _ = ke.convert(model, method="svd", budget={"macs": 0.35})
    before = _output_error(model, student, xt)
    hist = ke.distill(student, model, x[:512], epochs=3, learning_rate=1e-3, batch_size=64)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert _output_error(model, student, xt) < 0.8 * before
    with pytest.raises(ValueError, match="shape"):
        ke.distill(student, model, np.zeros((4, 8, 8, 1), "float32"))
    with pytest.raises(ValueError, match="NaN"):
        ke.distill(student, model, np.full((4, 16, 16, 1), np.nan, "float32"))


def test_distillation_losses_are_zero_at_the_teacher():
    from keras_eigenconv.training import distillation_loss

    logits = np.random.default_rng(0).normal(size=(5, 10)).astype("float32")
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for kind, y in (("logits", logits), ("probabilities", probs), ("mse", logits)):
        loss = distillation_loss(kind, temperature=2.0)
        assert float(np.max(np.asarray(loss(y, y)))) < 1e-5
        assert float(np.min(np.asarray(loss(y, np.roll(y, 1, axis=0))))) > 1e-3


def test_cli_convert_with_calibration_images(trained, tmp_path):
    from PIL import Image

    from keras_eigenconv.cli import main

    model, x, _, _ = trained
    path = tmp_path / "model.keras"
    model.save(path)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(24):  # real digits, written as 8-bit grayscale images
        Image.fromarray((x[i, ..., 0] * 255).astype("uint8")).save(folder / f"{i:03d}.png")
    out = tmp_path / "small.keras"
    js = tmp_path / "report.json"
    code = main(
        [
            "convert",
            str(path),
            "--method",
            "svd",
            "--budget-macs",
            "0.5",
            "--calibration-data",
            str(folder),
            "--calibration-scale",
            str(1 / 255),
            "-o",
            str(out),
            "--json",
            str(js),
            "--no-progress",
        ]
    )
    assert code == 0
    import json

    report = json.loads(js.read_text())
    assert report["calibration"]["fit_samples"] + report["calibration"]["heldout_samples"] == 24
    assert all(r["objective"].startswith("data") for r in report["layers"] if r["replaced"])
    assert main(["convert", str(path), "--calibration-data", str(tmp_path / "nope")]) == 1
