"""``tf.data`` pipelines for image classification: tensorflow-datasets, arrays, folders.

Every source gives unbatched ``(image, label)`` pairs that go through one pipeline:

    cast to float32 -> [resize] -> [cache] -> [shuffle] -> [pad-and-crop, flip]
    -> [rescale] -> [normalize (x - mean) / std | preprocess_input] -> batch -> prefetch

- augmentation (``training=True`` by default): zero-pad by ``pad`` pixels and crop back at a
  random place, random horizontal flip (the CIFAR recipe); the randomness is stateless and
  seeded (``seed``), so a seeded pipeline repeats exactly;
- ``preprocess`` is a ``keras.applications`` module name (``"resnet"``, ``"mobilenet_v2"``,
  ...) or any callable; with it, images stay in ``[0, 255]`` (what those functions expect)
  and ``image_size`` resizes them to the model's input (``channels=3`` turns grayscale RGB);
- ``cache`` caches the decoded, resized images (in memory, or in a file if a path);
  ``drop_remainder`` gives static batch shapes (TPU).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

__all__ = [
    "AUTOTUNE",
    "from_arrays",
    "from_folder",
    "from_tfds",
    "pipeline",
    "preprocess_function",
]

AUTOTUNE = tf.data.AUTOTUNE

_MANUAL = {
    "imagenet2012": "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
    "https://image-net.org into DATA_DIR/downloads/manual/ first",
    "imagenet2012_subset": "download the ImageNet tars from https://image-net.org into "
    "DATA_DIR/downloads/manual/ first",
}


def preprocess_function(preprocess) -> Callable | None:
    """Resolve a ``preprocess`` argument to a function.

    Args:
        preprocess: A ``keras.applications`` module name (``"resnet"``, ``"resnet_v2"``,
            ``"mobilenet_v2"``, ``"efficientnet"``, ``"convnext"``, ...), a callable, or
            None.

    Returns:
        That module's ``preprocess_input``, or ``preprocess`` itself when it is callable or
        None.

    Raises:
        ValueError: When ``preprocess`` names no ``keras.applications`` module with a
            ``preprocess_input``.
    """
    if preprocess is None or callable(preprocess):
        return preprocess
    import keras

    module = getattr(keras.applications, str(preprocess), None)
    fn = getattr(module, "preprocess_input", None)
    if fn is None:
        raise ValueError(
            f"data: preprocess={preprocess!r} is not a keras.applications module with a "
            "preprocess_input (e.g. 'resnet', 'resnet_v2', 'mobilenet_v2', 'efficientnet', "
            "'convnext'); or pass a callable."
        )
    return fn


def _pair(size, name):
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"data: {name} must be an int or (height, width), got {size!r}.")
    return size


def pipeline(
    ds: tf.data.Dataset,
    batch_size: int = 128,
    training: bool = False,
    augment: bool | None = None,
    pad: int = 4,
    flip: bool = True,
    image_size=None,
    channels: int | None = None,
    rescale: float | None = None,
    mean=None,
    std=None,
    preprocess=None,
    shuffle_buffer: int | None = None,
    cache: bool | str = False,
    drop_remainder: bool = False,
    seed: int | None = None,
) -> tf.data.Dataset:
    """Batch an unbatched ``(image (H, W, C), label)`` dataset for ``fit``/``evaluate``.

    The steps: cast to float32 -> [resize] -> [cache] -> [shuffle] -> [pad-and-crop, flip]
    -> [rescale] -> [normalize ``(x - mean) / std`` | ``preprocess``] -> batch -> prefetch.
    The augmentation's randomness is stateless and seeded, so a seeded pipeline repeats
    exactly.

    Args:
        ds: An unbatched dataset of ``(image, label)`` pairs (2-D images get a channel axis).
        batch_size: The batch size.
        training: Training data: sets the defaults of ``augment`` and ``shuffle_buffer``.
        augment: Zero-pad by ``pad`` pixels and crop back at a random place, and flip at
            random (the CIFAR recipe); defaults to ``training``.
        pad: The padding of the pad-and-crop augmentation, in pixels (0: no crop).
        flip: Random horizontal flips in the augmentation.
        image_size: Resize images to it: an int or ``(height, width)``, or None.
        channels: 3 turns grayscale images RGB, 1 turns RGB images grayscale; None keeps
            them.
        rescale: A factor applied after augmentation; default ``1/255`` for integer images
            when no ``preprocess`` is given.
        mean: Per-channel mean subtracted after ``rescale``.
        std: Per-channel standard deviation divided by after ``mean``.
        preprocess: A ``keras.applications`` module name (``"resnet"``,
            ``"mobilenet_v2"``, ...) or any callable, applied last; with it, images stay in
            ``[0, 255]`` (what those functions expect). Not together with ``mean``/``std``.
        shuffle_buffer: The shuffle buffer; defaults to 10,000 when ``training``, else 0
            (0 turns shuffling off).
        cache: Cache the decoded, resized images: True in memory, or a file path.
        drop_remainder: Drop the last partial batch (static batch shapes, for TPU).
        seed: The seed of the shuffle and the augmentation.

    Returns:
        A dataset of float32 batches ``(B, H', W', C')`` with their labels.

    Raises:
        ValueError: When ``batch_size < 1``, ``pad < 0``, ``preprocess`` comes with
            ``mean``/``std`` or names no ``keras.applications`` module, ``image_size`` is
            not an int or ``(height, width)``, or ``channels`` is not None, 1 or 3.
    """
    if int(batch_size) < 1:
        raise ValueError(f"data: batch_size must be >= 1, got {batch_size!r}.")
    if pad < 0:
        raise ValueError(f"data: pad must be >= 0, got {pad!r}.")
    if preprocess is not None and (mean is not None or std is not None):
        raise ValueError("data: pass preprocess or mean/std, not both.")
    augment = training if augment is None else bool(augment)
    image_size = _pair(image_size, "image_size")
    preprocess = preprocess_function(preprocess)
    integer_images = ds.element_spec[0].dtype.is_integer
    if rescale is None and preprocess is None and integer_images:
        rescale = 1.0 / 255.0
    if channels not in (None, 1, 3):
        raise ValueError(f"data: channels must be None, 1 or 3, got {channels!r}.")

    def decode(image, label):
        image = tf.cast(image, tf.float32)
        if image.shape.rank == 2:
            image = image[..., None]
        if channels == 3 and image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        elif channels == 1 and image.shape[-1] == 3:
            image = tf.image.rgb_to_grayscale(image)
        if image_size is not None:
            image = tf.image.resize(image, image_size, method="bilinear")
        return image, label

    ds = ds.map(decode, num_parallel_calls=AUTOTUNE)
    if cache:
        ds = ds.cache(cache if isinstance(cache, str) else "")
    if shuffle_buffer is None:
        shuffle_buffer = 10_000 if training else 0
    if shuffle_buffer:
        ds = ds.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=True)

    if augment and (pad > 0 or flip):
        seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)

        def aug(pair, s):
            image, label = pair
            if pad > 0:
                shape = tf.shape(image)
                padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
                image = tf.image.stateless_random_crop(padded, shape, seed=s)
            if flip:
                image = tf.image.stateless_random_flip_left_right(image, seed=s[::-1])
            return image, label

        ds = tf.data.Dataset.zip((ds, seeds)).map(aug, num_parallel_calls=AUTOTUNE)

    mean_t = None if mean is None else tf.constant(mean, tf.float32)
    std_t = None if std is None else tf.constant(std, tf.float32)

    def finish(image, label):
        if rescale is not None:
            image = image * float(rescale)
        if mean_t is not None:
            image = image - mean_t
        if std_t is not None:
            image = image / std_t
        if preprocess is not None:
            image = preprocess(image)
        return image, label

    ds = ds.map(finish, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    return ds.prefetch(AUTOTUNE)


def from_arrays(x, y, batch_size: int = 128, training: bool = False, **options) -> tf.data.Dataset:
    """Make a pipeline over NumPy arrays of images and labels.

    Args:
        x: Images ``(n, H, W[, C])``.
        y: Labels ``(n, ...)``, one per image.
        batch_size: The batch size.
        training: Training data (augmented and shuffled by default).
        **options: The other arguments of ``pipeline``.

    Returns:
        The batched dataset (see ``pipeline``).

    Raises:
        ValueError: When ``x`` is not ``(n, H, W[, C])`` with one label per image, or an
            option is invalid.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim not in (3, 4) or len(x) != len(y):
        raise ValueError(
            f"data.from_arrays: x must be (n, H, W[, C]) with one label per image; got x "
            f"{x.shape}, y {y.shape}."
        )
    if x.ndim == 3:
        x = x[..., None]
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    return pipeline(ds, batch_size=batch_size, training=training, **options)


def from_folder(
    directory,
    batch_size: int = 128,
    training: bool = False,
    color_mode: str = "rgb",
    image_size=None,
    **options,
) -> tf.data.Dataset:
    """Make a pipeline over a folder ``directory/<class name>/<image files>``.

    Labels are the class indices in sorted class-name order. Pixels are scaled to ``[0, 1]``
    unless ``preprocess`` is given.

    Args:
        directory: The folder, one subfolder of image files per class.
        batch_size: The batch size.
        training: Training data (augmented and shuffled by default).
        color_mode: ``"rgb"``, ``"grayscale"`` or ``"rgba"``, as
            ``keras.utils.image_dataset_from_directory`` takes it.
        image_size: Required (files may differ in size): an int or ``(height, width)``.
        **options: The other arguments of ``pipeline``.

    Returns:
        The batched dataset (see ``pipeline``).

    Raises:
        FileNotFoundError: When ``directory`` is not a folder.
        ValueError: When ``image_size`` is missing or invalid, or an option is invalid.
    """
    import keras

    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"data.from_folder: '{directory}' is not a folder. Expected "
            "DIRECTORY/<class name>/<image files>."
        )
    size = _pair(image_size, "image_size")
    if size is None:
        raise ValueError("data.from_folder: pass image_size=(height, width).")
    if options.get("preprocess") is None:  # decoded files are float32 in [0, 255]
        options.setdefault("rescale", 1.0 / 255.0)
    ds = keras.utils.image_dataset_from_directory(
        directory,
        labels="inferred",
        label_mode="int",
        color_mode=color_mode,
        image_size=size,
        batch_size=None,
        shuffle=False,
    )
    return pipeline(ds, batch_size=batch_size, training=training, **options)


