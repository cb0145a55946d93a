"""The models users actually have: transfer-learned, subclassed, and KerasHub.

- transfer learning as the Keras guide writes it: a base built with the default input shape,
  called inside a model with a fixed input (shapes come from the model being converted);
- subclassed ``keras.Model``s whose convs live in attributes, lists, dicts, nested blocks and
  nested ``Sequential``s (converted in a copy that keeps the class, ``call`` and saving);
- KerasHub backbones and task models built from configs (no preset downloads).
"""

import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_eigenconv as ke
from keras_eigenconv import graph


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12))


# ---- 1. transfer learning --------------------------------------------------------------


def test_transfer_learning_snippet_from_the_keras_guide():
    # The issue's snippet, verbatim: before, model_cost raised "spatial shape (None, None)"
    # and convert "needs a fixed input size".
    base = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35)
    inp = keras.Input((96, 96, 3))
    out = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(base(inp)))
    m = keras.Model(inp, out)
    cost = ke.model_cost(m)
    new, report = ke.convert(m, method="svd", budget={"macs": 0.6})

    # the nested base is costed at 96x96: exactly the standalone 96x96 base plus the head
    fixed = keras.applications.MobileNetV2(
        include_top=False, weights=None, alpha=0.35, input_shape=(96, 96, 3)
    )
    head = keras.layers.Dense(5)
    head.build((None, 1280))
    expected = ke.model_cost(fixed).total + ke.layer_cost(head, (None, 1280))
    assert cost.total == expected
    conv1 = next(r for r in cost.rows if r["name"].endswith("/Conv1"))
    assert conv1["macs"] == 48 * 48 * 3 * 3 * 3 * 16  # stride 2 on 96x96
    # the budget is met on the real MACs, and the report counts them
    assert report.macs_known and report.total_before == cost.total
    assert report.total_after.macs <= 0.6 * cost.total.macs
    assert report.total_after == ke.model_cost(new).total
    assert any(r.replaced for r in report.layers)
    assert all(r.macs_before is not None for r in report.layers)
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 96, 96, 3)).astype("float32")
    assert tuple(new(x).shape) == (2, 5)
    # analyze reads the nested base's convs
    assert len(ke.analyze(m).rows) == len(ke.analyze(fixed).rows)


def test_reused_layers_are_costed_in_the_new_graph_only():
    # a trained layer reused in a new functional graph: its calls in the old graph do not
    # count, and it is costed at the new graph's size
    conv = keras.layers.Conv2D(8, 3, padding="same")
    first = keras.Input((None, None, 3))
    keras.Model(first, conv(first))  # the old graph, unknown size
    inp = keras.Input((20, 20, 3))
    new_graph = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(conv(inp)))
    rows = {r["name"]: r for r in ke.model_cost(new_graph).rows}
    assert rows[conv.name]["macs"] == 20 * 20 * 9 * 3 * 8
    converted, report = ke.convert(new_graph, method="svd", rank=2, skip_first=False)
    assert report.layers[0].macs_before == 20 * 20 * 9 * 3 * 8
    assert report.layers[0].replaced


# ---- 2. subclassed models --------------------------------------------------------------


