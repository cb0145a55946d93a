"""The layer contract, tested the same way for every registered method.

Parametrized over ``compress.registered_methods()``: a method added to the registry is tested
here without editing this file. Each test reaches the layer only through its contract
(``layers.CompressedLayer``: ``from_source``, ``to_source``, ``rank_for``, ``cost``,
``inference_layers``, ``get_config``) and the method's registry record (its default options).
Source layers carry trained-looking weights: Gaussian kernels and non-zero biases.
"""

import math

import keras
import numpy as np
import pytest
from helpers import max_rel_err, tflite_run
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from keras_eigenconv import CompressedLayer
from keras_eigenconv.compress import get_method, registered_methods
from keras_eigenconv.cost import Cost

METHODS = registered_methods()
C, N, H, W = 4, 8, 9, 10  # channels divisible by the SSC groups (4)

# Conv2D geometries: every stride / padding / dilation kind Conv2D accepts (channels-last).
CONV_CASES = {
    "3x3-same": dict(kernel_size=3, padding="same"),
    "3x3-valid-relu": dict(kernel_size=3, padding="valid", activation="relu"),
    "stride2-same": dict(kernel_size=3, strides=2, padding="same"),
    "stride2x1-valid": dict(kernel_size=3, strides=(2, 1), padding="valid"),
    "dilation2-same": dict(kernel_size=3, dilation_rate=2, padding="same"),
    "dilation1x2-valid": dict(kernel_size=(3, 2), dilation_rate=(1, 2), padding="valid"),
    "5x3-stride2-nobias": dict(kernel_size=(5, 3), strides=2, padding="same", use_bias=False),
}
DENSE_CASES = {
    "dense": dict(),
    "dense-relu": dict(activation="relu"),
    "dense-nobias": dict(use_bias=False),
}


def _source(method, case="3x3-same", seed=0):
    """A built source layer of the method's ``source_type`` with random trained weights,
    and an input batch for it."""
    rng = np.random.default_rng(seed)
    if method.layer.source_type is keras.layers.Dense:
        cfg = DENSE_CASES.get(case, {})
        layer = keras.layers.Dense(N, name="source", **cfg)
        x = rng.normal(size=(3, 12)).astype("float32")
    else:
        cfg = CONV_CASES.get(case, CONV_CASES["3x3-same"])
        layer = keras.layers.Conv2D(N, name="source", **cfg)
        x = rng.normal(size=(2, H, W, C)).astype("float32")
    layer.build(x.shape)
    layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
    if layer.use_bias:
        layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))
    return layer, x


def _kernel(source):
    return np.asarray(source.kernel, np.float64)


def _full_rank(method, source):
    return method.layer.rank_for(_kernel(source), **method.merged_options())


def _reduced(method, source, implementation="auto"):
    """The layer at about 70 % energy (each method's own energy rule)."""
    return method.build(source, energy=0.7, implementation=implementation)


def _cases(method_name):
    cls = get_method(method_name).layer
    return DENSE_CASES if cls.source_type is keras.layers.Dense else CONV_CASES


ALL_CASES = [(m, c) for m in METHODS for c in _cases(m)]


# ---- the contract is declared ---------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_the_record_names_a_contract_layer(name):
    m = get_method(name)
    assert issubclass(m.layer, CompressedLayer)
    assert m.layer.source_type in (keras.layers.Conv2D, keras.layers.Dense)
    assert m.layer.rank_selection in ("spectrum", "layer")
    source, _ = _source(m)
    layer = m.build(source)
    assert isinstance(layer, m.layer) and layer.built
    assert layer.resolved_implementation in ("factorized", "dense")
    if m.rank_selection == "spectrum" or m.budget_spectrum:
        s = m.spectrum(source)
        assert s.ndim == 1 and len(s) >= 1 and np.all(np.diff(s) <= 1e-9 * s.max())


# ---- exact at full rank, for every geometry and both implementations -------------------


@pytest.mark.parametrize("name,case", ALL_CASES, ids=[f"{m}-{c}" for m, c in ALL_CASES])
def test_full_rank_is_exact(name, case):
    m = get_method(name)
    source, x = _source(m, case)
    expected = np.asarray(source(x))
    rank = _full_rank(m, source)
    for impl in ("factorized", "dense"):
        layer = m.build(source, rank=rank, implementation=impl)
        got = np.asarray(layer(x))
        assert got.shape == expected.shape
        assert tuple(layer.compute_output_shape(x.shape)) == expected.shape
        assert max_rel_err(expected, got) < 5e-5, (impl, layer.rank)
        assert layer.relative_error(source) < 1e-5


geometries = st.fixed_dictionaries(
    {
        "kernel_size": st.sampled_from([1, 3, 5, (3, 1), (1, 3), (2, 3), (5, 3)]),
        "padding": st.sampled_from(["same", "valid"]),
        "use_bias": st.booleans(),
        "activation": st.sampled_from([None, "relu", "tanh"]),
        "step": st.sampled_from([("s", 1), ("s", 2), ("s", (2, 1)), ("d", 2), ("d", (1, 2))]),
        "channels": st.sampled_from([4, 8]),
        "filters": st.sampled_from([4, 8, 12]),
        "size": st.integers(7, 12),
    }
)


