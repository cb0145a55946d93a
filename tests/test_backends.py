"""Backends and kernels: the factorized paths on TensorFlow's GPU (non-oneDNN) kernels,
Conv2D's errors on too-small inputs, the JAX backend, and what importing the package loads.

Checks that need another backend or another TensorFlow kernel set run in a subprocess with
the environment variable set (``KERAS_BACKEND`` and ``TF_ENABLE_ONEDNN_OPTS`` are read once,
at import).
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_eigenconv.compress import get_method, registered_methods
from keras_eigenconv.layers import FactorizedConv2D

CONV_METHODS = [
    m for m in registered_methods() if get_method(m).layer.source_type is keras.layers.Conv2D
]
FACTORIZED_METHODS = [m for m in CONV_METHODS if issubclass(get_method(m).layer, FactorizedConv2D)]
TF_ONLY = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow-only (LiteRT export)"
)


def _run(script: str, timeout: int = 300, **env) -> str:
    """Run ``script`` in a fresh interpreter with ``env`` added; return its stdout."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


# ---- TensorFlow's GPU kernels: TF_ENABLE_ONEDNN_OPTS=0 runs them on the CPU -------------

GPU_KERNEL_SCRIPT = """
import keras, numpy as np
from keras_eigenconv.compress import get_method
methods = {methods!r}
rng = np.random.default_rng(0)
x = rng.normal(size=(2, 9, 10, 4)).astype("float32")
geometries = [
    dict(strides=s, padding=p) for s in [(2, 1), (1, 2), (2, 2), (3, 2), (1, 3)]
    for p in ("same", "valid")
] + [dict(dilation_rate=d, padding=p) for d in [(2, 1), (2, 2)] for p in ("same", "valid")]
checked = 0
for name in methods:
    m = get_method(name)
    for kernel_size in [(3, 3), (2, 3)]:
        for g in geometries:
            conv = keras.layers.Conv2D(8, kernel_size, **g)
            conv.build(x.shape)
            conv.kernel.assign(rng.normal(size=conv.kernel.shape).astype("float32"))
            conv.bias.assign(rng.normal(size=conv.bias.shape).astype("float32"))
            expected = np.asarray(conv(x))
            rank = m.layer.rank_for(np.asarray(conv.kernel), **m.merged_options())
            for impl in ("factorized", "dense"):
                layer = m.build(conv, rank=rank, implementation=impl)
                inputs = keras.Input((None, None, 4))  # unknown spatial dims: traced padding
                for got in (layer(x), keras.Model(inputs, layer(inputs))(x)):
                    got = np.asarray(got)
                    assert got.shape == expected.shape, (name, g, impl, got.shape)
                    err = np.abs(got - expected).max() / np.abs(expected).max()
                    assert err < 5e-5, (name, kernel_size, g, impl, err)
                    checked += 1
print("checked", checked)
"""


def test_strided_cp_layer_runs_on_tensorflow_gpu_kernels():
    # The case: before, CPConv2D ran (s, 1)/(1, s) depthwise convs, which
    # TensorFlow's non-oneDNN kernels refuse ("only supports equal length strides").
    out = _run(
        """
        import keras, numpy as np
        from keras_eigenconv import CPConv2D
        x = np.random.default_rng(0).normal(size=(1, 16, 16, 8)).astype("float32")
        conv = keras.layers.Conv2D(16, 3, strides=2, padding="same")
        conv.build(x.shape)
        layer = CPConv2D.from_conv2d(conv, rank=12, implementation="factorized")
        y = np.asarray(layer(x))
        assert y.shape == (1, 8, 8, 16), y.shape
        assert np.abs(y - np.asarray(layer.to_conv2d()(x))).max() < 1e-4
        print("ok")
        """,
        TF_ENABLE_ONEDNN_OPTS="0",
        KERAS_BACKEND="tensorflow",
    )
    assert "ok" in out


def test_every_factorized_path_runs_on_tensorflow_gpu_kernels():
    # Every registered Conv2D method, full rank (exact), both implementations, every stride
    # (equal and unequal), padding and dilation kind, static and unknown spatial dims.
    out = _run(
        GPU_KERNEL_SCRIPT.format(methods=CONV_METHODS),
        TF_ENABLE_ONEDNN_OPTS="0",
        KERAS_BACKEND="tensorflow",
    )
    n = int(out.split("checked")[-1])
    assert n == len(CONV_METHODS) * 2 * 14 * 2 * 2


