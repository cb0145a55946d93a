"""``compress/convert.py`` on its edges, fast: the words of the report (how ranks were
chosen, why a layer was kept, why a budget was missed), rank checks, unknown input sizes
judged at the nominal size, and the kernel error of spectrum methods taken exactly from the
spectrum. These pin what its mutation run (``scripts/mutation.py --modules convert``) found
unpinned by ``tests/test_surgery.py``.
"""

import re
import warnings

import keras
import numpy as np
import pytest

import keras_eigenconv as ke
from keras_eigenconv.compress import registry
from keras_eigenconv.compress.convert import _budget_outcome
from keras_eigenconv.compress.report import LayerReport
from keras_eigenconv.cost import Cost


def _net(hw=16, seed=0):
    shape = (hw, hw, 3) if hw else (None, None, 3)
    inp = keras.Input(shape)
    x = keras.layers.Conv2D(16, 3, padding="same", name="c1")(inp)
    x = keras.layers.Conv2D(24, 3, padding="same", name="c2")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", name="c3")(x)
    model = keras.Model(inp, x)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    return model


@pytest.fixture(scope="module")
def net():
    return _net()


@pytest.mark.parametrize(
    "kwargs, selection",
    [
        ({}, "full rank (exact)"),
        ({"energy": 0.9}, "energy=0.9"),
        ({"rank": 4}, "rank=4"),
        ({"rank": lambda layer: 4}, "rank=<function>"),
        ({"budget": {"macs": 0.6}}, "budget={'macs': 0.6}"),
        (
            {"budget": {"macs": 0.6}, "round_to": 8},
            "budget={'macs': 0.6}, rounded up to multiples of 8",
        ),
    ],
)
def test_the_report_says_how_ranks_were_chosen(net, kwargs, selection):
    _, rep = ke.convert(net, method="svd", skip_first=False, require_saving=False, **kwargs)
    assert rep.selection == selection


def test_a_layer_kept_because_it_would_not_cost_less_says_so_in_macs(net):
    _, rep = ke.convert(net, method="svd", skip_first=False, rank=64)
    for row in rep.layers:
        assert not row.replaced
        assert re.fullmatch(
            r"svd at rank \d+ would not cost less \([\d,]+ vs [\d,]+ MACs\)", row.reason
        ), row.reason


def test_layers_no_method_replaces_are_named_by_kind():
    inp = keras.Input((16, 16, 8))
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(inp)
    x = keras.layers.SeparableConv2D(8, 3, padding="same", name="sep")(x)
    x = keras.layers.Conv2DTranspose(8, 3, padding="same", name="tr")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", name="c")(x)
    _, rep = ke.convert(keras.Model(inp, x), method="svd", skip_first=False, energy=0.9)
    reasons = {row.name: row.reason for row in rep.layers}
    assert reasons["dw"] == "depthwise conv"
    assert reasons["sep"] == "separable conv"
    assert reasons["tr"] == "transposed conv"


def test_a_rank_rule_returning_a_bad_rank_is_refused_by_name(net):
    _, rep = ke.convert(net, method="svd", skip_first=False, rank=lambda layer: 0)
    for row in rep.layers:
        assert not row.replaced
        assert row.reason == (
            "cannot choose a rank: rank 0 must be a positive int or a rule in "
            "('full', 'effective', 'entropy', 'vbmf')"
        )


def test_unknown_input_sizes_are_judged_at_the_nominal_56x56():
    # the same network with unknown spatial dims gets the ranks a 56x56 input gets
    free, sized = _net(hw=None), _net(hw=56)
    _, rep_free = ke.convert(free, method="svd", skip_first=False, budget={"params": 0.5})
    _, rep_56 = ke.convert(sized, method="svd", skip_first=False, budget={"params": 0.5})
    assert [r.rank for r in rep_free.layers] == [r.rank for r in rep_56.layers]
    _, rep_free = ke.convert(free, method="svd", skip_first=False, rank=12)
    _, rep_56 = ke.convert(sized, method="svd", skip_first=False, rank=12)
    assert [r.reason for r in rep_free.layers] == [r.reason for r in rep_56.layers]
    assert any("would not cost less" in r.reason for r in rep_56.layers)


def test_the_error_of_a_spectrum_method_is_exact(net):
    _, rep = ke.convert(net, method="svd", skip_first=False, rank=5)
    for row in rep.replaced:
        kernel = np.asarray(net.get_layer(row.name).kernel, np.float64)
        s = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)
        exact = np.sqrt(np.sum(s[5:] ** 2) / np.sum(s**2))
        assert abs(row.relative_error - exact) < 1e-12, (row.relative_error, exact)


def _row(name, reason=""):
    return LayerReport(name=name, type="Conv2D", reason=reason)


