"""Conversion time against clone time: is ``convert`` close to ``keras.models.clone_model``?

For each model (``keras.applications``, random weights: timing does not depend on them) and
each method, times in the same run, interleaved, best of ``--repeats``:

- clone-only: ``keras.models.clone_model(model)`` + copying every weight (what any weight-
  preserving rebuild of the model costs);
- convert: ``keras_eigenconv.convert(model, method=..., energy=...)`` (spectra, rank choice,
  decompositions, clone, weight copy, report).

Goal: convert / clone <= 1.5. Also recorded: the decomposition share of the conversion and
the MACs before and after. Written: ``benchmarks/results/convert.{json,md}``.

    python benchmarks/convert.py                       # ResNet50 + MobileNetV2 at 224x224
    python benchmarks/convert.py --quick               # 64x64 inputs, one repeat
    python benchmarks/convert.py --blas-threads 1      # pin BLAS threads (loaded machines)
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

from keras_eigenconv import model_cost  # noqa: E402
from keras_eigenconv.compress import convert  # noqa: E402

MODELS = {"resnet50": "ResNet50", "mobilenetv2": "MobileNetV2"}


def clone_only(model):
    new = keras.models.clone_model(model)
    new.set_weights(model.get_weights())
    return new


def run(models, methods, size, energy, repeats, macs=None):
    rows = []
    for key in models:
        model = getattr(keras.applications, MODELS[key])(weights=None, input_shape=(size, size, 3))
        before = model_cost(model).total
        clone_model = None
        for method in methods:
            clone_t, conv_t, report = [], [], None
            for _ in range(repeats):  # interleaved: both see the same machine state
                t = time.perf_counter()
                clone_model = clone_only(model)
                clone_t.append(time.perf_counter() - t)
                t = time.perf_counter()
                sel = {"budget": {"macs": macs}} if macs else {"energy": energy}
                new, report = convert(model, method=method, progress=False, **sel)
                conv_t.append(time.perf_counter() - t)
            del clone_model
            after = model_cost(new).total
            per_round = [c / k for c, k in zip(conv_t, clone_t)]
            rows.append(
                {
                    "model": MODELS[key],
                    "input": f"{size}x{size}",
                    "method": method,
                    "energy": None if macs else energy,
                    "macs_budget": macs,
                    "replaced": len(report.replaced),
                    "clone_s": min(clone_t),
                    "convert_s": min(conv_t),
                    "ratio": min(conv_t) / min(clone_t),
                    "goal_met": min(conv_t) / min(clone_t) <= 1.5,
                    # every round (interleaved): the first conversion of the model in this
                    # process computes every spectrum and eigendecomposition (nothing cached)
                    "clone_all_s": clone_t,
                    "convert_all_s": conv_t,
                    "round_ratios": per_round,
                    "first_ratio": per_round[0],
                    "macs_before": before.macs,
                    "macs_after": after.macs,
                    "macs_ratio": after.macs / before.macs,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def to_markdown(rows, meta) -> str:
    lines = [
        f"Conversion vs clone time ({meta['machine']}, BLAS threads: {meta['blas_threads']}, "
        f"best of {meta['repeats']}, "
        + (
            f"budget={{'macs': {meta['macs_budget']}}}"
            if meta.get("macs_budget")
            else f"energy={meta['energy']}"
        )
        + f"; `{meta.get('command', 'python benchmarks/convert.py')}`).",
        "",
        "| model | input | method | replaced | clone-only (s) | convert (s) | convert / clone "
        "| goal <= 1.5 | per-round ratios (first: cold) | MACs before | MACs after | MACs ratio |",
        "|---|---|---|---:|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input']} | {r['method']} | {r['replaced']} | "
            f"{r['clone_s']:.2f} | {r['convert_s']:.2f} | {r['ratio']:.2f} | "
            f"{'yes' if r['goal_met'] else 'no'} | "
            f"{', '.join(f'{x:.2f}' for x in r.get('round_ratios', []))} | "
            f"{r['macs_before']:,} | {r['macs_after']:,} | "
            f"{r['macs_ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet50,mobilenetv2")
    p.add_argument("--methods", default="decef,svd")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--energy", type=float, default=0.9)
    p.add_argument("--macs", type=float, default=None, help="a MAC budget instead of energy")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--blas-threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="64x64 inputs, one repeat")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "convert"))
    args = p.parse_args()
    if args.quick:
        args.size, args.repeats = 64, 1
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "blas_threads": args.blas_threads or "default",
        "repeats": args.repeats,
        "energy": args.energy,
        "macs_budget": args.macs,
        "command": "python benchmarks/convert.py " + " ".join(sys.argv[1:]),
        "keras": keras.__version__,
    }
    models, methods = args.models.split(","), args.methods.split(",")
    if args.blas_threads:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(args.blas_threads, user_api="blas"):
            rows = run(models, methods, args.size, args.energy, args.repeats, args.macs)
    else:
        rows = run(models, methods, args.size, args.energy, args.repeats, args.macs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(to_markdown(rows, meta))
    print(to_markdown(rows, meta))


if __name__ == "__main__":
    main()
