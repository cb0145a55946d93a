"""Export to LiteRT (``.tflite``) with built-in ops only, a self-check, and a latency bench.

``export_tflite(model, path, quantize=...)``:

1. ``prepare_for_inference`` (default): each compressed layer in its fastest equivalent
   LiteRT arrangement, BatchNorm folded, training-only layers dropped;
2. ``tf.lite.TFLiteConverter.from_keras_model`` with ``TFLITE_BUILTINS`` only (no Flex /
   Select TF ops; a ``ValueError`` names the op and the layer scope otherwise). ``quantize``:

   - ``None``: float32;
   - ``"float16"``: float16 weights, float32 compute and I/O;
   - ``"dynamic"``: int8 weights, activations quantized on the fly, float32 I/O;
   - ``"int8"``: full-integer (``TFLITE_BUILTINS_INT8``), int8 input and output tensors,
     calibrated on ``num_calibration_steps`` samples of ``representative_data``;

3. a self-check: the ``.tflite`` runs in ``ai_edge_litert`` (batch 1 per sample) against
   the original Keras model on ``check_data`` (else the first representative samples, else
   uniform [0, 1) inputs): max abs error for every mode, top-1 agreement when the output has
   a class axis, accuracy of both when ``labels`` are given. The figures are printed and
   returned in an ``ExportReport``.

``bench_tflite(paths, num_threads=2)`` times ``.tflite`` files interleaved in one process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from .litert import (
    QUANTIZE_MODES,
    convert_model,
    run_tflite,
    tflite_converter,
    tflite_ops,
    unsupported_op_error,
)
from .rewrite import prepare_for_inference

__all__ = ["ExportReport", "check_tflite", "export_tflite"]


@dataclass
class ExportReport:
    """Figures of one export: the file, its ops, and the self-check against Keras.

    Attributes:
        path: The ``.tflite`` file written.
        quantize: The quantization mode: ``None`` (float32), ``"float16"``, ``"dynamic"``
            or ``"int8"``.
        size_bytes: The file's size in bytes.
        ops: The names of the ops in the file, in execution order.
        num_samples: The number of inputs of the self-check.
        max_abs_error: The max abs error of the ``.tflite`` outputs against Keras.
        output_scale: The max ``|y|`` of the Keras outputs.
        top1_agreement: The share of samples whose argmax over the last axis agree (when
            that axis has more than one entry).
        tflite_accuracy: The ``.tflite`` model's accuracy on ``labels``, when given.
        keras_accuracy: The Keras model's accuracy on ``labels``, when given.
        prepare: ``PrepareReport.to_dict()`` of the inference rewrite, when it ran.
    """

    path: str
    quantize: str | None
    size_bytes: int
    ops: list[str]
    num_samples: int = 0
    max_abs_error: float | None = None
    output_scale: float | None = None
    top1_agreement: float | None = None
    tflite_accuracy: float | None = None
    keras_accuracy: float | None = None
    prepare: dict | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        mode = self.quantize or "float32"
        lines = [
            f"exported {self.path} ({mode}, {self.size_bytes / 1024:.1f} KiB, "
            f"ops: {', '.join(sorted(set(self.ops)))})",
            f"self-check on {self.num_samples} inputs vs Keras: max abs error "
            f"{self.max_abs_error:.3g} (output max |y| {self.output_scale:.3g})",
        ]
        if self.top1_agreement is not None:
            lines.append(f"  top-1 agreement {self.top1_agreement:.4f}")
        if self.tflite_accuracy is not None:
            lines.append(
                f"  accuracy: LiteRT {self.tflite_accuracy:.4f}, Keras {self.keras_accuracy:.4f}"
            )
        return "\n".join(lines)


# ---- data helpers --------------------------------------------------------------------------


def _samples(data, limit: int | None) -> np.ndarray | None:
    """Up to ``limit`` float32 input samples from an array, a list of arrays, a
    ``tf.data.Dataset`` or an iterable (of ``x`` or ``(x, y)``), stacked on axis 0."""
    if data is None:
        return None
    if callable(data) and not isinstance(data, np.ndarray):
        data = data()
    if isinstance(data, np.ndarray):
        return np.asarray(data[:limit], np.float32)
    out, n = [], 0
    for item in data:
        if isinstance(item, (tuple, list)) and not isinstance(item, np.ndarray):
            item = item[0]
        arr = np.asarray(item, np.float32)
        out.append(arr)
        n += arr.shape[0] if arr.ndim > 1 else 1
        if limit is not None and n >= limit:
            break
    if not out:
        return None
    # items may be batches or single samples; stack to one batch
    arrs = [a if a.ndim > 1 else a[None] for a in out]
    try:
        x = np.concatenate(arrs, axis=0)
    except ValueError:
        x = np.stack(out, axis=0)
    return x[:limit]


def _input_shape(model) -> tuple:
    if len(model.inputs) != 1:
        raise ValueError(
            f"export_tflite: model '{model.name}' has {len(model.inputs)} inputs; the export "
            "self-check supports single-input models (pass check=False to skip it)."
        )
    return tuple(model.inputs[0].shape)


def _fit_to_model(x: np.ndarray, shape: tuple, what: str) -> np.ndarray:
    want = tuple(shape[1:])
    if x.shape[1:] == want or any(d is None for d in want):
        return x
    if x.shape == want:
        return x[None]
    raise ValueError(
        f"export_tflite: {what} has samples of shape {x.shape[1:]}, the model takes {want}. "
        "Pass data shaped (N, *model_input_shape)."
    )


def _converter(model, quantize, representative, num_calibration_steps, input_shape):
    shape = tuple(d for d in input_shape[1:])

    def gen():
        for i in range(min(num_calibration_steps, len(representative))):
            sample = representative[i : i + 1]
            if sample.shape[1:] != shape and all(d is not None for d in shape):
                raise ValueError(
                    f"export_tflite: representative sample shape {sample.shape[1:]} != "
                    f"model input {shape}."
                )
            yield [sample.astype(np.float32)]

    return tflite_converter(model, quantize, gen if quantize == "int8" else None, int8_io=True)


def check_tflite(
    model, content_or_path, x: np.ndarray, labels=None, num_threads: int = 2
) -> dict[str, Any]:
    """Compare a ``.tflite`` model with the Keras ``model`` on inputs ``x``.

    The ``.tflite`` model runs in ``ai_edge_litert``, batch 1 per sample; each Keras output
    is matched with a LiteRT output of the same shape (their order may differ).

    Args:
        model: The Keras model.
        content_or_path: The ``.tflite`` flatbuffer (bytes) or the path of a ``.tflite``
            file.
        x: Float inputs of shape ``(N, ...)``.
        labels: Class labels of ``x``, or None.
        num_threads: The interpreter's thread count.

    Returns:
        A dict of ``num_samples``, ``max_abs_error`` and ``output_scale`` (max ``|y|`` of
        Keras), ``top1_agreement`` (share of samples whose argmax over the last axis agree;
        when that axis has > 1 entry) and, with ``labels``, ``tflite_accuracy`` and
        ``keras_accuracy``.

    Raises:
        ValueError: When a Keras output has no LiteRT output of the same shape.
    """
    ref = [np.asarray(v) for v in keras.tree.flatten(model(x, training=False))]
    got = run_tflite(content_or_path, x, num_threads)
    # match each Keras output with a LiteRT output of the same shape (order may differ)
    pairs, free = [], list(range(len(got)))
    for r in ref:
        j = next((j for j in free if got[j].shape == r.shape), None)
        if j is None:
            raise ValueError(
                f"check_tflite: no LiteRT output has the shape {r.shape} of a Keras output "
                f"(LiteRT outputs: {[g.shape for g in got]})."
            )
        free.remove(j)
        pairs.append((r, got[j]))
    out: dict[str, Any] = {
        "num_samples": int(len(x)),
        "max_abs_error": float(max(np.max(np.abs(r - g)) for r, g in pairs)),
        "output_scale": float(max(np.max(np.abs(r)) for r, _ in pairs)),
    }
    r, g = pairs[0]
    if r.ndim >= 2 and r.shape[-1] > 1:
        out["top1_agreement"] = float(np.mean(r.argmax(-1) == g.argmax(-1)))
        if labels is not None:
            y = np.asarray(labels).reshape(r.shape[:-1])
            out["tflite_accuracy"] = float(np.mean(g.argmax(-1) == y))
            out["keras_accuracy"] = float(np.mean(r.argmax(-1) == y))
    return out


# ---- export --------------------------------------------------------------------------------


def export_tflite(
    model,
    path: str | Path,
    quantize: str | None = None,
    representative_data=None,
    num_calibration_steps: int = 100,
    check_data=None,
    labels=None,
    num_check_samples: int = 32,
    prepare: bool = True,
    strategy: str = "measure",
    num_threads: int = 2,
    cache_path=None,
    check: bool = True,
    verbose: bool = True,
) -> ExportReport:
    """Write ``model`` as a LiteRT ``.tflite`` file (built-in ops only) and check it.

    The conversion allows ``TFLITE_BUILTINS`` only (no Flex / Select TF ops); a model that
    needs other ops fails with a ``ValueError`` naming the op and the layer scope. The
    self-check (``check_tflite``) runs the file against the original Keras model.

    Args:
        model: A single-input ``keras.Model`` with known inputs.
        path: The ``.tflite`` file to write (its folder is created).
        quantize: ``None`` (float32); ``"float16"`` (float16 weights, float32 compute and
            I/O); ``"dynamic"`` (int8 weights, activations quantized on the fly, float32
            I/O); or ``"int8"`` (full integer, ``TFLITE_BUILTINS_INT8``, int8 input and
            output tensors; needs ``representative_data``).
        representative_data: Typical inputs to calibrate int8 on: an array, a list of
            arrays, a ``tf.data.Dataset``, an iterable (of ``x`` or ``(x, y)``) or a function
            returning one of these.
        num_calibration_steps: The number of representative samples used, batch 1 each.
        check_data: The inputs of the self-check, in the same forms as
            ``representative_data``.
        labels: Class labels aligned with ``check_data``; the check then reports the
            accuracy of both models.
        num_check_samples: Without ``check_data``, the number of check inputs: the first
            representative samples, else uniform [0, 1) inputs.
        prepare: Apply ``prepare_for_inference(model, strategy=..., num_threads=...,
            quantize=...)`` first (the user's model is not changed).
        strategy: ``prepare_for_inference``'s ``strategy``: ``"measure"`` or
            ``"cost_model"``.
        num_threads: The thread count for the rewrite's timing and the self-check.
        cache_path: ``prepare_for_inference``'s timing cache.
        check: Run the self-check.
        verbose: Print the rewrite's report and the ``ExportReport``.

    Returns:
        The ``ExportReport``.

    Raises:
        ValueError: When ``quantize`` is unknown; ``model`` is not a ``keras.Model``, has no
            known inputs or more than one; ``"int8"`` has no
            ``representative_data``; ``labels`` come without ``check_data`` or do not match
            it in length; data do not fit the model's input shape; or the converted model
            needs non-built-in ops.
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"export_tflite: quantize must be one of {QUANTIZE_MODES}, got {quantize!r}."
        )
    if not isinstance(model, keras.Model):
        raise ValueError(f"export_tflite needs a keras.Model, got {type(model).__name__}.")
    input_shape = _input_shape(model) if model.inputs else None
    if input_shape is None:
        raise ValueError(
            f"export_tflite: model '{model.name}' has no known inputs; build it on a "
            "keras.Input first."
        )
    representative = _samples(representative_data, num_calibration_steps)
    if representative is not None:
        representative = _fit_to_model(representative, input_shape, "representative_data")
    if quantize == "int8" and (representative is None or len(representative) == 0):
        raise ValueError(
            "export_tflite: quantize='int8' needs representative_data (a few hundred typical "
            "inputs, shaped like the model's input) to calibrate the activation ranges."
        )
    if labels is not None and check_data is None:
        raise ValueError("export_tflite: labels need check_data (the inputs they label).")

    prepare_info = None
    graph = model
    if prepare:
        graph, rep = prepare_for_inference(
            model,
            strategy=strategy,
            num_threads=num_threads,
            quantize=quantize,
            cache_path=cache_path,
            return_report=True,
        )
        prepare_info = rep.to_dict()
        if verbose:
            print(rep)

    converter = _converter(graph, quantize, representative, num_calibration_steps, input_shape)
    try:
        content = convert_model(converter)
    except Exception as err:  # the converter raises its own ConverterError
        raise unsupported_op_error(err, model) from err
    ops = tflite_ops(content)
    bad = [o for o in ops if o.startswith("Flex") or o in ("CUSTOM", "DELEGATE")]
    if bad:
        raise ValueError(
            f"export_tflite: the converted model holds non-built-in op(s) {sorted(set(bad))}; "
            "only LiteRT built-in ops are allowed."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    report = ExportReport(str(path), quantize, len(content), ops, prepare=prepare_info)

    if check:
        if check_data is not None:
            x = _fit_to_model(_samples(check_data, None), input_shape, "check_data")
            if labels is not None and len(np.asarray(labels)) != len(x):
                raise ValueError(
                    f"export_tflite: {len(np.asarray(labels))} labels for {len(x)} check inputs."
                )
        elif representative is not None:
            x = representative[:num_check_samples]
        else:
            shape = [num_check_samples, *(d or 32 for d in input_shape[1:])]
            x = np.random.default_rng(0).random(shape, dtype=np.float32)
        figures = check_tflite(model, content, x, labels=labels, num_threads=num_threads)
        for k, v in figures.items():
            setattr(report, k, v)
    if verbose:
        print(report)
    return report