def test_a_missed_budget_says_by_how_much_and_why():
    m = registry.get_method("svd")
    a, b = object(), object()
    plans = [
        ("a", a, m, {}, [], _row("a", "cannot convert: no")),
        ("b", b, m, {}, [], _row("b")),
    ]
    before, after = Cost(params=100, macs=1000), Cost(params=90, macs=700)
    met, why = _budget_outcome(
        {"macs": 0.6}, "macs", 0.6, before, after, plans, {id(a): 3, id(b): 2}, {id(b): 1}
    )
    assert met is False
    assert why == (
        "the budget {'macs': 0.6} was missed: the converted model has 700 MACs, 0.700 of the "
        "original's 1,000 (target 600), because these layers could not be reduced: a "
        "(cannot convert: no)."
    )
    c = object()
    plans.append(("c", c, m, {}, [], _row("c", "cannot convert: too")))
    met, why = _budget_outcome(
        {"params": 0.5}, "params", 0.5, before, after, plans, {id(a): 3, id(c): 1}, {}
    )
    assert why.endswith(
        "these layers could not be reduced: a (cannot convert: no); c (cannot convert: too)."
    )
    assert "the converted model has 90 parameters, 0.900 of the original's 100" in why
    # nothing failed: the built layers cost more than planned
    met, why = _budget_outcome(
        {"macs": 0.6}, "macs", 0.6, before, after, plans[1:2], {id(b): 2}, {id(b): 1}
    )
    assert why.endswith("because the built layers cost more than the allocation estimated.")
    # met exactly at the goal, absolute or relative
    assert _budget_outcome({"macs": 700}, "macs", 700, before, after, plans, {}, {}) == (True, "")
    assert _budget_outcome({"macs": 0.7}, "macs", 0.7, before, after, plans, {}, {}) == (True, "")
    assert _budget_outcome(None, "macs", None, before, after, plans, {}, {}) == (None, "")


def test_a_missed_budget_warns_with_that_message_when_not_strict(net):
    # params budget with rounding to 32: the allocation's estimate and the built layers
    # may differ; whatever the outcome, the report and the warning agree
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _, rep = ke.convert(
            net, method="svd", skip_first=False, budget={"params": 0.7}, strict=False
        )
    missed = [str(w.message) for w in seen if "was missed" in str(w.message)]
    assert (rep.budget_met is False) == bool(missed)


def test_frozen_weights_count_in_the_parameters_with_unknown_input_size():
    # without a fixed input size the parameters are counted from the layers' weights,
    # trainable and not (a frozen basis)
    free = _net(hw=None)
    new, rep = ke.convert(
        free, method="basis", rank=4, skip_first=False, options={"trainable_basis": False}
    )
    for row in rep.replaced:
        layer = new.get_layer(row.name)
        assert layer.non_trainable_weights  # the frozen basis
        assert row.params_after == layer.count_params()
    assert rep.total_after.total_params == new.count_params()
    assert (
        rep.total_after.fixed_params
        == sum(int(np.prod(w.shape)) for w in new.non_trainable_weights)
        > 0
    )


@pytest.fixture(scope="module")
def bn_net():
    rng = np.random.default_rng(0)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", name="c1")(inp)
    x = keras.layers.BatchNormalization(name="b1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(24, 3, padding="same", name="c2")(x)
    x = keras.layers.BatchNormalization(name="b2")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(5, activation="softmax", name="d")(x))
    model.set_weights(
        [
            np.abs(rng.normal(size=w.shape)).astype("float32") + 0.5
            if "variance" in w.path
            else rng.normal(size=w.shape).astype("float32")
            for w in model.weights
        ]
    )
    return model, rng.normal(size=(64, 12, 12, 3)).astype("float32")


def _calibrated(bn_net, **kwargs):
    model, data = bn_net
    _, rep = ke.convert(
        model, method="svd", energy=0.6, skip_first=False, calibration_data=data, **kwargs
    )
    return rep


@pytest.mark.parametrize("batchnorm", ["correct", "reestimate", None])
def test_the_calibration_report_of_each_batchnorm_mode(bn_net, batchnorm):
    rep = _calibrated(bn_net, batchnorm=batchnorm)
    cal = rep.calibration
    assert set(cal) == {
        "fit_samples",
        "heldout_samples",
        "heldout_is_fit_data",
        "top1_agreement",
        "relative_error",
        "batchnorm",
        "batchnorms_changed",
        "seconds",
    }
    assert (cal["fit_samples"], cal["heldout_samples"], cal["heldout_is_fit_data"]) == (
        48,
        16,
        False,
    )
    assert cal["batchnorm"] == batchnorm
    assert cal["batchnorms_changed"] == (0 if batchnorm is None else 2)
    assert 0.0 <= cal["top1_agreement"] <= 1.0 and cal["relative_error"] >= 0.0
    steps = {"statistics", "reconstruct", "measure"}
    if batchnorm == "reestimate":
        steps.add("reestimate_batchnorm")
    assert set(cal["seconds"]) == steps
    assert all(isinstance(v, float) and v > 0 for v in cal["seconds"].values())
    assert [r.objective for r in rep.replaced] == ["data+refit", "data+refit"]
    if batchnorm == "correct":  # the corrected statistics restore the outputs
        assert cal["top1_agreement"] > 0.9 and cal["relative_error"] < 0.05


def test_without_refit_or_batchnorm_the_objective_is_the_data_alone(bn_net):
    rep = _calibrated(bn_net, batchnorm=None, refit=False)
    assert [r.objective for r in rep.replaced] == ["data", "data"]


def test_a_round_to_at_or_above_every_full_rank_is_named_when_the_budget_fails(net):
    # DeCEF's rank is at most kh*kw = 9: round_to=16 rounds every rank up to full rank
    with pytest.raises(ValueError, match=r"round_to=16 is not below the full rank.*at most 9"):
        ke.convert(net, method="decef", budget={"macs": 0.6}, round_to=16)
    # a round_to some layer can use gives the plain message
    with pytest.raises(ValueError, match="cannot be met") as exc:
        ke.convert(net, method="svd", budget={"macs": 0.01}, round_to=8)
    assert "round_to=8 is not below" not in str(exc.value)
