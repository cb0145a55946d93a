"""Fine-tune a converted ``keras.applications`` model on a tensorflow-datasets dataset.

The backbone's ``Conv2D`` layers are replaced (``keras_eigenconv.convert``) with
low-rank layers initialized from the pretrained weights, a new classifier is added, and
the whole model is fine-tuned with ``fit``. Runs on a TPU (``TPUStrategy``), several GPUs
(``MirroredStrategy``), one GPU or the CPU, whichever is present; the model is built and
converted inside the strategy scope.

    python examples/finetune_applications.py --model ResNet50 --dataset imagenette/160px \
        --method decef --energy 0.9 --epochs 5 --data-dir ~/tensorflow_datasets
    python examples/finetune_applications.py --smoke      # end to end on sklearn digits

``--weights imagenet`` downloads the ImageNet weights (needs internet once);
``--weights none`` starts from random weights.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_eigenconv import data, model_cost  # noqa: E402
from keras_eigenconv.compress import convert  # noqa: E402

PREPROCESS = {
    "ResNet50": "resnet",
    "ResNet101": "resnet",
    "ResNet50V2": "resnet_v2",
    "VGG16": "vgg16",
    "MobileNetV2": "mobilenet_v2",
    "EfficientNetB0": "efficientnet",
    "DenseNet121": "densenet",
    "ConvNeXtTiny": "convnext",
}


def pick_strategy():
    """TPUStrategy on a TPU, MirroredStrategy on several GPUs, else the default."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver), True
    except (ValueError, tf.errors.NotFoundError, RuntimeError):
        pass
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy(), False
    return tf.distribute.get_strategy(), False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Fine-tune a converted keras.applications model.")
    p.add_argument("--model", default="ResNet50", choices=sorted(PREPROCESS))
    p.add_argument("--dataset", default="imagenette/160px")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--method", default="decef")
    p.add_argument("--energy", type=float, default=0.9)
    p.add_argument("--weights", default="imagenet", help="'imagenet' or 'none'")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="finetuned.keras")
    p.add_argument("--smoke", action="store_true", help="tiny run on sklearn digits")
    args = p.parse_args(argv)
    keras.utils.set_random_seed(0)
    strategy, tpu = pick_strategy()
    preprocess = PREPROCESS[args.model]

    if args.smoke:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images * (255.0 / 16.0)).astype("float32")[..., None]  # [0, 255] like photos
        y = d.target.astype("int32")
        common = dict(image_size=32, channels=3, preprocess=preprocess)
        train = data.from_arrays(x[:256], y[:256], 32, training=True, pad=2, seed=0, **common)
        test = data.from_arrays(x[1400:1528], y[1400:1528], 64, **common)
        size, num_classes, weights, epochs = 32, 10, None, 1
    else:
        common = dict(
            image_size=args.image_size,
            channels=3,
            preprocess=preprocess,
            drop_remainder=tpu,
            data_dir=args.data_dir,
        )
        train = data.from_tfds(args.dataset, "train", args.batch, seed=0, **common)
        test = data.from_tfds(args.dataset, "validation", args.batch, training=False, **common)
        if args.num_classes is None:
            import tensorflow_datasets as tfds

            info = tfds.builder(args.dataset, data_dir=args.data_dir).info
            args.num_classes = info.features["label"].num_classes
        size, num_classes, epochs = args.image_size, args.num_classes, args.epochs
        weights = None if args.weights.lower() == "none" else args.weights

    with strategy.scope():
        backbone = getattr(keras.applications, args.model)(
            include_top=False, weights=weights, input_shape=(size, size, 3), pooling="avg"
        )
        small, report = convert(backbone, args.method, energy=args.energy, progress=False)
        inputs = keras.Input((size, size, 3))
        outputs = keras.layers.Dense(num_classes, activation="softmax")(small(inputs))
        model = keras.Model(inputs, outputs)
        model.compile(
            keras.optimizers.Adam(args.lr),
            "sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    before, after = model_cost(backbone).total, model_cost(small).total
    print(
        f"{args.model} backbone: MACs {before.macs:,} -> {after.macs:,} "
        f"({after.macs / before.macs:.2f}), params {before.params:,} -> {after.params:,}"
    )
    history = model.fit(train, epochs=epochs, validation_data=test, verbose=2)
    print("final val accuracy:", history.history["val_accuracy"][-1])
    model.save(args.out)
    print("saved", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
