"""Helpers shared by the test modules (pytest puts this folder on ``sys.path``)."""

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter


def random_conv(x_shape, seed=0, **kwargs):
    """A built ``Conv2D`` with a random Gaussian kernel and bias (a trained-looking layer)."""
    conv = keras.layers.Conv2D(**kwargs)
    conv.build(x_shape)
    rng = np.random.default_rng(seed)
    conv.kernel.assign(rng.normal(size=conv.kernel.shape).astype("float32"))
    if conv.use_bias:
        conv.bias.assign(rng.normal(size=conv.bias.shape).astype("float32"))
    return conv


def max_rel_err(a, b):
    """Largest absolute difference relative to the largest magnitude of ``a``."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12))


def tflite_run(model, x):
    """Convert ``model`` with built-in ops only, run it on ``x`` in LiteRT; return the output
    and the set of op names in the file."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    ops = {d["op_name"] for d in interpreter._get_ops_details()}
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), ops
