"""Training-step time of single factorized layers against the Conv2D they replace.

What ``implementation="auto"`` chooses for training (``call(..., training=True)``, as ``fit``
runs it) is fitted to these timings (``cost.OP_TIME["tensorflow_train"]``). For CIFAR
ResNet-20 shapes at batch 128 (32x32x16, 16x16x32, 8x8x64, and the two stride-2 convs) and
ResNet-50-like shapes at batch 8 (56x56x64, 28x28x128, 14x14x256), 3x3 convs, each layer is
timed as one training step: the forward pass with ``training=True`` and the gradients of
``sum(y**2)/2`` with respect to the input and every trainable weight, in a ``tf.function``,
interleaved with the Conv2D in the same rounds (``deploy.timing.interleaved_samples``);
the ratio is the median over rounds of layer/conv in the same round, with p10-p90. DeCEF at
ranks 1, 2, 3, 5 (factorized, and rank 3 dense), SVD at 0.2-0.67 of the conv's MACs
(factorized, and one dense), Tucker-2 at 1/3 and 2/3. For each factorized layer the table
gives the training cost model's estimate and what ``"auto"`` runs in training.

    .venv/bin/python benchmarks/train_layers.py     # writes benchmarks/results/train_layers.*
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_eigenconv import DeCEFConv2D, SVDConv2D, Tucker2Conv2D  # noqa: E402
from keras_eigenconv.deploy.timing import interleaved_samples  # noqa: E402
from keras_eigenconv.layers.base import AUTO_TRAINING_THRESHOLD  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CASES = [  # (input shape, filters, stride, batch)
    ((32, 32, 16), 16, 1, 128),
    ((32, 32, 16), 32, 2, 128),
    ((16, 16, 32), 32, 1, 128),
    ((16, 16, 32), 64, 2, 128),
    ((8, 8, 64), 64, 1, 128),
    ((56, 56, 64), 64, 1, 8),
    ((28, 28, 128), 128, 1, 8),
    ((14, 14, 256), 256, 1, 8),
]


def step_fn(layer, shape, batch):
    x = tf.constant(np.random.default_rng(0).random((batch, *shape), dtype=np.float32))
    layer(x)
    weights = layer.trainable_weights

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = 0.5 * tf.reduce_sum(y * y)
        return tape.gradient(loss, [x, *weights])

    return step


def candidates(c, n, s):
    geo = {"strides": s, "padding": "same", "use_bias": False}
    out = {"conv": (None, lambda: keras.layers.Conv2D(n, 3, **geo))}
    for r in (1, 2, 3, 5):
        out[f"decef r{r}"] = (
            "factorized",
            lambda r=r: DeCEFConv2D(n, 3, rank=r, implementation="factorized", **geo),
        )
    out["decef r3 dense"] = (
        "dense",
        lambda: DeCEFConv2D(n, 3, rank=3, implementation="dense", **geo),
    )
    for frac in (0.2, 0.33, 0.5, 0.67):
        r = max(1, round(frac * 9 * c * n / (9 * c + n)))
        out[f"svd r{r}"] = (
            "factorized",
            lambda r=r: SVDConv2D(n, 3, rank=r, implementation="factorized", **geo),
        )
    r = max(1, round(0.33 * 9 * c * n / (9 * c + n)))
    out[f"svd r{r} dense"] = (
        "dense",
        lambda r=r: SVDConv2D(n, 3, rank=r, implementation="dense", **geo),
    )
    for frac in (0.33, 0.67):  # R1 = R2 = R: 9 R^2 + (C + N) R = frac * 9 C N
        r = max(1, round((-(c + n) + ((c + n) ** 2 + 4 * 9 * frac * 9 * c * n) ** 0.5) / 18))
        out[f"tucker2 r{r}"] = (
            "factorized",
            lambda r=r: Tucker2Conv2D(n, 3, rank=r, implementation="factorized", **geo),
        )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default=str(RESULTS / "train_layers"))
    args = p.parse_args(argv)
    keras.utils.set_random_seed(0)
    rows = []
    for shape, n, s, batch in CASES:
        c = shape[-1]
        cands = candidates(c, n, s)
        layers = {k: make() for k, (_, make) in cands.items()}
        steps = {k: step_fn(la, shape, batch) for k, la in layers.items()}
        samples = interleaved_samples(steps, rounds=args.rounds, min_round_s=0.05)
        conv = np.asarray(samples["conv"])
        for k, la in layers.items():
            ratios = np.asarray(samples[k]) / conv
            row = {
                "shape": "x".join(map(str, shape)),
                "filters": n,
                "stride": s,
                "batch": batch,
                "layer": k,
                "implementation": cands[k][0],
                "step_ms": float(np.median(samples[k])) * 1e3,
                "ratio": float(np.median(ratios)),
                "p10": float(np.percentile(ratios, 10)),
                "p90": float(np.percentile(ratios, 90)),
            }
            if cands[k][0] == "factorized":
                est = la.training_time_ratio_estimate((None, *shape))
                row["estimate"] = float(est)
                row["auto_training"] = "factorized" if est < AUTO_TRAINING_THRESHOLD else "dense"
            rows.append(row)
            est = ""
            if "estimate" in row:
                est = f"  est {row['estimate']:.2f} auto {row['auto_training']}"
            print(
                f"{row['shape']:>9} -> {n:<3} s{s} B{batch:<3} {k:<15} {row['ratio']:5.2f}x "
                f"({row['p10']:.2f}-{row['p90']:.2f}){est}",
                flush=True,
            )
    auto_f = [r for r in rows if r.get("auto_training") == "factorized"]
    summary = {
        "auto_factorized_layers": len(auto_f),
        "auto_factorized_max_ratio": max((r["ratio"] for r in auto_f), default=None),
        "auto_dense_layers": sum(r.get("auto_training") == "dense" for r in rows),
    }
    meta = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "rounds": args.rounds,
        "threshold": AUTO_TRAINING_THRESHOLD,
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1)
    )
    lines = [
        f"# Training step of single layers against the Conv2D (TF {meta['tensorflow']}, "
        f"{meta['cpus']} CPUs, {args.rounds} interleaved rounds)",
        "",
        f'Layers `"auto"` trains factorized: {summary["auto_factorized_layers"]}, the slowest '
        f"at {summary['auto_factorized_max_ratio']:.2f}x the conv's step; dense: "
        f"{summary['auto_dense_layers']}.",
        "",
        "| input | filters | stride | batch | layer | step ms | ratio | p10-p90 | estimate "
        "| auto (training) |",
        "|---|---:|---:|---:|---|---:|---:|---|---:|---|",
    ]
    for r in rows:
        est = f"{r['estimate']:.2f}" if "estimate" in r else ""
        lines.append(
            f"| {r['shape']} | {r['filters']} | {r['stride']} | {r['batch']} | {r['layer']} | "
            f"{r['step_ms']:.2f} | {r['ratio']:.2f}x | {r['p10']:.2f}-{r['p90']:.2f} | {est} | "
            f"{r.get('auto_training', '')} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
