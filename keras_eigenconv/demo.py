"""``keras-eigenconv demo``: the trade-off on real data, offline, in a few minutes.

Trains a small CNN on scikit-learn's bundled digits (upsampled to 32x32 so the convs do real
work), then converts the same trained model several ways: data-free and data-aware
(``calibration_data``), at MAC budgets and at a latency budget on LiteRT int8
(``method="auto"``), each as converted and fine-tuned. Every variant is exported as an int8
``.tflite`` (checked against Keras), its accuracy measured on the held-out digits, and all
are timed in LiteRT interleaved with the original (median and p10-p90 over the rounds).
One table, one line saying which to ship, one summary PNG; the output folder also gets the
``.tflite`` files, each conversion report, ``results.json`` (with the command, machine,
versions and seeds) and ``results.md``.

The functions here (data, baseline network, training) are also used by
``benchmarks/pareto.py`` and ``benchmarks/post_training.py``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
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
    "Conversion",
    "DemoResult",
    "accuracy",
    "baseline_cnn",
    "demo_plan",
    "load_digits_images",
    "pareto_front",
    "run_demo",
    "ship_choice",
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


def train(
    model, x, y, epochs: int, lr: float, batch_size: int = 64, seed: int = 0, callbacks=None
) -> list:
    """Compile (Adam, sparse cross-entropy from logits) and fit a model.

    Args:
        model: The model (it outputs logits).
        x: The training images.
        y: The training labels.
        epochs: The number of epochs; 0 or less only compiles.
        lr: Adam's learning rate.
        batch_size: The batch size.
        seed: The random seed set before fitting.
        callbacks: Keras callbacks for ``fit`` (e.g. a progress display), or None.

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
    hist = model.fit(
        x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True, callbacks=callbacks
    )
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


@dataclass(frozen=True)
class Conversion:
    """One conversion of the demo's trained baseline.

    Attributes:
        method: A registered method name, or ``"auto"`` (with a latency budget: the method
            is chosen per layer).
        budget: ``{"macs": x}`` (share of the baseline's MACs) or ``{"latency": x}`` (share
            of its latency on ``target``).
        data_aware: Convert with ``calibration_data`` (response error, refit, BatchNorm
            correction) instead of from the kernels alone.
        finetune: Also report the converted model after fine-tuning it.
        target: The latency target (``"litert-int8"``) of a latency budget, else None.
    """

    method: str
    budget: dict
    data_aware: bool
    finetune: bool
    target: str | None = None

    @property
    def label(self) -> str:
        """The conversion in words, e.g. ``svd, MACs<=0.50, data-aware``."""
        kind, x = next(iter(self.budget.items()))
        where = f" {self.target.split('-')[-1]}" if self.target else ""
        data = "data-aware" if self.data_aware else "data-free"
        kind = {"macs": "MACs"}.get(kind, kind)
        return f"{self.method}, {kind}<={x:.2f}{where}, {data}"

    @property
    def slug(self) -> str:
        """A file-name-safe name, e.g. ``svd_macs50_data``."""
        kind, x = next(iter(self.budget.items()))
        return f"{self.method}_{kind}{round(100 * x)}_{'data' if self.data_aware else 'free'}"