@keras.saving.register_keras_serializable(package="test_users")
class Block(keras.layers.Layer):
    """Two convs in a list, and a BatchNorm."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.convs = [
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu") for _ in range(2)
        ]
        self.norm = keras.layers.BatchNormalization()

    def call(self, x, training=None):
        for conv in self.convs:
            x = conv(x)
        return self.norm(x, training=training)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="test_users")
class RawConv(keras.layers.Layer):
    """A conv run through ops.conv on its own kernel: no Conv2D layer to replace."""

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel", shape=(3, 3, input_shape[-1], 16), initializer="glorot_uniform"
        )

    def call(self, x):
        return ops.conv(x, self.kernel, padding="same")


@keras.saving.register_keras_serializable(package="test_users")
class Net(keras.Model):
    """Convs in an attribute, a list of blocks, a dict, a raw conv and a nested Sequential."""

    def __init__(self, width=16, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.stem = keras.layers.Conv2D(width, 3, padding="same")
        self.blocks = [Block(width), Block(2 * width)]
        self.by_name = {"mid": keras.layers.Conv2D(2 * width, 3, padding="same")}
        self.raw = RawConv()
        self.head = keras.Sequential(
            [
                keras.layers.Conv2D(8, 3, padding="same"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(3),
            ]
        )

    def call(self, x, training=None):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x, training=training)
        x = self.by_name["mid"](x)
        x = self.raw(x)
        return self.head(x)

    def get_config(self):
        return {**super().get_config(), "width": self.width}


def _trained_net():
    model = Net()
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
    model(x)
    rng = np.random.default_rng(1)
    for w in model.trainable_weights:  # trained-looking weights
        w.assign(rng.normal(scale=0.3, size=w.shape).astype("float32"))
    return model, x


def test_subclassed_model_with_nested_blocks_and_attribute_lists(tmp_path):
    # before: convert refused subclassed models outright
    model, x = _trained_net()
    expected = np.asarray(model(x))
    before = [np.array(ops.convert_to_numpy(w)) for w in model.weights]
    cost = ke.model_cost(model)
    assert cost.total.macs == sum(r["macs"] for r in cost.rows) > 0
    assert len(ke.analyze(model).rows) == 7  # every Conv2D, in blocks and lists too
    assert {r["name"] for r in cost.rows} >= {"block/" + model.blocks[0].convs[1].name}

    new, report = ke.convert(
        model, method="svd", rank="full", skip_first=False, require_saving=False
    )

    # every Conv2D reached through an attribute, a list, a dict, a nested block or a nested
    # Sequential is replaced, exactly (full rank); the class and call are kept
    replaced = {r.name for r in report.layers if r.replaced}
    assert len(replaced) == 7
    assert isinstance(new, Net) and type(new).__name__ == "Net"
    assert type(new).call is Net.call
    kinds = [type(la).__name__ for _, la in graph.walk(new)]
    assert kinds.count("SVDConv2D") == 7 and "Conv2D" not in kinds
    assert isinstance(new.blocks[1].convs[0], ke.SVDConv2D)
    assert isinstance(new.by_name["mid"], ke.SVDConv2D)
    assert isinstance(new.head.layers[0], ke.SVDConv2D)
    assert _rel(expected, new(x)) < 1e-4
    # the raw ops.conv kernel is reported, not skipped silently
    raw = next(r for r in report.layers if r.type == "RawConv")
    assert not raw.replaced and "ops.conv" in raw.reason
    # the user's model is untouched and shares no buffer with the copy
    for w, b in zip(model.weights, before):
        assert np.array_equal(ops.convert_to_numpy(w), b)
    assert isinstance(model.stem, keras.layers.Conv2D) and len(model.blocks[0].convs) == 2
    originals = {id(w.value) for w in model.weights}
    assert not any(id(w.value) in originals for w in new.weights)
    new.by_name["mid"].bias.assign(np.ones(new.by_name["mid"].bias.shape))
    assert _rel(expected, model(x)) == 0
    # the report counts the real shapes (traced through call)
    assert report.total_before == cost.total
    assert report.total_after == ke.model_cost(new).total

    # .keras round trip, bit-exact, class kept (the user's class registered as usual)
    path = os.path.join(tmp_path, "net.keras")
    new.save(path)
    back = keras.models.load_model(path)
    assert isinstance(back, Net) and isinstance(back.blocks[0].convs[0], ke.SVDConv2D)
    assert np.array_equal(np.asarray(back(x)), np.asarray(new(x)))
    # trains, and converts again (a converted model is an input like any other)
    new.compile(optimizer="sgd", loss="mse")
    new.fit(x, np.zeros((2, 3), "float32"), epochs=1, verbose=0)
    again, report2 = ke.convert(back, method="svd", rank=2, skip_first=False)
    assert isinstance(again, Net) and not any(r.replaced for r in report2.layers)


def test_subclassed_model_with_a_budget():
    model, x = _trained_net()
    new, report = ke.convert(model, method="decef", budget={"macs": 0.7})
    assert report.total_after.macs <= 0.7 * report.total_before.macs
    assert isinstance(new, Net)
    assert tuple(new(x).shape) == (2, 3)


class _FromScratch(keras.Model):
    """A subclassed model written with the package's layers from the start."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.decef = ke.DeCEFConv2D(16, 3, rank=2, padding="same", activation="relu")
        self.svd = ke.SVDConv2D(16, 3, rank=2, padding="same")

    def call(self, x):
        return self.svd(self.decef(x))


