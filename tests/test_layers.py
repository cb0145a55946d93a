"""What is specific to DeCEF, BasisConv and SVD: BatchNorm in BasisConv, the "auto"
implementation's cost model, from-scratch initialization, errors of the constructors.

The contract every method shares (exact at full rank for every geometry, error monotone in
rank, folding, serialization, export) is tested once for all in ``test_contract.py``."""

import keras
import numpy as np
import pytest
from helpers import max_rel_err as _max_err
from helpers import random_conv as _conv

from keras_eigenconv import BasisConv2D, DeCEFConv2D, SVDConv2D
from keras_eigenconv.layers.base import AUTO_TRAINING_THRESHOLD

# (class, constructor/method options)
METHODS = [
    (DeCEFConv2D, {}),
    (BasisConv2D, {}),
    (BasisConv2D, {"trainable_basis": True}),
    (SVDConv2D, {"decomposition": "channel"}),
    (SVDConv2D, {"decomposition": "spatial"}),
]
IDS = ["decef", "basis", "basis-trainable", "svd-channel", "svd-spatial"]


def test_basis_batchnorm_is_exact_in_inference_and_folds():
    x = np.random.default_rng(4).normal(size=(2, 9, 9, 3)).astype("float32")
    conv = _conv(x.shape, filters=6, kernel_size=3, padding="same")
    layer = BasisConv2D.from_conv2d(conv, batch_norm=True)
    assert layer.resolved_implementation == "factorized"
    assert _max_err(conv(x), layer(x, training=False)) < 2e-5
    # moving statistics that differ from the identity still fold exactly
    layer.bn.moving_mean.assign(np.linspace(-1, 1, layer.rank).astype("float32"))
    layer.bn.moving_variance.assign(np.linspace(0.5, 2, layer.rank).astype("float32"))
    layer.bn.gamma.assign(np.linspace(0.5, 1.5, layer.rank).astype("float32"))
    assert _max_err(layer(x, training=False), layer.to_conv2d()(x)) < 2e-5
    with pytest.raises(ValueError, match="dense"):
        BasisConv2D(4, 3, rank=2, batch_norm=True, implementation="dense")


def test_implementation_auto_follows_the_cost_model():
    # DeCEF at high rank: depthwise with multiplier 6 costs more than a dense conv -> dense.
    high = DeCEFConv2D(64, 3, rank=6)
    high.build((None, 16, 16, 64))
    assert high.resolved_implementation == "dense"
    low = DeCEFConv2D(64, 3, rank=1)
    low.build((None, 16, 16, 64))
    assert low.resolved_implementation == "factorized"
    svd = SVDConv2D(64, 3, rank=16)
    svd.build((None, 16, 16, 64))
    assert svd.resolved_implementation == "factorized"
    full = SVDConv2D(64, 3, rank=64)  # more MACs than the conv: run the conv
    full.build((None, 56, 56, 64))
    assert full.resolved_implementation == "dense"
    # at 7x7, rebuilding a rank-307 kernel per call costs 6x the conv itself
    deep = SVDConv2D(512, 3, rank=307)
    deep.build((None, 7, 7, 512))
    assert deep.resolved_implementation == "factorized"
    assert deep.time_ratio_estimate((None, 7, 7, 512)) < 0.2


def test_from_scratch_initialization_keeps_the_initializer_scale():
    c, n = 32, 48
    for cls, opts in METHODS:
        layer = cls(n, 3, rank=4, kernel_initializer="glorot_normal", **opts)
        layer.build((None, 8, 8, c))
        k = np.asarray(layer.full_kernel())
        expected_std = np.sqrt(2.0 / (9 * c + 9 * n))
        assert abs(k.std() / expected_std - 1) < 0.15, (cls.__name__, opts, k.std())


def test_basis_from_scratch_is_seeded_orthogonal_and_frozen():
    a = BasisConv2D(8, 3, rank=5, seed=7)
    b = BasisConv2D(8, 3, rank=5, seed=7)
    a.build((None, 6, 6, 3))
    b.build((None, 6, 6, 3))
    fa = np.asarray(a.basis).reshape(27, 5)
    np.testing.assert_allclose(fa.T @ fa, np.eye(5), atol=1e-5)
    np.testing.assert_array_equal(fa, np.asarray(b.basis).reshape(27, 5))
    assert not a.basis.trainable and a.combination.trainable
    assert [w.name for w in a.trainable_weights] == ["combination", "bias"]


