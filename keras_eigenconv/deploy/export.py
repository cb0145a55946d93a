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
   returned in an ``ExportReport``. By default (``check="raise"``) an error above
   ``CHECK_TOLERANCE[quantize]`` (relative to the output scale) raises an
   ``ExportCheckError``;

4. the write is atomic (``_io.atomic_write_bytes``): a temporary file beside the target,
   self-checked, synced, then renamed over it; on any failure the previous file is intact.

Every argument is validated before any work (counts, data shape, dtype and finiteness,
the output path).

``bench_tflite(paths, num_threads=2)`` times ``.tflite`` files interleaved in one process.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from .._io import atomic_write_bytes, check_writable
from .litert import (
    QUANTIZE_MODES,
    convert_model,
    run_tflite,
    tflite_converter,
    tflite_ops,
    unsupported_op_error,
)
from .rewrite import STRATEGIES, prepare_for_inference
from .timing import positive_int

__all__ = [
    "CHECK_TOLERANCE",
    "ExportCheckError",
    "ExportReport",
    "check_tflite",
    "export_tflite",
]


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
        relative_error: ``(max_abs_error - step) / max(output_scale, 1e-3)`` (at least
            0; ``step``: the quantization step of an int8 output, else 0).
        tolerance: The self-check's bound on ``relative_error``.
        passed: Whether the self-check passed (None when it did not run).
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
    relative_error: float | None = None
    tolerance: float | None = None
    passed: bool | None = None
    prepare: dict | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        mode = self.quantize or "float32"
        lines = [
            f"exported {self.path} ({mode}, {self.size_bytes / 1024:.1f} KiB, "
            f"ops: {', '.join(sorted(set(self.ops)))})",
        ]
        if self.max_abs_error is None:
            lines.append("no self-check (check=False)")
            return "\n".join(lines)
        verdict = "" if self.passed is None else (" ok" if self.passed else " FAILED")
        lines.append(
            f"self-check on {self.num_samples} inputs vs Keras: max abs error "
            f"{self.max_abs_error:.3g} (output max |y| {self.output_scale:.3g}; "
            f"tolerance {self.tolerance:g} of it){verdict}"
        )
        if self.top1_agreement is not None:
            lines.append(f"  top-1 agreement {self.top1_agreement:.4f}")
        if self.tflite_accuracy is not None:
            lines.append(
                f"  accuracy: LiteRT {self.tflite_accuracy:.4f}, Keras {self.keras_accuracy:.4f}"
            )
        return "\n".join(lines)


# ---- data helpers --------------------------------------------------------------------------


def _as_float_batch(arr, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise ValueError(
            f"export_tflite: {what} must hold numbers, got an array of dtype {arr.dtype}. "
            "Pass float inputs shaped (N, *model_input_shape)."
        )
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"export_tflite: {what} must be real numbers, got dtype {arr.dtype}.")
    return arr.astype(np.float32, copy=False)


def _samples(data, limit: int | None, what: str, sample_ndim: int) -> np.ndarray | None:
    """Up to ``limit`` float32 input samples from an array, a list of arrays, a
    ``tf.data.Dataset`` or an iterable (of ``x`` or ``(x, y)``), stacked on axis 0.

    An item of an iterable with ``sample_ndim`` dimensions (the model's input rank without
    the batch axis) is one sample; any other item is a batch.
    """
    if data is None:
        return None
    if callable(data) and not isinstance(data, np.ndarray):
        data = data()
    if isinstance(data, (str, bytes)):
        raise ValueError(
            f"export_tflite: {what} must be an array or an iterable of arrays, got {data!r}."
        )
    if isinstance(data, np.ndarray):
        return _as_float_batch(data[:limit], what)
    out, n = [], 0
    try:
        items = iter(data)
    except TypeError:
        raise ValueError(
            f"export_tflite: {what} must be an array, a list of arrays, a tf.data.Dataset or "
            f"an iterable, got {type(data).__name__}."
        ) from None
    for item in items:
        if isinstance(item, (tuple, list)) and not isinstance(item, np.ndarray):
            item = item[0]
        arr = _as_float_batch(item, what)
        if arr.ndim == sample_ndim:
            arr = arr[None]  # one sample
        out.append(arr)
        n += arr.shape[0] if arr.ndim else 1
        if limit is not None and n >= limit:
            break
    if not out:
        return None
    try:
        x = np.concatenate(out, axis=0)
    except ValueError:
        shapes = sorted({a.shape[1:] for a in out}, key=str)[:3]
        raise ValueError(
            f"export_tflite: {what} holds samples of different shapes ({shapes}); pass "
            "samples of the model's input shape."
        ) from None
    return x[:limit]


