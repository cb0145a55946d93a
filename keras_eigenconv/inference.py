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

import contextlib
import io
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

__all__ = [
    "ChannelTile",
    "CostModel",
    "DEFAULT_COST_MODEL",
    "LiteRTTimer",
    "PrepareReport",
    "candidate_arrangements",
    "default_cache_path",
    "fold_batchnorm",
    "prepare_for_inference",
]

CACHE_ENV = "KERAS_EIGENCONV_TIMING_CACHE"
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


@keras.saving.register_keras_serializable(package="keras_eigenconv")
class ChannelTile(keras.layers.Layer):
    """``(B, H, W, C) -> (B, H, W, reps*C)``: the input repeated ``reps`` times along channels
    (output channel ``j*C + c`` is input channel ``c``); one ``CONCATENATION`` in LiteRT."""

    def __init__(self, reps: int, **kwargs):
        super().__init__(**kwargs)
        if isinstance(reps, bool) or not isinstance(reps, (int, np.integer)) or reps < 1:
            raise ValueError(
                f"ChannelTile '{self.name}': reps must be a positive int, got {reps!r}."
            )
        self.reps = int(reps)

    def call(self, inputs):
        if self.reps == 1:
            return inputs
        return ops.concatenate([inputs] * self.reps, axis=-1)

    def compute_output_shape(self, input_shape):
        c = input_shape[-1]
        return (*input_shape[:-1], None if c is None else c * self.reps)

    def get_config(self):
        config = super().get_config()
        config["reps"] = self.reps
        return config


# ---- arrangements ------------------------------------------------------------------------


def _is_compressed(layer) -> bool:
    if isinstance(layer, (keras.layers.Conv2D, keras.Model)):
        return False
    return callable(getattr(layer, "inference_layers", None)) or callable(
        getattr(layer, "to_conv2d", None)
    )


def _linear(layer) -> bool:
    act = getattr(layer, "activation", None)
    return (
        act is None or act is keras.activations.linear or getattr(act, "__name__", "") == "linear"
    )


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
            kh, kw, c, r = e.shape
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
            # tiled channel j*C + c carries eigen-filter E[:, :, c, j]
            new_dw.kernel.assign(e.transpose(0, 1, 3, 2).reshape(kh, kw, r * c, 1))
            if dw.use_bias:
                b = np.asarray(ops.convert_to_numpy(dw.bias)).reshape(c, r)
                new_dw.bias.assign(b.T.reshape(-1))
            a = np.asarray(ops.convert_to_numpy(nxt.kernel))  # (1, 1, C*r, N), row c*r + j
            n = a.shape[-1]
            new_pw = keras.layers.Conv2D.from_config(nxt.get_config())
            new_pw.build((None, None, None, c * r))
            new_pw.kernel.assign(a.reshape(c, r, n).transpose(1, 0, 2).reshape(1, 1, r * c, n))
            if nxt.use_bias:
                new_pw.bias.assign(ops.convert_to_numpy(nxt.bias))
            out += [ChannelTile(r, name=f"{dw.name}_tile", dtype=dw.dtype_policy), new_dw, new_pw]
            changed, i = True, i + 2
        else:
            out.append(dw)
            i += 1
    return out if changed else None


