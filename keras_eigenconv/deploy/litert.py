"""LiteRT (``.tflite``) conversion and running: the converter set-up per quantization mode,
built-in ops only, the interpreter, the ops of a flatbuffer, and batch-1 runs.
"""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np

__all__ = [
    "QUANTIZE_MODES",
    "convert_model",
    "make_interpreter",
    "random_representative",
    "run_tflite",
    "tflite_converter",
    "tflite_ops",
]

QUANTIZE_MODES = (None, "float16", "dynamic", "int8")


def convert_model(converter) -> bytes:
    """``converter.convert()``, the converter's prints kept off the user's stdout."""
    # the TF converter prints the traced signature to stdout; keep the user's stdout clean
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def random_representative(shape, steps: int = 4):
    """A representative-data generator function of ``steps`` uniform [0, 1) batches."""
    rng = np.random.default_rng(0)

    def gen():
        for _ in range(steps):
            yield [rng.random(shape, dtype=np.float32)]

    return gen


def tflite_converter(model, quantize: str | None, representative=None, int8_io: bool = False):
    """A ``TFLiteConverter`` for ``model`` with built-in ops only, set up for ``quantize``
    (``None``, ``"float16"``, ``"dynamic"`` or ``"int8"``; int8 needs ``representative``, a
    generator function of calibration batches; ``int8_io`` makes the input and output tensors
    int8 too)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return converter


def make_interpreter(content: bytes, num_threads: int):
    """An allocated ``ai_edge_litert`` interpreter of ``content`` with random inputs set."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=num_threads)
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in it.get_input_details():
        if np.issubdtype(d["dtype"], np.floating):
            value = rng.random(d["shape"], dtype=np.float32).astype(d["dtype"])
        else:
            value = rng.integers(-128, 127, d["shape"]).astype(d["dtype"])
        it.set_tensor(d["index"], value)
    return it


def tflite_ops(content: bytes) -> list[str]:
    """Names of the ops in a ``.tflite`` flatbuffer (in execution order, no delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(
        model_content=content,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    return [d["op_name"] for d in it._get_ops_details()]


def run_tflite(content_or_path, x: np.ndarray, num_threads: int = 2) -> list[np.ndarray]:
    """Run a ``.tflite`` model sample by sample (batch 1) on float inputs ``x`` (N, ...).

    Quantized input/output tensors are (de)quantized with their scale and zero point.
    Returns the outputs, each stacked to ``(N, ...)``, in the interpreter's output order.
    """
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(content_or_path, (bytes, bytearray)):
        it = Interpreter(model_content=bytes(content_or_path), num_threads=num_threads)
    else:
        it = Interpreter(model_path=str(content_or_path), num_threads=num_threads)
    inp = it.get_input_details()[0]
    shape = list(inp["shape"])
    if shape[0] != 1 or list(shape[1:]) != list(x.shape[1:]):
        it.resize_tensor_input(inp["index"], [1, *x.shape[1:]])
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    outs = it.get_output_details()
    results: list[list[np.ndarray]] = [[] for _ in outs]
    for i in range(len(x)):
        sample = x[i : i + 1]
        if np.issubdtype(inp["dtype"], np.integer):
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            sample = np.clip(np.round(sample / scale + zero), info.min, info.max)
        it.set_tensor(inp["index"], sample.astype(inp["dtype"]))
        it.invoke()
        for j, d in enumerate(outs):
            y = it.get_tensor(d["index"])
            if np.issubdtype(d["dtype"], np.integer):
                scale, zero = d["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            results[j].append(np.asarray(y, np.float32))
    return [np.concatenate(r, axis=0) for r in results]


def unsupported_op_error(err: Exception, model) -> ValueError:
    text = str(err)
    ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither", text)))
    m = re.search(r"TF Select ops: ([^\n]+)", text)
    if m:
        ops = sorted(set(ops) | {o.strip() for o in m.group(1).split(",") if o.strip()})
    scopes = sorted(set(re.findall(r'"[^"]*:", "([^"@]+)/\w+@', text)))
    if not ops:
        return ValueError(
            f"export_tflite: converting model '{model.name}' to LiteRT failed: "
            f"{text.splitlines()[0] if text else type(err).__name__}"
        )
    where = f" (at {', '.join(scopes)})" if scopes else ""
    return ValueError(
        f"export_tflite: model '{model.name}' uses TensorFlow op(s) with no LiteRT built-in "
        f"kernel: {', '.join('tf.' + o for o in ops)}{where}. Only built-in ops are allowed "
        "(no Flex / Select TF ops, which Android apps cannot run without the TF runtime): "
        "replace or remove the layer(s) that use them."
    )