def test_subclassed_model_of_the_packages_layers_is_copied_with_its_weights():
    # a copy is rebuilt from the config and built by a symbolic call, in which the layers
    # draw their from-scratch factors (NumPy): before, that build failed and the copy had
    # no factor weights
    model = _FromScratch()
    x = np.random.default_rng(0).random((2, 12, 12, 8)).astype("float32")
    y = np.asarray(model(x))
    copy = graph.clone_model(model)
    assert copy is not model and len(copy.weights) == len(model.weights)
    np.testing.assert_array_equal(np.asarray(copy(x)), y)
    for a, b in zip(model.weights, copy.weights):
        assert a is not b


def test_graph_copy_keeps_the_weights_and_the_users_initializers():
    # the copy draws no random values for weights it overwrites (its Keras layers are built
    # with zero initializers), then gets the user's initializers back: its config, and what
    # a later fresh build draws, are the original's
    inp = keras.Input((10, 10, 3))
    h = keras.layers.Conv2D(8, 3, kernel_initializer="he_normal", bias_initializer="ones")(inp)
    h = keras.layers.BatchNormalization(moving_variance_initializer="ones")(h)
    out = keras.layers.Dense(4, kernel_initializer=keras.initializers.Orthogonal(seed=3))(h)
    model = keras.Model(inp, out)
    for w in model.weights:  # values no initializer gives
        w.assign(np.random.default_rng(len(w.path)).normal(size=w.shape).astype(w.dtype))
    copy = graph.clone_model(model)
    for a, b in zip(model.weights, copy.weights):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    assert [la.get_config() for la in copy.layers[1:]] == [
        la.get_config() for la in model.layers[1:]
    ]
    conv = copy.layers[1]
    assert isinstance(conv.kernel_initializer, keras.initializers.HeNormal)
    assert isinstance(copy.layers[2].moving_variance_initializer, keras.initializers.Ones)
    # a fresh-initialization copy still draws its initial values
    scratch = graph.clone_model(model, copy_weights_=False)
    kernel = np.asarray(scratch.layers[1].kernel)
    assert kernel.std() > 0.1 and np.all(np.asarray(scratch.layers[1].bias) == 1.0)


def test_copies_keep_the_initializers_of_sublayers_and_of_subclassed_models():
    # MultiHeadAttention builds its sublayers from copies of its initializers: it is built
    # with them as they are (only layers that use them in add_weight alone get zeros)
    inp = keras.Input((4, 8))
    mha = keras.layers.MultiHeadAttention(2, 4, kernel_initializer="he_normal")
    model = keras.Model(inp, mha(inp, inp))
    copy = graph.clone_model(model)
    for sub in ("_query_dense", "_key_dense", "_value_dense", "_output_dense"):
        assert isinstance(
            getattr(copy.layers[1], sub).kernel_initializer, keras.initializers.HeNormal
        )
    np.testing.assert_array_equal(
        np.asarray(copy(np.ones((1, 4, 8)))), np.asarray(model(np.ones((1, 4, 8))))
    )
    # a subclassed model is copied from its config and built: its layers' initializers too
    net = Net()
    net(np.zeros((1, 8, 8, 3), "float32"))
    copy = graph.clone_model(net)
    assert isinstance(copy.stem.kernel_initializer, keras.initializers.GlorotUniform)
    assert isinstance(copy.head.layers[-1].bias_initializer, keras.initializers.Zeros)
    pairs = zip(net._flatten_layers(), copy._flatten_layers())
    for a, b in pairs:  # every layer's initializers, by class and config
        inits = {k: v for k, v in vars(a).items() if isinstance(v, keras.initializers.Initializer)}
        for k, v in inits.items():
            assert type(getattr(b, k)) is type(v) and getattr(b, k).get_config() == v.get_config()
    for a, b in zip(net.weights, copy.weights):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


