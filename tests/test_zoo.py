"""The paper's CIFAR-10 networks: parameter counts against the paper; reduced TT nets learn."""

import keras
import numpy as np
import pytest

from keras_eigenconv import model_cost
from keras_eigenconv.layers import TTConv2D, TTDense
from keras_eigenconv.zoo import (
    cifar10_conv_fc_net,
    cifar10_convnet,
    paper_lr_schedule,
    paper_recipe,
)


def _params(model):
    """Parameters by keras count_params and by model_cost (they must agree)."""
    n = model.count_params()
    assert model_cost(model).total.total_params == n
    return n


def test_conv_net_has_557k_parameters_and_tt_conv_compresses_it_3_2x():
    plain = cifar10_convnet()
    tt = cifar10_convnet(conv="tt")
    n_plain, n_tt = _params(plain), _params(tt)
    assert abs(n_plain / 557_000 - 1) < 0.01, n_plain
    assert 3.1 < n_plain / n_tt < 3.35, n_plain / n_tt  # paper: 3.23x
    ranks = {
        ly.name: ly.tt_ranks(int(ly.input.shape[-1]))
        for ly in tt.layers
        if isinstance(ly, TTConv2D)
    }
    assert ranks == {
        "conv2": (22, 20, 20, 1),
        "conv3": (27, 22, 22, 1),
        "conv4": (23, 23, 23, 1),
        "conv5": (23, 23, 23, 1),
        "conv6": (23, 23, 23, 1),
    }
    assert type(tt.get_layer("conv1")) is keras.layers.Conv2D  # first conv stays dense
    assert plain.output.shape == (None, 10)


def test_conv_fc_net_tt_conv_and_tt_fc_compress_it_about_42x():
    plain = cifar10_conv_fc_net()
    both = cifar10_conv_fc_net(conv="tt", fc="tt")
    n_plain, n_both = _params(plain), _params(both)
    assert 13.5e6 < n_plain < 14.5e6, n_plain  # "14M"
    assert 40 < n_plain / n_both < 44, n_plain / n_both  # paper: 41.65x
    fc1, fc2 = both.get_layer("fc1"), both.get_layer("fc2")
    assert isinstance(fc1, TTDense) and fc1.tt_ranks(8192) == (1, 40, 40, 40, 1)
    assert fc1.modes(8192) == ((8, 8, 8, 16), (4, 6, 8, 8))
    assert fc2.tt_ranks(1536) == (1, 30, 30, 30, 1)
    assert both.get_layer("conv4").tt_ranks(128) == (16, 16, 16, 1)


def test_lr_schedule_and_errors():
    s = paper_lr_schedule(0.1)
    assert [s(e) for e in (0, 29, 30, 59, 60, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.0001]
    )
    with pytest.raises(ValueError, match="'plain' or 'tt'"):
        cifar10_convnet(conv="svd")
    with pytest.raises(ValueError, match="6 conv widths"):
        cifar10_convnet(filters=(8, 8))


@pytest.mark.parametrize("kind", ["tt-conv", pytest.param("tt-conv+tt-fc", marks=pytest.mark.slow)])
def test_reduced_tt_networks_learn_digits(digits, kind):
    x, y = digits
    reduced = dict(
        input_shape=(8, 8, 1), filters=(16, 16, 32, 32, 32, 32), tt_ranks=4, bn_momentum=0.9
    )
    if kind == "tt-conv":
        model = cifar10_convnet(conv="tt", **reduced)
    else:
        model = cifar10_conv_fc_net(
            conv="tt", fc="tt", fc_units=(64, 32), fc_ranks=(4, 4), fc_num_modes=2, **reduced
        )
    assert sum(isinstance(ly, (TTConv2D, TTDense)) for ly in model.layers) >= 5
    h = paper_recipe(
        model,
        x[:1400],
        y[:1400],
        validation_data=(x[1400:], y[1400:]),
        epochs=5,
        batch_size=50,
        initial_lr=0.02,
        verbose=0,
    )
    loss = h.history["loss"]
    assert loss[-1] < 0.5 * loss[0], loss
    assert h.history["val_accuracy"][-1] > 0.7, h.history["val_accuracy"]
    assert np.isfinite(model.predict(x[:5], verbose=0)).all()
