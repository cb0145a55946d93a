"""Model surgery: convert() on functional, Sequential, nested, shared and multi-I/O models."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

import keras_eigenconv  # noqa: F401  (registers the layers)
from keras_eigenconv.compress import Method, convert, registry
from keras_eigenconv.cost import model_cost

L = keras.layers
SPECTRUM_METHODS = ["decef", "basis", "svd", "svd_spatial"]


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Single-threaded BLAS: on a loaded 2-core machine multithreaded OpenBLAS SVDs spin and
    run up to 100x slower (measured), which says nothing about the code under test."""
    with threadpool_limits(1, user_api="blas"):
        yield


def small_cnn(c=4):
    """Convs with every stride/padding/dilation combination Conv2D accepts, plus a
    depthwise conv, a grouped conv and a 1x1 conv."""
    x = inp = keras.Input((14, 14, c))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="first")(x)
    x = L.Conv2D(12, 3, strides=2, padding="same", name="strided")(x)
    x = L.Conv2D(12, (3, 2), dilation_rate=2, padding="valid", use_bias=False, name="dilated")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Conv2D(16, 1, name="pointwise")(x)
    x = L.Conv2D(16, 3, groups=4, padding="same", name="grouped")(x)
    x = L.Conv2D(20, (2, 3), strides=(1, 2), padding="valid", name="asym")(x)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(5, name="head")(x)
    return keras.Model(inp, out, name="small")


def _x(model, n=3, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [tuple(t.shape[1:]) for t in model.inputs]
    xs = [rng.random((n, *s)).astype("float32") for s in shapes]
    return xs if len(xs) > 1 else xs[0]


def _close(a, b, rtol=2e-4):
    for u, v in zip(keras.tree.flatten(a), keras.tree.flatten(b)):
        u, v = np.asarray(u), np.asarray(v)
        assert np.max(np.abs(u - v)) <= rtol * (np.max(np.abs(v)) + 1e-6), np.max(np.abs(u - v))


@pytest.fixture(scope="module")
def trained(digits):
    """A small CNN trained for two epochs on scikit-learn's digits."""
    keras.utils.set_random_seed(0)
    x, y = digits
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(16, 3, padding="same", activation="relu", name="c1"),
            L.Conv2D(32, 3, padding="same", activation="relu", name="c2"),
            L.Conv2D(48, 3, padding="same", activation="relu", name="c3"),
            L.GlobalAveragePooling2D(),
            L.Dense(10, name="head"),
        ],
        name="digits_cnn",
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    return model, x[:64]


# ---- full-rank equivalence -----------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in registry.registered_methods() if n != "tt_dense"])
def test_full_rank_equivalence_every_method(name):
    m = registry.get_method(name)
    model = small_cnn()
    new, report = convert(model, method=name, skip_first=False, require_saving=False)
    replaced = {r.name for r in report.replaced}
    expected = {"first", "strided", "dilated", "asym"} | (
        set() if m.spatial_only else {"pointwise"}
    )
    assert expected - {"pointwise"} <= replaced | {
        r.name for r in report.skipped if "cannot" in r.reason
    }
    assert replaced, report
    for r in report.replaced:
        assert isinstance(new.get_layer(r.name), m.layer)
        assert r.relative_error < 1e-5
    _close(new(_x(model)), model(_x(model)))


@settings(max_examples=6, deadline=None)
@given(
    method=st.sampled_from(SPECTRUM_METHODS),
    k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    c=st.integers(1, 5),
    n=st.integers(1, 9),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    padding=st.sampled_from(["same", "valid"]),
)
def test_full_rank_equivalence_random_shapes(method, k, c, n, stride, dilation, padding):
    if stride > 1:
        dilation = 1
    x = inp = keras.Input((11, 10, c))
    x = L.Conv2D(n, k, strides=stride, dilation_rate=dilation, padding=padding)(x)
    x = L.Conv2D(3, k, padding="same", activation="tanh")(x)
    model = keras.Model(inp, x)
    new, report = convert(model, method=method, skip_first=False, require_saving=False)
    if k != (1, 1) or not registry.get_method(method).spatial_only:
        assert len(report.replaced) == 2
    _close(new(_x(model)), model(_x(model)))


