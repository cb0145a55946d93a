"""``keras-eigenconv demo``: the whole pipeline on real data, offline, in a few minutes.

Trains a small CNN on scikit-learn's bundled digits (upsampled to 32x32 so the convs do real
work), converts it with DeCEF and SVD at a MAC budget, fine-tunes, exports int8 ``.tflite``
files (checked against Keras), times them in LiteRT interleaved with the original, and prints
one table. Plots, models, JSON and Markdown go to the output folder.

The functions here (data, baseline network, training) are also used by
``benchmarks/pareto.py``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from ._io import atomic_path, atomic_write_text
from ._table import markdown_table, text_table
from .cost import model_cost

__all__ = [
    "DEFAULT_OUT",
    "DemoResult",
    "accuracy",
    "baseline_cnn",
    "load_digits_images",
    "run_demo",
    "train",
]

DEFAULT_OUT = "keras-eigenconv-demo"


def load_digits_images(size: int = 32, test_share: float = 0.25, seed: int = 0):
    """Load scikit-learn's bundled digits as images, with a seeded train/test split.

    The 8x8 images are scaled to [0, 1] and upsampled (bilinear) to ``size``.

    Args:
        size: The image side in pixels (8 keeps the originals).
        test_share: The share of the images in the test split.
        seed: The seed of the split.

    Returns:
        ``x_train, y_train, x_test, y_test``: images ``(n, size, size, 1)`` float32 in
        [0, 1] and int32 labels.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]
    if size != 8:
        x = keras.ops.convert_to_numpy(keras.ops.image.resize(x, (size, size), "bilinear"))
    y = d.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_share)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def baseline_cnn(input_shape=(32, 32, 1), width: int = 32, classes: int = 10) -> keras.Model:
    """Build a small VGG-style CNN.

    5 3x3 convs (w, 2w, 4w, 4w, 8w, no bias) each with BatchNorm (momentum 0.9) and ReLU,
    max pooling after the second and fourth, global average pooling, and a dense layer of
    logits.

    Args:
        input_shape: The input shape ``(H, W, C)``.
        width: ``w``, the filters of the first conv.
        classes: The number of classes (logits).

    Returns:
        The Functional model ``digits_cnn``.
    """
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for i, (mult, pool) in enumerate([(1, False), (2, True), (4, False), (4, True), (8, False)]):
        x = keras.layers.Conv2D(width * mult, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if pool:
            x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def train(model, x, y, epochs: int, lr: float, batch_size: int = 64, seed: int = 0) -> list:
    """Compile (Adam, sparse cross-entropy from logits) and fit a model.

    Args:
        model: The model (it outputs logits).
        x: The training images.
        y: The training labels.
        epochs: The number of epochs; 0 or less only compiles.
        lr: Adam's learning rate.
        batch_size: The batch size.
        seed: The random seed set before fitting.

    Returns:
        The training loss of each epoch (empty when ``epochs <= 0``).
    """
    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    if epochs <= 0:
        return []
    keras.utils.set_random_seed(seed)
    hist = model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True)
    return hist.history["loss"]


