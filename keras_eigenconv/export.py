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

import json
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

__all__ = ["ExportReport", "bench_tflite", "check_tflite", "export_tflite", "register_cli"]

QUANTIZE_MODES = (None, "float16", "dynamic", "int8")


@dataclass
class ExportReport:
    """Figures of one export: the file, its ops, and the self-check against Keras."""

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


# ---- conversion ----------------------------------------------------------------------------


def _unsupported_op_error(err: Exception, model) -> ValueError:
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


def _converter(model, quantize, representative, num_calibration_steps, input_shape):
    from .inference import tflite_converter

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


def tflite_ops(content: bytes) -> list[str]:
    """Names of the ops in a ``.tflite`` flatbuffer (in execution order, no delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(
        model_content=content,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    return [d["op_name"] for d in it._get_ops_details()]


# ---- running and checking ------------------------------------------------------------------


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


def check_tflite(
    model, content_or_path, x: np.ndarray, labels=None, num_threads: int = 2
) -> dict[str, Any]:
    """Compare a ``.tflite`` model with the Keras ``model`` on inputs ``x``.

    Returns ``max_abs_error`` and ``output_scale`` (max ``|y|`` of Keras), ``top1_agreement``
    (share of samples whose argmax over the last axis agree; when that axis has > 1 entry)
    and, with ``labels``, ``tflite_accuracy`` and ``keras_accuracy``.
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

    ``quantize``: ``None`` (float32), ``"float16"``, ``"dynamic"`` or ``"int8"`` (full
    integer: needs ``representative_data``, of which ``num_calibration_steps`` samples are
    used, batch 1 each). ``prepare`` applies ``prepare_for_inference(model, strategy=...,
    num_threads=..., quantize=...)`` first (the user's model is not changed). The self-check
    runs the file on ``check_data`` (else the first ``num_check_samples`` representative
    samples, else uniform [0, 1) inputs; ``labels`` align with ``check_data``). Returns an
    ``ExportReport``; printed when ``verbose``.
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
        from .inference import prepare_for_inference

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

    import contextlib
    import io

    converter = _converter(graph, quantize, representative, num_calibration_steps, input_shape)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            content = converter.convert()
    except Exception as err:  # the converter raises its own ConverterError
        raise _unsupported_op_error(err, model) from err
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


# ---- latency -------------------------------------------------------------------------------


def bench_tflite(
    paths: dict[str, str | Path] | list,
    num_threads: int = 2,
    rounds: int = 20,
    warmup: int = 3,
    runs_per_round: int = 1,
) -> dict[str, dict]:
    """Latency of ``.tflite`` files (batch 1, random inputs), timed interleaved.

    Every round invokes each model ``runs_per_round`` times in turn, so machine load hits all
    alike. Returns per model ``median_ms``, ``mean_ms``, ``p10_ms``, ``p90_ms`` and
    ``ratio`` (median over the first model's median).
    """
    from .inference import _interpreter

    if not isinstance(paths, dict):
        paths = {str(p): p for p in paths}
    its = {name: _interpreter(Path(p).read_bytes(), num_threads) for name, p in paths.items()}
    for it in its.values():
        for _ in range(warmup):
            it.invoke()
    samples: dict[str, list[float]] = {name: [] for name in its}
    for _ in range(rounds):
        for name, it in its.items():
            t = time.perf_counter()
            for _ in range(runs_per_round):
                it.invoke()
            samples[name].append((time.perf_counter() - t) / runs_per_round * 1e3)
    out = {}
    base = None
    for name, v in samples.items():
        med = statistics.median(v)
        base = base or med
        q = np.percentile(v, [10, 90])
        out[name] = {
            "median_ms": med,
            "mean_ms": statistics.fmean(v),
            "p10_ms": float(q[0]),
            "p90_ms": float(q[1]),
            "runs": len(v) * runs_per_round,
            "ratio": med / base,
        }
    return out


# ---- command line --------------------------------------------------------------------------


def _load_array(path: str | None, key: str = "x"):
    if path is None:
        return None
    data = np.load(path)
    if isinstance(data, np.lib.npyio.NpzFile):
        if key not in data:
            raise ValueError(f"{path}: no array '{key}' in the .npz (has {list(data.keys())}).")
        return data[key]
    return data


def _load_model(path: str):
    import importlib
    import pkgutil

    import keras_eigenconv

    # register every layer of the package before deserializing
    for mod in pkgutil.iter_modules(keras_eigenconv.__path__):
        if not mod.name.startswith("_") and mod.name not in ("cli",):
            importlib.import_module(f"keras_eigenconv.{mod.name}")
    if not Path(path).exists():
        raise FileNotFoundError(f"no such model file: {path}")
    return keras.models.load_model(path)


def _cmd_export(args) -> int:
    model = _load_model(args.model)
    rep = _load_array(args.representative_data)
    check = _load_array(args.check_data)
    labels = _load_array(args.labels, "y") if args.labels else None
    if labels is None and args.check_data and args.check_data.endswith(".npz"):
        data = np.load(args.check_data)
        labels = data["y"] if "y" in data else None
    output = args.output or str(Path(args.model).with_suffix(".tflite"))
    report = export_tflite(
        model,
        output,
        quantize=args.quantize,
        representative_data=rep,
        num_calibration_steps=args.calibration_steps,
        check_data=check,
        labels=labels,
        prepare=not args.no_prepare,
        strategy=args.strategy,
        num_threads=args.threads,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1))
    return 0