# ---- the user's model, kept weights, energies, budgets ------------------------------------


def test_user_model_untouched_and_kept_layers_bit_exact():
    model = small_cnn()
    config = json.dumps(model.get_config(), sort_keys=True, default=str)
    weights = [w.copy() for w in model.get_weights()]
    new, report = convert(model, method="svd", energy=0.6, require_saving=False)
    assert json.dumps(model.get_config(), sort_keys=True, default=str) == config
    for a, b in zip(model.get_weights(), weights):
        assert np.array_equal(a, b)
    replaced = {r.name for r in report.replaced}
    assert replaced
    for layer in model.layers:
        if layer.name in replaced or not layer.weights:
            continue
        twin = new.get_layer(layer.name)
        assert twin is not layer
        for u, v in zip(layer.get_weights(), twin.get_weights()):
            assert np.array_equal(u, v)
    assert all(model.get_layer(n) is not new.get_layer(n) for n in replaced)


def test_energy_fewer_macs_and_error_falls_with_energy(trained):
    model, x = trained
    ref = model(x)
    errors = []
    for energy in (0.5, 0.8, 0.95, 1.0):
        new, report = convert(model, method="svd", energy=energy, require_saving=False)
        errors.append(float(np.linalg.norm(new(x) - ref) / np.linalg.norm(ref)))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-5 and errors[0] > 1e-3
    new, report = convert(model, method="svd", energy=0.9)
    assert report.replaced
    assert model_cost(new).total.macs < model_cost(model).total.macs
    assert report.total_after.macs == model_cost(new).total.macs
    assert report.macs_ratio < 1


def test_budget_macs_params_and_rounding(trained):
    model, x = trained
    before = model_cost(model).total
    new, report = convert(model, method="svd", budget={"macs": 0.5}, skip_first=False)
    assert model_cost(new).total.macs <= 0.5 * before.macs
    new, report = convert(model, method="svd", budget={"params": 0.6}, round_to=8)
    assert model_cost(new).total.total_params <= 0.6 * before.total_params
    for r in report.replaced:
        assert r.rank % 8 == 0 or r.rank == new.get_layer(r.name.split("/")[-1]).max_rank(
            new.get_layer(r.name).input.shape[-1]
        )
    tight, tight_report = convert(model, method="svd", budget={"params": 0.4})
    loose_err = sum(r.relative_error**2 for r in report.replaced)
    tight_err = sum(r.relative_error**2 for r in tight_report.replaced)
    assert tight_err >= loose_err
    with pytest.raises(ValueError, match="budget cannot be met"):
        convert(model, method="decef", budget={"macs": 0.01})


def test_rank_rules_mappings_and_functions(trained):
    model, x = trained
    _, rep = convert(model, method="svd", rank=4, skip_first=False)
    assert [r.rank for r in rep.replaced] == [4, 4, 4]
    _, rep = convert(model, method="decef", rank=50, skip_first=False, require_saving=False)
    assert [r.rank for r in rep.replaced] == [9, 9, 9]  # clipped to min(kh*kw, filters)
    for rule in ("effective", "vbmf"):
        _, rep = convert(model, method="svd", rank=rule, require_saving=False)
        assert all(1 <= r.rank <= 48 for r in rep.replaced) and len(rep.replaced) == 2
    _, rep = convert(model, method="svd", rank={"c2": 3, "c3": 5})
    assert {r.name: r.rank for r in rep.replaced} == {"c2": 3, "c3": 5}
    _, rep = convert(model, method="svd", rank=lambda lay: 2 if lay.name == "c3" else None)
    assert {r.name: r.rank for r in rep.replaced} == {"c3": 2}
    _, rep = convert(model, method={"c2": "decef", "c3": "svd"}, rank=3)
    assert {(r.name, r.method) for r in rep.replaced} == {("c2", "decef"), ("c3", "svd")}
    _, rep = convert(model, method=lambda lay: "basis" if lay.name == "c3" else None, rank=2)
    assert [(r.name, r.method) for r in rep.replaced] == [("c3", "basis")]


