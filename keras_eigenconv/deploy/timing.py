"""Timing on LiteRT, the timing cache, and the cost model fitted to it.

- ``interleaved_samples`` / ``time_interleaved``: the one timer: callables run in
  interleaved rounds (so machine load hits all alike);
- ``LiteRTTimer``: times arrangements of layers in LiteRT (each converted alone, batch 1),
  cached in a JSON file keyed by ops, shapes, threads and quantization
  (``$KERAS_EIGENCONV_TIMING_CACHE`` or ``~/.cache/keras_eigenconv/litert_timings.json``);
- ``CostModel``: ``time = sum_op (t_kind * MACs_op + t_op)`` per op kind, least-squares
  fitted to the cache (``CostModel.from_cache``), else ``DEFAULT_COST_MODEL``
  (``cost.OP_TIME["litert_seconds"]``);
- ``bench_tflite``: latency of ``.tflite`` files, interleaved.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ..cost import OP_TIME, layer_cost
from ..layers import ChannelTile
from .litert import convert_model, make_interpreter, random_representative, tflite_converter

__all__ = [
    "CACHE_ENV",
    "DEFAULT_COST_MODEL",
    "CostModel",
    "LiteRTTimer",
    "bench_tflite",
    "default_cache_path",
    "interleaved_samples",
    "time_interleaved",
]

CACHE_ENV = "KERAS_EIGENCONV_TIMING_CACHE"


def default_cache_path() -> Path:
    """Locate the LiteRT timing cache.

    Returns:
        ``$KERAS_EIGENCONV_TIMING_CACHE`` when set, else
        ``~/.cache/keras_eigenconv/litert_timings.json``.
    """
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
    feats = {"conv": 0.0, "pointwise": 0.0, "depthwise": 0.0, "depthwise_multiplier": 0.0}
    feats["ops"] = float(len(layers))
    feats["copy"] = 0.0
    shape = (1, *tuple(input_shape)[1:])
    for layer in layers:
        out = tuple(layer.compute_output_shape(shape))
        macs = float(layer_cost(layer, shape).macs)
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


def _convert_layers(layers: list, input_shape, quantize: str | None) -> bytes:
    shape = tuple(int(d) for d in input_shape[1:])
    x = keras.Input(shape, batch_size=1)
    y = x
    for layer in layers:
        fresh = type(layer).from_config(layer.get_config())  # new weights: timing only
        y = fresh(y)
    model = keras.Model(x, y)
    return convert_model(tflite_converter(model, quantize, random_representative((1, *shape))))


def interleaved_samples(
    invokers: dict[str, Any],
    rounds: int = 7,
    warmup: int = 2,
    calls_per_round: int | dict[str, int] | None = None,
    min_round_s: float = 0.02,
) -> dict[str, list[float]]:
    """Time zero-argument callables in interleaved rounds, one sample per round.

    Every round runs each callable ``n`` times in turn, so machine load hits all alike.

    Args:
        invokers: ``{name: fn}``.
        rounds: The number of rounds (samples per callable).
        warmup: Untimed calls of each callable first.
        calls_per_round: ``n`` (one int for all, or per name); ``None`` sizes ``n`` per
            callable so a round takes about ``min_round_s``.
        min_round_s: The seconds a round of one callable should take when
            ``calls_per_round`` is None.

    Returns:
        ``{name: [seconds per call in each round]}``.
    """
    reps: dict[str, int] = {}
    for name, fn in invokers.items():
        for _ in range(warmup):
            fn()
        if isinstance(calls_per_round, dict):
            reps[name] = int(calls_per_round[name])
        elif calls_per_round is not None:
            reps[name] = int(calls_per_round)
        else:
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
    return samples


def time_interleaved(
    invokers: dict[str, Any], rounds: int = 7, min_round_s: float = 0.02, warmup: int = 2
) -> dict[str, float]:
    """Time zero-argument callables, interleaved, as median seconds per call.

    Each callable runs about ``min_round_s`` per round (see ``interleaved_samples``).

    Args:
        invokers: ``{name: fn}``.
        rounds: The number of rounds (samples per callable).
        min_round_s: The seconds a round of one callable should take.
        warmup: Untimed calls of each callable first.

    Returns:
        ``{name: median seconds per call}``.
    """
    samples = interleaved_samples(invokers, rounds, warmup, None, min_round_s)
    return {name: statistics.median(v) for name, v in samples.items()}


class LiteRTTimer:
    """Times arrangements of layers in LiteRT on this machine, with a JSON cache.

    ``time(candidates, input_shape)`` returns median seconds per call of each candidate
    (a list of layers, converted alone to ``.tflite``) on a batch-1 input; entries are cached
    by ops, shapes, threads, quantization and LiteRT version, with their op features (for
    ``CostModel.from_cache``). A candidate that fails to convert (e.g. it needs a
    non-built-in op) times as infinity, so it is never the choice.

    Args:
        cache_path: The JSON cache file; ``default_cache_path()`` when None.
        num_threads: The interpreter's thread count.
        quantize: The quantization mode candidates are converted in: ``None``,
            ``"float16"``, ``"dynamic"`` or ``"int8"``.
        rounds: The number of interleaved timing rounds.
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
        """Time candidate arrangements in LiteRT, measuring only those not in the cache.

        Args:
            candidates: ``{name: [layers]}``, the arrangements to compare.
            input_shape: The input shape; the batch axis is replaced by 1.

        Returns:
            ``{name: median seconds per call}`` (infinity for a candidate that fails to
            convert).
        """
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
                invokers[name] = make_interpreter(content, self.num_threads).invoke
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
    """A linear model of LiteRT time: ``time = sum_kind coef[kind] * feature[kind]``.

    Attributes:
        coef: Seconds per MAC of each op kind (``conv``, ``pointwise``, ``depthwise``,
            ``depthwise_multiplier``), seconds per copied element (``copy``) and seconds per
            op (``ops``).
    """

    coef: dict[str, float]

    def predict(self, features: dict[str, float]) -> float:
        """Predict the seconds of one arrangement from its op features.

        Args:
            features: MACs per op kind, copied elements (``copy``) and op count (``ops``).

        Returns:
            The predicted seconds per call.
        """
        return float(sum(self.coef.get(k, 0.0) * v for k, v in features.items()))

    def time(self, candidates: dict[str, list], input_shape) -> dict[str, float]:
        """Predict the seconds of candidate arrangements (the ``LiteRTTimer.time`` interface).

        Args:
            candidates: ``{name: [layers]}``, the arrangements to compare.
            input_shape: The input shape; the batch axis is replaced by 1.

        Returns:
            ``{name: predicted seconds per call}``.
        """
        return {n: self.predict(_op_features(ls, input_shape)) for n, ls in candidates.items()}

    @classmethod
    def from_cache(
        cls, cache_path: str | os.PathLike | None = None, min_entries: int = 12
    ) -> CostModel:
        """Fit a cost model to the entries of the timing cache.

        The fit is least squares with non-negative coefficients, each row weighted by
        ``1 / time`` (relative error matters).

        Args:
            cache_path: The JSON cache file; ``default_cache_path()`` when None.
            min_entries: The fewest usable entries to fit to.

        Returns:
            The fitted ``CostModel``, or ``DEFAULT_COST_MODEL`` when the cache holds fewer
            than ``min_entries`` entries.
        """
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
DEFAULT_COST_MODEL = CostModel(dict(OP_TIME["litert_seconds"]))


