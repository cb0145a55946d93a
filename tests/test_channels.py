"""Structured pruning of the hidden channels of inverted-residual blocks (``prune_channels``).

A small MobileNetV2-like network (three blocks: residual, stride 2 with padding, residual)
with non-trivial BatchNorms (random scales and shifts, moving statistics estimated on the
digits) is pruned; the checks: the blocks found, exactness when every channel is kept and
when only dead channels are removed (slicing and mean folding consistent), MAC budgets met
as ``model_cost`` counts them, the user's model untouched, the calibration refit better than
data-free, errors before any work, and keras.applications' MobileNetV2.
"""

import json
import re

import keras
import numpy as np
import pytest

import keras_eigenconv as ke
from keras_eigenconv.compress import prunable_blocks, prune_channels
from keras_eigenconv.compress.channels import ChannelPruner

L = keras.layers
SIZE = 16


def _block(x, hidden, out, stride, i, project_bn=True, project_bias=False):
    y = L.Conv2D(hidden, 1, use_bias=False, name=f"b{i}_expand")(x)
    y = L.BatchNormalization(name=f"b{i}_expand_bn")(y)
    y = L.ReLU(6.0, name=f"b{i}_expand_relu")(y)
    if stride == 2:
        y = L.ZeroPadding2D(((0, 1), (0, 1)), name=f"b{i}_pad")(y)
    padding = "valid" if stride == 2 else "same"
    y = L.DepthwiseConv2D(3, strides=stride, padding=padding, use_bias=False, name=f"b{i}_dw")(y)
    y = L.BatchNormalization(name=f"b{i}_dw_bn")(y)
    y = L.ReLU(6.0, name=f"b{i}_dw_relu")(y)
    y = L.Conv2D(out, 1, use_bias=project_bias, name=f"b{i}_project")(y)
    if project_bn:
        y = L.BatchNormalization(name=f"b{i}_project_bn")(y)
    if stride == 1 and x.shape[-1] == out:
        y = L.Add(name=f"b{i}_add")([x, y])
    return y


def _randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.2, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0.0, 0.5, n).astype("float32"))


def _small_mobilenet(x, **block_kw):
    """Three inverted-residual blocks (hidden 96, 96, 144), BatchNorm scales and shifts
    random, moving statistics estimated on ``x``."""
    inp = keras.Input((SIZE, SIZE, 3))
    h = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inp)
    h = L.ReLU(6.0, name="stem_relu")(L.BatchNormalization(name="stem_bn")(h))
    h = _block(h, 96, 16, 1, 1, **block_kw)
    h = _block(h, 96, 24, 2, 2, **block_kw)
    h = _block(h, 144, 24, 1, 3, **block_kw)
    h = L.GlobalAveragePooling2D(name="pool")(h)
    model = keras.Model(inp, L.Dense(10, name="head")(h), name="small_mobilenet")
    _randomize_bn(model)
    return ke.recalibrate_batchnorm(model, x[:256], batch_size=64)


@pytest.fixture(scope="module")
def data(digits):
    x, _ = digits
    x = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)  # 16x16
    x = np.concatenate([x, x**2, 1.0 - x], axis=-1).astype("float32")
    return x[:256], x[256:512]  # calibration, held-out


@pytest.fixture(scope="module")
def model(data):
    keras.utils.set_random_seed(1)
    return _small_mobilenet(data[0])


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def test_blocks_found_with_their_layers(model):
    blocks = prunable_blocks(model)
    assert [b[0] for b in blocks] == ["b1_expand", "b2_expand", "b3_expand"]
    assert blocks[1] == [
        "b2_expand",
        "b2_expand_bn",
        "b2_expand_relu",
        "b2_pad",
        "b2_dw",
        "b2_dw_bn",
        "b2_dw_relu",
        "b2_project",
        "b2_project_bn",  # the BatchNorm that takes the removed channels' mean
    ]
    # the stem (3x3) is not an expand conv, though a depthwise chain follows nothing of it
    assert all("stem" not in name for b in blocks for name in b)