def test_default_skips_are_reported():
    model = small_cnn()
    _, rep = convert(model, method="decef", energy=0.5)
    reasons = {r.name: r.reason for r in rep.layers}
    assert "first conv" in reasons["first"]
    assert "1x1" in reasons["pointwise"]
    assert "depthwise" in reasons["dw"]
    assert "grouped" in reasons["grouped"]
    _, rep = convert(model, method="svd", rank="full", skip_first=False)
    assert any("would not cost less" in r.reason for r in rep.layers)
    assert not rep.replaced  # full rank never costs less


def test_include_exclude():
    model = small_cnn()
    kw = dict(method="svd", require_saving=False, skip_first=False)
    _, rep = convert(model, include=["str*", "asym"], **kw)
    assert {r.name for r in rep.replaced} == {"strided", "asym"}
    assert "include" in {r.name: r.reason for r in rep.layers}["dilated"]
    _, rep = convert(model, exclude=lambda lay: lay.kernel_size == (3, 3), **kw)
    assert {r.name for r in rep.replaced} == {"dilated", "pointwise", "asym"}
    _, rep = convert(model, include=L.Conv2D, exclude="first", **kw)
    assert "first" not in {r.name for r in rep.replaced}


# ---- model structures ----------------------------------------------------------------


def test_shared_layer_converted_once_and_still_shared():
    a, b = keras.Input((9, 9, 3)), keras.Input((9, 9, 3))
    shared = L.Conv2D(6, 3, padding="same", name="shared")
    stem = L.Conv2D(3, 1, name="stem")
    y = L.Concatenate()([shared(stem(a)), shared(b)])
    model = keras.Model([a, b], [y, L.Conv2D(2, 3, name="tail")(y)])
    new, rep = convert(model, method="svd", require_saving=False, skip_first=False)
    layer = new.get_layer("shared")
    assert isinstance(layer, keras_eigenconv.SVDConv2D)
    assert len(layer._inbound_nodes) == 2  # called on both inputs
    assert sum(lay is layer for lay in new.layers) == 1
    assert [r.name for r in rep.replaced].count("shared") == 1
    _close(new(_x(model)), model(_x(model)))


def test_nested_functional_and_sequential():
    inner_seq = keras.Sequential(
        [keras.Input((8, 8, 6)), L.Conv2D(8, 3, padding="same", name="seq_conv"), L.ReLU()],
        name="inner_seq",
    )
    i = keras.Input((8, 8, 8))
    inner_fn = keras.Model(i, L.Conv2D(10, 3, padding="same", name="fn_conv")(i), name="inner_fn")
    x = inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="outer_conv")(x)
    model = keras.Model(inp, inner_fn(inner_seq(x)))
    new, rep = convert(model, method="basis", require_saving=False, skip_first=False)
    assert {r.name for r in rep.replaced} == {
        "outer_conv",
        "inner_seq/seq_conv",
        "inner_fn/fn_conv",
    }
    assert isinstance(new.get_layer("inner_seq").get_layer("seq_conv"), keras_eigenconv.BasisConv2D)
    assert isinstance(model.get_layer("inner_seq").get_layer("seq_conv"), L.Conv2D)
    _close(new(_x(model)), model(_x(model)))


def test_sequential_and_keras_ops_in_the_graph():
    seq = keras.Sequential(
        [keras.Input((10, 10, 2)), L.Conv2D(8, 3), L.Conv2D(8, 3, strides=2), L.Flatten()]
    )
    new, rep = convert(seq, method="decef", require_saving=False, skip_first=False)
    assert isinstance(new, keras.Sequential) and len(rep.replaced) == 2
    _close(new(_x(seq)), seq(_x(seq)))
    x = inp = keras.Input((10, 10, 2))
    y = L.Conv2D(4, 3, padding="same")(x)
    y = keras.ops.add(keras.ops.multiply(y, 2.0), x[..., :1])
    model = keras.Model(inp, L.Conv2D(3, 3)(y))
    new, rep = convert(model, method="svd", require_saving=False, skip_first=False)
    assert len(rep.replaced) == 2
    _close(new(_x(model)), model(_x(model)))


