"""Data-aware conversion: calibration data, streamed layer statistics, the asymmetric refit,
BatchNorm recalibration and measured output errors.

``convert(model, ..., calibration_data=x)`` runs these steps (each layer reached through the
layer contract, ``layers.CompressedLayer``):

1. ``calibration_batches``: the data checked (shape, dtype, finite, not empty) and cut into
   batches, before any other work; the last eighth of the batches is held out to measure.
2. ``collect_statistics``: ONE pass of the original model over the calibration batches. Each
   layer to replace is wrapped (in a copy of the model) by a recorder that, as the batch
   flows, adds the second moments its method needs (``needed_statistics``: the response Gram
   ``Y^T Y``, per-channel patch moments, vertical-patch moments, pixel moments) to running
   sums: memory is bounded by the statistics, never by the activations. Rows are subsampled
   to at most ``max_rows`` per layer and batch (seeded).
3. The layers are decomposed to minimize their response error on that data
   (``from_source(..., statistics=...)``) at ranks chosen from the response spectra.
4. ``refit``: asymmetric reconstruction (Zhang et al. 2015). One pass runs the original and
   the converted model side by side; for each converted layer the target is the original
   layer's response to the ORIGINAL network's input, the features are the converted layer's
   own intermediate features on the CONVERTED network's input, and its last linear map and
   bias are refitted by least squares in closed form (``set_output_projection``), so errors
   do not pile up with depth. Layers without a refittable output map get a bias correction
   for their mean output shift instead (when they have a bias). All layers are refitted
   from the same pass (a Jacobi step: each sees the inputs of the not-yet-refitted network).
5. ``recalibrate_batchnorm``: every BatchNorm's moving statistics re-estimated on the data.
6. ``measure``: on the held-out batches, each converted layer's relative L2 output error
   (its output in the converted network against the original network's) and the whole
   model's output agreement (top-1 agreement for class outputs, relative L2 otherwise).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from keras import ops

from .. import decompositions as dec
from .. import graph
from ..layers import CompressedLayer

__all__ = [
    "LayerStatistics",
    "calibration_batches",
    "collect_statistics",
    "measure",
    "recalibrate_batchnorm",
    "recalibrate_in_place",
    "reconstruct",
]

MAX_ROWS = 4096  # rows (output pixels) per layer and batch that enter the statistics


# ---- calibration data -----------------------------------------------------------------------


def calibration_batches(
    data,
    model,
    steps: int | None = None,
    batch_size: int = 16,
    what: str = "calibration_data",
) -> list[np.ndarray]:
    """Check calibration data against ``model``'s input and cut it into float32 batches.

    Args:
        data: an array ``(n, *input_shape)``, a ``tf.data.Dataset`` or any iterable of
            batches (``x`` or ``(x, y)``; labels are ignored).
        model: the (single-input) model the data feeds.
        steps: at most this many batches (``None``: all of the data).
        batch_size: rows per batch for array data (iterables keep their own batches).
        what: the argument's name, for error messages.

    Returns:
        A non-empty list of float32 arrays ``(b, *input_shape)``.

    Raises:
        ValueError: naming ``what``: wrong type, shape or dtype, empty, or not finite.
    """
    if not model.inputs or len(model.inputs) != 1:
        raise ValueError(
            f"convert: {what} needs a model with one input; '{model.name}' has "
            f"{len(model.inputs or [])}. Convert without calibration data."
        )
    want = tuple(model.inputs[0].shape[1:])
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(
            f"convert: calibration_steps must be a positive int or None, got {steps!r}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"convert: calibration_batch_size must be a positive int, got {batch_size!r}."
        )
    if data is None:
        raise ValueError(f"convert: {what} is None; pass an array or a dataset of inputs.")
    if isinstance(data, (str, bytes)):
        raise ValueError(
            f"convert: {what} must be an array or a dataset of inputs, got a string {data!r}; "
            "load the file first (the CLI's --calibration-data reads .npy files and folders)."
        )
    if isinstance(data, np.ndarray) or ops.is_tensor(data):
        arr = np.asarray(data)
        if arr.ndim == len(want):  # one sample
            arr = arr[None]
        items = [arr[i : i + batch_size] for i in range(0, len(arr), batch_size)]
    else:
        try:
            iterator = iter(data)
        except TypeError:
            raise ValueError(
                f"convert: {what} must be an array, a tf.data.Dataset or an iterable of "
                f"batches, got {type(data).__name__}."
            ) from None
        items = []
        for item in iterator:
            if isinstance(item, (tuple, list)):
                item = item[0]
            items.append(np.asarray(item))
            if steps is not None and len(items) >= steps:
                break
    if steps is not None:
        items = items[:steps]
    batches = []
    for b in items:
        if b.size == 0:
            continue
        if not (np.issubdtype(b.dtype, np.number) or b.dtype == bool):
            raise ValueError(f"convert: {what} has dtype {b.dtype}; pass numeric inputs.")
        if b.ndim == len(want):
            b = b[None]
        got = tuple(b.shape[1:])
        if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
            raise ValueError(
                f"convert: {what} has samples of shape {got}, the model takes {want}. Pass "
                "inputs shaped (n, *model_input_shape), preprocessed as for the model."
            )
        b = b.astype(np.float32)
        if not np.all(np.isfinite(b)):
            raise ValueError(f"convert: {what} contains NaN or Inf; pass finite inputs.")
        batches.append(b)
    if not batches:
        raise ValueError(f"convert: {what} is empty; pass at least one input sample.")
    return batches


# ---- recording copies of a model -----------------------------------------------------------


class _Recorder(keras.layers.Layer):
    """Wraps a copy of a layer; in eager calls hands ``(key, inputs, outputs)`` to ``hook``
    (and, before the call, may replace the inputs by ``pre(key, inputs)``)."""

    def __init__(self, inner, key, force_training: bool = False, **kwargs):
        super().__init__(name=inner.name, dtype=inner.dtype_policy, **kwargs)
        self.inner = inner
        self.key = key
        self.force_training = force_training
        self.hook: Callable | None = None
        self.pre: Callable | None = None

    def call(self, inputs, training=None, **kwargs):
        kwargs.pop("mask", None)
        if self.pre is not None and not isinstance(inputs, keras.KerasTensor):
            inputs = self.pre(self.key, inputs)
        if self.force_training:
            outputs = self.inner(inputs, training=True, **kwargs)
        else:
            outputs = self.inner(inputs, training=training, **kwargs)
        if self.hook is not None and not isinstance(inputs, keras.KerasTensor):
            self.hook(self.key, inputs, outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.inner.compute_output_shape(input_shape)


def _copy_layer(layer):
    new = layer.__class__.from_config(layer.get_config())
    new.build_from_config(layer.get_build_config())
    if layer.weights:
        graph.copy_weights(layer, new)
    return new


def _recording_copy(model, keys: Mapping[int, Any], force_training: bool = False):
    """A copy of ``model`` whose layers with ``id`` in ``keys`` are wrapped by recorders
    (``{key: recorder}`` is returned with it)."""
    recorders: dict[Any, _Recorder] = {}

    def replace(layer):
        key = keys.get(id(layer))
        if key is None:
            return None
        rec = _Recorder(_copy_layer(layer), key, force_training)
        recorders[key] = rec
        return rec

    return graph.clone_model(model, replace=replace), recorders


def _run(model, recorders, batches, hook) -> None:
    for rec in recorders.values():
        rec.hook = hook
    try:
        for x in batches:
            model(x, training=False)
    finally:
        for rec in recorders.values():
            rec.hook = None


# ---- statistics -------------------------------------------------------------------------------


def _np(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x), np.float32)


def _rows(x, size, strides, dilation, padding) -> np.ndarray:
    """Patches of a ``(B, H, W, C)`` input as rows ``(P, kh*kw*C)`` (kernel-reshape order)."""
    if tuple(size) == (1, 1) and tuple(strides) == (1, 1):
        a = _np(x)
        return a.reshape(-1, a.shape[-1])
    p = ops.image.extract_patches(
        x, tuple(size), strides=tuple(strides), dilation_rate=tuple(dilation), padding=padding
    )
    a = _np(p)
    return a.reshape(-1, a.shape[-1])


def _subsample(n: int, max_rows: int, rng) -> np.ndarray | slice:
    if n <= max_rows:
        return slice(None)
    return np.sort(rng.choice(n, size=max_rows, replace=False))


@dataclass
class LayerStatistics:
    """Streamed second moments of one layer's calibration inputs and responses.

    Attributes:
        kinds: the statistic kinds collected (``layers.CompressedLayer.data_statistics``).
        sums: ``{kind: running sum}``; ``"response"`` is ``Y^T Y`` of the source's responses
            (no bias), ``"taps"`` per-channel patch moments ``(C, kh*kw, kh*kw)``,
            ``"rows"`` vertical-patch moments, ``"channels"`` pixel moments ``(C, C)``.
        count: rows added (output pixels, or input pixels for ``"channels"``).
    """

    kinds: tuple[str, ...]
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, value: np.ndarray, rows: int) -> None:
        value = np.asarray(value, np.float64)
        self.sums[kind] = self.sums[kind] + value if kind in self.sums else value
        self.count[kind] = self.count.get(kind, 0) + int(rows)

    def moments(self) -> dict[str, np.ndarray]:
        """``{kind: sum / count}``: the second moments (the scale does not change the
        factorizations, only the ridge's meaning)."""
        return {k: v / max(self.count[k], 1) for k, v in self.sums.items()}


def _geometry(source):
    if isinstance(source, keras.layers.Dense):
        return None
    return dict(
        size=tuple(source.kernel_size),
        strides=tuple(source.strides),
        dilation=tuple(source.dilation_rate),
        padding=source.padding,
    )


def _patch_rows(source, x) -> np.ndarray:
    """Every row that a source layer multiplies by its kernel reshaped to ``(D, N)``: the
    patches of a ``Conv2D``'s input, the feature vectors of a ``Dense``'s."""
    if isinstance(source, keras.layers.Dense):
        a = _np(x)
        return a.reshape(-1, a.shape[-1])
    g = _geometry(source)
    return _rows(x, g["size"], g["strides"], g["dilation"], g["padding"])


def _source_rows(source, x, rng, max_rows):
    """``(patch rows, response rows, subsample index)`` of a source layer on input ``x``."""
    rows = _patch_rows(source, x)
    idx = _subsample(len(rows), max_rows, rng)
    rows = rows[idx]
    kernel = _np(source.kernel)
    return rows, rows @ kernel.reshape(-1, kernel.shape[-1]), idx


def _add_statistics(stats: LayerStatistics, source, x, rng, max_rows) -> None:
    kinds = set(stats.kinds)
    if kinds & {"response", "taps"} or not kinds:
        rows, resp, _ = _source_rows(source, x, rng, max_rows)
        if "response" in kinds:
            stats.add("response", resp.T @ resp, len(rows))
        if "taps" in kinds:
            kh, kw = source.kernel_size
            c = rows.shape[1] // (kh * kw)
            t = rows.reshape(len(rows), kh * kw, c)
            stats.add("taps", np.einsum("pkc,plc->ckl", t, t, optimize=True), len(rows))
    if "rows" in kinds:
        (kh, _), (sh, _), (dh, _) = source.kernel_size, source.strides, source.dilation_rate
        r = _rows(x, (kh, 1), (sh, 1), (dh, 1), source.padding)
        r = r[_subsample(len(r), max_rows, rng)]
        stats.add("rows", r.T @ r, len(r))
    if "channels" in kinds:
        a = _np(x)
        a = a.reshape(-1, a.shape[-1])
        a = a[_subsample(len(a), max_rows, rng)]
        stats.add("channels", a.T @ a, len(a))


def collect_statistics(
    model,
    layers: Mapping[Any, tuple[Any, tuple[str, ...]]],
    batches: list[np.ndarray],
    max_rows: int = MAX_ROWS,
    seed: int = 0,
) -> dict[Any, LayerStatistics]:
    """One pass of ``model`` over ``batches``, streaming each listed layer's statistics.

    Args:
        model: the original graph model (not modified: a recording copy runs).
        layers: ``{key: (source layer of model, kinds)}``.
        batches: calibration batches (``calibration_batches``).
        max_rows: rows per layer and batch that enter the sums (seeded subsample).
        seed: the subsampling seed.

    Returns:
        ``{key: LayerStatistics}``.
    """
    rng = np.random.default_rng(seed)
    keys = {id(src): key for key, (src, _) in layers.items()}
    stats = {key: LayerStatistics(tuple(kinds)) for key, (_, kinds) in layers.items()}
    copy, recorders = _recording_copy(model, keys)

    def hook(key, inputs, outputs):
        _add_statistics(stats[key], recorders[key].inner, inputs, rng, max_rows)

    _run(copy, recorders, batches, hook)
    return stats


# ---- the asymmetric refit ----------------------------------------------------------------------


@dataclass
class _Refit:
    new: CompressedLayer
    source: Any
    front: list | None  # the converted layer's inference layers before the last one
    last: Any  # the last inference layer (its geometry)
    sums: dict = field(default_factory=dict)


def _acc(d: dict, key: str, value) -> None:
    d[key] = d[key] + value if key in d else np.asarray(value, np.float64)


def _bn_axis(bn) -> int:
    return bn.axis if isinstance(bn.axis, int) else bn.axis[0]


def _channel_moments(bn, x) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel ``(sum, sum of squares, count)`` of a BatchNorm's input."""
    a = np.moveaxis(_np(x), _bn_axis(bn), -1)
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    return a.sum(axis=0), (a * a).sum(axis=0), len(a)


def reconstruct(
    original,
    converted,
    pairs: Mapping[Any, tuple[Any, Any]],
    batches: list[np.ndarray],
    refit: bool = True,
    batchnorm: bool = True,
    max_rows: int = MAX_ROWS,
    seed: int = 1,
    passes: int = 4,
) -> dict[Any, str]:
    """Asymmetric reconstruction of the converted layers, then BatchNorm correction.

    The layers (``pairs`` in the order of the graph, inputs first) are refitted in up to
    ``passes`` consecutive groups, one pass over the data each, so that each group is fitted
    to the inputs of the already refitted layers before it (with one group, every layer
    would be fitted to the inputs of the not-yet-refitted network and the corrections of
    consecutive layers would add up: measured here on DeCEF at low rank, the error grew).
    The BatchNorm correction follows in a last pass. See ``_reconstruct_pass``.

    Args:
        original: the original model.
        converted: the converted model (updated in place).
        pairs: ``{key: (source layer, replacement layer)}`` in graph order.
        batches: calibration batches.
        refit: refit the replacements' output maps (or correct their bias).
        batchnorm: correct the BatchNorm moving statistics.
        max_rows: rows per layer and batch (seeded subsample).
        seed: the subsampling seed.
        passes: the number of refit groups (passes over the data).

    Returns:
        ``{key: "refit" | "bias" | "none"}`` and ``"batchnorms"``: the number corrected.
    """
    keys = list(pairs)
    done: dict[Any, Any] = {key: "none" for key in keys}
    if refit and keys:
        n = max(1, min(int(passes), len(keys)))
        for i, group in enumerate(np.array_split(np.arange(len(keys)), n)):
            part = {keys[j]: pairs[keys[j]] for j in group}
            out = _reconstruct_pass(
                original, converted, part, batches, True, False, max_rows, seed + i
            )
            out.pop("batchnorms")
            done.update(out)
    if batchnorm:
        out = _reconstruct_pass(original, converted, {}, batches, False, True, max_rows, seed)
        done["batchnorms"] = out["batchnorms"]
    else:
        done["batchnorms"] = 0
    return done


def _reconstruct_pass(
    original,
    converted,
    pairs: Mapping[Any, tuple[Any, Any]],
    batches: list[np.ndarray],
    refit: bool = True,
    batchnorm: bool = True,
    max_rows: int = MAX_ROWS,
    seed: int = 1,
) -> dict[Any, str]:
    """Asymmetric reconstruction of the converted layers and BatchNorm correction, in place.

    One pass runs the original and the converted model side by side over ``batches``.

    Refit (``refit``), for each key ``(source layer of original, replacement layer of
    converted)``: the target is the source's pre-activation response ``Y = conv(X, W) + b``
    to the original network's input ``X``; with ``Z`` the replacement's features before its
    last linear map (its ``inference_layers()``) on the converted network's input ``X^``,
    the last map ``K`` and bias ``b`` solve ``min ||Y - Z K - b||``
    (``decompositions.least_squares_refit``) and are set with ``set_output_projection``.
    Replacements without a refittable map but with a bias get
    ``b += mean(Y) - mean(conv(X^, W_r) + b)`` (bias correction).

    BatchNorm correction (``batchnorm``): each BatchNorm of the converted model sees inputs
    of per-channel mean and standard deviation ``mu^, s^`` where the original saw
    ``mu, s``; its moving statistics ``m, v`` become ``m' = mu^ + (m - mu) s^ / s`` and
    ``v' = (v + eps) (s^ / s)^2 - eps``, so it maps the converted activations as the
    original mapped the original ones. At full rank nothing changes (unlike re-estimating
    the statistics from scratch, which also changes a model whose moving statistics do not
    match its data). During the pass each converted BatchNorm's input is already mapped to
    the original's batch statistics, so deeper layers see corrected activations.

    Args:
        original: the original model.
        converted: the converted model (updated in place).
        pairs: ``{key: (source layer, replacement layer)}``.
        batches: calibration batches.
        refit: refit the replacements' output maps (or correct their bias).
        batchnorm: correct the BatchNorm moving statistics.
        max_rows: rows per layer and batch (seeded subsample).
        seed: the subsampling seed.

    Returns:
        ``{key: "refit" | "bias" | "none"}`` for the replacements, and ``{"batchnorms": n}``
        (the number of BatchNorm layers corrected) under the key ``"batchnorms"``.
    """
    rng = np.random.default_rng(seed)
    jobs: dict[Any, _Refit] = {}
    if refit:
        for key, (src, new) in pairs.items():
            arrangement = new.inference_layers() if new.refittable_output else None
            if arrangement:
                jobs[key] = _Refit(new, src, arrangement[:-1], arrangement[-1])
            elif new.use_bias:
                jobs[key] = _Refit(new, src, None, None)
    bns: dict[Any, tuple[Any, Any]] = {}
    if batchnorm:
        orig_bn = {
            path: la
            for path, la in graph.walk(original)
            if isinstance(la, keras.layers.BatchNormalization)
        }
        for path, la in graph.walk(converted):
            if isinstance(la, keras.layers.BatchNormalization) and path in orig_bn:
                bns[("bn", path)] = (orig_bn[path], la)
    done: dict[Any, Any] = {key: "none" for key in pairs}
    if not jobs and not bns:
        done["batchnorms"] = 0
        return done
    orig_keys = {id(j.source): key for key, j in jobs.items()}
    conv_keys = {id(j.new): key for key, j in jobs.items()}
    orig_keys.update({id(o): key for key, (o, _) in bns.items()})
    conv_keys.update({id(c): key for key, (_, c) in bns.items()})
    orig_copy, orig_rec = _recording_copy(original, orig_keys)
    conv_copy, conv_rec = _recording_copy(converted, conv_keys)
    stash: dict[Any, Any] = {}
    bn_sums: dict[Any, dict] = {key: {} for key in bns}

    def keep(key, inputs, outputs):
        if key in bns:
            s1, s2, n = _channel_moments(orig_rec[key].inner, inputs)
            stash[key] = (s1 / n, np.sqrt(np.maximum(s2 / n - (s1 / n) ** 2, 0.0)))
            _acc(bn_sums[key], "s", s1)
            _acc(bn_sums[key], "q", s2)
            _acc(bn_sums[key], "n", n)
        else:
            stash[key] = inputs

    def match(key, inputs):
        """Map a converted BatchNorm's input to the original's batch statistics."""
        if key not in bns:
            return inputs
        bn = conv_rec[key].inner
        s1, s2, n = _channel_moments(bn, inputs)
        _acc(bn_sums[key], "s^", s1)
        _acc(bn_sums[key], "q^", s2)
        mu_b, sd_b = stash[key]
        mu_h = s1 / n
        sd_h = np.sqrt(np.maximum(s2 / n - mu_h**2, 0.0))
        scale = np.where(sd_h > 1e-12, sd_b / np.maximum(sd_h, 1e-12), 1.0)
        shape = [1] * len(inputs.shape)
        shape[_bn_axis(bn)] = -1
        a = _np(inputs)
        out = (a - mu_h.reshape(shape)) * scale.reshape(shape) + mu_b.reshape(shape)
        return ops.convert_to_tensor(out.astype(np.float32))

    def fit(key, inputs, outputs):
        if key in bns:
            return
        job = jobs[key]
        x = stash[key]
        src = job.source
        _, y, idx = _source_rows(src, x, rng, max_rows)
        if src.use_bias:
            y = y + _np(src.bias)
        if job.front is None:  # bias correction: mean of the converted pre-activation output
            w_new = np.asarray(job.new.folded_kernel_and_bias()[0], np.float32)
            xh = _patch_rows(src, inputs)[idx]
            yh = xh @ w_new.reshape(-1, w_new.shape[-1]) + _np(job.new.bias)
            _acc(job.sums, "shift", (y - yh).sum(axis=0))
            _acc(job.sums, "n", len(y))
            return
        z = inputs
        for op in job.front:
            z = op(z)
        last = job.last
        zr = _rows(z, last.kernel_size, last.strides, last.dilation_rate, last.padding)[idx]
        _acc(job.sums, "zz", zr.T @ zr)
        _acc(job.sums, "zy", zr.T @ y)
        _acc(job.sums, "z", zr.sum(axis=0))
        _acc(job.sums, "y", y.sum(axis=0))
        _acc(job.sums, "n", len(y))

    for rec in conv_rec.values():
        rec.pre = match
    try:
        for x in batches:
            _run(orig_copy, orig_rec, [x], keep)
            _run(conv_copy, conv_rec, [x], fit)
            stash.clear()
    finally:
        for rec in conv_rec.values():
            rec.pre = None
    for key, job in jobs.items():
        s = job.sums
        if not s:
            continue
        if job.front is None:
            b = np.asarray(job.new.bias, np.float64) + s["shift"] / s["n"]
            job.new.bias.assign(b.astype(np.float32))
            done[key] = "bias"
            continue
        k, b = dec.least_squares_refit(
            s["zz"], s["zy"], s["z"], s["y"], float(s["n"]), intercept=job.new.use_bias
        )
        job.new.set_output_projection(k.reshape(tuple(job.last.kernel.shape)), b)
        done[key] = "refit"
    for key, (_, bn) in bns.items():
        s = bn_sums[key]
        n = s["n"]
        mu, mu_h = s["s"] / n, s["s^"] / n
        sd = np.sqrt(np.maximum(s["q"] / n - mu**2, 0.0))
        sd_h = np.sqrt(np.maximum(s["q^"] / n - mu_h**2, 0.0))
        ratio = np.where(sd > 1e-12, sd_h / np.maximum(sd, 1e-12), 1.0)
        m = np.asarray(bn.moving_mean, np.float64)
        v = np.asarray(bn.moving_variance, np.float64)
        bn.moving_mean.assign((mu_h + (m - mu) * ratio).astype(np.float32))
        new_v = np.maximum((v + bn.epsilon) * ratio**2 - bn.epsilon, 0.0)
        bn.moving_variance.assign(new_v.astype(np.float32))
    done["batchnorms"] = len(bns)
    return done


# ---- BatchNorm recalibration -------------------------------------------------------------------


def recalibrate_batchnorm(model, data, steps: int | None = None, batch_size: int = 16):
    """A copy of ``model`` whose BatchNorm moving statistics are re-estimated on ``data``.

    One pass over the data in which every BatchNorm normalizes with the statistics of its
    batch (as in training) while every other layer runs in inference mode; each BatchNorm's
    moving mean and variance become the mean and variance of its inputs over all the data
    (the usual recalibration after the weights change, e.g. Nagel et al. 2019). Use it after
    any conversion, pruning or quantization that shifts the activations.

    Args:
        model: a Functional or Sequential model (not modified).
        data: unlabeled inputs (an array, a ``tf.data.Dataset`` or an iterable of batches).
        steps: at most this many batches (``None``: all).
        batch_size: rows per batch for array data.

    Returns:
        The new model (same architecture and weights, BatchNorm statistics re-estimated).

    Raises:
        ValueError: for bad ``data`` (see ``calibration_batches``).
    """
    batches = (
        data
        if _is_batch_list(data)
        else calibration_batches(data, model, steps, batch_size, what="data")
    )
    copies: dict[int, Any] = {}

    def replace(layer):
        if not isinstance(layer, keras.layers.BatchNormalization):
            return None
        new = _copy_layer(layer)
        copies[id(layer)] = new
        return new

    new_model = graph.clone_model(model, replace=replace)
    _recalibrate(model, copies, batches)
    return new_model


def _recalibrate(model, targets: Mapping[int, Any], batches: list[np.ndarray]) -> int:
    """Run ``model`` (with its BatchNorms in training mode) over ``batches`` and set the
    moving statistics of ``targets[id(bn of model)]`` (BatchNorm layers, possibly the same
    objects) from the inputs each BatchNorm saw. Returns the number updated."""
    copies = dict(targets)
    if not copies:
        return 0
    keys = {i: i for i in copies}
    rec_copy, recorders = _recording_copy(model, keys, force_training=True)
    sums: dict[int, dict] = {i: {} for i in copies}

    def hook(key, inputs, outputs):
        bn = recorders[key].inner
        axis = bn.axis if isinstance(bn.axis, int) else bn.axis[0]
        a = np.moveaxis(_np(inputs), axis, -1)
        a = a.reshape(-1, a.shape[-1]).astype(np.float64)
        _acc(sums[key], "s", a.sum(axis=0))
        _acc(sums[key], "q", (a * a).sum(axis=0))
        _acc(sums[key], "n", len(a))

    _run(rec_copy, recorders, batches, hook)
    for i, bn in copies.items():
        s = sums[i]
        if not s:
            continue
        mean = s["s"] / s["n"]
        var = np.maximum(s["q"] / s["n"] - mean**2, 0.0)
        bn.moving_mean.assign(mean.astype(np.float32))
        bn.moving_variance.assign(var.astype(np.float32))
    return len(copies)


def recalibrate_in_place(model, batches: list[np.ndarray]) -> int:
    """``recalibrate_batchnorm`` on a model that the caller owns: its own BatchNorms are
    updated in place.

    Args:
        model: a graph model the caller may modify (e.g. the output of ``convert``).
        batches: calibration batches (``calibration_batches``).

    Returns:
        The number of BatchNorm layers updated.
    """
    bns = {
        id(la): la
        for la in graph.flatten_layers(model)
        if isinstance(la, keras.layers.BatchNormalization)
    }
    return _recalibrate(model, bns, batches)


def _is_batch_list(data) -> bool:
    return isinstance(data, list) and all(isinstance(b, np.ndarray) for b in data) and data


# ---- measuring --------------------------------------------------------------------------------


def _outputs(model, x) -> list[np.ndarray]:
    return [_np(v) for v in keras.tree.flatten(model(x, training=False))]


def measure(
    original, converted, pairs: Mapping[Any, tuple[Any, Any]], batches: list[np.ndarray]
) -> tuple[dict[Any, float], dict[str, float]]:
    """Measured errors of a conversion on held-out batches.

    Args:
        original: the original model.
        converted: the converted model.
        pairs: ``{key: (source layer of original, replacement layer of converted)}``.
        batches: held-out calibration batches.

    Returns:
        ``(layer_errors, model)``: per key, the relative L2 error ``||y^ - y|| / ||y||`` of
        the replacement's output in the converted network against the source's output in
        the original network; and for the whole model ``{"relative_error": ...}`` plus
        ``"top1_agreement"`` when the first output has a class axis (last axis > 1, 2-D).
    """
    orig_keys = {id(src): key for key, (src, _) in pairs.items()}
    conv_keys = {id(new): key for key, (_, new) in pairs.items()}
    orig_copy, orig_rec = _recording_copy(original, orig_keys)
    conv_copy, conv_rec = _recording_copy(converted, conv_keys)
    stash: dict[Any, np.ndarray] = {}
    err: dict[Any, list[float]] = {key: [0.0, 0.0] for key in pairs}
    totals = {"diff": 0.0, "ref": 0.0, "agree": 0.0, "n": 0.0}
    class_axis = False

    def keep(key, inputs, outputs):
        stash[key] = _np(outputs)

    def compare(key, inputs, outputs):
        ref = stash.pop(key)
        got = _np(outputs)
        err[key][0] += float(np.sum((got - ref) ** 2))
        err[key][1] += float(np.sum(ref**2))

    for x in batches:
        for rec in orig_rec.values():
            rec.hook = keep
        ref = [_np(v) for v in keras.tree.flatten(orig_copy(x, training=False))]
        for rec in orig_rec.values():
            rec.hook = None
        for rec in conv_rec.values():
            rec.hook = compare
        got = [_np(v) for v in keras.tree.flatten(conv_copy(x, training=False))]
        for rec in conv_rec.values():
            rec.hook = None
        stash.clear()
        for r, g in zip(ref, got):
            totals["diff"] += float(np.sum((g - r) ** 2))
            totals["ref"] += float(np.sum(r**2))
        r0, g0 = ref[0], got[0]
        if r0.ndim == 2 and r0.shape[-1] > 1:
            class_axis = True
            totals["agree"] += float(np.sum(r0.argmax(-1) == g0.argmax(-1)))
            totals["n"] += len(r0)
    layer_errors = {k: math.sqrt(d / r) if r > 0 else 0.0 for k, (d, r) in err.items()}
    out = {"relative_error": math.sqrt(totals["diff"] / max(totals["ref"], 1e-30))}
    if class_axis:
        out["top1_agreement"] = totals["agree"] / max(totals["n"], 1.0)
    return layer_errors, out


def _timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds)``."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t
