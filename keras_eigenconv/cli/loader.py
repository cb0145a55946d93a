"""The one model loader of the command line: a ``.keras``/``.h5`` file or a
``keras.applications`` model by name; and the loader of ``.npy``/``.npz`` arrays."""

from __future__ import annotations

import difflib
import os
import zipfile
from collections.abc import Callable

import keras
import numpy as np

__all__ = ["IMAGE_SUFFIXES", "load_array", "load_images", "load_inputs", "load_model"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _applications() -> dict[str, Callable]:
    apps = {}
    for name in dir(keras.applications):
        fn = getattr(keras.applications, name)
        if name[:1].isupper() and callable(fn):
            apps[name.lower().replace("_", "")] = fn
    return apps


def load_model(spec: str, weights: str | None = "imagenet", input_shape=None) -> keras.Model:
    """Load a ``.keras``/``.h5`` file, or build a ``keras.applications`` model by name.

    Args:
        spec: A ``.keras``/``.h5`` file path (also any path holding a path separator), or a
            ``keras.applications`` model name, case-insensitive, ``_`` and ``-`` ignored
            (``resnet50``, ``mobilenetv2``, ...).
        weights: For a ``keras.applications`` model: ``"imagenet"``, ``None``/``"none"``, or
            a weights file.
        input_shape: For a ``keras.applications`` model: its ``(H, W, C)`` input shape, or
            None for its default.

    Returns:
        The model.

    Raises:
        FileNotFoundError: When the model file does not exist.
        ValueError: When ``spec`` is neither a model file nor a ``keras.applications`` name
            (the message suggests close names), the file is a directory, corrupt or not a
            Keras model (the message names the file and the problem), or the model cannot
            be built (e.g. offline with ``weights="imagenet"``).
    """
    if spec.endswith((".keras", ".h5")) or os.path.sep in spec:
        if not os.path.exists(spec):
            raise FileNotFoundError(f"no such model file: {spec}")
        if os.path.isdir(spec):
            raise ValueError(f"{spec} is a directory; give a .keras (or .h5) model file.")
        if spec.endswith(".keras") and not zipfile.is_zipfile(spec):
            raise ValueError(
                f"{spec} is not a valid .keras file (not a zip archive: truncated or "
                "corrupt?); save the model again with model.save()."
            )
        import keras_eigenconv  # noqa: F401  (registers the package's layers)

        try:
            return keras.saving.load_model(spec)
        except Exception as err:  # noqa: BLE001 - h5py/zip/deserialization errors alike
            first = next((line for line in str(err).splitlines() if line.strip()), "")
            raise ValueError(
                f"cannot load the model file {spec}: {first or type(err).__name__}"
            ) from err
    apps = _applications()
    key = spec.lower().replace("_", "").replace("-", "")
    if key not in apps:
        close = difflib.get_close_matches(key, apps, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"'{spec}' is neither a .keras file nor a keras.applications model.{hint} "
            f"Known: {', '.join(sorted(apps))}."
        )
    kwargs = {"weights": None if weights in (None, "none", "None") else weights}
    if input_shape is not None:
        kwargs["input_shape"] = tuple(input_shape)
    try:
        return apps[key](**kwargs)
    except Exception as err:  # noqa: BLE001 - surface constructor/download errors cleanly
        raise ValueError(
            f"could not build {apps[key].__name__}({kwargs}): {err}. Offline, use "
            "--weights none or a local weights file."
        ) from None


def load_array(path: str | None, key: str = "x", missing_ok: bool = False):
    """Load an array from a ``.npy`` file, or one array of a ``.npz`` file.

    Args:
        path: The ``.npy`` or ``.npz`` file, or None.
        key: The name of the array in a ``.npz`` file.
        missing_ok: Return None when a ``.npz`` file has no array ``key``.

    Returns:
        The array, or None when ``path`` is None.

    Raises:
        FileNotFoundError: When the file does not exist.
        ValueError: When the file is a directory or not a readable ``.npy``/``.npz``
            file, or a ``.npz`` file has no array ``key``.
    """
    if path is None:
        return None
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such array file: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; give a .npy or .npz file.")
    try:
        data = np.load(path)
    except Exception as err:  # noqa: BLE001 - corrupt, pickled or not NumPy at all
        first = next((line for line in str(err).splitlines() if line.strip()), "")
        raise ValueError(
            f"{path} is not a readable .npy/.npz file ({first or type(err).__name__})."
        ) from err
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            if key not in data:
                if missing_ok:
                    return None
                raise ValueError(f"{path}: no array '{key}' in the .npz (has {list(data.keys())}).")
            try:
                return data[key]
            except Exception as err:  # noqa: BLE001 - a damaged member of the archive
                raise ValueError(f"{path}: cannot read the array '{key}' ({err}).") from err
    return data


def load_images(folder: str, input_shape, limit: int | None = None) -> np.ndarray:
    """Read the images of a folder (sorted by name, not recursive) at a model's input size.

    Args:
        folder: the folder.
        input_shape: the model input ``(H, W, C)`` (``C`` 1: grayscale, 3: RGB).
        limit: at most this many images.

    Returns:
        A float32 array ``(n, H, W, C)`` of pixel values in ``[0, 255]`` (apply the model's
        own preprocessing afterwards).

    Raises:
        ValueError: when the folder holds no image or the model input is not an image.
    """
    import keras

    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] not in (1, 3) or None in shape[:2]:
        raise ValueError(
            f"{folder}: images need a model input (H, W, 1 or 3) of fixed size, the model "
            f"takes {shape}; pass a .npy file of preprocessed inputs instead."
        )
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
    if limit is not None:
        names = names[:limit]
    if not names:
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}).")
    mode = "grayscale" if shape[-1] == 1 else "rgb"
    out = []
    for n in names:
        path = os.path.join(folder, n)
        try:
            img = keras.utils.load_img(path, color_mode=mode, target_size=shape[:2])
        except Exception as err:  # noqa: BLE001 - not an image PIL can read
            raise ValueError(f"{path} is not a readable image ({err}).") from err
        out.append(np.asarray(keras.utils.img_to_array(img), np.float32))
    return np.stack(out)


def load_inputs(path: str, input_shape, scale: float = 1.0, limit: int | None = None):
    """Calibration inputs from a ``.npy``/``.npz`` (``x``) file or a folder of images.

    Args:
        path: the file or folder.
        input_shape: the model input ``(H, W, C)`` (for images).
        scale: images are multiplied by it (e.g. ``1/255``); arrays are used as they are.
        limit: at most this many samples.

    Returns:
        The inputs, an array.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when it holds no usable inputs.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or folder: {path}")
    if os.path.isdir(path):
        return load_images(path, input_shape, limit) * np.float32(scale)
    x = load_array(path)
    return x if limit is None else x[:limit]