def from_tfds(
    name,
    split: str = "train",
    batch_size: int = 128,
    training: bool | None = None,
    data_dir: str | None = None,
    download: bool = False,
    **options,
) -> tf.data.Dataset:
    """Make a pipeline over a tensorflow-datasets dataset.

    The dataset is read as ``(image, label)`` pairs. The data must already be prepared under
    ``data_dir``; ``download=True`` downloads and prepares it first (needs internet).

    Args:
        name: A tensorflow-datasets name (``"cifar10"``, ``"cifar100"``, ``"imagenette"``,
            ``"imagenet2012"``, ...) or a ready ``tfds`` builder object (for example
            ``tfds.folder_dataset.ImageFolder``).
        split: The split to read (``"train"``, ``"test"``, ...).
        batch_size: The batch size.
        training: Training data (augmented and shuffled by default); defaults to ``split``
            starting with ``"train"``.
        data_dir: Where the data is prepared (tfds' default when ``None``).
        download: Download and prepare the data first when it is not prepared.
        **options: The other arguments of ``pipeline``.

    Returns:
        The batched dataset (see ``pipeline``).

    Raises:
        FileNotFoundError: When the dataset is not prepared and ``download`` is False (the
            message says how to get it).
        ValueError: When tensorflow-datasets has no dataset ``name``, the split cannot be
            read, or an option is invalid.
    """
    import tensorflow_datasets as tfds

    if isinstance(name, str):
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as err:
            raise ValueError(
                f"data.from_tfds: tensorflow-datasets has no dataset named {name!r} ({err}). "
                "See https://www.tensorflow.org/datasets/catalog for names."
            ) from None
        if not builder.is_prepared():
            if download:
                builder.download_and_prepare()
            else:
                base = name.split(":")[0].split("/")[0]
                extra = f" ({_MANUAL[base]})" if base in _MANUAL else ""
                raise FileNotFoundError(
                    f"data.from_tfds: dataset {name!r} is not prepared under "
                    f"'{builder.data_dir}'. On a machine with internet run "
                    f"`tfds build {base} --data_dir DATA_DIR`{extra}, copy DATA_DIR here and "
                    "pass data_dir=DATA_DIR; or call from_tfds(..., download=True) where "
                    "internet is available."
                )
    else:
        builder = name
    if training is None:
        training = split.startswith("train")
    try:
        ds = builder.as_dataset(split=split, as_supervised=True)
    except ValueError as err:
        raise ValueError(f"data.from_tfds: cannot read split {split!r}: {err}") from None
    return pipeline(ds, batch_size=batch_size, training=training, **options)