def bench_tflite(
    paths: dict[str, str | Path] | list,
    num_threads: int = 2,
    rounds: int = 20,
    warmup: int = 3,
    runs_per_round: int = 1,
) -> dict[str, dict]:
    """Measure the latency of ``.tflite`` files (batch 1, random inputs), interleaved.

    Every round invokes each model ``runs_per_round`` times in turn, so machine load hits all
    alike.

    Args:
        paths: ``{name: path}``, or a list of paths (each named by itself).
        num_threads: The interpreter's thread count.
        rounds: The number of interleaved rounds.
        warmup: Untimed invocations of each model first.
        runs_per_round: Invocations of each model per round.

    Returns:
        Per model name, a dict of ``median_ms``, ``mean_ms``, ``p10_ms``, ``p90_ms``,
        ``runs`` and ``ratio`` (median over the first model's median).
    """
    if not isinstance(paths, dict):
        paths = {str(p): p for p in paths}
    its = {name: make_interpreter(Path(p).read_bytes(), num_threads) for name, p in paths.items()}
    seconds = interleaved_samples(
        {name: it.invoke for name, it in its.items()}, rounds, warmup, runs_per_round
    )
    samples = {name: [s * 1e3 for s in v] for name, v in seconds.items()}
    out = {}
    base = None
    for name, v in samples.items():
        med = statistics.median(v)
        base = base or med
        q = np.percentile(v, [10, 90])
        out[name] = {
            "median_ms": med,
            "mean_ms": statistics.fmean(v),
            "p10_ms": float(q[0]),
            "p90_ms": float(q[1]),
            "runs": len(v) * runs_per_round,
            "ratio": med / base,
        }
    return out
