"""Train a DeCEF ResNet-20 from scratch on CIFAR-10 (Yu et al.'s recipe, as far as known).

1. train the plain ResNet-20 briefly (``--warmup-epochs``);
2. measure each 3x3 conv's DeCEF rank: the fewest eigen-filters keeping ``--energy`` of the
   kernel's energy (pooled over input channels);
3. build the DeCEF ResNet-20 at those ranks, freshly initialized, and train it from scratch.

    python examples/train_decef_cifar10.py --data-dir ~/tensorflow_datasets --epochs 60
    python examples/train_decef_cifar10.py --smoke       # end to end on sklearn digits

CIFAR-10 must be prepared for tensorflow-datasets (``tfds build cifar10``) under
``--data-dir``; the error says how when it is not.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_eigenconv import data, model_cost  # noqa: E402
from keras_eigenconv.training import train_decef_from_scratch  # noqa: E402
from keras_eigenconv.zoo import cifar_resnet  # noqa: E402

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2470, 0.2435, 0.2616]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="DeCEF ResNet-20 from scratch on CIFAR-10.")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--warmup-epochs", type=int, default=3)
    p.add_argument("--energy", type=float, default=0.9)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="decef_resnet20.keras")
    p.add_argument("--smoke", action="store_true", help="tiny run on sklearn digits")
    args = p.parse_args(argv)
    keras.utils.set_random_seed(0)

    if args.smoke:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images / 16.0).astype("float32")[..., None]
        y = d.target.astype("int32")
        train = data.from_arrays(x[:1400], y[:1400], batch_size=64, training=True, pad=1, seed=0)
        test = data.from_arrays(x[1400:], y[1400:], batch_size=128)

        def build():
            return cifar_resnet(8, input_shape=(8, 8, 1), width=16)

        epochs, warmup, steps = min(args.epochs, 2), 1, None
        args.energy, args.lr = min(args.energy, 0.8), min(args.lr, 0.02)
    else:
        norm = dict(mean=CIFAR_MEAN, std=CIFAR_STD)
        train = data.from_tfds(
            "cifar10", "train", args.batch, data_dir=args.data_dir, seed=0, **norm
        )
        test = data.from_tfds("cifar10", "test", args.batch, data_dir=args.data_dir, **norm)

        def build():
            return cifar_resnet(20)

        epochs, warmup, steps = args.epochs, args.warmup_epochs, None

    schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=10_000)
    result = train_decef_from_scratch(
        build,
        train,
        epochs=epochs,
        warmup_epochs=warmup,
        energy=args.energy,
        validation_data=test,
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
        steps_per_epoch=steps,
        verbose=2,
    )
    plain_acc = result.plain_model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
    acc = result.model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
    plain_cost = model_cost(result.plain_model).total
    cost = model_cost(result.model).total
    print("DeCEF ranks per conv:", result.ranks)
    print(f"replaced {len(result.info['replaced'])} of {len(result.ranks)} convs")
    print(
        f"plain (after {warmup} warm-up epochs): {plain_acc:.4f}; "
        f"DeCEF from scratch ({epochs} epochs): {acc:.4f}"
    )
    print(
        f"params {plain_cost.params:,} -> {cost.params:,}; "
        f"MACs {plain_cost.macs:,} -> {cost.macs:,} ({cost.macs / plain_cost.macs:.2f})"
    )
    result.model.save(args.out)
    print("saved", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
