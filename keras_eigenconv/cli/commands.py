"""Every command of ``keras-eigenconv``: ``convert``, ``prune-channels``, ``export``,
``bench``, ``analyze``, ``demo``. Each ``add_*`` function adds its sub-command with
``set_defaults(func=...)``; ``func(args)`` returns the exit code. Models load through
``loader.load_model``.

Arguments and output paths are checked before any model is loaded; every file is written
atomically (``_io``: a temporary file beside the target, checked, synced, renamed), so a
failed command leaves existing files as they were.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import zipfile
from pathlib import Path

from .._io import atomic_path, atomic_write_text, check_writable
from ..compress import RANK_RULES, available_methods, convert, get_method, registered_methods
from ..compress import ranks as rk
from ..layers.base import IMPLEMENTATIONS
from .loader import load_array, load_inputs, load_model

__all__ = ["COMMANDS"]


# ---- argument types and writers ------------------------------------------------------


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number, got {text}")
    return value


def _check_outputs(**paths) -> None:
    """Check every given output path before any work (``--json`` and friends)."""
    for flag, path in paths.items():
        if path:
            check_writable(path, f"--{flag.replace('_', '-')}")


def _write_json(path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n", what="JSON file")


def _check_keras_archive(tmp: Path) -> None:
    """A written ``.keras`` file must be a complete zip archive."""
    bad = None
    try:
        with zipfile.ZipFile(tmp) as z:
            bad = z.testzip()
    except zipfile.BadZipFile as err:
        bad = str(err)
    if bad:
        raise OSError(errno.EIO, f"the saved .keras archive is damaged ({bad})")


def save_model_atomically(model, path) -> None:
    """``model.save(path)`` through a temporary file, checked and renamed into place.

    Args:
        model: The Keras model.
        path: The ``.keras`` file.

    Raises:
        ValueError: When ``path`` does not end in ``.keras``.
        OSError: When it cannot be written (the previous file is then unchanged).
    """
    if not str(path).endswith(".keras"):
        raise ValueError(f"-o {path}: the converted model is saved as .keras; use that suffix.")
    with atomic_path(path, check=_check_keras_archive, what="model file") as tmp:
        model.save(tmp)


# ---- convert ---------------------------------------------------------------------------


def _parse_rank(text: str):
    if text in RANK_RULES:
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive int or one of {', '.join(RANK_RULES)}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"rank must be >= 1, got {value}")
    return value


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not H,W,C (e.g. 224,224,3)") from None
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not H,W,C (e.g. 224,224,3)")
    return shape


def _check_model_outputs(args, what: str) -> None:
    """Check ``-o`` (a ``.keras`` path), ``--markdown``, ``--json`` and
    ``--calibration-data`` before the model is loaded."""
    if args.output and not args.output.endswith(".keras"):
        raise ValueError(f"-o {args.output}: the {what} model is saved as .keras; use that suffix.")
    _check_outputs(output=args.output, markdown=args.markdown, json=args.json)
    if args.calibration_data is not None and not os.path.exists(args.calibration_data):
        raise FileNotFoundError(f"no such file or folder: {args.calibration_data}")


def _load_model_and_calibration(args):
    """The model (``loader.load_model``) and its ``--calibration-data`` inputs, or None."""
    model = load_model(args.model, args.weights, args.input_shape)
    if args.calibration_data is None:
        return model, None
    calibration = load_inputs(
        args.calibration_data,
        tuple(model.inputs[0].shape[1:]),
        scale=args.calibration_scale,
        limit=args.calibration_samples,
    )
    return model, calibration


def _write_model_outputs(args, new_model, report, tuning=None) -> None:
    """Save the new model (``-o``) and the report (``--markdown``, ``--json``); with
    ``tuning`` (``--tune-training``'s ``TuningReport``) its per-layer table too (a
    ``training_paths`` key in the JSON, a section in the Markdown)."""
    if args.output:
        save_model_atomically(new_model, args.output)
        print(f"saved {args.output}")
    if args.markdown:
        text = report.to_markdown()
        if tuning is not None:
            text = f"{text.rstrip()}\n\n### Training paths\n\n{tuning.to_markdown()}"
        atomic_write_text(args.markdown, text, what="Markdown file")
    if args.json:
        data = report.to_dict()
        if tuning is not None:
            data["training_paths"] = tuning.to_dict()
        _write_json(args.json, data)


def _add_model_arguments(p, what: str, calibration_help: str) -> None:
    """``--weights``, ``--input-shape``, ``-o``, ``--markdown``, ``--json``, the
    ``--calibration-*`` options and ``--no-strict``, shared by ``convert`` and
    ``prune-channels``."""
    p.add_argument(
        "--weights",
        default="imagenet",
        help="passed to the keras.applications constructor: imagenet (default), "
        "none, or a weights file",
    )
    p.add_argument(
        "--input-shape",
        type=_parse_shape,
        metavar="H,W,C",
        help="input shape for a keras.applications model",
    )
    p.add_argument("-o", "--output", help=f"save the {what} model here (.keras)")
    p.add_argument("--markdown", metavar="PATH", help="also write the report as Markdown")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument(
        "--calibration-data",
        metavar="FILE|DIR",
        help=f"unlabeled inputs{calibration_help}: a .npy (or .npz with 'x') of "
        "preprocessed inputs, or a folder of images read at the model's input size",
    )
    p.add_argument(
        "--calibration-scale",
        type=float,
        default=1.0,
        metavar="S",
        help="multiply images from a folder by S (e.g. 0.00392 for [0, 1]; default 1: [0, 255])",
    )
    p.add_argument(
        "--calibration-samples",
        type=int,
        default=512,
        metavar="N",
        help="use at most N calibration samples (default 512)",
    )


def _budget_of(args) -> dict | None:
    """The ``budget`` of ``--budget-latency`` (a share in ``(0, 1]``), ``--budget-macs`` or
    ``--budget-params`` (checked), or None; ``--target`` only with ``--budget-latency``."""
    if args.budget_latency is None:
        if args.target is not None:
            raise ValueError("--target is used with --budget-latency only.")
        budget = (
            {"macs": args.budget_macs}
            if args.budget_macs is not None
            else {"params": args.budget_params}
            if args.budget_params is not None
            else None
        )
        if budget is not None:
            rk.parse_budget(budget)
        return budget
    if not 0.0 < args.budget_latency <= 1.0:
        raise ValueError(
            f"--budget-latency {args.budget_latency}: a share of the original latency in "
            "(0, 1], e.g. 0.7."
        )
    return {"latency": args.budget_latency}


def _target_of(args):
    """The ``latency.Target`` of ``--target`` (default litert-fp32) and ``--threads``."""
    from ..latency import parse_target

    tgt = parse_target(args.target or "litert-fp32")
    if args.threads is not None and tgt.runtime == "litert":
        tgt = type(tgt)(tgt.runtime, tgt.precision, args.threads, tgt.batch)
    return tgt


def _cli_convert(args) -> int:
    # everything that can be checked before loading a (large) model
    latency = args.budget_latency is not None
    if args.method == "auto" and not latency:
        raise ValueError("--method auto chooses per layer on a target: it needs --budget-latency.")
    if args.method != "auto":
        get_method(args.method)
    budget = _budget_of(args)
    if latency and args.round_to is not None:
        raise ValueError("--round-to cannot be combined with --budget-latency (it picks ranks).")
    if args.energy is not None:
        rk.energy_rank([1.0], args.energy)
    if args.tune_training is not None:
        if args.tune_training < 1:
            raise ValueError(f"--tune-training {args.tune_training}: the fit batch size, >= 1.")
        import keras

        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                "--tune-training times TensorFlow training steps; run with "
                "KERAS_BACKEND=tensorflow."
            )
    _check_model_outputs(args, "converted")
    model, calibration = _load_model_and_calibration(args)
    extra = {}
    if latency:
        from ..latency import convert as latency_convert

        tgt = _target_of(args)
        extra = {"target": tgt, "feedback_rounds": args.feedback_rounds}
        run = latency_convert
    else:
        run = convert
    new_model, report = run(
        model,
        method=args.method,
        rank=args.rank,
        energy=args.energy,
        budget=budget,
        include=args.include,
        exclude=args.exclude,
        round_to=args.round_to,
        skip_first=not args.convert_first,
        require_saving=args.require_saving,
        implementation=args.implementation,
        strict=not args.no_strict,
        progress=False if args.no_progress else "auto",
        calibration_data=calibration,
        **extra,
    )
    print(report)
    plan = getattr(report, "latency", None)
    if plan is not None:
        print(plan)
    tuning = None
    if args.tune_training is not None:
        from ..training import tune_implementations

        new_model, tuning = tune_implementations(new_model, batch_size=args.tune_training)
        print(tuning)
    _write_model_outputs(args, new_model, report, tuning)
    return 0


def add_convert(subparsers) -> None:
    """Add the ``convert`` command.

    Args:
        subparsers: The ``add_subparsers()`` object of the main parser.
    """
    p = subparsers.add_parser(
        "convert",
        help="replace the Conv2D layers of a model with low-rank layers and print a report",
        description="Convert a keras.applications model (by name) or a .keras file: replace its "
        "Conv2D layers with a low-rank method initialized from the trained weights, print a "
        "per-layer report, optionally save the converted model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  keras-eigenconv convert resnet50 --method decef --energy 0.9 -o resnet50_decef.keras\n"
        "  keras-eigenconv convert mobilenetv2 --weights none --method svd --budget-macs 0.6\n"
        "  keras-eigenconv convert model.keras --method svd --rank vbmf --round-to 8\n"
        "  keras-eigenconv convert model.keras --method auto --budget-latency 0.7 "
        "--target litert-int8\n"
        f"methods: {', '.join(registered_methods())} (available: "
        f"{', '.join(available_methods())})",
    )
    p.add_argument(
        "model", help="a keras.applications name (resnet50, mobilenetv2, ...) or a .keras file"
    )
    p.add_argument("--method", default="decef", help="registered method name (default: decef)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--rank",
        type=_parse_rank,
        help="an int (clipped per layer), or full, effective (entropy rank) or vbmf",
    )
    g.add_argument("--energy", type=float, help="keep this share of each kernel's squared norm")
    g.add_argument(
        "--budget-macs",
        type=_positive_float,
        metavar="X",
        help="allocate ranks so the model has at most X (share if <= 1) of its MACs",
    )
    g.add_argument(
        "--budget-params", type=_positive_float, metavar="X", help="same for the parameter count"
    )
    g.add_argument(
        "--budget-latency",
        type=float,
        metavar="X",
        help="plan per layer (timed on --target) so the model takes at most X of its latency; "
        "--method auto picks the method per layer",
    )
    p.add_argument(
        "--target",
        choices=("litert-fp32", "litert-fp16", "litert-int8", "train"),
        help="with --budget-latency: the runtime and precision timed (default litert-fp32)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="with --budget-latency on LiteRT: interpreter threads (default 2)",
    )
    p.add_argument(
        "--feedback-rounds",
        type=int,
        default=4,
        metavar="K",
        help="with --budget-latency: whole-model measurements to correct the plan (default 4)",
    )
    p.add_argument(
        "--round-to", type=_positive_int, metavar="M", help="round ranks up to multiples of M"
    )
    p.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="only convert layers whose name matches (repeatable)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help="leave layers whose name matches (repeatable)",
    )
    p.add_argument("--convert-first", action="store_true", help="also convert the first conv")
    p.add_argument(
        "--all",
        dest="require_saving",
        action="store_false",
        help="also replace layers whose replacement does not cost less",
    )
    p.add_argument("--implementation", choices=IMPLEMENTATIONS, default="auto")
    p.add_argument(
        "--tune-training",
        type=int,
        metavar="BATCH",
        help="time each layer's two training paths (factor ops, rebuilt dense kernel) at "
        "this fit batch size on this machine and save the faster in each layer "
        "(training.tune_implementations); --json and --markdown get the per-layer table",
    )
    _add_model_arguments(p, "converted", " for data-aware conversion")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-strict",
        action="store_true",
        help="with a budget: keep the model even when it misses the budget (a warning names "
        "the layers that could not be reduced) instead of failing",
    )
    p.set_defaults(func=_cli_convert)


# ---- prune-channels ---------------------------------------------------------------------


def _cli_prune_channels(args) -> int:
    # everything that can be checked before loading a (large) model
    latency = args.budget_latency is not None
    budget, keep = _budget_of(args), args.keep
    if args.threads is not None and not latency:
        raise ValueError("--threads is used with --budget-latency only.")
    if not 1 <= args.feedback_rounds <= 10:
        raise ValueError(f"--feedback-rounds {args.feedback_rounds}: an int in 1..10.")
    if keep is not None and keep > 1:
        if keep != int(keep):
            raise ValueError(
                f"--keep {keep}: a share of each block's hidden channels (<= 1, e.g. 0.75) or "
                "a channel count (an int > 1)."
            )
        keep = int(keep)  # a channel count
    _check_model_outputs(args, "pruned")
    model, calibration = _load_model_and_calibration(args)
    from ..latency import prune_channels as latency_prune_channels

    extra = {}
    if latency:
        extra = {
            "target": _target_of(args),
            "feedback_rounds": args.feedback_rounds,
            "progress": False if args.no_progress else "auto",
        }
    new_model, report = latency_prune_channels(
        model,
        budget=budget,
        keep=keep,
        include=args.include,
        exclude=args.exclude,
        round_to=args.round_to,
        allocation=args.allocation,
        calibration_data=calibration,
        strict=not args.no_strict,
        **extra,
    )
    print(report)
    _write_model_outputs(args, new_model, report)
    return 0


def add_prune_channels(subparsers) -> None:
    """Add the ``prune-channels`` command.

    Args:
        subparsers: The ``add_subparsers()`` object of the main parser.
    """
    p = subparsers.add_parser(
        "prune-channels",
        help="thin the inverted-residual blocks of a model (MobileNetV2, EfficientNet)",
        description="Prune the hidden channels of the inverted-residual blocks of a "
        "keras.applications model (by name) or a .keras file, to a MACs, params or measured "
        "latency budget or a kept share; print a per-block report, optionally save the model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  keras-eigenconv prune-channels mobilenetv2 --weights none --budget-macs 0.7\n"
        "  keras-eigenconv prune-channels model.keras --budget-latency 0.7 --target "
        "litert-int8 -o thin.keras\n"
        "  keras-eigenconv prune-channels model.keras --keep 0.75 --calibration-data imgs/",
    )
    p.add_argument("model", help="a keras.applications name (mobilenetv2, ...) or a .keras file")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--budget-macs",
        type=_positive_float,
        metavar="X",
        help="prune until the model has at most X (share if <= 1) of its MACs",
    )
    g.add_argument(
        "--budget-params", type=_positive_float, metavar="X", help="same for the parameter count"
    )
    g.add_argument(
        "--budget-latency",
        type=float,
        metavar="X",
        help="prune until the model measures at most X of its latency on --target",
    )
    g.add_argument(
        "--keep",
        type=_positive_float,
        metavar="K",
        help="keep this share (<= 1) or count (int > 1) of each block's hidden channels",
    )
    p.add_argument(
        "--target",
        choices=("litert-fp32", "litert-fp16", "litert-int8"),
        help="with --budget-latency: the runtime and precision timed (default litert-fp32)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="with --budget-latency: interpreter threads (default 2)",
    )
    p.add_argument(
        "--feedback-rounds",
        type=int,
        default=5,
        metavar="K",
        help="with --budget-latency: MAC shares tried at most (default 5)",
    )
    p.add_argument("--allocation", choices=("greedy", "uniform"), default="greedy")
    p.add_argument(
        "--round-to",
        type=_positive_int,
        default=8,
        metavar="M",
        help="kept counts are multiples of M (default 8)",
    )
    p.add_argument(
        "--include", action="append", metavar="GLOB", help="only blocks whose expand conv matches"
    )
    p.add_argument(
        "--exclude", action="append", metavar="GLOB", help="leave blocks whose expand conv matches"
    )
    _add_model_arguments(p, "pruned", " (channel moments measured, project convs refitted on them)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.add_argument(
        "--no-strict",
        action="store_true",
        help="with a budget: keep the model even when it misses the budget, with a warning",
    )
    p.set_defaults(func=_cli_prune_channels)


# ---- export and bench ------------------------------------------------------------------


def _cmd_export(args) -> int:
    output = args.output or str(Path(args.model).with_suffix(".tflite"))
    if Path(output).resolve() == Path(args.model).resolve():
        raise ValueError(f"-o {output} would overwrite the model file itself.")
    _check_outputs(output=output, json=args.json)
    if args.quantize == "int8" and not args.representative_data:
        raise ValueError(
            "--quantize int8 needs --representative-data (a .npy of a few hundred typical "
            "inputs) to calibrate the activation ranges."
        )
    rep = load_array(args.representative_data)
    check = load_array(args.check_data)
    labels = load_array(args.labels, "y") if args.labels else None
    if labels is None and args.check_data and args.check_data.endswith(".npz"):
        labels = load_array(args.check_data, "y", missing_ok=True)
    model = load_model(args.model)
    from ..deploy import export_tflite

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
        check=False if args.check == "off" else args.check,
    )
    if args.json:
        _write_json(args.json, report.to_dict())
    return 0


def _cmd_bench(args) -> int:
    _check_outputs(json=args.json)
    for p in args.models:
        if Path(p).is_dir():
            raise ValueError(f"{p} is a directory, not a .tflite file.")
        if not Path(p).exists():
            raise FileNotFoundError(f"no such .tflite file: {p}")
    from ..deploy import bench_tflite

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
        _write_json(args.json, res)
    return 0


def add_export(subparsers) -> None:
    """Add the ``export`` and ``bench`` commands.

    Args:
        subparsers: The ``add_subparsers()`` object of the main parser.
    """
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
    p.add_argument(
        "--calibration-steps",
        type=_positive_int,
        default=100,
        help="representative samples to calibrate int8 on (>= 1, default 100)",
    )
    p.add_argument("--check-data", help=".npy or .npz ('x', optional 'y') inputs for the check")
    p.add_argument("--labels", help=".npy labels of --check-data (top-1 accuracy)")
    p.add_argument("--no-prepare", action="store_true", help="skip prepare_for_inference")
    p.add_argument("--strategy", choices=["measure", "cost_model"], default="measure")
    p.add_argument("--threads", type=_positive_int, default=2)
    p.add_argument(
        "--check",
        choices=["raise", "warn", "off"],
        default="raise",
        help="the self-check against Keras: fail (default), warn, or skip it",
    )
    p.add_argument("--json", help="write the report as JSON here")
    p.set_defaults(func=_cmd_export)

    b = subparsers.add_parser(
        "bench",
        help="time .tflite models with LiteRT (interleaved, batch 1)",
        description="Latency of .tflite files with ai_edge_litert (XNNPACK), timed "
        "interleaved; ratios are against the first file.",
    )
    b.add_argument("models", nargs="+", help=".tflite files")
    b.add_argument("--threads", type=_positive_int, default=2)
    b.add_argument("--runs", type=_positive_int, default=30, help="interleaved rounds (>= 1)")
    b.add_argument("--warmup", type=_nonnegative_int, default=3)
    b.add_argument("--json", help="write the timings as JSON here")
    b.set_defaults(func=_cmd_bench)


# ---- analyze ---------------------------------------------------------------------------


def add_analyze(subparsers) -> None:
    """Add the ``analyze`` command.

    Args:
        subparsers: The ``add_subparsers()`` object of the main parser.
    """
    p = subparsers.add_parser(
        "analyze",
        help="effective rank of every conv layer's filters against depth",
        description="Effective rank of each Conv2D's filters (whole-filter and per-channel, "
        "energy and entropy ranks, normalized) against depth. Example: keras-eigenconv "
        "analyze resnet50 --weights imagenet --plot ranks.png",
    )
    p.add_argument("model", help="a keras.applications name (resnet50, ...) or a .keras file")
    p.add_argument(
        "--weights",
        default="imagenet",
        help="passed to the keras.applications constructor (imagenet, none, or a file path)",
    )
    p.add_argument("--plot", metavar="PNG", help="write a plot of rank against depth")
    p.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    p.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    p.set_defaults(func=_cmd_analyze)


def _cmd_analyze(args) -> int:
    from ..analysis import analyze

    _check_outputs(plot=args.plot, markdown=args.markdown, json=args.json)
    model = load_model(args.model, weights=args.weights)
    result = analyze(model, plot=args.plot, title=f"{model.name}: effective rank vs depth")
    print(result)
    for measure in ("filter_entropy", "decef_entropy"):
        print(
            f"{measure}: mean {result.mean(measure, spatial_only=True):.3f}, "
            f"slope against relative depth {result.depth_trend(measure):+.3f}"
        )
    if args.markdown:
        atomic_write_text(args.markdown, result.to_markdown() + "\n", what="Markdown file")
    if args.json:
        _write_json(args.json, result.to_dict())
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0


# ---- demo ------------------------------------------------------------------------------


def add_demo(subparsers) -> None:
    """Add the ``demo`` command.

    Args:
        subparsers: The ``add_subparsers()`` object of the main parser.
    """
    from .. import demo

    p = subparsers.add_parser(
        "demo",
        help="train a CNN on the bundled digits, convert it several ways, export int8, time, "
        "and say which variant to ship",
        description=demo.__doc__.split("\n\n")[0] + " No internet needed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  keras-eigenconv demo                      # the full demo (a few minutes)\n"
        "  keras-eigenconv demo --quick --out /tmp/demo   # under a minute (the tests run it)\n"
        "  keras-eigenconv demo --out docs/demo       # the README's table and plot\n"
        "Progress goes to stderr (a bar on a terminal, one line per step otherwise); the "
        "table and the line saying which variant to ship go to stdout.",
    )
    out = demo.DEFAULT_OUT
    p.add_argument("-o", "--out", default=out, help=f"output folder ({out})")
    p.add_argument(
        "--budget", type=float, default=0.5, help="share of the MACs to keep, in (0, 1] (0.5)"
    )
    p.add_argument(
        "--latency-budget",
        type=float,
        default=None,
        help="share of the LiteRT int8 latency for the latency-budget conversion, in (0, 1] "
        "(0.6; --quick: 0.85)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="methods for the MAC budgets, the first is the main one (svd decef; --quick: svd)",
    )
    p.add_argument(
        "--epochs", type=_positive_int, default=None, help="baseline training epochs (6)"
    )
    p.add_argument(
        "--finetune-epochs", type=_nonnegative_int, default=None, help="fine-tuning epochs (2)"
    )
    p.add_argument(
        "--rounds", type=_positive_int, default=None, help="interleaved LiteRT timing rounds (40)"
    )
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (0)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a reduced run: 16x16 images, a smaller CNN, fewer variants (under a minute)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    if not 0.0 < args.budget <= 1.0:
        raise ValueError(f"--budget must be in (0, 1], got {args.budget}")
    latency_budget = args.latency_budget
    if latency_budget is None:
        latency_budget = 0.85 if args.quick else 0.6  # the small quick CNN has less to gain
    if not 0.0 < latency_budget <= 1.0:
        raise ValueError(f"--latency-budget must be in (0, 1], got {latency_budget}")
    _check_outputs(out=str(Path(args.out) / "results.json"))
    for name in args.methods or ():
        get_method(name)
    if args.quick:
        kwargs = dict(
            methods=("svd",), epochs=3, finetune_epochs=1, size=16, width=16, bench_rounds=20
        )
        kwargs.update(calibration_samples=64, quick=True)
    else:
        kwargs = dict(methods=("svd", "decef"), epochs=6, finetune_epochs=2, bench_rounds=40)
    given = dict(
        methods=tuple(args.methods) if args.methods else None,
        epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        bench_rounds=args.rounds,
    )
    kwargs.update({k: v for k, v in given.items() if v is not None})
    from ..demo import run_demo

    command = "keras-eigenconv " + " ".join(
        a for a in sys.argv[1:] if a not in ("--verbose", "--debug")
    )
    run_demo(
        args.out,
        budget=args.budget,
        latency_budget=latency_budget,
        seed=args.seed,
        progress=not args.no_progress,
        command=command,
        **kwargs,
    )
    return 0


COMMANDS = (add_convert, add_prune_channels, add_export, add_analyze, add_demo)
