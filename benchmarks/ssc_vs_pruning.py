"""SSConv2D against pruning at initialization, at equal parameter counts, on sklearn's digits.

A small CNN (``Conv2D(32) -> X(64) -> MaxPool -> X(64) -> Flatten -> Dense(10)``) where the two
``X`` layers are

- ``Conv2D``: the dense reference;
- ``SSC ...``: ``SSConv2D`` with a structured pattern (trained with ``implementation="dense"``,
  the faster path in TensorFlow; exported with ``"factorized"``, the grouped ops);
- ``random mask`` / ``magnitude mask``: a plain ``Conv2D`` pruned at initialization to the
  same number of non-zero weights as the SSC layer (uniformly at random, or keeping the
  largest initial weights), the mask held fixed during training.

Every model trains for the same epochs on the same stratified split; accuracy is the mean
over seeds. Latency: the trained models converted to ``.tflite`` (built-in ops), run by the
LiteRT interpreter (XNNPACK), batch 1 and batch 256 on the digits' 8x8 inputs, plus the same
architectures at 32x32x3 inputs (latency only) where the convolutions dominate. Timings are
interleaved (each model once per round) and the median is kept; ratios are to the dense
``Conv2D`` model of the same run. TensorFlow forward time (batch 256) of both SSC paths too.

    python benchmarks/ssc_vs_pruning.py           # 3 seeds, 10 epochs
    python benchmarks/ssc_vs_pruning.py --quick   # 1 seed, 5 epochs, fewer repeats

Writes ``benchmarks/results/ssc_vs_pruning.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from keras_eigenconv.cost import model_cost  # noqa: E402
from keras_eigenconv.layers.ssc import SSConv2D, set_ssc_implementation  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WIDTH = 64
SSC_CONFIGS = {
    "SSC HetConv-4 (G=4, a=1, b=3, interleaved)": dict(
        groups=4, kernel_span=1, pointwise_span=3, layout="interleaved"
    ),
    "SSC G=4, a=1, b=3 (contiguous)": dict(groups=4, kernel_span=1, pointwise_span=3),
    "SSC G=4, a=1, b=1": dict(groups=4, kernel_span=1, pointwise_span=1),
}


class FixedMask(keras.constraints.Constraint):
    """Keeps a pruned-at-init kernel pruned: ``w * mask`` after every update."""

    def __init__(self, mask):
        self.mask = np.asarray(mask, "float32")

    def __call__(self, w):
        return w * self.mask


def _conv_block(kind, opts, seed, in_channels, name):
    if kind == "ssc":
        return SSConv2D(WIDTH, 3, padding="same", activation="relu", name=name, **opts)
    if kind == "dense":
        return keras.layers.Conv2D(WIDTH, 3, padding="same", activation="relu", name=name)
    # pruned at init: draw the dense init, choose the mask, keep it fixed
    nnz = opts["nnz"]
    init = keras.initializers.GlorotUniform(seed=seed)
    w = np.asarray(init((3, 3, in_channels, WIDTH)))
    if kind == "random":
        rng = np.random.default_rng(seed)
        keep = rng.choice(w.size, size=nnz, replace=False)
    else:  # magnitude
        keep = np.argsort(-np.abs(w).ravel(), kind="stable")[:nnz]
    mask = np.zeros(w.size, "float32")
    mask[keep] = 1.0
    mask = mask.reshape(w.shape)
    return keras.layers.Conv2D(
        WIDTH,
        3,
        padding="same",
        activation="relu",
        name=name,
        kernel_initializer=keras.initializers.Constant(w * mask),
        kernel_constraint=FixedMask(mask),
    )


def build_model(kind, opts, seed, input_shape=(8, 8, 1)):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="stem")(inputs)
    x = _conv_block(kind, _resolve_opts(opts, 32), seed, 32, "x1")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = _conv_block(kind, _resolve_opts(opts, WIDTH), seed + 1, WIDTH, "x2")(x)
    x = (
        keras.layers.GlobalAveragePooling2D()(x)
        if input_shape[0] > 8
        else keras.layers.Flatten()(x)
    )
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs)


def ssc_nnz(opts, in_channels):
    layer = SSConv2D(WIDTH, 3, **opts)
    layer.build((None, 8, 8, in_channels))
    return layer.pattern.num_weights


def variants():
    out = [("Conv2D (dense)", "dense", {})]
    for label, opts in SSC_CONFIGS.items():
        out.append((label, "ssc", opts))
        for kind in ("random", "magnitude"):
            # equal non-zeros to the SSC layer it is paired with (both X layers: C = 32, 64)
            out.append(
                (f"{kind} mask = {label}", kind, {"nnz_of": opts}),
            )
    return out


def _resolve_opts(opts, in_channels):
    """Masked layers: the non-zero count of the paired SSC layer on ``in_channels``."""
    if "nnz_of" in opts:
        return {"nnz": ssc_nnz(opts["nnz_of"], in_channels)}
    return opts


def nonzero_params(model) -> int:
    return int(sum(np.count_nonzero(w) for w in model.get_weights()))


def x_layer_nonzeros(model) -> int:
    total = 0
    for name in ("x1", "x2"):
        layer = model.get_layer(name)
        if isinstance(layer, SSConv2D):
            total += layer.cost((8, 8, layer.pattern.in_channels)).params - WIDTH
        else:
            total += int(np.count_nonzero(layer.kernel.numpy()))
    return total


def executed_macs(model, input_shape=(8, 8, 1)) -> int:
    """MACs the factorized export runs: structural MACs, except each SSConv2D counts
    ``executed_macs`` (the 1x1 conv over all channels with ``arrangement="full_pointwise"``)."""
    total = model_cost(model).total.macs
    for layer in model.layers:
        if isinstance(layer, SSConv2D):
            shape = layer.input.shape
            total += layer.executed_macs(shape) - layer.cost(shape).macs
    return int(total)


def arrangements(model) -> str:
    return ", ".join(
        sorted({lay.resolved_arrangement for lay in model.layers if isinstance(lay, SSConv2D)})
    )


def with_arrangement(model, arrangement):
    """A copy of ``model`` (same weights) whose SSConv2D layers run ``arrangement``."""
    m = keras.models.clone_model(model)
    m.set_weights(model.get_weights())
    set_ssc_implementation(m, "factorized", arrangement=arrangement)
    return m


def to_tflite(model, arrangement=None) -> bytes:
    set_ssc_implementation(model, "factorized", arrangement=arrangement)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def litert_timer(content: bytes, batch: int, shape, threads: int):
    interp = Interpreter(model_content=content, num_threads=threads)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], (batch, *shape))
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], np.random.default_rng(0).random((batch, *shape), "float32"))
    interp.invoke()
    ops = sorted({d["op_name"] for d in interp._get_ops_details()})

    def once():
        t = time.perf_counter()
        interp.invoke()
        return time.perf_counter() - t

    return once, ops


def time_interleaved(timers: dict, repeats: int) -> dict:
    samples = {k: [] for k in timers}
    for _ in range(repeats):
        for k, fn in timers.items():
            samples[k].append(fn())
    return {k: statistics.median(v) for k, v in samples.items()}


def tf_forward_timer(model, x):
    fn = tf.function(lambda x: model(x, training=False))
    fn(x)

    def once():
        t = time.perf_counter()
        np.asarray(fn(x))
        return time.perf_counter() - t

    return once


def run(seeds, epochs, repeats, threads):
    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]
    y = d.target.astype("int32")
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    rows = {}
    trained = {}
    for label, kind, opts in variants():
        accs = []
        for seed in seeds:
            model = build_model(kind, opts, seed)
            set_ssc_implementation(model, "dense")  # faster TF training; same function
            model.compile(
                keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
            )
            model.fit(xtr, ytr, epochs=epochs, batch_size=32, verbose=0)
            accs.append(float(model.evaluate(xte, yte, verbose=0)[1]))
        trained[label] = model
        cost = model_cost(model).total
        rows[label] = {
            "model": label,
            "kind": kind,
            "accuracy_mean": float(np.mean(accs)),
            "accuracy_std": float(np.std(accs)),
            "accuracies": accs,
            "x_layer_nonzero_weights": x_layer_nonzeros(model),
            "nonzero_params": nonzero_params(model),
            "stored_params": cost.params,
            "macs": cost.macs,
        }
        print(f"trained {label}: acc {np.mean(accs):.4f}", flush=True)

    # the SSC models again with the previous arrangement (grouped 1x1 over GATHERed channels)
    for label in [k for k in trained if rows[k]["kind"] == "ssc"]:
        old = f"{label} [arrangement=grouped]"
        trained[old] = with_arrangement(trained[label], "grouped")
        rows[old] = {**rows[label], "model": old, "kind": "ssc-grouped"}
    for label, model in trained.items():
        set_ssc_implementation(model, "factorized")
        rows[label]["executed_macs"] = executed_macs(model)
        rows[label]["arrangement"] = arrangements(model)

    # LiteRT latency of the trained digits models, batch 1 and 256
    for batch in (1, 256):
        timers = {}
        for label, model in trained.items():
            fn, ops = litert_timer(to_tflite(model), batch, (8, 8, 1), threads)
            timers[label] = fn
            rows[label]["litert_ops"] = ops
        med = time_interleaved(timers, repeats)
        base = med["Conv2D (dense)"]
        for label, t in med.items():
            rows[label][f"litert_ms_b{batch}"] = 1e3 * t
            rows[label][f"litert_ratio_b{batch}"] = t / base
        print(f"timed LiteRT batch {batch}", flush=True)

    # the same architectures on 32x32x3 inputs (untrained weights: latency only)
    big = (32, 32, 3)
    timers = {}
    for label, kind, opts in variants():
        model = build_model(kind, opts, 0, big)
        timers[label] = litert_timer(to_tflite(model), 1, big, threads)[0]
        rows[label]["macs_32x32"] = model_cost(model).total.macs
        if kind == "ssc":
            old = f"{label} [arrangement=grouped]"
            timers[old] = litert_timer(to_tflite(model, "grouped"), 1, big, threads)[0]
    med = time_interleaved(timers, repeats)
    base = med["Conv2D (dense)"]
    for label, t in med.items():
        rows[label]["litert_ms_32x32_b1"] = 1e3 * t
        rows[label]["litert_ratio_32x32_b1"] = t / base

    # TensorFlow forward, batch 256: both SSC paths
    xb = tf.constant(xte[:256])
    for label, model in trained.items():
        if rows[label]["kind"] not in ("ssc", "ssc-grouped") and label != "Conv2D (dense)":
            continue
        timers = {}
        for impl in ("dense", "factorized"):
            m = keras.models.clone_model(model)
            m.set_weights(model.get_weights())
            arr = "grouped" if rows[label]["kind"] == "ssc-grouped" else None
            set_ssc_implementation(m, impl, arrangement=arr)
            timers[impl] = tf_forward_timer(m, xb)
        med = time_interleaved(timers, max(5, repeats // 5))
        rows[label]["tf_ms_b256_dense_path"] = 1e3 * med["dense"]
        rows[label]["tf_ms_b256_factorized_path"] = 1e3 * med["factorized"]
    ordered = []
    for label, row in rows.items():
        if row["kind"] != "ssc-grouped":
            ordered.append(row)
        if f"{label} [arrangement=grouped]" in rows:
            ordered.append(rows[f"{label} [arrangement=grouped]"])
    return ordered


def to_markdown(rows, meta) -> str:
    lines = [
        f"Digits (1797 images, 25% test, stratified), {meta['epochs']} epochs, seeds "
        f"{meta['seeds']}; LiteRT {meta['threads']} thread(s), median of {meta['repeats']} "
        "interleaved runs; ratios are to the dense Conv2D model of this run.",
        "",
        "| model | X-layer non-zero weights | MACs (8x8): structure / executed | test accuracy "
        "| LiteRT b1 ms (ratio) | LiteRT b256 ms (ratio) | LiteRT 32x32x3 b1 ms (ratio) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        arr = f" ({r['arrangement']})" if r.get("arrangement") and r["kind"] == "ssc" else ""
        lines.append(
            f"| {r['model']}{arr} | {r['x_layer_nonzero_weights']:,} "
            f"| {r['macs']:,} / {r['executed_macs']:,} "
            f"| {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} "
            f"| {r['litert_ms_b1']:.3f} ({r['litert_ratio_b1']:.2f}) "
            f"| {r['litert_ms_b256']:.2f} ({r['litert_ratio_b256']:.2f}) "
            f"| {r['litert_ms_32x32_b1']:.3f} ({r['litert_ratio_32x32_b1']:.2f}) |"
        )
    lines += [
        "",
        "MACs: structure = the non-zero connections' arithmetic (`cost()`); executed = what "
        "the exported ops compute (the `full_pointwise` arrangement runs the 1x1 part as one "
        "conv over all channels, zeros included). Masked Conv2D layers run all dense MACs. "
        "Rows `[arrangement=grouped]` are the same trained SSC weights run the previous way "
        "(grouped 1x1 over GATHERed channels); their accuracy is that of the row above.",
        "",
        "TensorFlow CPU forward, batch 256 (ms): the two SSConv2D paths (same weights).",
        "",
        "| model | implementation='dense' | implementation='factorized' |",
        "|---|---:|---:|",
    ]
    for r in rows:
        if "tf_ms_b256_dense_path" in r:
            lines.append(
                f"| {r['model']} | {r['tf_ms_b256_dense_path']:.2f} "
                f"| {r['tf_ms_b256_factorized_path']:.2f} |"
            )
    ops = {r["model"]: r["litert_ops"] for r in rows if r["kind"].startswith("ssc")}
    lines += [
        "",
        "LiteRT ops of the SSC models: "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in ops.items()),
    ]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    epochs = args.epochs or (5 if args.quick else 10)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    repeats = args.repeats or (20 if args.quick else 100)
    rows = run(seeds, epochs, repeats, args.threads)
    meta = {
        "epochs": epochs,
        "seeds": seeds,
        "repeats": repeats,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ssc_vs_pruning.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = to_markdown(rows, meta)
    (RESULTS / "ssc_vs_pruning.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
