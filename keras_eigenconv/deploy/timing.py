"""Timing on LiteRT, the timing cache, and the cost model fitted to it.

- ``interleaved_samples`` / ``time_interleaved``: the one timer: callables run in
  interleaved rounds (so machine load hits all alike);
- ``LiteRTTimer``: times arrangements of layers in LiteRT (each converted alone, batch 1),
  cached in a JSON file keyed by ops, shapes, threads and quantization
  (``$KERAS_EIGENCONV_TIMING_CACHE`` or ``~/.cache/keras_eigenconv/litert_timings.json``);
- ``TimingCache``: that file, safe to share: every save re-reads the file and merges its
  entries under a lock (threads and processes: ``_io.file_lock``) and writes atomically
  (unique temporary file, fsync, rename). A corrupt file (not UTF-8 JSON, or not of the
  cache's shape) is moved aside to ``<name>.corrupt-<time>`` with a ``TimingCacheWarning``
  and a new one is started; malformed entries are dropped with a warning. Where the file
  cannot be written (a directory or a file in the way, no permission, a read-only file,
  a full disk) a ``TimingCacheWarning`` says so and the timings are kept in memory;
- ``CostModel``: ``time = sum_op (t_kind * MACs_op + t_op)`` per op kind, least-squares
  fitted to the cache (``CostModel.from_cache``), else ``DEFAULT_COST_MODEL``
  (``cost.OP_TIME["litert_seconds"]``);
- ``TrainStepTimer``: the same interface as ``LiteRTTimer`` for a TensorFlow training step
  (forward + backward of each candidate alone at a batch), cached in its own file;
  ``TrainStep``: one training step of a copy of a whole model (``invoke()``);
- ``bench_tflite``: latency of ``.tflite`` files, interleaved.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import os
import platform
import statistics
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from .. import graph
from .._io import atomic_write_text, file_lock
from ..cost import OP_TIME, layer_cost
from ..layers import ChannelTile
from .litert import (
    QUANTIZE_MODES,
    convert_for_timing,
    make_interpreter,
    random_representative,
)

__all__ = [
    "CACHE_ENV",
    "DEFAULT_COST_MODEL",
    "CostModel",
    "LiteRTTimer",
    "TimingCache",
    "TimingCacheWarning",
    "TrainStep",
    "TrainStepTimer",
    "bench_tflite",
    "default_cache_path",
    "interleaved_samples",
    "machine_info",
    "machine_summary",
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
    return convert_for_timing(model, quantize, random_representative((1, *shape)))


# CPU features that change which LiteRT (XNNPACK) and TensorFlow kernels run, so what a
# timing measures: the same ResNet50 int8 model ran in 6.0 ms on one 2-core x86 machine
# (AMX, AVX512-VNNI) and in 12.2 ms on another, and on the first an int8 conv's time steps
# with its output channels in blocks of 64.
_ISA_FLAGS = frozenset(
    {
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "avx_vnni",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
        "asimd",
        "asimddp",
        "i8mm",
        "sve",
        "bf16",
        "fphp",
    }
)


def machine_info() -> dict:
    """The CPU a timing was taken on (read once per process; a new dict each call).

    Returns:
        ``{"machine", "cpu", "cpus", "isa", "platform"}``: the architecture, the CPU's model
        name (``/proc/cpuinfo``; virtual machines often report a generic one), the logical
        CPU count, the CPU features that select LiteRT's and TensorFlow's kernels (e.g.
        ``"avx512_vnni"``, ``"amx_int8"``; ARM: ``"asimddp"``, ``"i8mm"``), sorted, and
        the platform string.
    """
    return {k: list(v) if isinstance(v, list) else v for k, v in _machine_info().items()}


def machine_summary() -> str:
    """``machine_info()`` in one line, for report headers.

    Returns:
        ``"<architecture> <n> CPUs (<model>; <features, comma-separated>), <platform>"``.
    """
    m = _machine_info()
    return f"{m['machine']} {m['cpus']} CPUs ({m['cpu']}; {', '.join(m['isa'])}), {m['platform']}"


def _cpu_key() -> dict:
    """What a cached timing's key says of the CPU: its model and kernel-selecting features
    (a timing taken with AMX int8 kernels is not reused on a CPU without them)."""
    info = _machine_info()
    return {"cpu": info["cpu"], "isa": info["isa"]}


@functools.cache
def _machine_info() -> dict:
    cpu, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:  # the first CPU's lines
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and cpu is None:
                    cpu = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:  # no /proc (macOS, Windows): the model name platform gives
        pass
    cpu = cpu or platform.processor() or platform.machine()
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "isa": sorted(flags & _ISA_FLAGS),
        "platform": platform.platform(),
    }


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


def positive_int(who: str, name: str, value, minimum: int = 1) -> int:
    """Check an int argument (numpy ints accepted, bools refused) against a minimum.

    Args:
        who: The function named in the error message.
        name: The argument's name.
        value: The value to check.
        minimum: The smallest valid value.

    Returns:
        ``value`` as an int.

    Raises:
        ValueError: When ``value`` is not an int, or is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{who}: {name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


class TimingCacheWarning(UserWarning):
    """The LiteRT timing cache could not be read or written; timings stay in memory."""


def _valid_entry(entry) -> bool:
    """An entry is ``{"seconds": number >= 0 or inf, "features": {name: number}}``
    (``features`` optional)."""
    if not isinstance(entry, dict):
        return False
    sec = entry.get("seconds")
    if isinstance(sec, bool) or not isinstance(sec, numbers.Real) or not sec >= 0:
        return False
    feats = entry.get("features", {})
    return isinstance(feats, dict) and all(
        isinstance(k, str) and isinstance(v, numbers.Real) and not isinstance(v, bool)
        for k, v in feats.items()
    )


class TimingCache:
    """The LiteRT timing cache file, safe under threads and processes.

    The file is JSON ``{"version": 1, "entries": {key: {"seconds": s, "features": {...}}}}``.
    ``load`` reads and validates it; ``save`` re-reads it, merges, and writes it atomically,
    both under ``_io.file_lock`` (an in-process lock and ``flock`` on ``<path>.lock``), so
    concurrent savers never lose each other's entries. Nothing here raises on a bad file:

    - a file that is not UTF-8 JSON of that shape is moved aside to
      ``<name>.corrupt-<time>`` (a ``TimingCacheWarning`` names both paths) and a new file
      is started; malformed entries (``null``, no finite ``seconds``) are dropped with a
      warning;
    - where the file cannot be read or written (a directory at its path, a file in place of
      a folder, no permission, a read-only file, a full disk), a ``TimingCacheWarning``
      says so once and the timings are kept in memory (a read-only file is never
      replaced).

    Args:
        path: The JSON file; ``default_cache_path()`` when None.

    Attributes:
        path: The cache file.
        writable: False once the file turned out not to be writable (timings then stay in
            memory).
    """

    def __init__(self, path: str | os.PathLike | None = None):
        if path is not None and (
            isinstance(path, bool) or not isinstance(path, (str, os.PathLike)) or not str(path)
        ):
            raise ValueError(f"TimingCache: cache_path must be a file path, got {path!r}.")
        self.path = Path(path) if path is not None else default_cache_path()
        self.writable = True
        self._warned: set[str] = set()
        self._guard = threading.Lock()

    def _warn(self, kind: str, message: str) -> None:
        with self._guard:
            if kind in self._warned:
                return
            self._warned.add(kind)
        warnings.warn(f"LiteRT timing cache {self.path}: {message}", TimingCacheWarning, 3)

    def _no_write(self, reason: str) -> None:
        self.writable = False
        self._warn("write", f"{reason}; keeping the timings in memory only.")

    def _read(self) -> dict:
        """The valid entries of the file (under the lock); moves a corrupt file aside."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except IsADirectoryError:
            self._no_write("it is a directory, not a file")
            return {}
        except OSError as err:  # no permission, a file in place of a folder, ...
            self._no_write(f"cannot be read ({err.strerror or err})")
            return {}
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("entries", {}), dict):
                raise ValueError('not {"entries": {...}}')
        except ValueError as err:  # UnicodeDecodeError and JSONDecodeError included
            self._move_aside(f"not a timing cache ({type(err).__name__}: {err})")
            return {}
        entries = data.get("entries", {})
        good = {k: v for k, v in entries.items() if _valid_entry(v)}
        if len(good) < len(entries):
            self._warn(
                "entries",
                f"dropped {len(entries) - len(good)} malformed entr"
                f"{'y' if len(entries) - len(good) == 1 else 'ies'} (no number 'seconds').",
            )
        return good

    def _move_aside(self, reason: str) -> None:
        aside = self.path.with_name(
            f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        )
        try:
            os.replace(self.path, aside)
        except OSError as err:
            self._no_write(f"{reason}, and it cannot be moved aside ({err.strerror or err})")
            return
        self._warn("corrupt", f"{reason}; moved it to {aside} and started a new cache.")

    def _read_only(self) -> bool:
        try:
            mode = self.path.stat().st_mode
        except OSError:
            return False
        return self.path.is_file() and not mode & 0o222

    def load(self) -> dict:
        """Read the cache's valid entries (see the class docstring for bad files).

        Returns:
            ``{key: entry}``; empty when the file is missing or unusable.
        """
        with file_lock(self.path):
            entries = self._read()
        if self._read_only():
            self._no_write("the file is read-only (it is not replaced)")
        return entries

    def save(self, entries: dict) -> dict:
        """Merge ``entries`` into the file (re-read under the lock) and write it atomically.

        Args:
            entries: ``{key: entry}`` to add or replace.

        Returns:
            The merged entries (the file's and ``entries``); just ``entries`` when the file
            is not writable (after a ``TimingCacheWarning``).
        """
        if not self.writable:
            return dict(entries)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self._no_write(f"its folder cannot be created ({err.strerror or err})")
            return dict(entries)
        with file_lock(self.path):
            merged = self._read()
            if not self.writable:
                return {**merged, **entries}
            if self._read_only():
                self._no_write("the file is read-only (it is not replaced)")
                return {**merged, **entries}
            merged.update(entries)
            text = json.dumps({"version": 1, "entries": merged}, indent=1, sort_keys=True)
            try:
                atomic_write_text(self.path, text, what="timing cache")
            except OSError as err:
                self._no_write(f"cannot be written ({err})")
        return merged


class LiteRTTimer:
    """Times arrangements of layers in LiteRT on this machine, with a JSON cache.

    ``time(candidates, input_shape)`` returns the seconds per call of each candidate (a list
    of layers, converted alone to ``.tflite``) on a batch-1 input, in its fastest of
    ``rounds`` interleaved rounds (an entry outlives the load it was timed under, and other
    load only adds time: the median of a busy moment stayed in the cache at up to 4x);
    entries are cached by ops, shapes, threads, quantization and LiteRT version, with their
    op features (for ``CostModel.from_cache``). A candidate that fails to convert (e.g. it needs a
    non-built-in op) times as infinity, so it is never the choice.

    The cache is a ``TimingCache``: shared safely by threads and processes, and a corrupt,
    unreadable or unwritable file gives a ``TimingCacheWarning``, never an error.

    Args:
        cache_path: The JSON cache file; ``default_cache_path()`` when None.
        num_threads: The interpreter's thread count.
        quantize: The quantization mode candidates are converted in: ``None``,
            ``"float16"``, ``"dynamic"`` or ``"int8"``.
        rounds: The number of interleaved timing rounds.

    Raises:
        ValueError: When ``num_threads`` or ``rounds`` is not a positive int, or
            ``quantize`` is unknown.
    """

    def __init__(
        self,
        cache_path: str | os.PathLike | None = None,
        num_threads: int = 2,
        quantize: str | None = None,
        rounds: int = 7,
    ):
        self.num_threads = positive_int("LiteRTTimer", "num_threads", num_threads)
        if quantize not in QUANTIZE_MODES:
            raise ValueError(
                f"LiteRTTimer: quantize must be one of {QUANTIZE_MODES}, got {quantize!r}."
            )
        self.quantize = quantize
        self.rounds = positive_int("LiteRTTimer", "rounds", rounds)
        self.cache = TimingCache(cache_path)
        self.cache_path = self.cache.path
        self.measured = 0  # candidates timed by this object (cache misses)
        self.entries = self.cache.load()

    def _save(self) -> None:
        self.entries = self.cache.save(self.entries)

    def key(self, layers: list, input_shape) -> str:
        from ai_edge_litert import __version__ as litert_version

        return json.dumps(
            {
                "ops": _op_spec(layers),
                "input": [int(d) for d in tuple(input_shape)[1:]],
                "threads": self.num_threads,
                "quantize": self.quantize,
                "litert": litert_version,
                "stat": "min",
                **_cpu_key(),
            },
            sort_keys=True,
        )

    def time(self, candidates: dict[str, list], input_shape) -> dict[str, float]:
        """Time candidate arrangements in LiteRT, measuring only those not in the cache.

        Args:
            candidates: ``{name: [layers]}``, the arrangements to compare.
            input_shape: The input shape; the batch axis is replaced by 1.

        Returns:
            ``{name: seconds per call in the fastest round}`` (infinity for a candidate
            that fails to convert).
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
            # the fastest round, not the median: an entry outlives the load it was timed
            # under, and other load only ever adds time
            samples = interleaved_samples(invokers, rounds=self.rounds) if invokers else {}
            times = {name: min(v) for name, v in samples.items()}
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
        cls,
        cache_path: str | os.PathLike | None = None,
        min_entries: int = 12,
        quantize: str | None = "any",
        num_threads: int | None = None,
    ) -> CostModel:
        """Fit a cost model to the entries of the timing cache.

        The fit is least squares with non-negative coefficients, each row weighted by
        ``1 / time`` (relative error matters).

        Args:
            cache_path: The JSON cache file; ``default_cache_path()`` when None.
            min_entries: The fewest usable entries to fit to.
            quantize: Fit only to entries timed in this quantization mode (``None`` is
                float32); ``"any"`` (default) fits to all of them.
            num_threads: Fit only to entries timed with this thread count (None: all).

        Returns:
            The fitted ``CostModel``, or ``DEFAULT_COST_MODEL`` when the cache holds fewer
            than ``min_entries`` such entries.
        """
        timer = LiteRTTimer(cache_path)

        def wanted(key: str) -> bool:
            if quantize == "any" and num_threads is None:
                return True
            try:
                k = json.loads(key)
            except ValueError:
                return False
            return (quantize == "any" or k.get("quantize") == quantize) and (
                num_threads is None or k.get("threads") == num_threads
            )

        rows = [
            e
            for key, e in timer.entries.items()
            if "features" in e and math.isfinite(e["seconds"]) and wanted(key)
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


TRAIN_CACHE_NAME = "train_step_timings.json"


def _require_tensorflow(who: str) -> None:
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"{who}: training steps are timed in TensorFlow; run with KERAS_BACKEND=tensorflow "
            f"(the backend is {keras.backend.backend()!r})."
        )


def _layer_train_step(layers: list, input_shape, batch: int, seed: int = 0):
    """A zero-argument function running one training step of fresh copies of ``layers``.

    The step: forward with ``training=True``, then the gradients of ``sum(y**2) / 2`` with
    respect to the input and every trainable weight, in one ``tf.function``."""
    import tensorflow as tf

    shape = tuple(int(d) for d in tuple(input_shape)[1:])
    fresh = [type(layer).from_config(layer.get_config()) for layer in layers]
    x = tf.constant(np.random.default_rng(seed).standard_normal((batch, *shape)), "float32")
    y = x
    for layer in fresh:  # builds each layer at its input shape
        y = layer(y)
    weights = [w for layer in fresh for w in layer.trainable_weights]

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = x
            for layer in fresh:
                out = layer(out, training=True)
            loss = 0.5 * tf.reduce_sum(tf.square(out))
        return tape.gradient(loss, [x, *weights])

    def invoke():
        grads = step()
        return grads[-1].numpy()  # waits for the step (the smallest result)

    return invoke


class TrainStepTimer:
    """Times layers as one TensorFlow training step each (forward + backward), with a cache.

    ``time(candidates, input_shape)`` has ``LiteRTTimer.time``'s interface: each candidate,
    a list of layers, is rebuilt from its config (fresh weights: timing only) and run on a
    fixed random input ``(batch, *input_shape[1:])``; one step is the forward pass with
    ``training=True`` (so each layer runs its training path: a fixed
    ``training_implementation``, else its ``implementation="auto"`` training choice) and
    the gradients of ``sum(y**2) / 2`` with respect to the input and every trainable weight
    (what backpropagation computes for a layer inside a network; no optimizer update), in a
    ``tf.function`` (graph mode, as ``fit`` runs without XLA on CPU). Candidates not in the
    cache are timed interleaved (``time_interleaved``): median seconds per step.

    Entries are cached in a ``TimingCache`` (safe under threads and processes), keyed by
    ops, input shape, batch, ``"runtime": "tensorflow-train"`` and the TensorFlow version,
    without op features (``CostModel.from_cache`` never fits LiteRT times to them).

    Args:
        cache_path: The JSON cache file; when None, ``train_step_timings.json`` next to
            ``default_cache_path()``.
        batch: The batch size of a step.
        rounds: The number of interleaved timing rounds.

    Raises:
        ValueError: When ``batch`` or ``rounds`` is not a positive int, or the Keras backend
            is not TensorFlow.
    """

    def __init__(
        self, cache_path: str | os.PathLike | None = None, batch: int = 32, rounds: int = 7
    ):
        _require_tensorflow("TrainStepTimer")
        self.batch = positive_int("TrainStepTimer", "batch", batch)
        self.rounds = positive_int("TrainStepTimer", "rounds", rounds)
        if cache_path is None:
            cache_path = default_cache_path().with_name(TRAIN_CACHE_NAME)
        self.cache = TimingCache(cache_path)
        self.cache_path = self.cache.path
        self.measured = 0  # candidates timed by this object (cache misses)
        self.entries = self.cache.load()

    def key(self, layers: list, input_shape) -> str:
        """The cache key of ``layers`` on ``input_shape`` (batch replaced by ``batch``).

        Args:
            layers: The layers run in sequence.
            input_shape: The input shape.

        Returns:
            The key, a JSON string.
        """
        import tensorflow as tf

        return json.dumps(
            {
                "ops": _op_spec(layers),
                "input": [int(d) for d in tuple(input_shape)[1:]],
                "batch": self.batch,
                "runtime": "tensorflow-train",
                "tensorflow": tf.__version__,
                **_cpu_key(),
            },
            sort_keys=True,
        )

    def time(self, candidates: dict[str, list], input_shape) -> dict[str, float]:
        """Time candidates as a training step, measuring only those not in the cache.

        Args:
            candidates: ``{name: [layers]}``, the layer sequences to compare.
            input_shape: The input shape; the batch axis is replaced by ``batch``.

        Returns:
            ``{name: median seconds per training step}``.
        """
        keys = {name: self.key(layers, input_shape) for name, layers in candidates.items()}
        missing = {n: candidates[n] for n, k in keys.items() if k not in self.entries}
        if missing:
            invokers = {
                name: _layer_train_step(layers, input_shape, self.batch)
                for name, layers in missing.items()
            }
            times = time_interleaved(invokers, rounds=self.rounds)
            for name, seconds in times.items():
                self.entries[keys[name]] = {"seconds": seconds}
            self.measured += len(missing)
            self.entries = self.cache.save(self.entries)
        return {name: self.entries[k]["seconds"] for name, k in keys.items()}


class TrainStep:
    """One training step of a copy of a model on a fixed random batch: ``invoke()``.

    The copy (the model is not modified: ``graph.clone_model``, or ``graph.copy_subclassed``
    for a subclassed model) is compiled as ``fit`` runs it by default (``jit_compile``
    ``"auto"``: no XLA on CPU) with SGD at learning rate 0 (the weights stay as they are, so
    every step costs the same) and mean squared error against zeros; ``invoke`` runs
    ``train_on_batch`` on the fixed batch: forward, backward and the optimizer update of
    every trainable weight, as one step of ``fit``.

    Args:
        model: A built ``keras.Model`` with one input of known size (batch aside).
        batch: The batch size.
        seed: The seed of the random batch.

    Raises:
        ValueError: When ``batch`` is not a positive int, the model does not have one input
            of known size, or the Keras backend is not TensorFlow.
    """

    def __init__(self, model, batch: int = 32, seed: int = 0):
        _require_tensorflow("TrainStep")
        self.batch = positive_int("TrainStep", "batch", batch)
        inputs = getattr(model, "inputs", None) or []
        if len(inputs) != 1 or any(d is None for d in tuple(inputs[0].shape)[1:]):
            raise ValueError("TrainStep: the model needs one input of known size.")
        shape = tuple(int(d) for d in tuple(inputs[0].shape)[1:])
        copy = graph.clone_model(model) if graph.is_graph_model(model) else None
        if copy is None:
            copy = graph.copy_subclassed(model)
        rng = np.random.default_rng(seed)
        self._x = keras.ops.convert_to_tensor(
            rng.standard_normal((self.batch, *shape)).astype("float32")
        )
        out = copy(self._x, training=False)
        self._y = keras.tree.map_structure(keras.ops.zeros_like, out)
        copy.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")
        self.model = copy

    def invoke(self) -> None:
        """Run one training step (``train_on_batch``) on the fixed batch."""
        self.model.train_on_batch(self._x, self._y)


def bench_tflite(
    paths: dict[str, str | Path] | list,
    num_threads: int = 2,
    rounds: int = 20,
    warmup: int = 3,
    runs_per_round: int | None = None,
) -> dict[str, dict]:
    """Measure the latency of ``.tflite`` files (batch 1, random inputs), interleaved.

    Every round invokes each model ``runs_per_round`` times in turn, so machine load hits all
    alike.

    Args:
        paths: ``{name: path}``, or a list of paths (each named by itself).
        num_threads: The interpreter's thread count.
        rounds: The number of interleaved rounds.
        warmup: Untimed invocations of each model first.
        runs_per_round: Invocations of each model per round; None (default) sizes it per
            model so a round takes about 20 ms (a single sub-millisecond invocation is
            mostly timer and scheduler noise).

    Returns:
        Per model name, a dict of ``median_ms``, ``mean_ms``, ``p10_ms``, ``p90_ms``,
        ``runs``, ``ratio`` (median over the first model's median) and the paired ratio to
        the first model: ``paired_ratio`` (the median over rounds of this model's time over
        the first model's time in the same round, robust to slow phases of a noisy
        machine, which hit both alike), with ``paired_p10`` and ``paired_p90`` its spread.

    Raises:
        ValueError: When a count is not a positive int (``warmup`` may be 0), no file is
            given, or a file is not a loadable ``.tflite`` model.
        FileNotFoundError: When a file does not exist.
        IsADirectoryError: When a path is a directory.
    """
    who = "bench_tflite"
    num_threads = positive_int(who, "num_threads", num_threads)
    rounds = positive_int(who, "rounds", rounds)
    warmup = positive_int(who, "warmup", warmup, minimum=0)
    if runs_per_round is not None:
        runs_per_round = positive_int(who, "runs_per_round", runs_per_round)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(paths, dict):
        paths = {str(p): p for p in paths}
    if not paths:
        raise ValueError(f"{who}: no .tflite files given.")
    contents = {}
    for name, p in paths.items():
        p = Path(p)
        if p.is_dir():
            raise IsADirectoryError(f"{who}: {p} is a directory, not a .tflite file.")
        if not p.exists():
            raise FileNotFoundError(f"{who}: no such .tflite file: {p}")
        contents[name] = p.read_bytes()
    its = {}
    for name, content in contents.items():
        try:
            its[name] = make_interpreter(content, num_threads)
        except (ValueError, RuntimeError) as err:
            raise ValueError(
                f"{who}: {paths[name]} is not a loadable .tflite model "
                f"({str(err).splitlines()[0] if str(err) else type(err).__name__})."
            ) from err
    reps: dict[str, int] = {}
    for name, it in its.items():
        if runs_per_round is not None:
            reps[name] = runs_per_round
            continue
        for _ in range(max(warmup, 1)):
            it.invoke()
        t = time.perf_counter()
        it.invoke()
        reps[name] = max(1, int(0.02 / max(time.perf_counter() - t, 1e-6)))
    seconds = interleaved_samples(
        {name: it.invoke for name, it in its.items()}, rounds, warmup, reps
    )
    samples = {name: [s * 1e3 for s in v] for name, v in seconds.items()}
    out = {}
    base = None
    first = np.asarray(next(iter(samples.values())))
    for name, v in samples.items():
        med = statistics.median(v)
        base = base or med
        q = np.percentile(v, [10, 90])
        paired = np.asarray(v) / first
        pq = np.percentile(paired, [10, 50, 90])
        out[name] = {
            "median_ms": med,
            "mean_ms": statistics.fmean(v),
            "p10_ms": float(q[0]),
            "p90_ms": float(q[1]),
            "runs": len(v) * reps[name],
            "ratio": med / base,
            "paired_ratio": float(pq[1]),
            "paired_p10": float(pq[0]),
            "paired_p90": float(pq[2]),
        }
    return out
