"""Time each factorized layer and implementation against the Conv2D it replaces.

For ResNet-like shapes (56x56x64, 28x28x128, 14x14x256, 7x7x512; 3x3 convs C -> C), batch 1
and 32, each candidate is initialized from the same random Conv2D at a rank giving about
2/3 and 1/3 of its MACs, and timed for the forward pass (inference) and forward+backward
(a training step's gradients), interleaved with the Conv2D in the same run. Ratios below 1
mean faster than the Conv2D.

    python benchmarks/layers.py            # full run, writes benchmarks/results/layers.{json,md}
    python benchmarks/layers.py --quick    # batch 1 only, fewer repeats

Other layer modules add factories to ``CANDIDATES``: ``(label, class, options)``; the class
must offer ``from_conv2d(conv, rank=, implementation=, **options)`` and ``cost``.
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

from keras_eigenconv import BasisConv2D, DeCEFConv2D, SVDConv2D  # noqa: E402
from keras_eigenconv.layers import SSConv2D, TTConv2D, Tucker2Conv2D  # noqa: E402

CANDIDATES: list[tuple[str, type, dict]] = [
    ("DeCEF", DeCEFConv2D, {}),
    ("BasisConv", BasisConv2D, {}),
    ("SVD-channel", SVDConv2D, {"decomposition": "channel"}),
    ("SVD-spatial", SVDConv2D, {"decomposition": "spatial"}),
    ("SSC G=8 (rank = kernel_span)", SSConv2D, {"groups": 8}),
    ("Tucker-2 (R1 = R2)", Tucker2Conv2D, {}),
    ("TT-conv (3 auto modes, rank r)", TTConv2D, {}),
]

SHAPES = [(56, 64), (28, 128), (14, 256), (7, 512)]
MAC_TARGETS = (2 / 3, 1 / 3)
IMPLEMENTATIONS = ("factorized", "dense", "auto")


def rank_for_mac_ratio(cls, conv, input_shape, target: float, **options) -> int | None:
    """Largest rank whose MACs are at most ``target`` times the Conv2D's (None if none)."""
    c = input_shape[-1]
    dense = keras.layers.Conv2D(conv.filters, conv.kernel_size, padding=conv.padding)
    from keras_eigenconv.cost import layer_cost

    dense.build(input_shape)
    base = layer_cost(dense, input_shape).macs
    best = None
    full = len(cls.spectrum(np.asarray(conv.kernel), **options))
    for r in range(1, full + 1):
        layer = cls(conv.filters, conv.kernel_size, rank=r, padding=conv.padding, **options)
        if layer.cost(input_shape).macs <= target * base:
            best = r
    del c
    return best


def _timer(fn, args):
    fn(*args)  # trace + warm up
    fn(*args)

    def once():
        t = time.perf_counter()
        out = fn(*args)
        if isinstance(out, (list, tuple)):
            out = out[0]
        np.asarray(out)
        return time.perf_counter() - t

    return once


def _make_fns(layer, x):
    fwd = tf.function(lambda x: layer(x, training=False))

    @tf.function
    def train(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x, *layer.trainable_weights])

    return _timer(fwd, (x,)), _timer(train, (x,))


def run(batches, repeats: int) -> list[dict]:
    rows = []
    for hw, c in SHAPES:
        conv = keras.layers.Conv2D(c, 3, padding="same")
        shape = (1, hw, hw, c)
        conv.build(shape)
        base_macs = conv.filters * 9 * c * hw * hw
        variants = [("Conv2D", "-", None, conv)]
        for label, cls, options in CANDIDATES:
            for target in MAC_TARGETS:
                r = rank_for_mac_ratio(cls, conv, shape, target, **options)
                if r is None:
                    continue
                for impl in IMPLEMENTATIONS:
                    layer = cls.from_conv2d(conv, rank=r, implementation=impl, **options)
                    variants.append((label, impl, r, layer))
        for batch in batches:
            x = tf.random.normal((batch, hw, hw, c))
            timers = [(v, *_make_fns(v[3], x)) for v in variants]
            fwd_t = {i: [] for i in range(len(timers))}
            trn_t = {i: [] for i in range(len(timers))}
            for _ in range(repeats):  # interleaved: every variant once per round
                for i, (_, f, t) in enumerate(timers):
                    fwd_t[i].append(f())
                    trn_t[i].append(t())
            f0 = statistics.median(fwd_t[0])
            t0 = statistics.median(trn_t[0])
            for i, ((label, impl, r, layer), _, _) in enumerate(timers):
                macs = layer.cost(shape).macs if hasattr(layer, "cost") else base_macs
                f, t = statistics.median(fwd_t[i]), statistics.median(trn_t[i])
                rows.append(
                    {
                        "shape": f"{hw}x{hw}x{c}",
                        "batch": batch,
                        "layer": label,
                        "implementation": impl,
                        "runs": getattr(layer, "resolved_implementation", None) or "conv",
                        "rank": r,
                        "macs": int(macs),
                        "mac_ratio": macs / base_macs,
                        "forward_ms": 1e3 * f,
                        "forward_ratio": f / f0,
                        "train_ms": 1e3 * t,
                        "train_ratio": t / t0,
                    }
                )
            print(f"done {hw}x{hw}x{c} batch {batch}", flush=True)
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "| shape | batch | layer | impl (runs) | rank | MAC ratio | fwd ms | fwd ratio "
        "| fwd+bwd ms | fwd+bwd ratio |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        flag = (
            " **slower**"
            if r["mac_ratio"] < 1 and max(r["forward_ratio"], r["train_ratio"]) > 1.05
            else ""
        )
        lines.append(
            f"| {r['shape']} | {r['batch']} | {r['layer']} | {r['implementation']} ({r['runs']}) "
            f"| {r['rank'] or ''} | {r['mac_ratio']:.2f} | {r['forward_ms']:.2f} "
            f"| {r['forward_ratio']:.2f} | {r['train_ms']:.2f} | {r['train_ratio']:.2f}{flag} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 1 only, 5 rounds")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "layers"))
    args = p.parse_args()
    batches, repeats = ([1], 5) if args.quick else (args.batches, args.repeats)
    rows = run(batches, repeats)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "unit": "ms, median of interleaved rounds; ratios vs the Conv2D in the same run",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = to_markdown(rows)
    out.with_suffix(".md").write_text(f"# Layer timings\n\n{json.dumps(meta)}\n\n{md}\n")
    print(md)


if __name__ == "__main__":
    main()