@pytest.mark.parametrize("name", [m for m in METHODS if _cases(m) is CONV_CASES])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=geometries)
def test_full_rank_is_exact_for_random_geometries(name, g):
    m = get_method(name)
    g = dict(g)
    kind, step = g.pop("step")
    c, size = g.pop("channels"), g.pop("size")
    g["strides" if kind == "s" else "dilation_rate"] = step
    k = np.broadcast_to(g["kernel_size"], 2)
    d = np.broadcast_to(g.get("dilation_rate", 1), 2)
    assume(g["padding"] == "same" or ((k - 1) * d + 1 <= size).all())  # Conv2D accepts it
    rng = np.random.default_rng(size)
    x = rng.normal(size=(2, size, size + 1, c)).astype("float32")
    source = keras.layers.Conv2D(**g)
    source.build(x.shape)
    source.kernel.assign(rng.normal(size=source.kernel.shape).astype("float32"))
    if source.use_bias:
        source.bias.assign(rng.normal(size=source.bias.shape).astype("float32"))
    expected = np.asarray(source(x))
    for impl in ("factorized", "dense"):
        layer = m.build(source, rank=_full_rank(m, source), implementation=impl)
        got = np.asarray(layer(x))
        assert got.shape == expected.shape
        assert max_rel_err(expected, got) < 5e-5, (impl, layer.rank)


@pytest.mark.parametrize("name", METHODS)
def test_error_is_monotone_in_rank(name):
    m = get_method(name)
    source, x = _source(m, "3x3-same", seed=1)
    y = np.asarray(source(x))
    full = _full_rank(m, source)
    top = min(full) if isinstance(full, tuple) else int(full)
    ranks = sorted({1, 2, 3, *range(4, top + 1, max(1, top // 6)), top} - {top + 1, top + 2})
    ranks = [r for r in ranks if r <= top] + ([full] if isinstance(full, tuple) else [])
    errors, out_errors = [], []
    for r in ranks:
        layer = m.build(source, rank=r)
        errors.append(layer.relative_error(source))
        out_errors.append(float(np.linalg.norm(np.asarray(layer(x)) - y)))
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:])), list(zip(ranks, errors))
    assert errors[0] > 0.1 and errors[-1] < errors[0]
    assert out_errors[-1] < out_errors[0]


@pytest.mark.parametrize("name", METHODS)
def test_energy_bounds_the_error(name):
    m = get_method(name)
    source, _ = _source(m, "3x3-same", seed=2)
    for energy in (0.3, 0.5, 0.9, 1.0):
        layer = m.build(source, energy=energy)
        # every method keeps at least `energy` of the squared norm, within its own rule:
        # Tucker-2 keeps `energy` of each unfolding, so its bound is 2 * (1 - energy)
        slack = 2.0 if name == "tucker2" else 1.0
        assert layer.relative_error(source) ** 2 <= slack * (1 - energy) + 1e-6
        if m.rank_selection == "spectrum" and layer.rank > 1:  # and it is the smallest such
            smaller = m.build(source, rank=layer.rank - 1)
            assert 1 - smaller.relative_error(source) ** 2 < energy


# ---- folding back, the source untouched ---------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_folds_back_to_the_source(name):
    m = get_method(name)
    source, x = _source(m, "stride2-same" if m.layer.source_type is keras.layers.Conv2D else "")
    before = [np.asarray(w).copy() for w in source.weights]
    config = source.get_config()
    exact = m.build(source, rank=_full_rank(m, source))
    back = exact.to_source()
    assert type(back) is m.layer.source_type
    np.testing.assert_allclose(back.kernel, source.kernel, atol=5e-5 * np.abs(before[0]).max())
    np.testing.assert_allclose(back.bias, source.bias, atol=1e-6)
    small = _reduced(m, source)
    folded = small.to_source(name="folded")
    assert folded.name == "folded"
    assert max_rel_err(np.asarray(small(x)), np.asarray(folded(x))) < 5e-5
    # the source layer is not modified
    assert source.get_config() == config
    for a, w in zip(before, source.weights):
        np.testing.assert_array_equal(a, np.asarray(w))


# ---- cost ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_cost_is_counted_and_matches_the_unbuilt_candidate(name):
    m = get_method(name)
    source, x = _source(m)
    layer = _reduced(m, source)
    shape = tuple(x.shape)
    cost = layer.cost(shape)
    assert isinstance(cost, Cost) and cost.macs > 0
    assert cost.total_params == sum(math.prod(w.shape) for w in layer.weights)
    assert m.cost(source, layer.rank, [shape]) == cost


# ---- serialization ---------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_config_round_trip(name):
    m = get_method(name)
    source, _ = _source(m)
    layer = _reduced(m, source)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    assert keras.saving.serialize_keras_object(layer)["registered_name"] == (
        f"keras_eigenconv>{type(layer).__name__}"
    )


@pytest.mark.parametrize("name", METHODS)
def test_a_fixed_training_path_trains_that_way_and_computes_the_same(name):
    """``training_implementation`` fixes what ``fit`` runs (where the layer has both paths);
    inference keeps its own choice; the two training paths compute the same outputs."""
    from keras_eigenconv.layers import FactorizedConv2D

    m = get_method(name)
    if not issubclass(m.layer, FactorizedConv2D):
        pytest.skip("training_implementation is a FactorizedConv2D argument")
    source, x = _source(m)
    base = _reduced(m, source)
    outs = {}
    for path in ("factorized", "dense"):
        layer = type(base).from_config({**base.get_config(), "training_implementation": path})
        layer.build(x.shape)
        layer.set_weights(base.get_weights())
        assert layer.get_config()["training_implementation"] == path
        assert layer.resolved_implementation == base.resolved_implementation
        assert layer.resolved_training_implementation == path
        assert layer.implementation_for(x.shape, training=True) == path
        outs[path] = np.asarray(layer(x, training=True))
    assert max_rel_err(outs["factorized"], outs["dense"]) < 1e-5
    # from_config wraps the constructor's ValueError in a TypeError with its message
    with pytest.raises((ValueError, TypeError), match="training_implementation must be"):
        type(base).from_config({**base.get_config(), "training_implementation": "auto"})


@pytest.mark.parametrize("name", METHODS)
def test_keras_file_round_trip_is_bit_exact(name, tmp_path):
    m = get_method(name)
    source, x = _source(m)
    layer = _reduced(m, source)
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.layers[-1]) is type(layer)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    for w1, w2 in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(np.asarray(w1), np.asarray(w2))
        assert w1.trainable == w2.trainable