def demo_plan(
    methods=("svd", "decef"),
    budget: float = 0.5,
    latency_budget: float | None = 0.6,
    quick: bool = False,
) -> list[Conversion]:
    """The conversions the demo runs.

    Full: the first method at ``budget`` of the MACs data-free and data-aware (fine-tuned);
    every other method data-aware at ``budget``; the first method data-aware at
    ``0.6 * budget`` (fine-tuned); ``method="auto"`` at ``latency_budget`` of the LiteRT int8
    latency, data-aware (fine-tuned). Quick: the first method data-free and data-aware
    (fine-tuned) and the first method at the latency budget, data-aware.

    Args:
        methods: Registered method names for the MAC budgets.
        budget: The share of the baseline's MACs to keep, in (0, 1].
        latency_budget: The share of the baseline's LiteRT int8 latency, in (0, 1], or None
            for no latency-budget conversion.
        quick: The reduced plan.

    Returns:
        The ``Conversion`` list, in table order.

    Raises:
        ValueError: When a budget is outside (0, 1] or ``methods`` is empty.
    """
    if not methods:
        raise ValueError("demo: methods must name at least one method, e.g. ('svd',).")
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"demo: --budget must be in (0, 1], got {budget}")
    if latency_budget is not None and not 0.0 < latency_budget <= 1.0:
        raise ValueError(f"demo: --latency-budget must be in (0, 1], got {latency_budget}")
    first, macs = methods[0], {"macs": budget}
    plan = [Conversion(first, macs, False, False), Conversion(first, macs, True, True)]
    if not quick:
        plan += [Conversion(m, macs, True, False) for m in methods[1:]]
        plan.append(Conversion(first, {"macs": round(0.6 * budget, 2)}, True, True))
    if latency_budget is not None:
        lat = {"latency": latency_budget}
        # quick: the main method only (method="auto" plans every method a latency budget
        # takes: slower)
        how = first if quick else "auto"
        plan.append(Conversion(how, lat, True, not quick, target="litert-int8"))
    return plan


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """The indices of the points no other point beats in both latency and accuracy.

    Args:
        points: ``(latency, accuracy)`` pairs; lower latency and higher accuracy are better.

    Returns:
        The indices of the non-dominated points, by increasing latency.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def ship_choice(rows: list[dict], tolerance: float = 0.01) -> tuple[dict, str]:
    """Pick the variant to ship: the fastest whose int8 accuracy is within ``tolerance`` of
    the original's.

    Args:
        rows: The demo's rows (the original first) with ``int8 acc``, ``latency ms``,
            ``p10 ms``, ``p90 ms`` and ``variant``.
        tolerance: The accuracy a variant may lose (0.01: one point).

    Returns:
        ``(row, reason)``: the chosen row and one sentence saying why (the original when
        no variant is faster within the tolerance).
    """
    base = rows[0]
    ok = [r for r in rows if r["int8 acc"] >= base["int8 acc"] - tolerance - 1e-12]
    best = min(ok, key=lambda r: r["latency ms"])
    if best is base:
        return base, (
            f"no variant within {100 * tolerance:.0f} point of the original's int8 accuracy "
            f"({base['int8 acc']:.3f}) is faster than it."
        )
    clear = best["p90 ms"] < base["p10 ms"]
    spread = "its p90 below the original's p10" if clear else "but the p10-p90 ranges overlap"
    return best, (
        f"the fastest within {100 * tolerance:.0f} point of the original's int8 accuracy: "
        f"{best['int8 acc']:.3f} vs {base['int8 acc']:.3f}, {best['latency ratio']:.2f}x its "
        f"latency ({best['latency ms']:.3f} vs {base['latency ms']:.3f} ms median, {spread}), "
        f"{best['tflite KB']:.0f} vs {base['tflite KB']:.0f} KB."
    )


@dataclass
class DemoResult:
    """The table of a demo run.

    It prints as a text table (``str``) and a Markdown table (``to_markdown``).

    Attributes:
        rows: One dict per variant (``original`` first): ``variant``, ``fine-tuned``
            (epochs), ``params``, ``MACs``, ``MAC ratio``, ``float acc`` (Keras),
            ``int8 acc`` (the int8 ``.tflite`` on the test split), ``tflite KB``,
            ``latency ms`` (median), ``p10 ms``, ``p90 ms``, ``latency ratio`` (median over
            the original's), ``file``.
        ship: The row to ship (``ship_choice``).
        reason: Why, in one sentence.
        header: The lines above the table (data, test size, timing set-up).
        out_dir: The absolute path of the output folder.
        notes: Conversions that could not be made (e.g. an unreachable latency budget).
    """

    rows: list[dict] = field(default_factory=list)
    ship: dict | None = None
    reason: str = ""
    header: list[str] = field(default_factory=list)
    out_dir: str = ""
    notes: list[str] = field(default_factory=list)

    columns = (
        "#",
        "variant",
        "fine-tuned",
        "MACs",
        "MAC ratio",
        "tflite KB",
        "int8 acc",
        "latency ms",
        "p10-p90 ms",
        "latency ratio",
    )
    formats = {
        "MAC ratio": ".2f",
        "int8 acc": ".3f",
        "tflite KB": ".1f",
        "latency ms": ".3f",
        "latency ratio": ".2f",
    }

    def _rows(self) -> list[dict]:
        out = []
        for i, r in enumerate(self.rows):
            ft = r["fine-tuned"]
            out.append(
                {
                    **r,
                    "#": i,
                    "fine-tuned": f"{ft} ep" if ft else "-",
                    "p10-p90 ms": f"{r['p10 ms']:.3f}-{r['p90 ms']:.3f}",
                }
            )
        return out

    def ship_line(self) -> str:
        """The line that says which variant to ship and why."""
        if self.ship is None:
            return ""
        return f"Ship #{self.rows.index(self.ship)} {self.ship['variant']}: {self.reason}"

    def __str__(self) -> str:
        parts = [*self.header, "", text_table(self._rows(), self.columns, self.formats)]
        parts += ["", *self.notes] if self.notes else []
        return "\n".join([*parts, "", self.ship_line()])

    def to_markdown(self) -> str:
        """The header, the table and the ship line as Markdown.

        Returns:
            The Markdown text.
        """
        table = markdown_table(self._rows(), self.columns, self.formats)
        notes = "".join(f"\n{n}\n" for n in self.notes)
        return "\n".join(self.header) + f"\n\n{table}\n{notes}\n**{self.ship_line()}**\n"


class _Progress:
    """Step progress on a stream: a redrawn bar on a terminal, else one line per step."""

    def __init__(self, total: int, stream, enabled: bool):
        self.total, self.stream, self.enabled = total, stream, enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.n, self.name, self.t0, self.start = 0, "", 0.0, time.perf_counter()

    def _draw(self, detail: str = "") -> None:
        width = 24
        done = int(width * self.n / max(self.total, 1))
        text = f"{self.name} {detail}".strip()
        line = (
            f"[{'#' * done}{'.' * (width - done)}] {self.n}/{self.total} "
            f"{time.perf_counter() - self.start:5.0f}s {text}"
        )
        cols = shutil.get_terminal_size((100, 24)).columns - 1  # one line, never wrapped
        self.stream.write(f"\r{line[:cols]:<{cols}}")
        self.stream.flush()

    def step(self, name: str) -> None:
        self.name, self.t0 = name, time.perf_counter()
        if self.tty:
            self._draw()

    def update(self, detail: str) -> None:
        if self.tty:
            self._draw(detail)

    def done(self, summary: str = "") -> None:
        self.n += 1
        if not self.enabled:
            return
        if self.tty:
            self._draw(summary)
            if self.n >= self.total:
                cols = shutil.get_terminal_size((100, 24)).columns - 1
                self.stream.write("\r" + " " * cols + "\r")
                self.stream.flush()
            return
        took = time.perf_counter() - self.t0
        tail = f": {summary}" if summary else ""
        self.stream.write(f"[demo {self.n}/{self.total}] {self.name}{tail} ({took:.1f} s)\n")
        self.stream.flush()

    def epochs(self, total: int):
        bar = self

        class _Epochs(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                bar.update(f"(epoch {epoch + 1}/{total})")

        return [_Epochs()]


def _machine() -> dict:
    from .deploy.timing import machine_info

    info = machine_info()
    out = {
        "cpu": info["cpu"],
        "isa": info["isa"],
        "cores": info["cpus"],
        "platform": info["platform"],
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        out["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    return out


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("keras-eigenconv", "tensorflow", "keras", "ai-edge-litert", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _layer_rows(report) -> list[dict]:
    return [
        {
            "name": r.name,
            "type": r.type,
            "method": r.method,
            "rank": r.rank,
            "replaced": r.replaced,
            "macs_before": r.macs_before,
            "macs_after": r.macs_after,
            "relative_error": r.relative_error,
            "output_error": r.output_error,
        }
        for r in report.layers
    ]


def run_demo(
    out_dir: str | Path = DEFAULT_OUT,
    methods=("svd", "decef"),
    budget: float = 0.5,
    latency_budget: float | None = 0.6,
    epochs: int = 6,
    finetune_epochs: int = 2,
    size: int = 32,
    width: int = 32,
    calibration_samples: int = 128,
    bench_rounds: int = 40,
    quick: bool = False,
    seed: int = 0,
    verbose: bool = True,
    progress: bool = True,
    command: str | None = None,
    cache_path: str | Path | None = None,
) -> DemoResult:
    """Run the demo: train, convert several ways, fine-tune, export int8, time, plot.

    The baseline (``baseline_cnn``) is trained on digits (``load_digits_images``), then
    converted by each ``Conversion`` of ``demo_plan`` with ``keras_eigenconv.convert``
    (data-aware ones with ``calibration_data`` = the first ``calibration_samples`` training
    images; the latency budget on ``"litert-int8"``, with ``method="auto"``, or the first
    method in a quick run, with two ranks per layer and two whole-model measurements). Every
    variant (each conversion as converted, and fine-tuned for ``finetune_epochs`` where the plan
    says so) is exported to an int8 ``.tflite`` calibrated on 200 training images and
    checked on the whole test split, whose accuracy is the table's; then all files are
    timed together in LiteRT (2 threads, batch 1, ``bench_rounds`` interleaved rounds, each
    of as many calls as take the original about 20 ms, at least 10; the original first),
    giving each one's median and p10-p90 of the per-call time over the rounds.

    Files in ``out_dir``: ``<variant>_int8.tflite``, ``original.keras`` and the shipped
    variant's ``.keras``, ``<conversion>_conversion.md``, ``summary.png`` (with matplotlib),
    ``results.json`` (rows, per-layer ranks/MACs/errors, command, machine with its load
    average at the start and the end, versions, seed, settings, seconds) and ``results.md``.
    A seed fixes the data split, the initialization and the training; the LiteRT timings
    (and so a latency-budget plan) vary with the machine and its load.

    Args:
        out_dir: The output folder (created).
        methods: Registered method names for the MAC budgets (the first is the main one).
        budget: The share of the baseline's MACs to keep, in (0, 1].
        latency_budget: The share of the baseline's LiteRT int8 latency, in (0, 1], or None.
        epochs: The baseline's training epochs.
        finetune_epochs: The fine-tuning epochs (0: no fine-tuned rows).
        size: The image side in pixels.
        width: The baseline's width (filters of its first conv).
        calibration_samples: Unlabeled training images for the data-aware conversions.
        bench_rounds: The interleaved rounds of the LiteRT timing.
        quick: The reduced plan (``demo_plan(quick=True)``).
        seed: The random seed (data split, initialization, training).
        verbose: Print the table and the ship line to stdout.
        progress: Show step progress on stderr: a redrawn bar on a terminal, one line per
            finished step otherwise.
        command: The command line recorded in ``results.json`` (default ``sys.argv``).
        cache_path: The LiteRT timing cache (default ``deploy.default_cache_path()``).

    Returns:
        The ``DemoResult``.

    Raises:
        ValueError: When a budget is outside (0, 1], a count is not positive or a method is
            unknown (before any work).
    """
    from .compress import get_method
    from .deploy import bench_tflite, export_tflite
    from .latency import convert

    plan = demo_plan(tuple(methods), budget, latency_budget, quick)
    for c in plan:
        if c.method != "auto":
            get_method(c.method)
    for name, value in (
        ("epochs", epochs),
        ("size", size),
        ("width", width),
        ("calibration_samples", calibration_samples),
        ("bench_rounds", bench_rounds),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"demo: {name} must be an int >= 1, got {value!r}.")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int):
        raise ValueError(f"demo: finetune_epochs must be an int >= 0, got {finetune_epochs!r}.")
    if finetune_epochs < 0:
        raise ValueError(f"demo: finetune_epochs must be an int >= 0, got {finetune_epochs!r}.")

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    machine = _machine()
    tuned = [c.finetune and finetune_epochs > 0 for c in plan]
    # train, export the original, per conversion convert + export (+ fine-tune + export),
    # time, plot
    bar = _Progress(2 + sum(2 + 2 * t for t in tuned) + 2, sys.stderr, progress)

    keras.utils.set_random_seed(seed)
    x_tr, y_tr, x_te, y_te = load_digits_images(size, seed=seed)
    calib = x_tr[:calibration_samples]
    bar.step(f"training the baseline CNN ({epochs} epochs)")
    base = baseline_cnn((size, size, 1), width)
    train(base, x_tr, y_tr, epochs, 3e-3, seed=seed, callbacks=bar.epochs(epochs))
    base_acc = accuracy(base, x_te, y_te)
    bar.done(f"test accuracy {base_acc:.3f}")
    base_macs = model_cost(base).total.macs

    rows, files, conversions, notes, models = [], {}, [], [], {}

    def export(model, name, variant, ft, extra):
        bar.step(f"exporting {name}_int8.tflite")
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
            cache_path=cache_path,
            strategy="cost_model" if quick else "measure",
            verbose=False,
        )
        cost = model_cost(model).total
        files[name] = path
        models[name] = model
        rows.append(
            {
                "variant": variant,
                "fine-tuned": ft,
                "params": cost.params + cost.fixed_params,
                "MACs": cost.macs,
                "MAC ratio": cost.macs / base_macs,
                "float acc": rep.keras_accuracy,
                "int8 acc": rep.tflite_accuracy,
                "tflite KB": rep.size_bytes / 1000,
                "file": path.name,
                **extra,
            }
        )
        bar.done(f"int8 accuracy {rep.tflite_accuracy:.3f}, {rep.size_bytes / 1000:.0f} KB")

    export(base, "original", "original", 0, {})
    for c in plan:
        bar.step(f"converting: {c.label}")
        kwargs = {"method": c.method, "budget": c.budget, "progress": False}  # one bar: ours
        if c.data_aware:
            kwargs.update(calibration_data=calib, calibration_batch_size=64)
        if c.target:
            # every candidate timed in LiteRT (cached); quick: two ranks per layer and two
            # whole-model measurements (a cost model fitted to a fresh cache has nothing to
            # learn from: it refused budgets the measured model met)
            kwargs.update(target=c.target, strict=False, cache_path=cache_path)
            if quick:
                kwargs.update(ranks_per_layer=2, feedback_rounds=2)
        try:
            small, report = convert(base, **kwargs)
        except ValueError as err:
            if not c.target:
                raise
            notes.append(f"Not made: {c.label}: {' '.join(str(err).split())}")
            bar.done("not reachable")
            bar.n += 1 + 2 * (c.finetune and finetune_epochs > 0)  # the skipped steps
            continue
        atomic_write_text(out / f"{c.slug}_conversion.md", report.to_markdown() + "\n")
        conv = {
            "label": c.label,
            "slug": c.slug,
            "method": c.method,
            "budget": c.budget,
            "target": c.target,
            "data_aware": c.data_aware,
            "macs_ratio": report.macs_ratio,
            "budget_met": report.budget_met,
            "seconds": report.seconds,
            "layers": _layer_rows(report),
        }
        conversions.append(conv)
        if report.budget_met is False:
            notes.append(
                f"Budget missed: {c.label}: the converter reports budget_met=False (see "
                f"{c.slug}_conversion.md); the latency ratio in the table is this run's own "
                "measurement."
            )
        bar.done(f"{report.macs_ratio:.2f} of the MACs")
        extra = {"conversion": c.slug}
        export(small, c.slug, c.label, 0, extra)
        if c.finetune and finetune_epochs > 0:
            bar.step(f"fine-tuning: {c.label} ({finetune_epochs} epochs)")
            train(small, x_tr, y_tr, finetune_epochs, 1e-3, seed=seed)
            bar.done()
            export(small, f"{c.slug}_ft", c.label, finetune_epochs, extra)

    bar.step(f"timing {len(files)} .tflite files in LiteRT ({bench_rounds} interleaved rounds)")
    # rounds of about 20 ms of the original each (10 calls at least), so that a round's
    # mean is not one scheduler tick: sized from a short first pass
    probe = bench_tflite({"original": files["original"]}, num_threads=2, rounds=3, warmup=5)
    calls = int(min(2000, max(10, 0.02e3 / max(probe["original"]["median_ms"], 1e-3))))
    lat = bench_tflite(files, num_threads=2, rounds=bench_rounds, warmup=5, runs_per_round=calls)
    for row, name in zip(rows, files):
        t = lat[name]
        row.update(
            {
                "latency ms": t["median_ms"],
                "p10 ms": t["p10_ms"],
                "p90 ms": t["p90_ms"],
                "latency ratio": t["ratio"],
            }
        )
    bar.done()

    ship, reason = ship_choice(rows)
    ship_name = list(files)[rows.index(ship)]
    for name in {"original", ship_name}:
        with atomic_path(out / f"{name}.keras", what="model file") as tmp:
            models[name].save(tmp)
    header = [
        f"keras-eigenconv demo: digits {size}x{size} ({len(x_tr)} train images); accuracy of "
        f"each int8 .tflite on the {len(x_te)} held-out images (1 image = "
        f"{100 / len(x_te):.2f} points)",
        f"latency: LiteRT int8, batch 1, 2 threads, median and p10-p90 over {bench_rounds} "
        f"interleaved rounds of {calls} calls each, ratio against the original in the same run; "
        f"data-aware: {len(calib)} unlabeled training images",
    ]
    result = DemoResult(rows, ship, reason, header, str(out.resolve()), notes)
    bar.step("plotting summary.png")
    plotted = _plot_summary(rows, conversions, ship, out / "summary.png")
    bar.done()
    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    meta = {
        "command": command or " ".join(["keras-eigenconv", *sys.argv[1:]]),
        "machine": machine,
        "versions": _versions(),
        "seed": seed,
        "settings": {
            "quick": quick,
            "methods": list(methods),
            "budget_macs": budget,
            "latency_budget": latency_budget,
            "epochs": epochs,
            "finetune_epochs": finetune_epochs,
            "size": size,
            "width": width,
            "calibration_samples": len(calib),
            "bench_rounds": bench_rounds,
            "bench_runs_per_round": calls,
            "threads": 2,
            "train_images": len(x_tr),
            "test_images": len(x_te),
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    load = ""
    if "load_average_start" in machine:
        start, end = machine["load_average_start"][0], machine["load_average_end"][0]
        load = f", 1-minute load average {start:.1f} at the start, {end:.1f} at the end"
    payload = {
        "meta": meta,
        "rows": rows,
        "ship": {"index": rows.index(ship), "variant": ship["variant"], "reason": reason},
        "notes": notes,
        "conversions": conversions,
    }
    atomic_write_text(out / "results.json", json.dumps(payload, indent=1) + "\n")
    atomic_write_text(
        out / "results.md",
        result.to_markdown() + f"\nCommand: `{meta['command']}`; {meta['seconds']:.0f} s on "
        f"{machine['cpu']} ({machine['cores']} cores{load}); seed {seed}.\n",
    )
    if verbose:
        print(str(result))
        made = "summary.png, " if plotted else ""
        print(
            f"\n{meta['seconds']:.0f} s. {made}.tflite files, conversion reports and "
            f"results.{{md,json}} in {result.out_dir}",
            flush=True,
        )
    return result


def _plot_summary(rows, conversions, ship, path) -> bool:
    """One PNG page: accuracy vs measured latency (Pareto front), per-layer rank, MAC share
    and error. A ``matplotlib.figure.Figure`` on the Agg canvas: no pyplot state, no
    backend switch. Returns False without matplotlib (the ``plot`` extra)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    fig = Figure(figsize=(13, 9.5), dpi=110)
    FigureCanvasAgg(fig)
    (ax_p, ax_r), (ax_m, ax_e) = fig.subplots(2, 2)
    colors = {c["slug"]: f"C{i + 1}" for i, c in enumerate(conversions)}

    # accuracy vs latency, every variant; horizontal bars: p10-p90 over the rounds
    pts = [(r["latency ms"], 100 * r["int8 acc"]) for r in rows]
    for i, r in enumerate(rows):
        x, y = pts[i]
        err = [[x - r["p10 ms"]], [r["p90 ms"] - x]]
        if i == 0:
            style = dict(marker="*", ms=16, color="black")
        else:
            style = dict(
                marker="D" if r["fine-tuned"] else "o",
                ms=8,
                color=colors.get(r.get("conversion"), "grey"),
                mfc="white" if not r["fine-tuned"] else None,
            )
        ft = f" +FT {r['fine-tuned']} ep" if r["fine-tuned"] else ""
        ax_p.errorbar(
            [x], [y], xerr=err, capsize=3, lw=1, label=f"#{i} {r['variant']}{ft}", **style
        )
        ax_p.annotate(f"#{i}", (x, y), xytext=(5, 4), textcoords="offset points", fontsize=8)
    front = pareto_front(pts)
    ax_p.step(
        [pts[i][0] for i in front],
        [pts[i][1] for i in front],
        where="post",
        color="0.4",
        ls="--",
        lw=1,
        label="Pareto front",
    )
    s = rows.index(ship)
    ax_p.plot(*pts[s], marker="o", ms=18, mfc="none", mec="red", mew=1.5, ls="", label="ship")
    ax_p.set_xlabel("LiteRT int8 latency, batch 1 (ms; median, bars p10-p90)")
    ax_p.set_ylabel("int8 test accuracy (%)")
    ax_p.set_title("Accuracy vs measured latency (original: black star)")
    ax_p.grid(alpha=0.3)
    ax_p.legend(fontsize=6, loc="best", framealpha=0.6, markerscale=0.6)

    # the layers every conversion report lists (the model's convs and dense, in order)
    names = [la["name"] for la in (conversions[0]["layers"] if conversions else [])]
    xs = np.arange(len(names))

    def bars(ax, value, first=None):
        groups = ([first] if first else []) + [
            (c["label"], colors[c["slug"]], c["layers"]) for c in conversions
        ]
        w = 0.8 / max(len(groups), 1)
        for k, (label, color, layers) in enumerate(groups):
            vals = [value(la) for la in layers]
            ax.bar(
                xs - 0.4 + w * (k + 0.5),
                [v or 0 for v in vals],
                w,
                color=color,
                label=label,
            )
        ax.set_xticks(xs, names, rotation=20, fontsize=8)
        ax.set_xlabel("layer (model order)")
        ax.grid(axis="y", alpha=0.3)

    bars(
        ax_r,
        lambda la: la["rank"] if la["replaced"] and isinstance(la["rank"], int) else 0,
    )
    ax_r.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_r.set_ylabel("rank (factors kept, integer)")
    ax_r.set_title("Per-layer rank (no bar: layer kept as it was)")
    ax_r.legend(fontsize=6.5)

    layers0 = conversions[0]["layers"] if conversions else []
    total = max(1, sum(la["macs_before"] or 0 for la in layers0))
    bars(
        ax_m,
        lambda la: 100 * ((la["macs_after"] if la["replaced"] else la["macs_before"]) or 0) / total,
        first=("original", "0.2", [dict(la, replaced=False) for la in layers0]),
    )
    ax_m.set_ylabel("MACs (% of the original's conv + dense MACs)")
    ax_m.set_title("Per-layer MAC share")
    ax_m.legend(fontsize=6.5)

    bars(
        ax_e,
        lambda la: (
            (la["output_error"] if la["output_error"] is not None else la["relative_error"])
            if la["replaced"]
            else 0
        ),
    )
    ax_e.set_ylabel("relative error (dimensionless)")
    ax_e.set_title(
        "Per-layer error from the conversion report\n(data-aware: layer output error on "
        "held-out calibration images;\ndata-free: kernel ||W - W_r|| / ||W||)",
        fontsize=9,
    )
    ax_e.legend(fontsize=6.5)
    fig.suptitle("keras-eigenconv demo: one trained digits CNN, converted several ways")
    fig.tight_layout()
    with atomic_path(path, what="plot") as tmp:
        fig.savefig(tmp, format="png")
    return True