def candidate_arrangements(layer) -> dict[str, list]:
    """The equivalent plain-Keras arrangements of a compressed layer, by name.

    ``"factorized"`` from ``layer.inference_layers()`` when the layer has it, ``"tiled"``
    when that holds a multiplier-``r`` depthwise + 1x1 pair; without ``inference_layers``,
    ``"native"``: a copy of the layer itself with ``implementation="factorized"``;
    ``"dense"`` from ``layer.to_conv2d()``. Each is a list of built layers, weights set.
    """
    out: dict[str, list] = {}
    make = getattr(layer, "inference_layers", None)
    if callable(make):
        factorized = list(make())
        out["factorized"] = factorized
        tiled = _tile_depthwise(factorized)
        if tiled is not None:
            out["tiled"] = tiled
    elif "implementation" in layer.get_config() and _input_shape(layer) is not None:
        # no plain-Keras arrangement offered: the layer itself, forced to its factor ops
        config = {**layer.get_config(), "implementation": "factorized"}
        native = type(layer).from_config(config)
        native.build((None, None, None, int(_input_shape(layer)[-1])))
        native.set_weights(layer.get_weights())
        out["native"] = [native]
    fold = getattr(layer, "to_conv2d", None)
    if callable(fold):
        out["dense"] = [fold()]
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
    """A new built copy of ``layer`` (``Conv2D``, ``DepthwiseConv2D`` or ``Dense``, linear
    activation) with the inference-mode ``bn`` that follows it folded in:
    ``W' = W * s`` per output channel, ``b' = (b - mean) * s + beta``."""
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
    """``{id(producer): bn}`` for every BatchNorm that can be folded into its producer."""
    pairs: dict[int, Any] = {}
    if isinstance(model, keras.Sequential):
        layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        for prev, layer in zip(layers[:-1], layers[1:]):
            if isinstance(layer, keras.layers.BatchNormalization):
                pairs[id(prev)] = layer
    else:
        for layer in model.layers:
            if not isinstance(layer, keras.layers.BatchNormalization):
                continue
            nodes = [n for n in layer._inbound_nodes if n in _model_nodes(model)]
            if (
                len(nodes) != 1
                or len(layer._inbound_nodes) != 1
                or len(nodes[0].input_tensors) != 1
            ):
                continue
            prod = nodes[0].input_tensors[0]._keras_history.operation
            if len(prod._inbound_nodes) != 1 or len(prod._outbound_nodes) != 1:
                continue
            if prod._outbound_nodes[0].operation is not layer:
                continue
            if any(t is nodes[0].input_tensors[0] for t in model.outputs):
                continue
            pairs[id(prod)] = layer
    out = {}
    for pid, bn in pairs.items():
        prod = next((x for x in model.layers if id(x) == pid), None)
        if prod is None or not _linear(prod):
            continue
        if not (_foldable_into(prod) or _is_compressed(prod)):
            continue
        shape = _input_shape(bn)
        if shape is None or not _bn_on_last_axis(bn, len(shape)):
            continue
        out[pid] = bn
    return out


def _model_nodes(model) -> set:
    nodes = set()
    for depth_nodes in getattr(model, "_nodes_by_depth", {}).values():
        nodes.update(depth_nodes)
    return nodes


def _input_shape(layer) -> tuple | None:
    for node in getattr(layer, "_inbound_nodes", []):
        if node.input_tensors:
            return tuple(node.input_tensors[0].shape)
    return None


def _fold_into_last(layers: list, bn) -> list:
    """Fold ``bn`` into the last layer of an arrangement (a new list)."""
    return [*layers[:-1], fold_batchnorm(layers[-1], bn)]


# ---- timing ------------------------------------------------------------------------------


def default_cache_path() -> Path:
    """``$KERAS_EIGENCONV_TIMING_CACHE`` or ``~/.cache/keras_eigenconv/litert_timings.json``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "keras_eigenconv" / "litert_timings.json"


_SKIP_KEYS = {
    "name",
    "trainable",
    "dtype",
    "kernel_initializer",
    "bias_initializer",
    "depthwise_initializer",
    "kernel_regularizer",
    "bias_regularizer",
    "depthwise_regularizer",
    "activity_regularizer",
    "kernel_constraint",
    "bias_constraint",
    "depthwise_constraint",
    "lora_rank",
    "lora_alpha",
    "quantization_config",
}


def _op_spec(layers: list) -> list:
    spec = []
    for layer in layers:
        cfg = {k: v for k, v in layer.get_config().items() if k not in _SKIP_KEYS}
        spec.append([type(layer).__name__, json.loads(json.dumps(cfg, default=str))])
    return spec


def _op_features(layers: list, input_shape) -> dict[str, float]:
    """MACs per op kind and the op count of an arrangement on ``input_shape`` (batch 1)."""
    from .cost import layer_cost

    feats = {"conv": 0.0, "pointwise": 0.0, "depthwise": 0.0, "depthwise_multiplier": 0.0}
    feats["ops"] = float(len(layers))
    feats["copy"] = 0.0
    shape = (1, *tuple(input_shape)[1:])
    for layer in layers:
        out = tuple(layer.compute_output_shape(shape))
        macs = float(layer_cost(layer, shape).macs) if hasattr(layer, "kernel") else 0.0
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kind = "depthwise_multiplier" if layer.depth_multiplier > 1 else "depthwise"
            feats[kind] += macs
        elif isinstance(layer, keras.layers.Conv2D):
            feats["pointwise" if math.prod(layer.kernel_size) == 1 else "conv"] += macs
        elif isinstance(layer, ChannelTile):
            feats["copy"] += float(math.prod(out[1:]))
        else:
            feats["conv"] += macs
        shape = out
    return feats


def _silent_convert(converter) -> bytes:
    # the TF converter prints the traced signature to stdout; keep the user's stdout clean
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def _representative(shape, steps: int = 4):
    rng = np.random.default_rng(0)

    def gen():
        for _ in range(steps):
            yield [rng.random(shape, dtype=np.float32)]

    return gen


def tflite_converter(model, quantize: str | None, representative=None, int8_io: bool = False):
    """A ``TFLiteConverter`` for ``model`` with built-in ops only, set up for ``quantize``
    (``None``, ``"float16"``, ``"dynamic"`` or ``"int8"``; int8 needs ``representative``, a
    generator function of calibration batches; ``int8_io`` makes the input and output tensors
    int8 too)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return converter


