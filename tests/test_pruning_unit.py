"""A fast check of ``RankPruning`` on real data (scikit-learn's digits).

The slow test in ``test_training.py`` compares whole training runs with and without pruning
over three seeds; this one prunes once, at the end of a short training, and compares the
same network just before and just after the pruning step: the parameters shrink, and the
held-out accuracy stays within 3 points (measured over seeds 0-2: 0.92-0.94 before,
0.5-1.0 points lost, 11,076 -> 9,785-9,962 parameters).
"""

import keras
import numpy as np

from keras_eigenconv import SVDConv2D
from keras_eigenconv.training import RankPruning, SingularValueL1, svd_ranks


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
