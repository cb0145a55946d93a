"""``training.tune_implementations``: each factorized layer's training path, measured."""

import json

import keras
import numpy as np
import pytest

from keras_eigenconv import SVDConv2D, graph
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
    with pytest.raises(ValueError, match="tune_implementations: batch_size must be an int >= 1"):
        tune_implementations(model, batch_size=0, cache_path=tmp_path / "t.json")
    with pytest.raises(ValueError, match="tune_implementations: rounds must be an int >= 1"):
        tune_implementations(model, rounds=0, cache_path=tmp_path / "t.json")
    with pytest.raises(ValueError, match="must be a built keras.Model"):
        tune_implementations(
            keras.Sequential([keras.layers.Dense(2)]), cache_path=tmp_path / "t.json"
        )
    with pytest.raises(ValueError, match="must be a built keras.Model"):
        tune_implementations("model.keras", cache_path=tmp_path / "t.json")


def test_the_layers_of_a_subclassed_model_are_tuned_in_its_copy(tmp_path):
    # the users' subclassed net: convs in an attribute, in auto-named blocks (which a copy
    # of the model renames), in a dict and in a nested Sequential
    from test_models_users_have import _trained_net

    plain, _ = _trained_net()
    net, _ = convert(plain, "svd", rank=2, skip_first=False, progress=False)
    tuned, report = tune_implementations(
        net, batch_size=4, cache_path=tmp_path / "t.json", rounds=1
    )

    def svd_layers(model):
        return [la for _, la in graph.walk(model) if isinstance(la, SVDConv2D)]

    assert len(report.choices) == len(svd_layers(net)) >= 4
    assert [b.name for b in tuned.blocks] != [b.name for b in net.blocks]  # renamed
    assert [la.training_implementation for la in svd_layers(tuned)] == [
        c.chosen for c in report.choices
    ]
    assert all(la.training_implementation is None for la in svd_layers(net))


def test_ties_go_to_dense_and_a_layer_called_twice_sums_its_calls(tmp_path):
    from keras_eigenconv.deploy import TrainStepTimer
    from keras_eigenconv.training import training_path_variants

    shared = SVDConv2D(8, 3, rank=2, padding="same", name="shared")
    x = keras.Input((16, 16, 8))
    model = keras.Model(x, shared(keras.layers.MaxPooling2D()(shared(x))))
    cache = tmp_path / "t.json"
    timer = TrainStepTimer(cache, batch=4)
    shapes = [(None, 16, 16, 8), (None, 8, 8, 8)]
    variants = training_path_variants(shared)
    for shape, seconds in zip(shapes, (0.002, 0.001)):  # equal per path at each shape
        for v in variants.values():
            timer.entries[timer.key([v], shape)] = {"seconds": seconds}
    timer.cache.save(timer.entries)
    _, report = tune_implementations(model, batch_size=4, cache_path=cache)
    (choice,) = report.choices
    assert report.measured == 0  # read from the cache written above
    assert choice.input_shapes == tuple(shapes)
    assert choice.factorized_s == choice.dense_s == pytest.approx(0.003)
    assert choice.chosen == "dense"


def test_layers_that_cannot_be_tuned_are_reported_and_kept(tmp_path):
    from keras_eigenconv import BasisConv2D, NaiveTTConv2D

    @keras.saving.register_keras_serializable(package="test_tune")
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = SVDConv2D(8, 3, rank=2, padding="same", name="inner")

        def build(self, input_shape):
            self.conv.build(input_shape)

        def call(self, x):
            return self.conv(x)

    x = keras.Input((16, 16, 8))
    y = BasisConv2D(8, 3, rank=4, batch_norm=True, padding="same", name="bn_basis")(x)
    y = Block(name="block")(y)
    y = NaiveTTConv2D(8, 3, rank=2, padding="same", name="naive_tt")(y)  # dense either way
    y = SVDConv2D(8, 3, rank=2, padding="same", name="fixed", training_implementation="dense")(y)
    model = keras.Model(x, y)
    tuned, report = tune_implementations(
        model, batch_size=4, cache_path=tmp_path / "t.json", rounds=2
    )
    assert dict(report.skipped) == {
        "bn_basis": "trains one way only",
        "block/inner": "inside a custom layer, copied whole from its config",
        "naive_tt": "trains one way only",
    }
    # a training_implementation set before is measured again (the last layer)
    assert [c.path for c in report.choices] == ["fixed"]
    assert tuned.get_layer("fixed").training_implementation == report.choices[0].chosen
    assert tuned.get_layer("bn_basis").resolved_training_implementation == "factorized"


def test_copy_false_sets_the_layers_of_the_model_itself(tmp_path):
    model, _ = _model()
    cache = tmp_path / "t.json"
    copied, report = tune_implementations(model, batch_size=8, cache_path=cache, rounds=2)
    same, again = tune_implementations(model, batch_size=8, cache_path=cache, copy=False)
    assert same is model and again.measured == 0 and again.choices == report.choices
    assert model.get_layer("low").training_implementation == report.choices[0].chosen
    assert model.get_layer("low").resolved_training_implementation == report.choices[0].chosen