def _convert_layers(layers: list, input_shape, quantize: str | None) -> bytes:
    shape = tuple(int(d) for d in input_shape[1:])
    x = keras.Input(shape, batch_size=1)
    y = x
    for layer in layers:
        fresh = type(layer).from_config(layer.get_config())  # new weights: timing only
        y = fresh(y)
    model = keras.Model(x, y)
    return _silent_convert(tflite_converter(model, quantize, _representative((1, *shape))))


def _interpreter(content: bytes, num_threads: int):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=num_threads)
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in it.get_input_details():
        if np.issubdtype(d["dtype"], np.floating):
            value = rng.random(d["shape"], dtype=np.float32).astype(d["dtype"])
        else:
            value = rng.integers(-128, 127, d["shape"]).astype(d["dtype"])
        it.set_tensor(d["index"], value)
    return it


def time_interleaved(
    invokers: dict[str, Any], rounds: int = 7, min_round_s: float = 0.02, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of each zero-argument callable, timed in interleaved rounds
    (each round runs every callable ``n`` times, ``n`` sized so a round takes about
    ``min_round_s``)."""
    reps = {}
    for name, fn in invokers.items():
        for _ in range(warmup):
            fn()
        t = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t, 1e-6)
        reps[name] = max(1, int(min_round_s / one))
    samples: dict[str, list[float]] = {name: [] for name in invokers}
    for _ in range(rounds):
        for name, fn in invokers.items():
            n = reps[name]
            t = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t) / n)
    return {name: statistics.median(v) for name, v in samples.items()}


class LiteRTTimer:
    """Times arrangements of layers in LiteRT on this machine, with a JSON cache.

    ``time(candidates, input_shape)`` returns median seconds per call of each candidate
    (a list of layers) on a batch-1 input; entries are cached by ops, shapes, threads and
    quantization, with their op features (for ``CostModel.from_cache``).
    """

    def __init__(
        self,
        cache_path: str | os.PathLike | None = None,
        num_threads: int = 2,
        quantize: str | None = None,
        rounds: int = 7,
    ):
        self.cache_path = Path(cache_path) if cache_path is not None else default_cache_path()
        self.num_threads = int(num_threads)
        self.quantize = quantize
        self.rounds = int(rounds)
        self.measured = 0  # candidates timed by this object (cache misses)
        self.entries = self._load()

    def _load(self) -> dict:
        try:
            with open(self.cache_path, encoding="utf-8") as f:
                data = json.load(f)
            return data.get("entries", {}) if isinstance(data, dict) else {}
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save(self) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        merged = self._load()
        merged.update(self.entries)
        tmp = self.cache_path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "entries": merged}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.cache_path)

    def key(self, layers: list, input_shape) -> str:
        from ai_edge_litert import __version__ as litert_version

        return json.dumps(
            {
                "ops": _op_spec(layers),
                "input": [int(d) for d in tuple(input_shape)[1:]],
                "threads": self.num_threads,
                "quantize": self.quantize,
                "litert": litert_version,
            },
            sort_keys=True,
        )

    def time(self, candidates: dict[str, list], input_shape) -> dict[str, float]:
        keys = {name: self.key(layers, input_shape) for name, layers in candidates.items()}
        missing = {n: candidates[n] for n, k in keys.items() if k not in self.entries}
        if missing:
            invokers, failed = {}, {}
            for name, layers in missing.items():
                try:
                    content = _convert_layers(layers, input_shape, self.quantize)
                except Exception:  # e.g. needs a non-built-in op: never the choice
                    failed[name] = math.inf
                    continue
                invokers[name] = _interpreter(content, self.num_threads).invoke
            times = time_interleaved(invokers, rounds=self.rounds) if invokers else {}
            times.update(failed)
            for name, seconds in times.items():
                self.entries[keys[name]] = {
                    "seconds": seconds,
                    "features": _op_features(missing[name], input_shape),
                }
            self.measured += len(missing)
            self._save()
        return {name: self.entries[k]["seconds"] for name, k in keys.items()}


@dataclass
class CostModel:
    """``time = sum_kind coef[kind] * feature[kind]``: seconds per MAC of each op kind,
    seconds per copied element (``copy``) and seconds per op (``ops``)."""

    coef: dict[str, float]

    def predict(self, features: dict[str, float]) -> float:
        return float(sum(self.coef.get(k, 0.0) * v for k, v in features.items()))

    def time(self, candidates: dict[str, list], input_shape) -> dict[str, float]:
        return {n: self.predict(_op_features(ls, input_shape)) for n, ls in candidates.items()}

    @classmethod
    def from_cache(
        cls, cache_path: str | os.PathLike | None = None, min_entries: int = 12
    ) -> CostModel:
        """Least-squares fit (non-negative coefficients) to the timing cache's entries;
        ``DEFAULT_COST_MODEL`` when it holds fewer than ``min_entries``."""
        timer = LiteRTTimer(cache_path)
        rows = [
            e for e in timer.entries.values() if "features" in e and math.isfinite(e["seconds"])
        ]
        if len(rows) < min_entries:
            return DEFAULT_COST_MODEL
        kinds = list(DEFAULT_COST_MODEL.coef)
        a = np.array([[r["features"].get(k, 0.0) for k in kinds] for r in rows])
        b = np.array([r["seconds"] for r in rows])
        # relative error matters: weight rows by 1 / time
        w = 1.0 / np.maximum(b, 1e-7)
        scale = np.maximum(a.max(axis=0), 1.0)
        active = list(range(len(kinds)))
        coef = np.zeros(len(kinds))
        for _ in range(len(kinds)):  # simple active-set non-negative least squares
            sol, *_ = np.linalg.lstsq(
                (a[:, active] / scale[active]) * w[:, None], b * w, rcond=None
            )
            coef[:] = 0.0
            coef[active] = sol / scale[active]
            if (sol >= 0).all():
                break
            active = [i for i, s in zip(active, sol) if s > 0]
        return cls({k: float(c) for k, c in zip(kinds, coef)})


# Seconds per MAC / copied element / op, LiteRT 2.3 + XNNPACK fp32, 2 threads, reference machine
# (a 28x28 128->128 3x3 conv: 1.6 ms; multiplier-4 depthwise + 1x1: 1.24 ms; tiled: 0.42 ms).
DEFAULT_COST_MODEL = CostModel(
    {
        "conv": 1.4e-11,
        "pointwise": 8.0e-12,
        "depthwise": 3.0e-11,
        "depthwise_multiplier": 2.3e-10,
        "copy": 2.0e-10,
        "ops": 5.0e-6,
    }
)


# ---- the rewrite -------------------------------------------------------------------------


@dataclass
class PrepareReport:
    """What ``prepare_for_inference`` did: one row per compressed layer (its input shape,
    candidate times in seconds, the choice), BatchNorms folded, layers dropped."""

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


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _all_models(model):
    yield model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_models(layer)


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
    """A new model equal to ``model`` in inference, rewritten for LiteRT speed.

    Compressed layers become their fastest plain-Keras arrangement (``strategy="measure"``:
    LiteRT timing with a JSON cache; ``"cost_model"``: ``CostModel.from_cache``), BatchNorms
    fold into the conv before them, training-only layers drop out. ``quantize`` (``None``,
    ``"float16"``, ``"dynamic"``, ``"int8"``) is the mode the candidates are timed in.
    Layers with unknown spatial input dims are judged at ``nominal_hw``. With ``check``, the
    outputs of both models on a random batch must agree to ``1e-4`` relative to their scale.
    Returns the model, or ``(model, PrepareReport)`` with ``return_report``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"prepare_for_inference: strategy must be one of {STRATEGIES}, got {strategy!r}."
        )
    if not isinstance(model, keras.Model) or not (
        isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")
    ):
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
    for sub in _all_models(model):
        bn_pairs.update(_find_bn_pairs(sub))
    folded_bns = {id(bn) for bn in bn_pairs.values()}

    # choose an arrangement for each compressed layer
    chosen: dict[int, list] = {}
    for layer in _all_layers(model):
        if not _is_compressed(layer) or id(layer) in chosen:
            continue
        cands = candidate_arrangements(layer)
        if not cands:
            continue
        shape = _input_shape(layer)
        if shape is None:
            raise ValueError(
                f"prepare_for_inference: layer '{layer.name}' was never called, so its input "
                "shape is unknown."
            )
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
    report.measured = getattr(chooser, "measured", 0)

    copies: list[tuple[Any, Any]] = []

    def clone(layer):
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
        new = type(layer).from_config(layer.get_config())
        copies.append((layer, new))
        return new

    def call(layer, *args, **kwargs):
        if isinstance(layer, keras.layers.Identity):  # a dropped layer: pass the input on
            return args[0]
        return layer(*args, **kwargs)

    new_model = keras.models.clone_model(
        model,
        clone_function=clone,
        call_function=None if isinstance(model, keras.Sequential) else call,
        recursive=True,
    )
    for old, new in copies:
        if old.weights:
            new.set_weights(old.get_weights())

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
    return (None, None, None, int(layer.kernel.shape[2]) * getattr(layer, "groups", 1))


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
