"""A fast check of ``RankPruning`` on real data (scikit-learn's digits).

The slow test in ``test_training.py`` compares whole training runs with and without pruning
over three seeds; this one prunes once, at the end of a short training, and compares the
same network just before and just after the pruning step: the parameters shrink, and the
held-out accuracy stays within 3 points (measured over seeds 0-2: 0.92-0.94 before,
0.5-1.0 points lost, 11,076 -> 9,785-9,962 parameters).
"""

import keras
import numpy as np
import pytest

from keras_eigenconv import SVDConv2D
from keras_eigenconv.training import (
    RankPruning,
    SingularValueHoyer,
    SingularValueL1,
    add_svd_regularization,
    prune_svd_ranks,
    pruning_keep,
    set_svd_rank,
    svd_ranks,
)


def _net():
    reg = dict(orthogonality=1e-2, singular_value_regularizer=SingularValueL1(1e-3))
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            SVDConv2D(16, 3, rank=9, padding="same", activation="relu", **reg),
            SVDConv2D(32, 3, rank=32, padding="same", activation="relu", **reg),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


class _AccuracyBeforePruning(keras.callbacks.Callback):
    """Held-out accuracy and parameter count at each epoch end (runs before RankPruning)."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y, self.seen = x, y, []

    def on_epoch_end(self, epoch, logs=None):
        pred = np.argmax(np.asarray(self.model(self.x, training=False)), axis=-1)
        self.seen.append((float(np.mean(pred == self.y)), self.model.count_params()))


def test_rank_pruning_shrinks_the_net_and_keeps_its_accuracy(digits):
    x, y = digits
    x_test, y_test = x[1400:], y[1400:]
    model = _net()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    before = _AccuracyBeforePruning(x_test, y_test)
    pruning = RankPruning(energy=0.9, start_epoch=3, stop_epoch=3)
    model.fit(x[:1400], y[:1400], epochs=4, batch_size=32, verbose=0, callbacks=[before, pruning])
    acc_before, params_before = before.seen[-1]
    acc_after = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    assert acc_before > 0.85, before.seen  # the unpruned net has learned the digits
    ranks = svd_ranks(model)
    assert pruning.history == [{"epoch": 3, "ranks": ranks}]
    assert list(ranks.values())[1] < 32  # the wide layer lost rank ...
    assert model.count_params() <= 0.92 * params_before  # ... and the net >= 8% of its weights
    assert acc_after >= acc_before - 0.03, (acc_before, acc_after, ranks)


# --- the callback's schedule, rule and checks, without fit (fast) ------------------------


def _built_svd(rank=6, filters=8, channels=3):
    layer = SVDConv2D(filters, 3, rank=rank, padding="same")
    layer.build((None, 8, 8, channels))
    return layer


def _compiled(layer):
    model = keras.Sequential([keras.Input((8, 8, 3)), layer])
    model.compile("sgd", "mse")
    return model


def test_rank_pruning_prunes_on_its_schedule_only():
    model = _compiled(_built_svd(rank=6))
    cb = RankPruning(rule=lambda s: np.arange(s.size), start_epoch=1, every=2, stop_epoch=5)
    cb.set_model(model)
    for epoch in range(8):
        cb.on_epoch_end(epoch)
    assert [h["epoch"] for h in cb.history] == [1, 3, 5]


def test_rank_pruning_rule_keeps_its_indices_and_must_keep_one(capsys):
    layer = _built_svd(rank=6)
    model = _compiled(layer)
    s = np.abs(keras.ops.convert_to_numpy(layer.singular_values))
    cb = RankPruning(rule=lambda v: [4, 1], verbose=1)
    cb.set_model(model)
    cb.on_epoch_end(0)
    assert layer.rank == 2
    np.testing.assert_allclose(np.abs(keras.ops.convert_to_numpy(layer.singular_values)), s[[4, 1]])
    assert cb.history == [{"epoch": 0, "ranks": {layer.name: 2}}]
    assert capsys.readouterr().out == f"RankPruning epoch 1: ranks {{'{layer.name}': 2}}\n"
    empty = RankPruning(rule=lambda v: [])
    empty.set_model(model)
    with pytest.raises(ValueError, match=f"rule kept no singular value of '{layer.name}'"):
        empty.on_epoch_end(0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, r"pass energy=\.\.\. \(e\.g\. 0\.95\), threshold=\.\.\. \(e\.g\. 0\.05, relative "),
        ({"energy": 0.0}, r"energy must be in \(0, 1\], got 0\.0\."),
        ({"energy": 1.01}, r"energy must be in \(0, 1\], got 1\.01\."),
        ({"threshold": 1.0}, r"threshold must be in \[0, 1\), got 1\.0\."),
        ({"threshold": -0.1}, r"threshold must be in \[0, 1\), got -0\.1\."),
        ({"energy": 0.9, "every": 0}, "every and min_rank must be >= 1, start_epoch >= 0"),
        ({"energy": 0.9, "min_rank": 0}, "every and min_rank must be >= 1, start_epoch >= 0"),
        ({"energy": 0.9, "start_epoch": -1}, "every and min_rank must be >= 1, start_epoch >= 0"),
    ],
)
def test_rank_pruning_rejects_bad_arguments_by_name(kwargs, message):
    with pytest.raises(ValueError, match="RankPruning: " + message):
        RankPruning(**kwargs)


def test_rank_pruning_accepts_the_ends_of_its_ranges():
    assert RankPruning(energy=1.0).energy == 1.0
    assert RankPruning(threshold=0.0).threshold == 0.0
    cb = RankPruning(threshold=0.5, min_rank=2, every=3, start_epoch=0)
    assert (cb.min_rank, cb.every, cb.start_epoch) == (2, 3, 0)


def test_set_svd_rank_checks_keep_and_takes_integral_floats():
    layer = _built_svd(rank=6)
    for bad in ([0, 6], [], [1, 1], [-1, 2]):
        with pytest.raises(ValueError, match=r"keep must hold distinct indices in \[0, 6\)"):
            set_svd_rank(layer, bad)
    s = np.abs(keras.ops.convert_to_numpy(layer.singular_values))
    set_svd_rank(layer, np.array([5.0, 0.0]))  # e.g. read back from a JSON file
    assert layer.rank == 2
    np.testing.assert_allclose(np.abs(keras.ops.convert_to_numpy(layer.singular_values)), s[[5, 0]])


def test_set_svd_rank_decides_auto_again_like_a_fresh_layer():
    # "auto" picks dense or factorized from the rank: a layer cut to rank 1 decides as a
    # fresh rank-1 layer of the same shape does (here: not as it did at full rank)
    layer = SVDConv2D(64, 3, rank=192, padding="same", decomposition="spatial")  # full rank
    layer.build((None, 16, 16, 64))
    fresh = SVDConv2D(64, 3, rank=1, padding="same", decomposition="spatial")
    fresh.build((None, 16, 16, 64))
    before = layer.resolved_implementation
    assert before != fresh.resolved_implementation
    set_svd_rank(layer, [0])
    assert layer.resolved_implementation == fresh.resolved_implementation


def _svd_net():
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), SVDConv2D(8, 3, rank=6, padding="same", name="s")]
    )
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    return model


def test_model_wide_helpers_refuse_bad_arguments_with_their_advice():
    model = _svd_net()
    with pytest.raises(ValueError, match=r"^add_svd_regularization: pass l1 or hoyer, not both\.$"):
        add_svd_regularization(model, l1=0.1, hoyer=0.1)
    with pytest.raises(ValueError, match=r"^prune_svd_ranks: pass energy=\.\.\. or threshold="):
        prune_svd_ranks(model)


def test_add_svd_regularization_sets_the_l1_and_hoyer_regularizers():
    model = _svd_net()
    l1 = add_svd_regularization(model, l1=0.25).get_layer("s").singular_value_regularizer
    assert isinstance(l1, SingularValueL1) and l1.get_config()["l1"] == 0.25
    hoyer = add_svd_regularization(model, hoyer=0.5).get_layer("s").singular_value_regularizer
    assert isinstance(hoyer, SingularValueHoyer)
    assert model.get_layer("s").singular_value_regularizer is None  # the input is untouched


def test_prune_svd_ranks_by_threshold_keeps_what_pruning_keep_keeps():
    model = _svd_net()
    s = np.abs(keras.ops.convert_to_numpy(model.get_layer("s").singular_values))
    small = prune_svd_ranks(model, threshold=0.5)
    assert small.get_layer("s").rank == pruning_keep(s, threshold=0.5).size < 6
