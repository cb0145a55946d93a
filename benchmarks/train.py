"""Training speed: images/s of ``fit`` for a CIFAR ResNet-20 and its compressed versions.

Every model is measured in the same run on the same data (random 32x32x3 images, batch
``--batch``): the plain ResNet-20, then DeCEF, SVD and Tucker-2 versions converted by
``keras_eigenconv.convert(model, method, budget={"macs": share})`` at about 2/3 and
1/3 of the MACs (Tucker-2 picks its own ranks: the ``energy`` that lands closest), with
each ``--implementations`` value ("auto" picks per layer, for ``fit`` by its training-step
cost model; "factorized" forces the factor ops; "measured" converts with "auto" and then
times each layer's two training paths on this machine, ``training.tune_implementations``);
with ``--latency-targets``, also models converted by ``convert(plain, method,
budget={"latency": x}, target=Target("train", batch=--batch))`` (per-layer ranks and
methods chosen by timed training steps). Every model is built, compiled and warmed up
(tracing) first; then ``--repeats`` rounds each run one epoch of ``--steps`` steps of every
model in turn (interleaved: a slow phase of the machine hits all alike). Images/s is from
the median epoch; "speed vs plain" is the median over rounds of the plain net's epoch time
over the model's in the same round, with its min-max. The "layers factorized/dense" column
counts what ``fit`` runs (``resolved_training_implementation``). Writes
``benchmarks/results/train.json`` and ``train.md`` (atomically).

    .venv/bin/python benchmarks/train.py                  # the full table (a few minutes)
    .venv/bin/python benchmarks/train.py --steps 3 --methods decef --shares 0.67
    .venv/bin/python benchmarks/train.py --implementations auto --latency-targets 0.75
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_eigenconv import convert as latency_convert  # noqa: E402
from keras_eigenconv import model_cost  # noqa: E402
from keras_eigenconv._io import atomic_write_text  # noqa: E402
from keras_eigenconv.compress import convert  # noqa: E402
from keras_eigenconv.deploy.timing import machine_summary  # noqa: E402
from keras_eigenconv.latency import Target  # noqa: E402
from keras_eigenconv.training import tune_implementations  # noqa: E402
from keras_eigenconv.zoo import cifar_resnet  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class _EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.last = time.perf_counter() - self._t


def compile_and_warm(model, ds) -> None:
    """Compile as the benchmark trains, then trace and warm up (two steps)."""
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)


def epoch_seconds(model, ds, steps: int) -> float:
    """Seconds of one ``fit`` epoch of ``steps`` steps (the model compiled and warm)."""
    timer = _EpochTimer()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    return timer.last


def convert_to_share(plain, method, share, impl, base_macs):
    """``convert`` with ``budget={"macs": share}``; for methods that choose their own ranks
    (Tucker-2), the ``energy`` whose model is closest to ``share`` (bisection)."""
    try:
        return convert(plain, method, budget={"macs": share}, implementation=impl, progress=False)
    except ValueError:
        pass
    lo, hi, best = 0.05, 1.0, None
    for _ in range(10):
        mid = (lo + hi) / 2
        model, report = convert(plain, method, energy=mid, implementation=impl, progress=False)
        ratio = model_cost(model).total.macs / base_macs
        if best is None or abs(ratio - share) < abs(best[2] - share):
            best = (model, report, ratio)
        lo, hi = (mid, hi) if ratio < share else (lo, mid)
    return best[0], best[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--methods", default="decef,svd,tucker2")
    p.add_argument("--shares", default="0.67,0.33", help="MAC shares of the plain model")
    p.add_argument("--implementations", default="auto,factorized")
    p.add_argument(
        "--latency-targets",
        default="",
        help="training-time shares for budget={'latency': x}, target='train' (e.g. 0.75)",
    )
    p.add_argument("--latency-methods", default="svd,decef", help="methods for --latency-targets")
    p.add_argument("--cache", default=None, help="training-step timing cache (JSON)")
    p.add_argument("--out", default=str(RESULTS / "train"))
    args = p.parse_args(argv)

    keras.utils.set_random_seed(0)
    load_start = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    x = rng.random((args.batch * 4, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, args.batch * 4).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch).repeat().prefetch(2)

    plain = cifar_resnet(20)
    base_cost = model_cost(plain).total
    entries = []  # (row, model): every model built first, then timed interleaved

    def add(name, method, share, impl, model, report=None):
        cost = model_cost(model).total
        row = {
            "model": name,
            "method": method,
            "target_mac_share": share,
            "implementation": impl,
            "macs": cost.macs,
            "mac_ratio": cost.macs / base_cost.macs,
            "params": cost.params,
        }
        if report is not None:
            impls = [  # what fit runs
                getattr(la, "resolved_training_implementation", None)
                for la in model._flatten_layers(include_self=False, recursive=True)
            ]
            row["layers_factorized"] = sum(i == "factorized" for i in impls)
            row["layers_dense"] = sum(i == "dense" for i in impls)
        entries.append((row, model))
        return row

    add("resnet20", "plain", 1.0, "-", plain)
    for method in args.methods.split(","):
        for share in (float(s) for s in args.shares.split(",")):
            for impl in args.implementations.split(","):
                # "measured": converted with "auto", then each layer's training path timed
                # on this machine (training.tune_implementations)
                convert_impl = "auto" if impl == "measured" else impl
                model, report = convert_to_share(plain, method, share, convert_impl, base_cost.macs)
                tuning = None
                if impl == "measured":
                    t0 = time.perf_counter()
                    model, tuning = tune_implementations(
                        model, batch_size=args.batch, cache_path=args.cache
                    )
                    tuning_s = time.perf_counter() - t0
                row = add(f"{method}@{share:.2f} ({impl})", method, share, impl, model, report)
                if tuning is not None:
                    row["tuning_s"] = tuning_s
                    row["tuning_changed"] = len(tuning.changed)
    for x in (float(s) for s in args.latency_targets.split(",") if s):
        t0 = time.perf_counter()
        try:
            model, report = latency_convert(
                plain,
                method=args.latency_methods.split(","),
                budget={"latency": x},
                target=Target("train", batch=args.batch),
                cache_path=args.cache,
                strict=False,
                progress=False,
            )
        except ValueError as err:  # below what the fastest candidates reach
            print(f"latency plan {x}: {err}", flush=True)
            continue
        m = report.latency.measured or {}
        print(
            f"latency plan {x}: measured step ratio {m.get('ratio', float('nan')):.3f} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        name = f"latency@{x:.2f} train ({args.latency_methods})"
        # the train target builds each layer with its measured faster training path
        row = add(name, "latency:" + args.latency_methods, None, "measured", model, report)
        row["latency_budget"] = x
        row["planned_step_ratio"] = m.get("ratio")

    for _, model in entries:
        compile_and_warm(model, ds)
    # rounds: every model one epoch in turn, so a slow phase of the machine hits all alike
    times = [[] for _ in entries]
    for rnd in range(args.repeats):
        for i, (_, model) in enumerate(entries):
            times[i].append(epoch_seconds(model, ds, args.steps))
        print(f"round {rnd + 1}/{args.repeats} done", flush=True)
    rows = [row for row, _ in entries]
    for row, t in zip(rows, times):
        row["images_per_s"] = args.steps * args.batch / statistics.median(t)
        # per round: the plain net's epoch time over this model's (the paired speed-up)
        paired = [p / m for p, m in zip(times[0], t)]
        row["speed_vs_plain"] = statistics.median(paired)
        row["speed_min"], row["speed_max"] = min(paired), max(paired)
        # goal: at least as fast as the plain net, faster in proportion to the MAC saving
        row["goal_speed"] = 1.0 / row["mac_ratio"]
        row["meets_goal"] = row["speed_vs_plain"] >= min(1.0, row["goal_speed"]) and (
            row["speed_vs_plain"] >= 1.0
        )
        print(
            f"{row['model']:<28} MACs {row['macs'] / 1e6:6.1f} M ({row['mac_ratio']:.2f})  "
            f"{row['images_per_s']:7.1f} img/s  {row['speed_vs_plain']:.2f}x",
            flush=True,
        )
    meta = {
        "machine": platform.platform(),
        "cpu": machine_summary(),
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "batch": args.batch,
        "steps": args.steps,
        "repeats": args.repeats,
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "load_average_1min": [load_start, os.getloadavg()[0]],  # at the start and the end
        "command": "benchmarks/train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"# fit speed, CIFAR ResNet-20 (batch {args.batch}, {meta['device']}, "
        f"{meta['cpus']} CPUs, TF {meta['tensorflow']}, Keras {meta['keras']})",
        "",
        f"Machine: {meta['cpu']}. {args.repeats} interleaved rounds of {args.steps} steps.",
        "",
        "| model | implementation | MACs (M) | MAC ratio | params | images/s | speed vs plain "
        "(min-max over rounds) | goal (1/MAC ratio) | layers factorized/dense |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        fd = f"{r['layers_factorized']}/{r['layers_dense']}" if "layers_factorized" in r else "-"
        lines.append(
            f"| {r['model']} | {r['implementation']} | {r['macs'] / 1e6:.1f} | "
            f"{r['mac_ratio']:.2f} | {r['params']:,} | {r['images_per_s']:.1f} | "
            f"{r['speed_vs_plain']:.2f}x ({r['speed_min']:.2f}-{r['speed_max']:.2f}) | "
            f"{r['goal_speed']:.2f}x | {fd} |"
        )
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
