"""Rewrite a model into its fastest equivalent inference graph for LiteRT.

``prepare_for_inference(model)`` returns a new model (the user's is left untouched) in which

- every compressed layer (one with ``inference_layers()`` and/or ``to_conv2d()``) becomes the
  fastest of its equivalent plain-Keras arrangements:

  - ``"factorized"``: its own factor ops (``layer.inference_layers()``);
  - ``"tiled"``: for a ``DepthwiseConv2D(depth_multiplier=r)`` followed by a 1x1 ``Conv2D``
    (DeCEF): the input tiled ``r`` times along channels (one ``CONCATENATION``), a
    multiplier-1 ``DepthwiseConv2D`` on ``C*r`` channels and the 1x1 conv with its input
    rows permuted from ``c*r + j`` to ``j*C + c``. Same MACs, but XNNPACK runs multiplier-1
    depthwise convs several times faster than multiplier-``r`` ones;
  - ``"native"`` (layers without ``inference_layers()``, e.g. Tucker-2, CP, SSC): the layer
    itself with ``implementation="factorized"``;
  - ``"dense"``: the folded ``Conv2D`` (``layer.to_conv2d()``);

- a ``BatchNormalization`` that alone consumes the output of a conv (``Conv2D``,
  ``DepthwiseConv2D``, ``Dense`` or a compressed layer) with a linear activation is folded
  into it: ``W' = W * s``, ``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``;
- training-only layers (``Dropout`` and friends, ``GaussianNoise``, ``ActivityRegularization``)
  become ``Identity``.

How the arrangement is chosen (``strategy``):

- ``"measure"`` (default): each candidate is converted alone to a ``.tflite`` model for the
  layer's input shape (batch 1) and timed with ``ai_edge_litert`` (XNNPACK, ``num_threads``
  threads), interleaved, median of several rounds; the fastest wins. Timings are cached in a
  JSON file keyed by the candidate's ops, shapes, threads and quantization
  (``$KERAS_EIGENCONV_TIMING_CACHE`` or ``~/.cache/keras_eigenconv/litert_timings.json``), so
  a shape is measured once per machine.
- ``"cost_model"``: no timing; ``time = sum_op (t_kind * MACs_op + t_op)`` with per-kind
  seconds per MAC (``conv``, ``pointwise``, ``depthwise``, ``depthwise_multiplier``) and a
  per-op overhead, least-squares fitted to the entries of the timing cache when it holds
  enough of them (``CostModel.from_cache``), else ``DEFAULT_COST_MODEL`` (measured on the
  2-core reference machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from keras import ops

from .. import graph
from ..layers import ChannelTile, CompressedLayer
from ..layers.inference import tiled_kernels
from .timing import CostModel, LiteRTTimer

__all__ = [
    "PrepareReport",
    "STRATEGIES",
    "TRAINING_ONLY",
    "candidate_arrangements",
    "fold_batchnorm",
    "prepare_for_inference",
]

TRAINING_ONLY = (
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
)
STRATEGIES = ("measure", "cost_model")


# ---- arrangements ------------------------------------------------------------------------


def _linear(layer) -> bool:
    """Whether ``layer`` (one with an ``activation``) applies no activation."""
    act = layer.activation
    return act is None or act is keras.activations.linear or act.__name__ == "linear"


def _tile_depthwise(layers: list) -> list | None:
    """Rewrite ``DepthwiseConv2D(mult r > 1, linear) -> Conv2D 1x1`` as
    ``ChannelTile(r) -> DepthwiseConv2D(mult 1) -> Conv2D 1x1`` (rows permuted); ``None`` if
    ``layers`` has no such pair."""
    out, changed, i = [], False, 0
    while i < len(layers):
        dw = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if (
            isinstance(dw, keras.layers.DepthwiseConv2D)
            and dw.depth_multiplier > 1
            and _linear(dw)
            and isinstance(nxt, keras.layers.Conv2D)
            and tuple(nxt.kernel_size) == (1, 1)
            and tuple(nxt.strides) == (1, 1)
            and nxt.groups == 1
        ):
            e = np.asarray(ops.convert_to_numpy(dw.kernel))  # (kh, kw, C, r)
            _, _, c, r = e.shape
            a = np.asarray(ops.convert_to_numpy(nxt.kernel))  # (1, 1, C*r, N), row c*r + j
            tiled_e, tiled_a = tiled_kernels(e, a)
            new_dw = keras.layers.DepthwiseConv2D(
                dw.kernel_size,
                strides=dw.strides,
                padding=dw.padding,
                depth_multiplier=1,
                dilation_rate=dw.dilation_rate,
                use_bias=dw.use_bias,
                name=dw.name,
                dtype=dw.dtype_policy,
            )
            new_dw.build((None, None, None, c * r))
            new_dw.kernel.assign(tiled_e)  # tiled channel j*C + c: eigen-filter E[:, :, c, j]
            if dw.use_bias:
                b = np.asarray(ops.convert_to_numpy(dw.bias)).reshape(c, r)
                new_dw.bias.assign(b.T.reshape(-1))
            new_pw = keras.layers.Conv2D.from_config(nxt.get_config())
            new_pw.build((None, None, None, c * r))
            new_pw.kernel.assign(tiled_a)
            if nxt.use_bias:
                new_pw.bias.assign(ops.convert_to_numpy(nxt.bias))
            out += [ChannelTile(r, name=f"{dw.name}_tile", dtype=dw.dtype_policy), new_dw, new_pw]
            changed, i = True, i + 2
        else:
            out.append(dw)
            i += 1
    return out if changed else None


def candidate_arrangements(layer: CompressedLayer) -> dict[str, list]:
    """List the equivalent plain-Keras arrangements of a compressed layer, by name.

    Args:
        layer: A built ``CompressedLayer`` that has been called (its input shape is known).

    Returns:
        ``{name: [built layers, weights set]}``: ``"factorized"`` from
        ``layer.inference_layers()`` when the layer offers one, ``"tiled"`` when that holds a
        multiplier-``r`` depthwise + 1x1 pair; otherwise ``"native"``, a copy of the layer
        itself with ``implementation="factorized"``; and always ``"dense"``, the folded
        source layer (``layer.to_source()``).
    """
    out: dict[str, list] = {}
    factorized = layer.inference_layers()
    if factorized is not None:
        out["factorized"] = list(factorized)
        tiled = _tile_depthwise(out["factorized"])
        if tiled is not None:
            out["tiled"] = tiled
    else:
        shape = graph.input_shape(layer)
        config = {**layer.get_config(), "implementation": "factorized"}
        native = type(layer).from_config(config)
        native.build((None, *((None,) * (len(shape) - 2)), int(shape[-1])))
        native.set_weights(layer.get_weights())
        out["native"] = [native]
    out["dense"] = [layer.to_source()]
    return out


# ---- BatchNorm folding -------------------------------------------------------------------


def _bn_scale_shift(bn) -> tuple[np.ndarray, np.ndarray]:
    var = np.asarray(ops.convert_to_numpy(bn.moving_variance), np.float64)
    mean = np.asarray(ops.convert_to_numpy(bn.moving_mean), np.float64)
    gamma = np.asarray(ops.convert_to_numpy(bn.gamma), np.float64) if bn.scale else 1.0
    beta = np.asarray(ops.convert_to_numpy(bn.beta), np.float64) if bn.center else 0.0
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale * np.ones_like(mean), beta - mean * scale


def _foldable_into(layer) -> bool:
    L = keras.layers
    return (
        isinstance(layer, (L.Conv2D, L.DepthwiseConv2D, L.Dense))
        and not isinstance(layer, (L.Conv2DTranspose, L.SeparableConv2D))
        and _linear(layer)
    )


def fold_batchnorm(layer, bn):
    """Fold an inference-mode BatchNormalization into the layer before it.

    With ``s = gamma / sqrt(var + eps)``: ``W' = W * s`` per output channel and
    ``b' = (b - mean) * s + beta``.

    Args:
        layer: A built ``Conv2D``, ``DepthwiseConv2D`` or ``Dense`` layer with a linear
            activation.
        bn: The built ``BatchNormalization`` that follows ``layer``.

    Returns:
        A new built copy of ``layer`` (with a bias) with ``bn`` folded in.

    Raises:
        ValueError: When ``layer`` is not a ``Conv2D``, ``DepthwiseConv2D`` or ``Dense``
            with a linear activation.
    """
    if not _foldable_into(layer):
        raise ValueError(
            f"fold_batchnorm: cannot fold BatchNormalization '{bn.name}' into "
            f"{type(layer).__name__} '{layer.name}' (needs Conv2D, DepthwiseConv2D or Dense "
            "with a linear activation)."
        )
    scale, shift = _bn_scale_shift(bn)
    kernel = np.asarray(ops.convert_to_numpy(layer.kernel), np.float64)
    bias = (
        np.asarray(ops.convert_to_numpy(layer.bias), np.float64)
        if layer.use_bias
        else np.zeros(scale.shape)
    )
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw, c, m = kernel.shape
        kernel = kernel * scale.reshape(1, 1, c, m)
    else:
        kernel = kernel * scale  # last axis = output channels
    bias = bias * scale + shift
    config = layer.get_config()
    config["use_bias"] = True
    new = type(layer).from_config(config)
    in_dim = kernel.shape[-2] if not isinstance(layer, keras.layers.DepthwiseConv2D) else None
    if isinstance(layer, keras.layers.Dense):
        new.build((None, kernel.shape[0]))
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
        new.build((None, None, None, kernel.shape[2]))
    else:
        new.build((None, None, None, in_dim * layer.groups))
    new.kernel.assign(kernel.astype(np.float32))
    new.bias.assign(bias.astype(np.float32))
    return new


def _bn_on_last_axis(bn, ndim: int) -> bool:
    axis = bn.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return False
        axis = axis[0]
    return axis in (-1, ndim - 1)


def _find_bn_pairs(model) -> dict:
    """``{id(producer): bn}`` for every BatchNorm of ``model`` that can be folded into the
    layer before it (a linear conv, dense or compressed layer that only it reads)."""
    out = {}
    by_id = {id(x): x for x in model.layers}
    for pid, bn in graph.single_consumer_pairs(model, keras.layers.BatchNormalization).items():
        prod = by_id.get(pid)
        if not isinstance(prod, keras.layers.Layer) or isinstance(prod, keras.Model):
            continue
        if not (_foldable_into(prod) or isinstance(prod, CompressedLayer)) or not _linear(prod):
            continue
        shape = graph.input_shape(bn)
        if shape is None or not _bn_on_last_axis(bn, len(shape)):
            continue
        out[pid] = bn
    return out


def _fold_into_last(layers: list, bn) -> list:
    """Fold ``bn`` into the last layer of an arrangement (a new list)."""
    return [*layers[:-1], fold_batchnorm(layers[-1], bn)]


# ---- the rewrite -------------------------------------------------------------------------


@dataclass
class PrepareReport:
    """What ``prepare_for_inference`` did.

    Attributes:
        strategy: ``"measure"`` or ``"cost_model"``.
        rows: One dict per compressed layer: ``name``, ``type``, ``input_shape`` (as judged,
            batch 1), ``times`` (candidate times in seconds, by arrangement) and ``choice``.
        folded_batchnorms: The names of the BatchNorms folded into the layer before them.
        dropped: The names of the training-only layers dropped.
        measured: The number of candidates timed with LiteRT (not found in the cache).
    """

    strategy: str
    rows: list[dict] = field(default_factory=list)
    folded_batchnorms: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    measured: int = 0

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "layers": self.rows,
            "folded_batchnorms": self.folded_batchnorms,
            "dropped": self.dropped,
            "measured": self.measured,
        }

    def __str__(self) -> str:
        lines = [f"prepare_for_inference ({self.strategy}):"]
        for r in self.rows:
            times = ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in r["times"].items())
            lines.append(f"  {r['name']} {r['input_shape']}: {r['choice']}  ({times})")
        if self.folded_batchnorms:
            lines.append(f"  folded BatchNorms: {len(self.folded_batchnorms)}")
        if self.dropped:
            lines.append(f"  dropped: {', '.join(self.dropped)}")
        return "\n".join(lines)


def prepare_for_inference(
    model,
    strategy: str = "measure",
    num_threads: int = 2,
    quantize: str | None = None,
    cache_path: str | os.PathLike | None = None,
    nominal_hw: tuple[int, int] = (56, 56),
    check: bool = True,
    return_report: bool = False,
    verbose: bool = False,
):
    """Rewrite a model into its fastest equivalent inference graph for LiteRT.

    The new model equals ``model`` in inference (the user's model is left untouched).
    Compressed layers become their fastest plain-Keras arrangement (see
    ``candidate_arrangements`` and the module docstring), BatchNorms fold into the conv
    before them, training-only layers drop out.

    Args:
        model: A built functional or Sequential ``keras.Model``.
        strategy: How the arrangement is chosen: ``"measure"`` (LiteRT timing, batch 1,
            with a JSON cache) or ``"cost_model"`` (no timing: ``CostModel.from_cache``).
        num_threads: The LiteRT (XNNPACK) threads the candidates are timed with.
        quantize: The mode the candidates are timed in: ``None``, ``"float16"``,
            ``"dynamic"`` or ``"int8"``.
        cache_path: The timing cache (``$KERAS_EIGENCONV_TIMING_CACHE`` or
            ``~/.cache/keras_eigenconv/litert_timings.json`` when None).
        nominal_hw: The ``(height, width)`` at which layers with unknown spatial input dims
            are judged.
        check: Check that the outputs of both models on a random batch agree to ``1e-4``
            relative to their scale.
        return_report: Also return a ``PrepareReport``.
        verbose: Print each layer's candidate times and choice.

    Returns:
        The new model, or ``(model, PrepareReport)`` with ``return_report``.

    Raises:
        ValueError: When ``strategy``, ``nominal_hw`` or ``num_threads`` is invalid,
            ``model`` is not a built functional or Sequential ``keras.Model``, a compressed
            layer in it was never called, or the model cannot be rebuilt (e.g. a ``Lambda``
            layer: the message says to export with ``prepare=False``).
        RuntimeError: When ``check`` finds that the rewritten model's outputs differ.
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"prepare_for_inference: strategy must be one of {STRATEGIES}, got {strategy!r}."
        )
    if (
        not isinstance(nominal_hw, (tuple, list))
        or len(nominal_hw) != 2
        or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1
            for d in nominal_hw
        )
    ):
        raise ValueError(
            "prepare_for_inference: nominal_hw must be a (height, width) pair of positive "
            f"ints, got {nominal_hw!r}."
        )
    if not isinstance(model, keras.Model) or not graph.is_graph_model(model):
        raise ValueError(
            "prepare_for_inference needs a built functional or Sequential keras.Model, got "
            f"{type(model).__name__}. Rebuild a subclassed model as a functional model."
        )
    if not model.built or not model.inputs:
        raise ValueError(
            f"prepare_for_inference: model '{model.name}' is not built; call it on an input "
            "or give it a keras.Input first."
        )
    report = PrepareReport(strategy)
    if strategy == "measure":
        chooser: Any = LiteRTTimer(cache_path, num_threads=num_threads, quantize=quantize)
    else:
        chooser = CostModel.from_cache(cache_path)

    bn_pairs: dict[int, Any] = {}
    for sub in graph.graph_models(model):
        bn_pairs.update(_find_bn_pairs(sub))
    folded_bns = {id(bn) for bn in bn_pairs.values()}

    # choose an arrangement for each compressed layer
    chosen: dict[int, list] = {}
    for _, layer in graph.walk(model):
        if not isinstance(layer, CompressedLayer):
            continue
        shape = graph.input_shape(layer)
        if shape is None:
            raise ValueError(
                f"prepare_for_inference: layer '{layer.name}' was never called, so its input "
                "shape is unknown."
            )
        cands = candidate_arrangements(layer)
        shape = (
            1,
            *(d if d is not None else nominal_hw[i] for i, d in enumerate(shape[1:3])),
            int(shape[-1]),
        )
        times = chooser.time(cands, shape)
        best = min(times, key=times.get)
        chosen[id(layer)] = cands[best]
        bn = bn_pairs.get(id(layer))
        if bn is not None and not _foldable_into(cands[best][-1]):
            del bn_pairs[id(layer)]  # keep this BatchNorm as it is
            folded_bns.discard(id(bn))
        report.rows.append(
            {
                "name": layer.name,
                "type": type(layer).__name__,
                "input_shape": list(shape),
                "times": times,
                "choice": best,
            }
        )
        if verbose:
            print(f"{layer.name} {shape}: {best} {times}")
    report.measured = chooser.measured if isinstance(chooser, LiteRTTimer) else 0

    def replace(layer):
        if id(layer) in folded_bns:
            report.folded_batchnorms.append(layer.name)
            return keras.layers.Identity(name=layer.name)
        if type(layer).__name__ in TRAINING_ONLY:
            report.dropped.append(layer.name)
            return keras.layers.Identity(name=layer.name)
        bn = bn_pairs.get(id(layer))
        if id(layer) in chosen:
            layers = chosen[id(layer)]
            if bn is not None:
                layers = _fold_into_last(layers, bn)
            if len(layers) == 1:
                return _renamed(layers[0], layer.name)
            return keras.Sequential(layers, name=layer.name)
        if bn is not None:
            return fold_batchnorm(layer, bn)
        return None  # a copy with the same weights

    def call(layer, *args, **kwargs):
        if isinstance(layer, keras.layers.Identity):  # a dropped layer: pass the input on
            return args[0]
        return layer(*args, **kwargs)

    try:
        new_model = graph.clone_model(
            model,
            replace=replace,
            call_function=None if isinstance(model, keras.Sequential) else call,
        )
    except ValueError as err:  # e.g. a Lambda layer that Keras refuses to rebuild
        raise ValueError(
            f"prepare_for_inference: cannot rebuild model '{model.name}' for inference: "
            f"{err} To export the model as it is, without the inference rewrite, pass "
            "prepare=False to export_tflite (keras-eigenconv export --no-prepare), or "
            "replace the layer (e.g. a Lambda by a registered custom layer)."
        ) from err

    if check:
        _check_equal(model, new_model, nominal_hw)
    return (new_model, report) if return_report else new_model


