"""The one model loader of the command line: a ``.keras``/``.h5`` file or a
``keras.applications`` model by name; and the loader of ``.npy``/``.npz`` arrays."""

from __future__ import annotations

import difflib
import os
import zipfile
from collections.abc import Callable

import keras
import numpy as np

__all__ = ["load_array", "load_model"]


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
