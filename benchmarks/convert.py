"""Conversion time against clone time: is ``convert`` close to ``keras.models.clone_model``?

For each model (``keras.applications``, random weights: timing does not depend on them) and
each method, times in the same run, interleaved, best of ``--repeats``:

- clone-only: ``keras.models.clone_model(model)`` + copying every weight (what any weight-
  preserving rebuild of the model costs);
- convert: ``keras_eigenconv.convert(model, method=..., energy=...)`` (spectra, rank choice,
  decompositions, clone, weight copy, report).

Goal: convert / clone <= 1.5 (best convert over best clone). Also recorded: each round's
ratio (the convert over the clone just before it) and their median, which a burst of load
on a shared machine moves less than the best times do; the MACs before and after; the peak
memory that NumPy and Python allocate during one more (untimed) conversion, traced with
``tracemalloc`` (TensorFlow's own buffers are not traced). Written (atomically):
``benchmarks/results/convert.{json,md}``.

With ``--latency x``: ``keras_eigenconv.convert(model, method=..., budget={"latency": x},
target="litert-fp32")`` with a fresh timing cache (a temporary ``cache_path``), called
twice: the first (cold) call times every candidate layer and the whole models of its
feedback rounds; the second, identical (warm) call finds them in the cache. Each is
timed against clone-only (interleaved: clones before, between and after). Goal: warm /
clone <= 3. Written: ``benchmarks/results/convert_latency.{json,md}`` by default.

    python benchmarks/convert.py                       # ResNet50 + MobileNetV2 at 224x224
    python benchmarks/convert.py --quick               # 64x64 inputs, one repeat
    python benchmarks/convert.py --blas-threads 1      # pin BLAS threads (loaded machines)
    python benchmarks/convert.py --models resnet50 --methods svd --latency 0.7
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_eigenconv import model_cost  # noqa: E402
from keras_eigenconv._io import atomic_write_text  # noqa: E402
from keras_eigenconv.compress import convert  # noqa: E402
from keras_eigenconv.deploy.timing import machine_summary  # noqa: E402

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
        for method in methods:
            clone_t, conv_t, report = [], [], None
            for _ in range(repeats):  # interleaved: both see the same machine state
                gc.collect()  # neither pays for the other's garbage
                t = time.perf_counter()
                clone_model = clone_only(model)
                clone_t.append(time.perf_counter() - t)
                del clone_model
                gc.collect()
                t = time.perf_counter()
                sel = {"budget": {"macs": macs}} if macs else {"energy": energy}
                new, report = convert(model, method=method, progress=False, **sel)
                conv_t.append(time.perf_counter() - t)
            after = model_cost(new).total
            per_round = [c / k for c, k in zip(conv_t, clone_t)]
            del new
            gc.collect()
            tracemalloc.start()  # untimed: tracing slows every allocation
            try:
                convert(model, method=method, progress=False, **sel)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
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
                    "round_ratio_median": statistics.median(per_round),
                    "round_ratio_min": min(per_round),
                    "round_ratio_max": max(per_round),
                    "first_ratio": per_round[0],
                    "macs_before": before.macs,
                    "macs_after": after.macs,
                    "macs_ratio": after.macs / before.macs,
                    "peak_traced_mb": peak / 2**20,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def run_latency(models, methods, size, budget, warm_calls=2, cache_path=None, seed=0):
    """Cold then warm latency-budget conversions against clone-only, interleaved (with
    ``cache_path``, a kept cache: the first call is warm when an earlier run filled it)."""
    from keras_eigenconv import latency

    rows = []
    for key in models:
        keras.utils.set_random_seed(seed)  # the same weights in every run: the same plans
        model = getattr(keras.applications, MODELS[key])(weights=None, input_shape=(size, size, 3))
        for method in methods:
            with tempfile.TemporaryDirectory() as tmp:
                cache = Path(cache_path) if cache_path else Path(tmp) / "timings.json"
                clone_t, calls = [], []
                for _ in range(1 + warm_calls):
                    gc.collect()
                    t = time.perf_counter()
                    clone_only(model)
                    clone_t.append(time.perf_counter() - t)
                    gc.collect()
                    t = time.perf_counter()
                    _, report = latency.convert(
                        model,
                        method=method,
                        budget={"latency": budget},
                        target="litert-fp32",
                        cache_path=cache,
                        progress=False,
                        strict=False,
                    )
                    seconds = time.perf_counter() - t
                    plan = report.latency
                    calls.append(
                        {
                            "call": "warm" if plan.model_timings == 0 and plan.reused else "cold",
                            "seconds": seconds,
                            "model_timings": plan.model_timings,
                            "reused": plan.reused,
                            "layer_candidates_timed": plan.timed,
                            "measured_ratio": plan.measured_ratio,
                            "budget_met": report.budget_met,
                            "ranks": [[p.name, p.rank] for p in plan.layers if p.method],
                        }
                    )
                    print(json.dumps({"method": method, **calls[-1]}), flush=True)
                t = time.perf_counter()
                clone_only(model)
                clone_t.append(time.perf_counter() - t)
            clone_med = statistics.median(clone_t)
            cold = [c["seconds"] for c in calls if c["call"] == "cold"]
            warm = [c["seconds"] for c in calls if c["call"] == "warm"]
            rows.append(
                {
                    "model": MODELS[key],
                    "input": f"{size}x{size}",
                    "method": method,
                    "latency_budget": budget,
                    "target": "litert-fp32",
                    "first_call": calls[0]["call"],  # warm with a kept --latency-cache
                    "clone_all_s": clone_t,
                    "clone_s": clone_med,
                    "cold_s": cold[0] if cold else None,
                    "warm_s": min(warm) if warm else None,
                    "warm_all_s": warm,
                    "cold_ratio": cold[0] / clone_med if cold else None,
                    "first_ratio": calls[0]["seconds"] / clone_med,
                    "warm_ratio": min(warm) / clone_med if warm else None,
                    "warm_ratio_max": max(warm) / clone_med if warm else None,
                    "goal_met": bool(warm) and min(warm) / clone_med <= 3.0,
                    "same_plan": all(c["ranks"] == calls[0]["ranks"] for c in calls),
                    "calls": calls,
                }
            )
    return rows


def latency_markdown(rows, meta) -> str:
    lines = [
        f"Latency-budget conversion vs clone time ({meta['machine']}, BLAS threads: "
        f"{meta['blas_threads']}, "
        + (
            "a timing cache an earlier run filled (every call warm)"
            if rows and rows[0].get("first_call") == "warm"
            else "an empty timing cache"
        )
        + ", target litert-fp32; "
        f"`{meta['command']}`). Cold: the first call (every candidate layer and each "
        "feedback round's whole model exported and timed); warm: the same call again "
        "(best of the warm calls, then the worst; with a kept `--latency-cache` the first "
        "call of a new process is warm too); clone: the median of the interleaved "
        "clone-only runs.",
        "",
        "| model | input | method | budget | clone-only (s) | cold (s) | cold / clone | "
        "warm (s) | warm / clone (best, worst) | goal warm <= 3 | whole models timed "
        "(cold, warm) | measured latency ratio | same plan |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|---|---:|---|",
    ]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in rows:
        c = r["calls"]
        cold = [x["model_timings"] for x in c if x["call"] == "cold"]
        warm = [x["model_timings"] for x in c if x["call"] == "warm"]
        lines.append(
            f"| {r['model']} | {r['input']} | {r['method']} | {r['latency_budget']} | "
            f"{r['clone_s']:.2f} | {f(r['cold_s'], '.1f')} | {f(r['cold_ratio'], '.1f')} | "
            f"{f(r['warm_s'], '.2f')} | {f(r['warm_ratio'], '.2f')}, "
            f"{f(r['warm_ratio_max'], '.2f')} | {'yes' if r['goal_met'] else 'no'} | "
            f"{max(cold) if cold else '-'}, {max(warm) if warm else '-'} | "
            f"{c[0]['measured_ratio']:.3f} | {'yes' if r['same_plan'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


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
        "| goal <= 1.5 | median of per-round ratios | per-round ratios (first: cold) "
        "| MACs before | MACs after | MACs ratio | peak traced MB (NumPy, Python) |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input']} | {r['method']} | {r['replaced']} | "
            f"{r['clone_s']:.2f} | {r['convert_s']:.2f} | {r['ratio']:.2f} | "
            f"{'yes' if r['goal_met'] else 'no'} | "
            + (f"{statistics.median(r['round_ratios']):.2f} | " if r.get("round_ratios") else "| ")
            + f"{', '.join(f'{x:.2f}' for x in r.get('round_ratios', []))} | "
            f"{r['macs_before']:,} | {r['macs_after']:,} | "
            f"{r['macs_ratio']:.3f} | "
            + (f"{r['peak_traced_mb']:.0f} |" if "peak_traced_mb" in r else "|")
        )
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet50,mobilenetv2")
    p.add_argument("--methods", default="decef,svd")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--energy", type=float, default=0.9)
    p.add_argument("--macs", type=float, default=None, help="a MAC budget instead of energy")
    p.add_argument(
        "--latency",
        type=float,
        default=None,
        help="a latency budget (litert-fp32): a cold, then warm calls with one timing cache",
    )
    p.add_argument("--warm-calls", type=int, default=2, help="warm calls after the cold one")
    p.add_argument(
        "--latency-cache",
        default=None,
        help="the timing cache to use and keep (default: a fresh temporary one); run twice "
        "to time a warm call in a new process",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--blas-threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="64x64 inputs, one repeat")
    p.add_argument("--out", default=None, help="default results/convert (convert_latency)")
    args = p.parse_args()
    if args.quick:
        args.size, args.repeats = 64, 1
    meta = {
        "machine": machine_summary(),
        "blas_threads": args.blas_threads or "default",
        "repeats": args.repeats,
        "energy": args.energy,
        "macs_budget": args.macs,
        "command": "python benchmarks/convert.py " + " ".join(sys.argv[1:]),
        "keras": keras.__version__,
    }
    models, methods = args.models.split(","), args.methods.split(",")
    results = Path(__file__).parent / "results"
    if args.latency is not None:
        meta["latency_budget"] = args.latency
        out = Path(args.out or results / "convert_latency")
        if args.blas_threads:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(args.blas_threads, user_api="blas"):
                rows = run_latency(
                    models, methods, args.size, args.latency, args.warm_calls, args.latency_cache
                )
        else:
            rows = run_latency(
                models, methods, args.size, args.latency, args.warm_calls, args.latency_cache
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=2)
        )
        atomic_write_text(out.with_suffix(".md"), latency_markdown(rows, meta))
        print(latency_markdown(rows, meta))
        return
    if args.blas_threads:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(args.blas_threads, user_api="blas"):
            rows = run(models, methods, args.size, args.energy, args.repeats, args.macs)
    else:
        rows = run(models, methods, args.size, args.energy, args.repeats, args.macs)
    out = Path(args.out or results / "convert")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=2))
    atomic_write_text(out.with_suffix(".md"), to_markdown(rows, meta))
    print(to_markdown(rows, meta))


if __name__ == "__main__":
    main()
