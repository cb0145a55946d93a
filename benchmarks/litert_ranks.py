"""LiteRT latency of a factorized conv against its rank: where do XNNPACK's kernels step?

For each conv shape (ResNet50's, by default) and precision, the dense ``Conv2D`` and its
channel-SVD factorization (``Conv2D(r, k)`` then ``Conv2D(N, 1)``, what ``SVDConv2D``
exports) at ranks ``8, 16, ..., --max-rank`` are each converted alone to a ``.tflite``
(batch 1; int8: full-integer with random representative data) and timed interleaved with
the dense conv (``--rounds`` rounds; the median of per-round ratios). The MACs of the
factorization fall with the rank smoothly; its latency may not: XNNPACK packs output
channels in blocks whose size depends on the precision and the CPU's instructions, so a
rank just above a block costs about as much as the next full block. The table gives, per
shape and precision, the latency ratio at each rank and the ranks where it jumps (a rise
of more than ``--jump`` of the dense time from one rank to the next): the multiples to
round ranks to (``convert(..., round_to=...)``) on this machine.

    python benchmarks/litert_ranks.py                      # ResNet50 shapes, fp32 + int8
    python benchmarks/litert_ranks.py --precisions int8 --max-rank 96 --quick

Written: ``benchmarks/results/litert_ranks.{json,md}`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_eigenconv._io import atomic_write_text  # noqa: E402
from keras_eigenconv.deploy.litert import (  # noqa: E402
    convert_for_timing,
    make_interpreter,
    random_representative,
)
from keras_eigenconv.deploy.timing import (  # noqa: E402
    interleaved_samples,
    machine_info,
    machine_summary,
)

# (H=W, C, N, k): ResNet50's 3x3 convs of stages 2-5 and a 1x1 reduce conv of stage 4
SHAPES = [
    (56, 64, 64, 3),
    (28, 128, 128, 3),
    (14, 256, 256, 3),
    (7, 512, 512, 3),
    (14, 1024, 256, 1),
]
QUICK = [(14, 256, 256, 3), (14, 1024, 256, 1)]
QUANTIZE = {"fp32": None, "int8": "int8"}


def _interpreter(layers, hw: int, c: int, quantize, threads: int):
    inp = keras.Input((hw, hw, c))
    h = inp
    for layer in layers:
        h = layer(h)
    content = convert_for_timing(
        keras.Model(inp, h), quantize, random_representative((1, hw, hw, c))
    )
    it = make_interpreter(content, threads)
    it.allocate_tensors()
    return it


def sweep(hw: int, c: int, n: int, k: int, precision: str, ranks, threads: int, rounds: int):
    """Latency ratios (factorized / dense, interleaved) of one shape at each rank."""
    L = keras.layers
    q = QUANTIZE[precision]
    dense = _interpreter([L.Conv2D(n, k, padding="same")], hw, c, q, threads)
    cands = {
        r: _interpreter(
            [L.Conv2D(r, k, padding="same", use_bias=False), L.Conv2D(n, 1)], hw, c, q, threads
        )
        for r in ranks
    }
    s = interleaved_samples(
        {"dense": dense.invoke, **{str(r): it.invoke for r, it in cands.items()}},
        rounds=rounds,
        warmup=2,
    )
    d = np.asarray(s["dense"])
    rows = []
    for r in ranks:
        ratio = np.asarray(s[str(r)]) / d
        p10, p90 = np.percentile(ratio, [10, 90])
        rows.append(
            {
                "rank": r,
                "macs_ratio": (k * k * c * r + r * n) / (k * k * c * n),
                "latency_ratio": float(np.median(ratio)),
                "p10": float(p10),
                "p90": float(p90),
            }
        )
    return float(np.median(d)), rows


def jumps(rows, jump: float) -> list[int]:
    """The ranks whose latency ratio rose by more than ``jump`` over the previous rank's
    (the first rank of a new block)."""
    return [
        b["rank"] for a, b in zip(rows, rows[1:]) if b["latency_ratio"] - a["latency_ratio"] > jump
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--precisions", default="fp32,int8")
    p.add_argument("--max-rank", type=int, default=136)
    p.add_argument("--step", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--jump", type=float, default=0.08)
    p.add_argument("--quick", action="store_true", help="two shapes only")
    p.add_argument("--out", default="benchmarks/results/litert_ranks")
    args = p.parse_args(argv)
    precisions = [x for x in args.precisions.split(",") if x]
    bad = [x for x in precisions if x not in QUANTIZE]
    if bad:
        p.error(f"--precisions: {bad} not in {sorted(QUANTIZE)}")
    results = []
    for hw, c, n, k in QUICK if args.quick else SHAPES:
        ranks = [r for r in range(args.step, args.max_rank + 1, args.step) if r < min(k * k * c, n)]
        for precision in precisions:
            dense_s, rows = sweep(hw, c, n, k, precision, ranks, args.threads, args.rounds)
            results.append(
                {
                    "shape": f"{hw}x{hw} {c}->{n} {k}x{k}",
                    "precision": precision,
                    "dense_ms": dense_s * 1e3,
                    "rows": rows,
                    "jumps_at": jumps(rows, args.jump),
                }
            )
            r = results[-1]
            print(
                f"{r['shape']} {precision}: dense {r['dense_ms']:.3f} ms, jumps at {r['jumps_at']}"
            )
            sys.stdout.flush()
    meta = {
        "command": "python benchmarks/litert_ranks.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "threads": args.threads,
        "rounds": args.rounds,
        "jump": args.jump,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out.with_suffix(".json"), json.dumps({"meta": meta, "results": results}, indent=1)
    )
    lines = [
        "# LiteRT latency of a channel-SVD conv against its rank (batch 1)",
        "",
        f"`{meta['command']}` on {machine_summary()}, {args.threads} threads, "
        f"{args.rounds} interleaved rounds. "
        "Ratio: the factorized pair's time over the dense conv's in the same round (median; "
        "MACs ratio in brackets). Jumps: ranks whose ratio rose by more than "
        f"{args.jump} of the dense time over the previous rank's.",
        "",
    ]
    all_ranks = sorted({row["rank"] for r in results for row in r["rows"]})
    lines.append(
        "| shape | precision | dense ms | jumps at | "
        + " | ".join(f"r={x}" for x in all_ranks)
        + " |"
    )
    lines.append("|---|---|---:|---|" + "---:|" * len(all_ranks))
    for r in results:
        by = {row["rank"]: row for row in r["rows"]}
        cells = [
            f"{by[x]['latency_ratio']:.2f} ({by[x]['macs_ratio']:.2f})" if x in by else ""
            for x in all_ranks
        ]
        lines.append(
            f"| {r['shape']} | {r['precision']} | {r['dense_ms']:.3f} | "
            f"{', '.join(map(str, r['jumps_at'])) or '-'} | " + " | ".join(cells) + " |"
        )
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