def _cmd_bench(args) -> int:
    for p in args.models:
        if not Path(p).exists():
            raise FileNotFoundError(f"no such .tflite file: {p}")
    res = bench_tflite(args.models, num_threads=args.threads, rounds=args.runs, warmup=args.warmup)
    width = max(len(p) for p in res)
    print(f"{'model':<{width}}  {'median ms':>10} {'p10 ms':>8} {'p90 ms':>8} {'ratio':>6}")
    for name, r in res.items():
        print(
            f"{name:<{width}}  {r['median_ms']:>10.3f} {r['p10_ms']:>8.3f} {r['p90_ms']:>8.3f} "
            f"{r['ratio']:>6.3f}"
        )
    print(f"({args.threads} threads, batch 1, {args.runs} interleaved rounds)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


def register_cli(subparsers) -> None:
    """Add the ``export`` and ``bench`` commands."""
    p = subparsers.add_parser(
        "export",
        help="export a .keras model to .tflite (built-in ops only) and check it",
        description="Export a .keras model to LiteRT: prepare_for_inference, convert with "
        "built-in ops only, optional quantization, and a self-check against Keras.",
    )
    p.add_argument("model", help="the .keras model file")
    p.add_argument("-o", "--output", help="the .tflite file (default: MODEL with .tflite)")
    p.add_argument("--quantize", choices=["float16", "dynamic", "int8"], default=None)
    p.add_argument(
        "--representative-data",
        help=".npy (or .npz with 'x') of typical inputs; required for --quantize int8",
    )
    p.add_argument("--calibration-steps", type=int, default=100)
    p.add_argument("--check-data", help=".npy or .npz ('x', optional 'y') inputs for the check")
    p.add_argument("--labels", help=".npy labels of --check-data (top-1 accuracy)")
    p.add_argument("--no-prepare", action="store_true", help="skip prepare_for_inference")
    p.add_argument("--strategy", choices=["measure", "cost_model"], default="measure")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the report as JSON here")
    p.set_defaults(func=_cmd_export)

    b = subparsers.add_parser(
        "bench",
        help="time .tflite models with LiteRT (interleaved, batch 1)",
        description="Latency of .tflite files with ai_edge_litert (XNNPACK), timed "
        "interleaved; ratios are against the first file.",
    )
    b.add_argument("models", nargs="+", help=".tflite files")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--runs", type=int, default=30, help="interleaved rounds")
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--json", help="write the timings as JSON here")
    b.set_defaults(func=_cmd_bench)


if __name__ == "__main__":  # pragma: no cover
    from .cli import main

    sys.exit(main(sys.argv[1:]))
