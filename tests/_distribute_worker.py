"""Run by tests/test_distribute.py in a subprocess: train a converted model under a strategy.

argv: mode (single | mirrored | multiworker) and the output .npz path. TF_CONFIG comes from
the environment for multiworker. Logical devices must be set before TF initializes them, so
this runs in its own process.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

mode, out = sys.argv[1], sys.argv[2]
if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from keras_eigenconv import DeCEFConv2D, SVDConv2D  # noqa: E402

if mode == "mirrored":
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
elif mode == "multiworker":
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
else:
    strategy = tf.distribute.get_strategy()

d = load_digits()
x = (d.images[:256] / 16.0).astype("float32")[..., None]
y = d.target[:256].astype("int32")

with strategy.scope():
    keras.utils.set_random_seed(0)
    plain = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    # replaced layers are created here, under the scope
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            SVDConv2D.from_conv2d(plain.layers[0], rank=5, name="svd"),
            DeCEFConv2D.from_conv2d(plain.layers[1], rank=4, name="decef"),
            plain.layers[2],
            plain.layers[3],
        ]
    )
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy")

distributed = [
    isinstance(v.value, tf.distribute.DistributedValues) or "Mirrored" in type(v.value).__name__
    for v in model.layers[0].weights + model.layers[1].weights
]
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
ds = ds.with_options(options)
if mode != "multiworker":
    model.fit(ds, epochs=3, verbose=0)
else:
    # Keras 3 fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585):
    # the same steps as fit in a custom loop, the documented tf.distribute way.
    dist = strategy.experimental_distribute_dataset(ds)

    @tf.function
    def step(batch):
        def replica(xb, yb):
            with tf.GradientTape() as tape:
                pred = model(xb, training=True)
                per_example = keras.losses.sparse_categorical_crossentropy(yb, pred)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=64)
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables))

        strategy.run(replica, args=batch)

    for _ in range(3):
        for batch in dist:
            step(batch)
np.savez(
    out,
    *model.get_weights(),
    replicas=strategy.num_replicas_in_sync,
    distributed=np.array(distributed),
)