def accuracy(model, x, y) -> float:
    """Compute the top-1 accuracy of a model on labelled data.

    Args:
        model: The model (it outputs logits or probabilities).
        x: The images.
        y: The labels.

    Returns:
        The share of images whose argmax prediction equals the label.
    """
    logits = model.predict(x, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


@dataclass
class DemoResult:
    """The table of a demo run.

    It prints as a text table (``str``) and a Markdown table (``to_markdown``).

    Attributes:
        rows: One dict per model (``original``, then one per method) with the keys of
            ``columns``: parameters, MACs, MAC ratio to the original, accuracy before
            fine-tuning, accuracy, int8 ``.tflite`` accuracy and size, LiteRT latency and
            latency ratio to the original.
        out_dir: The absolute path of the output folder.
    """

    rows: list[dict] = field(default_factory=list)
    out_dir: str = ""

    columns = (
        "model",
        "params",
        "MACs",
        "MAC ratio",
        "acc before FT",
        "accuracy",
        "int8 acc",
        "tflite KiB",
        "latency ms",
        "latency ratio",
    )
    formats = {
        "MAC ratio": ".2f",
        "acc before FT": ".3f",
        "accuracy": ".3f",
        "int8 acc": ".3f",
        "tflite KiB": ".1f",
        "latency ms": ".3f",
        "latency ratio": ".2f",
    }

    def __str__(self) -> str:
        return text_table(self.rows, self.columns, self.formats)

    def to_markdown(self) -> str:
        return markdown_table(self.rows, self.columns, self.formats)


def run_demo(
    out_dir: str | Path = DEFAULT_OUT,
    methods=("decef", "svd"),
    budget: float = 0.5,
    epochs: int = 8,
    finetune_epochs: int = 3,
    size: int = 32,
    width: int = 32,
    bench_rounds: int = 30,
    seed: int = 0,
    verbose: bool = True,
) -> DemoResult:
    """Run the whole pipeline on real data, offline, in a few minutes.

    Trains a small CNN on scikit-learn's bundled digits (upsampled so the convs do real
    work), converts it with each method at a MAC budget, fine-tunes, exports int8
    ``.tflite`` files (checked against Keras), times them in LiteRT (2 threads) interleaved
    with the original, and prints one table. The output folder gets ``ranks.png``,
    ``accuracy_vs_macs.png`` (with matplotlib), each model as ``.keras`` and
    ``_int8.tflite``, each method's ``_conversion.md``, ``results.json`` and
    ``results.md``.

    Args:
        out_dir: The output folder (created).
        methods: The registered method names to convert with.
        budget: The share of the baseline's MACs to keep.
        epochs: The baseline's training epochs.
        finetune_epochs: The fine-tuning epochs of each converted model.
        size: The image side in pixels.
        width: The baseline's width (filters of its first conv).
        bench_rounds: The interleaved rounds of the LiteRT timing.
        seed: The random seed.
        verbose: Print progress and the table.

    Returns:
        The ``DemoResult``: the table's rows and the folder.
    """
    from .analysis import analyze
    from .compress import convert
    from .deploy import bench_tflite, export_tflite

    def say(msg):
        if verbose:
            print(msg, flush=True)

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    x_tr, y_tr, x_te, y_te = load_digits_images(size, seed=seed)
    say(f"[demo] digits {size}x{size}: {len(x_tr)} train, {len(x_te)} test images")

    base = baseline_cnn((size, size, 1), width)
    train(base, x_tr, y_tr, epochs, 3e-3, seed=seed)
    models = {"original": (base, None)}
    say(f"[demo] trained the baseline CNN: test accuracy {accuracy(base, x_te, y_te):.3f}")
    analyze(base, plot=out / "ranks.png", title="Effective rank of the baseline's filters")

    for method in methods:
        small, report = convert(base, method=method, budget={"macs": budget})
        before = accuracy(small, x_te, y_te)
        train(small, x_tr, y_tr, finetune_epochs, 1e-3, seed=seed)
        models[method] = (small, before)
        atomic_write_text(out / f"{method}_conversion.md", report.to_markdown() + "\n")
        say(f"[demo] {method}: converted at {budget:.0%} of the MACs, fine-tuned")

    base_macs = model_cost(base).total.macs
    rows, files = [], {}
    for name, (model, before) in models.items():
        with atomic_path(out / f"{name}.keras", what="model file") as tmp:
            model.save(tmp)
        path = out / f"{name}_int8.tflite"
        rep = export_tflite(
            model,
            path,
            quantize="int8",
            representative_data=x_tr[:200],
            num_calibration_steps=100,
            check_data=x_te,
            labels=y_te,
            num_check_samples=len(x_te),
            verbose=False,
        )
        files[name] = path
        cost = model_cost(model).total
        rows.append(
            {
                "model": name,
                "params": cost.params + cost.fixed_params,
                "MACs": cost.macs,
                "MAC ratio": cost.macs / base_macs,
                "acc before FT": before,
                "accuracy": accuracy(model, x_te, y_te),
                "int8 acc": rep.tflite_accuracy,
                "tflite KiB": rep.size_bytes / 1024,
            }
        )
    say("[demo] exported int8 .tflite files, timing them in LiteRT (2 threads, interleaved)")
    lat = bench_tflite(files, num_threads=2, rounds=bench_rounds, runs_per_round=5)
    for row in rows:
        row["latency ms"] = lat[row["model"]]["median_ms"]
        row["latency ratio"] = lat[row["model"]]["ratio"]

    result = DemoResult(rows, str(out.resolve()))
    _plot(rows, out / "accuracy_vs_macs.png")
    meta = {
        "budget_macs": budget,
        "epochs": epochs,
        "finetune_epochs": finetune_epochs,
        "size": size,
        "width": width,
        "seconds": time.perf_counter() - t0,
    }
    atomic_write_text(out / "results.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
    atomic_write_text(out / "results.md", result.to_markdown() + "\n")
    say("")
    say(str(result))
    say(
        f"\n[demo] done in {meta['seconds']:.0f} s; models, .tflite files, plots and tables "
        f"in {result.out_dir}"
    )
    return result


def _plot(rows, path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plot extra is optional
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["MACs"] / 1e6, r["accuracy"], label=r["model"])
        ax.annotate(r["model"], (r["MACs"] / 1e6, r["accuracy"]), fontsize=8)
    ax.set_xlabel("MACs (millions)")
    ax.set_ylabel("test accuracy (float)")
    ax.set_title("keras-eigenconv demo on digits")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path, what="plot") as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