@pytest.mark.parametrize("how", [{"keep": 1.0}, {"budget": {"macs": 1.0}}])
def test_keeping_every_channel_is_exact(model, data, how):
    new, report = prune_channels(model, **how)
    x = data[1][:64]
    np.testing.assert_array_equal(np.asarray(new(x)), np.asarray(model(x)))
    assert not report.pruned and all(b.kept == b.hidden for b in report.blocks)
    assert ke.model_cost(new).total == ke.model_cost(model).total


def test_removing_dead_channels_only_is_exact(data):
    """Channels whose last BatchNorm has gamma = 0 are constants after the ReLU6 (0, beta or
    6): data-free scores are 0 for exactly those, their constant is folded into the next
    BatchNorm's moving mean, and the pruned model computes the same function."""
    keras.utils.set_random_seed(2)
    model = _small_mobilenet(data[0])
    rng = np.random.default_rng(3)
    dead = {}
    for i in (1, 2, 3):
        bn = model.get_layer(f"b{i}_dw_bn")
        h = bn.gamma.shape[0]
        idx = np.sort(rng.choice(h, size=h // 2, replace=False))
        gamma, beta = np.array(bn.gamma), np.array(bn.beta)
        gamma[idx] = 0.0
        beta[idx] = rng.choice([-1.0, 0.7, 2.5, 8.0], size=len(idx))  # relu6: 0, .7, 2.5, 6
        bn.gamma.assign(gamma)
        bn.beta.assign(beta)
        dead[i] = idx
    new, report = prune_channels(model, keep=0.5)
    assert [b.kept for b in report.blocks] == [48, 48, 72]
    assert all(b.objective == "bn" for b in report.blocks)
    for i in (1, 2, 3):
        h = model.get_layer(f"b{i}_expand").filters
        live = np.setdiff1d(np.arange(h), dead[i])
        for name, axis in (("expand", 3), ("dw", 2), ("project", 2)):
            got = np.array(new.get_layer(f"b{i}_{name}").kernel)
            want = np.array(model.get_layer(f"b{i}_{name}").kernel)
            np.testing.assert_array_equal(got, np.take(want, live, axis=axis))
        for bn in ("expand_bn", "dw_bn"):
            for a, b in zip(
                new.get_layer(f"b{i}_{bn}").weights, model.get_layer(f"b{i}_{bn}").weights
            ):
                np.testing.assert_array_equal(np.array(a), np.array(b)[live])
    x = data[1][:64]
    y, y0 = np.asarray(new(x)), np.asarray(model(x))
    assert _rel(y, y0) < 1e-5
    assert np.max(np.abs(y - y0)) < 1e-4 * np.max(np.abs(y0))


@pytest.mark.parametrize("project_bias", [True, False])
def test_mean_folding_without_a_batchnorm_after_the_project(data, project_bias):
    """No BatchNorm after the project conv: the removed channels' constant goes into the
    project's bias (a project conv without one gets a bias)."""
    keras.utils.set_random_seed(4)
    model = _small_mobilenet(data[0], project_bn=False, project_bias=project_bias)
    assert all(len(b) == 7 + (1 if b[3].endswith("pad") else 0) for b in prunable_blocks(model))
    for i in (1, 2, 3):
        bn = model.get_layer(f"b{i}_dw_bn")
        gamma, beta = np.array(bn.gamma), np.array(bn.beta)
        gamma[::2], beta[::2] = 0.0, 0.5
        bn.gamma.assign(gamma)
        bn.beta.assign(beta)
    new, _ = prune_channels(model, keep=0.5)
    for i in (1, 2, 3):
        assert new.get_layer(f"b{i}_project").use_bias
    x = data[1][:64]
    assert _rel(new(x), model(x)) < 1e-5


@pytest.mark.parametrize("allocation", ["greedy", "uniform"])
@pytest.mark.parametrize("share", [0.8, 0.6])
def test_mac_budget_is_met_as_model_cost_counts_it(model, allocation, share):
    before = ke.model_cost(model).total.macs
    new, report = prune_channels(model, budget={"macs": share}, allocation=allocation)
    after = ke.model_cost(new).total.macs
    assert after == report.total_after.macs and report.budget_met
    assert after <= share * before
    # within one channel group (8 channels of the costliest block) of the target
    group = max(8 * (b.macs_before // b.hidden) for b in report.blocks)
    assert after >= share * before - group
    for b in report.blocks:
        assert b.kept == b.hidden or (b.kept % 8 == 0 and b.kept >= 8)
        assert b.macs_after == b.macs_before * b.kept // b.hidden
    # the per-block MACs account for the whole difference
    assert before - after == sum(b.macs_before - b.macs_after for b in report.blocks)
    if allocation == "uniform":
        shares = [b.kept / b.hidden for b in report.blocks]
        assert max(shares) - min(shares) < 0.1
    else:  # no removed group could be given back without missing the budget
        slack = share * before - after
        for b in report.pruned:
            back = min(b.kept + 8, b.hidden) - b.kept
            assert back * (b.macs_before // b.hidden) > slack


def test_params_budget_and_keep_as_a_count(model):
    before = ke.model_cost(model).total.total_params
    new, report = prune_channels(model, budget={"params": 0.8})
    after = ke.model_cost(new).total.total_params
    assert after == report.total_after.total_params and 0.7 * before < after <= 0.8 * before
    _, report = prune_channels(model, keep=40)  # 40 channels per block, rounded up to 40
    assert [b.kept for b in report.blocks] == [40, 40, 40]
    _, report = prune_channels(model, keep=0.3)  # 28.8 -> 32, 28.8 -> 32, 43.2 -> 48
    assert [b.kept for b in report.blocks] == [32, 32, 48]


def test_budget_as_a_count_and_the_report(model):
    before = ke.model_cost(model).total.macs
    new, report = prune_channels(model, budget={"macs": int(0.75 * before)})
    assert ke.model_cost(new).total.macs <= 0.75 * before
    text = str(report)
    assert "b1_expand" in text and "budget={'macs':" in text and "data-free" in text
    d = report.to_dict()
    json.dumps(d)
    assert d["macs_ratio"] == pytest.approx(report.macs_ratio) and d["budget_met"] is True
    assert "| block |" in report.to_markdown()


def test_users_model_is_not_modified_and_shares_no_buffers(model, data):
    weights = _weights(model)
    n_layers = len(model.layers)
    new, _ = prune_channels(model, budget={"macs": 0.6}, calibration_data=data[0][:64])
    for a, b in zip(weights, _weights(model)):
        np.testing.assert_array_equal(a, b)
    assert len(model.layers) == n_layers
    assert model.get_layer("b1_expand").filters == 96
    old_ids = {id(v) for v in model.weights}
    assert not any(id(v) in old_ids for v in new.weights)
    assert not {id(la) for la in new.layers} & {id(la) for la in model.layers}
    for v in new.weights:  # writing the copy leaves the original as it was
        v.assign(np.full(v.shape, 7.0, dtype=v.dtype))
    for a, b in zip(weights, _weights(model)):
        np.testing.assert_array_equal(a, b)


def test_calibration_refit_beats_data_free_at_the_same_budget(model, data):
    calib, held = data[0][:128], data[1]
    y0 = np.asarray(model(held))
    errors, reports = {}, {}
    for name, kw in (
        ("free", {}),
        ("data", {"calibration_data": calib, "refit": False}),
        ("refit", {"calibration_data": calib}),
    ):
        kw = {"calibration_batch_size": 32, **kw}
        new, reports[name] = prune_channels(model, budget={"macs": 0.6}, **kw)
        errors[name] = _rel(new(held), y0)
        assert reports[name].total_after.macs <= 0.6 * reports[name].total_before.macs
    assert errors["refit"] < errors["free"]
    assert errors["refit"] < errors["data"]
    assert errors["refit"] < 0.5
    cal = reports["refit"].calibration
    assert cal["fit_samples"] + cal["heldout_samples"] == len(calib)
    assert 0 <= cal["relative_error"] < 1 and "top1_agreement" in cal
    assert {b.objective for b in reports["refit"].pruned} == {"data+refit"}
    assert {b.objective for b in reports["data"].pruned} == {"data"}


def test_include_and_exclude_select_blocks(model):
    _, report = prune_channels(model, keep=0.5, exclude="b2_*")
    kept = {b.name: b.kept for b in report.blocks}
    assert kept == {"b1_expand": 48, "b2_expand": 96, "b3_expand": 72}
    assert report.blocks[1].reason == "excluded"
    _, report = prune_channels(model, keep=0.5, include=["b3_*"])
    assert [b.kept for b in report.blocks] == [96, 96, 72]


def test_nested_backbone_is_pruned_inside_the_outer_model(model, data):
    inp = keras.Input((SIZE, SIZE, 3))
    outer = keras.Model(inp, L.Softmax()(model(inp)))
    assert [b[0] for b in prunable_blocks(outer)] == [
        f"small_mobilenet/b{i}_expand" for i in (1, 2, 3)
    ]
    new, report = prune_channels(outer, budget={"macs": 0.7})
    assert ke.model_cost(new).total.macs <= 0.7 * ke.model_cost(outer).total.macs
    x = data[1][:32]
    assert new(x).shape == (32, 10)
    same, _ = prune_channels(outer, keep=1.0)
    np.testing.assert_array_equal(np.asarray(same(x)), np.asarray(outer(x)))


def test_sequential_model_with_activation_layers():
    model = keras.Sequential(
        [
            keras.Input((12, 12, 8)),
            L.Conv2D(48, 1, use_bias=False),
            L.BatchNormalization(),
            L.Activation("relu6"),
            L.DepthwiseConv2D(3, padding="same"),
            L.BatchNormalization(),
            L.ReLU(),
            L.Conv2D(16, 1),
            L.GlobalAveragePooling2D(),
            L.Dense(3),
        ]
    )
    assert len(prunable_blocks(model)) == 1
    x = np.random.default_rng(0).random((32, 12, 12, 8), dtype=np.float32)
    same, _ = prune_channels(model, keep=1.0)
    np.testing.assert_array_equal(np.asarray(same(x)), np.asarray(model(x)))
    new, report = prune_channels(model, keep=0.5, calibration_data=x, calibration_batch_size=8)
    assert isinstance(new, keras.Sequential) and report.blocks[0].kept == 24
    assert new.layers[0].filters == 24 and new.layers[6].kernel.shape == (1, 1, 24, 16)
    assert report.calibration["relative_error"] < 0.1


def _se_model(x):
    """An EfficientNet-style block: swish, a squeeze-and-excitation branch on the hidden
    activations (GAP -> Reshape -> reduce 1x1 -> excite 1x1 sigmoid -> Multiply)."""
    inp = keras.Input((SIZE, SIZE, 3))
    h = L.Conv2D(16, 3, padding="same", name="stem")(inp)
    y = L.Conv2D(64, 1, use_bias=False, name="expand")(h)
    y = L.Activation("swish", name="expand_act")(L.BatchNormalization(name="expand_bn")(y))
    y = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(y)
    y = L.Activation("swish", name="dw_act")(L.BatchNormalization(name="dw_bn")(y))
    s = L.GlobalAveragePooling2D(name="se_squeeze")(y)
    s = L.Reshape((1, 1, 64), name="se_reshape")(s)
    s = L.Conv2D(4, 1, activation="swish", name="se_reduce")(s)
    s = L.Conv2D(64, 1, activation="sigmoid", name="se_expand")(s)
    y = L.Multiply(name="se_excite")([y, s])
    y = L.Conv2D(16, 1, use_bias=False, name="project")(y)
    y = L.Add(name="add")([h, L.BatchNormalization(name="project_bn")(y)])
    out = L.Dense(10, name="head")(L.GlobalAveragePooling2D(name="pool")(y))
    model = keras.Model(inp, out)
    _randomize_bn(model)
    return ke.recalibrate_batchnorm(model, x[:128], batch_size=64)


def test_squeeze_and_excitation_blocks(data):
    keras.utils.set_random_seed(5)
    model = _se_model(data[0])
    (block,) = prunable_blocks(model)
    assert block == [
        "expand",
        "expand_bn",
        "expand_act",
        "dw",
        "dw_bn",
        "dw_act",
        "se_squeeze",
        "se_reshape",
        "se_reduce",
        "se_expand",
        "se_excite",
        "project",
        "project_bn",
    ]
    x = data[1][:32]
    y0 = np.asarray(model(x))
    same, _ = prune_channels(model, keep=1.0)
    np.testing.assert_array_equal(np.asarray(same(x)), y0)
    # a MAC budget counts the branch's convs too; calibration data refits the project conv
    before = ke.model_cost(model).total.macs
    free, _ = prune_channels(model, budget={"macs": 0.6})
    fitted, report = prune_channels(model, budget={"macs": 0.6}, calibration_data=data[0][:64])
    assert ke.model_cost(fitted).total.macs == report.total_after.macs <= 0.6 * before
    assert report.blocks[0].macs_before == sum(
        ke.layer_cost(model.get_layer(n), model.get_layer(n).input.shape).macs
        for n in ("expand", "dw", "project", "se_reduce", "se_expand")
    )
    assert _rel(fitted(x), y0) < _rel(free(x), y0)
    # constant channels (gamma = 0: swish(1.0) everywhere) that the project conv ignores
    # are removed exactly: through the squeeze-and-excitation branch too (its reduce conv's
    # inputs sliced, their constant pooled value folded into its bias; excite's outputs)
    bn = model.get_layer("dw_bn")
    gamma, beta = np.array(bn.gamma), np.array(bn.beta)
    dead = np.arange(1, 64, 2)
    gamma[dead], beta[dead] = 0.0, 1.0
    bn.gamma.assign(gamma)
    bn.beta.assign(beta)
    project = model.get_layer("project")
    kernel = np.array(project.kernel)
    kernel[:, :, dead, :] = 0.0
    project.kernel.assign(kernel)
    y0 = np.asarray(model(x))
    new, report = prune_channels(model, keep=0.5)
    live = np.setdiff1d(np.arange(64), dead)
    np.testing.assert_array_equal(
        np.array(new.get_layer("se_expand").kernel),
        np.array(model.get_layer("se_expand").kernel)[..., live],
    )
    assert new.get_layer("se_reduce").kernel.shape == (1, 1, 32, 4)
    assert _rel(new(x), y0) < 1e-5


def test_efficientnetb0_from_keras_applications():
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3))
    blocks = prunable_blocks(model)
    assert len(blocks) == 15  # every block but block1a (no expand conv)
    assert blocks[0][0] == "block2a_expand_conv" and "block2a_se_excite" in blocks[0]
    new, report = prune_channels(model, budget={"macs": 0.7})
    assert 0.69 <= report.macs_ratio <= 0.7
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32) * 255
    assert new(x).shape == (2, 1000)


def test_keras_file_round_trip(model, data, tmp_path):
    new, _ = prune_channels(model, budget={"macs": 0.6})
    path = tmp_path / "pruned.keras"
    new.save(path)
    loaded = keras.models.load_model(path)
    x = data[1][:16]
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(new(x)))
    assert loaded.get_layer("b1_dw").kernel.shape[2] < 96


def test_errors_name_the_argument_before_any_work(model, data):
    with pytest.raises(ValueError, match="exactly one of budget"):
        prune_channels(model)
    with pytest.raises(ValueError, match="exactly one of budget"):
        prune_channels(model, budget={"macs": 0.5}, keep=0.5)
    with pytest.raises(ValueError, match=r"budget\['macs'\]=0 must be a positive"):
        prune_channels(model, budget={"macs": 0})
    with pytest.raises(ValueError, match="'flops' is not 'macs' or 'params'"):
        prune_channels(model, budget={"flops": 0.5})
    with pytest.raises(ValueError, match=r"cannot be met.*Raise the budget to at least 0\.\d+"):
        prune_channels(model, budget={"macs": 0.05})
    try:
        prune_channels(model, budget={"macs": 0.05})
    except ValueError as err:
        floor = float(re.search(r"at least (0\.\d+)", str(err)).group(1))
    _, report = prune_channels(model, budget={"macs": floor})  # the advice works
    assert report.budget_met and all(b.kept == 8 for b in report.pruned)
    with pytest.raises(ValueError, match="keep=1.5 must be in"):
        prune_channels(model, keep=1.5)
    with pytest.raises(ValueError, match="round_to=0"):
        prune_channels(model, keep=0.5, round_to=0)
    with pytest.raises(ValueError, match="allocation='even'"):
        prune_channels(model, budget={"macs": 0.5}, allocation="even")
    with pytest.raises(ValueError, match="prune_channels: calibration_data has samples of shape"):
        prune_channels(model, keep=0.5, calibration_data=np.zeros((4, 8, 8, 3), "float32"))
    with pytest.raises(
        ValueError, match="include/exclude/round_to leave none.*b1_expand: excluded"
    ):
        prune_channels(model, keep=0.5, exclude="*")
    with pytest.raises(ValueError, match="exclude entries must be name patterns"):
        prune_channels(model, keep=0.5, exclude=3)
    plain = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(8, 3), L.GlobalAveragePooling2D(), L.Dense(2)]
    )
    with pytest.raises(ValueError, match="no prunable inverted-residual block.*convert"):
        prune_channels(plain, keep=0.5)