@pytest.mark.parametrize("name", FACTORIZED_METHODS)
def test_too_small_valid_input_raises_like_conv2d(name):
    m = get_method(name)
    conv = keras.layers.Conv2D(6, 5, padding="valid")
    conv.build((None, None, None, 4))
    x = np.zeros((1, 3, 8, 4), "float32")
    with pytest.raises(ValueError, match="zero or negative"):
        keras.Model(inp := keras.Input((3, 8, 4)), conv(inp))  # what Conv2D does
    for impl in ("factorized", "dense"):
        layer = m.build(conv, implementation=impl)
        with pytest.raises(ValueError, match="zero or negative"):
            layer(x)
        with pytest.raises(ValueError, match="zero or negative"):
            layer(keras.Input((3, 8, 4)))
        with pytest.raises(ValueError, match="zero or negative"):
            layer.compute_output_shape((None, 8, 3, 4))
    # the smallest input that fits runs, and gives Conv2D's 1x1 output
    fits = np.random.default_rng(0).normal(size=(1, 5, 5, 4)).astype("float32")
    assert tuple(m.build(conv, implementation="factorized")(fits).shape) == (1, 1, 1, 6)


@TF_ONLY
@pytest.mark.parametrize("strides,padding", [((2, 1), "valid"), ((2, 2), "same"), ((1, 2), "same")])
def test_strided_cp_and_decef_export_with_builtin_ops(strides, padding):
    from helpers import max_rel_err, random_conv, tflite_run

    x = np.random.default_rng(1).normal(size=(1, 11, 12, 6)).astype("float32")
    conv = random_conv(x.shape, filters=8, kernel_size=3, strides=strides, padding=padding)
    for name in ("cp", "decef"):
        layer = get_method(name).build(conv, rank=4, implementation="factorized")
        inputs = keras.Input(x.shape[1:], batch_size=1)
        model = keras.Model(inputs, layer(inputs))
        got, ops = tflite_run(model, x)
        assert max_rel_err(np.asarray(model(x)), got) < 1e-5
        assert "DEPTHWISE_CONV_2D" in ops
        assert not any("FLEX" in op.upper() or op == "CUSTOM" for op in ops), ops


# ---- the JAX backend ----------------------------------------------------------------------


def test_importing_the_package_on_jax_leaves_tensorflow_out():
    # Costing needs no TensorFlow either. (Keras itself imports TensorFlow, when installed,
    # on any layer's get_config: keras/src/saving/serialization_lib.py checks
    # `tf.available`; so convert, which copies layer configs, loads it on every backend.)
    out = _run(
        """
        import sys
        import numpy as np
        import keras
        import keras_eigenconv as ke
        assert "tensorflow" not in sys.modules, "import keras_eigenconv imported TensorFlow"
        inputs = keras.Input((12, 12, 3))
        x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
        x = keras.layers.Conv2D(8, 3, strides=(2, 1), padding="same")(x)
        model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
        assert ke.model_cost(model).total.macs == 12 * 12 * 9 * 3 * 8 + 12 * 6 * 9 * 8 * 8
        assert "tensorflow" not in sys.modules, "model_cost imported TensorFlow"
        for method in ("svd", "decef", "cp", "tt"):
            new, report = ke.convert(model, method=method, rank=2, require_saving=False)
            assert report.replaced, method
            assert new(np.zeros((1, 12, 12, 3), "float32")).shape == (1, 8)
            assert keras.backend.backend() == "jax"
        ke.data  # the tf.data pipelines: TensorFlow on purpose
        assert "tensorflow" in sys.modules
        print("ok")
        """,
        KERAS_BACKEND="jax",
    )
    assert "ok" in out


def test_converted_model_owns_its_weights_on_jax():
    # JAX donates the trainable buffers to the jitted train step: before, the original model
    # failed after fit on the converted one ("Buffer has been deleted or donated")
    out = _run(
        """
        import numpy as np
        import keras
        import keras_eigenconv as ke
        keras.utils.set_random_seed(0)
        inputs = keras.Input((10, 10, 3))
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
        x = keras.layers.Conv2D(16, 3, strides=2, padding="same")(x)
        x = keras.layers.BatchNormalization()(x)
        outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
        model = keras.Model(inputs, outputs)
        data = np.random.default_rng(0).normal(size=(8, 10, 10, 3)).astype("float32")
        expected = np.asarray(model(data))
        for method in ("svd", "decef", "cp"):
            new, _ = ke.convert(model, method=method, rank=2, skip_first=False)
            new.compile(optimizer="adam", loss="mse", jit_compile=True)
            new.fit(data, np.ones((8, 2), "float32"), epochs=2, batch_size=4, verbose=0)
            assert np.array_equal(np.asarray(model(data)), expected), method
        print("ok")
        """,
        KERAS_BACKEND="jax",
    )
    assert "ok" in out