def test_subclassed_model_that_its_config_cannot_rebuild_gets_a_clear_error():
    class Opaque(keras.Model):
        def __init__(self, fn, **kwargs):  # a function argument: no config
            super().__init__(**kwargs)
            self.fn = fn
            self.conv = keras.layers.Conv2D(4, 3)
            self.conv2 = keras.layers.Conv2D(4, 3)

        def call(self, x):
            return self.conv2(self.fn(self.conv(x)))

    model = Opaque(keras.activations.relu)
    model(np.zeros((1, 8, 8, 3), "float32"))
    with pytest.raises(ValueError, match="cannot be copied from its config"):
        ke.convert(model, method="svd", rank=2)


# ---- 3. KerasHub ------------------------------------------------------------------------

keras_hub = pytest.importorskip("keras_hub")


def _hub_classifier():
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(32, 32, 3),
    )
    converter = keras_hub.layers.ResNetImageConverter(image_size=(32, 32), scale=1 / 255.0)
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    model = keras_hub.models.ResNetImageClassifier(
        backbone=backbone, num_classes=4, preprocessor=preprocessor
    )
    rng = np.random.default_rng(0)
    for w in model.trainable_weights:
        w.assign(rng.normal(scale=0.2, size=w.shape).astype("float32"))
    return model


def test_kerashub_classifier_built_from_a_config_converts_and_keeps_its_task_api(tmp_path):
    # before: convert returned a plain Functional (class, preprocessor and task API lost)
    model = _hub_classifier()
    images = np.random.default_rng(1).uniform(0, 255, size=(3, 40, 40, 3)).astype("float32")
    expected = model.predict(images, verbose=0)  # raw images: the preprocessor resizes

    new, report = ke.convert(
        model, method="svd", rank="full", skip_first=False, require_saving=False
    )
    assert type(new) is type(model)
    assert isinstance(new.backbone, keras_hub.models.ResNetBackbone)
    assert new.preprocessor is not None
    assert sum(r.replaced for r in report.layers) >= 4
    assert any(isinstance(la, ke.SVDConv2D) for _, la in graph.walk(new.backbone))
    assert _rel(expected, new.predict(images, verbose=0)) < 1e-4
    # the original keeps its convs
    assert not any(isinstance(la, ke.SVDConv2D) for _, la in graph.walk(model.backbone))

    # budgets work on the task model, the backbone converts alone too
    small, rep = ke.convert(model, method="svd", budget={"macs": 0.6})
    assert type(small) is type(model) and rep.total_after.macs <= 0.6 * rep.total_before.macs
    bb, _ = ke.convert(model.backbone, method="svd", rank="full", require_saving=False)
    assert isinstance(bb, keras_hub.models.ResNetBackbone)

    # save_to_preset / from_preset round trip (local directory, nothing downloaded)
    preset = os.path.join(tmp_path, "preset")
    new.save_to_preset(preset)
    back = keras_hub.models.ImageClassifier.from_preset(preset)
    assert type(back) is type(model)
    assert np.array_equal(back.predict(images, verbose=0), new.predict(images, verbose=0))
    # .keras round trip too
    path = os.path.join(tmp_path, "task.keras")
    new.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    assert np.array_equal(loaded.predict(images, verbose=0), new.predict(images, verbose=0))