class _Sub(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = L.Conv2D(4, 3)

    def call(self, x):
        return self.conv(x)


def test_errors():
    sub = _Sub()
    sub(np.zeros((1, 8, 8, 3), "float32"))
    # subclassed models convert (tests/test_models_users_have.py) when their config rebuilds
    # them; this one's __init__ takes no base-layer arguments (name, trainable, dtype)
    with pytest.raises(ValueError, match="cannot be copied from its config.*get_config"):
        convert(sub)
    with pytest.raises(ValueError, match="not built"):
        convert(keras.Sequential([L.Conv2D(4, 3)]))
    model = small_cnn()
    with pytest.raises(ValueError, match="at most one of rank, energy and budget"):
        convert(model, rank=3, energy=0.9)
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        convert(model, method="nope")
    with pytest.raises(ValueError, match="energy"):
        convert(model, energy=2.0)
    with pytest.raises(ValueError, match="round_to"):
        convert(model, round_to=-8)
    with pytest.raises(ValueError, match="rank="):
        convert(model, rank="biggest")
    with pytest.raises(ValueError, match="needs a keras.Model"):
        convert(L.Conv2D(3, 3))


def test_registry():
    names = registry.registered_methods()
    for n in ("decef", "basis", "svd", "svd_spatial", "tucker2", "cp", "tt", "ssc"):
        assert n in names
    assert set(SPECTRUM_METHODS) <= set(registry.available_methods())
    # a record holds a layer class of the contract, never an import string
    with pytest.raises(ValueError, match="CompressedLayer subclass"):
        Method("ghost", "keras_eigenconv.no_such_module:Ghost")
    with pytest.raises(ValueError, match="CompressedLayer subclass"):
        Method("plain", keras.layers.Conv2D)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_method(Method("svd", keras_eigenconv.SVDConv2D))
    custom = Method("svd_r", keras_eigenconv.SVDConv2D, options={"decomposition": "spatial"})
    new, rep = convert(small_cnn(), method=custom, rank=2)
    assert rep.replaced and all(
        new.get_layer(r.name).decomposition == "spatial" for r in rep.replaced
    )
    # cost of a candidate rank from an unbuilt instance = cost of the built layer
    conv = small_cnn().get_layer("strided")
    m = registry.get_method("decef")
    built = m.build(conv, rank=2)
    shape = (None, 14, 14, 8)
    assert m.cost(conv, 2, [shape]) == built.cost(shape)
    costs = m.rank_costs(conv, [1, 2, 3, 9], [shape])
    assert costs[3, 1] == m.cost(conv, 9, [shape]).macs


# ---- the report, progress, saving ----------------------------------------------------


def test_report_formats(capsys):
    model = small_cnn()
    _, rep = convert(model, method="svd", rank=2, progress=True)
    assert "converting [" in capsys.readouterr().err
    text = str(rep)
    assert "strided" in text and "kept: first conv" in text and "MACs:" in text
    d = json.loads(json.dumps(rep.to_dict()))
    assert (
        d["replaced"] == len(rep.replaced) and d["total_after"]["macs"] < d["total_before"]["macs"]
    )
    md = rep.to_markdown()
    assert "| layer | type | method | rank |" in md and md.count("\n|") >= len(rep.layers) + 1
    row = next(r for r in d["layers"] if r["name"] == "strided")
    assert row["rank"] == 2 and row["macs_after"] < row["macs_before"]
    assert 0 < row["relative_error"] < 1


def test_keras_reload_in_a_fresh_process(tmp_path, trained):
    model, x = trained
    new, _ = convert(model, method="svd", energy=0.9, skip_first=False)
    path = tmp_path / "converted.keras"
    new.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.asarray(new(x)))
    script = textwrap.dedent(
        f"""
        import numpy as np, keras
        import keras_eigenconv
        m = keras.saving.load_model({str(path)!r})
        y = np.asarray(m(np.load({str(tmp_path / "x.npy")!r})))
        assert any(isinstance(l, keras_eigenconv.SVDConv2D) for l in m.layers)
        assert np.array_equal(y, np.load({str(tmp_path / "y.npy")!r})), np.abs(y).max()
        print("OK")
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


def test_dense_layers_with_tt_dense():
    m = registry.get_method("tt_dense")
    x = inp = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, name="conv")(x)
    x = L.Flatten()(x)
    x = L.Dense(64, activation="relu", name="fc1")(x)
    model = keras.Model(inp, L.Dense(12, name="fc2")(x))
    new, rep = convert(model, method="tt_dense", require_saving=False)
    assert {r.name for r in rep.replaced} == {"fc1", "fc2"}
    assert "replaces Dense layers only" in {r.name: r.reason for r in rep.layers}["conv"]
    assert isinstance(new.get_layer("fc1"), m.layer)
    _close(new(_x(model)), model(_x(model)))


def test_tucker2_meets_a_mac_budget():
    """Tucker-2 picks its own (R1, R2) for rank/energy, but a whole-model budget spreads
    equal ranks R1 = R2 = r over the layers by its mean-unfolding spectrum."""
    inputs = keras.Input((16, 16, 8))
    x = keras.layers.Conv2D(16, 3, padding="same", name="c0")(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", name="c1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", name="c2")(x)
    model = keras.Model(inputs, x)
    from keras_eigenconv import model_cost

    before = model_cost(model).total.macs
    small, report = convert(model, method="tucker2", budget={"macs": 0.5}, progress=False)
    after = model_cost(small).total.macs
    assert after <= 0.5 * before
    replaced = [r for r in report.layers if not r.reason]
    assert replaced and all(0 < r.relative_error < 1 for r in replaced)
    assert report.to_dict()["layers"]


@pytest.mark.parametrize("method", ["svd", "decef"])
def test_budget_conversion_computes_each_spectrum_once_and_matches_the_layers(monkeypatch, method):
    """A budget conversion decomposes each layer from the Gram matrix (svd) or per-channel
    Gram eigendecomposition (decef) its rank choice computed (counted), and the
    replacements are bit-identical to building each layer alone at the chosen rank."""
    from keras_eigenconv.decompositions import matrix as mx

    model = small_cnn()
    monkeypatch.setattr(mx, "_EIGH_CACHE", {})  # nothing served from an earlier conversion
    calls = []
    real_gram = mx._tall_gram
    monkeypatch.setattr(mx, "_tall_gram", lambda m: calls.append("gram") or real_gram(m))
    for name in ("svd", "eigh", "eigvalsh"):
        real = getattr(np.linalg, name)
        monkeypatch.setattr(
            np.linalg, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k)
        )
    new, report = convert(model, method=method, budget={"macs": 0.7}, progress=False)
    replaced = [r for r in report.layers if r.replaced]
    candidates = [
        r
        for r in report.layers
        if r.rank is not None or r.reason == "the budget allocation keeps it"
    ]
    assert replaced
    if method == "svd":  # one eigvalsh per candidate, one eigh per replaced layer
        assert calls.count("eigvalsh") == len(candidates) and "svd" not in calls
        assert calls.count("eigh") == len(replaced)
        assert calls.count("gram") == len(candidates)  # the factors reuse the Gram matrix
    else:  # one batched eigh of the per-channel Gram matrices (an SVD when a kernel has
        # more taps than filters) per candidate, none again for the factors
        assert calls.count("eigh") + calls.count("svd") == len(candidates)
    monkeypatch.undo()
    for row in replaced:
        alone = registry.get_method(method).build(model.get_layer(row.name), rank=row.rank)
        for got, want in zip(new.get_layer(row.name).weights, alone.weights):
            np.testing.assert_array_equal(got.numpy(), want.numpy())
