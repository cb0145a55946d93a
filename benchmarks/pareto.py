"""Accuracy against cost: every method at several MAC budgets, on real data.

Fine-tune mode (default): train the baseline CNN of ``keras_eigenconv.demo`` on the data,
then for each method and budget convert it (``keras_eigenconv.convert``, budget on MACs),
record test accuracy before and after a fixed number of fine-tuning epochs, parameters,
MACs and LiteRT fp32 latency (batch 1, 2 threads, timed interleaved with the baseline).

Scratch mode (``--from-scratch``): the same architectures (ranks chosen at each budget) are
re-initialized and trained from scratch for as many epochs as the baseline.

    python benchmarks/pareto.py                   # digits, writes benchmarks/results/pareto*
    python benchmarks/pareto.py --from-scratch
    python benchmarks/pareto.py --dataset cifar10 # any tfds image dataset present locally

Writes JSON, a Markdown table and a PNG plot of accuracy against MACs, one line per method.
Seeded: the same command gives the same accuracies on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_eigenconv import demo  # noqa: E402
from keras_eigenconv._table import markdown_table  # noqa: E402
from keras_eigenconv.cost import model_cost  # noqa: E402

DEFAULT_METHODS = ("decef", "basis", "svd", "svd_spatial", "tucker2")  # cp: no budgets (ALS)


def load_data(name: str, size: int, seed: int):
    if name == "digits":
        return demo.load_digits_images(size, seed=seed)
    import tensorflow_datasets as tfds

    try:
        train, test = tfds.load(name, split=["train", "test"], as_supervised=True, download=False)
    except Exception as err:  # noqa: BLE001 - tfds raises many types for a missing dataset
        raise SystemExit(
            f"dataset {name!r} is not prepared locally ({err}); run "
            f"`python -c \"import tensorflow_datasets as tfds; tfds.load('{name}')\"` with "
            "internet access first"
        ) from err

    def arrays(ds):
        xs, ys = [], []
        for x, y in tfds.as_numpy(ds):
            xs.append(keras.ops.convert_to_numpy(keras.ops.image.resize(x, (size, size))))
            ys.append(y)
        return np.stack(xs).astype("float32") / 255.0, np.array(ys, "int32")

    return (*arrays(train), *arrays(test))


def litert_latency(models: dict, shape) -> dict:
    from keras_eigenconv.deploy import bench_tflite, export_tflite

    tmp = Path(tempfile.mkdtemp())
    files = {}
    for name, m in models.items():
        files[name] = tmp / f"{name}.tflite"
        export_tflite(m, files[name], check_data=np.zeros((1, *shape), "float32"), verbose=False)
    return bench_tflite(files, rounds=15, runs_per_round=5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--budgets", type=float, nargs="+", default=[0.75, 0.5, 0.25])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--from-scratch", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "pareto"))
    args = p.parse_args()

    from keras_eigenconv.compress import convert

    keras.utils.set_random_seed(args.seed)
    x_tr, y_tr, x_te, y_te = load_data(args.dataset, args.size, args.seed)
    shape = x_tr.shape[1:]
    classes = int(max(y_tr.max(), y_te.max()) + 1)
    base = demo.baseline_cnn(shape, args.width, classes)
    demo.train(base, x_tr, y_tr, args.epochs, 3e-3, seed=args.seed)
    base_cost = model_cost(base).total
    rows = [
        {
            "method": "baseline",
            "budget": 1.0,
            "params": base_cost.total_params,
            "macs": base_cost.macs,
            "mac_ratio": 1.0,
            "acc_before": None,
            "accuracy": demo.accuracy(base, x_te, y_te),
        }
    ]
    models = {"baseline": base}
    for method in args.methods:
        for budget in args.budgets:
            try:
                small, _ = convert(base, method=method, budget={"macs": budget})
            except (ValueError, KeyError) as err:
                print(f"skip {method} @ {budget}: {err}")
                continue
            if args.from_scratch:
                small = keras.models.clone_model(small)  # fresh initialization, same ranks
                before = None
                demo.train(small, x_tr, y_tr, args.epochs, 3e-3, seed=args.seed)
            else:
                before = demo.accuracy(small, x_te, y_te)
                demo.train(small, x_tr, y_tr, args.finetune_epochs, 1e-3, seed=args.seed)
            cost = model_cost(small).total
            key = f"{method}@{budget}"
            models[key] = small
            rows.append(
                {
                    "method": method,
                    "budget": budget,
                    "params": cost.total_params,
                    "macs": cost.macs,
                    "mac_ratio": cost.macs / base_cost.macs,
                    "acc_before": before,
                    "accuracy": demo.accuracy(small, x_te, y_te),
                }
            )
            print(
                f"{key}: MAC ratio {rows[-1]['mac_ratio']:.2f} accuracy {rows[-1]['accuracy']:.3f}",
                flush=True,
            )
    lat = litert_latency(models, shape)
    for row, key in zip(rows, models):
        row["latency_ms"] = lat[key]["median_ms"]
        row["latency_ratio"] = lat[key]["ratio"]

    out = Path(args.out + ("_scratch" if args.from_scratch else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = vars(args) | {"mode": "from scratch" if args.from_scratch else "convert+fine-tune"}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    cols = [
        "method",
        "budget",
        "params",
        "macs",
        "mac_ratio",
        "acc_before",
        "accuracy",
        "latency_ms",
        "latency_ratio",
    ]
    fmts = {
        "mac_ratio": ".2f",
        "acc_before": ".3f",
        "accuracy": ".3f",
        "latency_ms": ".3f",
        "latency_ratio": ".2f",
    }
    md = markdown_table(rows, cols, fmts)
    out.with_suffix(".md").write_text(
        f"# Accuracy vs cost ({meta['mode']}, {args.dataset})\n\n{md}\n"
    )
    print(md)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in args.methods:
        pts = sorted((r["macs"], r["accuracy"]) for r in rows if r["method"] == method)
        if pts:
            ax.plot([m / 1e6 for m, _ in pts], [a for _, a in pts], marker="o", label=method)
    ax.scatter(
        [base_cost.macs / 1e6],
        [rows[0]["accuracy"]],
        c="k",
        marker="*",
        s=120,
        label="baseline",
        zorder=3,
    )
    ax.set_xlabel("MACs (millions)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{args.dataset}: {meta['mode']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