def _input_shape(model) -> tuple:
    return tuple(model.inputs[0].shape)


def _fit_to_model(x: np.ndarray, shape: tuple, what: str) -> np.ndarray:
    want = tuple(shape[1:])
    if x.ndim == len(want) + 1 and all(
        w is None or int(w) == int(d) for w, d in zip(want, x.shape[1:])
    ):
        return x
    if x.ndim == len(want) and all(w is None or int(w) == int(d) for w, d in zip(want, x.shape)):
        return x[None]  # one sample
    if x.ndim == len(want):  # neither one sample nor a batch of them
        raise ValueError(
            f"export_tflite: {what} has shape {x.shape}: neither one sample of the model's "
            f"input shape {want} nor a batch of them. Pass data shaped (N, *model_input_shape)."
        )
    raise ValueError(
        f"export_tflite: {what} has samples of shape {x.shape[1:]}, the model takes {want}. "
        "Pass data shaped (N, *model_input_shape)."
    )


def _checked_data(data, limit, input_shape, what: str) -> np.ndarray | None:
    """Samples of ``data``, validated: numbers, the model's input shape, finite, not empty."""
    if data is None:
        return None
    x = _samples(data, limit, what, sample_ndim=len(input_shape) - 1)
    if x is None or len(x) == 0:
        raise ValueError(f"export_tflite: {what} is empty; pass at least one sample.")
    x = _fit_to_model(x, input_shape, what)
    if len(x) == 0:
        raise ValueError(f"export_tflite: {what} is empty; pass at least one sample.")
    bad = ~np.isfinite(x)
    if bad.any():
        rows = int(bad.reshape(len(x), -1).any(axis=1).sum())
        raise ValueError(
            f"export_tflite: {what} holds {int(bad.sum())} NaN or inf value(s) in {rows} of "
            f"{len(x)} samples; pass finite inputs (NaN calibration gives NaN quantization "
            "ranges, and a NaN check compares nothing)."
        )
    return x


def _converter(model, quantize, representative, num_calibration_steps):
    def gen():
        for i in range(min(num_calibration_steps, len(representative))):
            yield [representative[i : i + 1]]

    return tflite_converter(model, quantize, gen if quantize == "int8" else None, int8_io=True)


# ---- the self-check ------------------------------------------------------------------------

# The self-check passes when max |y_tflite - y_keras| <= CHECK_TOLERANCE[quantize] *
# max(max |y_keras|, 1e-3) + (an int8 output's quantization step): relative to the output
# scale, per precision. float32 and float16
# differ from Keras by rounding only; the quantized modes by their quantization steps (int8
# activations: 1/255 of each tensor's range, compounded over the layers), so their bounds
# catch broken exports (NaN, wrong model, wrong input scaling), not quantization noise.
# Measured on the digits CNN of tests/test_export.py (softmax and logits outputs, digits and
# uniform inputs): float32 < 1e-6, float16 <= 1.1e-3, dynamic <= 0.04, int8 <= 0.13.
CHECK_TOLERANCE = {None: 1e-4, "float16": 1e-2, "dynamic": 0.25, "int8": 0.5}
CHECK_MODES = ("raise", "warn", False)


class ExportCheckError(ValueError):
    """The ``.tflite`` model's outputs differ from Keras beyond the check's tolerance."""


def _check_mode(check) -> str | bool:
    if check is True:
        return "raise"
    if check is None or check is False:
        return False
    if isinstance(check, str) and check in ("raise", "warn"):
        return check
    raise ValueError(
        f"export_tflite: check must be 'raise', 'warn' or False (True means 'raise'), "
        f"got {check!r}."
    )


def _tolerance(quantize, tolerance) -> float:
    if tolerance is None:
        if quantize not in CHECK_TOLERANCE:
            raise ValueError(
                f"check_tflite: quantize must be one of {tuple(CHECK_TOLERANCE)}, got {quantize!r}."
            )
        return CHECK_TOLERANCE[quantize]
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, numbers.Real)
        or not 0 < tolerance < math.inf
    ):
        raise ValueError(f"check_tflite: tolerance must be a positive number, got {tolerance!r}.")
    return float(tolerance)