def test_basis_batchnorm_saves_bit_exact(tmp_path):
    inputs = keras.Input((10, 10, 3))
    layer = BasisConv2D(8, 3, rank=3, padding="same", batch_norm=True, seed=1)
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(5).normal(size=(2, 10, 10, 3)).astype("float32")
    model.compile("sgd", "mse")
    model.fit(x, np.zeros((2, 10, 10, 8), "float32"), epochs=1, verbose=0)  # moves the BN stats
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    for w1, w2 in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(w1, w2)


def test_keras_serialization_names_the_package():
    ser = keras.saving.serialize_keras_object(DeCEFConv2D(4, 3, rank=2))
    assert ser["registered_name"] == "keras_eigenconv>DeCEFConv2D"


@pytest.mark.parametrize("cls", [DeCEFConv2D, BasisConv2D, SVDConv2D])
def test_clear_errors(cls):
    conv = _conv((1, 8, 8, 3), filters=4, kernel_size=3)
    with pytest.raises(ValueError, match=r"rank=0 is outside"):
        cls.from_conv2d(conv, rank=0)
    with pytest.raises(ValueError, match=r"rank=99 is outside \[1, \d+\]"):
        cls.from_conv2d(conv, rank=99)
    with pytest.raises(ValueError, match="rank=0"):
        cls(4, 3, rank=0)
    too_big = cls(4, 3, rank=50, name="big")
    with pytest.raises(ValueError, match="'big'.*rank=50"):
        too_big.build((None, 8, 8, 3))
    for energy in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"energy.*\(0, 1\]"):
            cls.from_conv2d(conv, energy=energy)
    with pytest.raises(ValueError, match="not both"):
        cls.from_conv2d(conv, rank=1, energy=0.5)
    grouped = keras.layers.Conv2D(4, 3, groups=2, name="grp")
    grouped.build((1, 8, 8, 4))
    with pytest.raises(ValueError, match="'grp' has groups=2"):
        cls.from_conv2d(grouped)
    with pytest.raises(ValueError, match="channels_last"):
        cls(4, 3, rank=1, data_format="channels_first")
    cf = keras.layers.Conv2D(4, 3, data_format="channels_first", name="cf")
    cf.build((1, 3, 8, 8))
    with pytest.raises(ValueError, match="'cf'.*channels_first"):
        cls.from_conv2d(cf)
    with pytest.raises(ValueError, match="not built"):
        cls.from_conv2d(keras.layers.Conv2D(4, 3, name="unbuilt"))
    for bad in (np.nan, np.inf):
        broken = _conv((1, 8, 8, 3), filters=4, kernel_size=3, name="broken")
        k = np.asarray(broken.kernel).copy()
        k[0, 0, 0, 0] = bad
        broken.kernel.assign(k)
        with pytest.raises(ValueError, match="'broken' contains NaN or Inf"):
            cls.from_conv2d(broken)
    with pytest.raises(ValueError, match="needs a keras.layers.Conv2D"):
        cls.from_conv2d(keras.layers.DepthwiseConv2D(3))
    with pytest.raises(ValueError, match="dilation_rate"):
        cls(4, 3, rank=1, strides=2, dilation_rate=2)
    with pytest.raises(ValueError, match="implementation"):
        cls(4, 3, rank=1, implementation="fast")


def test_from_conv2d_does_not_touch_the_source_layer():
    conv = _conv((1, 8, 8, 3), filters=4, kernel_size=3, activation="relu")
    before = [np.asarray(w).copy() for w in conv.weights]
    config = conv.get_config()
    DeCEFConv2D.from_conv2d(conv, rank=2)
    assert conv.get_config() == config
    for a, b in zip(before, conv.weights):
        np.testing.assert_array_equal(a, b)


def _traced_op_types(layer, shape, training):
    import tensorflow as tf

    fn = tf.function(lambda x: layer(x, training=training))
    graph = fn.get_concrete_function(tf.TensorSpec((2, *shape[1:]), "float32")).graph
    return {op.type for op in graph.get_operations()}