def test_mobilenetv2_from_keras_applications(tmp_path):
    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=1.0)
    blocks = prunable_blocks(model)
    assert len(blocks) == 16
    assert blocks[0][0] == "block_1_expand" and blocks[-1][-2] == "block_16_project"
    thin = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.75)
    share = ke.model_cost(thin).total.macs / ke.model_cost(model).total.macs
    new, report = prune_channels(model, budget={"macs": share})
    assert share - 0.01 <= report.macs_ratio <= share
    assert all(b.kept % 8 == 0 for b in report.blocks)
    x = np.random.default_rng(0).random((2, 96, 96, 3), dtype=np.float32)
    assert new(x).shape == (2, 1000)
    pytest.importorskip("ai_edge_litert")
    export = ke.export_tflite(new, tmp_path / "pruned.tflite", verbose=False)
    assert export.passed


def test_one_pruner_at_several_budgets_gives_what_separate_calls_give(model, data):
    # ChannelPruner does the budget-independent work once (checks, blocks, costs, the
    # calibration pass, the scores); each prune() must still equal a fresh prune_channels
    calib, held = data[0][:96], data[1][:32]
    kw = {"calibration_data": calib, "calibration_batch_size": 32}
    pruner = ChannelPruner(model, **kw)
    scores = pruner._channel_scores()
    for share in (0.8, 0.6):
        new, rep = pruner.prune(budget={"macs": share})
        ref, ref_rep = prune_channels(model, budget={"macs": share}, **kw)
        assert [b.kept for b in rep.blocks] == [b.kept for b in ref_rep.blocks]
        assert [b.kept for b in rep.pruned] != [b.hidden for b in rep.pruned]
        np.testing.assert_array_equal(np.asarray(new(held)), np.asarray(ref(held)))
        assert rep.calibration["relative_error"] == ref_rep.calibration["relative_error"]
    assert pruner._channel_scores() is scores  # computed once, not per budget
    # the MAC floor is counted, not built: it equals the MACs of every block at round_to
    _, least = prune_channels(model, keep=8)
    assert pruner.floor("macs") == pytest.approx(least.macs_ratio, abs=1e-6)
    assert pruner.floor("params") == pytest.approx(least.params_ratio, rel=1e-3)
    # a budget error still comes before any pruning, from the pruner as from the function
    with pytest.raises(ValueError, match="exactly one of budget"):
        pruner.prune()
