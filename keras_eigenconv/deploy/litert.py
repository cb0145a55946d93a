"""LiteRT (``.tflite``) conversion and running: the converter set-up per quantization mode,
built-in ops only, the interpreter, the ops of a flatbuffer, and batch-1 runs.

Nothing here touches process-wide state: ``tf.lite.TFLiteConverter.from_keras_model`` prints
the traced signature to stdout, and capturing that would mean replacing ``sys.stdout`` (or
file descriptor 1) for the whole process, which breaks other threads' output. Instead
``tflite_converter`` does what ``from_keras_model`` does for a Keras 3 model (write the
model's ``training=False`` call as a SavedModel with ``keras.export.ExportArchive``, then
``TFLiteConverter.from_saved_model``) with the archive's own ``verbose=False``, so nothing is
printed and nothing needs capturing. The flatbuffer is byte-identical to
``from_keras_model``'s (checked on a DeCEF + SVD + BatchNorm model, float32 and int8).
"""

from __future__ import annotations

import functools
import re
import tempfile
import weakref

import numpy as np

__all__ = [
    "QUANTIZE_MODES",
    "convert_for_timing",
    "convert_model",
    "make_interpreter",
    "random_representative",
    "run_tflite",
    "tflite_converter",
    "tflite_ops",
]

QUANTIZE_MODES = (None, "float16", "dynamic", "int8")

# converter -> the temporary SavedModel folder it reads at convert() time; the folder goes
# when convert_model is done with it, or with the converter (TemporaryDirectory finalizer)
_SAVED_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def convert_model(converter) -> bytes:
    """Run ``converter.convert()`` and remove the converter's temporary SavedModel.

    Nothing is captured or redirected: a converter from ``tflite_converter`` prints
    nothing to stdout (see the module docstring).

    Args:
        converter: A ``tf.lite.TFLiteConverter`` (e.g. from ``tflite_converter``).

    Returns:
        The ``.tflite`` flatbuffer.
    """
    try:
        return converter.convert()
    finally:
        folder = _SAVED_MODELS.pop(converter, None)
        if folder is not None:
            folder.cleanup()


def _quiet_keras_converter(model):
    """``TFLiteConverter.from_keras_model(model)`` without its print to stdout: the same
    SavedModel of ``model(x, training=False)``, written with ``verbose=False``."""
    import keras
    import tensorflow as tf

    if not isinstance(model, keras.Model) or not model.inputs:
        raise ValueError(
            "tflite_converter needs a keras.Model with known inputs (built on keras.Input), "
            f"got {type(model).__name__}."
        )
    specs = [tf.TensorSpec(x.shape, x.dtype, name=x.name) for x in model.inputs]
    signature = [specs] if len(specs) > 1 else specs
    folder = tempfile.TemporaryDirectory(prefix="keras_eigenconv_tflite_")
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", functools.partial(model.__call__, training=False), signature)
        archive.write_out(folder.name, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder.name)
    except BaseException:
        folder.cleanup()
        raise
    _SAVED_MODELS[converter] = folder
    return converter


def random_representative(shape, steps: int = 4):
    """Make a representative-data generator function of random batches.

    Args:
        shape: The shape of each batch, batch axis included.
        steps: The number of batches, each uniform in [0, 1) (float32, seed 0).

    Returns:
        A generator function yielding ``[batch]`` ``steps`` times, as
        ``TFLiteConverter.representative_dataset`` expects.
    """
    rng = np.random.default_rng(0)

    def gen():
        for _ in range(steps):
            yield [rng.random(shape, dtype=np.float32)]

    return gen


def tflite_converter(model, quantize: str | None, representative=None, int8_io: bool = False):
    """Make a ``TFLiteConverter`` for ``model`` with built-in ops only.

    Args:
        model: The Keras model to convert.
        quantize: ``None``, ``"float16"``, ``"dynamic"`` or ``"int8"``.
        representative: A generator function of calibration batches; int8 needs it.
        int8_io: Make the input and output tensors int8 too (int8 only).

    Returns:
        The ``tf.lite.TFLiteConverter``, set up for ``quantize``; run it with
        ``convert_model``, which also removes its temporary SavedModel.

    Raises:
        ValueError: When ``model`` is not a ``keras.Model`` with known inputs.
    """

    converter = _quiet_keras_converter(model)
    return _set_up(converter, quantize, representative, int8_io)


def _set_up(converter, quantize, representative, int8_io):
    import tensorflow as tf

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


def convert_for_timing(model, quantize: str | None, representative=None) -> bytes:
    """A ``.tflite`` flatbuffer of ``model`` for timing, about 3x faster to make.

    ``model(x, training=False)`` is traced to a concrete function whose variables are
    folded into constants and converted from there: no SavedModel is written and read
    back. The ops are those of ``tflite_converter``'s flatbuffer (checked on conv, BatchNorm
    and int8 graphs); the bytes may differ (no signature, other tensor names), so it is for
    timing candidates, not for shipping. Other backends than TensorFlow take the
    ``tflite_converter`` path.

    Args:
        model: A ``keras.Model`` with one known input.
        quantize: ``None``, ``"float16"``, ``"dynamic"`` or ``"int8"``.
        representative: A generator function of calibration batches (int8).

    Returns:
        The flatbuffer.
    """
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow" or len(model.inputs or []) != 1:
        return convert_model(tflite_converter(model, quantize, representative))
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    x = model.inputs[0]
    spec = tf.TensorSpec(x.shape, x.dtype)
    fn = tf.function(lambda t: model(t, training=False)).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [convert_variables_to_constants_v2(fn)], tf.Module()  # a trackable: no deprecated path
    )
    _set_up(converter, quantize, representative, False)
    return converter.convert()


def make_interpreter(content: bytes, num_threads: int):
    """Make an allocated ``ai_edge_litert`` interpreter with random inputs set.

    Float inputs are uniform in [0, 1), integer inputs uniform in [-128, 127) (seed 0).

    Args:
        content: The ``.tflite`` flatbuffer.
        num_threads: The interpreter's thread count.

    Returns:
        The ``ai_edge_litert.interpreter.Interpreter``, ready to ``invoke``.
    """
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
    """List the ops of a ``.tflite`` flatbuffer.

    Args:
        content: The ``.tflite`` flatbuffer.

    Returns:
        The names of its ops, in execution order, without any delegate.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(
        model_content=content,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    return [d["op_name"] for d in it._get_ops_details()]


def run_tflite(content_or_path, x: np.ndarray, num_threads: int = 2) -> list[np.ndarray]:
    """Run a ``.tflite`` model sample by sample (batch 1) on float inputs.

    Quantized input/output tensors are (de)quantized with their scale and zero point.

    Args:
        content_or_path: The ``.tflite`` flatbuffer (bytes) or the path of a ``.tflite``
            file.
        x: Float inputs of shape ``(N, ...)``.
        num_threads: The interpreter's thread count.

    Returns:
        The outputs, each stacked to ``(N, ...)``, in the interpreter's output order.
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
