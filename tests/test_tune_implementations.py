"""``training.tune_implementations``: each factorized layer's training path, measured."""

import json

import keras
import numpy as np
import pytest

from keras_eigenconv import SVDConv2D
from keras_eigenconv.compress import convert
from keras_eigenconv.training import tune_implementations

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="training steps are timed in TensorFlow"
)


def _model():
    """A trained-looking conv net converted to SVD: ``low`` (rank 1 of a 64->64 3x3 conv: the
    factor ops are 1/30 of the dense MACs), ``fixed`` (implementation fixed by the user)."""
    rng = np.random.default_rng(0)
    x = keras.Input((16, 16, 8))
    y = keras.layers.Conv2D(64, 3, padding="same", name="stem")(x)
    y = keras.layers.Conv2D(64, 3, padding="same", name="low")(y)
    y = keras.layers.Conv2D(32, 3, padding="same", name="fixed")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    plain = keras.Model(x, keras.layers.Dense(3, name="head")(y))
    for w in plain.weights:
        w.assign(rng.normal(size=w.shape).astype("float32") * 0.1)
    model, _ = convert(
        plain, {"low": "svd", "fixed": "svd"}, rank={"low": 1, "fixed": 2}, progress=False
    )
    fixed = model.get_layer("fixed")
    forced = SVDConv2D.from_config({**fixed.get_config(), "implementation": "factorized"})
    y = model.get_layer("low").output
    y = forced(y)
    forced.set_weights(fixed.get_weights())
    y = model.get_layer(model.layers[-2].name)(y)
    return keras.Model(model.input, model.get_layer("head")(y)), rng


def test_each_layer_gets_its_faster_measured_path_in_a_copy(tmp_path):
    model, rng = _model()
    cache = tmp_path / "train.json"
    before = [np.asarray(w).copy() for w in model.weights]
    tuned, report = tune_implementations(model, batch_size=8, cache_path=cache, rounds=3)

    # the user's model is untouched; the copy owns equal weights
    assert all(
        la.training_implementation is None for la in model.layers if isinstance(la, SVDConv2D)
    )
    for b, w, t in zip(before, model.weights, tuned.weights):
        np.testing.assert_array_equal(b, np.asarray(w))
        np.testing.assert_array_equal(b, np.asarray(t))
        assert t is not w
    # one tuned layer; the one with a fixed implementation is left as it is, with why
    assert [c.path for c in report.choices] == ["low"]
    assert report.skipped == [("fixed", "implementation='factorized' is fixed")]
    (choice,) = report.choices
    assert choice.chosen == ("factorized" if choice.factorized_s < choice.dense_s else "dense")
    # rank 1 against a 64->64 dense kernel: the factor ops measure faster
    assert choice.chosen == "factorized" and choice.ratio < 1
    low = tuned.get_layer("low")
    assert low.training_implementation == choice.chosen
    assert low.resolved_training_implementation == choice.chosen
    assert tuned.get_layer("fixed").training_implementation is None

    # both paths were timed and cached, keyed by the path
    entries = json.loads(cache.read_text())
    entries = entries.get("entries", entries)
    paths = [json.loads(k)["ops"][0][1]["training_implementation"] for k in entries]
    assert sorted(paths) == ["dense", "factorized"] and report.measured == 2

    # the same function, in inference and in training
    x = rng.normal(size=(4, 16, 16, 8)).astype("float32")
    np.testing.assert_array_equal(model(x), tuned(x))
    np.testing.assert_allclose(model(x, training=True), tuned(x, training=True), atol=1e-4)

    # tuning again reads the cache: nothing timed, the same choices
    _, again = tune_implementations(model, batch_size=8, cache_path=cache, rounds=3)
    assert again.measured == 0 and again.choices == report.choices
    assert "low" in str(report) and "| low |" in report.to_markdown()


def test_the_choice_survives_a_keras_file_and_the_copy_trains(tmp_path):
    model, rng = _model()
    tuned, report = tune_implementations(
        model, batch_size=8, cache_path=tmp_path / "t.json", rounds=2
    )
    path = tmp_path / "tuned.keras"
    tuned.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("low").training_implementation == report.choices[0].chosen
    loaded.compile("sgd", "mse")
    x = rng.normal(size=(8, 16, 16, 8)).astype("float32")
    loss = loaded.fit(x, np.zeros((8, 3), "float32"), verbose=0).history["loss"][0]
    assert np.isfinite(loss)


def test_bad_arguments_get_clear_errors(tmp_path):
    model, _ = _model()
    with pytest.raises(ValueError, match="batch must be an int >= 1"):
        tune_implementations(model, batch_size=0, cache_path=tmp_path / "t.json")
    with pytest.raises(ValueError, match="rounds must be an int >= 1"):
        tune_implementations(model, rounds=0, cache_path=tmp_path / "t.json")
    with pytest.raises(ValueError, match="must be a built keras.Model"):
        tune_implementations(
            keras.Sequential([keras.layers.Dense(2)]), cache_path=tmp_path / "t.json"
        )
    with pytest.raises(ValueError, match="must be a built keras.Model"):
        tune_implementations("model.keras", cache_path=tmp_path / "t.json")
