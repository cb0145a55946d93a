"""Parameter and MAC counting for layers and whole models."""

import keras
import pytest

from keras_eigenconv import BasisConv2D, Cost, DeCEFConv2D, SVDConv2D, layer_cost, model_cost


def test_layer_costs_follow_the_formulas():
    c, n, k, r = 16, 32, 3, 4
    shape = (None, 10, 10, c)
    pix = 10 * 10
    decef = DeCEFConv2D(n, k, rank=r, padding="same")
    assert decef.cost(shape) == Cost(k * k * c * r + c * r * n + n, 0, pix * c * r * (k * k + n))
    basis = BasisConv2D(n, k, rank=r, padding="same")
    assert basis.cost(shape) == Cost(r * n + n, r * k * k * c, pix * r * (k * k * c + n))
    assert BasisConv2D(n, k, rank=r, trainable_basis=True).cost((10, 10, c)).fixed_params == 0
    svd = SVDConv2D(n, k, rank=r, padding="same", use_bias=False)
    assert svd.cost(shape) == Cost(k * k * c * r + r + r * n, 0, pix * r * (k * k * c + n))
    sp = SVDConv2D(n, k, rank=r, padding="valid", decomposition="spatial", use_bias=False)
    # kh x 1 stage: 8 x 10 outputs; 1 x kw stage: 8 x 8 outputs
    assert sp.cost(shape) == Cost(k * c * r + r + k * r * n, 0, 80 * k * c * r + 64 * k * r * n)


def test_cost_of_built_layer_matches_its_weights():
    for layer in (
        DeCEFConv2D(8, 3, rank=2),
        BasisConv2D(8, 3, rank=3, batch_norm=True),
        SVDConv2D(8, 3, rank=2, decomposition="spatial"),
    ):
        layer.build((None, 6, 6, 5))
        cost = layer.cost((None, 6, 6, 5))
        assert cost.params == sum(w.numpy().size for w in layer.trainable_weights)
        assert cost.fixed_params == sum(w.numpy().size for w in layer.non_trainable_weights)


def test_model_cost_counts_keras_layers():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)  # 8x8
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)  # 16 ch
    x = keras.layers.SeparableConv2D(12, 3, padding="valid")(x)  # 6x6
    x = DeCEFConv2D(10, 3, rank=2, padding="same")(x)
    x = keras.layers.Conv2D(4, 1, groups=2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(5)(x)
    model = keras.Model(inputs, out)
    report = model_cost(model)
    macs = {r["name"]: r["macs"] for r in report.rows}
    types = {r["type"]: r for r in report.rows}
    first, grouped = [r for r in report.rows if r["type"] == "Conv2D"]
    assert first["macs"] == 8 * 8 * 9 * 3 * 8
    assert types["DepthwiseConv2D"]["macs"] == 8 * 8 * 9 * 8 * 2
    assert types["SeparableConv2D"]["macs"] == 6 * 6 * (9 * 16 + 16 * 12)
    assert types["DeCEFConv2D"]["macs"] == 6 * 6 * 12 * 2 * (9 + 10)
    assert types["Dense"]["macs"] == 4 * 5
    assert sum(macs.values()) == report.total.macs
    assert report.total.params + report.total.fixed_params == model.count_params()
    assert grouped["macs"] == 6 * 6 * 1 * 5 * 4
    text = str(report)
    assert "total" in text and f"{report.total.macs:,}" in text
    assert report.to_markdown().count("\n") == len(report.rows) + 2
    assert report.to_dict()["total"]["macs"] == report.total.macs


def test_shared_layer_macs_count_every_call():
    shared = keras.layers.Conv2D(4, 3, padding="same", name="shared")
    a, b = keras.Input((8, 8, 2)), keras.Input((4, 4, 2))
    model = keras.Model([a, b], [shared(a), shared(b)])
    row = next(r for r in model_cost(model).rows if r["name"] == "shared")
    assert row["macs"] == (64 + 16) * 9 * 2 * 4
    assert row["params"] == 9 * 2 * 4 + 4


def test_unknown_spatial_dims_give_a_clear_error():
    layer = keras.layers.Conv2D(4, 3)
    layer.build((None, None, None, 3))
    with pytest.raises(ValueError, match="fixed input size"):
        layer_cost(layer, (None, None, None, 3))