def test_implementation_auto_chooses_the_training_path_by_the_training_step():
    # DeCEF rank 5 at 56x56x64: the backward kernels of a depthwise conv with multiplier 5
    # are slow (measured 1.6x the conv's training step) -> dense in training
    decef = DeCEFConv2D(64, 3, rank=5, padding="same")
    decef.build((None, 56, 56, 64))
    assert decef.training_time_ratio_estimate((None, 56, 56, 64)) > 1
    assert decef.resolved_training_implementation == "dense"
    # DeCEF rank 3 at 8x8x64: the forward model picks factorized, the training step dense
    low = DeCEFConv2D(64, 3, rank=3, padding="same")
    low.build((None, 8, 8, 64))
    assert low.resolved_implementation == "factorized"
    assert low.resolved_training_implementation == "dense"
    # rank 2 there trains through the tiled multiplier-1 depthwise conv (measured 0.8 of
    # the conv's step; through the multiplier-2 kernels 1.3x): factorized
    two = DeCEFConv2D(64, 3, rank=2, padding="same")
    two.build((None, 8, 8, 64))
    assert two.training_time_ratio_estimate((None, 8, 8, 64)) < AUTO_TRAINING_THRESHOLD
    assert two.resolved_training_implementation == "factorized"
    # rank 1 is a plain depthwise conv (multiplier 1): factorized in both
    one = DeCEFConv2D(16, 3, rank=1, padding="same")
    one.build((None, 32, 32, 16))
    assert one.resolved_training_implementation == "factorized"
    # SVD at a third of the conv's MACs: factorized in training too
    svd = SVDConv2D(64, 3, rank=19, padding="same")
    svd.build((None, 56, 56, 64))
    assert svd.cost((56, 56, 64)).macs <= svd.dense_macs((None, 56, 56, 64)) / 3
    assert svd.resolved_training_implementation == "factorized"
    # the rule: factorized only below the threshold of the training estimate
    for rank in (1, 2, 3, 5, 9):
        layer = DeCEFConv2D(32, 3, rank=rank)
        layer.build((None, 16, 16, 32))
        est = layer.training_time_ratio_estimate((None, 16, 16, 32))
        want = "factorized" if est < AUTO_TRAINING_THRESHOLD else "dense"
        assert layer.resolved_training_implementation == want
    # an explicit implementation is what runs in training too
    forced = DeCEFConv2D(64, 3, rank=5, implementation="factorized")
    forced.build((None, 56, 56, 64))
    assert forced.resolved_training_implementation == "factorized"


def test_call_runs_the_training_choice_only_when_training():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("reads the traced TensorFlow graph")
    rng = np.random.default_rng(0)
    layer = DeCEFConv2D(64, 3, rank=3, padding="same")
    layer.build((None, 8, 8, 64))
    assert layer.resolved_implementation == "factorized"
    assert layer.resolved_training_implementation == "dense"
    shape = (None, 8, 8, 64)
    assert "DepthwiseConv2dNative" in _traced_op_types(layer, shape, False)
    assert "DepthwiseConv2dNative" not in _traced_op_types(layer, shape, True)
    x = rng.normal(size=(2, 8, 8, 64)).astype("float32")
    assert _max_err(layer(x, training=True), layer(x, training=False)) < 1e-5


@pytest.mark.parametrize(
    "kw",
    [
        {"padding": "same"},
        {"padding": "valid", "strides": 2},
        {"padding": "same", "strides": (1, 2)},
        {"padding": "same", "dilation_rate": 2},
    ],
)
def test_decef_trains_through_the_tiled_depthwise_conv_with_the_same_function(kw):
    # training=True runs tile -> multiplier-1 depthwise -> permuted 1x1 (TensorFlow's
    # multiplier-r backward kernels are slow); it must be the same function and give the
    # same gradients as the multiplier-r form inference runs
    if keras.backend.backend() != "tensorflow":
        pytest.skip("gradients through tf.GradientTape")
    import tensorflow as tf

    conv = _conv((None, 12, 12, 6), filters=5, kernel_size=3, **kw)
    layer = DeCEFConv2D.from_conv2d(conv, rank=3, implementation="factorized")
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 12, 12, 6)).astype("float32"))
    grads = {}
    for training in (True, False):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(y * tf.cos(y))
        grads[training] = (y, *tape.gradient(loss, [x, *layer.trainable_weights]))
    for a, b in zip(grads[True], grads[False]):
        assert _max_err(b, a) < 1e-5
    # at full rank (min(kh*kw, filters) = 5) the tiled training path equals the conv
    full = DeCEFConv2D.from_conv2d(conv, rank=5, implementation="factorized")
    assert _max_err(conv(x), full(x, training=True)) < 1e-4
    ops_train = _traced_op_types(layer, (None, 12, 12, 6), True)
    assert "Tile" in ops_train and "DepthwiseConv2dNative" in ops_train
    assert "Tile" not in _traced_op_types(layer, (None, 12, 12, 6), False)