def _renamed(layer, name: str):
    """``layer`` (built, weights set) under a new name: a fresh copy with the same weights."""
    if layer.name == name:
        return layer
    new = type(layer).from_config({**layer.get_config(), "name": name})
    shape = _build_shape(layer)
    new.build(shape)
    new.set_weights(layer.get_weights())
    return new


def _build_shape(layer):
    if isinstance(layer, keras.layers.Dense):
        return (None, int(layer.kernel.shape[0]))
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return (None, None, None, int(layer.kernel.shape[2]))
    groups = layer.groups if isinstance(layer, keras.layers.Conv2D) else 1
    return (None, None, None, int(layer.kernel.shape[2]) * groups)


def _check_equal(model, new_model, nominal_hw) -> None:
    rng = np.random.default_rng(0)
    xs = []
    for t in model.inputs:
        shape = [2, *(d if d is not None else nominal_hw[0] for d in t.shape[1:])]
        xs.append(rng.random(shape, dtype=np.float32))
    a = model(xs if len(xs) > 1 else xs[0], training=False)
    b = new_model(xs if len(xs) > 1 else xs[0], training=False)
    a = [np.asarray(v) for v in keras.tree.flatten(a)]
    b = [np.asarray(v) for v in keras.tree.flatten(b)]
    for u, v in zip(a, b):
        err = float(np.max(np.abs(u - v))) if u.size else 0.0
        scale = float(np.max(np.abs(u))) if u.size else 0.0
        if not err <= 1e-4 * max(scale, 1.0):
            raise RuntimeError(
                f"prepare_for_inference: the rewritten model differs from '{model.name}' by "
                f"{err:.3g} (output scale {scale:.3g}). Please report this with the model; "
                "pass check=False to skip the check."
            )