@pytest.mark.parametrize("name", METHODS)
def test_from_scratch_layer_of_the_same_config_trains_a_step(name):
    m = get_method(name)
    source, x = _source(m)
    fresh = type(layer := _reduced(m, source)).from_config(layer.get_config())
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, fresh(inputs))
    assert model.count_params() == layer.count_params()
    model.compile("sgd", "mse")
    y = np.zeros(model.output_shape[1:], "float32")[None].repeat(len(x), 0)
    before = [np.asarray(w).copy() for w in fresh.trainable_weights]
    model.fit(x, y, epochs=1, batch_size=len(x), verbose=0)
    assert any(
        not np.array_equal(a, np.asarray(w)) for a, w in zip(before, fresh.trainable_weights)
    )


# ---- export: built-in LiteRT ops, the same numbers --------------------------------------


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="LiteRT export needs the TensorFlow backend"
)
@pytest.mark.parametrize("name", METHODS)
def test_exports_with_builtin_ops_only(name):
    m = get_method(name)
    source, x = _source(m, "stride2-same" if m.layer.source_type is keras.layers.Conv2D else "")
    for impl in ("factorized", "dense"):
        layer = _reduced(m, source, implementation=impl)
        inputs = keras.Input(x.shape[1:], batch_size=1)
        model = keras.Model(inputs, layer(inputs))
        got, ops = tflite_run(model, x[:1])
        assert max_rel_err(np.asarray(model(x[:1])), got) < 1e-5
        assert not any("FLEX" in op.upper() or op == "CUSTOM" for op in ops), ops
    arrangement = layer.inference_layers()
    if arrangement is not None:  # equivalent plain-Keras layers
        y = x[:1]
        for op in arrangement:
            assert not isinstance(op, CompressedLayer)
            y = op(y)
        assert max_rel_err(np.asarray(model(x[:1])), np.asarray(y)) < 1e-5


# ---- clear errors, before any work ------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_bad_sources_and_arguments_get_clear_errors(name):
    m = get_method(name)
    cls = m.layer
    kind = cls.source_type.__name__
    source, _ = _source(m)
    with pytest.raises(ValueError, match="not both"):
        cls.from_source(source, rank=1, energy=0.5, **m.merged_options())
    for rank in (0, -3, 2.5, "big"):
        with pytest.raises(ValueError, match="rank"):
            cls.from_source(source, rank=rank, **m.merged_options())
    for energy in (0, -0.5, 1.5, True):
        with pytest.raises(ValueError, match=r"energy.*\(0, 1\]"):
            cls.from_source(source, energy=energy, **m.merged_options())
    unbuilt = cls.source_type(N, 3) if kind == "Conv2D" else cls.source_type(N)
    with pytest.raises(ValueError, match="not built"):
        cls.from_source(unbuilt, **m.merged_options())
    broken, _ = _source(m, seed=3)
    k = np.asarray(broken.kernel).copy()
    k.flat[0] = np.nan
    broken.kernel.assign(k)
    with pytest.raises(ValueError, match="NaN or Inf"):
        cls.from_source(broken, **m.merged_options())
    with pytest.raises(ValueError, match=f"needs a keras.layers.{kind}"):
        cls.from_source(keras.layers.LayerNormalization(), **m.merged_options())