def _output_step(content_or_path) -> float:
    """The largest quantization step of the model's integer outputs (0 for float ones)."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(content_or_path, (bytes, bytearray)):
        it = Interpreter(model_content=bytes(content_or_path))
    else:
        it = Interpreter(model_path=str(content_or_path))
    steps = [
        float(d["quantization"][0])
        for d in it.get_output_details()
        if np.issubdtype(d["dtype"], np.integer)
    ]
    return max(steps, default=0.0)


def _mismatch_message(figures: dict, quantize) -> str:
    mode = quantize or "float32"
    return (
        f"the .tflite model disagrees with Keras on {figures['num_samples']} check inputs: "
        f"max abs error {figures['max_abs_error']:.3g}, {figures['relative_error']:.3g} of "
        f"the output scale {figures['output_scale']:.3g}, above the {mode} tolerance "
        f"{figures['tolerance']:g} (CHECK_TOLERANCE)"
    )


def check_tflite(
    model,
    content_or_path,
    x: np.ndarray,
    labels=None,
    num_threads: int = 2,
    quantize: str | None = None,
    tolerance: float | None = None,
    on_mismatch: str = "raise",
) -> dict[str, Any]:
    """Compare a ``.tflite`` model with the Keras ``model`` on inputs ``x``.

    The ``.tflite`` model runs in ``ai_edge_litert``, batch 1 per sample; each Keras output
    is matched with a LiteRT output of the same shape (their order may differ). It passes
    when ``max |y_tflite - y_keras| <= tolerance * max(max |y_keras|, 1e-3) + step`` and
    every output is finite; ``step`` is the quantization step of an int8 output (0 for
    float outputs), ``tolerance`` defaults to ``CHECK_TOLERANCE[quantize]`` (float32
    ``1e-4``, float16 ``1e-2``, dynamic ``0.25``, int8 ``0.5``).

    Args:
        model: The Keras model.
        content_or_path: The ``.tflite`` flatbuffer (bytes) or the path of a ``.tflite``
            file.
        x: Float inputs of shape ``(N, ...)``.
        labels: Class labels of ``x``, or None.
        num_threads: The interpreter's thread count.
        quantize: The ``.tflite`` model's precision (``None`` float32, ``"float16"``,
            ``"dynamic"``, ``"int8"``), which sets the default tolerance.
        tolerance: The relative tolerance, instead of ``CHECK_TOLERANCE[quantize]``.
        on_mismatch: ``"raise"`` (an ``ExportCheckError``), ``"warn"`` (a
            ``UserWarning``) or ``"ignore"`` when the check fails.

    Returns:
        A dict of ``num_samples``, ``max_abs_error`` and ``output_scale`` (max ``|y|`` of
        Keras), ``relative_error`` (``(max_abs_error - step) / max(output_scale, 1e-3)``,
        at least 0),
        ``tolerance``, ``passed``, ``top1_agreement`` (share of samples whose argmax over
        the last axis agree; when that axis has > 1 entry) and, with ``labels``,
        ``tflite_accuracy`` and ``keras_accuracy``.

    Raises:
        ValueError: When a Keras output has no LiteRT output of the same shape, or an
            argument is invalid.
        ExportCheckError: When the check fails and ``on_mismatch="raise"``.
    """
    if on_mismatch not in ("raise", "warn", "ignore"):
        raise ValueError(
            f"check_tflite: on_mismatch must be 'raise', 'warn' or 'ignore', got {on_mismatch!r}."
        )
    tol = _tolerance(quantize, tolerance)
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
    err = float(max(np.max(np.abs(r - g)) for r, g in pairs))
    scale = float(max(np.max(np.abs(r)) for r, _ in pairs))
    # an int8 output cannot be closer than half its quantization step: allow one step
    step = _output_step(content_or_path)
    rel = max(err - step, 0.0) / max(scale, 1e-3) if math.isfinite(err) else math.inf
    out: dict[str, Any] = {
        "num_samples": int(len(x)),
        "max_abs_error": err,
        "output_scale": scale,
        "relative_error": rel,
        "tolerance": tol,
        "passed": bool(rel <= tol),  # False for NaN
    }
    r, g = pairs[0]
    if r.ndim >= 2 and r.shape[-1] > 1:
        out["top1_agreement"] = float(np.mean(r.argmax(-1) == g.argmax(-1)))
        if labels is not None:
            y = np.asarray(labels).reshape(r.shape[:-1])
            out["tflite_accuracy"] = float(np.mean(g.argmax(-1) == y))
            out["keras_accuracy"] = float(np.mean(r.argmax(-1) == y))
    if not out["passed"] and on_mismatch != "ignore":
        message = f"check_tflite: {_mismatch_message(out, quantize)}."
        if on_mismatch == "raise":
            raise ExportCheckError(message)
        warnings.warn(message, UserWarning, stacklevel=2)
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
    check: bool | str = "raise",
    verbose: bool = True,
) -> ExportReport:
    """Write ``model`` as a LiteRT ``.tflite`` file (built-in ops only) and check it.

    The conversion allows ``TFLITE_BUILTINS`` only (no Flex / Select TF ops); a model that
    needs other ops fails with a ``ValueError`` naming the op and the layer scope. Every
    argument is validated before any work. The file is written atomically: to a temporary
    file beside ``path``, self-checked there (``check_tflite`` against the original Keras
    model), synced and renamed; when anything fails, ``path`` is left as it was (an
    existing file stays intact) and no partial file remains. The user's model is not
    changed.

    Args:
        model: A ``keras.Model`` with known inputs (the self-check and int8 calibration
            need a single input; with ``check=False`` and no int8, several are fine).
        path: The ``.tflite`` file to write (its folder is created).
        quantize: ``None`` (float32); ``"float16"`` (float16 weights, float32 compute and
            I/O); ``"dynamic"`` (int8 weights, activations quantized on the fly, float32
            I/O); or ``"int8"`` (full integer, ``TFLITE_BUILTINS_INT8``, int8 input and
            output tensors; needs ``representative_data``).
        representative_data: Typical inputs to calibrate int8 on: an array, a list of
            arrays, a ``tf.data.Dataset``, an iterable (of ``x`` or ``(x, y)``) or a function
            returning one of these; numbers, shaped like the model's input, finite.
        num_calibration_steps: The number of representative samples used (an int >= 1),
            batch 1 each.
        check_data: The inputs of the self-check, in the same forms as
            ``representative_data``.
        labels: Class labels aligned with ``check_data``; the check then reports the
            accuracy of both models.
        num_check_samples: Without ``check_data``, the number of check inputs (an int
            >= 1): the first representative samples, else uniform [0, 1) inputs.
        prepare: Apply ``prepare_for_inference(model, strategy=..., num_threads=...,
            quantize=...)`` first (the user's model is not changed).
        strategy: ``prepare_for_inference``'s ``strategy``: ``"measure"`` or
            ``"cost_model"``.
        num_threads: The thread count for the rewrite's timing and the self-check.
        cache_path: ``prepare_for_inference``'s timing cache.
        check: The self-check: ``"raise"`` (default; ``True`` is the same) raises an
            ``ExportCheckError`` and writes nothing when the ``.tflite`` model's outputs
            differ from Keras beyond ``CHECK_TOLERANCE[quantize]`` (relative to the
            output scale: float32 ``1e-4``, float16 ``1e-2``, dynamic ``0.25``, int8
            ``0.5``); ``"warn"`` warns and writes the file; ``False`` skips the check.
        verbose: Print the rewrite's report and the ``ExportReport``.

    Returns:
        The ``ExportReport``.

    Raises:
        ValueError: When an argument is invalid (the message names it): ``quantize``,
            ``check``, ``strategy``, a count; ``model`` is not a ``keras.Model``, has no
            known inputs, or more than one where the check or int8 needs one; ``"int8"``
            has no ``representative_data``; data are not numbers, do not fit the model's
            input shape, are empty or hold NaN/inf; ``labels`` come without
            ``check_data`` or do not match it in length; or the converted model needs
            non-built-in ops.
        ExportCheckError: When ``check="raise"`` and the self-check fails (nothing is
            written).
        OSError: When ``path`` cannot be written (a directory, a file in place of a
            folder, no permission, a full disk); ``path`` is then unchanged.
    """
    who = "export_tflite"
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"{who}: quantize must be one of {QUANTIZE_MODES}, got {quantize!r}.")
    if not isinstance(model, keras.Model):
        raise ValueError(f"{who} needs a keras.Model, got {type(model).__name__}.")
    if not model.inputs:
        raise ValueError(
            f"{who}: model '{model.name}' has no known inputs; build it on a keras.Input first."
        )
    mode = _check_mode(check)
    if strategy not in STRATEGIES:
        raise ValueError(f"{who}: strategy must be one of {STRATEGIES}, got {strategy!r}.")
    num_calibration_steps = positive_int(who, "num_calibration_steps", num_calibration_steps)
    num_check_samples = positive_int(who, "num_check_samples", num_check_samples)
    num_threads = positive_int(who, "num_threads", num_threads)
    path = check_writable(path, "the .tflite file")
    single = len(model.inputs) == 1
    if not single:
        uses = [
            (what, fix)
            for what, fix, used in (
                ("the self-check", "pass check=False to export without it", mode),
                (
                    "int8 calibration",
                    "use quantize=None, 'float16' or 'dynamic'",
                    quantize == "int8",
                ),
                ("representative_data", "leave it out", representative_data is not None),
                ("check_data", "leave it out (and pass check=False)", check_data is not None),
            )
            if used
        ]
        if uses:
            raise ValueError(
                f"{who}: model '{model.name}' has {len(model.inputs)} inputs, but "
                f"{' and '.join(w for w, _ in uses)} need(s) a single-input model: "
                f"{'; '.join(f for _, f in uses)}."
            )
    input_shape = _input_shape(model) if single else None

    representative = _checked_data(
        representative_data, num_calibration_steps, input_shape, "representative_data"
    )
    if quantize == "int8" and representative is None:
        raise ValueError(
            f"{who}: quantize='int8' needs representative_data (a few hundred typical "
            "inputs, shaped like the model's input) to calibrate the activation ranges."
        )
    if labels is not None and check_data is None:
        raise ValueError(f"{who}: labels need check_data (the inputs they label).")
    x = None
    if mode:
        if check_data is not None:
            x = _checked_data(check_data, None, input_shape, "check_data")
            if labels is not None:
                labels = np.asarray(labels)
                if labels.ndim == 0 or len(labels) != len(x):
                    n = "a scalar" if labels.ndim == 0 else len(labels)
                    raise ValueError(f"{who}: {n} labels for {len(x)} check inputs.")
        elif representative is not None:
            x = representative[:num_check_samples]
        else:
            shape = [num_check_samples, *(d or 32 for d in input_shape[1:])]
            x = np.random.default_rng(0).random(shape, dtype=np.float32)

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

    converter = _converter(graph, quantize, representative, num_calibration_steps)
    try:
        content = convert_model(converter)
    except Exception as err:  # the converter raises its own ConverterError
        raise unsupported_op_error(err, model) from err
    ops = tflite_ops(content)
    bad = [o for o in ops if o.startswith("Flex") or o in ("CUSTOM", "DELEGATE")]
    if bad:
        raise ValueError(
            f"{who}: the converted model holds non-built-in op(s) {sorted(set(bad))}; "
            "only LiteRT built-in ops are allowed."
        )
    report = ExportReport(str(path), quantize, len(content), ops, prepare=prepare_info)

    warned = []

    def self_check(tmp: Path) -> None:
        # runs on the written temporary file, before it replaces ``path``
        figures = check_tflite(
            model,
            tmp,
            x,
            labels=labels,
            num_threads=num_threads,
            quantize=quantize,
            on_mismatch="ignore",
        )
        for k, v in figures.items():
            setattr(report, k, v)
        if not figures["passed"]:
            message = f"{who}: {_mismatch_message(figures, quantize)}"
            if mode == "raise":
                existing = "left unchanged" if path.exists() else "not written"
                raise ExportCheckError(
                    f"{message}. {path} was {existing}. Check the data (e.g. the input "
                    "scaling the model was trained with), or pass check='warn' to write "
                    "it anyway."
                )
            warned.append(f"{message}; wrote {path} anyway (check='warn').")

    atomic_write_bytes(path, content, check=self_check if mode else None, what="the .tflite file")
    for message in warned:  # after the write, at the caller's line
        warnings.warn(message, UserWarning, stacklevel=2)
    if verbose:
        print(report)
    return report
