"""LiteRT latency of a model and its converted versions, timed interleaved in one run.

For each method (DeCEF, BasisConv, SVD, Tucker-2, TT, SSC: those whose module exists; CP on
request),
every ``k x k`` conv (``k > 1``, at least 16 input channels; the stem is left dense) of the
original model is replaced by ``Layer.from_conv2d`` at the largest rank whose MACs are at
most ``--target`` times the conv's (``keras_eigenconv.convert`` is used instead when
it exists and ``--surgery`` is given). Every model is exported with ``export_tflite``
(``prepare_for_inference`` first, built-in ops only) in fp32 and int8 (random calibration
data: latency does not depend on it), then all files are timed interleaved with
``bench_tflite`` (batch 1, ``--threads``). Written: ``benchmarks/results/latency_<model>_<size>
.{json,md}`` with MACs (the method's arithmetic), the MACs of the graph LiteRT runs after
``prepare_for_inference`` (folded layers count as dense), MAC ratio, latency and latency
ratio against the original in the same precision, and whether the goal (latency ratio <=
MAC ratio + 0.05 and <= 1.0) holds.

    python benchmarks/latency.py --model resnet50 --size 224        # the full run (~20 min)
    python benchmarks/latency.py --quick                            # small CNN, fp32, seconds

Weights are random (no ImageNet download here); latency does not depend on them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_eigenconv import model_cost  # noqa: E402
from keras_eigenconv.deploy import bench_tflite, export_tflite, prepare_for_inference  # noqa: E402
from keras_eigenconv.deploy.timing import machine_summary  # noqa: E402

RESULTS = Path(__file__).parent / "results"

# (label, module, class name, from_conv2d options)
# CP (keras_eigenconv.layers.cp) is not in the default list: its ALS decomposition takes minutes
# per ResNet50 layer; pass --methods ...,CP to include it.
EXTRA_METHODS = [("CP", "cp", "CPConv2D", {})]
METHODS = [
    ("DeCEF", "decef", "DeCEFConv2D", {}),
    ("BasisConv", "basis", "BasisConv2D", {}),
    ("SVD", "svd", "SVDConv2D", {"decomposition": "channel"}),
    ("Tucker-2", "tucker", "Tucker2Conv2D", {}),
    ("TT", "tt", "TTConv2D", {}),
    ("SSC", "ssc", "SSConv2D", {"groups": 4}),
]


def small_cnn(size: int) -> keras.Model:
    """A small ResNet-like CNN (conv-BN-ReLU blocks, 3x3 convs 32..128 channels)."""
    x = inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for filters, stride in ((64, 1), (64, 1), (128, 2), (128, 1)):
        y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
        y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
        y = keras.layers.BatchNormalization()(y)
        if x.shape[-1] != filters or stride != 1:
            x = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(10, activation="softmax")(x), name="small_cnn")


def build_model(name: str, size: int) -> keras.Model:
    if name == "small":
        return small_cnn(size)
    apps = {
        "resnet50": keras.applications.ResNet50,
        "mobilenetv2": keras.applications.MobileNetV2,
        "resnet18like": None,
    }
    if name not in apps or apps[name] is None:
        raise SystemExit(f"unknown --model {name!r}; choose small, resnet50 or mobilenetv2")
    return apps[name](weights=None, input_shape=(size, size, 3))


def _input_shape(layer):
    return tuple(layer._inbound_nodes[0].input_tensors[0].shape)


def rank_for_target(cls, conv, shape, target: float, options: dict) -> int | None:
    """Largest rank whose MACs are at most ``target`` times the conv's (binary search)."""
    base = keras.layers.Conv2D(
        conv.filters, conv.kernel_size, strides=conv.strides, padding=conv.padding
    )
    from keras_eigenconv.cost import layer_cost

    base.build(shape)
    dense = layer_cost(base, shape).macs

    def macs(r):
        try:
            layer = cls(
                conv.filters,
                conv.kernel_size,
                rank=r,
                strides=conv.strides,
                padding=conv.padding,
                **options,
            )
            return layer.cost(shape).macs
        except ValueError:
            return None

    lo, hi, best = 1, 4096, None
    while lo <= hi:
        mid = (lo + hi) // 2
        m = macs(mid)
        if m is not None and m <= target * dense:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def convert(model: keras.Model, cls, options: dict, target: float) -> keras.Model:
    """Replace every k x k conv (k > 1, C >= 16) by ``cls.from_conv2d`` at the target rank."""
    copies = []

    def clone(layer):
        if (
            isinstance(layer, keras.layers.Conv2D)
            and type(layer) is keras.layers.Conv2D
            and max(layer.kernel_size) > 1
            and layer.groups == 1
            and _input_shape(layer)[-1] >= 16
        ):
            r = rank_for_target(cls, layer, _input_shape(layer), target, options)
            if r is not None:
                return cls.from_conv2d(layer, rank=r, implementation="factorized", **options)
        new = type(layer).from_config(layer.get_config())
        copies.append((layer, new))
        return new

    out = keras.models.clone_model(model, clone_function=clone)
    for old, new in copies:
        if old.weights:
            new.set_weights(old.get_weights())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50", help="resnet50, mobilenetv2 or small")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    p.add_argument("--target", type=float, default=0.5, help="per-layer MAC ratio")
    p.add_argument("--methods", default=None, help="comma-separated labels (default: all)")
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--surgery", action="store_true", help="use keras_eigenconv.convert")
    p.add_argument("--quick", action="store_true", help="small CNN at 32x32, fp32, 5 rounds")
    p.add_argument("--out", default=None, help="results file stem")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.size, args.rounds, args.no_int8 = "small", 32, 5, True
    keras.utils.set_random_seed(0)

    original = build_model(args.model, args.size)
    models = {"original": original}
    wanted = set(args.methods.split(",")) if args.methods else None
    skipped = []
    for label, module, clsname, options in METHODS + EXTRA_METHODS:
        if (wanted and label not in wanted) or (not wanted and (label, module) == ("CP", "cp")):
            continue
        try:
            cls = getattr(importlib.import_module("keras_eigenconv.layers"), clsname)
        except (ModuleNotFoundError, AttributeError):
            skipped.append(label)
            continue
        t = time.time()
        if args.surgery:
            from keras_eigenconv import compress

            method = {"tucker": "tucker2"}.get(module, module)
            models[label], _ = compress.convert(
                original, method=method, budget={"macs": args.target}, progress=False
            )
        else:
            models[label] = convert(original, cls, options, args.target)
        print(f"converted {label} in {time.time() - t:.1f} s", flush=True)

    rng = np.random.default_rng(0)
    calib = rng.random((4, args.size, args.size, 3), dtype=np.float32)
    stem = args.out or f"latency_{args.model}_{args.size}"
    rows, files = [], {}
    base_macs = model_cost(original).total.macs
    with tempfile.TemporaryDirectory() as tmp:
        for label, model in models.items():
            t = time.time()
            macs = model_cost(model).total.macs
            precisions = [None] if args.no_int8 else [None, "int8"]
            for q in precisions:
                # each precision gets the arrangements measured fastest in that precision
                prepared, rep = prepare_for_inference(
                    model, num_threads=args.threads, quantize=q, return_report=True
                )
                choices = {}
                for r in rep.rows:
                    choices[r["choice"]] = choices.get(r["choice"], 0) + 1
                graph_macs = model_cost(prepared).total.macs
                path = Path(tmp) / f"{label}_{q or 'fp32'}.tflite"
                report = export_tflite(
                    prepared,
                    path,
                    quantize=q,
                    representative_data=calib,
                    num_calibration_steps=len(calib),
                    num_check_samples=2,
                    prepare=False,
                    num_threads=args.threads,
                    verbose=False,
                )
                key = f"{label} {q or 'fp32'}"
                files[key] = path
                rows.append(
                    {
                        "model": label,
                        "precision": q or "fp32",
                        "macs": macs,
                        "mac_ratio": macs / base_macs,
                        "graph_macs": graph_macs,
                        "graph_mac_ratio": graph_macs / base_macs,
                        "params": int(
                            original.count_params() if label == "original" else model.count_params()
                        ),
                        "size_kib": report.size_bytes / 1024,
                        "max_abs_error": report.max_abs_error,
                        "arrangements": choices,
                    }
                )
            print(f"exported {label} in {time.time() - t:.1f} s {choices}", flush=True)
        # fp32 originals first in the dict so ratios in bench are vs the first file; we
        # recompute ratios per precision below
        timings = bench_tflite(files, num_threads=args.threads, rounds=args.rounds)
    for row in rows:
        t = timings[f"{row['model']} {row['precision']}"]
        base = timings[f"original {row['precision']}"]["median_ms"]
        row.update(
            latency_ms=t["median_ms"],
            p10_ms=t["p10_ms"],
            p90_ms=t["p90_ms"],
            latency_ratio=t["median_ms"] / base,
        )
        row["goal_met"] = bool(
            row["model"] == "original"
            or (row["latency_ratio"] <= row["mac_ratio"] + 0.05 and row["latency_ratio"] <= 1.0)
        )
    meta = {
        "model": args.model,
        "size": args.size,
        "threads": args.threads,
        "rounds": args.rounds,
        "target_layer_mac_ratio": args.target,
        "batch": 1,
        "machine": machine_summary(),
        "skipped_methods": skipped,
        "command": "python benchmarks/latency.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = [
        f"# LiteRT latency: {args.model} {args.size}x{args.size}, batch 1, {args.threads} threads",
        "",
        f"`{meta['command']}` on {meta['machine']}; median of {args.rounds} interleaved "
        f"rounds. Per-layer MAC target {args.target}. Ratios are against the original in the "
        "same precision. Graph MACs: what LiteRT runs after prepare_for_inference.",
        "",
        "| model | precision | MACs | MAC ratio | graph MAC ratio | latency ms (p10-p90) "
        "| latency ratio | goal | arrangements |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        arr = ", ".join(f"{k} {v}" for k, v in sorted(r["arrangements"].items())) or "-"
        md.append(
            f"| {r['model']} | {r['precision']} | {r['macs'] / 1e9:.3f} G | {r['mac_ratio']:.3f} "
            f"| {r['graph_mac_ratio']:.3f} | {r['latency_ms']:.2f} ({r['p10_ms']:.2f}-"
            f"{r['p90_ms']:.2f}) | {r['latency_ratio']:.3f} | "
            f"{'yes' if r['goal_met'] else 'NO'} | {arr} |"
        )
    if skipped:
        md += ["", f"Not available in this version: {', '.join(skipped)}."]
    (RESULTS / f"{stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
